//! The composition root: the topic registry, topic metadata on disk,
//! recovery on open, produce/fetch/offsets, and the background tasks
//! (retention, interval flush, recovery checkpoints).
//!
//! Invariants: the registry lock is never held across `.await` or disk I/O
//! on the data path; storage calls that may wait on the disk (fsync, roll,
//! reads) run on the blocking pool; an append's pwrite runs in place.
//! Layout: `DATA/<topic>/topic.json` and `DATA/<topic>/<partition>/`.

pub mod budget;
pub mod data_dir;
pub mod error;
pub mod groups;
pub mod names;
pub mod partition;
pub mod partitioner;
pub mod producer_ids;
pub mod subscription;
pub mod supervise;
pub mod topic;

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

pub use self::error::{BrokerError, Result};
use self::partition::{AppendBytes, Partition, ReadRecords};
use self::producer_ids::ProducerIds;
use self::topic::{Topic, TopicMetadata};
use crate::config::{BrokerConfig, TimestampType, TopicConfig, HEADERS_PER_RECORD_MAX};
use crate::storage::batch::{self, ProducerStamp, Record};
use crate::storage::fs::FileSystem;
use crate::storage::{Clock, Log};

/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Most records one fetch returns.
pub const FETCH_RECORDS_MAX: usize = 100_000;
/// Default records per fetch.
pub const FETCH_RECORDS_DEFAULT: usize = 1000;
/// Default bytes per fetch.
pub const FETCH_BYTES_DEFAULT: usize = 1 << 20;
/// Longest long poll.
pub const FETCH_WAIT_MAX_MS: u64 = 60_000;

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Offset(u64),
    Earliest,
    Latest,
    /// The group's committed offset (resolved by the caller that has a group).
    Committed,
    Timestamp(i64),
}

/// A produce call in domain terms.
#[derive(Debug, Clone)]
pub struct ProduceRequest {
    pub topic: String,
    pub partition: Option<u32>,
    pub records: Vec<Record>,
    pub producer: Option<ProducerStamp>,
    /// A batch the client encoded (instead of `records`), validated here.
    pub batch: Option<Bytes>,
}

/// A produce whose batches are written but maybe not yet durable.
#[derive(Debug)]
pub struct PendingProduce {
    parts: Vec<(Arc<Partition>, crate::storage::PendingAppend)>,
    now: i64,
    /// A partition whose write failed fails the whole reply (after the
    /// others are durable, so nothing is left half-waited).
    first_error: Option<BrokerError>,
}

impl PendingProduce {
    /// Whether [`PendingProduce::wait`] has an fsync to wait for (else it
    /// completes at once).
    pub fn needs_sync(&self) -> bool {
        self.parts.iter().any(|(_, p)| p.needs_sync())
    }

    /// Waits until every batch is durable; the results are in partition order.
    pub async fn wait(self) -> Result<Vec<ProduceResult>> {
        let now = self.now;
        let waits = self.parts.into_iter().map(|(partition, pending)| async move {
            let out = partition.wait_durable(pending).await?;
            Ok::<_, BrokerError>(ProduceResult {
                partition: partition.id,
                base_offset: out.base_offset,
                last_offset: out.last_offset,
                log_append_time_ms: now,
            })
        });
        let results: Vec<_> = futures::future::join_all(waits).await;
        if let Some(e) = self.first_error {
            return Err(e);
        }
        results.into_iter().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
    pub log_append_time_ms: i64,
}

/// One partition's state for DescribeTopic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub size_bytes: u64,
    pub segments: u32,
    pub first_timestamp_ms: Option<i64>,
    pub last_timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    pub config: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
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
    /// The data directory's lock, held while the broker is open.
    _lock: crate::storage::fs::DirLock,
    /// Request bytes being received or decoded, every listener together.
    request_budget: budget::RequestBudget,
}

