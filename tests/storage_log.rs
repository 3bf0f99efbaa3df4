//! Behaviour of the partition log as a user of the storage engine sees it:
//! round trips, recovery from torn and corrupt tails, lost indexes, injected
//! disk faults, group commit, time lookups, retention, and a model test.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use strata::storage::batch::{self, ProducerStamp, Record};
use strata::storage::fs::{Fault, FaultyFs, StdFs};
use strata::storage::{BatchRef, Clock, FlushPolicy, Log, LogConfig, ManualClock, StorageError, SystemClock};

const T0: i64 = 1_700_000_000_000;

fn small_config() -> LogConfig {
    LogConfig { segment_bytes: 2048, index_interval_bytes: 256, ..LogConfig::default() }
}

fn value(offset: u64, len: usize) -> Bytes {
    let mut v = format!("record-{offset}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (offset % 26) as u8);
    Bytes::from(v)
}

fn batch_of(first: u64, count: usize, len: usize, ts: i64) -> Vec<u8> {
    let records: Vec<Record> = (0..count as u64)
        .map(|i| Record {
            key: Bytes::from(format!("k{}", first + i)),
            value: value(first + i, len),
            headers: vec![("h".into(), Bytes::from_static(b"1"))],
            timestamp_ms: ts,
        })
        .collect();
    batch::encode(&records, None)
}

fn open(dir: &Path, config: LogConfig) -> Log {
    Log::open(dir, Arc::new(StdFs), Arc::new(SystemClock), config).unwrap()
}

/// Reads every record from `from` to the high watermark.
fn read_all(log: &Log, from: u64) -> Result<Vec<(u64, Bytes)>, StorageError> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.high_watermark() {
        let read = log.read(next, 4096)?;
        assert!(!read.batches.is_empty(), "no batch at offset {next} below the high watermark");
        for b in &read.batches {
            for r in batch::decode_records(b).unwrap() {
                if r.offset >= next {
                    assert_eq!(r.offset, next, "offsets must be dense");
                    out.push((r.offset, r.value.clone()));
                    next += 1;
                }
            }
        }
    }
    Ok(out)
}

fn assert_prefix(records: &[(u64, Bytes)], expected_len: u64, len: usize) {
    assert_eq!(records.len() as u64, expected_len);
    for (offset, v) in records {
        assert_eq!(v, &value(*offset, len), "record {offset} differs");
    }
}

/// Writes `batches` batches of 3 records, returning the end offset.
fn fill(log: &Log, batches: usize, len: usize) -> u64 {
    for _ in 0..batches {
        let next = log.high_watermark();
        let out = log.append(&mut batch_of(next, 3, len, T0)).unwrap();
        assert_eq!(out.base_offset, next);
        assert_eq!(out.last_offset, next + 2);
    }
    log.high_watermark()
}

#[test]
fn append_read_round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let end = fill(&log, 100, 40);
    assert!(log.segment_count() > 5, "small segments roll");
    assert_prefix(&read_all(&log, 0).unwrap(), end, 40);
    // Reading from the middle of a batch starts at that batch.
    let mid = log.read(4, 1).unwrap();
    assert_eq!(batch::decode_records(&mid.batches[0]).unwrap()[0].offset, 3);
    assert_eq!(log.read(end, 100).unwrap().batches.len(), 0);
    assert!(matches!(log.read(end + 1, 100), Err(StorageError::OffsetOutOfRange { .. })));
    log.close().unwrap();
    drop(log);

    let log = open(dir.path(), small_config());
    assert_eq!(log.high_watermark(), end);
    assert_prefix(&read_all(&log, 0).unwrap(), end, 40);
    fill(&log, 10, 40);
    drop(log); // unclean: no close

    let log = open(dir.path(), small_config());
    assert_eq!(log.high_watermark(), end + 30);
    assert_prefix(&read_all(&log, 0).unwrap(), end + 30, 40);
}

#[test]
fn large_reads_are_mapped_and_return_the_same_bytes_as_small_ones() {
    // Reads of 256 KiB and more are served from a memory mapping of the
    // segment; smaller ones with pread. Both must give the same batches,
    // from closed segments and from the active one, and batches read through
    // a mapping stay valid after retention deletes their segment.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 1 << 20, index_interval_bytes: 4096, ..LogConfig::default() };
    let log = open(dir.path(), config);
    let end = fill(&log, 1200, 1000);
    assert!(log.segment_count() >= 3, "closed segments and an active one");
    let read_with = |budget: usize| {
        let mut out: Vec<Bytes> = Vec::new();
        let mut next = 0;
        while next < end {
            let read = log.read(next, budget).unwrap();
            let last = batch::BatchHeader::parse(read.batches.last().unwrap(), usize::MAX).unwrap();
            next = last.next_offset();
            out.extend(read.batches);
        }
        out
    };
    let large = read_with(900 << 10);
    let small = read_with(4096);
    assert_eq!(large.len(), 1200);
    assert_eq!(large, small);
    let mut offset = 0;
    for b in &large {
        for r in batch::decode_records(b).unwrap() {
            assert_eq!((r.offset, &r.value), (offset, &value(offset, 1000)));
            offset += 1;
        }
    }
    assert_eq!(offset, end);
    // Hold mapped batches of the first segment while retention deletes it.
    let held = log.read(0, 900 << 10).unwrap().batches;
    let copy: Vec<Vec<u8>> = held.iter().map(|b| b.to_vec()).collect();
    let deleted = log.delete_segments_before(end).unwrap();
    assert!(deleted > 0 && log.log_start_offset() > 0);
    assert_eq!(held.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), copy);
}

