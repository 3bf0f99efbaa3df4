//! Memory-mapped sparse indexes of one segment: the offset index
//! (`.index`: relative offset -> byte position of the batch) and the time
//! index (`.timeindex`: max timestamp so far -> relative offset of a batch).
//!
//! Both are derived from the `.log` and can always be rebuilt from it. The
//! files are preallocated (sparse) while the segment is active and trimmed
//! to their entries when it is closed. Every entry is stored as aligned
//! 64-bit words; the one writer writes an entry with `pwrite`, then
//! publishes it by storing the entry count with `Release`, while readers
//! search the published prefix through a read-only view without a lock.
//!
//! Entries are written with `pwrite`, never through the mapping: on a full
//! disk a store into a page the file system cannot allocate raises SIGBUS
//! (it killed the broker), where `pwrite` returns ENOSPC. A failed entry is
//! skipped (lookups then scan a little further), never an append failure.
//! On a file system that cannot be mapped (the in-memory one of the crash
//! simulation), the view is a copy on the heap, kept in step with writes.
//!
//! This module has `unsafe` for mapping the file and viewing the mapping as
//! atomic words; the only other `unsafe` is the mapped read of segment data
//! in `fs.rs`.
#![allow(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use memmap2::MmapRaw;

use super::fs::StorageFile;

/// How readers see the entries.
#[derive(Debug)]
enum View {
    /// A shared mapping of the file (`None` for an empty file: a
    /// zero-length mapping is not allowed). Written only by `pwrite`.
    Mapped(Option<MmapRaw>),
    /// A copy on the heap, for files that cannot be mapped.
    Heap(Box<[AtomicU64]>),
}

/// A file of fixed-size entries, each `WORDS` little-endian u64 words.
#[derive(Debug)]
struct EntryFile<const WORDS: usize> {
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    view: View,
    /// Entries the file (and view) have room for.
    capacity: usize,
    /// Published entries; entries below it are never rewritten while shared,
    /// except by `truncate`, which only recovery and `truncate_to` call.
    len: AtomicUsize,
    /// Set once a write failed, so a full disk logs one line per index.
    write_failed: AtomicBool,
}

impl<const WORDS: usize> EntryFile<WORDS> {
    const ENTRY_BYTES: usize = WORDS * 8;

    /// Maps `file`, growing it to `capacity` entries when that is larger.
    /// `valid(i, entry)` is asked for each leading entry in turn; the first
    /// `false` ends the index there. The entries are read with `pread`, a
    /// page at a time up to that one, never through the mapping: the
    /// preallocated tail is a hole, and touching a hole through a mapping
    /// makes some file systems (tmpfs) allocate a page, which on a full
    /// disk is a SIGBUS. `valid` must refuse an all-zero entry, so only
    /// entries that were written (whose pages exist) are ever published.
    fn open(
        path: &Path,
        file: Arc<dyn StorageFile>,
        capacity: usize,
        mut valid: impl FnMut(usize, [u64; WORDS]) -> bool,
    ) -> io::Result<Self> {
        let file_len = file.len()? as usize;
        let existing = file_len / Self::ENTRY_BYTES;
        let capacity = capacity.max(existing);
        if capacity * Self::ENTRY_BYTES != file_len {
            // Sparse: extending allocates nothing, also on a full disk.
            file.set_len((capacity * Self::ENTRY_BYTES) as u64)?;
        }
        let view = match file.std_file() {
            Some(std_file) => {
                let map = if capacity == 0 { None } else { Some(MmapRaw::map_raw(std_file)?) };
                if let Some(map) = &map {
                    // Lookups are binary searches and appends touch one page at a
                    // time: without this, each fault maps 64 KiB around it, which
                    // with 1,000 partitions (two indexes each) was 135 MB of RSS.
                    map.advise(memmap2::Advice::Random).ok();
                }
                View::Mapped(map)
            }
            None => {
                let bytes = file.read_up_to(0, existing * Self::ENTRY_BYTES)?;
                let mut words: Vec<AtomicU64> = (0..capacity * WORDS).map(|_| AtomicU64::new(0)).collect();
                for (slot, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
                    *slot.get_mut() = u64::from_le_bytes(chunk.try_into().expect("8 bytes")).to_le();
                }
                View::Heap(words.into_boxed_slice())
            }
        };
        let this = EntryFile {
            path: path.to_path_buf(),
            file,
            view,
            capacity,
            len: AtomicUsize::new(0),
            write_failed: AtomicBool::new(false),
        };
        let kept = this.count_valid(existing, &mut valid)?;
        this.len.store(kept, Ordering::Release);
        Ok(this)
    }

