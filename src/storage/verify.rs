//! Offline consistency check of partition directories (`strata log verify`).
//! Read-only: it never rebuilds, grows or cuts a file, so it is safe on a
//! directory a broker is not using, and reports what recovery would fix.
//!
//! Checks per partition: every batch of every segment (header, length, CRC,
//! dense offsets within and across segments), no bytes after the last valid
//! batch, offset index entries (increasing, each pointing at a batch with
//! that offset), time index entries (increasing, each equal to the running
//! max timestamp at its batch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::batch::BATCH_BYTES_LIMIT;
use super::fs::FileSystem;
use super::index::{parse_offset_index, parse_time_index};
use super::segment::{Segment, SegmentLimits};
use super::Result;

/// What a verify run found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub partitions: usize,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    /// Segments still in strata's first record format (upgraded on open).
    pub v1_segments: usize,
    /// One line per inconsistency: file, position, what is wrong.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

const LIMITS: SegmentLimits =
    SegmentLimits { index_capacity: 0, index_interval_bytes: u64::MAX, batch_bytes_max: BATCH_BYTES_LIMIT };

/// Finds partition directories under `root`: `root` itself if it holds
/// segments, else `root/<topic>/<partition>/` or `root/<partition>/`.
/// Directories whose names `skip` says are not data (a topic being
/// deleted) are left out.
pub fn find_partitions(fs: &dyn FileSystem, root: &Path, skip: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let list = |dir: &Path| fs.list_dir(dir).map_err(|e| super::StorageError::io(dir, e));
    let is_segment =
        |n: &String| n.strip_suffix(".log").is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()));
    if list(root)?.iter().any(is_segment) {
        return Ok(vec![root.to_path_buf()]);
    }
    for name in list(root)? {
        let child = root.join(&name);
        if skip(&name) || !fs.is_dir(&child) {
            continue;
        }
        out.extend(find_partitions(fs, &child, skip)?);
    }
    out.sort();
    Ok(out)
}

/// Verifies every partition under `root` (see [`find_partitions`]),
/// calling `progress` after each segment.
pub fn verify_tree(
    fs: Arc<dyn FileSystem>,
    root: &Path,
    skip: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(&VerifyReport),
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    for dir in find_partitions(fs.as_ref(), root, skip)? {
        verify_partition(fs.clone(), &dir, &mut report, progress)?;
    }
    Ok(report)
}

pub fn verify_partition(
    fs: Arc<dyn FileSystem>,
    dir: &Path,
    report: &mut VerifyReport,
    progress: &mut dyn FnMut(&VerifyReport),
) -> Result<()> {
    report.partitions += 1;
    let names = fs.list_dir(dir).map_err(|e| super::StorageError::io(dir, e))?;
    let bases: BTreeMap<u64, ()> =
        names.iter().filter_map(|n| n.strip_suffix(".log").and_then(|b| b.parse().ok())).map(|b| (b, ())).collect();
    let mut expected: Option<u64> = None;
    for &base in bases.keys() {
        let segment = Segment::open(fs.clone(), dir, base, LIMITS)?.copying_scans();
        let path = segment.log_path.display().to_string();
        if let Some(exp) = expected {
            if base != exp {
                report
                    .problems
                    .push(format!("{path}: segment starts at offset {base}, but the previous one ends at {exp}"));
            }
        }
        let len = segment.readable_len();
        if super::upgrade::segment_format(fs.as_ref(), &segment.log_path).ok() == Some(super::upgrade::Format::V1) {
            expected = Some(verify_v1_segment(fs.as_ref(), &segment.log_path, base, report)?);
            report.bytes += len;
            report.segments += 1;
            report.v1_segments += 1;
            progress(report);
            continue;
        }
        let mut batches = Vec::new();
        let end = segment.scan(0, len, true, None, |pos, h| {
            batches.push((pos, h.base_offset, h.max_timestamp));
            report.batches += 1;
            report.records += h.record_count as u64;
        })?;
        if let Some(reason) = &end.error {
            report.problems.push(format!(
                "{path}: invalid batch at byte {} ({reason}); {} bytes from there on would be cut by recovery",
                end.position,
                len - end.position
            ));
        }
        report.bytes += len;
        expected = Some(end.next_offset.max(base));
        check_offset_index(fs.as_ref(), &segment, &batches, report);
        check_time_index(fs.as_ref(), &segment, &batches, report);
        report.segments += 1;
        progress(report);
    }
    Ok(())
}

