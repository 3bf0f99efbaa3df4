//! The broker's metrics, in Prometheus' text format on the HTTP listener's
//! `/metrics` (names: "Observability" in the contract).
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust client):
//! a counter is one atomic, and every hot-path counter is a handle taken
//! once (per topic, when the topic is opened or created) and kept in the
//! topic's partitions, so counting a produce or a fetch is two relaxed
//! atomic adds: no lock, no lookup, no allocation per request or record.
//! Histograms (request durations, fsyncs) take an uncontended lock per
//! observation, once per request or fsync, never per record. The `metrics`
//! facade with `metrics-exporter-prometheus` was the other candidate: its
//! handles are as cheap, but it owns a global recorder and renders only
//! what was set through it, so gauges of the broker's state would need a
//! loop to keep them set and to delete the series of deleted topics and
//! groups; here they are written from the state at scrape time.
//!
//! What the broker's state already knows (high watermarks, log starts,
//! sizes, committed offsets, so consumer lag) is read at scrape time
//! ([`state`]): a scrape costs a walk over partitions and committed
//! offsets, and nothing at all happens between scrapes (6,000 partitions
//! and 1,000 groups, 106,000 series: about 22 ms to build, 56 ms over HTTP;
//! `tests/metrics.rs`, `scrape_time_*`).
//!
//! - `mod.rs`: the registry and the handles the data path counts with.
//! - `state.rs`: the gauges computed per scrape.
//! - `scrape.rs`: reading `/metrics` from outside (`strata top`, tests).