#[test]
fn in_place_append_declines_only_when_a_roll_is_due() {
    // The broker appends on its async threads through try_append_pending;
    // a roll (file creation and fsyncs) must be handed back to it instead.
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let (mut appended, mut declined) = (0u64, 0);
    while log.segment_count() < 4 {
        let mut batch = batch_of(appended, 3, 100, T0);
        match log.try_append_pending(&mut batch) {
            Some(result) => {
                let pending = result.unwrap();
                assert_eq!(pending.outcome.base_offset, appended);
                log.wait_durable(&pending).unwrap();
            }
            None => {
                declined += 1;
                let segments = log.segment_count();
                let pending = log.append_pending(&mut batch).unwrap();
                assert_eq!(pending.outcome.base_offset, appended);
                log.wait_durable(&pending).unwrap();
                assert_eq!(log.segment_count(), segments + 1, "declined because a roll was due");
            }
        }
        appended += 3;
    }
    assert_eq!(declined, 3);
    assert_prefix(&read_all(&log, 0).unwrap(), appended, 100);
    // Invalid input is still an error, not a decline.
    let mut garbage = vec![7u8; 80];
    assert!(matches!(log.try_append_pending(&mut garbage), Some(Err(StorageError::Corrupt { .. }))));
}

/// Builds a log with several segments and an unclean stop, returning the
/// active segment's path and the (position, next offset) after each batch in it.
fn build_crashed_log(dir: &Path) -> (std::path::PathBuf, Vec<(u64, u64)>) {
    let log = open(dir, small_config());
    fill(&log, 60, 30);
    let active_base = log.read(log.high_watermark() - 1, 1).unwrap();
    let base = batch::BatchHeader::parse(&active_base.batches[0], usize::MAX).unwrap().base_offset;
    drop(log);
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let active = logs.last().unwrap().clone();
    let bytes = std::fs::read(&active).unwrap();
    let mut ends = vec![];
    let mut pos = 0usize;
    while pos < bytes.len() {
        let h = batch::BatchHeader::parse(&bytes[pos..], usize::MAX).unwrap();
        pos += h.total_len;
        ends.push((pos as u64, h.next_offset()));
    }
    assert!(base > 0, "the crashed log has closed segments too");
    (active, ends)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn torn_tail_at_every_byte_recovers_the_longest_valid_prefix() {
    let src = tempfile::tempdir().unwrap();
    let (active, ends) = build_crashed_log(src.path());
    let full_len = std::fs::metadata(&active).unwrap().len();
    let first_base = ends.first().map(|e| e.1 - 3).unwrap();
    let start = ends.len().saturating_sub(3).max(1);
    let from = ends[start - 1].0;
    for cut in from..full_len {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let file = std::fs::OpenOptions::new().write(true).open(dir.path().join(active.file_name().unwrap())).unwrap();
        file.set_len(cut).unwrap();
        let expected = ends.iter().rev().find(|(end, _)| *end <= cut).map(|e| e.1).unwrap_or(first_base);
        let log = open(dir.path(), small_config());
        assert_eq!(log.high_watermark(), expected, "cut at byte {cut}");
        assert_prefix(&read_all(&log, 0).unwrap(), expected, 30);
        // And it keeps working: the next append continues densely.
        let out = log.append(&mut batch_of(expected, 3, 30, T0)).unwrap();
        assert_eq!(out.base_offset, expected);
    }
}

#[test]
fn flipped_bytes_never_serve_a_corrupt_record() {
    let src = tempfile::tempdir().unwrap();
    let (active, ends) = build_crashed_log(src.path());
    let len = std::fs::metadata(&active).unwrap().len();
    let first_base = ends.first().map(|e| e.1 - 3).unwrap();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pos = rng % len;
        let flip = (rng >> 32) as u8 | 1;
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join(active.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[pos as usize] ^= flip;
        std::fs::write(&path, &bytes).unwrap();
        // The corrupt batch and everything after it is cut.
        let batch_start = ends.iter().map(|e| e.0).filter(|&e| e <= pos).max().unwrap_or(0);
        // The leader epoch (bytes 12..16) is outside the CRC, as in Kafka:
        // strata stamps it, and a flip there changes no record.
        let in_epoch = (12..16).contains(&(pos - batch_start));
        let expected = if in_epoch {
            ends.last().unwrap().1
        } else {
            ends.iter().find(|e| e.0 == batch_start).map(|e| e.1).unwrap_or(first_base)
        };
        let log = open(dir.path(), small_config());
        // A flip in the base offset field of the first batch after a valid
        // one still breaks density, so the prefix rule holds for every other
        // byte.
        assert_eq!(log.high_watermark(), expected, "flip at byte {pos}");
        assert_prefix(&read_all(&log, 0).unwrap(), expected, 30);
    }
}

#[test]
fn deleted_or_corrupted_indexes_give_the_same_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let end = fill(&log, 80, 30);
    let before = read_all(&log, 0).unwrap();
    let lookups: Vec<u64> = (0..end).step_by(7).collect();
    log.close().unwrap();
    drop(log);
    for (n, entry) in std::fs::read_dir(dir.path()).unwrap().enumerate() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("index") if n % 2 == 0 => std::fs::remove_file(&path).unwrap(),
            Some("index") | Some("timeindex") => {
                let mut b = std::fs::read(&path).unwrap();
                for (i, byte) in b.iter_mut().enumerate() {
                    *byte = byte.wrapping_mul(31).wrapping_add(i as u8);
                }
                std::fs::write(&path, b).unwrap();
            }
            _ => {}
        }
    }
    let log = open(dir.path(), small_config());
    assert_eq!(read_all(&log, 0).unwrap(), before);
    for offset in lookups {
        let got = log.read(offset, 1).unwrap();
        let records = batch::decode_records(&got.batches[0]).unwrap();
        assert!(records.iter().any(|r| r.offset == offset), "lookup of {offset}");
    }
}

