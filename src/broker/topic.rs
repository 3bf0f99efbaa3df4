//! A topic: its partitions, its config overrides, and its metadata file
//! `DATA/<topic>/topic.json`, replaced atomically on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::dedupe::Dedupe;
use super::error::{BrokerError, Result};
use super::partition::Partition;
use crate::config::TopicConfig;
use crate::storage::fs::FileSystem;

pub const METADATA_FILE: &str = "topic.json";

/// What `topic.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub partitions: u32,
    /// Only the keys set for this topic; the rest follow the broker defaults.
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
}

impl TopicMetadata {
    pub fn parse(bytes: &[u8]) -> std::result::Result<TopicMetadata, String> {
        let m: TopicMetadata = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.partitions == 0 || m.partitions > crate::config::PARTITIONS_PER_TOPIC_MAX {
            return Err(format!("partition count {} out of range", m.partitions));
        }
        Ok(m)
    }

    pub fn write(&self, fs: &dyn FileSystem, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        fs.write_atomic(&dir.join(METADATA_FILE), &json)
    }
}

#[derive(Debug)]
pub struct Topic {
    pub name: String,
    pub dir: PathBuf,
    pub partitions: Vec<Arc<Partition>>,
    /// Persisted metadata (overrides, creation time).
    metadata: RwLock<TopicMetadata>,
    /// Broker defaults with this topic's overrides applied.
    config: RwLock<TopicConfig>,
    /// Round-robin cursor for records without a key.
    keyless_next: AtomicU32,
    /// Event ids for de-duplication (shared with the topic value a
    /// partition count change replaces this one with).
    pub dedupe: Arc<Dedupe>,
}

impl Topic {
    pub fn new(
        dir: PathBuf,
        metadata: TopicMetadata,
        config: TopicConfig,
        partitions: Vec<Arc<Partition>>,
        dedupe: Arc<Dedupe>,
    ) -> Topic {
        Topic {
            name: metadata.name.clone(),
            dir,
            partitions,
            metadata: RwLock::new(metadata),
            config: RwLock::new(config),
            keyless_next: AtomicU32::new(0),
            dedupe,
        }
    }

    pub fn config(&self) -> TopicConfig {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn metadata(&self) -> TopicMetadata {
        self.metadata.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions.get(id as usize).ok_or_else(|| BrokerError::UnknownPartition {
            topic: self.name.clone(),
            partition: id,
            partitions: self.partitions.len() as u32,
        })
    }

    /// The partition for the next batch of keyless records.
    pub fn next_keyless_partition(&self) -> u32 {
        self.keyless_next.fetch_add(1, Ordering::Relaxed) % self.partitions.len() as u32
    }

    /// Replaces the overrides and effective config (after the file is written).
    pub fn set_config(&self, metadata: TopicMetadata, config: TopicConfig, request_bytes_max: usize) {
        for p in &self.partitions {
            p.log.set_config(config.log_config(request_bytes_max));
        }
        *self.metadata.write().unwrap_or_else(|e| e.into_inner()) = metadata;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_round_trips_and_rejects_bad_partition_counts() {
        let m = TopicMetadata {
            name: "t".into(),
            partitions: 3,
            config: [("retention.ms".to_string(), "5".to_string())].into(),
            created_ms: 1,
        };
        assert_eq!(TopicMetadata::parse(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
        let zero = br#"{"name":"t","partitions":0,"config":{},"created_ms":1}"#;
        assert!(TopicMetadata::parse(zero).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_metadata_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = TopicMetadata::parse(&bytes);
        }
    }
}