    /// How many leading entries of the file `valid` accepts (see `open`).
    fn count_valid(&self, existing: usize, valid: &mut impl FnMut(usize, [u64; WORDS]) -> bool) -> io::Result<usize> {
        const CHUNK_BYTES: usize = 4096;
        let per_chunk = CHUNK_BYTES / Self::ENTRY_BYTES;
        let mut i = 0;
        while i < existing {
            let n = per_chunk.min(existing - i);
            let bytes = self.file.read_up_to((i * Self::ENTRY_BYTES) as u64, n * Self::ENTRY_BYTES)?;
            for entry in bytes.chunks_exact(Self::ENTRY_BYTES) {
                let words: [u64; WORDS] =
                    std::array::from_fn(|w| u64::from_le_bytes(entry[w * 8..w * 8 + 8].try_into().expect("8 bytes")));
                if words.iter().all(|&w| w == 0) || !valid(i, words) {
                    return Ok(i);
                }
                i += 1;
            }
            if bytes.len() < n * Self::ENTRY_BYTES {
                break;
            }
        }
        Ok(i)
    }

    fn words(&self) -> &[AtomicU64] {
        match &self.view {
            View::Mapped(None) => &[],
            // SAFETY: the mapping is page-aligned and `capacity * WORDS` words
            // long (the file was sized before mapping and is only shrunk to a
            // length that still covers every published entry). AtomicU64 has
            // the layout of u64. Readers load only published entries, which
            // the writer's `pwrite` finished before the count that publishes
            // them was stored (Release, loaded with Acquire), and nothing in
            // this process stores through the mapping.
            View::Mapped(Some(map)) => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const AtomicU64, self.capacity * WORDS)
            },
            View::Heap(words) => words,
        }
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn read(&self, i: usize) -> [u64; WORDS] {
        let words = &self.words()[i * WORDS..(i + 1) * WORDS];
        std::array::from_fn(|w| u64::from_le(words[w].load(Ordering::Relaxed)))
    }

    /// Writes `entries` (consecutive, starting at entry `first`) to the file
    /// and the heap view.
    fn write(&self, first: usize, entries: &[[u64; WORDS]]) -> io::Result<()> {
        let position = (first * Self::ENTRY_BYTES) as u64;
        if let [entry] = entries {
            // The append path: one entry, no allocation (WORDS is 1 or 2).
            debug_assert!(WORDS <= 2);
            let mut bytes = [0u8; 16];
            for (w, value) in entry.iter().enumerate() {
                bytes[w * 8..w * 8 + 8].copy_from_slice(&value.to_le_bytes());
            }
            self.file.write_all_at(&bytes[..Self::ENTRY_BYTES], position)?;
        } else {
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.iter().flat_map(|w| w.to_le_bytes())).collect();
            self.file.write_all_at(&bytes, position)?;
        }
        if let View::Heap(words) = &self.view {
            for (i, entry) in entries.iter().enumerate() {
                for (w, value) in entry.iter().enumerate() {
                    words[(first + i) * WORDS + w].store(value.to_le(), Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Appends an entry; `Ok(false)` when the file is full. A failed write
    /// (a full disk) adds nothing. Single writer only.
    fn push(&self, entry: [u64; WORDS]) -> io::Result<bool> {
        let len = self.len.load(Ordering::Relaxed);
        if len >= self.capacity {
            return Ok(false);
        }
        if let Err(e) = self.write(len, &[entry]) {
            if !self.write_failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(index = %self.path.display(), error = %e, "cannot write index entries; lookups scan further until space returns");
            }
            return Err(e);
        }
        self.len.store(len + 1, Ordering::Release);
        Ok(true)
    }

    /// Drops entries from `keep` on and zeroes them, so a crash does not
    /// resurrect them (if zeroing fails, lookups check every entry against
    /// the log anyway). Single writer only.
    fn truncate(&self, keep: usize) {
        let len = self.len();
        if keep >= len {
            return;
        }
        self.len.store(keep, Ordering::Release);
        if let Err(e) = self.write(keep, &vec![[0u64; WORDS]; len - keep]) {
            tracing::warn!(index = %self.path.display(), error = %e, "cannot zero dropped index entries");
        }
    }

    /// fsyncs the file. The index is derived data, so this guards only
    /// against a slow rebuild after power loss, not data loss.
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Shrinks the file to its entries (segment closed). The mapping stays
    /// valid for every published entry; nothing is appended afterwards.
    fn trim(&self) -> io::Result<()> {
        self.file.set_len((self.len() * Self::ENTRY_BYTES) as u64)?;
        self.file.sync_data()
    }
}

/// Accessors both index types share, over their `EntryFile`.
macro_rules! shared_accessors {
    ($entry:ty, $unpack:expr) => {
        pub fn path(&self) -> &Path {
            &self.0.path
        }

        pub fn len(&self) -> usize {
            self.0.len()
        }

        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        pub fn entry(&self, i: usize) -> $entry {
            ($unpack)(self.0.read(i))
        }

        pub fn last(&self) -> Option<$entry> {
            let len = self.len();
            (len > 0).then(|| self.entry(len - 1))
        }

        pub fn flush(&self) -> io::Result<()> {
            self.0.flush()
        }

        pub fn trim(&self) -> io::Result<()> {
            self.0.trim()
        }
    };
}

/// One offset index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset of the batch minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the `.log`.
    pub position: u32,
}

/// `.index`: sparse map from relative offset to batch position.
#[derive(Debug)]
pub struct OffsetIndex(EntryFile<1>);

impl OffsetIndex {
    /// Opens (or creates) the index, keeping the leading entries that are
    /// strictly increasing and point inside the first `log_len` bytes.
    pub fn open(path: &Path, file: Arc<dyn StorageFile>, capacity: usize, log_len: u64) -> io::Result<Self> {
        let mut prev: Option<OffsetEntry> = None;
        let inner = EntryFile::open(path, file, capacity, |_, words| {
            let e = unpack_offset(words[0]);
            // No entry is ever at position 0 (the first batch has nothing
            // before it to skip), so zeros are never an entry.
            let ok = (e.position as u64) < log_len
                && e.position > 0
                && prev.is_none_or(|p| e.relative_offset > p.relative_offset && e.position > p.position);
            prev = Some(e);
            ok
        })?;
        Ok(OffsetIndex(inner))
    }

    shared_accessors!(OffsetEntry, |w: [u64; 1]| unpack_offset(w[0]));

    /// The last entry at or below `relative_offset` (binary search, no scan).
    pub fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let len = self.len();
        let (mut lo, mut hi) = (0usize, len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.entry(mid).relative_offset <= relative_offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo > 0).then(|| self.entry(lo - 1))
    }

    /// Appends an entry; `Ok(false)` when full.
    pub fn push(&self, entry: OffsetEntry) -> io::Result<bool> {
        self.0.push([(entry.relative_offset as u64) << 32 | entry.position as u64])
    }

    /// Keeps only entries whose position is below `position`.
    pub fn truncate_to_position(&self, position: u64) {
        let keep = (0..self.len()).take_while(|&i| (self.entry(i).position as u64) < position).count();
        self.0.truncate(keep);
    }
}

