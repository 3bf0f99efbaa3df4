//! The partition log: an ordered set of segments with one writer and any
//! number of concurrent readers.
//!
//! - `mod.rs` (this file): the types, open, reads, accessors, close.
//! - `append.rs`: appends under the writer lock, and segment rolls.
//! - `durability.rs`: group commit, fsyncs, the durable point, poisoning
//!   and reopening in place.
//! - `checkpoints.rs`: the recovery checkpoint hints.
//! - `recovery.rs`: finding the valid end of the log on open.
//! - `retention.rs`: deleting whole old segments.
//!
//! Invariants:
//! - Offsets are dense from the log start offset to the high watermark.
//! - Readers see only batches below the high watermark; under the `always`
//!   flush policy the high watermark moves only after an fsync covered the
//!   batch, so nothing a reader saw can vanish in a crash.
//! - Group commit: appenders write under the writer lock (no fsync there),
//!   then wait for a sync that covers their batch. One sync runs at a time;
//!   `always` batches appended while it runs are queued, not written, and
//!   go out in one `pwritev` when it returns, for the next sync to cover.
//!   Nothing past the written point (the queue) is ever visible, indexed
//!   for readers below the high watermark, or recorded in a checkpoint.
//! - A failed fsync is never retried: the unsynced tail is cut off and every
//!   appender waiting on it gets an error. If the cut itself fails (or
//!   readers saw the data), the log is poisoned and refuses writes until
//!   [`Log::reopen_if_poisoned`] reopens it in place once the fault clears.
//!   A panic while the writer lock is held poisons it too.
//! - No lock is held across a read; the writer lock is never held during a
//!   group-commit fsync.
//! - Only `Segment` writes segment files; this module decides what and when.

mod append;
mod checkpoints;
mod durability;
mod recovery;
mod retention;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;

use super::batch::{BatchHeader, BATCH_BYTES_LIMIT};
use super::checkpoint::Checkpoint;
use super::fs::FileSystem;
use super::producer::ProducerState;
use super::segment::{Bounds, QueuedBatch, Segment, SegmentLimits, SegmentRead};
use super::{Clock, PoisonCause, Result, StorageError};

use self::checkpoints::CheckpointPoints;
use self::durability::Rolled;
pub use super::segment::BatchRef;

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
    pub segment_age: Duration,
    /// Delete closed segments whose newest record is older than this; `None` keeps them.
    pub retention_age: Option<Duration>,
    /// Delete oldest closed segments while the log stays above this; `None` = unlimited.
    pub retention_bytes: Option<u64>,
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
            segment_age: Duration::from_secs(7 * 24 * 3600),
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            index_interval_bytes: INDEX_INTERVAL_BYTES,
            batch_bytes_max: 17 << 20,
            flush: FlushPolicy::Always,
        }
    }
}

use crate::config::{INDEX_ENTRIES_MAX, INDEX_INTERVAL_BYTES};

impl LogConfig {
    /// An internal log's (committed offsets, share group state): fsynced
    /// before every acknowledgement, small segments, nothing expires (the
    /// owner compacts it by snapshot).
    pub fn internal() -> LogConfig {
        LogConfig {
            segment_bytes: crate::config::OFFSETS_SEGMENT_BYTES,
            segment_age: Duration::MAX,
            retention_age: None,
            retention_bytes: None,
            flush: FlushPolicy::Always,
            ..LogConfig::default()
        }
    }

    fn limits(&self) -> SegmentLimits {
        let entries = self.segment_bytes / self.index_interval_bytes.max(1) + 2;
        SegmentLimits {
            index_capacity: entries.min(INDEX_ENTRIES_MAX) as usize,
            index_interval_bytes: self.index_interval_bytes,
            batch_bytes_max: BATCH_BYTES_LIMIT,
        }
    }
}

/// Milliseconds in a duration, for comparing with [`Clock`] times.
fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
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
    /// The writer epoch the batch was written in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether [`Log::wait_durable`] has anything to wait for.
    pub fn needs_sync(&self) -> bool {
        self.needs_sync
    }
}

/// Batches returned by a read, plus the log's bounds at the time.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    /// Whole batches, each a zero-copy slice of one read buffer. The first
    /// may start before the requested offset (filter by record offset).
    pub batches: Vec<Bytes>,
    /// The same batches as one slice (they lie end to end in one buffer),
    /// for responses that carry them as one run (Kafka Fetch).
    pub run: Bytes,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl ReadBatches {
    /// The offset after the last batch, if any batch was read.
    pub fn next_offset(&self) -> Option<u64> {
        self.batches.last().and_then(|b| BatchHeader::parse(b, usize::MAX).ok()).map(|h| h.next_offset())
    }
}