impl Broker {
    /// Opens the data directory, recovering every partition. Blocking.
    pub fn open(config: BrokerConfig, fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>) -> Result<Arc<Broker>> {
        let dir = config.data_dir.clone();
        let io = |what: &str, e: std::io::Error| BrokerError::Internal(format!("{what} {}: {e}", dir.display()));
        fs.create_dir_all_durable(&dir).map_err(|e| io("cannot create data directory", e))?;
        let lock = data_dir::lock(fs.as_ref(), &dir).map_err(BrokerError::Internal)?;
        let started = std::time::Instant::now();
        let mut topics = HashMap::new();
        let topic_dirs = data_dir::prepare(fs.as_ref(), &dir).map_err(|e| io("cannot prepare data directory", e))?;
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
                partitions.push(Arc::new(Partition::new(&metadata.name, p as u32, log)));
            }
            if (i + 1) % 100 == 0 {
                tracing::info!(opened = i + 1, of = total, "opening topics");
            }
            let t = Topic::new(topic_dir, metadata, topic_config, partitions);
            topics.insert(t.name.clone(), Arc::new(t));
        }
        let offsets = crate::group::offsets::OffsetStore::open(&dir, fs.clone(), clock.clone())
            .map_err(|e| BrokerError::storage(groups::OFFSETS_TOPIC, 0, e))?;
        let producer_ids = ProducerIds::open(fs.clone(), dir.join(data_dir::PRODUCER_IDS_FILE))
            .map_err(|e| io("cannot read producer ids in", e))?;
        tracing::info!(
            topics = topics.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            data_dir = %dir.display(),
            "broker opened"
        );
        Ok(Arc::new(Broker {
            fs,
            clock,
            topics: RwLock::new(topics),
            topics_version: watch::Sender::new(0),
            producer_ids: Mutex::new(producer_ids),
            admin: tokio::sync::Mutex::new(()),
            stopping: watch::Sender::new(false),
            groups: groups::Coordinator::new(offsets),
            _lock: lock,
            request_budget: budget::RequestBudget::new(config.request_bytes_in_flight_max),
            config,
        }))
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The broker-wide budget of request bytes in flight.
    pub fn request_budget(&self) -> &budget::RequestBudget {
        &self.request_budget
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
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
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

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    ) -> Result<TopicInfo> {
        self.check_running()?;
        names::validate("topic", name, false)?;
        let partitions = if partitions == 0 { self.config.default_partitions } else { partitions };
        if partitions > PARTITIONS_MAX {
            return Err(BrokerError::InvalidArgument(format!(
                "topic {name:?}: {partitions} partitions is more than the limit of {PARTITIONS_MAX}"
            )));
        }
        let topic_config = self
            .config
            .topic_defaults
            .with(&overrides)
            .map_err(|e| BrokerError::InvalidArgument(format!("topic {name:?}: {e}")))?;
        let _admin = self.admin.lock().await;
        if self.topic(name).is_ok() {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        let metadata =
            TopicMetadata { name: name.to_string(), partitions, config: overrides, created_ms: self.clock.now_ms() };
        let dir = self.config.data_dir.join(name);
        let (fs, clock, request_max) = (self.fs.clone(), self.clock.clone(), self.config.request_bytes_max);
        let log_config = topic_config.log_config(request_max);
        let meta = metadata.clone();
        let topic_dir = dir.clone();
        let created = tokio::task::spawn_blocking(move || -> Result<Vec<Arc<Partition>>> {
            let created = create_topic_files(fs.as_ref(), &fs, &clock, &topic_dir, &meta, log_config);
            if created.is_err() {
                // Nothing half-made stays behind (a later create would find it).
                let _ = fs.remove_dir_all(&topic_dir);
            }
            created
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("create task failed: {e}")));
        let created = match created {
            Ok(created) => created?,
            Err(e) => {
                let _ = self.fs.remove_dir_all(&dir);
                return Err(e);
            }
        };
        let topic = Arc::new(Topic::new(dir, metadata, topic_config, created));
        self.topics.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), topic.clone());
        self.topics_version.send_modify(|v| *v += 1);
        tracing::info!(topic = name, partitions, "created topic");
        self.describe(&topic).await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_running()?;
        let _admin = self.admin.lock().await;
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        self.topics_version.send_modify(|v| *v += 1);
        let fs = self.fs.clone();
        let data_dir_path = self.config.data_dir.clone();
        let stamp = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            // Rename first so a crash mid-delete never leaves half a topic
            // that would be opened again.
            let doomed = data_dir::deleted_path(&data_dir_path, &topic.name, stamp);
            fs.rename(&topic.dir, &doomed).map_err(|e| io_error(&topic.dir, e))?;
            fs.sync_dir(&data_dir_path).map_err(|e| io_error(&data_dir_path, e))?;
            fs.remove_dir_all(&doomed).map_err(|e| io_error(&doomed, e))
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("delete task failed: {e}")))??;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    pub async fn alter_topic_config(&self, name: &str, changes: BTreeMap<String, String>) -> Result<TopicInfo> {
        self.check_running()?;
        let _admin = self.admin.lock().await;
        let topic = self.topic(name)?;
        let mut metadata = topic.metadata();
        metadata.config.extend(changes);
        let config = self
            .config
            .topic_defaults
            .with(&metadata.config)
            .map_err(|e| BrokerError::InvalidArgument(format!("topic {name:?}: {e}")))?;
        let (fs, dir, meta) = (self.fs.clone(), topic.dir.clone(), metadata.clone());
        tokio::task::spawn_blocking(move || meta.write(fs.as_ref(), &dir).map_err(|e| io_error(&dir, e)))
            .await
            .map_err(|e| BrokerError::Internal(format!("alter task failed: {e}")))??;
        topic.set_config(metadata, config, self.config.request_bytes_max);
        self.describe(&topic).await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        self.describe(&topic).await
    }

    pub async fn list_topics(&self, pattern: &str) -> Result<Vec<TopicInfo>> {
        let mut out = Vec::new();
        for topic in self.matching_topics(pattern) {
            out.push(self.describe(&topic).await?);
        }
        Ok(out)
    }

    async fn describe(&self, topic: &Arc<Topic>) -> Result<TopicInfo> {
        let mut partitions = Vec::new();
        for p in &topic.partitions {
            let times = p.blocking(|log| log.timestamps()).await?;
            partitions.push(PartitionInfo {
                partition: p.id,
                log_start_offset: p.log.log_start_offset(),
                high_watermark: p.log.high_watermark(),
                size_bytes: p.log.size_bytes(),
                segments: p.log.segment_count() as u32,
                first_timestamp_ms: times.map(|t| t.0),
                last_timestamp_ms: times.map(|t| t.1),
            });
        }
        Ok(TopicInfo { name: topic.name.clone(), partitions, config: topic.config().to_map() })
    }

    /// Refuses a producer id that InitProducer never handed out (Kafka's
    /// UNKNOWN_PRODUCER_ID): its sequences would be trusted blindly.
    fn check_producer(&self, producer: Option<ProducerStamp>) -> Result<()> {
        let Some(p) = producer else { return Ok(()) };
        if self.producer_ids.lock().unwrap_or_else(|e| e.into_inner()).issued(p.producer_id) {
            return Ok(());
        }
        Err(BrokerError::FailedPrecondition(format!(
            "unknown producer id {}: it was never handed out by InitProducer; call InitProducer for one",
            p.producer_id
        )))
    }

    pub fn init_producer(&self) -> Result<i64> {
        self.check_running()?;
        self.producer_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate()
            .map_err(|e| BrokerError::Internal(format!("cannot allocate a producer id: {e}")))
    }

    /// [`Broker::produce_pending`] of a batch the client encoded: validated,
    /// then written as it is (re-encoded only to stamp broker timestamps).
    async fn produce_batch_pending(&self, topic: &Arc<Topic>, request: ProduceRequest) -> Result<PendingProduce> {
        let invalid = |m: String| BrokerError::InvalidArgument(format!("record_batch for {:?}: {m}", topic.name));
        let Some(p) = request.partition else {
            return Err(invalid("a record batch needs an explicit partition".into()));
        };
        if !request.records.is_empty() || request.producer.is_some() {
            return Err(invalid("send records or record_batch, and the producer stamp inside the batch".into()));
        }
        let partition = topic.partition(p)?.clone();
        let bytes = request.batch.unwrap_or_default();
        let (header, records) = batch::validate_client_batch(&bytes).map_err(|e| invalid(e.to_string()))?;
        self.check_producer(header.producer())?;
        let config = topic.config();
        for (i, r) in records.iter().enumerate() {
            check_record_limits(&topic.name, &config, i, record_size(&r.key, &r.value, &r.headers), r.headers.len())?;
        }
        let now = self.clock.now_ms();
        let encoded = if records.iter().any(|r| record_timestamp(&config, now, r.timestamp_ms) != r.timestamp_ms) {
            let records: Vec<Record> = records
                .into_iter()
                .map(|r| Record {
                    timestamp_ms: record_timestamp(&config, now, r.timestamp_ms),
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                })
                .collect();
            AppendBytes::Encoded(batch::encode(&records, header.producer()))
        } else {
            drop(records);
            AppendBytes::Client(bytes)
        };
        let pending = partition.append_pending(encoded).await;
        let (parts, first_error) = match pending {
            Ok(p) => (vec![(partition, p)], None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Ok(PendingProduce { parts, now, first_error })
    }

    /// Writes a produce request's batches (one atomic batch per partition)
    /// in call order, without waiting for durability: pipelined producers
    /// call this in order and await [`PendingProduce::wait`] concurrently.
    pub async fn produce_pending(&self, request: ProduceRequest) -> Result<PendingProduce> {
        self.check_running()?;
        let topic = self.topic(&request.topic)?;
        if request.batch.is_some() {
            return self.produce_batch_pending(&topic, request).await;
        }
        if request.records.is_empty() {
            return Err(BrokerError::InvalidArgument(format!("produce to {:?} has no records", request.topic)));
        }
        self.check_producer(request.producer)?;
        let config = topic.config();
        let now = self.clock.now_ms();
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        let keyless = match request.partition {
            Some(p) => {
                topic.partition(p)?;
                p
            }
            None => topic.next_keyless_partition(),
        };
        let partitions = topic.partitions.len() as u32;
        for (i, mut record) in request.records.into_iter().enumerate() {
            let size = record_size(&record.key, &record.value, &record.headers);
            check_record_limits(&topic.name, &config, i, size, record.headers.len())?;
            record.timestamp_ms = record_timestamp(&config, now, record.timestamp_ms);
            let partition = match request.partition {
                Some(p) => p,
                None if !record.key.is_empty() => partitioner::partition_for_key(&record.key, partitions),
                None => keyless,
            };
            by_partition.entry(partition).or_default().push(record);
        }
        let writes = by_partition.into_iter().map(|(p, records)| {
            let partition = topic.partitions[p as usize].clone();
            let batch = AppendBytes::Encoded(batch::encode(&records, request.producer));
            async move {
                let pending = partition.append_pending(batch).await?;
                Ok::<_, BrokerError>((partition, pending))
            }
        });
        let mut parts = Vec::new();
        let mut first_error = None;
        for r in futures::future::join_all(writes).await {
            match r {
                Ok(part) => parts.push(part),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        Ok(PendingProduce { parts, now, first_error })
    }

    /// Appends records; each partition's share is one atomic batch. Returns
    /// once every batch is durable per the topic's flush policy.
    pub async fn produce(&self, request: ProduceRequest) -> Result<Vec<ProduceResult>> {
        self.produce_pending(request).await?.wait().await
    }

    /// Resolves a position to an offset in one partition. `Committed` must
    /// have been resolved by the caller (it needs a group).
    pub async fn resolve(&self, partition: &Arc<Partition>, position: Position) -> Result<u64> {
        match position {
            Position::Offset(o) => Ok(o),
            Position::Earliest => Ok(partition.log.log_start_offset()),
            Position::Latest => Ok(partition.log.high_watermark()),
            Position::Timestamp(ts) => partition.blocking(move |log| log.offset_for_timestamp(ts)).await,
            Position::Committed => {
                Err(BrokerError::InvalidArgument("position COMMITTED needs a consumer group".into()))
            }
        }
    }

    /// Reads from a partition, waiting up to `wait_ms` for data when there is none.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        records_max: usize,
        bytes_max: usize,
        wait_ms: u64,
    ) -> Result<ReadRecords> {
        let records_max = if records_max == 0 { FETCH_RECORDS_DEFAULT } else { records_max.min(FETCH_RECORDS_MAX) };
        let bytes_max = self.fetch_bytes(bytes_max);
        self.long_poll(topic, partition, from, wait_ms, |p, offset| async move {
            let read = p.read(offset, records_max, bytes_max).await?;
            let found = !read.records.is_empty() || offset < read.high_watermark;
            Ok((found, read))
        })
        .await
    }

    /// Like [`Broker::fetch`], returning the stored batches as they are.
    pub async fn fetch_raw(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        bytes_max: usize,
        wait_ms: u64,
    ) -> Result<crate::storage::ReadBatches> {
        let bytes_max = self.fetch_bytes(bytes_max);
        self.long_poll(topic, partition, from, wait_ms, |p, offset| async move {
            let read = p.read_raw(offset, bytes_max).await?;
            Ok((!read.batches.is_empty(), read))
        })
        .await
    }

    fn fetch_bytes(&self, bytes_max: usize) -> usize {
        if bytes_max == 0 {
            FETCH_BYTES_DEFAULT
        } else {
            bytes_max.min(self.config.request_bytes_max)
        }
    }

    /// Calls `read` at the resolved offset until it finds data, an append
    /// wakes it, `wait_ms` passes, or shutdown begins (no polling).
    async fn long_poll<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        wait_ms: u64,
        read: F,
    ) -> Result<T>
    where
        F: Fn(Arc<Partition>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(bool, T)>>,
    {
        self.check_running()?;
        let partition = self.partition(topic, partition)?;
        let offset = self.resolve(&partition, from).await?;
        let mut hw = partition.watch();
        let mut stopping = self.watch_stopping();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(FETCH_WAIT_MAX_MS));
        loop {
            let (found, out) = read(partition.clone(), offset).await?;
            if found {
                return Ok(out);
            }
            // Nothing at `offset` yet: wait for an append.
            hw.borrow_and_update();
            if partition.log.high_watermark() > offset {
                continue;
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, hw.changed()) => match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) | Err(_) => return Ok(out),
                },
                _ = stopped(&mut stopping) => return Ok(out),
            }
        }
    }

    pub async fn list_offsets(&self, topic: &str, partition: u32, at: Position) -> Result<(u64, u64, u64)> {
        let partition = self.partition(topic, partition)?;
        let offset = self.resolve(&partition, at).await?;
        Ok((offset, partition.log.log_start_offset(), partition.log.high_watermark()))
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.values().flat_map(|t| t.partitions.iter().cloned()).collect()
    }

    /// Starts retention, interval flush and checkpoint tasks; they stop when
    /// `shutdown` turns true.
    pub fn spawn_background(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.spawn_coordinator(shutdown.clone());
        let (this, stop) = (self.clone(), shutdown.clone());
        supervise::spawn_supervised("retention", move || retention_loop(this.clone(), stop.clone()));
        let (this, stop) = (self.clone(), shutdown);
        supervise::spawn_supervised("flush and checkpoints", move || tick_loop(this.clone(), stop.clone()));
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
        let offsets = &self.groups.offsets;
        if let Err(e) = offsets.close() {
            tracing::error!(error = %e, "clean close of committed offsets failed; the next start will recover");
        }
        tracing::info!(partitions = count, "broker closed cleanly");
    }
}