#[test]
fn disk_faults_fail_the_append_and_leave_no_hole_or_garbage() {
    for fault in [Fault::SyncFails, Fault::WriteFails, Fault::PartialWrite, Fault::DiskFull] {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::default();
        let switch = fs.switch.clone();
        let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), LogConfig::default()).unwrap();
        let end = fill(&log, 5, 50);
        switch.set(Some(fault));
        let err = log.append(&mut batch_of(end, 3, 50, T0)).unwrap_err();
        assert!(switch.fired(), "{fault:?} was injected");
        assert_eq!(err.is_disk_full(), fault == Fault::DiskFull, "{fault:?}: {err}");
        assert_eq!(log.high_watermark(), end, "{fault:?}: nothing acknowledged moved the high watermark");
        assert_prefix(&read_all(&log, 0).unwrap(), end, 50);
        switch.set(None);
        let out = log.append(&mut batch_of(end, 3, 50, T0)).unwrap();
        assert_eq!(out.base_offset, end, "{fault:?}: appends resume at the same offset");
        drop(log);
        let log = open(dir.path(), LogConfig::default());
        assert_prefix(&read_all(&log, 0).unwrap(), end + 3, 50);
    }
}

/// A client's batch is appended without copying it: the base offset goes
/// in a pwrite of its own, then the rest. Reads return the same bytes as
/// an append stamped in place, and a fault in either pwrite leaves nothing.
#[test]
fn shared_batches_append_like_stamped_ones_and_faults_in_either_write_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let mut stamped = batch_of(0, 3, 50, T0);
    log.append(&mut stamped).unwrap();
    let mut client = batch_of(3, 3, 50, T0);
    batch::set_base_offset(&mut client, 999); // whatever the client sent
    let shared = Bytes::from(client);
    let pending = log.append_pending(BatchRef::Shared(&shared)).unwrap();
    log.wait_durable(&pending).unwrap();
    assert_eq!(pending.outcome.base_offset, 3);
    let got = read_all(&log, 0).unwrap();
    assert_prefix(&got, 6, 50);
    let batches = log.read(3, 1 << 20).unwrap().batches;
    let mut expected = batch_of(3, 3, 50, T0);
    batch::set_base_offset(&mut expected, 3);
    assert_eq!(batches.last().unwrap()[..], expected[..], "stored bytes: the client's, stamped with offset 3");

    for fault in [Fault::WriteFails, Fault::PartialWrite, Fault::DiskFull] {
        for writes_before in [0, 1] {
            let dir = tempfile::tempdir().unwrap();
            let fs = FaultyFs::default();
            let switch = fs.switch.clone();
            let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), LogConfig::default()).unwrap();
            let end = fill(&log, 5, 50);
            let batch = Bytes::from(batch_of(end, 3, 50, T0));
            let file = dir.path().join("00000000000000000000.log");
            let len = std::fs::metadata(&file).unwrap().len();
            switch.set_after_writes(fault, writes_before);
            let err = log.append_pending(BatchRef::Shared(&batch)).unwrap_err();
            assert_eq!(
                std::fs::metadata(&file).unwrap().len(),
                len,
                "{fault:?}/{writes_before}: the failed write is cut"
            );
            assert!(switch.fired(), "{fault:?} after {writes_before} writes was injected");
            assert_eq!(err.is_disk_full(), fault == Fault::DiskFull, "{fault:?}: {err}");
            assert_eq!(log.high_watermark(), end);
            switch.set(None);
            let out = log.append_pending(BatchRef::Shared(&batch)).unwrap();
            assert_eq!(out.outcome.base_offset, end, "{fault:?}/{writes_before}: appends resume at the same offset");
            log.sync().unwrap();
            drop(log);
            let log = open(dir.path(), LogConfig::default());
            assert_prefix(&read_all(&log, 0).unwrap(), end + 3, 50);
        }
    }
}

#[test]
fn concurrent_appenders_share_fsyncs_and_get_dense_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), LogConfig::default()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| log.append(&mut batch_of(0, 10, 20, T0)).unwrap())
                    .map(|o| (o.base_offset, o.last_offset))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ranges: Vec<(u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    ranges.sort();
    let mut next = 0;
    for (base, last) in ranges {
        assert_eq!(base, next);
        assert_eq!(last, base + 9);
        next = last + 1;
    }
    assert_eq!(log.high_watermark(), 4000);
}

#[test]
fn idempotent_retry_returns_original_offsets_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stamp = ProducerStamp { producer_id: 77, producer_epoch: 0, first_sequence: 0 };
    let records = vec![Record { value: Bytes::from_static(b"x"), timestamp_ms: T0, ..Record::default() }; 4];
    let log = open(dir.path(), small_config());
    fill(&log, 2, 10);
    let first = log.append(&mut batch::encode(&records, Some(stamp))).unwrap();
    let retry = log.append(&mut batch::encode(&records, Some(stamp))).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (first.base_offset, first.last_offset));
    drop(log); // unclean
    let log = open(dir.path(), small_config());
    let retry = log.append(&mut batch::encode(&records, Some(stamp))).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.base_offset, first.base_offset);
    assert_eq!(log.high_watermark(), first.last_offset + 1);
    let next = ProducerStamp { producer_id: 77, producer_epoch: 0, first_sequence: 4 };
    assert!(!log.append(&mut batch::encode(&records, Some(next))).unwrap().duplicate);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    for i in 0..100u64 {
        log.append(&mut batch_of(i, 1, 30, T0 + i as i64 * 1000)).unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), 0);
    assert_eq!(log.offset_for_timestamp(T0 + 42_000).unwrap(), 42);
    assert_eq!(log.offset_for_timestamp(T0 + 42_001).unwrap(), 43);
    assert_eq!(log.offset_for_timestamp(T0 + 1_000_000).unwrap(), 100);
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.offset_for_timestamp(T0 + 77_000).unwrap(), 77);
}

