//! Upgrading a partition written in strata's first record format (v1,
//! `batch_v1.rs`) to Kafka's record batch v2, in place, on its first open
//! (or by `strata log upgrade`). Every record keeps its offset, timestamp,
//! key, value and headers; an idempotent producer's id and sequence carry
//! over (epoch 0). Nothing is lost: a segment is rewritten to a temporary
//! file, fsynced, and renamed over the old one, so a crash at any point
//! leaves each segment whole in one format or the other.
//!
//! Segments are converted newest first, so the oldest segment tells which
//! format a partition is in: one read per partition on every later open.
//! The recovery checkpoint is removed before the first rewrite (its byte
//! positions are the old format's), so the open that follows scans the
//! whole log once and rebuilds every index.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::batch::{self, ProducerStamp, Record};
use super::batch_v1;
use super::fs::FileSystem;
use super::log::CLEAN_SHUTDOWN_FILE;
use super::{checkpoint, segment_file_name, Result, StorageError};

/// Suffix of a segment being rewritten; a leftover is removed on open.
pub const UPGRADE_SUFFIX: &str = ".upgrade";

/// What an upgrade did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upgraded {
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
}

/// The format a segment file is in, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Empty: nothing to tell (and nothing to convert).
    Empty,
    V1,
    /// Kafka's record batch v2 (or bytes recovery will judge).
    Kafka,
}

/// Tells a segment's format from its first bytes (a header, or the whole
/// first batch when the header alone is ambiguous; see [`segment_format`]).
/// Strata's v1 has its magic 1 at byte 12, where Kafka's leader epoch
/// starts (0 as strata writes it, 0xff as producers send it); Kafka's magic
/// 2 is at byte 16, a CRC byte in v1. A header with both (a flipped epoch
/// byte, or a v1 CRC byte that happens to be 2) is judged by which format's
/// CRC the batch passes.
pub fn format_of(first_bytes: &[u8]) -> Format {
    if first_bytes.is_empty() {
        return Format::Empty;
    }
    if first_bytes.len() <= 12 || first_bytes[12] != batch_v1::MAGIC {
        return Format::Kafka;
    }
    if first_bytes.len() <= 16 || first_bytes[16] != batch::MAGIC {
        return Format::V1;
    }
    if batch::validate(first_bytes, batch::BATCH_BYTES_LIMIT).is_err()
        && batch_v1::validate(first_bytes, batch::BATCH_BYTES_LIMIT).is_ok()
    {
        Format::V1
    } else {
        Format::Kafka
    }
}

/// The format of the segment file at `path`: one header-sized read, and a
/// read of the first batch only when the header is ambiguous.
pub fn segment_format(fs: &dyn FileSystem, path: &Path) -> Result<Format> {
    let file = fs.open(path, false).map_err(|e| StorageError::io(path, e))?;
    let head = file.read_up_to(0, batch::HEADER_LEN).map_err(|e| StorageError::io(path, e))?;
    let ambiguous = head.len() > 16 && head[12] == batch_v1::MAGIC && head[16] == batch::MAGIC;
    if !ambiguous {
        return Ok(format_of(&head));
    }
    let kafka_len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize + 12;
    let v1_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize + 12;
    let len = kafka_len.max(v1_len).min(batch::BATCH_BYTES_LIMIT + batch::HEADER_LEN);
    let first = file.read_up_to(0, len).map_err(|e| StorageError::io(path, e))?;
    Ok(format_of(&first))
}

fn segment_bases(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
    let names = fs.list_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    let mut bases: Vec<u64> =
        names.iter().filter_map(|n| n.strip_suffix(".log").and_then(|b| b.parse::<u64>().ok())).collect();
    bases.sort_unstable();
    for name in names.iter().filter(|n| n.ends_with(UPGRADE_SUFFIX)) {
        let path = dir.join(name);
        fs.remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
    }
    Ok(bases)
}

/// Whether the partition in `dir` holds segments of the old format.
pub fn needs_upgrade(fs: &dyn FileSystem, dir: &Path) -> Result<bool> {
    for base in segment_bases(fs, dir)? {
        match segment_format(fs, &dir.join(segment_file_name(base, "log")))? {
            Format::Empty => continue,
            Format::V1 => return Ok(true),
            Format::Kafka => return Ok(false),
        }
    }
    Ok(false)
}

