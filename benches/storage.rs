//! Storage engine benches. Each group measures strata next to a plain
//! baseline on the same disk in the same run (`File::write_all` in a loop,
//! with and without fdatasync), and a summary of ratios is printed first,
//! because absolute numbers on these machines are noisy.
//!
//! Run: `cargo bench --bench storage` (the summary alone:
//! `cargo bench --bench storage -- summary`).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata::storage::batch::{self, Record};
use strata::storage::fs::StdFs;
use strata::storage::{FlushPolicy, Log, LogConfig, SystemClock};

fn encoded(record_bytes: usize, batch_records: usize) -> Vec<u8> {
    let records: Vec<Record> = (0..batch_records)
        .map(|i| Record {
            key: Bytes::new(),
            value: Bytes::from(vec![(i % 251) as u8; record_bytes]),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    batch::encode(&records, None)
}

fn open(dir: &Path, flush: FlushPolicy) -> Log {
    let config = LogConfig { flush, segment_bytes: 1 << 30, ..LogConfig::default() };
    Log::open(dir, Arc::new(StdFs), Arc::new(SystemClock), config).unwrap()
}

/// MB/s of `total` bytes written by `f`.
fn rate(total: usize, f: impl FnOnce()) -> f64 {
    let started = Instant::now();
    f();
    total as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn median3(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `a` and `b` alternately three times and returns both medians, so
/// both see the same page-cache writeback state (running all of one first
/// skews the other by dirty-page throttling).
fn interleaved(mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (f64, f64) {
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ra.push(a());
        rb.push(b());
    }
    (median3(ra), median3(rb))
}

fn plain_write(dir: &Path, batch: &[u8], count: usize, sync: bool) -> f64 {
    let path = dir.join("plain.bin");
    let mut file = File::create(&path).unwrap();
    let buffers = vec![batch.to_vec(); count];
    let r = rate(batch.len() * count, || {
        for b in &buffers {
            file.write_all(b).unwrap();
            if sync {
                file.sync_data().unwrap();
            }
        }
    });
    std::fs::remove_file(path).unwrap();
    r
}

fn strata_append(batch: &[u8], count: usize, flush: FlushPolicy, appenders: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), flush));
    // Buffers are made before the clock starts: append takes ownership of
    // its batch (a broker encodes each one once), and the plain baseline
    // allocates nothing either.
    let per_thread = count / appenders;
    let mut buffers: Vec<Vec<Vec<u8>>> = (0..appenders).map(|_| vec![batch.to_vec(); per_thread]).collect();
    let mut drop_later = Vec::new();
    rate(batch.len() * per_thread * appenders, || {
        let threads: Vec<_> = buffers
            .drain(..)
            .map(|mut batches| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for b in batches.iter_mut() {
                        log.append(b).unwrap();
                    }
                    batches // freed after the clock stops, as the baseline's are
                })
            })
            .collect();
        let done: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        drop_later.extend(done);
    })
}

