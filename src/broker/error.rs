//! Errors of the broker layer. `server::status` maps each to a gRPC code.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    PartitionNotFound { topic: String, partition: u32, partitions: u32 },
    #[error("group {0:?} does not exist (no live members and no committed offsets)")]
    GroupNotFound(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{topic}/{partition}: offset {offset} is out of range: log start offset {log_start_offset}, high watermark {high_watermark}")]
    OffsetOutOfRange { topic: String, partition: u32, offset: u64, log_start_offset: u64, high_watermark: u64 },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("{topic}/{partition}: {source}")]
    Storage {
        topic: String,
        partition: u32,
        #[source]
        source: StorageError,
    },
    #[error("{0}")]
    Internal(String),
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
