//! Broker and topic configuration: every limit explicit, units in the names.
//!
//! Topic config keys (spec names): `retention.ms`, `retention.bytes`,
//! `segment.bytes`, `segment.ms`, `max.record.bytes`, `timestamp.type`,
//! `cleanup.policy`, `flush.policy`. Broker defaults apply to every topic
//! that does not override them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::storage::{FlushPolicy, LogConfig};

/// Smallest segment allowed (spec: 1 KiB).
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// Largest segment: index positions are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Header entries per record, so a hostile header map stays bounded.
pub const HEADERS_PER_RECORD_MAX: usize = 256;

/// Which time a record is stored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamp (broker time when it sent 0).
    Create,
    /// The broker's time when it appended the record.
    Append,
}

/// Per-topic settings; the effective config is broker defaults + overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub record_bytes_max: usize,
    pub timestamp_type: TimestampType,
    pub flush: FlushPolicy,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            record_bytes_max: 1 << 20,
            timestamp_type: TimestampType::Create,
            flush: FlushPolicy::Always,
        }
    }
}

/// Every key a topic config accepts.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "flush.policy",
    "max.record.bytes",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "timestamp.type",
];

impl TopicConfig {
    /// Applies `key = value`; the error names the key, the value and what is allowed.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let int = |min: i64| -> Result<i64, String> {
            value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= min)
                .ok_or_else(|| format!("config {key}={value:?}: expected an integer >= {min}"))
        };
        match key {
            "retention.ms" => self.retention_ms = int(-1)?,
            "retention.bytes" => self.retention_bytes = int(-1)?,
            "segment.bytes" => {
                let v = int(SEGMENT_BYTES_MIN as i64)?;
                if v as u64 > SEGMENT_BYTES_MAX {
                    return Err(format!("config {key}={value:?}: at most {SEGMENT_BYTES_MAX} bytes"));
                }
                self.segment_bytes = v as u64;
            }
            "segment.ms" => self.segment_ms = int(1)?,
            "max.record.bytes" => {
                let v = int(1)?;
                if v > 64 << 20 {
                    return Err(format!("config {key}={value:?}: at most {} bytes", 64 << 20));
                }
                self.record_bytes_max = v as usize;
            }
            "timestamp.type" => {
                self.timestamp_type = match value {
                    "create" => TimestampType::Create,
                    "append" => TimestampType::Append,
                    _ => return Err(format!("config {key}={value:?}: expected create or append")),
                }
            }
            "cleanup.policy" => {
                if value != "delete" {
                    return Err(format!("config {key}={value:?}: only delete is supported"));
                }
            }
            "flush.policy" => self.flush = value.parse().map_err(|e| format!("config {key}: {e}"))?,
            _ => return Err(format!("unknown config key {key:?}; known keys: {}", TOPIC_CONFIG_KEYS.join(", "))),
        }
        Ok(())
    }

    /// Applies every pair, all or nothing.
    pub fn with(&self, overrides: &BTreeMap<String, String>) -> Result<TopicConfig, String> {
        let mut config = self.clone();
        for (k, v) in overrides {
            config.set(k, v)?;
        }
        Ok(config)
    }

    /// Every key with its effective value, as plain integers or words.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("cleanup.policy".into(), "delete".into());
        m.insert("flush.policy".into(), self.flush.to_string());
        m.insert("max.record.bytes".into(), self.record_bytes_max.to_string());
        m.insert("retention.bytes".into(), self.retention_bytes.to_string());
        m.insert("retention.ms".into(), self.retention_ms.to_string());
        m.insert("segment.bytes".into(), self.segment_bytes.to_string());
        m.insert("segment.ms".into(), self.segment_ms.to_string());
        let ts = match self.timestamp_type {
            TimestampType::Create => "create",
            TimestampType::Append => "append",
        };
        m.insert("timestamp.type".into(), ts.into());
        m
    }

    /// The storage settings for this topic's partitions.
    pub fn log_config(&self, request_bytes_max: usize) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            batch_bytes_max: request_bytes_max + (64 << 10),
            flush: self.flush,
            ..LogConfig::default()
        }
    }
}

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Largest gRPC request accepted (spec default 16 MiB).
    pub request_bytes_max: usize,
    /// How often retention runs (`retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
    /// How often dirty partitions write a recovery checkpoint: after a
    /// crash, recovery rescans what was written since (with 100 busy
    /// partitions, 1 s of a 400 MB/s burst doubled the time to ready).
    pub checkpoint_interval_ms: u64,
    /// How long a segment rolled under `never` or `interval` waits for its
    /// background fsync. The kernel writes dirty pages back by itself after
    /// 30 s (`vm.dirty_expire_centisecs`), or sooner under memory pressure,
    /// so by then the fsync adds little I/O; done at once, it made the disk
    /// write back during bursts and cost a 1 GB never-produce burst 30-45%
    /// of its throughput on the 2-core CI machine. The price: after a power
    /// loss (never after a process crash) recovery rescans up to this much
    /// of the newest appends.
    pub rolled_segment_sync_delay_ms: u64,
    /// Partitions of a topic created without a count.
    pub default_partitions: u32,
    /// Bytes of requests being received or decoded at once, every
    /// connection together (Kafka's `queued.max.request.bytes`). While it
    /// is spent, the broker stops reading requests and flow control holds
    /// the senders back.
    pub request_bytes_in_flight_max: usize,
    /// A request must arrive whole within this long of its first byte; a
    /// client that stalls half way gets DEADLINE_EXCEEDED and gives its
    /// share of the budget back.
    pub request_read_timeout_ms: u64,
    /// Most records one produce request may carry: each costs a few hundred
    /// bytes once decoded, so 16 MiB of empty records would take gigabytes.
    pub produce_records_max: usize,
    /// Bytes a push stream (Subscribe) may read ahead of its client: what a
    /// subscriber that stops reading holds, however many partitions it follows.
    pub stream_buffer_bytes_max: usize,
    /// How often a log that an I/O error poisoned (it refuses writes) is
    /// tried again: reopened in place once the fault has cleared.
    pub poisoned_log_retry_ms: u64,
    /// Largest metadata string a committed offset may carry (Kafka's
    /// `offset.metadata.max.bytes`); every commit is kept in memory and
    /// restated by each snapshot of the offsets log.
    pub offset_metadata_bytes_max: usize,
    /// Defaults for every topic.
    pub topic_defaults: TopicConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            request_bytes_max: 16 << 20,
            retention_check_interval_ms: 5000,
            checkpoint_interval_ms: 250,
            rolled_segment_sync_delay_ms: 30_000,
            default_partitions: 1,
            offset_metadata_bytes_max: 4096,
            poisoned_log_retry_ms: 5000,
            request_bytes_in_flight_max: 256 << 20,
            request_read_timeout_ms: 30_000,
            produce_records_max: 200_000,
            stream_buffer_bytes_max: 2 << 20,
            topic_defaults: TopicConfig::default(),
        }
    }
}