/// The ratios the storage issue sets targets for, measured in one run.
fn summary(_c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("\n== strata storage vs plain file writes, same disk, same run (median of 3) ==");
    for (record_bytes, batch_records) in [(100, 1), (100, 100), (100, 1000), (1024, 1), (1024, 100), (1024, 1000)] {
        let b = encoded(record_bytes, batch_records);
        // At most 128 MiB per run: more and dirty-page writeback throttling,
        // not the code under test, sets the pace.
        let count = ((128 << 20) / b.len()).clamp(64, 200_000);
        let (ours, plain) = interleaved(
            || strata_append(&b, count, FlushPolicy::Never, 1),
            || plain_write(dir.path(), &b, count, false),
        );
        eprintln!(
            "append never  {record_bytes:>4} B x {batch_records:>4}: strata {ours:8.1} MB/s  plain write {plain:8.1} MB/s  ratio {:.2}",
            ours / plain
        );
    }
    for (record_bytes, batch_records) in [(1024, 100), (100, 100)] {
        let b = encoded(record_bytes, batch_records);
        let count = 400;
        let (one, plain) = interleaved(
            || strata_append(&b, count, FlushPolicy::Always, 1),
            || plain_write(dir.path(), &b, count, true),
        );
        let eight = median3((0..3).map(|_| strata_append(&b, count * 2, FlushPolicy::Always, 8)).collect());
        eprintln!(
            "append always {record_bytes:>4} B x {batch_records:>4}: strata 1 appender {one:7.1} MB/s, 8 appenders {eight:7.1} MB/s; \
             plain write+fdatasync {plain:7.1} MB/s; ratio 1: {:.2}, 8: {:.2}",
            one / plain,
            eight / plain
        );
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for flush in [FlushPolicy::Never, FlushPolicy::Always] {
        for record_bytes in [100usize, 1024] {
            for batch_records in [1usize, 100, 1000] {
                let b = encoded(record_bytes, batch_records);
                group.throughput(Throughput::Bytes(b.len() as u64));
                let id = BenchmarkId::new(format!("strata/{flush}/{record_bytes}B"), batch_records);
                let dir = tempfile::tempdir().unwrap();
                let log = open(dir.path(), flush);
                let mut mine = b.clone();
                group.bench_function(id, |bench| bench.iter(|| log.append(&mut mine).unwrap()));
                let id = BenchmarkId::new(format!("plain/{flush}/{record_bytes}B"), batch_records);
                let mut file = File::create(dir.path().join("plain.bin")).unwrap();
                group.bench_function(id, |bench| {
                    bench.iter(|| {
                        file.write_all(&b).unwrap();
                        if flush == FlushPolicy::Always {
                            file.sync_data().unwrap();
                        }
                    })
                });
            }
        }
    }
    group.finish();
}

/// 8 appenders under `always`: group commit shares fsyncs between them.
fn append_concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_always_8_appenders");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    let b = encoded(1024, 100);
    group.throughput(Throughput::Bytes(b.len() as u64 * 8));
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), FlushPolicy::Always));
    group.bench_function("1KiB_x100", |bench| {
        bench.iter_custom(|iters| {
            let started = Instant::now();
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (log, b) = (log.clone(), b.clone());
                    std::thread::spawn(move || {
                        (0..iters).for_each(|_| {
                            log.append(&mut b.clone()).unwrap();
                        })
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            started.elapsed()
        })
    });
    group.finish();
}

fn build_log(dir: &Path, records: u64, record_bytes: usize) -> Log {
    let log = open(dir, FlushPolicy::Never);
    let per_batch = 1000;
    let b = encoded(record_bytes, per_batch);
    for _ in 0..records / per_batch as u64 {
        log.append(&mut b.clone()).unwrap();
    }
    log
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group.sample_size(10).measurement_time(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let log = build_log(dir.path(), 200_000, 256);
    let total = log.size_bytes();
    group.throughput(Throughput::Bytes(total));
    group.bench_function("sequential_1MiB_reads", |bench| {
        bench.iter(|| {
            let mut next = 0;
            while next < log.high_watermark() {
                let r = log.read(next, 1 << 20).unwrap();
                let last = r.batches.last().unwrap();
                next = batch::BatchHeader::parse(last, usize::MAX).unwrap().next_offset();
            }
        })
    });
    group.finish();
}

/// Offset lookup: binary search of the index, then a scan of at most one
/// index interval, so the time must not grow with the log.
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("offset_lookup");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    for records in [1_000_000u64, 10_000_000] {
        let dir = tempfile::tempdir().unwrap();
        let log = build_log(dir.path(), records, 8);
        let mut x = 0x2545F4914F6CDD1Du64;
        group.bench_function(BenchmarkId::from_parameter(records), |bench| {
            bench.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                log.read(x % records, 1).unwrap()
            })
        });
    }
    group.finish();
}

/// Reading the newest segment right after a reopen (clean and unclean) is as
/// fast as before it: the index is there, not rebuilt by scanning per read.
fn tail_after_reopen(c: &mut Criterion) {
    let mut group = c.benchmark_group("tail_read");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let log = build_log(dir.path(), 2_000_000, 8);
    let hw = log.high_watermark();
    group.bench_function("before_reopen", |bench| bench.iter(|| log.read(hw - 500, 1).unwrap()));
    drop(log); // unclean
    let log = open(dir.path(), FlushPolicy::Never);
    group.bench_function("after_unclean_reopen", |bench| bench.iter(|| log.read(hw - 500, 1).unwrap()));
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), FlushPolicy::Never);
    group.bench_function("after_clean_reopen", |bench| bench.iter(|| log.read(hw - 500, 1).unwrap()));
    group.finish();
}

criterion_group!(benches, summary, append, append_concurrent, read, lookup, tail_after_reopen);
criterion_main!(benches);
