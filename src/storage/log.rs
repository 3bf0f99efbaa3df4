//! The partition log: an ordered set of segments with one writer and any
//! number of concurrent readers.
//!
//! Invariants:
//! - Offsets are dense from the log start offset to the high watermark.
//! - Readers see only batches below the high watermark; under the `always`
//!   flush policy the high watermark moves only after an fsync covered the
//!   batch, so nothing a reader saw can vanish in a crash.
//! - Group commit: appenders write under the writer lock (no fsync there),
//!   then wait for a sync that covers their batch. One of them runs the
//!   fsync while the rest queue up, so one fsync covers every batch written
//!   while the previous one was in flight.
//! - A failed fsync is never retried: the unsynced tail is cut off and every
//!   appender waiting on it gets an error. If the cut itself fails (or
//!   readers saw the data), the log is poisoned and refuses writes until
//!   [`Log::reopen_if_poisoned`] reopens it in place once the fault clears.
//! - No lock is held across a read; the writer lock is never held during a
//!   group-commit fsync.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use bytes::Bytes;

use super::batch::{self, BatchHeader, BATCH_BYTES_LIMIT};
use super::checkpoint::{self, Checkpoint, SameBoot};
use super::fs::FileSystem;
use super::producer::{ProducerBatch, ProducerState, SequenceCheck};
use super::segment::{Bounds, Segment, SegmentLimits, SegmentRead};
use super::{Clock, Result, StorageError};

/// Name of the marker written by a clean close and removed on open.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean.shutdown";

/// When appended data is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// fsync before an append is reported durable (group commit). Survives power loss.
    #[default]
    Always,
    /// fsync in the background about every this many ms. Survives a process
    /// crash; a power loss may lose the last interval.
    Interval(u64),
    /// No fsync on the append path: rolled segments are fsynced in the
    /// background, everything at a clean close. Survives a process crash; a
    /// power loss may lose what was written to the active segment.
    Never,
}

impl fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushPolicy::Always => write!(f, "always"),
            FlushPolicy::Interval(ms) => write!(f, "interval:{ms}"),
            FlushPolicy::Never => write!(f, "never"),
        }
    }
}

impl FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(FlushPolicy::Interval(ms)),
                _ => Err(format!("flush policy {s:?} is not one of always, interval:<ms> (ms > 0), never")),
            },
        }
    }
}

/// Settings of one log; the topic config maps onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment before it would grow past this.
    pub segment_bytes: u64,
    /// Roll the active segment when its first append is older than this.
    pub segment_ms: i64,
    /// Delete closed segments whose newest record is older than this; -1 = never.
    pub retention_ms: i64,
    /// Delete oldest closed segments while the log stays above this; -1 = unlimited.
    pub retention_bytes: i64,
    /// One index entry about every this many bytes.
    pub index_interval_bytes: u64,
    /// Largest batch accepted for append.
    pub batch_bytes_max: usize,
    pub flush: FlushPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            batch_bytes_max: 17 << 20,
            flush: FlushPolicy::Always,
        }
    }
}

impl LogConfig {
    fn limits(&self) -> SegmentLimits {
        let entries = self.segment_bytes / self.index_interval_bytes.max(1) + 2;
        SegmentLimits {
            index_capacity: entries.min(1 << 20) as usize,
            index_interval_bytes: self.index_interval_bytes,
            batch_bytes_max: BATCH_BYTES_LIMIT,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: u64,
    pub last_offset: u64,
    /// True when this was a retry of a batch already in the log: nothing was appended.
    pub duplicate: bool,
}

/// A batch written to the log but maybe not yet durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAppend {
    pub outcome: AppendOutcome,
    /// Writer epoch at the write, to tell whether a failed fsync discarded it.
    epoch: u64,
    /// Whether durability needs an fsync (flush policy `always`).
    needs_sync: bool,
}

impl PendingAppend {
    /// Whether [`Log::wait_durable`] has anything to wait for.
    pub fn needs_sync(&self) -> bool {
        self.needs_sync
    }
}

/// A batch to append; the log stamps its base offset (its first 8 bytes,
/// which the batch CRC does not cover).
#[derive(Debug)]
pub enum BatchRef<'a> {
    /// Stamped in place, then written with one pwrite.
    Stamp(&'a mut [u8]),
    /// Left as it is (a client's batch, still owned by its request): the
    /// stamp and the rest go in two pwrites, so the bytes are not copied
    /// to make room for the stamp.
    Shared(&'a [u8]),
}

impl BatchRef<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            BatchRef::Stamp(b) => b,
            BatchRef::Shared(b) => b,
        }
    }
}

impl<'a> From<&'a mut [u8]> for BatchRef<'a> {
    fn from(b: &'a mut [u8]) -> Self {
        BatchRef::Stamp(b)
    }
}

impl<'a> From<&'a mut Vec<u8>> for BatchRef<'a> {
    fn from(b: &'a mut Vec<u8>) -> Self {
        BatchRef::Stamp(b)
    }
}

/// Batches returned by a read, plus the log's bounds at the time.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    /// Whole batches, each a zero-copy slice of one read buffer. The first
    /// may start before the requested offset (filter by record offset).
    pub batches: Vec<Bytes>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl ReadBatches {
    /// The offset after the last batch, if any batch was read.
    pub fn next_offset(&self) -> Option<u64> {
        self.batches.last().and_then(|b| BatchHeader::parse(b, usize::MAX).ok()).map(|h| h.next_offset())
    }
}

/// State owned by the one writer.
#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    /// Offset the next record gets (written, maybe not yet durable).
    next_offset: u64,
    /// Bytes written to the active segment.
    position: u64,
    bytes_since_entry: u64,
    /// Largest record timestamp written to the active segment.
    max_timestamp: i64,
    /// Clock time of the active segment's first append, for `segment.ms`.
    first_append_ms: Option<i64>,
    producers: ProducerState,
    /// The latest point known to be on stable storage. `durable_position`
    /// is a position in the active segment and means something only while
    /// `durable_offset >= active.base_offset`.
    durable_offset: u64,
    durable_position: u64,
    /// Segments rolled under `never` or `interval` whose tail is not yet
    /// fsynced, oldest first. A roll does not fsync the old segment under
    /// the writer lock (128 MiB of dirty pages take the disk hundreds of
    /// milliseconds); the next sync or `sync_closed` does.
    unsynced_closed: Vec<Rolled>,
    /// Segments rolled under `never`/`interval` whose indexes still wait
    /// for their trim and fsync ([`Log::finish_rolls`]).
    closing: Vec<Arc<Segment>>,
    /// Rolls so far, and how many of them the last directory fsync covers:
    /// nothing in a segment is called durable before its name is.
    rolls: u64,
    dir_synced_rolls: u64,
    /// The durable and written points of the last checkpoint written.
    checkpointed: CheckpointPoints,
    /// Numbers each checkpoint taken, in the order of the states they record.
    checkpoint_seq: u64,
    /// The last durable point recorded, reused by checkpoints taken while
    /// the durable point is in a rolled segment waiting for its fsync.
    last_durable: Checkpoint,
    /// Bumped whenever unsynced data is discarded, to fail its waiters.
    epoch: u64,
    /// Why writes are refused, once an error left the log in doubt.
    poisoned: Option<String>,
    /// Closed cleanly: writes are refused for good (no reopen).
    closed: bool,
}

