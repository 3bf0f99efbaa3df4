//! Power-loss simulation of the partition log. SIGKILL leaves the page cache
//! intact, so it cannot catch a missing fsync; this can. The log runs on
//! `SimFs`, an in-memory file system that keeps what was written apart from
//! what was made durable. A deterministic workload (appends of random
//! batches, rolls, checkpoints, retention, background fsyncs) is stopped
//! at every N-th file system operation; the log is reopened from the image
//! a power cut would leave (only what was made durable; and, with chaos, a
//! random prefix of the rest, torn at a sector) and from the image a
//! process crash would leave, and checked:
//!
//! - under flush `always`, every acknowledged record is there, at its
//!   offset, byte for byte; after a process crash, under every policy;
//! - whatever is there is a dense run of offsets holding exactly what was
//!   appended at them, each append whole or absent (never half visible);
//! - the reopened log takes appends and reopens again.
//!
//! Default: every 3rd crash point of three workloads per policy (a few
//! seconds). `STRATA_POWER_LOSS_STEP=1 STRATA_POWER_LOSS_SEEDS=20 cargo test
//! --release --test power_loss -- --nocapture` tries every crash point of
//! 20 workloads per policy.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strata::storage::batch::{self, Record};
use strata::storage::simfs::{Loss, Rng, SimFs};
use strata::storage::{FlushPolicy, Log, LogConfig, ManualClock, StorageError};

const T0: i64 = 1_700_000_000_000;
const DIR: &str = "/data/topic/0";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(flush: FlushPolicy, retention: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        retention_age: retention.then_some(std::time::Duration::from_secs(20)),
        flush,
        ..LogConfig::default()
    }
}

/// What the workload did: every append written (offsets known), and which
/// of them were acknowledged.
#[derive(Default)]
struct Ledger {
    /// offset -> (value, first offset of its append, last offset of it).
    written: BTreeMap<u64, (Bytes, u64, u64)>,
    acked: Vec<(u64, u64)>,
    /// The log start offset before the crash (retention may have moved it).
    log_start: u64,
}

fn value(seed: u64, offset: u64, len: usize) -> Bytes {
    let mut v = format!("{seed}:{offset}:").into_bytes();
    v.resize(len.max(v.len()), b'a' + (offset % 26) as u8);
    Bytes::from(v)
}

/// Runs the workload until it is done or the machine stops.
fn workload(fs: &SimFs, clock: &ManualClock, seed: u64, flush: FlushPolicy, retention: bool) -> Ledger {
    let mut rng = Rng::new(seed);
    let mut ledger = Ledger::default();
    let Ok(log) = Log::open(Path::new(DIR), Arc::new(fs.clone()), Arc::new(clock.clone()), config(flush, retention))
    else {
        return ledger;
    };
    for _ in 0..120 {
        if fs.is_frozen() {
            break;
        }
        clock.advance(rng.below(800) as i64);
        match rng.below(20) {
            0 => {
                let _ = log.checkpoint_hint();
            }
            1 => {
                let _ = log.finish_rolls().and_then(|()| log.sync_closed(0));
            }
            2 if matches!(flush, FlushPolicy::Interval(_)) => {
                // The background flush of an interval topic.
                let _ = log.sync();
            }
            3 if retention => {
                let _ = log.enforce_retention();
            }
            4 => {
                let _ = log.roll_now();
            }
            _ => {
                let n = 1 + rng.below(4) as usize;
                let next = log.high_watermark().max(ledger.written.keys().next_back().map_or(0, |o| o + 1));
                let lens: Vec<usize> = (0..n).map(|_| 10 + rng.below(300) as usize).collect();
                let records: Vec<Record> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, len)| Record {
                        key: Bytes::new(),
                        value: value(seed, next + i as u64, *len),
                        headers: vec![],
                        timestamp_ms: clock.now_ms_for_test(),
                    })
                    .collect();
                let mut encoded = batch::encode(&records, None);
                let Ok(pending) = log.append_pending(&mut encoded) else { continue };
                let (first, last) = (pending.outcome.base_offset, pending.outcome.last_offset);
                assert_eq!(first, next, "offsets are dense");
                for (i, r) in records.iter().enumerate() {
                    ledger.written.insert(first + i as u64, (r.value.clone(), first, last));
                }
                if log.wait_durable(&pending).is_ok() {
                    ledger.acked.push((first, last));
                }
            }
        }
        ledger.log_start = log.log_start_offset();
    }
    ledger
}

trait NowForTest {
    fn now_ms_for_test(&self) -> i64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> i64 {
        strata::storage::Clock::now_ms(self)
    }
}

