//! The one place broker errors become Kafka error codes. The matches are
//! exhaustive, without a catch-all: a new error cannot be left without its
//! code.

use crate::broker::classic_groups::ClassicCallError;
use crate::broker::BrokerError;
use crate::group::classic::ClassicError;
use crate::storage::StorageError;

/// Kafka's error codes (the protocol guide's table), the ones strata sends.
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const INVALID_RECORD_STATE: i16 = 121;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const INVALID_RECORD: i16 = 87;
    pub const THROTTLING_QUOTA_EXCEEDED: i16 = 89;
}

/// The Kafka error code of a broker error.
pub fn of(e: &BrokerError) -> i16 {
    use code::*;
    match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => UNKNOWN_TOPIC_OR_PARTITION,
        BrokerError::UnknownGroup(_) | BrokerError::UnknownShareGroup(_) => GROUP_ID_NOT_FOUND,
        BrokerError::UnknownAlertRule(_) | BrokerError::AlertRuleExists(_) | BrokerError::InvalidAlertRule { .. } => {
            INVALID_REQUEST
        }
        BrokerError::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        BrokerError::InvalidName { kind, .. } if kind.contains("group") => INVALID_GROUP_ID,
        BrokerError::InvalidName { .. } => INVALID_TOPIC_EXCEPTION,
        BrokerError::InvalidConfig { .. } | BrokerError::InvalidShareConfig { .. } => INVALID_CONFIG,
        BrokerError::TooManyPartitions { .. } | BrokerError::PartitionsNotAdded { .. } => INVALID_PARTITIONS,
        BrokerError::InvalidRequest(_) | BrokerError::MalformedRequest { .. } | BrokerError::EmptyProduce { .. } => {
            INVALID_REQUEST
        }
        BrokerError::RequestTooLarge { .. } => RECORD_LIST_TOO_LARGE,
        BrokerError::RequestTimeout { .. } => REQUEST_TIMED_OUT,
        BrokerError::Unsupported(_) => UNSUPPORTED_VERSION,
        BrokerError::ConnectionFailed(_) => UNKNOWN_SERVER_ERROR,
        BrokerError::Busy(_) => THROTTLING_QUOTA_EXCEEDED,
        BrokerError::RecordTooLarge { .. } => MESSAGE_TOO_LARGE,
        BrokerError::TooManyHeaders { .. } => INVALID_RECORD,
        BrokerError::EventIdTooLong { .. } => INVALID_RECORD,
        BrokerError::TooManyRecords { .. } => RECORD_LIST_TOO_LARGE,
        BrokerError::InvalidBatch { corrupt: true, .. } => CORRUPT_MESSAGE,
        BrokerError::InvalidBatch { corrupt: false, .. } => INVALID_RECORD,
        BrokerError::UnknownProducer { .. } => UNKNOWN_PRODUCER_ID,
        BrokerError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        BrokerError::UnknownMember { .. } => UNKNOWN_MEMBER_ID,
        BrokerError::StaleGeneration { .. } => ILLEGAL_GENERATION,
        BrokerError::GroupHasMembers { .. } => NON_EMPTY_GROUP,
        BrokerError::GroupInOtherProtocol { .. } => INCONSISTENT_GROUP_PROTOCOL,
        BrokerError::MetadataTooLarge { .. } => OFFSET_METADATA_TOO_LARGE,
        BrokerError::NotAcquired { .. } => INVALID_RECORD_STATE,
        // Retriable: the client tries again (and finds the broker back, or gone).
        BrokerError::ShuttingDown => LEADER_NOT_AVAILABLE,
        BrokerError::Internal(_) => UNKNOWN_SERVER_ERROR,
        BrokerError::Unauthenticated(_) => SASL_AUTHENTICATION_FAILED,
        BrokerError::PermissionDenied { resource, .. } => match resource {
            crate::security::Resource::Topic(_) => TOPIC_AUTHORIZATION_FAILED,
            crate::security::Resource::Group(_) => GROUP_AUTHORIZATION_FAILED,
            crate::security::Resource::Cluster => CLUSTER_AUTHORIZATION_FAILED,
        },
        BrokerError::Io { .. } => KAFKA_STORAGE_ERROR,
        BrokerError::Storage { source, .. } => storage(source),
    }
}

fn storage(e: &StorageError) -> i16 {
    use code::*;
    match e {
        StorageError::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        StorageError::BatchTooLarge { .. } => MESSAGE_TOO_LARGE,
        StorageError::SequenceTooOld { .. }
        | StorageError::SequenceOverlaps { .. }
        | StorageError::SequenceOutOfOrder { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
        StorageError::ProducerFenced { .. } => INVALID_PRODUCER_EPOCH,
        // The log refused or undid the write (disk full, I/O error, a log
        // being reopened): retriable, as Kafka's storage errors are.
        StorageError::Corrupt { .. }
        | StorageError::Io { .. }
        | StorageError::SyncFailed { .. }
        | StorageError::Poisoned { .. }
        | StorageError::Reopened { .. }
        | StorageError::Closed { .. } => KAFKA_STORAGE_ERROR,
    }
}

/// The Kafka error code of a classic group call's failure.
pub fn of_group(e: &ClassicCallError) -> i16 {
    use code::*;
    match e {
        ClassicCallError::Broker(e) => of(e),
        ClassicCallError::Group(e) => match e {
            ClassicError::UnknownMember => UNKNOWN_MEMBER_ID,
            ClassicError::IllegalGeneration { .. } => ILLEGAL_GENERATION,
            ClassicError::RebalanceInProgress => REBALANCE_IN_PROGRESS,
            ClassicError::InconsistentProtocol(_) => INCONSISTENT_GROUP_PROTOCOL,
            ClassicError::MemberIdRequired(_) => MEMBER_ID_REQUIRED,
            ClassicError::InvalidSessionTimeout => INVALID_SESSION_TIMEOUT,
        },
    }
}

/// A message for the error (logged, and sent where the response has room).
pub fn message_of_group(e: &ClassicCallError) -> String {
    match e {
        ClassicCallError::Broker(e) => e.to_string(),
        ClassicCallError::Group(ClassicError::InconsistentProtocol(why)) => why.clone(),
        ClassicCallError::Group(e) => format!("{e:?}"),
    }
}