/// The segment appends go to, and where in it.
#[derive(Debug)]
struct Active {
    segment: Arc<Segment>,
    /// Bytes written to it.
    position: u64,
    /// Bytes since its last index entry.
    bytes_since_entry: u64,
    /// Largest record timestamp written to it.
    max_timestamp: i64,
    /// Clock time of its first append, for `segment.ms`.
    first_append_ms: Option<i64>,
}

impl Active {
    fn new(segment: Arc<Segment>) -> Active {
        Active { segment, position: 0, bytes_since_entry: 0, max_timestamp: i64::MIN, first_append_ms: None }
    }
}

/// The latest point known to be on stable storage.
#[derive(Debug)]
struct Durable {
    offset: u64,
    /// A position in the active segment; means something only while
    /// `offset >= active.base_offset` and no rolled segment waits.
    position: u64,
    /// The last durable point recorded, reused by checkpoints taken while
    /// the durable point is in a rolled segment waiting for its fsync.
    last: Checkpoint,
}

/// Segments rolled but not yet fully settled under `never`/`interval`.
#[derive(Debug, Default)]
struct Rolls {
    /// Segments whose tail is not yet fsynced, oldest first. A roll does
    /// not fsync the old segment under the writer lock (128 MiB of dirty
    /// pages take the disk hundreds of milliseconds); the next sync or
    /// `sync_closed` does.
    unsynced: Vec<Rolled>,
    /// Segments whose indexes still wait for their trim and fsync
    /// ([`Log::finish_rolls`]).
    closing: Vec<Arc<Segment>>,
    /// Rolls so far, and how many of them the last directory fsync covers:
    /// nothing in a segment is called durable before its name is.
    count: u64,
    dir_synced: u64,
}

/// The checkpoints taken so far.
#[derive(Debug)]
struct Checkpoints {
    /// The durable and written points of the last checkpoint taken.
    taken: CheckpointPoints,
    /// Numbers each checkpoint, in the order of the states they record.
    seq: u64,
}

/// Why the writer refuses appends.
#[derive(Debug, Clone)]
enum Refusal {
    Poisoned(PoisonCause),
    Closed,
}

/// State owned by the one writer.
#[derive(Debug)]
struct Writer {
    active: Active,
    /// Offset the next record gets (written, maybe not yet durable).
    next_offset: u64,
    producers: ProducerState,
    durable: Durable,
    rolls: Rolls,
    checkpoints: Checkpoints,
    /// Bumped whenever unsynced data is discarded, to fail its waiters.
    epoch: u64,
    refusal: Option<Refusal>,
    /// Set while a group-commit fsync runs: `always` appends then queue
    /// here (their positions and offsets reserved, indexed, not yet
    /// written) instead of writing at once, and the sync writes the whole
    /// queue with one `pwritev` when its fsync returns, for the next fsync
    /// to cover. Empty whenever no sync runs.
    sync_running: bool,
    queue: Vec<QueuedBatch>,
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
    /// Why the last discard happened.
    last_error: Option<super::IoCause>,
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
    /// recovering from an unclean stop: see `recovery.rs` and `docs/format.md`.
    pub fn open(dir: &Path, fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>, config: LogConfig) -> Result<Log> {
        // A new directory's name (and its parents') is made durable, else a
        // power loss could drop it and the data later fsynced inside it.
        fs.create_dir_all_durable(dir).map_err(|e| StorageError::io(dir, e))?;
        // A partition written in strata's first format becomes Kafka's, once.
        let mut last_progress = std::time::Instant::now();
        super::upgrade::upgrade_partition(fs.as_ref(), dir, &mut |done, of| {
            if last_progress.elapsed() >= std::time::Duration::from_secs(1) {
                tracing::info!(dir = %dir.display(), done, of, "upgrading segments");
                last_progress = std::time::Instant::now();
            }
        })?;
        let opened = recovery::open_and_recover(dir, fs.as_ref(), &fs, clock.as_ref(), config.limits())?;
        let recovery::Opened { segments, recovered, unsynced } = opened;
        let active = segments.values().next_back().expect("at least one segment").clone();
        let log_start_offset = *segments.keys().next().expect("at least one segment");
        let idx = active.indexes()?;
        let bytes_since_entry = recovered.position - idx.offset.last().map(|e| e.position as u64).unwrap_or(0);
        let max_timestamp = active.max_timestamp()?;
        let durable = &recovered.durable;
        let durable_position = if unsynced.is_empty() { durable.position } else { 0 };
        let writer = Writer {
            active: Active {
                segment: active,
                position: recovered.position,
                bytes_since_entry,
                max_timestamp,
                first_append_ms: (recovered.position > 0).then(|| clock.now_ms()),
            },
            next_offset: recovered.next_offset,
            producers: recovered.producers,
            durable: Durable {
                offset: durable.next_offset,
                position: durable_position,
                last: recovered.durable.clone(),
            },
            rolls: Rolls { unsynced, ..Rolls::default() },
            checkpoints: Checkpoints { taken: (None, (u64::MAX, 0)), seq: 0 },
            epoch: 0,
            refusal: None,
            sync_running: false,
            queue: Vec::new(),
        };
        tracing::debug!(dir = %dir.display(), next_offset = writer.next_offset, segments = segments.len(), "log opened");
        let synced_offset = writer.durable.offset;
        Ok(Log {
            dir: dir.to_path_buf(),
            fs,
            clock,
            config: RwLock::new(config),
            segments: RwLock::new(segments),
            log_start_offset: AtomicU64::new(log_start_offset),
            high_watermark: AtomicU64::new(recovered.next_offset),
            sync: Mutex::new(SyncState { synced_offset, ..SyncState::default() }),
            writer: Mutex::new(writer),
            synced: Condvar::new(),
            checkpoint_file: Mutex::new(0),
        })
    }

