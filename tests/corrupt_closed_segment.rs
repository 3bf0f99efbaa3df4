//! A closed segment corrupted on disk after it was written: every byte of
//! every batch header is flipped in turn (the CRC does not cover bytes 0-20:
//! base offset, length, leader epoch, magic, CRC itself), the log is reopened after a clean
//! stop (so recovery does not rescan it), and every offset is read. Each read
//! must either return the right records at the right offsets or fail with a
//! corruption error naming where: never skip records, never serve a record
//! under another offset, never fall through to the next segment early.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata::storage::batch::{self, BatchHeader, Record};
use strata::storage::fs::StdFs;
use strata::storage::{Log, LogConfig, StorageError, SystemClock};

const T0: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig { segment_bytes: 2048, index_interval_bytes: 256, ..LogConfig::default() }
}

fn value(offset: u64) -> Bytes {
    Bytes::from(format!("record-{offset:06}-{}", "v".repeat((offset % 17) as usize)))
}

fn open(dir: &Path) -> Log {
    Log::open(dir, Arc::new(StdFs), Arc::new(SystemClock), config()).unwrap()
}

/// A cleanly closed log of several segments, 3 records a batch.
fn build(dir: &Path) -> u64 {
    let log = open(dir);
    for _ in 0..60 {
        let next = log.high_watermark();
        let records: Vec<Record> = (next..next + 3)
            .map(|o| Record { key: Bytes::from(format!("k{o}")), value: value(o), headers: vec![], timestamp_ms: T0 })
            .collect();
        log.append(&mut batch::encode(&records, None)).unwrap();
    }
    assert!(log.segment_count() >= 4, "closed segments before and after the one corrupted");
    let end = log.high_watermark();
    log.close().unwrap();
    end
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn segment_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// Byte positions of the batch headers in a segment file.
fn header_positions(bytes: &[u8]) -> Vec<usize> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < bytes.len() {
        out.push(pos);
        pos += BatchHeader::parse(&bytes[pos..], usize::MAX).unwrap().total_len;
    }
    out
}

/// Reads `offset` with a budget; checks what came back. Returns whether
/// the read reported corruption.
fn check_read(log: &Log, offset: u64, budget: usize, what: &str) -> bool {
    match log.read(offset, budget) {
        Err(StorageError::Corrupt { .. }) => true,
        Err(e) => panic!("{what}: read of {offset} failed with a non-corruption error: {e}"),
        Ok(read) => {
            assert!(!read.batches.is_empty(), "{what}: nothing returned for offset {offset} below the high watermark");
            let mut expected_next: Option<u64> = None;
            let mut saw_offset = false;
            for b in &read.batches {
                let records = batch::decode_records(b)
                    .unwrap_or_else(|e| panic!("{what}: read of {offset} served an undecodable batch: {e}"));
                for r in records {
                    if let Some(n) = expected_next {
                        assert_eq!(r.offset, n, "{what}: read of {offset} is not dense");
                    }
                    assert_eq!(r.value, value(r.offset), "{what}: read of {offset} served record {} wrong", r.offset);
                    saw_offset |= r.offset == offset;
                    expected_next = Some(r.offset + 1);
                }
            }
            assert!(saw_offset, "{what}: read of {offset} did not return offset {offset} (skipped records)");
            false
        }
    }
}

#[test]
fn every_flipped_header_byte_of_a_closed_segment_reads_right_or_reports_data_loss() {
    let src = tempfile::tempdir().unwrap();
    let end = build(src.path());
    let segments = segment_paths(src.path());
    // The second segment: closed, with closed segments on both sides.
    let target = segments[1].clone();
    let name = target.file_name().unwrap().to_owned();
    let original = std::fs::read(&target).unwrap();
    let headers = header_positions(&original);
    let mut reported = 0;
    let mut tried = 0;
    for &header in &headers {
        for byte in 0..batch::HEADER_LEN {
            // Bytes 0-20 are outside the CRC: both ends of each of them.
            let flips: &[u8] = if byte < 21 { &[0x01, 0x80] } else { &[0x01] };
            for &flip in flips {
                let dir = tempfile::tempdir().unwrap();
                copy_dir(src.path(), dir.path());
                let mut bytes = original.clone();
                bytes[header + byte] ^= flip;
                std::fs::write(dir.path().join(&name), &bytes).unwrap();
                let log = open(dir.path());
                assert_eq!(log.high_watermark(), end, "a clean stop trusts the checkpoint");
                let what = format!("flip {flip:#04x} at byte {} of the header at {header}", byte);
                let mut any = false;
                for offset in 0..end {
                    any |= check_read(&log, offset, 1, &what);
                    any |= check_read(&log, offset, 4096, &what);
                }
                tried += 1;
                reported += any as usize;
            }
        }
    }
    eprintln!("{reported} of {tried} flips were reported as corruption; the rest read right");
    // Bytes the format does not use for reads (for example the CRC of a batch
    // this run never checks again) may flip without effect; most must be caught.
    assert!(reported * 2 > tried, "{reported} of {tried} flips were reported");
}

#[test]
fn a_missing_range_between_closed_segments_is_data_loss_not_a_skip() {
    let src = tempfile::tempdir().unwrap();
    let end = build(src.path());
    let segments = segment_paths(src.path());
    // Cut the last batch of the second segment at a batch boundary: its
    // records are gone, and the third segment starts after them.
    let target = &segments[1];
    let bytes = std::fs::read(target).unwrap();
    let last = *header_positions(&bytes).last().unwrap();
    std::fs::OpenOptions::new().write(true).open(target).unwrap().set_len(last as u64).unwrap();
    let log = open(src.path());
    let missing = BatchHeader::parse(&bytes[last..], usize::MAX).unwrap().base_offset;
    for offset in missing..missing + 3 {
        match log.read(offset, 4096) {
            Err(StorageError::Corrupt { reason, .. }) => {
                assert!(reason.contains(&missing.to_string()), "the error names the missing range: {reason}")
            }
            other => panic!("read of missing offset {offset}: {other:?}"),
        }
    }
    // Everything else still reads.
    assert!(!check_read(&log, missing - 1, 4096, "before the hole"));
    assert!(!check_read(&log, missing + 3, 4096, "after the hole"));
    assert!(!check_read(&log, end - 1, 4096, "the end"));
}