#[test]
fn retention_deletes_whole_old_segments_and_advances_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let config = LogConfig { retention_age: Some(Duration::from_secs(60)), ..small_config() };
    let log = Log::open(dir.path(), Arc::new(StdFs), Arc::new(clock.clone()), config).unwrap();
    for i in 0..60u64 {
        log.append(&mut batch_of(i * 3, 3, 30, T0 + i as i64 * 1000)).unwrap();
    }
    assert_eq!(log.enforce_retention().unwrap(), 0, "nothing is old yet");
    clock.advance(90_000); // now = T0 + 90 s: records older than T0 + 30 s expire
    assert!(log.enforce_retention().unwrap() > 0);
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 31 * 3, "log start {start}");
    assert!(matches!(log.read(0, 100), Err(StorageError::OffsetOutOfRange { .. })));
    assert_prefix(&read_all(&log, start).unwrap(), 180 - start, 30);

    // By size: keep at most half of what is left, give or take a segment.
    let limit = log.size_bytes() / 2;
    log.set_config(LogConfig { retention_age: None, retention_bytes: Some(limit), ..config });
    log.enforce_retention().unwrap();
    assert!(log.size_bytes() <= limit + config.segment_bytes, "size {} for a limit of {limit}", log.size_bytes());
    drop(log);
    let log = Log::open(dir.path(), Arc::new(StdFs), Arc::new(clock), small_config()).unwrap();
    assert!(
        log.log_start_offset() > start,
        "log start {} after reopen, {start} before the size rule",
        log.log_start_offset()
    );
}

#[test]
fn opening_a_thousand_segments_opens_only_the_last_two_indexes() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1000u64 {
        let mut b = batch_of(i * 2, 2, 10, T0);
        batch::set_base_offset(&mut b, i * 2);
        std::fs::write(dir.path().join(format!("{:020}.log", i * 2)), &b).unwrap();
    }
    let log = open(dir.path(), LogConfig::default());
    assert_eq!(log.high_watermark(), 2000);
    let indexes = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "index"))
        .count();
    // Without a checkpoint recovery scans every segment (`never` fsyncs
    // rolled segments late), but rebuilds only the indexes of the active
    // segment and the one before it; no other index is opened.
    assert_eq!(indexes, 2, "only the last two segments' indexes are opened");
    assert_eq!(read_all(&log, 0).unwrap().len(), 2000);
}

#[test]
fn segment_ms_rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let config = LogConfig { segment_age: Duration::from_secs(1), ..LogConfig::default() };
    let log = Log::open(dir.path(), Arc::new(StdFs), Arc::new(clock.clone()), config).unwrap();
    log.append(&mut batch_of(0, 1, 10, clock.now_ms())).unwrap();
    clock.advance(1500);
    log.append(&mut batch_of(1, 1, 10, clock.now_ms())).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[derive(Debug, Clone)]
enum Op {
    Append { count: usize, len: usize },
    Read { at: u64 },
    Advance { ms: i64 },
    Retention { bytes: i64 },
    Reopen { clean: bool },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 1usize..300).prop_map(|(count, len)| Op::Append { count, len }),
        3 => (0u64..400).prop_map(|at| Op::Read { at }),
        1 => (0i64..5000).prop_map(|ms| Op::Advance { ms }),
        1 => prop_oneof![Just(-1i64), 1000i64..8000].prop_map(|bytes| Op::Retention { bytes }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => Just(Op::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The log behaves like a vector of records with a moving start.
    #[test]
    fn log_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..60), flush_always in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let config = LogConfig {
            segment_bytes: 1024,
            segment_age: Duration::from_secs(3),
            index_interval_bytes: 128,
            flush: if flush_always { FlushPolicy::Always } else { FlushPolicy::Never },
            ..LogConfig::default()
        };
        let reopen = |config: &LogConfig| Log::open(dir.path(), Arc::new(StdFs), Arc::new(clock.clone()), *config).unwrap();
        let mut log = reopen(&config);
        let mut model: Vec<(i64, usize)> = Vec::new(); // (timestamp, value length) per offset
        let mut start = 0u64;
        for op in ops {
            match op {
                Op::Append { count, len } => {
                    let next = model.len() as u64;
                    let out = log.append(&mut batch_of(next, count, len, clock.now_ms())).unwrap();
                    prop_assert_eq!(out.base_offset, next);
                    model.extend(std::iter::repeat_n((clock.now_ms(), len), count));
                }
                Op::Read { at } => {
                    let hw = model.len() as u64;
                    match log.read(at, 512) {
                        Ok(r) if at < hw => {
                            let recs: Vec<_> = r.batches.iter().flat_map(|b| batch::decode_records(b).unwrap()).filter(|r| r.offset >= at).collect();
                            prop_assert_eq!(recs[0].offset, at);
                            for r in recs {
                                prop_assert_eq!(&r.value, &value(r.offset, model[r.offset as usize].1));
                            }
                        }
                        Ok(r) => prop_assert!(at == hw && r.batches.is_empty()),
                        Err(StorageError::OffsetOutOfRange { .. }) => prop_assert!(at < start || at > hw),
                        Err(e) => prop_assert!(false, "read failed: {}", e),
                    }
                }
                Op::Advance { ms } => clock.advance(ms),
                Op::Retention { bytes } => {
                    let retention_bytes = (bytes >= 0).then_some(bytes as u64);
                    log.set_config(LogConfig { retention_bytes, retention_age: Some(Duration::from_secs(20)), ..config });
                    log.enforce_retention().unwrap();
                    let new_start = log.log_start_offset();
                    prop_assert!(new_start >= start);
                    // Only records that are old or over the size limit go.
                    if new_start > start && bytes < 0 {
                        prop_assert!(model[(new_start - 1) as usize].0 < clock.now_ms() - 20_000);
                    }
                    start = new_start;
                    log.set_config(config);
                }
                Op::Reopen { clean } => {
                    if clean { log.close().unwrap(); }
                    drop(log);
                    log = reopen(&config);
                    prop_assert_eq!(log.log_start_offset(), start);
                }
                Op::Sync => log.sync().unwrap(),
            }
            prop_assert_eq!(log.high_watermark(), model.len() as u64);
        }
        let all = read_all(&log, start).unwrap();
        prop_assert_eq!(all.len() as u64, model.len() as u64 - start);
    }
}

