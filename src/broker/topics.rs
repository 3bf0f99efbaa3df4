//! Topic administration: create, delete, alter, describe, list. Topic
//! metadata lives in `DATA/<topic>/topic.json`, written last on create and
//! replaced atomically on alter; a delete renames the directory first
//! (`data_dir.rs`), so a crash never leaves half a topic that would be
//! opened again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::dedupe::Dedupe;
use super::partition::Partition;
use super::topic::{Topic, TopicMetadata};
use super::{data_dir, names, Broker, BrokerError, Caller, CreateTopic, PartitionInfo, Result, TopicInfo};
use crate::config::PARTITIONS_PER_TOPIC_MAX;
use crate::storage::fs::FileSystem;
use crate::storage::{Clock, Log, LogConfig};

/// Runs blocking admin work off the async workers.
async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BrokerError::Internal(format!("{what} task failed: {e}")))?
}

impl Broker {
    pub async fn create_topic(&self, caller: &Caller, request: CreateTopic) -> Result<TopicInfo> {
        self.check_running()?;
        let CreateTopic { name, partitions, config: overrides } = request;
        names::validate("topic", &name, false)?;
        let partitions = partitions.filter(|p| *p > 0).unwrap_or(self.config.default_partitions);
        if partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(BrokerError::TooManyPartitions { topic: name, partitions, max: PARTITIONS_PER_TOPIC_MAX });
        }
        let topic_config = self
            .config
            .topic_defaults
            .with(&overrides)
            .map_err(|why| BrokerError::InvalidConfig { topic: name.clone(), why })?;
        let _admin = self.admin.lock().await;
        if self.topic(&name).is_ok() {
            return Err(BrokerError::TopicExists(name));
        }
        let metadata =
            TopicMetadata { name: name.clone(), partitions, config: overrides, created_ms: self.clock.now_ms() };
        let dir = self.config.data_dir.join(&name);
        let (fs, clock) = (self.fs.clone(), self.clock.clone());
        let log_config = topic_config.log_config(self.config.request_bytes_max);
        let (meta, topic_dir) = (metadata.clone(), dir.clone());
        let counters = self.metrics().topic(&name);
        let created = blocking("create", move || {
            let created = create_topic_files(&fs, &clock, &topic_dir, &meta, log_config, &counters);
            if created.is_err() {
                // Nothing half-made stays behind (a later create would find it).
                let _ = fs.remove_dir_all(&topic_dir);
            }
            created
        })
        .await;
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                let _ = self.fs.remove_dir_all(&dir);
                return Err(e);
            }
        };
        let dedupe = Arc::new(Dedupe::open(&name, &created, &topic_config, self.clock.now_ms())?);
        let topic = Arc::new(Topic::new(dir, metadata, topic_config, created, dedupe));
        self.topics.write().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), topic.clone());
        self.topics_version.send_modify(|v| *v += 1);
        tracing::info!(topic = %name, partitions, by = %caller, "created topic");
        self.describe(&topic).await
    }

    pub async fn delete_topic(self: &Arc<Self>, caller: &Caller, name: &str) -> Result<()> {
        self.check_running()?;
        let _admin = self.admin.lock().await;
        let topic = self
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        self.topics_version.send_modify(|v| *v += 1);
        self.metrics().forget_topic(name);
        let fs = self.fs.clone();
        let data_dir_path = self.config.data_dir.clone();
        let stamp = self.clock.now_ms();
        blocking("delete", move || {
            // Rename first so a crash mid-delete never leaves half a topic
            // that would be opened again.
            let doomed = data_dir::deleted_path(&data_dir_path, &topic.name, stamp);
            fs.rename(&topic.dir, &doomed).map_err(|e| io_error(&topic.dir, e))?;
            // Guards against a power loss bringing the deleted topic back.
            fs.sync_dir(&data_dir_path).map_err(|e| io_error(&data_dir_path, e))?;
            fs.remove_dir_all(&doomed).map_err(|e| io_error(&doomed, e))
        })
        .await?;
        // A crash before this leaves the offsets for the next open to drop.
        let (this, topic) = (self.clone(), name.to_string());
        let forgotten = blocking("forget the offsets of", move || {
            this.groups
                .offsets
                .delete_topics(|t| t == topic)
                .map_err(|e| BrokerError::storage(super::groups::OFFSETS_TOPIC, 0, e))
        })
        .await?;
        let (this, topic) = (self.clone(), name.to_string());
        blocking("forget the share group state of", move || this.forget_share_topics(|t| t == topic)).await?;
        tracing::info!(topic = name, forgotten_offsets = forgotten, by = %caller, "deleted topic");
        Ok(())
    }

    pub async fn alter_topic_config(
        &self,
        caller: &Caller,
        name: &str,
        changes: BTreeMap<String, String>,
    ) -> Result<TopicInfo> {
        self.check_running()?;
        let _admin = self.admin.lock().await;
        let topic = self.topic(name)?;
        let mut metadata = topic.metadata();
        let changed: Vec<String> = changes.keys().cloned().collect();
        for (key, value) in changes {
            if value.is_empty() {
                if !crate::config::TOPIC_CONFIG_KEYS.contains(&key.as_str()) {
                    let why = format!(
                        "unknown config key {key:?}; known keys: {}",
                        crate::config::TOPIC_CONFIG_KEYS.join(", ")
                    );
                    return Err(BrokerError::InvalidConfig { topic: name.to_string(), why });
                }
                // An empty value removes the override: the default applies again.
                metadata.config.remove(&key);
            } else {
                metadata.config.insert(key, value);
            }
        }
        let config = self
            .config
            .topic_defaults
            .with(&metadata.config)
            .map_err(|why| BrokerError::InvalidConfig { topic: name.to_string(), why })?;
        // De-dup turned on, off or changed: its table first (turning it on
        // reads the last window of the log).
        let (t, c, now) = (topic.clone(), config.clone(), self.clock.now_ms());
        blocking("set up de-dup for", move || t.dedupe.reconfigure(&t.name, &t.partitions, &c, now)).await?;
        let (fs, dir, meta) = (self.fs.clone(), topic.dir.clone(), metadata.clone());
        blocking("alter", move || meta.write(fs.as_ref(), &dir).map_err(|e| io_error(&dir, e))).await?;
        topic.set_config(metadata, config, self.config.request_bytes_max);
        tracing::info!(topic = name, keys = ?changed, by = %caller, "altered topic config");
        self.describe(&topic).await
    }

    /// Grows a topic to `partitions` (Kafka's CreatePartitions): the new
    /// partitions' logs are made first, then topic.json names them (a crash
    /// between leaves directories the next open ignores and the next add
    /// replaces). Keyed records map to the new count from then on, as in
    /// Kafka. Subscribers and groups pick the new partitions up from the
    /// topic change, as they do new topics.
    pub async fn add_partitions(&self, caller: &Caller, name: &str, partitions: u32) -> Result<TopicInfo> {
        self.check_running()?;
        let _admin = self.admin.lock().await;
        let topic = self.topic(name)?;
        let have = topic.partitions.len() as u32;
        if partitions <= have {
            return Err(BrokerError::PartitionsNotAdded { topic: name.to_string(), partitions, have });
        }
        if partitions > PARTITIONS_PER_TOPIC_MAX {
            let topic = name.to_string();
            return Err(BrokerError::TooManyPartitions { topic, partitions, max: PARTITIONS_PER_TOPIC_MAX });
        }
        let mut metadata = topic.metadata();
        metadata.partitions = partitions;
        let config = topic.config();
        let log_config = config.log_config(self.config.request_bytes_max);
        let (fs, clock, dir, meta) = (self.fs.clone(), self.clock.clone(), topic.dir.clone(), metadata.clone());
        let counters = self.metrics().topic(name);
        let added = blocking("add partitions to", move || {
            let mut added = Vec::new();
            for p in have..partitions {
                let part_dir = dir.join(p.to_string());
                if fs.exists(&part_dir) {
                    // Left by an add that crashed before topic.json named it.
                    fs.remove_dir_all(&part_dir).map_err(|e| io_error(&part_dir, e))?;
                }
                let log = Log::open(&part_dir, fs.clone(), clock.clone(), log_config)
                    .map_err(|e| BrokerError::storage(&meta.name, p, e))?;
                added.push(Arc::new(Partition::new(&meta.name, p, log, counters.clone())));
            }
            fs.sync_dir(&dir).map_err(|e| io_error(&dir, e))?;
            meta.write(fs.as_ref(), &dir).map_err(|e| io_error(&dir, e))?;
            Ok(added)
        })
        .await?;
        let all = topic.partitions.iter().cloned().chain(added).collect();
        let grown = Arc::new(Topic::new(topic.dir.clone(), metadata, config, all, topic.dedupe.clone()));
        self.topics.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), grown.clone());
        self.topics_version.send_modify(|v| *v += 1);
        tracing::info!(topic = name, from = have, to = partitions, by = %caller, "added partitions");
        self.describe(&grown).await
    }

    pub async fn describe_topic(&self, _caller: &Caller, name: &str) -> Result<TopicInfo> {
        let topic = self.topic(name)?;
        self.describe(&topic).await
    }

    pub async fn list_topics(&self, _caller: &Caller, pattern: &str) -> Result<Vec<TopicInfo>> {
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
                dedupe: topic.dedupe.stats(p.id).await,
            });
        }
        Ok(TopicInfo { name: topic.name.clone(), partitions, config: topic.config().to_map() })
    }
}