/// Enforces retention on every partition each `retention.check.interval.ms`.
async fn retention_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(broker.config.retention_check_interval_ms));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for p in broker.all_partitions() {
            if let Err(e) = p.blocking(|log| log.enforce_retention()).await {
                tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "retention failed");
            }
        }
    }
}

/// Every 50 ms: finishes rolls and fsyncs rolled segments, runs interval
/// flushes, and starts a checkpoint pass when one is due.
async fn tick_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut last_reopen = tokio::time::Instant::now();
    let checkpointing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = broker.clock.now_ms() as u64;
        let partitions = broker.all_partitions();
        for p in &partitions {
            p.spawn_roll_io(broker.config.rolled_segment_sync_delay_ms);
            if let crate::storage::FlushPolicy::Interval(ms) = p.log.config().flush {
                if let Err(e) = p.flush_if_due(now, ms).await {
                    tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "background flush failed");
                }
            }
        }
        if last_reopen.elapsed() >= Duration::from_millis(broker.config.poisoned_log_retry_ms) {
            last_reopen = tokio::time::Instant::now();
            for p in &partitions {
                p.spawn_reopen_if_poisoned();
            }
            if broker.groups.offsets.is_poisoned() {
                let offsets = broker.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = offsets.groups.offsets.reopen_if_poisoned() {
                        tracing::warn!(error = %e, "the committed offsets log stays poisoned");
                    }
                });
            }
        }
        let due = last_checkpoint.elapsed() >= Duration::from_millis(broker.config.checkpoint_interval_ms);
        if due && !checkpointing.swap(true, Ordering::AcqRel) {
            last_checkpoint = tokio::time::Instant::now();
            tokio::spawn(checkpoint_pass(partitions, checkpointing.clone()));
        }
    }
}

