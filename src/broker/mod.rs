//! The broker: the one API every listener (gRPC, Kafka, HTTP) calls. It
//! owns the topic registry, the partitions' logs, consumer groups and their
//! committed offsets, and the background work (retention, flushes,
//! checkpoints, reopening poisoned logs). Every operation takes a
//! [`Caller`] and request/result structs of [`request`], and fails with a
//! [`BrokerError`] named after what went wrong; listeners only translate.
//!
//! - `mod.rs`: the registry, open, shutdown.
//! - `topics.rs`: create, delete, alter, describe.
//! - `produce.rs`: produce, idempotent producers, pipelined produce.
//! - `fetch.rs`: fetch with long poll, offset lookups.
//! - `subscription.rs`: push streams over topic patterns.
//! - `groups.rs`: the consumer group coordinator.
//! - `delivery/`: share groups (per-record acks, retries, dead letters).
//! - `rules/`: alert rules' pure matching and windows; `alerts.rs` the engine.
//! - `background.rs`: retention, flushes, checkpoints, reopening.
//! - `budget.rs`: the memory budgets that bound what a client may hold.
//!
//! Invariants: the registry lock is never held across `.await` or disk I/O
//! on the data path; storage calls that may wait on the disk (fsync, roll,
//! reads) run on the blocking pool; an append's pwrite runs in place. No
//! wire type (proto, Kafka) appears here.
//! Layout: `DATA/<topic>/topic.json` and `DATA/<topic>/<partition>/`; the
//! broker's own entries are in `data_dir.rs`.

pub mod alerts;
pub(crate) mod background;
pub mod budget;
pub mod caller;
pub mod classic_groups;
pub mod data_dir;
pub mod dedupe;
pub mod delivery;
pub mod error;
pub mod fetch;
pub mod groups;
pub mod names;
pub mod partition;
pub mod partitioner;
pub mod produce;
pub mod producer_ids;
pub mod request;
pub mod rules;
pub mod share_groups;
pub mod subscription;
pub mod supervise;
pub mod topic;
mod topics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

pub use self::caller::{Caller, Via};
pub use self::error::{BrokerError, Result};
pub use self::fetch::Fetched;
use self::partition::Partition;
pub use self::produce::{PendingProduce, PipelineItem, Pipelined, Produced};
use self::producer_ids::ProducerIds;
pub use self::request::*;
use self::topic::{Topic, TopicMetadata};
use crate::config::BrokerConfig;
use crate::storage::fs::FileSystem;
use crate::storage::{Clock, Log};

#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    /// Who may do what (`[security]`), for every listener.
    authorizer: crate::security::Authorizer,
    fs: Arc<dyn FileSystem>,
    clock: Arc<dyn Clock>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Bumped on every topic creation or deletion; pattern subscriptions watch it.
    topics_version: watch::Sender<u64>,
    producer_ids: Mutex<ProducerIds>,
    /// Serialises topic create/delete/alter, which do disk I/O.
    admin: tokio::sync::Mutex<()>,
    /// True once shutdown began: new requests are refused, waits end.
    stopping: watch::Sender<bool>,
    /// Consumer groups and their committed offsets.
    groups: groups::Coordinator,
    /// Share groups: per-record state, journaled.
    share_groups: share_groups::ShareGroups,
    /// Alert rules and their windows.
    alerts: alerts::Alerts,
    /// The data directory's lock, held while the broker is open.
    _lock: crate::storage::fs::DirLock,
    /// Request bytes being received or decoded, every listener together.
    request_budget: budget::RequestBudget,
    /// Bytes of fetch responses read ahead of their requests, every
    /// connection together (`FETCH_AHEAD_BYTES_MAX`).
    fetch_ahead_budget: budget::RequestBudget,
    /// Counters and histograms every listener and partition reports to.
    metrics: crate::metrics::Metrics,
}