fn unpack_offset(word: u64) -> OffsetEntry {
    OffsetEntry { relative_offset: (word >> 32) as u32, position: word as u32 }
}

/// One time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// The largest timestamp of any record up to and including this batch.
    pub timestamp_ms: i64,
    /// Relative offset of the batch's first record.
    pub relative_offset: u32,
}

/// `.timeindex`: sparse map from the running max timestamp to a batch.
/// Entries: 16 bytes (i64 timestamp, u32 relative offset, u32 zero).
#[derive(Debug)]
pub struct TimeIndex(EntryFile<2>);

impl TimeIndex {
    /// Opens (or creates) the index, keeping the leading entries whose
    /// timestamps and offsets are strictly increasing and below `next_relative`.
    pub fn open(path: &Path, file: Arc<dyn StorageFile>, capacity: usize, next_relative: u64) -> io::Result<Self> {
        let mut prev: Option<TimeEntry> = None;
        let inner = EntryFile::open(path, file, capacity, |_, words| {
            let e = unpack_time(words);
            let ok = (e.relative_offset as u64) < next_relative
                && e.timestamp_ms != 0
                && prev.is_none_or(|p| e.timestamp_ms > p.timestamp_ms && e.relative_offset > p.relative_offset);
            prev = Some(e);
            ok
        })?;
        Ok(TimeIndex(inner))
    }

    shared_accessors!(TimeEntry, unpack_time);

    /// The last entry whose timestamp is below `timestamp_ms`: every record
    /// before that batch is older than `timestamp_ms`, so a search for the
    /// first record at or after it can start there.
    pub fn last_below(&self, timestamp_ms: i64) -> Option<TimeEntry> {
        let len = self.len();
        let (mut lo, mut hi) = (0usize, len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.entry(mid).timestamp_ms < timestamp_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo > 0).then(|| self.entry(lo - 1))
    }