/// Upgrades the partition in `dir` if it is in the old format (see the
/// module docs); `progress(done, of)` after each segment.
pub fn upgrade_partition(fs: &dyn FileSystem, dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Upgraded> {
    let mut done = Upgraded::default();
    if !fs.exists(dir) || !needs_upgrade(fs, dir)? {
        return Ok(done);
    }
    let bases = segment_bases(fs, dir)?;
    let mut old = Vec::new();
    for &base in &bases {
        let path = dir.join(segment_file_name(base, "log"));
        if segment_format(fs, &path)? == Format::V1 {
            old.push(path);
        }
    }
    tracing::info!(dir = %dir.display(), segments = old.len(), "upgrading the partition to Kafka's record batch format");
    for name in [checkpoint::FILE_NAME, CLEAN_SHUTDOWN_FILE] {
        let path = dir.join(name);
        if fs.exists(&path) {
            fs.remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
        }
    }
    // Guards against a power loss bringing back a checkpoint whose
    // positions are the old format's.
    fs.sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    let total = old.len();
    for (i, path) in old.iter().rev().enumerate() {
        let (batches, records) = convert_segment(fs, path)?;
        done.segments += 1;
        done.batches += batches;
        done.records += records;
        progress(i + 1, total);
    }
    fs.sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    tracing::info!(dir = %dir.display(), segments = done.segments, records = done.records, "upgraded the partition");
    Ok(done)
}

/// Rewrites one v1 segment as Kafka batches: temporary file, fsync, rename;
/// its indexes are removed (rebuilt on open, positions changed). A torn or
/// corrupt tail is left out, as recovery would cut it.
fn convert_segment(fs: &dyn FileSystem, path: &Path) -> Result<(u64, u64)> {
    let file = fs.open(path, false).map_err(|e| StorageError::io(path, e))?;
    let len = file.len().map_err(|e| StorageError::io(path, e))?;
    let bytes = Bytes::from(file.read_up_to(0, len as usize).map_err(|e| StorageError::io(path, e))?);
    let tmp = PathBuf::from(format!("{}{UPGRADE_SUFFIX}", path.display()));
    let out = fs.open(&tmp, true).map_err(|e| StorageError::io(&tmp, e))?;
    out.set_len(0).map_err(|e| StorageError::io(&tmp, e))?;
    let (mut pos, mut written, mut batches, mut records) = (0usize, 0u64, 0u64, 0u64);
    while pos < bytes.len() {
        let header = match batch_v1::validate(&bytes[pos..], batch::BATCH_BYTES_LIMIT) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(segment = %path.display(), position = pos, error = %e, bytes = bytes.len() - pos, "leaving out an invalid tail while upgrading");
                break;
            }
        };
        let old = bytes.slice(pos..pos + header.total_len);
        let decoded = batch_v1::decode_records(&old).map_err(|e| StorageError::Corrupt {
            path: path.to_path_buf(),
            position: pos as u64,
            first_offset: header.base_offset,
            reason: e.to_string(),
        })?;
        let converted: Vec<Record> = decoded
            .into_iter()
            .map(|r| Record { key: r.key, value: r.value, headers: r.headers, timestamp_ms: r.timestamp_ms })
            .collect();
        let producer = header.producer().map(|(producer_id, first_sequence)| ProducerStamp {
            producer_id,
            producer_epoch: 0,
            first_sequence,
        });
        let mut encoded = batch::encode(&converted, producer);
        batch::set_base_offset(&mut encoded, header.base_offset);
        out.write_all_at(&encoded, written).map_err(|e| StorageError::io(&tmp, e))?;
        written += encoded.len() as u64;
        batches += 1;
        records += header.record_count as u64;
        pos += header.total_len;
    }
    // Guards against a power loss leaving the new name on unwritten data.
    out.sync_data().map_err(|e| StorageError::io(&tmp, e))?;
    drop(out);
    fs.rename(&tmp, path).map_err(|e| StorageError::io(path, e))?;
    for ext in ["index", "timeindex"] {
        let index = path.with_extension(ext);
        if fs.exists(&index) {
            fs.remove_file(&index).map_err(|e| StorageError::io(&index, e))?;
        }
    }
    Ok((batches, records))
}
