//! Finding the valid end of a log when it is opened.
//!
//! After a clean close the checkpoint at the end is trusted. Otherwise
//! batches are validated (header, dense offsets, CRC) from the checkpoint on
//! (its written point in the same boot, its durable point after a new boot,
//! the start of the log without one); the first invalid byte and everything
//! after it are cut, and the indexes of scanned segments rebuilt.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::durability::Rolled;
use super::CLEAN_SHUTDOWN_FILE;
use crate::storage::batch::BatchHeader;
use crate::storage::checkpoint::{self, Checkpoint};
use crate::storage::fs::FileSystem;
use crate::storage::producer::{ProducerBatch, ProducerState};
use crate::storage::segment::{Segment, SegmentIndexes, SegmentLimits};
use crate::storage::{Clock, Result, StorageError};

/// The state recovery hands to the writer.
pub(super) struct Recovered {
    pub next_offset: u64,
    pub position: u64,
    pub producers: ProducerState,
    /// Up to where the recovered log is known to be fsynced: recovery
    /// trusted it without reading it back, or read it after a new boot.
    pub durable: Checkpoint,
}

/// A log directory opened and recovered.
pub(super) struct Opened {
    pub segments: BTreeMap<u64, Arc<Segment>>,
    pub recovered: Recovered,
    /// Closed segments past the durable point: what recovery read there may
    /// be only in the page cache (same boot), so they wait for the
    /// background fsync like freshly rolled ones.
    pub unsynced: Vec<Rolled>,
}

/// Opens the segments of `dir` (creating the first if there is none),
/// removes leftovers, and recovers.
pub(super) fn open_and_recover(
    dir: &Path,
    fs: &dyn FileSystem,
    fs_arc: &Arc<dyn FileSystem>,
    clock: &dyn Clock,
    limits: SegmentLimits,
) -> Result<Opened> {
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
            || name.ends_with(crate::storage::upgrade::UPGRADE_SUFFIX)
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
    let checkpoint = read_checkpoint(fs, dir);

    let mut segments = BTreeMap::new();
    for &base in &bases {
        segments.insert(base, Arc::new(Segment::open(fs_arc.clone(), dir, base, limits)?));
    }
    let created = segments.is_empty();
    if created {
        segments.insert(0, Arc::new(Segment::create(fs_arc.clone(), dir, 0, limits)?));
        // Guards against a power loss dropping the new file's directory
        // entry, and with it data later fsynced into the file.
        fs.sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    }
    let recovered = if created {
        let empty = Checkpoint {
            segment_base: 0,
            position: 0,
            next_offset: 0,
            producers: ProducerState::default(),
            same_boot: None,
        };
        Recovered { next_offset: 0, position: 0, producers: ProducerState::default(), durable: empty }
    } else {
        recover(dir, fs, &mut segments, clean, checkpoint)?
    };
    if clean {
        // No directory fsync here: if a power loss resurrects the marker,
        // the next open still trusts the checkpoint only when it matches
        // the active segment's length exactly, and anything appended
        // after this open changes that length or the active segment.
        fs.remove_file(&clean_path).map_err(|e| StorageError::io(&clean_path, e))?;
    }
    let active_base = *segments.keys().next_back().expect("at least one segment");
    let durable_base = recovered.durable.segment_base;
    let closed: Vec<Arc<Segment>> = segments.range(durable_base..active_base).map(|(_, s)| s.clone()).collect();
    let unsynced = closed
        .iter()
        .enumerate()
        .map(|(i, s)| Rolled {
            segment: s.clone(),
            end_offset: closed.get(i + 1).map_or(active_base, |n| n.base_offset),
            rolled_ms: clock.now_ms(),
        })
        .collect();
    Ok(Opened { segments, recovered, unsynced })
}

/// Index entries redone by recovery from `from` (the scan start) on.
struct ReIndex<'a> {
    idx: &'a SegmentIndexes,
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

/// Finds the end of the valid log. After a clean close the checkpoint at
/// the end is trusted. Otherwise batches are
/// validated from the checkpoint (or the start of the log) on; the first
/// invalid byte and everything after it are cut, and the indexes of scanned
/// segments rebuilt.
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
    let mut cut_bytes = 0u64;
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
                    p.producer_epoch,
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
            cut_bytes += file_len - end.position;
            // Guards against the cut tail reappearing after a power loss.
            segment.cut(end.position, true).map_err(|e| StorageError::io(&segment.log_path, e))?;
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
        // Indexes are derived and checked against the log when opened, so
        // the rebuilt entries need no msync: the kernel writes them back. An
        // msync here waited for the disk to write back every other dirty
        // file first (ext4's journal): 2.5 s before the broker could serve
        // after a SIGKILL that left 3 GB dirty. Only a cut segment's
        // indexes are synced, beside the fsync of the cut itself.
        if end.error.is_some() {
            segment.flush_indexes()?;
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
                cut_bytes += s.readable_len();
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
    let scanned =
        segments.range(start_base..).map(|(_, s)| s.readable_len()).sum::<u64>().saturating_sub(start_position);
    if scanned == 0 && cut_bytes == 0 && position == 0 && segments.len() == 1 {
        // A new (or still empty) log: nothing was recovered, so say nothing
        // that reads like an unclean stop.
        tracing::debug!(dir = %dir.display(), next_offset, "opened an empty log");
    } else {
        tracing::info!(
            dir = %dir.display(),
            next_offset,
            scanned_bytes = scanned,
            cut_bytes,
            same_boot = written_used,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered log after an unclean stop"
        );
    }
    Ok(Recovered { next_offset, position, producers, durable })
}