/// Power-loss ordering, which no SIGKILL test can see: a new segment's name
/// must be durable (directory fsynced) before any batch is written to it,
/// and every batch reported durable must have been followed by an fsync of
/// its file.
#[test]
fn a_new_segment_is_named_durably_before_data_goes_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let ops = fs.ops.clone();
    let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), small_config()).unwrap();
    fill(&log, 40, 30);
    assert!(log.segment_count() > 3);
    let ops = ops.lock().unwrap().clone();
    let dir_sync = format!("sync_dir {}", dir.path().display());
    let segments = created_and_first_written(&ops);
    for (file, i, w) in &segments {
        assert!(ops[*i..*w].contains(&dir_sync), "{file}: no directory fsync between its creation and its first write");
    }
    assert!(segments.len() > 3, "segments checked: {}", segments.len());
    // Every write is followed by an fsync of the same file before the next
    // append returns (flush policy always): count writes vs syncs per file.
    let writes = ops.iter().filter(|o| o.starts_with("write ")).count();
    let syncs = data_syncs(&ops);
    assert!(syncs >= writes, "{syncs} fsyncs for {writes} appends under flush=always with one appender");
}

/// Each `.log` file FaultyFs saw created and then written: (file, index of
/// its `create` op, index of its first `write` op).
fn created_and_first_written(ops: &[String]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let Some(file) = op.strip_prefix("create ").filter(|f| f.ends_with(".log")) else { continue };
        if let Some(w) = ops[i..].iter().position(|o| o == &format!("write {file}")) {
            out.push((file.to_string(), i, i + w));
        }
    }
    out
}

/// Fsyncs of `.log` files (data) among FaultyFs's recorded ops.
fn data_syncs(ops: &[String]) -> usize {
    ops.iter().filter(|o| o.starts_with("sync ") && o.ends_with(".log")).count()
}

/// A `never` log of small segments over a FaultyFs, and its recorded ops.
fn recorded_never_log(dir: &Path, clock: Arc<dyn Clock>) -> (Log, Arc<std::sync::Mutex<Vec<String>>>) {
    let fs = FaultyFs::default();
    let ops = fs.ops.clone();
    let config = LogConfig { flush: FlushPolicy::Never, ..small_config() };
    (Log::open(dir, Arc::new(fs), clock, config).unwrap(), ops)
}

/// Under `never` no appender waits for the disk at a roll: the first batch
/// goes into the new segment before the directory fsync and the old
/// segment's index fsyncs, which `finish_rolls` does in the background.
/// Still, no segment's data is fsynced before its name is durable, and
/// every closed segment ends up with trimmed indexes.
#[test]
fn never_rolls_write_first_and_name_segments_durably_before_any_fsync_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, ops) = recorded_never_log(dir.path(), Arc::new(SystemClock));
    fill(&log, 40, 30);
    assert!(log.has_unfinished_rolls());
    log.sync_closed(0).unwrap();
    log.sync().unwrap();
    log.finish_rolls().unwrap();
    assert!(!log.has_unfinished_rolls());
    assert!(log.segment_count() > 3);
    let ops = ops.lock().unwrap().clone();
    let dir_sync = format!("sync_dir {}", dir.path().display());
    // The first segment is created by open, not by a roll.
    let rolled: Vec<_> = created_and_first_written(&ops)
        .into_iter()
        .filter(|(f, _, _)| !f.ends_with("00000000000000000000.log"))
        .collect();
    for (file, i, w) in &rolled {
        assert!(!ops[*i..*w].contains(&dir_sync), "{file}: the roll waited for a directory fsync");
        let synced = ops.iter().position(|o| o == &format!("sync {file}")).expect("every segment fsynced in the end");
        assert!(ops[*i..synced].contains(&dir_sync), "{file}: fsynced before its name was durable");
    }
    assert_eq!(rolled.len(), log.segment_count() - 1, "every rolled segment checked");
    let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "index"))
        .collect();
    indexes.sort();
    let active = indexes.pop().unwrap();
    let preallocated = std::fs::metadata(active).unwrap().len();
    for index in indexes {
        assert!(std::fs::metadata(&index).unwrap().len() < preallocated, "{index:?} is trimmed");
    }
}

#[test]
fn a_new_partition_directory_is_made_durable_in_its_parent() {
    let root = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let ops = fs.ops.clone();
    let dir = root.path().join("__consumer_offsets");
    let log = Log::open(&dir, Arc::new(fs), Arc::new(SystemClock), LogConfig::default()).unwrap();
    fill(&log, 1, 10);
    let ops = ops.lock().unwrap().clone();
    let parent_sync = format!("sync_dir {}", root.path().display());
    let first_write = ops.iter().position(|o| o.starts_with("write ")).unwrap();
    assert!(ops[..first_write].contains(&parent_sync), "{ops:?}");
}