impl Broker {
    /// Opens the data directory, recovering every partition. Blocking.
    pub fn open(config: BrokerConfig, fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>) -> Result<Arc<Broker>> {
        let dir = config.data_dir.clone();
        let io = |what: &str, e: std::io::Error| BrokerError::io(format!("{what} {}", dir.display()), e);
        fs.create_dir_all_durable(&dir).map_err(|e| io("cannot create the data directory", e))?;
        let lock = data_dir::lock(fs.as_ref(), &dir).map_err(BrokerError::Internal)?;
        let started = std::time::Instant::now();
        let metrics = crate::metrics::Metrics::new();
        let mut topics = HashMap::new();
        let topic_dirs =
            data_dir::prepare(fs.as_ref(), &dir).map_err(|e| io("cannot prepare the data directory", e))?;
        let total = topic_dirs.len();
        for (i, topic_dir) in topic_dirs.into_iter().enumerate() {
            let meta_path = topic_dir.join(topic::METADATA_FILE);
            let metadata = fs
                .read_file(&meta_path)
                .map_err(|e| e.to_string())
                .and_then(|b| TopicMetadata::parse(&b))
                .map_err(|e| BrokerError::Internal(format!("cannot read {}: {e}", meta_path.display())))?;
            let topic_config = config
                .topic_defaults
                .with(&metadata.config)
                .map_err(|e| BrokerError::Internal(format!("{}: {e}", meta_path.display())))?;
            let log_config = topic_config.log_config(config.request_bytes_max);
            let dirs: Vec<_> = (0..metadata.partitions).map(|p| topic_dir.join(p.to_string())).collect();
            let logs = open_logs_in_parallel(&dirs, &fs, &clock, log_config);
            let mut partitions = Vec::new();
            for (p, log) in logs.into_iter().enumerate() {
                let log = log.map_err(|e| BrokerError::storage(&metadata.name, p as u32, e))?;
                partitions.push(Arc::new(Partition::new(&metadata.name, p as u32, log, metrics.topic(&metadata.name))));
            }
            if (i + 1) % 100 == 0 {
                tracing::info!(opened = i + 1, of = total, "opening topics");
            }
            let dedupe = Arc::new(dedupe::Dedupe::open(&metadata.name, &partitions, &topic_config, clock.now_ms())?);
            let t = Topic::new(topic_dir, metadata, topic_config, partitions, dedupe);
            topics.insert(t.name.clone(), Arc::new(t));
        }
        let offsets = crate::group::offsets::OffsetStore::open(&dir, fs.clone(), clock.clone())
            .map_err(|e| BrokerError::storage(groups::OFFSETS_TOPIC, 0, e))?;
        // Offsets of topics deleted by a broker that stopped before it
        // could forget them.
        let dropped = offsets
            .delete_topics(|t| !topics.contains_key(t))
            .map_err(|e| BrokerError::storage(groups::OFFSETS_TOPIC, 0, e))?;
        if dropped > 0 {
            tracing::info!(offsets = dropped, "forgot the committed offsets of deleted topics");
        }
        let share_store = delivery::journal::ShareStore::open(&dir, fs.clone(), clock.clone())
            .map_err(|e| BrokerError::storage(share_groups::JOURNAL_NAME, 0, e))?;
        let alerts = alerts::Alerts::open(fs.as_ref(), &dir)?;
        let producer_ids = ProducerIds::open(fs.clone(), dir.join(data_dir::PRODUCER_IDS_FILE))
            .map_err(|e| io("cannot read the producer ids in", e))?;
        tracing::info!(
            topics = topics.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            data_dir = %dir.display(),
            "broker opened"
        );
        let rules = config
            .security
            .as_ref()
            .map(crate::security::Rules::compile)
            .transpose()
            .map_err(|e| BrokerError::Internal(format!("[security]: {e}")))?;
        if let Some(r) = &rules {
            tracing::info!(users = r.users(), acl_entries = r.entries(), "security on: deny by default");
        }
        let broker = Arc::new(Broker {
            authorizer: crate::security::Authorizer::new(rules),
            fs,
            clock,
            topics: RwLock::new(topics),
            topics_version: watch::Sender::new(0),
            producer_ids: Mutex::new(producer_ids),
            admin: tokio::sync::Mutex::new(()),
            stopping: watch::Sender::new(false),
            groups: groups::Coordinator::new(offsets),
            share_groups: share_groups::ShareGroups::new(share_store),
            alerts,
            _lock: lock,
            request_budget: budget::RequestBudget::new(config.request_bytes_in_flight_max),
            fetch_ahead_budget: budget::RequestBudget::new(crate::config::FETCH_AHEAD_BYTES_MAX),
            metrics,
            config,
        });
        // Share group state of topics deleted by a broker that stopped
        // before it could forget them.
        let topic_names: std::collections::HashSet<String> =
            broker.topics.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        broker.forget_share_topics(|t| !topic_names.contains(t))?;
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Who may do what: every listener asks this one.
    pub fn authorizer(&self) -> &crate::security::Authorizer {
        &self.authorizer
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Whether the broker serves requests (not shutting down).
    pub fn is_running(&self) -> bool {
        !*self.stopping.borrow()
    }

    /// `/metrics`: the registered metrics, then the partition and lag
    /// gauges read from the broker's state now.
    pub fn metrics_text(&self) -> String {
        use crate::metrics::state::{LagState, PartitionState, Snapshot};
        let mut snapshot = Snapshot::default();
        let mut topics: Vec<Arc<Topic>> =
            self.topics.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let mut high_watermarks = HashMap::with_capacity(topics.len());
        for t in &topics {
            let hws: Vec<(u64, u64)> =
                t.partitions.iter().map(|p| (p.log.high_watermark(), p.log.log_start_offset())).collect();
            for (p, &(hw, start)) in t.partitions.iter().zip(&hws) {
                snapshot.partitions.push(PartitionState {
                    topic: t.name.clone(),
                    partition: p.id,
                    high_watermark: hw,
                    log_start_offset: start,
                    size_bytes: p.log.size_bytes(),
                });
            }
            high_watermarks.insert(t.name.as_str(), hws);
        }
        // As DescribeGroup has it: every partition of a topic the group
        // committed to, those without a commit counted from the log start.
        // Committed offsets come in key order, so one (group, topic) entry
        // per run: two strings per group and topic, not per partition.
        let mut committed: Vec<(LagState, Vec<(u32, u64)>)> = Vec::new();
        self.groups.offsets.for_each(|group, topic, partition, offset| {
            if !high_watermarks.contains_key(topic) {
                return;
            }
            match committed.last_mut() {
                Some((l, offsets)) if l.group == group && l.topic == topic => offsets.push((partition, offset)),
                _ => {
                    let l = LagState { group: group.to_string(), topic: topic.to_string(), partitions: Vec::new() };
                    committed.push((l, vec![(partition, offset)]));
                }
            }
        });
        for (mut l, offsets) in committed {
            let mut offsets = offsets.into_iter().peekable();
            for (partition, &(hw, start)) in high_watermarks[l.topic.as_str()].iter().enumerate() {
                let partition = partition as u32;
                let from = match offsets.peek() {
                    Some(&(p, offset)) if p == partition => {
                        offsets.next();
                        offset
                    }
                    _ => start,
                };
                l.partitions.push((partition, hw.saturating_sub(from)));
            }
            snapshot.lag.push(l);
        }
        self.share_groups.store().read(|groups| {
            for (group, g) in groups {
                for ((topic, partition), state) in &g.partitions {
                    let Some(&(hw, _)) = high_watermarks.get(topic.as_str()).and_then(|h| h.get(*partition as usize))
                    else {
                        continue;
                    };
                    let summary = state.summary();
                    snapshot.share.push(crate::metrics::state::ShareState {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        acquired: summary.acquired,
                        lag: hw.saturating_sub(summary.start_offset),
                    });
                }
            }
        });
        let mut out = String::with_capacity(256 + snapshot.partitions.len() * 200 + snapshot.lag.len() * 80);
        // Writing into a String cannot fail.
        let _ = self.metrics.encode_into(&mut out);
        snapshot.encode_into(&mut out);
        out
    }

    /// The broker-wide budget of request bytes in flight.
    pub fn request_budget(&self) -> &budget::RequestBudget {
        &self.request_budget
    }

    /// Memory for fetch responses read ahead of their requests.
    pub fn fetch_ahead_budget(&self) -> &budget::RequestBudget {
        &self.fetch_ahead_budget
    }

    /// A fresh read-ahead budget for one push stream.
    pub fn stream_budget(&self) -> budget::StreamBudget {
        budget::StreamBudget::new(self.config.stream_buffer_bytes_max)
    }

    /// Watches for the start of shutdown.
    pub fn watch_stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Refuses new requests and ends long polls and subscriptions.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn check_running(&self) -> Result<()> {
        if *self.stopping.borrow() {
            return Err(BrokerError::ShuttingDown);
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        Ok(self.topic(topic)?.partition(partition)?.clone())
    }

    /// Topics whose names match the glob, sorted by name.
    pub fn matching_topics(&self, pattern: &str) -> Vec<Arc<Topic>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> =
            topics.values().filter(|t| pattern.is_empty() || names::glob_match(pattern, &t.name)).cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Watches topic creations and deletions.
    pub fn watch_topics(&self) -> watch::Receiver<u64> {
        self.topics_version.subscribe()
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.values().flat_map(|t| t.partitions.iter().cloned()).collect()
    }

    /// Refuses new work, then closes every log cleanly (checkpoint + marker).
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let partitions = self.all_partitions();
        let count = partitions.len();
        for p in partitions {
            if let Err(e) = p.blocking(|log| log.close()).await {
                tracing::error!(topic = %p.topic, partition = p.id, error = %e, "clean close failed; the next start will recover");
            }
        }
        if let Err(e) = self.share_groups.store().close() {
            tracing::error!(error = %e, "clean close of the share group journal failed; the next start will recover");
        }
        if let Err(e) = self.groups.offsets.close() {
            tracing::error!(error = %e, "clean close of committed offsets failed; the next start will recover");
        }
        tracing::info!(partitions = count, "broker closed cleanly");
    }
}

/// Opens (recovering) many partition logs on every core: recovery of one
/// partition is independent of the others, and after a crash it is the
/// bulk of the time to ready. Results are in the order of `dirs`.
fn open_logs_in_parallel(
    dirs: &[std::path::PathBuf],
    fs: &Arc<dyn FileSystem>,
    clock: &Arc<dyn Clock>,
    config: crate::storage::LogConfig,
) -> Vec<crate::storage::Result<Log>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(dirs.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<crate::storage::Result<Log>>>> = Mutex::new((0..dirs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(dir) = dirs.get(i) else { return };
                let log = Log::open(dir, fs.clone(), clock.clone(), config);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(log);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every partition was opened"))
        .collect()
}

/// Completes once shutdown has begun (holds no watch guard across awaits).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