pub mod scrape;
pub mod state;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`: Prometheus' text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `grpc` or `kafka`.
    pub listener: &'static str,
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

/// Request durations: 100 µs to about 13 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// fsync durations of every partition log in the process (storage has no
/// broker to ask; one process is one broker): 50 µs to about 1.6 s.
static FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(exponential_buckets(0.00005, 2.0, 16)));

/// `fdatasync`s of logs so far in this process (what `strata bench`
/// reports per request; the histogram's count, readable without a scrape).
static FSYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records one `fdatasync` of a log (called by the storage seam's users).
pub fn observe_fsync(took: Duration) {
    FSYNC_SECONDS.observe(took.as_secs_f64());
    FSYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many log `fdatasync`s this process has run.
pub fn fsyncs() -> u64 {
    FSYNCS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The counters of one topic, shared by its partitions.
#[derive(Debug, Clone, Default)]
pub struct TopicCounters {
    pub produce_records: Counter,
    pub produce_bytes: Counter,
    pub fetch_records: Counter,
    pub fetch_bytes: Counter,
}

impl TopicCounters {
    /// Records and bytes of stored batches appended.
    pub fn produced(&self, records: u64, bytes: u64) {
        self.produce_records.inc_by(records);
        self.produce_bytes.inc_by(bytes);
    }

    /// Records handed to consumers, and the bytes of the stored batches
    /// they completed (see `Partition::read`).
    pub fn fetched(&self, records: u64, bytes: u64) {
        if records > 0 || bytes > 0 {
            self.fetch_records.inc_by(records);
            self.fetch_bytes.inc_by(bytes);
        }
    }
}

/// The broker's registry and the handles it hands out.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    produce_records: Family<TopicLabels, Counter>,
    produce_bytes: Family<TopicLabels, Counter>,
    fetch_records: Family<TopicLabels, Counter>,
    fetch_bytes: Family<TopicLabels, Counter>,
    requests: Family<MethodLabels, Histogram, fn() -> Histogram>,
    connections: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    share_dead_lettered: Family<GroupLabels, Counter>,
    share_dropped: Family<GroupLabels, Counter>,
    alerts_fired: Family<RuleLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let produce_records = Family::<TopicLabels, Counter>::default();
        let produce_bytes = Family::<TopicLabels, Counter>::default();
        let fetch_records = Family::<TopicLabels, Counter>::default();
        let fetch_bytes = Family::<TopicLabels, Counter>::default();
        let requests = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(request_histogram);
        let connections = Family::<ListenerLabels, Gauge>::default();
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        let share_dead_lettered = Family::<GroupLabels, Counter>::default();
        let share_dropped = Family::<GroupLabels, Counter>::default();
        let alerts_fired = Family::<RuleLabels, Counter>::default();
        registry.register("strata_alerts_fired", "Alerts published, per rule", alerts_fired.clone());
        registry.register(
            "strata_share_group_dead_lettered",
            "Records a share group moved to its dead-letter topic, per group",
            share_dead_lettered.clone(),
        );
        registry.register(
            "strata_share_group_dropped",
            "Records retention deleted before a share group was done with them, per group",
            share_dropped.clone(),
        );
        registry.register("strata_produce_records", "Records appended, per topic", produce_records.clone());
        registry.register(
            "strata_produce_bytes",
            "Bytes of record batches appended (as stored), per topic",
            produce_bytes.clone(),
        );
        registry.register("strata_fetch_records", "Records handed to consumers, per topic", fetch_records.clone());
        registry.register(
            "strata_fetch_bytes",
            "Bytes of stored record batches handed to consumers, per topic",
            fetch_bytes.clone(),
        );
        registry.register(
            "strata_request_duration_seconds",
            "Time from a request's arrival to its response (unary requests), per listener and method",
            requests.clone(),
        );
        registry.register(
            "strata_fsync_duration_seconds",
            "Time of each fdatasync of a partition log",
            FSYNC_SECONDS.clone(),
        );
        registry.register("strata_connections", "Open client connections, per listener", connections.clone());
        registry.register(
            "strata_connections_refused",
            "Connections the broker could not accept or refused, per listener",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            produce_records,
            produce_bytes,
            fetch_records,
            fetch_bytes,
            requests,
            connections,
            connections_refused,
            share_dead_lettered,
            share_dropped,
            alerts_fired,
        }
    }

    /// Counts an alert a rule published.
    pub fn alert_fired(&self, rule: &str) {
        self.alerts_fired.get_or_create(&RuleLabels { rule: rule.to_string() }).inc();
    }

    /// Counts records a share group dead-lettered.
    pub fn share_dead_lettered(&self, group: &str, records: u64) {
        self.share_dead_lettered.get_or_create(&GroupLabels { group: group.to_string() }).inc_by(records);
    }

    /// Counts records retention deleted while a share group held them.
    pub fn share_dropped(&self, group: &str, records: u64) {
        self.share_dropped.get_or_create(&GroupLabels { group: group.to_string() }).inc_by(records);
    }

    /// The counters of `topic` (the same ones for every call until it is forgotten).
    pub fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        let labels = TopicLabels { topic: topic.to_string() };
        Arc::new(TopicCounters {
            produce_records: self.produce_records.get_or_create_owned(&labels),
            produce_bytes: self.produce_bytes.get_or_create_owned(&labels),
            fetch_records: self.fetch_records.get_or_create_owned(&labels),
            fetch_bytes: self.fetch_bytes.get_or_create_owned(&labels),
        })
    }

    /// Drops a deleted topic's series (a topic created again with the
    /// name starts from zero, which Prometheus reads as a counter reset).
    pub fn forget_topic(&self, topic: &str) {
        let labels = TopicLabels { topic: topic.to_string() };
        for family in [&self.produce_records, &self.produce_bytes, &self.fetch_records, &self.fetch_bytes] {
            family.remove(&labels);
        }
    }

    /// The duration histogram of one method; callers keep it (one lookup
    /// per method, not per request). `method` must come from a fixed set.
    pub fn request_histogram(&self, listener: &'static str, method: &str) -> Histogram {
        self.requests.get_or_create_owned(&MethodLabels { listener, method: method.to_string() })
    }

    /// The open-connections gauge of a listener.
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections.get_or_create_owned(&ListenerLabels { listener })
    }

    /// The refused-connections counter of a listener.
    pub fn connections_refused(&self, listener: &'static str) -> Counter {
        self.connections_refused.get_or_create_owned(&ListenerLabels { listener })
    }

    /// Encodes the registered metrics (not the per-scrape state) into `out`.
    pub fn encode_into(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }
}

/// Observes the time until it is dropped.
#[derive(Debug)]
pub struct Timer {
    histogram: Histogram,
    started: std::time::Instant,
}

impl Timer {
    pub fn start(histogram: Histogram) -> Timer {
        Timer { histogram, started: std::time::Instant::now() }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// A connection counted in `strata_connections` while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub fn new(gauge: Gauge) -> ConnectionGuard {
        gauge.inc();
        ConnectionGuard(gauge)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_counters_are_shared_until_the_topic_is_forgotten() {
        let m = Metrics::new();
        let a = m.topic("t");
        a.produced(3, 300);
        let b = m.topic("t");
        assert_eq!(b.produce_records.get(), 3);
        let mut text = String::new();
        m.encode_into(&mut text).unwrap();
        assert!(text.contains("strata_produce_records_total{topic=\"t\"} 3"), "{text}");
        assert!(text.contains("strata_produce_bytes_total{topic=\"t\"} 300"), "{text}");
        m.forget_topic("t");
        assert_eq!(m.topic("t").produce_records.get(), 0);
    }

    #[test]
    fn fetched_nothing_creates_no_work() {
        let m = Metrics::new();
        let c = m.topic("t");
        c.fetched(0, 0);
        c.fetched(2, 10);
        assert_eq!((c.fetch_records.get(), c.fetch_bytes.get()), (2, 10));
    }
}
