//! One segment: `<base>.log` plus its `.index` and `.timeindex`.
//!
//! Invariants: the `.log` holds whole batches with dense offsets from
//! `base_offset` up to `readable_len` (bytes past it may be in flight or not
//! yet durable); the indexes are derived and are rebuilt from the `.log`
//! whenever they are missing or disagree with it. Indexes of closed segments
//! are opened on first use, so opening a partition does not read them all.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::batch::{self, BatchHeader, HEADER_LEN};
use super::fs::{FileSystem, StorageFile};
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::{segment_file_name, Result, StorageError};

/// The two indexes of a segment.
#[derive(Debug)]
pub struct SegmentIndexes {
    pub offset: OffsetIndex,
    pub time: TimeIndex,
}

/// Sizing shared by every segment of a log.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Index entries to preallocate for an active segment.
    pub index_capacity: usize,
    /// One index entry about every this many bytes of log.
    pub index_interval_bytes: u64,
    /// Largest batch a reader accepts; a length field above it is corruption.
    pub batch_bytes_max: usize,
}

/// Where a scan of batches stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Position after the last valid batch.
    pub position: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Why the scan stopped before the requested end, if it did.
    pub error: Option<String>,
}

/// What a read may serve of a segment: offsets below the high watermark
/// (later ones are not visible yet) and below the next segment's base
/// (a batch reaching it is corruption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub high_watermark: u64,
    /// `None` for the last (active) segment.
    pub next_segment_base: Option<u64>,
}

impl Bounds {
    /// No limit: for lookups that only need positions.
    pub fn unbounded() -> Bounds {
        Bounds { high_watermark: u64::MAX, next_segment_base: None }
    }
}

/// Where a walk toward an offset stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// The batch holding it starts at `position` with `base_offset`.
    At { position: u64, base_offset: u64 },
    /// The segment's bytes end before it; `next_offset` is the offset after
    /// its last batch.
    End { next_offset: u64 },
    /// The walk reached the high watermark first: not visible yet.
    NotVisible { next_offset: u64 },
}

/// What [`Segment::read`] found.
#[derive(Debug, Clone)]
pub enum SegmentRead {
    /// Whole batches from the one holding `from` (empty when `from` is not
    /// visible yet), and all of them as one slice of the same buffer.
    Batches(Vec<Bytes>, Bytes),
    /// The segment ends before `from`, after offset `next_offset - 1`.
    Ended { next_offset: u64 },
}