/// Checks a segment of the first format (its batches only: its indexes
/// are rebuilt by the upgrade); returns the offset after its last batch.
fn verify_v1_segment(fs: &dyn FileSystem, path: &Path, base: u64, report: &mut VerifyReport) -> Result<u64> {
    let bytes = fs.read_file(path).map_err(|e| super::StorageError::io(path, e))?;
    let (mut pos, mut next) = (0usize, base);
    while pos < bytes.len() {
        match super::batch_v1::validate(&bytes[pos..], BATCH_BYTES_LIMIT) {
            Ok(h) if h.base_offset == next => {
                report.batches += 1;
                report.records += h.record_count as u64;
                next = h.next_offset();
                pos += h.total_len;
            }
            Ok(h) => {
                report.problems.push(format!(
                    "{}: batch at byte {pos} claims offset {} where {next} was expected",
                    path.display(),
                    h.base_offset
                ));
                break;
            }
            Err(e) => {
                report.problems.push(format!(
                    "{}: invalid batch at byte {pos} ({e}); {} bytes from there on would be left out",
                    path.display(),
                    bytes.len() - pos
                ));
                break;
            }
        }
    }
    Ok(next)
}

fn check_offset_index(fs: &dyn FileSystem, segment: &Segment, batches: &[(u64, u64, i64)], report: &mut VerifyReport) {
    let path = segment.index_path();
    let Ok(bytes) = fs.read_file(&path) else {
        return; // A missing index is rebuilt on open; not an inconsistency.
    };
    let mut prev: Option<(u32, u32)> = None;
    for (i, e) in parse_offset_index(&bytes).iter().enumerate() {
        let at = batches.iter().find(|b| b.0 == e.position as u64);
        let offset = segment.base_offset + e.relative_offset as u64;
        let problem = if prev.is_some_and(|p| e.relative_offset <= p.0 || e.position <= p.1) {
            Some("entries are not increasing".to_string())
        } else {
            match at {
                None => Some(format!("position {} is not the start of a valid batch", e.position)),
                Some(b) if b.1 != offset => Some(format!("points at the batch of offset {}, not {offset}", b.1)),
                _ => None,
            }
        };
        if let Some(p) = problem {
            report.problems.push(format!("{}: entry {i} (offset {offset}): {p}", path.display()));
            return;
        }
        prev = Some((e.relative_offset, e.position));
    }
}

fn check_time_index(fs: &dyn FileSystem, segment: &Segment, batches: &[(u64, u64, i64)], report: &mut VerifyReport) {
    let path = segment.time_index_path();
    let Ok(bytes) = fs.read_file(&path) else { return };
    let mut running = Vec::with_capacity(batches.len());
    let mut max = i64::MIN;
    for b in batches {
        max = max.max(b.2);
        running.push((b.1, max));
    }
    let mut prev: Option<(i64, u32)> = None;
    for (i, e) in parse_time_index(&bytes).iter().enumerate() {
        let offset = segment.base_offset + e.relative_offset as u64;
        let problem = if prev.is_some_and(|p| e.timestamp_ms <= p.0 || e.relative_offset <= p.1) {
            Some("entries are not increasing".to_string())
        } else {
            match running.iter().find(|r| r.0 == offset) {
                None => Some(format!("offset {offset} is not the start of a valid batch")),
                Some(r) if r.1 != e.timestamp_ms => {
                    Some(format!("timestamp {} but the records up to there have max {}", e.timestamp_ms, r.1))
                }
                _ => None,
            }
        };
        if let Some(p) = problem {
            report.problems.push(format!("{}: entry {i}: {p}", path.display()));
            return;
        }
        prev = Some((e.timestamp_ms, e.relative_offset));
    }
}
