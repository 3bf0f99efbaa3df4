//! The broker's requests and results, in domain terms: what every listener
//! translates its wire messages into and out of.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::subscription::Delivery;
use crate::group::offsets::Committed;
use crate::storage::batch::{ProducerStamp, Record};

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Offset(u64),
    Earliest,
    Latest,
    /// The group's committed offset (resolved by a caller that has a group).
    Committed,
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    /// `None`: the broker's `default_partitions`.
    pub partitions: Option<u32>,
    /// Overrides of the broker's topic defaults (topic config keys).
    pub config: BTreeMap<String, String>,
}

/// A produce call.
#[derive(Debug, Clone)]
pub struct ProduceRequest {
    pub topic: String,
    pub partition: Option<u32>,
    pub records: Vec<Record>,
    pub producer: Option<ProducerStamp>,
    /// A batch the client encoded (instead of `records`), validated here.
    pub batch: Option<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    pub partition: u32,
    pub base_offset: u64,
    pub last_offset: u64,
    pub log_append_time_ms: i64,
}

/// A fetch of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub topic: String,
    pub partition: u32,
    pub from: Position,
    /// 0: the default (`FETCH_RECORDS_DEFAULT`); at most `FETCH_RECORDS_MAX`.
    pub records_max: usize,
    /// 0: the default (`FETCH_BYTES_DEFAULT`); at least one batch is returned.
    pub bytes_max: usize,
    /// How long to wait for data when there is none (long poll).
    pub wait: Duration,
    /// The stored batches as they are instead of decoded records.
    pub raw: bool,
}

/// A push subscription, with or without a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub pattern: String,
    /// With a group, the stream is the group membership.
    pub group: Option<String>,
    /// `None`: the group's committed offsets with a group, else `Latest`.
    pub from: Option<Position>,
    /// Where to start a partition with no committed offset (`Earliest` or
    /// `Latest`); `None`: `Latest`.
    pub fallback: Option<Position>,
    pub delivery: Delivery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroup {
    pub group: String,
    /// Empty on the first join.
    pub member_id: String,
    pub topic_pattern: String,
    /// `None`: `SESSION_TIMEOUT_DEFAULT`.
    pub session_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffsets {
    pub group: String,
    /// Empty for a manual commit to a group without live members.
    pub member_id: String,
    pub generation: u64,
    /// (topic, partition, what to commit: the next offset to read).
    pub offsets: Vec<(String, u32, Committed)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetOffsets {
    pub group: String,
    pub topic_pattern: String,
    pub to: Position,
    pub dry_run: bool,
    /// Added to the offset `to` resolves to, before clamping to the log.
    pub shift_by: i64,
    /// Only this partition of each matching topic.
    pub partition: Option<u32>,
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
    /// De-dup: ids remembered and about their memory (0 when off).
    pub dedupe: crate::broker::rules::dedupe::IdStats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    /// The effective config: every key, defaults included.
    pub config: BTreeMap<String, String>,
}

/// A partition's bounds at one moment, with an offset looked up in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetLookup {
    pub offset: u64,
    pub log_start_offset: u64,
    pub high_watermark: u64,
}