/// A new topic's directory, partition logs and (last) metadata file.
fn create_topic_files(
    fs: &Arc<dyn FileSystem>,
    clock: &Arc<dyn Clock>,
    topic_dir: &Path,
    meta: &TopicMetadata,
    log_config: LogConfig,
    counters: &Arc<crate::metrics::TopicCounters>,
) -> Result<Vec<Arc<Partition>>> {
    if fs.exists(topic_dir) {
        // Leftover of a create that crashed before its metadata was written.
        fs.remove_dir_all(topic_dir).map_err(|e| io_error(topic_dir, e))?;
    }
    fs.create_dir_all(topic_dir).map_err(|e| io_error(topic_dir, e))?;
    let mut parts = Vec::new();
    for p in 0..meta.partitions {
        let log = Log::open(&topic_dir.join(p.to_string()), fs.clone(), clock.clone(), log_config)
            .map_err(|e| BrokerError::storage(&meta.name, p, e))?;
        parts.push(Arc::new(Partition::new(&meta.name, p, log, counters.clone())));
    }
    // The metadata file is written last: a topic directory without it
    // is an unfinished create and is cleaned up.
    meta.write(fs.as_ref(), topic_dir).map_err(|e| io_error(topic_dir, e))?;
    if let Some(parent) = topic_dir.parent() {
        // Guards against a power loss forgetting the topic directory.
        fs.sync_dir(parent).map_err(|e| io_error(parent, e))?;
    }
    Ok(parts)
}

fn io_error(path: &Path, e: std::io::Error) -> BrokerError {
    BrokerError::io(format!("I/O error on {}", path.display()), e)
}