/// A batch to append; the segment stamps its base offset (its first 8
/// bytes, which the batch CRC does not cover).
#[derive(Debug)]
pub enum BatchRef<'a> {
    /// Stamped in place, then written with one pwrite.
    Stamp(&'a mut [u8]),
    /// Left as it is (a client's batch, still owned by its request): the
    /// stamp and the rest go in one `pwritev`, so the bytes are not copied
    /// to make room for the stamp. Shared bytes can wait in a group
    /// commit's queue without a copy.
    Shared(&'a Bytes),
}

/// A stamped batch waiting, while an fsync runs, to be written with the
/// rest of its group commit (one `pwritev` for all of them).
#[derive(Debug, Clone)]
pub(crate) struct QueuedBatch {
    /// Its position in the segment, reserved when it was appended.
    pub position: u64,
    /// Its first offset, where the file ends if it is never written.
    pub base_offset: u64,
    stamp: [u8; 16],
    bytes: Bytes,
}

impl QueuedBatch {
    /// Stamps `batch` (at least a batch header long) with `base_offset`.
    pub fn new(position: u64, batch: BatchRef<'_>, base_offset: u64) -> QueuedBatch {
        let stamp = batch::stamp(batch.bytes(), base_offset);
        let bytes = match batch {
            BatchRef::Stamp(b) => Bytes::copy_from_slice(&b[stamp.len()..]),
            BatchRef::Shared(b) => b.slice(stamp.len()..),
        };
        QueuedBatch { position, base_offset, stamp, bytes }
    }
}

impl BatchRef<'_> {
    pub fn bytes(&self) -> &[u8] {
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

#[derive(Debug)]
pub struct Segment {
    /// Offset of the first record in this segment (also its file name).
    pub base_offset: u64,
    /// Path of the `.log`, for errors and deletion.
    pub log_path: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// The `.log` file, shared by the writer and readers (positional I/O).
    /// Only this type writes it.
    log: Arc<dyn StorageFile>,
    /// Bytes of whole batches that readers may read.
    readable_len: AtomicU64,
    /// Every batch from here to `readable_len` had its CRC checked by this
    /// process: appended by it (built here or checked on receipt), scanned
    /// by recovery, or read before. Reads do not check those again. The
    /// CRC pass was a fifth of a page-cache consume's CPU; it guards bytes
    /// that come from the disk unchecked (a file written before this run),
    /// and, like Kafka's broker, which checks none on fetch, strata does
    /// not re-check bytes the page cache dropped and read back.
    checked_from: AtomicU64,
    /// Every batch below here had its CRC checked by this process too: a
    /// read from the start (or from a position below this) moves it up to
    /// where it stopped, so one pass over a segment opened from disk checks
    /// each batch once, not once per pass (`checked_from` alone grows down
    /// by one read per pass). Reaching `checked_from` joins the two.
    checked_below: AtomicU64,
    /// Largest record timestamp in the segment; `i64::MIN` until known.
    max_timestamp: AtomicI64,
    /// Opened on first use for closed segments, at open for the active one.
    indexes: OnceLock<SegmentIndexes>,
    /// Serialises index opening and rebuilding.
    index_init: Mutex<()>,
    limits: SegmentLimits,
    /// Scans map what they read: the broker's end before it cuts a segment.
    mapped_scans: bool,
}

impl Segment {
    /// Creates a new, empty segment (the files must not hold data).
    pub fn create(fs: Arc<dyn FileSystem>, dir: &Path, base_offset: u64, limits: SegmentLimits) -> Result<Segment> {
        let log_path = dir.join(segment_file_name(base_offset, "log"));
        let log = fs.open(&log_path, true).map_err(|e| StorageError::io(&log_path, e))?;
        log.set_len(0).map_err(|e| StorageError::io(&log_path, e))?;
        let segment = Segment::with_file(fs, log_path, log, base_offset, 0, limits);
        for ext in ["index", "timeindex"] {
            let path = dir.join(segment_file_name(base_offset, ext));
            if segment.fs.exists(&path) {
                segment.fs.remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            }
        }
        segment.indexes()?;
        Ok(segment)
    }

    /// Opens an existing segment without reading its data or indexes.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path, base_offset: u64, limits: SegmentLimits) -> Result<Segment> {
        let log_path = dir.join(segment_file_name(base_offset, "log"));
        let log = fs.open(&log_path, false).map_err(|e| StorageError::io(&log_path, e))?;
        let len = log.len().map_err(|e| StorageError::io(&log_path, e))?;
        Ok(Segment::with_file(fs, log_path, log, base_offset, len, limits))
    }

    fn with_file(
        fs: Arc<dyn FileSystem>,
        log_path: PathBuf,
        log: Arc<dyn StorageFile>,
        base_offset: u64,
        len: u64,
        limits: SegmentLimits,
    ) -> Segment {
        Segment {
            base_offset,
            log_path,
            fs,
            log,
            readable_len: AtomicU64::new(len),
            // A new segment holds only what this process appends; an opened
            // one, nothing checked yet.
            checked_from: AtomicU64::new(len),
            checked_below: AtomicU64::new(0),
            max_timestamp: AtomicI64::new(i64::MIN),
            indexes: OnceLock::new(),
            index_init: Mutex::new(()),
            limits,
            mapped_scans: true,
        }
    }

    /// Scans read with copies: for tools that inspect files a running
    /// broker may cut (a mapping would fault past the cut).
    pub fn copying_scans(mut self) -> Self {
        self.mapped_scans = false;
        self
    }

    pub fn index_path(&self) -> PathBuf {
        self.log_path.with_extension("index")
    }

    pub fn time_index_path(&self) -> PathBuf {
        self.log_path.with_extension("timeindex")
    }

    /// Bytes readers may read.
    pub fn readable_len(&self) -> u64 {
        self.readable_len.load(Ordering::Acquire)
    }

    /// Records that every batch from `position` to the readable end had
    /// its CRC checked.
    pub(crate) fn mark_checked(&self, position: u64) {
        self.checked_from.fetch_min(position, Ordering::AcqRel);
    }

    /// Where the checked end of the segment begins (`checked_from`).
    #[cfg(test)]
    pub(crate) fn checked_from(&self) -> u64 {
        self.checked_from.load(Ordering::Acquire)
    }

    pub(crate) fn set_readable_len(&self, len: u64) {
        self.readable_len.store(len, Ordering::Release);
    }

    pub(crate) fn note_timestamp(&self, timestamp_ms: i64) {
        self.max_timestamp.fetch_max(timestamp_ms, Ordering::AcqRel);
    }

    /// Largest record timestamp; opens the time index (or scans) if unknown.
    pub fn max_timestamp(&self) -> Result<i64> {
        let known = self.max_timestamp.load(Ordering::Acquire);
        if known != i64::MIN || self.readable_len() == 0 {
            return Ok(known);
        }
        let idx = self.indexes()?;
        let mut max = idx.time.last().map(|e| e.timestamp_ms).unwrap_or(i64::MIN);
        // The time index holds the max up to its last entry's batch; batches
        // after that batch can only be checked by reading their headers.
        let from = idx.time.last().map(|e| self.position_of_batch(e.relative_offset)).transpose()?.unwrap_or(0);
        self.scan(from, self.readable_len(), false, None, |_, h| max = max.max(h.max_timestamp))?;
        self.note_timestamp(max);
        Ok(max)
    }

    /// The indexes, opened (and rebuilt if they disagree with the log) on first use.
    pub fn indexes(&self) -> Result<&SegmentIndexes> {
        if let Some(idx) = self.indexes.get() {
            return Ok(idx);
        }
        let _guard = self.index_init.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(idx) = self.indexes.get() {
            return Ok(idx);
        }
        let idx = self.open_indexes()?;
        let _ = self.indexes.set(idx);
        Ok(self.indexes.get().expect("just set"))
    }

    fn open_indexes(&self) -> Result<SegmentIndexes> {
        let log_len = self.readable_len();
        let (index_path, time_path) = (self.index_path(), self.time_index_path());
        let existed = self.fs.exists(&index_path) && self.fs.exists(&time_path);
        let index_file = self.fs.open(&index_path, true).map_err(|e| StorageError::io(&index_path, e))?;
        let time_file = self.fs.open(&time_path, true).map_err(|e| StorageError::io(&time_path, e))?;
        let capacity = self.limits.index_capacity;
        let offset = OffsetIndex::open(&index_path, index_file, capacity, log_len)
            .map_err(|e| StorageError::io(&index_path, e))?;
        let time = TimeIndex::open(&time_path, time_file, capacity, u32::MAX as u64)
            .map_err(|e| StorageError::io(&time_path, e))?;
        let idx = SegmentIndexes { offset, time };
        if !existed || !self.index_agrees(&idx)? {
            if existed {
                tracing::warn!(segment = %self.log_path.display(), "index disagrees with its log; rebuilding it");
            }
            self.rebuild_indexes(&idx, log_len)?;
        }
        Ok(idx)
    }

    /// Cheap consistency check: the last offset entry points at a batch with
    /// the right base offset, and the index is empty only for a small log.
    fn index_agrees(&self, idx: &SegmentIndexes) -> Result<bool> {
        let log_len = self.readable_len();
        match idx.offset.last() {
            None => Ok(log_len <= self.limits.index_interval_bytes + self.limits.batch_bytes_max as u64),
            Some(e) => Ok(self
                .header_at(e.position as u64)?
                .is_some_and(|h| h.base_offset == self.base_offset + e.relative_offset as u64)),
        }
    }

    /// Rebuilds both indexes from the log's first `log_len` bytes.
    pub(crate) fn rebuild_indexes(&self, idx: &SegmentIndexes, log_len: u64) -> Result<()> {
        idx.offset.truncate_to_position(0);
        idx.time.truncate_to_relative(0);
        let mut since_entry = 0u64;
        let mut max_ts = i64::MIN;
        let end = self.scan(0, log_len, false, None, |pos, h| {
            self.index_batch(idx, pos, h, &mut since_entry, &mut max_ts);
        })?;
        if let Some(reason) = end.error {
            tracing::warn!(segment = %self.log_path.display(), position = end.position, %reason, "index rebuild stopped at an invalid batch");
        }
        self.note_timestamp(max_ts);
        idx.offset.flush().map_err(|e| StorageError::io(idx.offset.path(), e))?;
        idx.time.flush().map_err(|e| StorageError::io(idx.time.path(), e))?;
        Ok(())
    }

    /// Adds index entries for a batch written at `position`, following the
    /// one-entry-per-interval rule. Used by both append and rebuild.
    pub(crate) fn index_batch(
        &self,
        idx: &SegmentIndexes,
        position: u64,
        header: &BatchHeader,
        bytes_since_entry: &mut u64,
        max_timestamp: &mut i64,
    ) {
        let relative = (header.base_offset - self.base_offset) as u32;
        *max_timestamp = (*max_timestamp).max(header.max_timestamp);
        if *bytes_since_entry >= self.limits.index_interval_bytes {
            // A failed write (a full disk) leaves the entry out: lookups scan
            // from the one before, and the next batch tries again.
            let pushed = idx.offset.push(OffsetEntry { relative_offset: relative, position: position as u32 });
            if pushed.is_ok() {
                // A time entry beside each offset entry: the max timestamp of
                // every record up to and including this batch.
                let _ = idx.time.push(TimeEntry { timestamp_ms: *max_timestamp, relative_offset: relative });
                *bytes_since_entry = 0;
            }
        }
        *bytes_since_entry += header.total_len as u64;
    }

    /// Reads and parses the batch header at `position`; `None` past the end
    /// or when the bytes there are not a plausible header.
    pub fn header_at(&self, position: u64) -> Result<Option<BatchHeader>> {
        if position + HEADER_LEN as u64 > self.readable_len() {
            return Ok(None);
        }
        let mut buf = [0u8; HEADER_LEN];
        self.log.read_exact_at(&mut buf, position).map_err(|e| StorageError::io(&self.log_path, e))?;
        Ok(BatchHeader::parse(&buf, self.limits.batch_bytes_max).ok())
    }

    /// Walks batches from `from` up to `end`, calling `f(position, header)`
    /// for each valid one. Stops at the first batch that is truncated, has a
    /// bad header, non-dense offsets, or (with `check_crc`) a bad CRC.
    pub fn scan(
        &self,
        from: u64,
        end: u64,
        check_crc: bool,
        first_offset: Option<u64>,
        mut f: impl FnMut(u64, &BatchHeader),
    ) -> Result<ScanEnd> {
        // Read by mapping (`read_shared`), not into a zeroed buffer: after a
        // crash, zeroing and copying the rescanned bytes was 46% of the time
        // 100 partitions took to open.
        const CHUNK: usize = 4 << 20;
        let mut pos = from;
        let mut expected: Option<u64> = first_offset.or((from == 0).then_some(self.base_offset));
        let mut next_offset = None;
        let mut buf = Bytes::new();
        let mut buf_start = from;
        let stop = |pos: u64, next: Option<u64>, reason: Option<String>| ScanEnd {
            position: pos,
            next_offset: next.unwrap_or(self.base_offset),
            error: reason,
        };
        while pos < end {
            let need_header = (pos - buf_start) as usize + HEADER_LEN;
            if need_header > buf.len() {
                buf_start = pos;
                buf = self.read_range(pos, (end - pos).min(CHUNK as u64) as usize)?;
            }
            let at = (pos - buf_start) as usize;
            if buf.len() < at + HEADER_LEN {
                return Ok(stop(
                    pos,
                    next_offset,
                    Some(format!("{} trailing bytes are not a whole batch header", end - pos)),
                ));
            }
            let header = match BatchHeader::parse(&buf[at..], self.limits.batch_bytes_max) {
                Ok(h) => h,
                Err(e) => return Ok(stop(pos, next_offset, Some(e.to_string()))),
            };
            if pos + header.total_len as u64 > end {
                return Ok(stop(
                    pos,
                    next_offset,
                    Some(format!("batch of {} bytes runs past the end of the log", header.total_len)),
                ));
            }
            if let Some(exp) = expected {
                if header.base_offset != exp {
                    return Ok(stop(
                        pos,
                        next_offset,
                        Some(format!("base offset {} where {} was expected", header.base_offset, exp)),
                    ));
                }
            } else if header.base_offset < self.base_offset {
                return Ok(stop(
                    pos,
                    next_offset,
                    Some(format!("base offset {} below the segment's {}", header.base_offset, self.base_offset)),
                ));
            }
            if check_crc {
                if at + header.total_len > buf.len() {
                    buf_start = pos;
                    let len = header.total_len.max(((end - pos).min(CHUNK as u64)) as usize);
                    buf = self.read_range(pos, len)?;
                }
                let at = (pos - buf_start) as usize;
                if let Err(e) = batch::verify_crc(&header, &buf[at..at + header.total_len]) {
                    return Ok(stop(pos, next_offset, Some(e.to_string())));
                }
            }
            f(pos, &header);
            pos += header.total_len as u64;
            expected = Some(header.next_offset());
            next_offset = expected;
        }
        Ok(stop(pos, next_offset, None))
    }

    /// Bytes at `position` (fewer at the end of the file), mapped unless
    /// [`Segment::copying_scans`] said otherwise.
    fn read_range(&self, position: u64, len: usize) -> Result<Bytes> {
        let read = if self.mapped_scans {
            self.log.read_shared(position, len)
        } else {
            self.log.read_up_to(position, len).map(Bytes::from)
        };
        read.map_err(|e| StorageError::io(&self.log_path, e))
    }

    /// Position of the batch whose base offset is `base_offset + relative`.
    fn position_of_batch(&self, relative: u32) -> Result<u64> {
        let target = self.base_offset + relative as u64;
        match self.locate(target, &Bounds::unbounded())? {
            Located::At { position, .. } => Ok(position),
            Located::End { .. } | Located::NotVisible { .. } => Ok(self.readable_len()),
        }
    }

    /// Where to start a walk toward `offset`: the last index entry at or
    /// below it whose batch is really there (else the segment start).
    fn walk_start(&self, offset: u64) -> Result<(u64, u64)> {
        let idx = self.indexes()?;
        let relative = offset.saturating_sub(self.base_offset).min(u32::MAX as u64) as u32;
        if let Some(entry) = idx.offset.lookup(relative) {
            let expected = self.base_offset + entry.relative_offset as u64;
            let ok = self.header_at(entry.position as u64)?.is_some_and(|h| h.base_offset == expected);
            if ok {
                return Ok((entry.position as u64, expected));
            }
            let _guard = self.index_init.lock().unwrap_or_else(|e| e.into_inner());
            tracing::warn!(segment = %self.log_path.display(), "index entry points at the wrong batch; rebuilding the index");
            self.rebuild_indexes(idx, self.readable_len())?;
        }
        Ok((0, self.base_offset))
    }

    /// Finds the batch holding `offset` by walking batch headers from the
    /// nearest index entry, checking that offsets are dense on the way:
    /// each batch starts where the previous one ended, and none runs into
    /// the next segment. A header that breaks the chain is corruption, not
    /// the end of the segment: a read must never skip what it hides.
    pub fn locate(&self, offset: u64, bounds: &Bounds) -> Result<Located> {
        let end = self.readable_len();
        let (mut pos, mut expected) = self.walk_start(offset)?;
        loop {
            if pos == end {
                return Ok(Located::End { next_offset: expected });
            }
            if expected >= bounds.high_watermark {
                return Ok(Located::NotVisible { next_offset: expected });
            }
            let header = self.checked_header(pos, expected, end, bounds)?;
            if header.last_offset() >= offset {
                return Ok(Located::At { position: pos, base_offset: expected });
            }
            pos += header.total_len as u64;
            expected = header.next_offset();
        }
    }

    /// The header at `position`, which must start the batch of offset
    /// `expected`, lie whole before `end` and stay inside `bounds`.
    fn checked_header(&self, position: u64, expected: u64, end: u64, bounds: &Bounds) -> Result<BatchHeader> {
        let corrupt = |reason: String| self.corrupt(position, expected, reason);
        if position + HEADER_LEN as u64 > end {
            return Err(corrupt(format!(
                "{} bytes at the end of the segment are not a whole batch header (offsets from {expected} missing)",
                end - position
            )));
        }
        let mut buf = [0u8; HEADER_LEN];
        self.log.read_exact_at(&mut buf, position).map_err(|e| StorageError::io(&self.log_path, e))?;
        let header = BatchHeader::parse(&buf, self.limits.batch_bytes_max)
            .map_err(|e| corrupt(format!("bad batch header where offset {expected} should start: {e}")))?;
        self.check_chain(&header, position, expected, end, bounds)?;
        Ok(header)
    }

    /// The density rules every batch a read walks over or serves must keep.
    fn check_chain(&self, h: &BatchHeader, position: u64, expected: u64, end: u64, bounds: &Bounds) -> Result<()> {
        let corrupt = |reason: String| self.corrupt(position, expected, reason);
        if h.base_offset != expected {
            return Err(corrupt(format!(
                "batch claims base offset {} where offset {expected} should start",
                h.base_offset
            )));
        }
        if position + h.total_len as u64 > end {
            return Err(corrupt(format!(
                "batch of offsets {expected}..={} claims {} bytes, past the end of the segment",
                h.last_offset(),
                h.total_len
            )));
        }
        let limit = bounds.next_segment_base.unwrap_or(u64::MAX).min(bounds.high_watermark);
        if h.last_offset() >= limit {
            return Err(corrupt(format!(
                "batch of offsets {expected}..={} runs past offset {limit}, where the next segment or the high watermark is",
                h.last_offset()
            )));
        }
        Ok(())
    }

    fn corrupt(&self, position: u64, first_offset: u64, reason: String) -> StorageError {
        StorageError::Corrupt { path: self.log_path.clone(), position, first_offset, reason }
    }

    /// Reads whole batches holding offsets from `from` on, up to `bytes_max`
    /// (at least one batch), inside `bounds`. Every batch served continues
    /// the one before it (checked header by header: the CRC does not cover
    /// the base offset and length), and its CRC is checked unless this
    /// process checked it before (`checked_from`). A batch that breaks
    /// either ends the read after the good batches before it, and is an
    /// error naming its position and offsets when it comes first.
    pub fn read(&self, from: u64, bytes_max: usize, bounds: &Bounds) -> Result<SegmentRead> {
        let end = self.readable_len();
        let (start, first_base) = match self.locate(from, bounds)? {
            Located::At { position, base_offset } => (position, base_offset),
            Located::End { next_offset } => return Ok(SegmentRead::Ended { next_offset }),
            Located::NotVisible { .. } => return Ok(SegmentRead::Batches(Vec::new(), Bytes::new())),
        };
        let want = ((end - start) as usize).min(bytes_max.max(HEADER_LEN));
        // Readable bytes are never cut while the broker runs, so they may be
        // shared (mapped) rather than copied.
        let shared = |len: usize| self.log.read_shared(start, len).map_err(|e| StorageError::io(&self.log_path, e));
        let mut buf = shared(want)?;
        // The first batch may be larger than the budget: read all of it.
        if let Ok(h) = BatchHeader::parse(&buf, self.limits.batch_bytes_max) {
            if h.total_len > buf.len() && start + h.total_len as u64 <= end {
                buf = shared(h.total_len)?;
            }
        }
        let checked_from = self.checked_from.load(Ordering::Acquire);
        let checked_below = self.checked_below.load(Ordering::Acquire);
        let mut out = Vec::new();
        let mut at = 0usize;
        let mut expected = first_base;
        while at + HEADER_LEN <= buf.len() && expected < bounds.high_watermark {
            let position = start + at as u64;
            let checked = BatchHeader::parse(&buf[at..], self.limits.batch_bytes_max)
                .map_err(|e| self.corrupt(position, expected, format!("bad batch header: {e}")))
                .and_then(|h| self.check_chain(&h, position, expected, end, bounds).map(|()| h));
            let header = match checked {
                Ok(h) => h,
                // Serve what precedes it; the next read starts here and fails.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            if at + header.total_len > buf.len() {
                break;
            }
            let bytes = buf.slice(at..at + header.total_len);
            // Batches end on the same boundaries whoever walks them, so a
            // batch starting below `checked_below` ends at or below it.
            let checked = position >= checked_from || position < checked_below;
            let check = if checked { Ok(()) } else { batch::verify_crc(&header, &bytes) };
            match check {
                Ok(()) => {}
                Err(_) if !out.is_empty() => break,
                Err(e) => {
                    return Err(self.corrupt(
                        position,
                        header.base_offset,
                        format!("{e} (offsets {}..={})", header.base_offset, header.last_offset()),
                    ))
                }
            }
            out.push(bytes);
            at += header.total_len;
            expected = header.next_offset();
        }
        let read_end = start + at as u64;
        if read_end >= checked_from {
            // Checked up to where the checked range began: it now begins here.
            self.mark_checked(if start <= checked_below { 0 } else { start });
        } else if start <= checked_below {
            // Checked on from where the checked start ended: it ends here.
            self.checked_below.fetch_max(read_end, Ordering::AcqRel);
        }
        Ok(SegmentRead::Batches(out, buf.slice(..at)))
    }

    /// First offset at or after `base` whose record timestamp is >= `timestamp_ms`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64, bounds: &Bounds) -> Result<Option<u64>> {
        let idx = self.indexes()?;
        let (mut pos, mut expected) = match idx.time.last_below(timestamp_ms) {
            Some(e) => match self.locate(self.base_offset + e.relative_offset as u64, bounds)? {
                Located::At { position, base_offset } => (position, base_offset),
                Located::End { .. } | Located::NotVisible { .. } => return Ok(None),
            },
            None => (0, self.base_offset),
        };
        let end = self.readable_len();
        while pos < end && expected < bounds.high_watermark {
            let h = self.checked_header(pos, expected, end, bounds)?;
            if h.max_timestamp >= timestamp_ms {
                let read = self.read(h.base_offset, h.total_len, bounds)?;
                if let SegmentRead::Batches(batches, _) = read {
                    for b in batches.iter().take(1) {
                        let records =
                            batch::decode_records(b).map_err(|e| self.corrupt(pos, h.base_offset, e.to_string()))?;
                        if let Some(r) = records.iter().find(|r| r.timestamp_ms >= timestamp_ms) {
                            return Ok(Some(r.offset));
                        }
                    }
                }
            }
            pos += h.total_len as u64;
            expected = h.next_offset();
        }
        Ok(None)
    }

    /// Writes a batch at `position` with `base_offset` and the leader epoch
    /// stamped into it (neither is covered by the CRC).
    pub(crate) fn write_batch(&self, position: u64, batch: BatchRef<'_>, base_offset: u64) -> std::io::Result<()> {
        match batch {
            BatchRef::Stamp(bytes) => {
                let stamp = batch::stamp(bytes, base_offset);
                bytes[..stamp.len()].copy_from_slice(&stamp);
                self.log.write_all_at(bytes, position)
            }
            BatchRef::Shared(bytes) => {
                let stamp = batch::stamp(bytes, base_offset);
                self.log.write_all_vectored_at(&[&stamp, &bytes[stamp.len()..]], position)
            }
        }
    }

    /// Writes queued batches, which lie end to end from the first one's
    /// position, with one vectored write.
    pub(crate) fn write_queued(&self, queued: &[QueuedBatch]) -> std::io::Result<()> {
        let Some(first) = queued.first() else { return Ok(()) };
        let bufs: Vec<&[u8]> = queued.iter().flat_map(|q| [&q.stamp[..], &q.bytes[..]]).collect();
        self.log.write_all_vectored_at(&bufs, first.position)
    }

    /// Cuts the `.log` to `len` bytes (readers' view with it), fsyncing the
    /// cut when `durable` (so a power loss cannot bring the tail back).
    pub(crate) fn cut(&self, len: u64, durable: bool) -> std::io::Result<()> {
        self.log.set_len(len)?;
        if durable {
            self.log.sync_data()?;
        }
        self.readable_len.fetch_min(len, Ordering::AcqRel);
        Ok(())
    }

    /// `fdatasync` of the `.log`.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let synced = self.log.sync_data();
        crate::metrics::observe_fsync(started.elapsed());
        synced
    }

    /// fsyncs both indexes (if open): only to spare a rebuild after a
    /// power loss, they are derived data.
    pub(crate) fn flush_indexes(&self) -> Result<()> {
        if let Some(idx) = self.indexes.get() {
            idx.offset.flush().map_err(|e| StorageError::io(idx.offset.path(), e))?;
            idx.time.flush().map_err(|e| StorageError::io(idx.time.path(), e))?;
        }
        Ok(())
    }

    /// Makes the segment read-only: trims the indexes to their entries and
    /// fsyncs log and indexes, so everything before the next segment is
    /// durable before any byte is written there.
    pub fn close(&self) -> std::io::Result<()> {
        // Guards against a power loss losing this segment's tail after later
        // segments (and checkpoints pointing into them) became durable.
        self.log.sync_data()?;
        self.close_unsynced()
    }

    /// Closes the segment without fsyncing its data; the caller must fsync
    /// it before anything durable depends on it (see `Log::sync_closed`).
    pub fn close_unsynced(&self) -> std::io::Result<()> {
        if let Some(idx) = self.indexes.get() {
            idx.offset.trim()?;
            idx.time.trim()?;
        }
        Ok(())
    }

    /// Reads the readable bytes from `position` on and writes them back in
    /// place, marking them dirty for the next fsync.
    pub(crate) fn rewrite_from(&self, mut position: u64) -> std::io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let end = self.readable_len();
        while position < end {
            let len = ((end - position) as usize).min(CHUNK);
            let bytes = self.log.read_up_to(position, len)?;
            if bytes.is_empty() {
                break;
            }
            self.log.write_all_at(&bytes, position)?;
            position += bytes.len() as u64;
        }
        Ok(())
    }

    /// Removes the segment's files (readers holding it keep their handles).
    pub fn delete(&self) -> Result<()> {
        for path in [self.log_path.clone(), self.index_path(), self.time_index_path()] {
            if self.fs.exists(&path) {
                self.fs.remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            }
        }
        Ok(())
    }
}