/// Under `never`, nothing on the append path fsyncs: a roll leaves the old
/// segment for `sync_closed` (the broker runs it in the background once the
/// segment has been closed for a while) and a checkpoint records only what
/// is already durable. Once the rolled segments are synced, the checkpoint
/// moves to the active segment.
#[test]
fn never_rolls_without_fsync_and_checkpoints_only_what_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let (log, ops) = recorded_never_log(dir.path(), Arc::new(clock.clone()));
    let config = LogConfig { flush: FlushPolicy::Never, ..small_config() };
    let end = fill(&log, 40, 30);
    assert!(log.segment_count() > 3);
    assert_eq!(data_syncs(&ops.lock().unwrap()), 0, "no fsync of data on the append path under never");
    assert!(log.has_unsynced_closed());
    // Nothing is durable past the first segment yet; the checkpoint records
    // the written point (for a crash in this boot), once.
    assert!(log.checkpoint_hint().unwrap());
    assert!(!log.checkpoint_hint().unwrap());
    // Segments rolled less than the delay ago are left to the kernel.
    assert!(!log.closed_sync_due(30_000));
    log.sync_closed(30_000).unwrap();
    assert_eq!(data_syncs(&ops.lock().unwrap()), 0, "no segment is old enough yet");
    assert!(!log.checkpoint_hint().unwrap(), "nothing moved");
    clock.advance(30_000);
    assert!(log.closed_sync_due(30_000));
    log.sync_closed(30_000).unwrap();
    assert!(!log.has_unsynced_closed());
    let closed = log.segment_count() - 1;
    assert_eq!(data_syncs(&ops.lock().unwrap()), closed, "each rolled segment fsynced once");
    // The durable point moved to the active segment: recorded, once.
    assert!(log.checkpoint_hint().unwrap());
    assert!(!log.checkpoint_hint().unwrap());
    assert_eq!(data_syncs(&ops.lock().unwrap()), closed, "checkpoints fsync no data");
    drop(log); // unclean
    let log = open(dir.path(), config);
    assert_eq!(log.high_watermark(), end);
    assert_prefix(&read_all(&log, 0).unwrap(), end, 30);
}

/// A power loss can leave any of the newest rolled segments of a `never`
/// log with a torn tail (they are fsynced some time after the roll) while
/// later segments exist, and can lose the checkpoint (a hint written
/// without fsync). Recovery then scans from the start, cuts at the first
/// tear and drops what follows, so no hole and no corrupt record is ever
/// served.
#[test]
fn lost_checkpoint_and_torn_rolled_segments_recover_to_a_clean_prefix() {
    for torn_from_end in [2, 3] {
        torn_rolled_segment_recovers_to_a_clean_prefix(torn_from_end);
    }
}

fn torn_rolled_segment_recovers_to_a_clean_prefix(torn_from_end: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { flush: FlushPolicy::Never, ..small_config() };
    let log = open(dir.path(), config);
    fill(&log, 40, 30);
    drop(log);
    let mut logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let torn = &logs[logs.len() - torn_from_end];
    let base: u64 = torn.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let len = std::fs::metadata(torn).unwrap().len();
    // Tear a rolled segment in its last batch, and lose the checkpoint.
    std::fs::OpenOptions::new().write(true).open(torn).unwrap().set_len(len - 5).unwrap();
    let _ = std::fs::remove_file(dir.path().join("recovery.checkpoint"));
    let log = open(dir.path(), config);
    let hw = log.high_watermark();
    assert!(hw > base && hw < base + 100, "recovered into the torn segment: {hw}");
    assert_eq!(log.segment_count(), logs.len() + 1 - torn_from_end, "the segments after the tear are removed");
    assert_prefix(&read_all(&log, 0).unwrap(), hw, 30);
}

fn one_segment_never() -> LogConfig {
    LogConfig { flush: FlushPolicy::Never, segment_bytes: 1 << 20, index_interval_bytes: 256, ..LogConfig::default() }
}

/// Like [`fill`], with timestamps that grow as a clock's do, so the time
/// index has entries all along the segment.
fn fill_ticking(log: &Log, batches: usize, len: usize) -> u64 {
    for _ in 0..batches {
        let next = log.high_watermark();
        log.append(&mut batch_of(next, 3, len, T0 + next as i64)).unwrap();
    }
    log.high_watermark()
}

/// Where `read <segment>@<position>+<len>` ops of the first segment start,
/// leaving out the format check's peek at the first batch header.
fn first_read_position(ops: &[String]) -> Option<u64> {
    ops.iter()
        .filter_map(|o| {
            let (position, len) =
                o.strip_prefix("read ")?.rsplit_once("00000000000000000000.log@")?.1.split_once('+')?;
            let (position, len): (u64, usize) = (position.parse().ok()?, len.parse().ok()?);
            (position > 0 || len > strata::storage::batch::HEADER_LEN).then_some(position)
        })
        .min()
}

/// After a process crash (same boot) recovery trusts what completed writes
/// put in the page cache up to the checkpoint's written point and reads only
/// past it, so a `never` partition with a whole unsynced segment restarts
/// in milliseconds. That tail is not treated as durable: the next sync
/// fsyncs it. After a power loss (new boot) recovery starts at the durable
/// point, and unsynced bytes that came back as garbage are cut exactly there.
#[test]
fn same_boot_recovery_reads_only_past_the_written_point_and_a_new_boot_past_the_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let ops = fs.ops.clone();
    let log = Log::open(dir.path(), Arc::new(fs.clone()), Arc::new(SystemClock), one_segment_never()).unwrap();
    let durable = fill_ticking(&log, 10, 40);
    log.sync().unwrap();
    let durable_len = std::fs::metadata(dir.path().join("00000000000000000000.log")).unwrap().len();
    let written = fill_ticking(&log, 100, 40);
    assert!(log.checkpoint_hint().unwrap());
    let checkpointed_len = std::fs::metadata(dir.path().join("00000000000000000000.log")).unwrap().len();
    let end = fill_ticking(&log, 5, 40);
    assert!(end > written && written > durable);
    drop(log); // killed: no clean close

    ops.lock().unwrap().clear();
    let log = Log::open(dir.path(), Arc::new(fs.clone()), Arc::new(SystemClock), one_segment_never()).unwrap();
    let first = first_read_position(&ops.lock().unwrap());
    assert!(
        first.is_some_and(|p| p >= checkpointed_len),
        "recovery read from {first:?}, written point {checkpointed_len}"
    );
    // Nothing was cut, so nothing waits for the disk before serving: an
    // fsync (of an index, say) queues behind the writeback of every dirty
    // file on ext4, seconds after a burst.
    let recovery_syncs: Vec<String> = ops.lock().unwrap().iter().filter(|o| o.starts_with("sync")).cloned().collect();
    assert!(recovery_syncs.is_empty(), "recovery synced {recovery_syncs:?}");
    assert_eq!(log.high_watermark(), end);
    assert_prefix(&read_all(&log, 0).unwrap(), end, 40);
    assert!(log.has_unsynced(), "the recovered tail is not known to be on disk");
    let before = data_syncs(&ops.lock().unwrap());
    log.sync().unwrap();
    assert_eq!(data_syncs(&ops.lock().unwrap()), before + 1, "sync fsyncs the recovered tail");
    drop(log);

    // A power loss: everything past the durable point comes back as garbage.
    let path = dir.path().join("00000000000000000000.log");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[durable_len as usize..] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    fs.reboot();
    let log = Log::open(dir.path(), Arc::new(fs.clone()), Arc::new(SystemClock), one_segment_never()).unwrap();
    assert!(log.high_watermark() >= durable && log.high_watermark() < written, "hw {}", log.high_watermark());
    assert_prefix(&read_all(&log, 0).unwrap(), log.high_watermark(), 40);
}