/// Opens (recovering) many partition logs on every core: recovery of one
/// partition is independent of the others, and after a crash it is the
/// bulk of the time to ready. Results are in the order of `dirs`.
/// Hint writes of one checkpoint pass in flight at once. A pass over 100
/// busy partitions one at a time took 0.1-0.5 s during a write burst (each
/// hint is a small file replaced by rename), which stretched the interval
/// and so what recovery after a crash rescans.
const CHECKPOINT_WRITES_IN_FLIGHT: usize = 8;

/// Writes the recovery checkpoint of every partition that moved, a few at
/// a time, off the tick that runs interval flushes and roll I/O.
async fn checkpoint_pass(partitions: Vec<Arc<Partition>>, running: Arc<AtomicBool>) {
    use futures::StreamExt;
    // Cleared however the pass ends, so one failed pass does not stop them all.
    let _running = ClearOnDrop(running);
    futures::stream::iter(partitions)
        .for_each_concurrent(CHECKPOINT_WRITES_IN_FLIGHT, |p| async move {
            if let Err(e) = p.checkpoint_if_dirty().await {
                tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "writing a recovery checkpoint failed");
            }
        })
        .await;
}

/// Clears a flag when dropped (a task's end, normal or not).
pub(crate) struct ClearOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

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

/// A new topic's directory, partition logs and (last) metadata file.
fn create_topic_files(
    fs: &dyn FileSystem,
    fs_arc: &Arc<dyn FileSystem>,
    clock: &Arc<dyn Clock>,
    topic_dir: &std::path::Path,
    meta: &TopicMetadata,
    log_config: crate::storage::LogConfig,
) -> Result<Vec<Arc<Partition>>> {
    if fs.exists(topic_dir) {
        // Leftover of a create that crashed before its metadata was written.
        fs.remove_dir_all(topic_dir).map_err(|e| io_error(topic_dir, e))?;
    }
    fs.create_dir_all(topic_dir).map_err(|e| io_error(topic_dir, e))?;
    let mut parts = Vec::new();
    for p in 0..meta.partitions {
        let log = Log::open(&topic_dir.join(p.to_string()), fs_arc.clone(), clock.clone(), log_config)
            .map_err(|e| BrokerError::storage(&meta.name, p, e))?;
        parts.push(Arc::new(Partition::new(&meta.name, p, log)));
    }
    // The metadata file is written last: a topic directory without it
    // is an unfinished create and is cleaned up.
    meta.write(fs, topic_dir).map_err(|e| io_error(topic_dir, e))?;
    if let Some(parent) = topic_dir.parent() {
        // Guards against a power loss forgetting the topic directory.
        fs.sync_dir(parent).map_err(|e| io_error(parent, e))?;
    }
    Ok(parts)
}