/// A segment rolled without an fsync of its tail.
#[derive(Debug, Clone)]
struct Rolled {
    segment: Arc<Segment>,
    /// The offset after its last batch.
    end_offset: u64,
    /// Clock time of the roll (of the open, for segments recovery found
    /// unsynced), which [`Log::sync_closed`] ages against.
    rolled_ms: i64,
}

/// Group-commit bookkeeping.
#[derive(Debug, Default)]
struct SyncState {
    synced_offset: u64,
    in_progress: bool,
    /// Appends from an epoch below this whose data was not synced have failed.
    discard_epoch: u64,
    /// Appends from an epoch below this were written before the log was
    /// reopened after a fault: never acknowledged, synced or not.
    reopened_below: u64,
    last_error: String,
}

#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    clock: Arc<dyn Clock>,
    config: RwLock<LogConfig>,
    /// Segments by base offset; the last is the active one.
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    log_start_offset: AtomicU64,
    /// Offset after the last record readers may see.
    high_watermark: AtomicU64,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// The number of the checkpoint on disk; held while one is written.
    /// A hint is taken under the writer lock but written after it, so a
    /// roll's or a cut's newer checkpoint may land first: this keeps the
    /// older one from replacing it (a written point past a cut would send
    /// the next same-boot recovery into the middle of a batch).
    checkpoint_file: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Log {
    /// Opens the log in `dir` (creating an empty one if there is none),
    /// recovering from an unclean stop: see [`super::log`] and `docs/format.md`.
    pub fn open(dir: &Path, fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>, config: LogConfig) -> Result<Log> {
        // A new directory's name (and its parents') is made durable, else a
        // power loss could drop it and the data later fsynced inside it.
        fs.create_dir_all_durable(dir).map_err(|e| StorageError::io(dir, e))?;
        let limits = config.limits();
        let names = fs.list_dir(dir).map_err(|e| StorageError::io(dir, e))?;
        let mut bases = Vec::new();
        for name in &names {
            if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<u64>().ok()) {
                bases.push(base);
            }
        }
        for name in &names {
            // Leftovers of an interrupted atomic write or of an index whose log is gone.
            let orphan = name.ends_with(".tmp")
                || [".index", ".timeindex"].iter().any(|ext| {
                    name.strip_suffix(ext).and_then(|b| b.parse::<u64>().ok()).is_some_and(|b| !bases.contains(&b))
                });
            if orphan {
                let path = dir.join(name);
                fs.remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            }
        }
        bases.sort_unstable();
        let clean_path = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = fs.exists(&clean_path);
        let checkpoint = read_checkpoint(fs.as_ref(), dir);

        let mut segments = BTreeMap::new();
        for &base in &bases {
            segments.insert(base, Arc::new(Segment::open(fs.clone(), dir, base, limits)?));
        }
        if segments.is_empty() {
            segments.insert(0, Arc::new(Segment::create(fs.clone(), dir, 0, limits)?));
            // Guards against a power loss dropping the new file's directory
            // entry, and with it data later fsynced into the file.
            fs.sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
        }
        let recovered = recover(dir, fs.as_ref(), &mut segments, clean, checkpoint)?;
        let active = segments.values().next_back().expect("at least one segment").clone();
        let log_start_offset = *segments.keys().next().expect("at least one segment");
        if clean {
            // No directory fsync here: if a power loss resurrects the marker,
            // the next open still trusts the checkpoint only when it matches
            // the active segment's length exactly, and anything appended
            // after this open changes that length or the active segment.
            fs.remove_file(&clean_path).map_err(|e| StorageError::io(&clean_path, e))?;
        }
        let idx = active.indexes()?;
        let bytes_since_entry = recovered.position - idx.offset.last().map(|e| e.position as u64).unwrap_or(0);
        let max_timestamp = active.max_timestamp()?;
        // What recovery read past the durable point may be only in the page
        // cache (same boot): it stays "unsynced" until the next sync, and
        // rolled segments among it go to the background fsync.
        let durable = &recovered.durable;
        let mut unsynced_closed = Vec::new();
        if durable.segment_base < active.base_offset {
            let closed: Vec<Arc<Segment>> =
                segments.range(durable.segment_base..active.base_offset).map(|(_, s)| s.clone()).collect();
            for (i, s) in closed.iter().enumerate() {
                let end = closed.get(i + 1).map_or(active.base_offset, |n| n.base_offset);
                unsynced_closed.push(Rolled { segment: s.clone(), end_offset: end, rolled_ms: clock.now_ms() });
            }
        }
        let (durable_offset, durable_position) =
            if unsynced_closed.is_empty() { (durable.next_offset, durable.position) } else { (durable.next_offset, 0) };
        let writer = Writer {
            active,
            next_offset: recovered.next_offset,
            position: recovered.position,
            bytes_since_entry,
            max_timestamp,
            first_append_ms: (recovered.position > 0).then(|| clock.now_ms()),
            producers: recovered.producers,
            durable_offset,
            durable_position,
            unsynced_closed,
            closing: Vec::new(),
            rolls: 0,
            dir_synced_rolls: 0,
            checkpointed: (None, (u64::MAX, 0)),
            checkpoint_seq: 0,
            last_durable: recovered.durable,
            epoch: 0,
            poisoned: None,
            closed: false,
        };
        tracing::debug!(dir = %dir.display(), next_offset = writer.next_offset, segments = segments.len(), clean, "log opened");
        Ok(Log {
            dir: dir.to_path_buf(),
            fs,
            clock,
            config: RwLock::new(config),
            segments: RwLock::new(segments),
            log_start_offset: AtomicU64::new(log_start_offset),
            high_watermark: AtomicU64::new(recovered.next_offset),
            sync: Mutex::new(SyncState { synced_offset: durable_offset, ..SyncState::default() }),
            writer: Mutex::new(writer),
            synced: Condvar::new(),
            checkpoint_file: Mutex::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        *self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies new settings; they take effect from the next append or retention pass.
    pub fn set_config(&self, config: LogConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    fn segments_snapshot(&self) -> Vec<Arc<Segment>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Bytes of readable data in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments_snapshot().iter().map(|s| s.readable_len()).sum()
    }

    /// Timestamp of the first record and the largest timestamp, if any record is readable.
    pub fn timestamps(&self) -> Result<Option<(i64, i64)>> {
        if self.high_watermark() == self.log_start_offset() {
            return Ok(None);
        }
        let segments = self.segments_snapshot();
        let first = segments
            .iter()
            .find(|s| s.readable_len() > 0)
            .map(|s| s.header_at(0))
            .transpose()?
            .flatten()
            .map(|h| h.first_timestamp);
        let mut max = i64::MIN;
        for s in segments.iter().rev() {
            if s.readable_len() > 0 {
                max = s.max_timestamp()?;
                break;
            }
        }
        Ok(first.map(|f| (f, max)))
    }

    /// Appends one encoded batch (from [`batch::encode`]); the log stamps the
    /// offsets. Returns once the batch is durable per the flush policy.
    pub fn append(&self, batch: &mut [u8]) -> Result<AppendOutcome> {
        let pending = self.append_pending(batch)?;
        self.wait_durable(&pending)?;
        Ok(pending.outcome)
    }

    /// Waits until a pending append is durable per the flush policy it was
    /// written under (group commit: one fsync may cover many appends).
    pub fn wait_durable(&self, pending: &PendingAppend) -> Result<()> {
        if pending.needs_sync {
            self.sync_until(pending.outcome.last_offset + 1, pending.epoch)?;
        }
        Ok(())
    }

    /// Writes one batch without waiting for durability. Batches are ordered
    /// by the order of these calls; [`Log::wait_durable`] completes them.
    /// This is what lets a pipelined producer overlap writes with fsyncs.
    /// The log only stamps the base offset into `batch`; it keeps no reference.
    pub fn append_pending<'a>(&self, batch: impl Into<BatchRef<'a>>) -> Result<PendingAppend> {
        let batch = batch.into();
        let config = self.config();
        let header = self.check_batch(&config, batch.bytes())?;
        let mut w = lock(&self.writer);
        let roll = self.roll_due(&w, &config, batch.bytes().len(), header.record_count)?;
        self.append_locked(&mut w, &config, header, batch, roll)
    }

    /// [`Log::append_pending`] unless a segment roll (file creation and
    /// fsyncs, milliseconds) is due: then `None`, and the caller should call
    /// `append_pending` where blocking is fine. Otherwise this does one
    /// pwrite, and waits for the writer lock only while another appender
    /// does its pwrite, so an async caller can append in place without a
    /// thread hand-off. (Falling back on a busy lock instead measured 35%
    /// slower: with 8 producers the lock is usually busy.)
    pub fn try_append_pending<'a>(&self, batch: impl Into<BatchRef<'a>>) -> Option<Result<PendingAppend>> {
        let batch = batch.into();
        let config = self.config();
        let header = match self.check_batch(&config, batch.bytes()) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let mut w = lock(&self.writer);
        match self.roll_due(&w, &config, batch.bytes().len(), header.record_count) {
            Ok(false) => Some(self.append_locked(&mut w, &config, header, batch, false)),
            Ok(true) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn check_batch(&self, config: &LogConfig, batch: &[u8]) -> Result<BatchHeader> {
        if batch.len() > config.batch_bytes_max {
            return Err(StorageError::BatchTooLarge { size: batch.len(), limit: config.batch_bytes_max });
        }
        BatchHeader::parse(batch, BATCH_BYTES_LIMIT).map_err(|e| StorageError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            first_offset: 0,
            reason: format!("append of an invalid batch: {e}"),
        })
    }

    /// The append itself, under the writer lock; `roll` (from
    /// [`Log::roll_due`] under the same lock) starts a new segment first.
    fn append_locked(
        &self,
        w: &mut Writer,
        config: &LogConfig,
        header: BatchHeader,
        batch: BatchRef<'_>,
        roll: bool,
    ) -> Result<PendingAppend> {
        let (outcome, epoch) = {
            if let Some(reason) = &w.poisoned {
                return Err(StorageError::Poisoned { path: self.dir.clone(), reason: reason.clone() });
            }
            if let Some(p) = header.producer() {
                match w.producers.check(p.producer_id, p.first_sequence) {
                    SequenceCheck::New => {}
                    SequenceCheck::Duplicate { base_offset, last_offset } => {
                        // The original may still be waiting for its fsync,
                        // so the retry waits for the same one.
                        return Ok(PendingAppend {
                            outcome: AppendOutcome { base_offset, last_offset, duplicate: true },
                            epoch: w.epoch,
                            needs_sync: config.flush == FlushPolicy::Always,
                        });
                    }
                    SequenceCheck::TooOld { last_sequence } => {
                        return Err(StorageError::SequenceTooOld {
                            producer_id: p.producer_id,
                            sequence: p.first_sequence,
                            last_sequence,
                        })
                    }
                    SequenceCheck::Overlaps { first_sequence, last_sequence } => {
                        return Err(StorageError::SequenceOverlaps {
                            producer_id: p.producer_id,
                            sequence: p.first_sequence,
                            first_sequence,
                            last_sequence,
                        })
                    }
                }
            }
            if roll {
                self.roll(w, config)?;
            }
            let base_offset = w.next_offset;
            let position = w.position;
            let batch_len = batch.bytes().len() as u64;
            let written = match batch {
                BatchRef::Stamp(bytes) => {
                    batch::set_base_offset(bytes, base_offset);
                    w.active.log.write_all_at(bytes, position)
                }
                BatchRef::Shared(bytes) => {
                    let mut stamp = [0u8; 8];
                    batch::set_base_offset(&mut stamp, base_offset);
                    let log = &w.active.log;
                    log.write_all_at(&stamp, position).and_then(|()| log.write_all_at(&bytes[8..], position + 8))
                }
            };
            if let Err(e) = written {
                self.undo_write(w, position, &e);
                return Err(StorageError::io(&w.active.log_path, e));
            }
            let stamped = BatchHeader { base_offset, ..header };
            let active = w.active.clone();
            let idx = active.indexes()?;
            let (mut since, mut max_ts) = (w.bytes_since_entry, w.max_timestamp);
            active.index_batch(idx, position, &stamped, &mut since, &mut max_ts);
            active.note_timestamp(stamped.max_timestamp);
            w.bytes_since_entry = since;
            w.max_timestamp = max_ts;
            w.position += batch_len;
            w.next_offset = stamped.next_offset();
            if w.first_append_ms.is_none() {
                w.first_append_ms = Some(self.clock.now_ms());
            }
            if let Some(p) = header.producer() {
                w.producers.record(
                    p.producer_id,
                    ProducerBatch {
                        first_sequence: p.first_sequence,
                        record_count: header.record_count,
                        base_offset,
                        last_offset: stamped.last_offset(),
                    },
                );
            }
            if config.flush != FlushPolicy::Always {
                self.publish(w);
            }
            let outcome = AppendOutcome { base_offset, last_offset: stamped.last_offset(), duplicate: false };
            (outcome, w.epoch)
        };
        Ok(PendingAppend { outcome, epoch, needs_sync: config.flush == FlushPolicy::Always })
    }

    /// Rolls back a failed write so no partial batch stays in the file.
    fn undo_write(&self, w: &mut Writer, position: u64, cause: &std::io::Error) {
        if let Err(e) = w.active.log.set_len(position) {
            tracing::error!(log = %w.active.log_path.display(), error = %e, "cannot cut a failed write; refusing writes until reopen");
            w.poisoned = Some(format!("write failed ({cause}) and cutting it failed ({e})"));
        } else {
            tracing::warn!(log = %w.active.log_path.display(), position, error = %cause, "append failed; cut the partial write");
        }
    }

    /// Makes everything written so far visible to readers.
    fn publish(&self, w: &Writer) {
        w.active.set_readable_len(w.position);
        self.high_watermark.fetch_max(w.next_offset, Ordering::AcqRel);
    }

    /// Whether the next batch must go into a new segment.
    fn roll_due(&self, w: &Writer, config: &LogConfig, batch_len: usize, records: u32) -> Result<bool> {
        if w.position == 0 {
            return Ok(false);
        }
        let too_big = w.position + batch_len as u64 > config.segment_bytes;
        let too_old = w.first_append_ms.is_some_and(|t| self.clock.now_ms() - t >= config.segment_ms);
        let offsets_full = w.next_offset + records as u64 - w.active.base_offset > u32::MAX as u64;
        let index_full = w.active.indexes()?.offset.len() >= config.limits().index_capacity;
        Ok(too_big || too_old || offsets_full || index_full || w.position + batch_len as u64 > u32::MAX as u64)
    }

    /// Closes the active segment (fsynced, indexes trimmed) and starts a new one.
    fn roll(&self, w: &mut Writer, config: &LogConfig) -> Result<()> {
        let new = Arc::new(Segment::create(self.fs.clone(), &self.dir, w.next_offset, config.limits())?);
        // Under `always` the old segment is fsynced here (its acknowledged
        // batches already are; this covers the ones still waiting). Under
        // `never` and `interval` nobody waits for it, so the fsync is left to
        // the next sync or `sync_closed`, and the directory fsync and index
        // trim to `finish_rolls`, all off the writer lock: while the kernel
        // writes back GBs, each of them can wait a second for ext4's journal,
        // and every producer with it.
        let sync_now =
            (config.flush == FlushPolicy::Always || w.durable_offset >= w.next_offset) && w.unsynced_closed.is_empty();
        w.rolls += 1;
        if sync_now {
            // Guards against a power loss dropping the new segment's
            // directory entry: fdatasync of the file alone does not persist
            // its name, and acknowledged batches are about to be fsynced
            // into it.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                let _ = new.delete();
                w.rolls -= 1;
                return Err(StorageError::io(&self.dir, e));
            }
            w.dir_synced_rolls = w.rolls;
            if let Err(e) = w.active.close() {
                let _ = new.delete();
                w.poisoned = Some(format!("closing segment failed: {e}"));
                return Err(e);
            }
        } else {
            w.closing.push(w.active.clone());
        }
        self.publish(w);
        if sync_now {
            // Everything written so far is now durable: release any
            // appender waiting for it.
            {
                let mut s = lock(&self.sync);
                s.synced_offset = s.synced_offset.max(w.next_offset);
            }
            self.synced.notify_all();
        } else {
            let rolled_ms = self.clock.now_ms();
            w.unsynced_closed.push(Rolled { segment: w.active.clone(), end_offset: w.next_offset, rolled_ms });
        }
        self.segments.write().unwrap_or_else(|e| e.into_inner()).insert(new.base_offset, new.clone());
        w.active = new;
        w.position = 0;
        w.bytes_since_entry = 0;
        w.max_timestamp = i64::MIN;
        w.first_append_ms = None;
        if sync_now {
            w.durable_offset = w.next_offset;
        }
        w.durable_position = 0;
        let points = checkpoint_points(w);
        let cp = self.checkpoint_of(w);
        if let Err(e) = self.write_checkpoint(cp) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the recovery checkpoint; recovery will scan more");
        }
        w.checkpointed = points;
        tracing::debug!(dir = %self.dir.display(), base_offset = w.next_offset, synced = sync_now, "rolled segment");
        Ok(())
    }

    /// Whether a roll waits for [`Log::finish_rolls`].
    pub fn has_unfinished_rolls(&self) -> bool {
        !lock(&self.writer).closing.is_empty()
    }

    /// The half of a `never`/`interval` roll that may wait on the disk, for
    /// a background task (the broker's runs within 50 ms), never an
    /// appender: the directory fsync that makes the new segment's name
    /// durable, and the trim (msync, shrink, fsync) of the old segment's
    /// indexes. Until then the old indexes keep their preallocated size,
    /// as the active segment's do. Any sync does the directory fsync itself
    /// first, so no data is called durable before its segment's name is. A
    /// failure poisons the log: the segments' data is visible to readers.
    pub fn finish_rolls(&self) -> Result<()> {
        let (closing, rolls) = {
            let mut w = lock(&self.writer);
            (std::mem::take(&mut w.closing), w.rolls)
        };
        if closing.is_empty() {
            return Ok(());
        }
        self.sync_dir_through(rolls)?;
        for segment in closing {
            if let Err(e) = segment.close_unsynced() {
                poison(&mut lock(&self.writer), &format!("closing segment failed: {e}"));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Fsyncs the partition directory unless a fsync since the `rolls`-th
    /// roll already did.
    fn sync_dir_through(&self, rolls: u64) -> Result<()> {
        if lock(&self.writer).dir_synced_rolls >= rolls {
            return Ok(());
        }
        // Guards against a power loss dropping the names of rolled segments
        // whose data is about to be called durable (or already is by the
        // kernel's writeback, which a later fsync would then count on).
        match self.fs.sync_dir(&self.dir) {
            Ok(()) => {
                let mut w = lock(&self.writer);
                w.dir_synced_rolls = w.dir_synced_rolls.max(rolls);
                Ok(())
            }
            Err(e) => {
                poison(&mut lock(&self.writer), &format!("fsync of the partition directory failed: {e}"));
                Err(StorageError::io(&self.dir, e))
            }
        }
    }

    /// Whether rolled segments wait for their fsync ([`Log::sync_closed`]).
    pub fn has_unsynced_closed(&self) -> bool {
        !lock(&self.writer).unsynced_closed.is_empty()
    }

    /// Whether a segment rolled at least `min_age_ms` ago waits for its
    /// fsync (what [`Log::sync_closed`] with the same age would sync).
    pub fn closed_sync_due(&self, min_age_ms: u64) -> bool {
        let now = self.clock.now_ms();
        lock(&self.writer).unsynced_closed.first().is_some_and(|r| rolled_long_enough(r, now, min_age_ms))
    }

    /// Fsyncs the segments rolled without one at least `min_age_ms` ago
    /// (oldest first, so the durable point moves in order), without holding
    /// the writer lock, and advances the durable point past them. A failed
    /// fsync poisons the log: readers may have seen those batches.
    pub fn sync_closed(&self, min_age_ms: u64) -> Result<()> {
        let now = self.clock.now_ms();
        let (closed, rolls) = {
            let w = lock(&self.writer);
            let due = w.unsynced_closed.iter().take_while(|r| rolled_long_enough(r, now, min_age_ms));
            (due.cloned().collect::<Vec<Rolled>>(), w.rolls)
        };
        if closed.is_empty() {
            return Ok(());
        }
        self.sync_dir_through(rolls)?;
        let result = sync_segments(&closed);
        let mut w = lock(&self.writer);
        if let Err(reason) = result {
            poison(&mut w, &reason);
            return Err(StorageError::SyncFailed { path: self.dir.clone(), reason });
        }
        forget_synced(&mut w, &closed);
        Ok(())
    }

    /// Waits until offsets below `target` are durable, running the fsync
    /// itself if no other appender is (group commit).
    fn sync_until(&self, target: u64, epoch: u64) -> Result<()> {
        let mut s = lock(&self.sync);
        loop {
            if epoch < s.reopened_below {
                return Err(StorageError::SyncFailed {
                    path: self.dir.clone(),
                    reason: format!("the log was reopened after an I/O error ({})", s.last_error),
                });
            }
            if s.discard_epoch > epoch && s.synced_offset < target {
                return Err(StorageError::SyncFailed { path: self.dir.clone(), reason: s.last_error.clone() });
            }
            if s.synced_offset >= target {
                return Ok(());
            }
            if !s.in_progress {
                s.in_progress = true;
                drop(s);
                let result = self.sync_once();
                s = lock(&self.sync);
                s.in_progress = false;
                match result {
                    Ok(offset) => s.synced_offset = s.synced_offset.max(offset),
                    Err((new_epoch, reason)) => {
                        s.discard_epoch = s.discard_epoch.max(new_epoch);
                        s.last_error = reason;
                        if let Some(poison) = lock(&self.writer).poisoned.clone() {
                            self.synced.notify_all();
                            return Err(StorageError::Poisoned { path: self.dir.clone(), reason: poison });
                        }
                    }
                }
                self.synced.notify_all();
                continue;
            }
            s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One fsync of the active segment. On success returns the offset it
    /// covers; on failure discards the unsynced tail (or poisons the log) and
    /// returns the new epoch and the reason.
    fn sync_once(&self) -> std::result::Result<u64, (u64, String)> {
        let (segment, offset, position, closed, rolls) = {
            let w = lock(&self.writer);
            (w.active.clone(), w.next_offset, w.position, w.unsynced_closed.clone(), w.rolls)
        };
        // Segment names first, then rolled segments: the durable point
        // cannot pass either.
        if let Err(e) = self.sync_dir_through(rolls) {
            let mut w = lock(&self.writer);
            w.epoch += 1;
            return Err((w.epoch, e.to_string()));
        }
        if let Err(reason) = sync_segments(&closed) {
            let mut w = lock(&self.writer);
            poison(&mut w, &reason);
            w.epoch += 1;
            return Err((w.epoch, reason));
        }
        // The fsync that makes group-committed appends durable: guards
        // against a power loss losing batches we are about to acknowledge.
        let result = segment.log.sync_data();
        let mut w = lock(&self.writer);
        forget_synced(&mut w, &closed);
        match result {
            Ok(()) => {
                if Arc::ptr_eq(&w.active, &segment) && w.durable_position < position {
                    w.durable_position = position;
                }
                w.durable_offset = w.durable_offset.max(offset);
                if Arc::ptr_eq(&w.active, &segment) {
                    segment.set_readable_len(segment.readable_len().max(position));
                }
                self.high_watermark.fetch_max(offset, Ordering::AcqRel);
                Ok(offset)
            }
            Err(e) => {
                let reason = format!("fsync of {} failed: {e}", segment.log_path.display());
                tracing::error!(%reason, "discarding unsynced appends");
                if self.high_watermark() > w.durable_offset || !Arc::ptr_eq(&w.active, &segment) {
                    // Readers may have seen data that is not durable (policy
                    // changed at runtime, or a roll raced): we cannot cut it.
                    w.poisoned = Some(reason.clone());
                } else if let Err(cut) = self.discard_unsynced(&mut w) {
                    w.poisoned = Some(format!("{reason}; cutting the unsynced tail failed: {cut}"));
                }
                w.epoch += 1;
                Err((w.epoch, reason))
            }
        }
    }

    /// Cuts the active segment back to the last durable point.
    fn discard_unsynced(&self, w: &mut Writer) -> std::io::Result<()> {
        let position = w.durable_position;
        w.active.log.set_len(position)?;
        let idx = w.active.indexes().map_err(std::io::Error::other)?;
        idx.offset.truncate_to_position(position);
        idx.time.truncate_to_relative(w.durable_offset - w.active.base_offset);
        w.producers.truncate(w.durable_offset);
        w.next_offset = w.durable_offset;
        w.position = position;
        w.bytes_since_entry = position - idx.offset.last().map(|e| e.position as u64).unwrap_or(0);
        // The checkpoint's written point may lie past the cut, where new
        // batches will start at other positions: replace it before any.
        let points = checkpoint_points(w);
        let cp = self.checkpoint_of(w);
        self.write_checkpoint(cp).map_err(std::io::Error::other)?;
        w.checkpointed = points;
        Ok(())
    }

    /// Makes every append so far durable now (whatever the flush policy).
    pub fn sync(&self) -> Result<()> {
        let (target, epoch, poisoned) = {
            let w = lock(&self.writer);
            (w.next_offset, w.epoch, w.poisoned.clone())
        };
        if let Some(reason) = poisoned {
            return Err(StorageError::Poisoned { path: self.dir.clone(), reason });
        }
        self.sync_until(target, epoch)
    }

    /// Syncs, then records the durable point and producer state so a later
    /// recovery starts scanning there.
    pub fn checkpoint(&self) -> Result<()> {
        self.sync()?;
        self.checkpoint_hint().map(|_| ())
    }

    /// Records the durable and written points reached so far, without
    /// syncing anything, if either moved since the last checkpoint; returns
    /// whether it wrote one. After a process crash in the same boot,
    /// recovery scans only what was written after it (about a checkpoint interval of
    /// appends); after a power loss, what was written after the durable
    /// point (under `never`, moved only when rolled segments are synced).
    pub fn checkpoint_hint(&self) -> Result<bool> {
        let cp = {
            let mut w = lock(&self.writer);
            let points = checkpoint_points(&w);
            if points == w.checkpointed {
                return Ok(false);
            }
            w.checkpointed = points;
            self.checkpoint_of(&mut w)
        };
        self.write_checkpoint(cp)?;
        Ok(true)
    }

    /// Whether [`Log::checkpoint_hint`] has something new to record.
    pub fn checkpoint_stale(&self) -> bool {
        let w = lock(&self.writer);
        checkpoint_points(&w) != w.checkpointed
    }

    /// The checkpoint for the writer's current state: its durable point (or
    /// the last one recorded, while rolled segments wait for their fsync)
    /// and, unless the log is poisoned (written bytes in doubt), its
    /// written point in this boot.
    fn checkpoint_of(&self, w: &mut Writer) -> (u64, Checkpoint) {
        if durable_point(w).is_some() {
            w.last_durable = durable_checkpoint(w);
        }
        let mut cp = w.last_durable.clone();
        cp.same_boot = self.fs.boot_id().filter(|_| w.poisoned.is_none()).map(|boot_id| SameBoot {
            boot_id,
            segment_base: w.active.base_offset,
            position: w.position,
            next_offset: w.next_offset,
            producers: w.producers.clone(),
        });
        w.checkpoint_seq += 1;
        (w.checkpoint_seq, cp)
    }

    /// Writes the checkpoint as a hint: the log before it was fsynced first,
    /// so a lost or torn checkpoint only makes the next recovery scan more.
    /// A checkpoint older than the one on disk is dropped.
    fn write_checkpoint(&self, (seq, cp): (u64, Checkpoint)) -> Result<()> {
        let mut on_disk = lock(&self.checkpoint_file);
        if seq < *on_disk {
            return Ok(());
        }
        let path = self.dir.join(checkpoint::FILE_NAME);
        super::fs::write_hint(self.fs.as_ref(), &path, &cp.encode()).map_err(|e| StorageError::io(&path, e))?;
        *on_disk = seq;
        Ok(())
    }

    /// Clean close: sync, checkpoint at the end, write the clean marker.
    /// The log refuses writes afterwards.
    pub fn close(&self) -> Result<()> {
        self.finish_rolls()?;
        self.checkpoint()?;
        let mut w = lock(&self.writer);
        w.active.indexes()?.offset.flush().map_err(|e| StorageError::io(w.active.index_path(), e))?;
        w.active.indexes()?.time.flush().map_err(|e| StorageError::io(w.active.time_index_path(), e))?;
        let path = self.dir.join(CLEAN_SHUTDOWN_FILE);
        self.fs.write_atomic(&path, b"clean\n").map_err(|e| StorageError::io(&path, e))?;
        w.poisoned = Some("the log is closed".into());
        w.closed = true;
        Ok(())
    }

    /// Whether writes are refused after an I/O error (not a clean close).
    pub fn is_poisoned(&self) -> bool {
        let w = lock(&self.writer);
        w.poisoned.is_some() && !w.closed
    }

    /// Reopens a poisoned log in place once its fault has cleared; true if
    /// it did. Recovery runs again from the durable point, checking every
    /// batch after it; the bytes past that point are written again and
    /// fsynced (after a failed fsync the kernel may have marked them clean
    /// without writing them, so a later fsync alone would prove nothing);
    /// then the fresh state replaces the poisoned one. Refused (and left
    /// poisoned) if the fault persists, or if recovery would end below the
    /// high watermark: offsets readers saw are never reused. Appends from
    /// before the reopen are never acknowledged after it. Readers holding
    /// segments from before keep reading them.
    pub fn reopen_if_poisoned(&self) -> Result<bool> {
        let mut w = lock(&self.writer);
        let Some(reason) = w.poisoned.clone() else { return Ok(false) };
        if w.closed || lock(&self.sync).in_progress {
            return Ok(false);
        }
        let poisoned =
            |why: String| StorageError::Poisoned { path: self.dir.clone(), reason: format!("{reason}; {why}") };
        // Recovery must check everything after the durable point: the
        // bytes written after it are in doubt.
        let durable_only = Checkpoint { same_boot: None, ..w.last_durable.clone() };
        let path = self.dir.join(checkpoint::FILE_NAME);
        super::fs::write_hint(self.fs.as_ref(), &path, &durable_only.encode())
            .map_err(|e| poisoned(format!("cannot write the recovery checkpoint: {e}")))?;
        let fresh = Log::open(&self.dir, self.fs.clone(), self.clock.clone(), self.config())
            .map_err(|e| poisoned(format!("reopening failed: {e}")))?;
        let seen = self.high_watermark();
        if fresh.high_watermark() < seen {
            return Err(poisoned(format!(
                "reopening would end the log at offset {}, below the high watermark {seen} readers saw",
                fresh.high_watermark()
            )));
        }
        fresh.rewrite_after_durable().map_err(|e| poisoned(format!("rewriting unsynced data failed: {e}")))?;
        fresh.sync().map_err(|e| poisoned(format!("fsync after reopening failed: {e}")))?;
        let Log { segments, log_start_offset, high_watermark, writer, sync, checkpoint_file, .. } = fresh;
        let epoch = w.epoch + 1;
        *w = writer.into_inner().unwrap_or_else(|e| e.into_inner());
        w.epoch = epoch;
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) =
            segments.into_inner().unwrap_or_else(|e| e.into_inner());
        self.log_start_offset.store(log_start_offset.into_inner(), Ordering::Release);
        self.high_watermark.store(high_watermark.into_inner(), Ordering::Release);
        {
            let mut s = lock(&self.sync);
            let last_error = reason.clone();
            *s = sync.into_inner().unwrap_or_else(|e| e.into_inner());
            s.discard_epoch = epoch;
            s.reopened_below = epoch;
            s.last_error = last_error;
        }
        *lock(&self.checkpoint_file) = checkpoint_file.into_inner().unwrap_or_else(|e| e.into_inner());
        drop(w);
        self.synced.notify_all();
        tracing::info!(dir = %self.dir.display(), high_watermark = self.high_watermark(), poisoned_by = %reason, "reopened the log after its fault cleared");
        Ok(true)
    }

    /// Writes every byte after the durable point again, so the next fsync
    /// really writes it (see [`Log::reopen_if_poisoned`]).
    fn rewrite_after_durable(&self) -> Result<()> {
        let (base, position) = {
            let w = lock(&self.writer);
            (w.last_durable.segment_base, w.last_durable.position)
        };
        for segment in self.segments_snapshot().iter().filter(|s| s.base_offset >= base) {
            segment.rewrite_from(if segment.base_offset == base { position } else { 0 })?;
        }
        Ok(())
    }

    /// Whether there are appends not yet covered by a sync.
    pub fn has_unsynced(&self) -> bool {
        let w = lock(&self.writer);
        w.next_offset > w.durable_offset
    }

    /// Reads whole batches from `from` on, up to about `bytes_max` (at least
    /// one batch when any is there). Reading at the high watermark returns
    /// no batches; outside `[log start, high watermark]` is an error.
    pub fn read(&self, from: u64, bytes_max: usize) -> Result<ReadBatches> {
        let high_watermark = self.high_watermark();
        let log_start_offset = self.log_start_offset();
        let mut out = ReadBatches { batches: Vec::new(), high_watermark, log_start_offset };
        if from < log_start_offset || from > high_watermark {
            return Err(StorageError::OffsetOutOfRange { offset: from, log_start_offset, high_watermark });
        }
        if from == high_watermark {
            return Ok(out);
        }
        let segments: Vec<Arc<Segment>> = {
            let map = self.segments.read().unwrap_or_else(|e| e.into_inner());
            let first = map.range(..=from).next_back().map(|(b, _)| *b).unwrap_or(0);
            map.range(first..).map(|(_, s)| s.clone()).collect()
        };
        let mut from = from;
        for (i, segment) in segments.iter().enumerate() {
            let next_segment_base = segments.get(i + 1).map(|s| s.base_offset);
            let bounds = Bounds { high_watermark, next_segment_base };
            match segment.read(from, bytes_max, &bounds)? {
                SegmentRead::Batches(batches) => {
                    out.batches = batches;
                    break;
                }
                // Fall through only where the segment really ended, and
                // the next one continues it.
                SegmentRead::Ended { next_offset } => match next_segment_base {
                    Some(next_base) if next_offset == next_base => from = from.max(next_base),
                    Some(next_base) => {
                        return Err(StorageError::Corrupt {
                            path: segment.log_path.clone(),
                            position: segment.readable_len(),
                            first_offset: next_offset,
                            reason: format!(
                                "the segment ends at offset {next_offset} but the next one starts at {next_base}: \
                                 offsets {next_offset}..{next_base} are missing"
                            ),
                        })
                    }
                    None => break,
                },
            }
        }
        if out.batches.is_empty() && from < self.log_start_offset() {
            // Retention removed the segment while we were reading.
            return Err(StorageError::OffsetOutOfRange {
                offset: from,
                log_start_offset: self.log_start_offset(),
                high_watermark,
            });
        }
        Ok(out)
    }

    /// The first offset whose record timestamp is >= `timestamp_ms`, or the
    /// high watermark when there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64> {
        let high_watermark = self.high_watermark();
        let segments = self.segments_snapshot();
        for (i, segment) in segments.iter().enumerate() {
            if segment.readable_len() == 0 || segment.max_timestamp()? < timestamp_ms {
                continue;
            }
            let bounds = Bounds { high_watermark, next_segment_base: segments.get(i + 1).map(|s| s.base_offset) };
            if let Some(offset) = segment.offset_for_timestamp(timestamp_ms, &bounds)? {
                return Ok(offset.max(self.log_start_offset()));
            }
        }
        Ok(high_watermark)
    }

    /// Closes the active segment now (if it holds anything) and returns the
    /// offset the new one starts at.
    pub fn roll_now(&self) -> Result<u64> {
        let config = self.config();
        let mut w = lock(&self.writer);
        if let Some(reason) = &w.poisoned {
            return Err(StorageError::Poisoned { path: self.dir.clone(), reason: reason.clone() });
        }
        if w.position > 0 {
            self.roll(&mut w, &config)?;
        }
        let next = w.next_offset;
        drop(w);
        self.finish_rolls()?;
        Ok(next)
    }

    /// Deletes every closed segment that ends at or before `offset`,
    /// advancing the log start offset (used to drop what a snapshot replaced).
    pub fn delete_segments_before(&self, offset: u64) -> Result<usize> {
        let segments = self.segments_snapshot();
        let mut deleted = 0;
        for pair in segments.windows(2) {
            if pair[1].base_offset > offset {
                break;
            }
            self.delete_oldest(&pair[0], pair[1].base_offset)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn delete_oldest(&self, segment: &Segment, next_base: u64) -> Result<()> {
        self.segments.write().unwrap_or_else(|e| e.into_inner()).remove(&segment.base_offset);
        // Readers asking below the new start get OUT_OF_RANGE, not an I/O error.
        self.log_start_offset.fetch_max(next_base, Ordering::AcqRel);
        segment.delete()
    }

    /// Deletes whole closed segments past `retention.ms` or over
    /// `retention.bytes`, advancing the log start offset. An active segment
    /// whose records have all expired is rolled so the next pass can delete
    /// it. Returns how many segments were deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        let config = self.config();
        let now = self.clock.now_ms();
        let segments = self.segments_snapshot();
        let mut total: u64 = segments.iter().map(|s| s.readable_len()).sum();
        let mut deleted = 0;
        for (i, segment) in segments.iter().enumerate().take(segments.len().saturating_sub(1)) {
            let size = segment.readable_len();
            let expired = config.retention_ms >= 0 && segment.max_timestamp()? < now - config.retention_ms;
            let over = config.retention_bytes >= 0 && total - size >= config.retention_bytes as u64;
            if !(expired || over) {
                break;
            }
            self.delete_oldest(segment, segments[i + 1].base_offset)?;
            total -= size;
            deleted += 1;
            tracing::info!(segment = %segment.log_path.display(), bytes = size, expired, over_size = over, "retention deleted segment");
        }
        if config.retention_ms >= 0 {
            let mut w = lock(&self.writer);
            let expired = w.position > 0 && w.max_timestamp < now - config.retention_ms;
            if expired && w.poisoned.is_none() {
                self.roll(&mut w, &config)?;
            }
        }
        self.finish_rolls()?;
        Ok(deleted)
    }
}

/// Index entries redone by recovery from `from` (the scan start) on.
struct ReIndex<'a> {
    idx: &'a super::segment::SegmentIndexes,
    since: u64,
    max_ts: i64,
}

impl<'a> ReIndex<'a> {
    /// Drops the entries at or past `from` (offset `next_offset`).
    fn start(segment: &'a Segment, from: u64, next_offset: u64) -> Result<ReIndex<'a>> {
        let idx = segment.indexes()?;
        idx.offset.truncate_to_position(from);
        idx.time.truncate_to_relative(next_offset - segment.base_offset);
        let since = from - idx.offset.last().map(|e| e.position as u64).unwrap_or(0);
        let max_ts = idx.time.last().map(|e| e.timestamp_ms).unwrap_or(i64::MIN);
        Ok(ReIndex { idx, since, max_ts })
    }

    fn add(&mut self, segment: &Segment, position: u64, header: &BatchHeader) {
        segment.index_batch(self.idx, position, header, &mut self.since, &mut self.max_ts);
    }
}

/// The writer's durable point as (segment, position), when it is in the
/// active segment (not while rolled segments still wait for their fsync).
fn durable_point(w: &Writer) -> Option<(u64, u64)> {
    let in_active = w.unsynced_closed.is_empty() && w.durable_offset >= w.active.base_offset;
    in_active.then_some((w.active.base_offset, w.durable_position))
}

/// The durable point, if in the active segment, and the written point.
type CheckpointPoints = (Option<(u64, u64)>, (u64, u64));

fn checkpoint_points(w: &Writer) -> CheckpointPoints {
    (durable_point(w), (w.active.base_offset, w.position))
}

/// The checkpoint at the durable point (see [`durable_point`]).
fn durable_checkpoint(w: &Writer) -> Checkpoint {
    let mut producers = w.producers.clone();
    producers.truncate(w.durable_offset);
    Checkpoint {
        segment_base: w.active.base_offset,
        position: w.durable_position,
        next_offset: w.durable_offset,
        producers,
        same_boot: None,
    }
}

/// Refuses further writes after a rolled segment's fsync failed: readers
/// may have seen its batches, so they cannot be cut.
fn poison(w: &mut Writer, reason: &str) {
    tracing::error!(%reason, "poisoning the log");
    w.poisoned = Some(reason.to_string());
}

fn rolled_long_enough(r: &Rolled, now_ms: i64, min_age_ms: u64) -> bool {
    now_ms.saturating_sub(r.rolled_ms) >= min_age_ms.min(i64::MAX as u64) as i64
}

/// Fsyncs rolled segments; the error names the first that failed.
fn sync_segments(closed: &[Rolled]) -> std::result::Result<(), String> {
    for Rolled { segment, .. } in closed {
        // Guards against a power loss losing a rolled segment's tail after
        // later segments (and checkpoints pointing into them) are durable.
        segment.log.sync_data().map_err(|e| format!("fsync of {} failed: {e}", segment.log_path.display()))?;
    }
    Ok(())
}

/// Drops synced segments from the writer's list and advances the durable
/// point to the active segment's start once none is left before it.
fn forget_synced(w: &mut Writer, synced: &[Rolled]) {
    w.unsynced_closed.retain(|r| !synced.iter().any(|done| Arc::ptr_eq(&r.segment, &done.segment)));
    if let Some(end) = synced.iter().map(|r| r.end_offset).max() {
        let next_unsynced = w.unsynced_closed.first().map_or(end, |r| r.segment.base_offset);
        w.durable_offset = w.durable_offset.max(end.min(next_unsynced));
    }
}

fn read_checkpoint(fs: &dyn FileSystem, dir: &Path) -> Option<Checkpoint> {
    let path = dir.join(checkpoint::FILE_NAME);
    if !fs.exists(&path) {
        return None;
    }
    match fs.read_file(&path).map_err(|e| e.to_string()).and_then(|b| Checkpoint::decode(&b).map_err(String::from)) {
        Ok(cp) => Some(cp),
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "ignoring unreadable recovery checkpoint");
            None
        }
    }
}

/// The state recovery hands to the writer.
struct Recovered {
    next_offset: u64,
    position: u64,
    producers: ProducerState,
    /// Up to where the recovered log is known to be fsynced: recovery
    /// trusted it without reading it back, or read it after a new boot.
    durable: Checkpoint,
}

/// Finds the end of the valid log. After a clean close the checkpoint at
/// the end is trusted. Otherwise batches are validated from the checkpoint
/// (or the start of the active segment) on; the first invalid byte and
/// everything after it are cut, and the indexes of scanned segments rebuilt.
fn recover(
    dir: &Path,
    fs: &dyn FileSystem,
    segments: &mut BTreeMap<u64, Arc<Segment>>,
    clean: bool,
    checkpoint: Option<Checkpoint>,
) -> Result<Recovered> {
    let active = segments.values().next_back().expect("at least one segment").clone();
    if let Some(cp) = &checkpoint {
        if clean && cp.segment_base == active.base_offset && cp.position == active.readable_len() {
            return Ok(Recovered {
                next_offset: cp.next_offset,
                position: cp.position,
                producers: cp.producers.clone(),
                durable: Checkpoint { same_boot: None, ..cp.clone() },
            });
        }
    }
    let started = std::time::Instant::now();
    // The durable point: the checkpoint's if it names a segment we have and
    // lies inside it. Without one, the start of the log: under `never` and
    // `interval` a rolled segment is fsynced only some time after the roll
    // (`rolled_segment_sync_delay_ms`), so after a power loss any of the
    // newest closed segments may have a torn tail, and nothing on disk says
    // which. This costs a full scan only when the checkpoint is lost too.
    let inside = |base: u64, position: u64| segments.get(&base).is_some_and(|s| position <= s.readable_len());
    let durable = match &checkpoint {
        Some(cp) if inside(cp.segment_base, cp.position) => Checkpoint { same_boot: None, ..cp.clone() },
        _ => {
            let base = *segments.keys().next().expect("at least one segment");
            if base != active.base_offset {
                tracing::warn!(dir = %dir.display(), segments = segments.len(), "no usable recovery checkpoint: scanning the whole log");
            }
            Checkpoint {
                segment_base: base,
                position: 0,
                next_offset: base,
                producers: ProducerState::default(),
                same_boot: None,
            }
        }
    };
    // Where to start: in the boot that wrote the checkpoint, its written
    // point (the page cache still holds every completed write); otherwise
    // the durable point.
    let boot = fs.boot_id();
    let checkpoint_boot = checkpoint.as_ref().and_then(|cp| cp.same_boot.as_ref()).map(|w| w.boot_id);
    // After a new boot, what recovery reads comes from the disk: durable.
    let new_boot = boot.is_some() && checkpoint_boot.is_some() && checkpoint_boot != boot;
    let written = checkpoint.and_then(|cp| cp.same_boot).filter(|w| {
        boot == Some(w.boot_id)
            && inside(w.segment_base, w.position)
            && (w.segment_base, w.position) >= (durable.segment_base, durable.position)
    });
    let written_used = written.is_some();
    let (start_base, start_position, start_offset, mut producers) = match written {
        Some(w) => (w.segment_base, w.position, w.next_offset, w.producers),
        None => (durable.segment_base, durable.position, durable.next_offset, durable.producers.clone()),
    };
    let to_scan: Vec<Arc<Segment>> = segments.range(start_base..).map(|(_, s)| s.clone()).collect();
    let mut next_offset = start_offset;
    let mut position = start_position;
    let mut cut_at: Option<u64> = None;
    let mut last_progress = std::time::Instant::now();
    for (i, segment) in to_scan.iter().enumerate() {
        if last_progress.elapsed() >= std::time::Duration::from_secs(1) {
            tracing::info!(dir = %dir.display(), scanned = i, segments = to_scan.len(), next_offset, "recovery in progress");
            last_progress = std::time::Instant::now();
        }
        let from = if i == 0 { start_position } else { 0 };
        if i > 0 && segment.base_offset != next_offset {
            tracing::warn!(segment = %segment.log_path.display(), expected = next_offset, "segment does not continue the log; removing it and what follows");
            cut_at = Some(segment.base_offset);
            break;
        }
        let file_len = segment.readable_len();
        // A closed segment older than the one before the active one that
        // scans whole keeps its indexes closed until first read (a full
        // scan of a thousand segments must not map two thousand indexes).
        // Opening checks them against the log, and lookups scan forward
        // from an entry, so entries a power loss took only slow them down.
        // Every other scanned segment gets the entries past the scan start
        // (which may point into what is cut or was never synced) redone
        // from the batches this scan checks, in the same pass.
        let may_settle = i + 2 < to_scan.len() && from == 0;
        let mut reindex = if may_settle { None } else { Some(ReIndex::start(segment, from, next_offset)?) };
        let end = segment.scan(from, file_len, true, Some(next_offset), |pos, h| {
            if let Some(r) = reindex.as_mut() {
                r.add(segment, pos, h);
            }
            if let Some(p) = h.producer() {
                producers.record(
                    p.producer_id,
                    ProducerBatch {
                        first_sequence: p.first_sequence,
                        record_count: h.record_count,
                        base_offset: h.base_offset,
                        last_offset: h.last_offset(),
                    },
                );
            }
        })?;
        // Reads need not check these batches again.
        segment.mark_checked(from);
        let segment_next = if end.position == from { next_offset } else { end.next_offset };
        if let Some(reason) = &end.error {
            tracing::warn!(
                segment = %segment.log_path.display(),
                position = end.position,
                bytes_cut = file_len - end.position,
                %reason,
                "cutting torn or corrupt tail"
            );
            segment.log.set_len(end.position).map_err(|e| StorageError::io(&segment.log_path, e))?;
            // Guards against the cut tail reappearing after a power loss.
            segment.log.sync_data().map_err(|e| StorageError::io(&segment.log_path, e))?;
            segment.set_readable_len(end.position);
        }
        if end.error.is_none() && reindex.is_none() {
            next_offset = segment_next;
            position = end.position;
            continue;
        }
        if reindex.is_none() {
            // A closed segment recovery cuts: index what is left.
            let mut r = ReIndex::start(segment, from, next_offset)?;
            segment.scan(from, end.position, false, None, |pos, h| r.add(segment, pos, h))?;
        }
        let idx = segment.indexes()?;
        // Indexes are derived and checked against the log when opened, so
        // the rebuilt entries need no msync: the kernel writes them back. An
        // msync here waited for the disk to write back every other dirty
        // file first (ext4's journal): 2.5 s before the broker could serve
        // after a SIGKILL that left 3 GB dirty. Only a cut segment's
        // indexes are synced, beside the fsync of the cut itself.
        if end.error.is_some() {
            idx.offset.flush().map_err(|e| StorageError::io(idx.offset.path(), e))?;
            idx.time.flush().map_err(|e| StorageError::io(idx.time.path(), e))?;
        }
        next_offset = segment_next;
        position = end.position;
        if end.error.is_some() {
            if let Some(next) = to_scan.get(i + 1) {
                cut_at = Some(next.base_offset);
            }
            break;
        }
    }
    if let Some(cut) = cut_at {
        let doomed: Vec<u64> = segments.range(cut..).map(|(b, _)| *b).collect();
        for base in doomed {
            if let Some(s) = segments.remove(&base) {
                tracing::warn!(segment = %s.log_path.display(), "removing segment after the recovered end");
                s.delete()?;
            }
        }
        fs.sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    }
    producers.truncate(next_offset);
    let end_base = *segments.keys().next_back().expect("at least one segment");
    let durable = if new_boot || (durable.segment_base, durable.position) > (end_base, position) {
        Checkpoint { segment_base: end_base, position, next_offset, producers: producers.clone(), same_boot: None }
    } else {
        durable
    };
    tracing::info!(
        dir = %dir.display(),
        next_offset,
        scanned_from = start_base,
        scanned_from_position = start_position,
        same_boot = written_used,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered log after unclean shutdown"
    );
    Ok(Recovered { next_offset, position, producers, durable })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{self, Record};
    use crate::storage::fs::StdFs;
    use crate::storage::SystemClock;

    fn append_one(log: &Log) {
        let record = Record { timestamp_ms: 1, key: Bytes::new(), value: Bytes::from_static(b"v"), headers: vec![] };
        log.append(&mut batch::encode(&[record], None)).unwrap();
    }

    #[test]
    fn an_older_checkpoint_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { flush: FlushPolicy::Never, ..LogConfig::default() };
        let log = Log::open(dir.path(), Arc::new(StdFs), Arc::new(SystemClock), config).unwrap();
        append_one(&log);
        // A hint taken, then delayed past a newer checkpoint (a roll's).
        let older = log.checkpoint_of(&mut lock(&log.writer));
        append_one(&log);
        let newer = log.checkpoint_of(&mut lock(&log.writer));
        log.write_checkpoint(newer.clone()).unwrap();
        log.write_checkpoint(older).unwrap();
        let on_disk = std::fs::read(dir.path().join(checkpoint::FILE_NAME)).unwrap();
        assert_eq!(Checkpoint::decode(&on_disk).unwrap(), newer.1);
    }
}