/// A failed fsync cuts the unsynced tail; batches appended after it start
/// at positions the old checkpoint's written point may fall inside. The
/// cut replaces the checkpoint first, so a crash afterwards recovers every
/// acknowledged batch.
#[test]
fn a_cut_after_a_failed_fsync_replaces_the_written_point() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let switch = fs.switch.clone();
    let config = LogConfig { segment_bytes: 1 << 20, ..LogConfig::default() };
    let log = Log::open(dir.path(), Arc::new(fs.clone()), Arc::new(SystemClock), config).unwrap();
    let acked = fill(&log, 3, 40);
    // Written, not yet synced: the checkpoint records its end.
    let pending = log.append_pending(&mut batch_of(acked, 3, 40, T0)).unwrap();
    assert!(log.checkpoint_hint().unwrap());
    switch.set(Some(Fault::SyncFails));
    assert!(log.wait_durable(&pending).is_err());
    switch.set(None);
    // Longer batches, so the old written point falls inside one of them.
    for _ in 0..3 {
        let next = log.high_watermark();
        log.append(&mut batch_of(next, 5, 97, T0)).unwrap();
    }
    let end = log.high_watermark();
    assert_eq!(end, acked + 15);
    drop(log); // killed
    let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), config).unwrap();
    assert_eq!(log.high_watermark(), end, "every acknowledged batch recovered");
    let records = read_all(&log, 0).unwrap();
    assert_eq!(records.len() as u64, end);
}

/// Segments rolled under `never` and not yet fsynced when the broker was
/// killed are recovered from the page cache in the same boot, and still
/// get their fsync (in the background) before the durable point passes them.
#[test]
fn rolled_segments_recovered_in_the_same_boot_are_still_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let ops = fs.ops.clone();
    let config = LogConfig { flush: FlushPolicy::Never, ..small_config() };
    let log = Log::open(dir.path(), Arc::new(fs.clone()), Arc::new(SystemClock), config).unwrap();
    let end = fill_ticking(&log, 40, 30);
    let segments = log.segment_count();
    assert!(segments > 3);
    assert!(log.checkpoint_hint().unwrap());
    drop(log); // killed before the background fsync ran
    ops.lock().unwrap().clear();
    let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), config).unwrap();
    assert_eq!(log.high_watermark(), end);
    assert!(log.has_unsynced_closed(), "rolled segments read from the page cache wait for an fsync");
    log.sync_closed(0).unwrap();
    let synced = data_syncs(&ops.lock().unwrap());
    assert_eq!(synced, segments - 1, "each rolled segment fsynced once");
    assert!(!log.has_unsynced_closed());
    assert_prefix(&read_all(&log, 0).unwrap(), end, 30);
}

/// A log poisoned by a failed fsync of data readers already saw (flush
/// `never`) refuses writes; once the fault clears it is reopened in place:
/// what readers saw is all there, rewritten and fsynced, appends resume at
/// the next offset, and an append from before the reopen never counts as
/// durable.
#[test]
fn a_poisoned_log_reopens_in_place_once_the_fault_clears() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let switch = fs.switch.clone();
    let config = LogConfig { flush: FlushPolicy::Never, ..small_config() };
    let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), config).unwrap();
    let end = fill(&log, 20, 40);
    switch.set(Some(Fault::SyncFails));
    assert!(log.sync().is_err(), "the fsync fails");
    assert!(matches!(log.append(&mut batch_of(end, 3, 40, T0)), Err(StorageError::Poisoned { .. })));
    assert!(log.reopen_if_poisoned().is_err(), "not while the fault lasts");
    assert!(log.is_poisoned());
    switch.set(None);
    assert!(log.reopen_if_poisoned().unwrap(), "reopened once the fault cleared");
    assert!(!log.is_poisoned());
    assert_eq!(log.high_watermark(), end, "everything readers saw is there");
    assert_prefix(&read_all(&log, 0).unwrap(), end, 40);
    assert!(!log.has_unsynced(), "and fsynced again");
    let out = log.append(&mut batch_of(end, 3, 40, T0)).unwrap();
    assert_eq!(out.base_offset, end, "appends resume at the next offset");
    assert!(!log.reopen_if_poisoned().unwrap(), "nothing to do on a healthy log");
    drop(log);
    let log = open(dir.path(), small_config());
    assert_prefix(&read_all(&log, 0).unwrap(), end + 3, 40);
}