    /// The writer's state. A panic while it was held left that state in
    /// doubt: the log is then poisoned (until reopened), not trusted.
    fn writer(&self) -> MutexGuard<'_, Writer> {
        match self.writer.lock() {
            Ok(w) => w,
            Err(poisoned) => {
                let mut w = poisoned.into_inner();
                self.writer.clear_poison();
                if w.refusal.is_none() {
                    tracing::error!(dir = %self.dir.display(), "a panic while appending; refusing writes until the log is reopened");
                    w.refusal = Some(Refusal::Poisoned(PoisonCause::Panic));
                }
                w
            }
        }
    }

    /// The error for an append the writer refuses, if it does.
    fn refused(&self, w: &Writer) -> Option<StorageError> {
        match &w.refusal {
            None => None,
            Some(Refusal::Poisoned(cause)) => {
                Some(StorageError::Poisoned { path: self.dir.clone(), cause: cause.clone() })
            }
            Some(Refusal::Closed) => Some(StorageError::Closed { path: self.dir.clone() }),
        }
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
        self.segments.read().unwrap_or_else(|e| e.into_inner()).values().map(|s| s.readable_len()).sum()
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

    /// Calls `f` with every record from the log start to the high
    /// watermark, in order: how internal logs rebuild their state on open.
    /// A batch that does not decode is corruption (the open fails).
    pub fn replay(&self, mut f: impl FnMut(crate::storage::batch::StoredRecord)) -> Result<()> {
        let mut next = self.log_start_offset();
        while next < self.high_watermark() {
            let read = self.read(next, 1 << 20)?;
            if read.batches.is_empty() {
                break;
            }
            for b in &read.batches {
                let records = crate::storage::batch::decode_records(b).map_err(|e| StorageError::Corrupt {
                    path: self.dir().to_path_buf(),
                    position: 0,
                    first_offset: next,
                    reason: e.to_string(),
                })?;
                for r in records {
                    if r.offset >= next {
                        next = r.offset + 1;
                        f(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads whole batches from `from` on, up to about `bytes_max` (at least
    /// one batch when any is there). Reading at the high watermark returns
    /// no batches; outside `[log start, high watermark]` is an error.
    pub fn read(&self, from: u64, bytes_max: usize) -> Result<ReadBatches> {
        let high_watermark = self.high_watermark();
        let log_start_offset = self.log_start_offset();
        let mut out = ReadBatches { batches: Vec::new(), run: Bytes::new(), high_watermark, log_start_offset };
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
                SegmentRead::Batches(batches, run) => {
                    out.batches = batches;
                    out.run = run;
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

    /// Clean close: sync, checkpoint at the end, write the clean marker.
    /// The log refuses writes afterwards.
    pub fn close(&self) -> Result<()> {
        self.finish_rolls()?;
        self.checkpoint()?;
        let mut w = self.writer();
        w.active.segment.flush_indexes()?;
        let path = self.dir.join(CLEAN_SHUTDOWN_FILE);
        self.fs.write_atomic(&path, b"clean\n").map_err(|e| StorageError::io(&path, e))?;
        w.refusal = Some(Refusal::Closed);
        Ok(())
    }

    /// Whether writes are refused after an error (not a clean close).
    pub fn is_poisoned(&self) -> bool {
        matches!(self.writer().refusal, Some(Refusal::Poisoned(_)))
    }
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
        let older = log.checkpoint_of(&mut log.writer());
        append_one(&log);
        let newer = log.checkpoint_of(&mut log.writer());
        log.write_checkpoint(newer.clone()).unwrap();
        log.write_checkpoint(older).unwrap();
        let on_disk = std::fs::read(dir.path().join(crate::storage::checkpoint::FILE_NAME)).unwrap();
        assert_eq!(Checkpoint::decode(&on_disk).unwrap(), newer.1);
    }

    /// A cleanly closed log of several segments (so recovery rescans
    /// none), reopened: nothing in it checked by this process yet.
    fn reopened_log(dir: &Path) -> Log {
        let config = LogConfig { segment_bytes: 4096, index_interval_bytes: 256, ..LogConfig::default() };
        let open = || Log::open(dir, Arc::new(StdFs), Arc::new(SystemClock), config).unwrap();
        let log = open();
        for i in 0..60u64 {
            let records: Vec<Record> = (0..3)
                .map(|j| Record {
                    timestamp_ms: 1,
                    key: Bytes::new(),
                    value: Bytes::from(format!("value-{i}-{j}-{}", "v".repeat(100))),
                    headers: vec![],
                })
                .collect();
            log.append(&mut batch::encode(&records, None)).unwrap();
        }
        log.close().unwrap();
        let log = open();
        assert!(log.segment_count() >= 4, "{} segments", log.segment_count());
        assert!(log.segments_snapshot().iter().all(|s| s.checked_from() == s.readable_len()));
        log
    }

    /// Reads from `from` to the end in reads of about `budget` bytes.
    fn read_through(log: &Log, mut from: u64, budget: usize) {
        while from < log.high_watermark() {
            let read = log.read(from, budget).unwrap();
            let last = read.batches.last().expect("a batch below the high watermark");
            from = BatchHeader::parse(last, usize::MAX).unwrap().next_offset();
        }
    }

    #[test]
    fn one_pass_over_a_reopened_log_checks_each_crc_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = reopened_log(dir.path());
        // A consumer reading from the start, a few batches a read: after it,
        // no batch of any segment is checked again by the next pass.
        read_through(&log, 0, 700);
        for s in log.segments_snapshot() {
            assert_eq!(s.checked_from(), 0, "{} after one pass", s.log_path.display());
        }
    }

    #[test]
    fn bytes_a_read_did_not_cover_are_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let log = reopened_log(dir.path());
        let first = log.segments_snapshot()[0].clone();
        let file = std::fs::read(&first.log_path).unwrap();
        let mut positions = vec![0usize];
        while let Some(&p) = positions.last().filter(|&&p| p < file.len()) {
            positions.push(p + BatchHeader::parse(&file[p..], usize::MAX).unwrap().total_len);
        }
        // The first two batches read from the start, then a read from the
        // fifth: neither covers the third, which is then damaged on disk
        // (in a byte its CRC covers).
        let read = log.read(0, positions[2]).unwrap();
        assert_eq!(read.batches.len(), 2);
        let fifth = BatchHeader::parse(&file[positions[4]..], usize::MAX).unwrap().base_offset;
        log.read(fifth, 1).unwrap();
        let third = BatchHeader::parse(&file[positions[2]..], usize::MAX).unwrap().base_offset;
        let at = positions[2] + 70;
        let damaged = std::fs::OpenOptions::new().write(true).open(&first.log_path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&damaged, &[file[at] ^ 0x55], at as u64).unwrap();
        match log.read(third, 1) {
            Err(StorageError::Corrupt { position, .. }) => assert_eq!(position, positions[2] as u64),
            other => panic!("the damaged batch was served: {other:?}"),
        }
    }

    #[test]
    fn a_panic_under_the_writer_lock_poisons_the_log_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            Arc::new(Log::open(dir.path(), Arc::new(StdFs), Arc::new(SystemClock), LogConfig::default()).unwrap());
        append_one(&log);
        let panicking = log.clone();
        let joined = std::thread::spawn(move || {
            let _w = panicking.writer.lock().unwrap();
            panic!("a bug halfway through an append");
        })
        .join();
        assert!(joined.is_err());
        let record = Record { timestamp_ms: 1, key: Bytes::new(), value: Bytes::from_static(b"v"), headers: vec![] };
        let refused = log.append(&mut batch::encode(&[record], None)).unwrap_err();
        assert!(matches!(refused, StorageError::Poisoned { cause: PoisonCause::Panic, .. }), "{refused}");
        assert!(log.is_poisoned());
        assert!(log.reopen_if_poisoned().unwrap());
        append_one(&log);
        assert_eq!(log.high_watermark(), 2);
    }
}
