//! Bench results: an HDR histogram of latencies, the live progress line,
//! and the summary as text or JSON.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Shared counters and latency histogram of a running bench.
#[derive(Debug)]
pub struct Meter {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Produce requests acknowledged (for requests per fsync).
    pub requests: AtomicU64,
    /// Latencies in microseconds, 1 µs to 1 h, 3 significant digits.
    latency: Mutex<Histogram<u64>>,
    started: Instant,
}

impl Meter {
    pub fn new() -> Arc<Meter> {
        Arc::new(Meter {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")),
            started: Instant::now(),
        })
    }

    /// One acknowledged produce request of `records` records.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.add(records, bytes);
    }

    pub fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn latency(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.record(us);
    }

    /// Latencies of many samples at once (same value), for batch receipt.
    pub fn latency_n(&self, d: Duration, n: u64) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = h.record_n(us, n);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Prints a progress line every second until `done` is set.
    pub fn spawn_progress(self: &Arc<Self>, label: String, done: Arc<std::sync::atomic::AtomicBool>) {
        let meter = self.clone();
        tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let records = meter.records.load(Ordering::Relaxed);
                let rate = (records - last.0) as f64 / last.1.elapsed().as_secs_f64();
                last = (records, Instant::now());
                let p99 = meter.latency.lock().map(|h| h.value_at_quantile(0.99)).unwrap_or(0);
                eprint!(
                    "\r[bench {label}] {:5.1} s  {records:>11} records  {rate:>11.0} rec/s  {:>8.1} MB/s total  p99 {:.2} ms   ",
                    meter.elapsed().as_secs_f64(),
                    meter.bytes.load(Ordering::Relaxed) as f64 / meter.elapsed().as_secs_f64() / 1e6,
                    p99 as f64 / 1000.0
                );
                let _ = std::io::stderr().flush();
            }
            eprintln!();
        });
    }

    /// The summary of a run whose CPU was measured by `cpu` (begun with it).
    pub fn summary(
        &self,
        mode: &str,
        elapsed: Duration,
        config: serde_json::Value,
        cpu: &super::cpu::CpuMeter,
    ) -> Summary {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let ms = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let secs = elapsed.as_secs_f64().max(1e-9);
        let records = self.records.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let requests = Some(self.requests.load(Ordering::Relaxed)).filter(|&n| n > 0);
        let fsyncs = cpu.fsyncs();
        Summary {
            mode: mode.to_string(),
            records,
            seconds: secs,
            records_per_s: records as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            cpu_s_per_gb: super::cpu::per_gb(cpu.used(), bytes),
            cpu_scope: cpu.scope.to_string(),
            fsyncs,
            produce_requests: requests,
            requests_per_fsync: match (requests, fsyncs) {
                (Some(r), Some(f)) if f > 0 => Some(r as f64 / f as f64),
                _ => None,
            },
            config,
            extra: serde_json::Map::new(),
        }
    }

    /// A latency quantile in ms (0 with no samples).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    }

    /// Latency samples recorded.
    pub fn count(&self) -> u64 {
        self.latency.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What a bench run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub mode: String,
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// CPU seconds (user + system) per GB of record bytes moved, of
    /// `cpu_scope`: `broker` (the process listening on --server's port),
    /// `process` (this one, with --embedded), or `unknown` (null).
    pub cpu_s_per_gb: Option<f64>,
    pub cpu_scope: String,
    /// Log fsyncs during the run, when the broker runs in this process.
    pub fsyncs: Option<u64>,
    /// Produce requests acknowledged, when the client counts them (gRPC
    /// and rskafka; librdkafka batches on its own).
    pub produce_requests: Option<u64>,
    /// `produce_requests / fsyncs`: how many requests one group-commit
    /// fsync covers.
    pub requests_per_fsync: Option<f64>,
    pub config: serde_json::Value,
    /// Figures of one mode only (e.g. `bench share`'s delivery latency).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub fn print(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
    } else {
        println!(
            "{}: {} records in {:.2} s: {:.0} records/s, {:.1} MB/s; latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            s.mode, s.records, s.seconds, s.records_per_s, s.mb_per_s, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms
        );
        match s.cpu_s_per_gb {
            Some(c) => println!("cpu: {c:.2} CPU-s/GB ({})", s.cpu_scope),
            None => println!("cpu: unknown (the broker is not a process on this machine)"),
        }
        match (s.fsyncs, s.produce_requests) {
            (Some(f), Some(r)) if f > 0 => println!(
                "fsyncs: {f} for {r} produce requests: {:.2} requests per fsync, {:.3} fsyncs per request",
                r as f64 / f as f64,
                f as f64 / r as f64
            ),
            (Some(f), _) => println!("fsyncs: {f}"),
            _ => {}
        }
        for (k, v) in &s.extra {
            println!("{k}: {v}");
        }
        println!("config: {}", s.config);
    }
    Ok(())
}
