//! Errors of the broker, named after what went wrong, not after any wire
//! protocol: each listener has one exhaustive map from these to its codes
//! (`listener/grpc/status.rs` to gRPC statuses; a Kafka listener to Kafka
//! error codes), so a new variant cannot be left unmapped.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    // ---- Names and lookups ----
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    #[error("group {0:?} does not exist (no live members and no committed offsets)")]
    UnknownGroup(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("{kind} name {name:?} is invalid: {why}")]
    InvalidName { kind: &'static str, name: String, why: String },
    #[error("topic {topic:?}: {why}")]
    InvalidConfig { topic: String, why: String },
    #[error("topic {topic:?}: {partitions} partitions is more than the limit of {max}")]
    TooManyPartitions { topic: String, partitions: u32, max: u32 },
    #[error("topic {topic:?} has {have} partitions: partitions can be added, never removed (asked for {partitions})")]
    PartitionsNotAdded { topic: String, partitions: u32, have: u32 },

    // ---- Requests ----
    /// A request whose fields do not fit together (the listener decoded it).
    #[error("{0}")]
    InvalidRequest(String),
    /// Bytes that do not decode as the request they claim to be.
    #[error("malformed {what}: {why}")]
    MalformedRequest { what: String, why: String },
    #[error("request too large: {size} bytes, over the limit of {limit} bytes ({setting})")]
    RequestTooLarge { size: usize, limit: usize, setting: &'static str },
    #[error("the request did not arrive whole within {timeout_ms} ms of its first byte (request_read_timeout_ms)")]
    RequestTimeout { timeout_ms: u64 },
    #[error("{0}")]
    Unsupported(String),
    /// The client's connection failed while its request was being read.
    #[error("the connection failed while reading the request: {0}")]
    ConnectionFailed(String),
    /// Out of a shared budget right now; the same request may succeed later.
    #[error("{0}")]
    Busy(String),

    // ---- Produce ----
    #[error("produce to {topic:?} has no records")]
    EmptyProduce { topic: String },
    #[error("record {index} for {topic:?} is {size} bytes, over max.record.bytes = {max}")]
    RecordTooLarge { topic: String, index: usize, size: usize, max: usize },
    #[error("record {index} for {topic:?} has {headers} headers, over the limit of {max}")]
    TooManyHeaders { topic: String, index: usize, headers: usize, max: usize },
    #[error(
        "produce request with {records} records: at most {max} records per request (produce_records_max); \
         send them in several requests"
    )]
    TooManyRecords { records: usize, max: usize },
    #[error("record_batch for {topic:?}: {why}")]
    InvalidBatch {
        topic: String,
        why: String,
        /// The bytes are damaged (CRC, lengths, magic), not just refused.
        corrupt: bool,
    },
    #[error(
        "record {index} for {topic:?}: its {header:?} header (the event id) is {size} bytes, over the limit of {max}"
    )]
    EventIdTooLong { topic: String, index: usize, header: String, size: usize, max: usize },
    #[error("unknown producer id {producer_id}: it was never handed out by InitProducer; call InitProducer for one")]
    UnknownProducer { producer_id: i64 },

    // ---- Offsets ----
    #[error("{topic}/{partition}: offset {offset} is out of range: log start offset {log_start_offset}, high watermark {high_watermark}")]
    OffsetOutOfRange { topic: String, partition: u32, offset: u64, log_start_offset: u64, high_watermark: u64 },

    // ---- Groups ----
    #[error("member {member:?} is not in group {group:?} (its session expired or it left); join again with an empty member_id")]
    UnknownMember { group: String, member: String },
    #[error("commit to group {group:?} from generation {generation}, but the group is at generation {current}; heartbeat to get the new assignment")]
    StaleGeneration { group: String, generation: u64, current: u64 },
    #[error("group {group:?} is held by {held_by} ({members} live member(s)); a group speaks one protocol at a time: use another group id, or stop those members first")]
    GroupInOtherProtocol { group: String, held_by: &'static str, members: usize },
    #[error("cannot {action} group {group:?} while it has {members} live member(s); stop its consumers first")]
    GroupHasMembers { group: String, action: &'static str, members: usize },
    #[error("commit to group {group:?} for {topic}/{partition}: metadata of {size} bytes is over offset.metadata.max.bytes = {max}")]
    MetadataTooLarge { group: String, topic: String, partition: u32, size: usize, max: usize },

    // ---- Share groups ----
    #[error("share group {0:?} does not exist")]
    UnknownShareGroup(String),
    #[error("share group {group:?}: {why}")]
    InvalidShareConfig { group: String, why: String },
    #[error("share group {group:?}, {topic}/{partition}: {source}")]
    NotAcquired { group: String, topic: String, partition: u32, source: crate::broker::delivery::state::NotAcquired },

    // ---- Alert rules ----
    #[error("alert rule {0:?} does not exist")]
    UnknownAlertRule(String),
    #[error("alert rule {0:?} already exists (delete it first to change it)")]
    AlertRuleExists(String),
    #[error("alert rule field {field:?}: {why}")]
    InvalidAlertRule { field: String, why: String },

    // ---- Security ----
    /// No credentials where they are required, or credentials of nobody.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{principal:?} may not {operation} {resource} (no ACL entry grants it)")]
    PermissionDenied { principal: String, operation: crate::security::Operation, resource: crate::security::Resource },

    // ---- The broker and its storage ----
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A partition's log failed (disk full, I/O error, corruption, ...).
    #[error("{topic}/{partition}: {source}{}", if source.is_out_of_files() { open_files_hint() } else { String::new() })]
    Storage {
        topic: String,
        partition: u32,
        #[source]
        source: StorageError,
    },
    /// A file of the broker's own (a topic directory, metadata) failed.
    #[error("{what}: {source}{}", hint(source))]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

/// What to add to the message of an I/O error a user can do something about.
fn hint(e: &std::io::Error) -> String {
    if crate::storage::is_out_of_files(e) {
        open_files_hint()
    } else {
        String::new()
    }
}

impl BrokerError {
    /// Wraps a storage error with the partition it happened in, turning the
    /// expected outcomes (out of range) into their own variants.
    pub fn storage(topic: &str, partition: u32, source: StorageError) -> Self {
        match source {
            StorageError::OffsetOutOfRange { offset, log_start_offset, high_watermark } => {
                BrokerError::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    log_start_offset,
                    high_watermark,
                }
            }
            source => BrokerError::Storage { topic: topic.to_string(), partition, source },
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BrokerError::Io { what: what.into(), source }
    }

    /// The disk is full (ENOSPC, EDQUOT): the same call may work once space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            BrokerError::Storage { source, .. } => source.is_disk_full(),
            BrokerError::Io { source, .. } => crate::storage::is_disk_full(source),
            _ => false,
        }
    }

    /// The process is out of file descriptors (EMFILE, ENFILE).
    pub fn is_out_of_files(&self) -> bool {
        match self {
            BrokerError::Storage { source, .. } => source.is_out_of_files(),
            BrokerError::Io { source, .. } => crate::storage::is_out_of_files(source),
            _ => false,
        }
    }
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// The soft limit on open descriptors, for messages.
pub fn open_file_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _hard)| soft)
}

/// What to add to an error caused by running out of descriptors.
pub fn open_files_hint() -> String {
    match open_file_limit() {
        Some(limit) => format!(" (the broker is at its limit of {limit} open files; raise `ulimit -n`)"),
        None => " (the broker is at its open file limit; raise `ulimit -n`)".into(),
    }
}