/// The TOML file of `strata serve --config`. Topic defaults use the topic
/// config keys, quoted: `[topic_defaults] "retention.ms" = 86400000`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub max_request_bytes: Option<usize>,
    #[serde(rename = "retention.check.interval.ms")]
    pub retention_check_interval_ms: Option<u64>,
    pub checkpoint_interval_ms: Option<u64>,
    pub rolled_segment_sync_delay_ms: Option<u64>,
    pub default_partitions: Option<u32>,
    #[serde(rename = "offset.metadata.max.bytes")]
    pub offset_metadata_max_bytes: Option<usize>,
    #[serde(rename = "queued.max.request.bytes")]
    pub queued_max_request_bytes: Option<usize>,
    pub request_read_timeout_ms: Option<u64>,
    pub poisoned_log_retry_ms: Option<u64>,
    pub produce_records_max: Option<usize>,
    pub stream_buffer_bytes_max: Option<usize>,
    #[serde(default)]
    pub topic_defaults: BTreeMap<String, toml::Value>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the file's settings on top of `config`.
    pub fn apply(&self, config: &mut BrokerConfig) -> Result<(), String> {
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.max_request_bytes {
            if !(1024..=(256 << 20)).contains(&v) {
                return Err(format!("max_request_bytes = {v}: expected 1024..=268435456"));
            }
            config.request_bytes_max = v;
        }
        if let Some(v) = self.retention_check_interval_ms {
            config.retention_check_interval_ms = v.max(1);
        }
        if let Some(v) = self.checkpoint_interval_ms {
            config.checkpoint_interval_ms = v.max(1);
        }
        if let Some(v) = self.rolled_segment_sync_delay_ms {
            config.rolled_segment_sync_delay_ms = v;
        }
        if let Some(v) = self.default_partitions {
            if v == 0 {
                return Err("default_partitions must be at least 1".into());
            }
            config.default_partitions = v;
        }
        if let Some(v) = self.offset_metadata_max_bytes {
            if v > 1 << 20 {
                return Err(format!("offset.metadata.max.bytes = {v}: at most 1048576"));
            }
            config.offset_metadata_bytes_max = v;
        }
        if let Some(v) = self.queued_max_request_bytes {
            if v < config.request_bytes_max {
                return Err(format!(
                    "queued.max.request.bytes = {v}: at least max_request_bytes ({})",
                    config.request_bytes_max
                ));
            }
            config.request_bytes_in_flight_max = v;
        }
        if let Some(v) = self.request_read_timeout_ms {
            config.request_read_timeout_ms = v.max(1);
        }
        if let Some(v) = self.poisoned_log_retry_ms {
            config.poisoned_log_retry_ms = v.max(1);
        }
        if let Some(v) = self.produce_records_max {
            config.produce_records_max = v.max(1);
        }
        if let Some(v) = self.stream_buffer_bytes_max {
            config.stream_buffer_bytes_max = v.max(64 << 10);
        }
        for (k, v) in &self.topic_defaults {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            config.topic_defaults.set(k, &text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn effective_config_lists_every_key_and_round_trips() {
        let c = TopicConfig::default();
        let map = c.to_map();
        assert_eq!(map.keys().map(String::as_str).collect::<Vec<_>>(), TOPIC_CONFIG_KEYS);
        assert_eq!(TopicConfig::default().with(&map).unwrap(), c);
        assert_eq!(map["retention.ms"], "604800000");
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = TopicConfig::default();
        assert!(c.set("segment.bytes", "10").unwrap_err().contains("segment.bytes"));
        assert!(c.set("flush.policy", "sometimes").is_err());
        assert!(c.set("colour", "red").unwrap_err().contains("known keys"));
        c.set("flush.policy", "interval:200").unwrap();
        assert_eq!(c.flush, FlushPolicy::Interval(200));
    }

    #[test]
    fn config_file_applies_topic_defaults() {
        let f = ConfigFile::parse(
            "listen = \"127.0.0.1:6000\"\n\"retention.check.interval.ms\" = 100\nrolled_segment_sync_delay_ms = 0\n[topic_defaults]\n\"retention.ms\" = 1000\n\"flush.policy\" = \"never\"\n",
        )
        .unwrap();
        let mut c = BrokerConfig::default();
        f.apply(&mut c).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.retention_check_interval_ms, 100);
        assert_eq!(c.rolled_segment_sync_delay_ms, 0);
        assert_eq!(c.topic_defaults.retention_ms, 1000);
        assert_eq!(c.topic_defaults.flush, FlushPolicy::Never);
        assert!(ConfigFile::parse("bogus = 1").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_config_text_never_panics(text in "\\PC{0,200}", key in "[a-z.]{0,20}", value in "\\PC{0,20}") {
            if let Ok(f) = ConfigFile::parse(&text) {
                let _ = f.apply(&mut BrokerConfig::default());
            }
            let _ = TopicConfig::default().set(&key, &value);
        }
    }
}