/// Completes once shutdown has begun (holds no watch guard across awaits).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> BrokerError {
    let source = crate::storage::StorageError::io(path, e);
    if source.is_out_of_files() {
        BrokerError::ResourceExhausted(format!("{source}{}", error::open_files_hint()))
    } else if source.is_disk_full() {
        BrokerError::ResourceExhausted(source.to_string())
    } else {
        BrokerError::Internal(source.to_string())
    }
}

/// The timestamp a record is stored with: the broker's clock for 0
/// ("now") and on LogAppendTime topics, else the producer's.
fn record_timestamp(config: &TopicConfig, now: i64, timestamp_ms: i64) -> i64 {
    if timestamp_ms == 0 || config.timestamp_type == TimestampType::Append {
        now
    } else {
        timestamp_ms
    }
}

fn record_size(key: &[u8], value: &[u8], headers: &[(String, Bytes)]) -> usize {
    key.len() + value.len() + headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The per-record limits of a produce: size and header count.
fn check_record_limits(topic: &str, config: &TopicConfig, i: usize, size: usize, headers: usize) -> Result<()> {
    if size > config.record_bytes_max {
        return Err(BrokerError::InvalidArgument(format!(
            "record {i} for {topic:?} is {size} bytes, over max.record.bytes = {}",
            config.record_bytes_max
        )));
    }
    if headers > HEADERS_PER_RECORD_MAX {
        return Err(BrokerError::InvalidArgument(format!(
            "record {i} for {topic:?} has {headers} headers, over the limit of {HEADERS_PER_RECORD_MAX}"
        )));
    }
    Ok(())
}