    /// Adds an entry if it raises the max timestamp; `Ok(false)` when full.
    pub fn push(&self, entry: TimeEntry) -> io::Result<bool> {
        if self
            .last()
            .is_some_and(|l| l.timestamp_ms >= entry.timestamp_ms || l.relative_offset >= entry.relative_offset)
        {
            return Ok(true);
        }
        self.0.push([entry.timestamp_ms as u64, entry.relative_offset as u64])
    }

    pub fn truncate_to_relative(&self, next_relative: u64) {
        let keep = (0..self.len()).take_while(|&i| (self.entry(i).relative_offset as u64) < next_relative).count();
        self.0.truncate(keep);
    }
}

fn unpack_time(words: [u64; 2]) -> TimeEntry {
    TimeEntry { timestamp_ms: words[0] as i64, relative_offset: words[1] as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::{FileSystem, StdFs};

    #[test]
    fn lookup_finds_floor_entry_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let idx = OffsetIndex::open(&path, StdFs.open(&path, true).unwrap(), 100, 1 << 20).unwrap();
        for i in 1..=10u32 {
            assert!(idx.push(OffsetEntry { relative_offset: i * 10, position: i * 4096 }).unwrap());
        }
        assert_eq!(idx.lookup(5), None);
        assert_eq!(idx.lookup(10).unwrap().position, 4096);
        assert_eq!(idx.lookup(59).unwrap().position, 5 * 4096);
        assert_eq!(idx.lookup(u32::MAX).unwrap().position, 10 * 4096);
        idx.flush().unwrap();
        drop(idx);
        // Preallocated zero tail is ignored on reopen.
        let idx = OffsetIndex::open(&path, StdFs.open(&path, false).unwrap(), 100, 1 << 20).unwrap();
        assert_eq!(idx.len(), 10);
        idx.truncate_to_position(3 * 4096);
        assert_eq!(idx.len(), 2);
        idx.trim().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
    }

    #[test]
    fn entries_past_the_log_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let idx = OffsetIndex::open(&path, StdFs.open(&path, true).unwrap(), 10, 1 << 20).unwrap();
        idx.push(OffsetEntry { relative_offset: 1, position: 100 }).unwrap();
        idx.push(OffsetEntry { relative_offset: 2, position: 9000 }).unwrap();
        idx.flush().unwrap();
        drop(idx);
        let idx = OffsetIndex::open(&path, StdFs.open(&path, false).unwrap(), 10, 5000).unwrap();
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn time_index_last_below() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let idx = TimeIndex::open(&path, StdFs.open(&path, true).unwrap(), 10, 1000).unwrap();
        idx.push(TimeEntry { timestamp_ms: 100, relative_offset: 0 }).unwrap();
        idx.push(TimeEntry { timestamp_ms: 90, relative_offset: 5 }).unwrap(); // not a new max: skipped
        idx.push(TimeEntry { timestamp_ms: 200, relative_offset: 10 }).unwrap();
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.last_below(100), None);
        assert_eq!(idx.last_below(101).unwrap().relative_offset, 0);
        assert_eq!(idx.last_below(1000).unwrap().relative_offset, 10);
    }
}

/// Parses the bytes of an `.index` file without mapping it (offline tools).
/// Trailing all-zero entries are preallocated space, not entries.
pub fn parse_offset_index(bytes: &[u8]) -> Vec<OffsetEntry> {
    let mut entries: Vec<OffsetEntry> =
        bytes.chunks_exact(8).map(|c| unpack_offset(u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect();
    while entries.len() > 1 && entries.last().is_some_and(|e| e.relative_offset == 0 && e.position == 0) {
        entries.pop();
    }
    if entries.len() == 1 && entries[0].position == 0 && entries[0].relative_offset == 0 {
        entries.clear();
    }
    entries
}

/// Parses the bytes of a `.timeindex` file (offline tools).
pub fn parse_time_index(bytes: &[u8]) -> Vec<TimeEntry> {
    let mut entries: Vec<TimeEntry> = bytes
        .chunks_exact(16)
        .map(|c| {
            unpack_time([
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
            ])
        })
        .collect();
    while entries.last().is_some_and(|e| e.timestamp_ms == 0 && e.relative_offset == 0) {
        entries.pop();
    }
    entries
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_index_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_offset_index(&bytes);
            let _ = parse_time_index(&bytes);
        }
    }
}
