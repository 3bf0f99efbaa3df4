//! The one place broker errors become gRPC statuses (spec: API.md, Errors).
//! The match is exhaustive, without a catch-all: a new error cannot be
//! left without its code.

use tonic::{Code, Status};

use crate::broker::BrokerError;
use crate::storage::StorageError;

pub fn to_status(e: BrokerError) -> Status {
    let code = code(&e);
    Status::new(code, e.to_string())
}

fn code(e: &BrokerError) -> Code {
    match e {
        BrokerError::UnknownTopic(_)
        | BrokerError::UnknownPartition { .. }
        | BrokerError::UnknownGroup(_)
        | BrokerError::UnknownShareGroup(_)
        | BrokerError::UnknownAlertRule(_) => Code::NotFound,
        BrokerError::TopicExists(_) | BrokerError::AlertRuleExists(_) => Code::AlreadyExists,
        BrokerError::InvalidName { .. }
        | BrokerError::InvalidConfig { .. }
        | BrokerError::TooManyPartitions { .. }
        | BrokerError::PartitionsNotAdded { .. }
        | BrokerError::InvalidRequest(_)
        | BrokerError::MalformedRequest { .. }
        | BrokerError::EmptyProduce { .. }
        | BrokerError::RecordTooLarge { .. }
        | BrokerError::TooManyHeaders { .. }
        | BrokerError::EventIdTooLong { .. }
        | BrokerError::TooManyRecords { .. }
        | BrokerError::InvalidBatch { .. }
        | BrokerError::MetadataTooLarge { .. }
        | BrokerError::InvalidShareConfig { .. }
        | BrokerError::InvalidAlertRule { .. } => Code::InvalidArgument,
        BrokerError::RequestTooLarge { .. } | BrokerError::Busy(_) => Code::ResourceExhausted,
        BrokerError::RequestTimeout { .. } => Code::DeadlineExceeded,
        BrokerError::Unsupported(_) => Code::Unimplemented,
        BrokerError::OffsetOutOfRange { .. } => Code::OutOfRange,
        BrokerError::UnknownProducer { .. }
        | BrokerError::UnknownMember { .. }
        | BrokerError::StaleGeneration { .. }
        | BrokerError::GroupHasMembers { .. }
        | BrokerError::GroupInOtherProtocol { .. }
        | BrokerError::NotAcquired { .. } => Code::FailedPrecondition,
        BrokerError::ShuttingDown | BrokerError::ConnectionFailed(_) => Code::Unavailable,
        BrokerError::Internal(_) => Code::Internal,
        BrokerError::Unauthenticated(_) => Code::Unauthenticated,
        BrokerError::PermissionDenied { .. } => Code::PermissionDenied,
        BrokerError::Io { .. } if e.is_disk_full() || e.is_out_of_files() => Code::ResourceExhausted,
        BrokerError::Io { .. } => Code::Internal,
        BrokerError::Storage { source, .. } => storage_code(source),
    }
}

fn storage_code(e: &StorageError) -> Code {
    if e.is_disk_full() || e.is_out_of_files() {
        return Code::ResourceExhausted;
    }
    match e {
        StorageError::Corrupt { .. } => Code::DataLoss,
        StorageError::BatchTooLarge { .. } => Code::InvalidArgument,
        StorageError::SequenceTooOld { .. }
        | StorageError::SequenceOverlaps { .. }
        | StorageError::SequenceOutOfOrder { .. }
        | StorageError::ProducerFenced { .. } => Code::FailedPrecondition,
        StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
        // The write was refused or undone; the client may retry.
        StorageError::Io { .. }
        | StorageError::SyncFailed { .. }
        | StorageError::Poisoned { .. }
        | StorageError::Reopened { .. }
        | StorageError::Closed { .. } => Code::Unavailable,
    }
}