/// Every record of the reopened log, checked against what was written.
fn check(log: &Log, ledger: &Ledger, must_have_acked: bool, what: &str) {
    let (start, end) = (log.log_start_offset(), log.high_watermark());
    let mut next = start;
    while next < end {
        let read = match log.read(next, 1 << 16) {
            Ok(r) => r,
            Err(StorageError::OffsetOutOfRange { .. }) => {
                panic!("{what}: offset {next} in [{start}, {end}) out of range")
            }
            Err(e) => panic!("{what}: read of {next} failed: {e}"),
        };
        assert!(!read.batches.is_empty(), "{what}: nothing at {next} below the high watermark {end}");
        for b in &read.batches {
            for r in batch::decode_records(b).unwrap() {
                if r.offset < next {
                    continue;
                }
                assert_eq!(r.offset, next, "{what}: offsets are dense");
                let (expected, ..) = ledger
                    .written
                    .get(&r.offset)
                    .unwrap_or_else(|| panic!("{what}: offset {} holds a record never appended there", r.offset));
                assert_eq!(&r.value, expected, "{what}: offset {} holds another record", r.offset);
                next += 1;
            }
        }
    }
    // Whole appends only: the end never falls inside one.
    if let Some((_, first, last)) = end.checked_sub(1).and_then(|o| ledger.written.get(&o)) {
        assert_eq!(*last, end - 1, "{what}: the append of offsets {first}..={last} is half visible (end {end})");
    }
    if must_have_acked {
        for &(first, last) in &ledger.acked {
            if last >= ledger.log_start {
                assert!(last < end, "{what}: acknowledged offsets {first}..={last} lost (log ends at {end})");
                assert!(
                    start <= first.max(ledger.log_start),
                    "{what}: acknowledged offset {first} below the log start {start}"
                );
            }
        }
    }
}

/// Reopens from an image, checks it, and checks the log still works.
fn reopen_and_check(image: SimFs, clock: &ManualClock, flush: FlushPolicy, ledger: &Ledger, acked: bool, what: &str) {
    let fs: Arc<SimFs> = Arc::new(image);
    let log = Log::open(Path::new(DIR), fs.clone(), Arc::new(clock.clone()), config(flush, false))
        .unwrap_or_else(|e| panic!("{what}: reopening failed: {e}"));
    check(&log, ledger, acked, what);
    let end = log.high_watermark();
    let record = Record { value: Bytes::from_static(b"after"), timestamp_ms: T0, ..Record::default() };
    let out = log.append(&mut batch::encode(&[record], None)).unwrap_or_else(|e| panic!("{what}: append: {e}"));
    assert_eq!(out.base_offset, end, "{what}: appends continue densely");
    drop(log);
    let log = Log::open(Path::new(DIR), fs, Arc::new(clock.clone()), config(flush, false))
        .unwrap_or_else(|e| panic!("{what}: second reopen failed: {e}"));
    assert_eq!(log.high_watermark(), end + 1, "{what}: the append after recovery survives a reopen");
}

fn simulate(flush: FlushPolicy, retention: bool) -> u64 {
    let step = env_u64("STRATA_POWER_LOSS_STEP", 3).max(1);
    let seeds = env_u64("STRATA_POWER_LOSS_SEEDS", 3);
    let mut tried = 0;
    for seed in 1..=seeds {
        // How many operations the whole workload takes.
        let fs = SimFs::default();
        workload(&fs, &ManualClock::new(T0), seed, flush, retention);
        let total = fs.ops();
        let mut n = 1 + seed % step;
        while n <= total {
            let fs = SimFs::default();
            let clock = ManualClock::new(T0);
            fs.crash_after(n);
            let ledger = workload(&fs, &clock, seed, flush, retention);
            let what =
                |kind: &str| format!("{flush} retention={retention} seed {seed}, crash at op {n} of {total}, {kind}");
            let always = flush == FlushPolicy::Always;
            reopen_and_check(fs.power_loss(Loss::Strict), &clock, flush, &ledger, always, &what("power loss"));
            let chaos = Loss::Chaos(seed * 1_000_003 + n);
            reopen_and_check(fs.power_loss(chaos), &clock, flush, &ledger, always, &what("power loss, chaos"));
            reopen_and_check(fs.process_crash(), &clock, flush, &ledger, true, &what("process crash"));
            tried += 1;
            n += step;
        }
    }
    tried
}

#[test]
fn flush_always_survives_power_loss_at_every_crash_point() {
    let tried = simulate(FlushPolicy::Always, false) + simulate(FlushPolicy::Always, true);
    eprintln!("flush always: {tried} crash points, 3 images each");
    assert!(tried > 100);
}

#[test]
fn flush_interval_and_never_lose_only_the_unsynced_tail_and_nothing_on_a_process_crash() {
    let tried = simulate(FlushPolicy::Interval(100), false)
        + simulate(FlushPolicy::Never, false)
        + simulate(FlushPolicy::Never, true);
    eprintln!("flush interval and never: {tried} crash points, 3 images each");
    assert!(tried > 100);
}