#[test]
fn an_append_written_before_a_reopen_is_never_acknowledged_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let switch = fs.switch.clone();
    let log = Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), small_config()).unwrap();
    let end = fill(&log, 5, 40);
    // Written, waiting for its fsync (flush `always`), when the log is
    // poisoned: its outcome is unknown, whatever happens after.
    let pending = log.append_pending(&mut batch_of(end, 3, 40, T0)).unwrap();
    switch.set(Some(Fault::SyncFails));
    log.set_config(LogConfig { flush: FlushPolicy::Never, ..small_config() });
    log.append(&mut batch_of(end + 3, 3, 40, T0)).unwrap();
    assert!(log.sync().is_err());
    switch.set(None);
    log.set_config(small_config());
    assert!(log.reopen_if_poisoned().unwrap());
    log.append(&mut batch_of(log.high_watermark(), 3, 40, T0)).unwrap();
    assert!(log.wait_durable(&pending).is_err(), "an append from before the reopen is not acknowledged");
}

/// The `.log` of the first segment, as FaultyFs records it.
fn first_log(dir: &Path) -> String {
    dir.join("00000000000000000000.log").display().to_string()
}

/// Appends `first` and, on another thread, waits for its fsync, which the
/// switch delays; returns once that fsync runs, with the thread and the
/// number of ops recorded by then.
fn fsync_in_flight(
    log: &Arc<Log>,
    dir: &Path,
    ops: &Arc<std::sync::Mutex<Vec<String>>>,
    first: u64,
) -> (std::thread::JoinHandle<Result<(), StorageError>>, usize) {
    let sync = format!("sync {}", first_log(dir));
    let syncs = |ops: &[String]| ops.iter().filter(|o| **o == sync).count();
    let before = syncs(&ops.lock().unwrap());
    let pending = log.append_pending(&mut batch_of(first, 2, 50, T0)).unwrap();
    let waiter = {
        let log = log.clone();
        std::thread::spawn(move || log.wait_durable(&pending))
    };
    while syncs(&ops.lock().unwrap()) == before {
        std::thread::sleep(Duration::from_millis(1));
    }
    (waiter, ops.lock().unwrap().len())
}

/// Group commit: appends that arrive while an fsync runs are not written at
/// once but queued, then written together with one vectored write when it
/// returns, and covered by the next fsync; nobody sees them before that.
#[test]
fn appends_during_an_fsync_are_written_together_and_covered_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let (ops, switch) = (fs.ops.clone(), fs.switch.clone());
    let log = Arc::new(Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), LogConfig::default()).unwrap());
    let end = fill(&log, 2, 50);
    switch.delay_syncs(Duration::from_millis(300));
    let (waiter, ops_at) = fsync_in_flight(&log, dir.path(), &ops, end);
    let batches: Vec<Bytes> = (0..5).map(|i| Bytes::from(batch_of(end + 2 + i * 3, 3, 50, T0))).collect();
    let pending: Vec<_> = batches.iter().map(|b| log.append_pending(BatchRef::Shared(b)).unwrap()).collect();
    assert_eq!(
        pending.iter().map(|p| p.outcome.base_offset).collect::<Vec<_>>(),
        vec![end + 2, end + 5, end + 8, end + 11, end + 14]
    );
    let written = |ops: &[String]| ops.iter().filter(|o| o.starts_with("write")).cloned().collect::<Vec<_>>();
    assert_eq!(written(&ops.lock().unwrap()[ops_at..]), Vec::<String>::new(), "queued, not written, during the fsync");
    assert_eq!(log.high_watermark(), end, "nothing visible before its fsync");
    waiter.join().unwrap().unwrap();
    switch.delay_syncs(Duration::ZERO);
    for p in &pending {
        log.wait_durable(p).unwrap();
    }
    let after: Vec<String> = ops.lock().unwrap()[ops_at..].to_vec();
    let file = first_log(dir.path());
    assert_eq!(written(&after), vec![format!("writev {file}")], "one vectored write for the queue");
    let writev = after.iter().position(|o| o.starts_with("writev")).unwrap();
    assert!(after[writev..].contains(&format!("sync {file}")), "an fsync after the queue's write: {after:?}");
    assert_prefix(&read_all(&log, 0).unwrap(), end + 17, 50);
    drop(log);
    let log = open(dir.path(), LogConfig::default());
    assert_prefix(&read_all(&log, 0).unwrap(), end + 17, 50);
}

/// A queue whose write fails is discarded like a failed fsync's tail: its
/// appends fail, what the fsync covered stays, and appends resume at the
/// first offset that was cut.
#[test]
fn a_failed_write_of_the_queue_fails_its_appends_and_keeps_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let (ops, switch) = (fs.ops.clone(), fs.switch.clone());
    let log = Arc::new(Log::open(dir.path(), Arc::new(fs), Arc::new(SystemClock), LogConfig::default()).unwrap());
    let end = fill(&log, 2, 50);
    switch.delay_syncs(Duration::from_millis(200));
    let (waiter, _) = fsync_in_flight(&log, dir.path(), &ops, end);
    let batches: Vec<Bytes> = (0..3).map(|i| Bytes::from(batch_of(end + 2 + i * 3, 3, 50, T0))).collect();
    let pending: Vec<_> = batches.iter().map(|b| log.append_pending(BatchRef::Shared(b)).unwrap()).collect();
    switch.set(Some(Fault::WriteFails));
    waiter.join().unwrap().expect("the fsync in flight covered the first append");
    assert!(switch.fired());
    switch.set(None);
    switch.delay_syncs(Duration::ZERO);
    for p in &pending {
        let err = log.wait_durable(p).unwrap_err();
        assert!(matches!(err, StorageError::SyncFailed { .. }), "{err}");
    }
    assert_eq!(log.high_watermark(), end + 2);
    let again = log.append(&mut batch_of(end + 2, 3, 50, T0)).unwrap();
    assert_eq!(again.base_offset, end + 2, "appends resume where the cut was");
    drop(log);
    let log = open(dir.path(), LogConfig::default());
    assert_prefix(&read_all(&log, 0).unwrap(), end + 5, 50);
}
