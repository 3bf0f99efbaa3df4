//! The one place broker errors become gRPC statuses (spec: API.md, Errors).

use tonic::{Code, Status};

use crate::broker::BrokerError;
use crate::storage::StorageError;

pub fn to_status(e: BrokerError) -> Status {
    let mut message = e.to_string();
    if let BrokerError::Storage { source, .. } = &e {
        if source.is_out_of_files() {
            message.push_str(&crate::broker::error::open_files_hint());
        }
    }
    let code = match &e {
        BrokerError::TopicNotFound(_) | BrokerError::PartitionNotFound { .. } | BrokerError::GroupNotFound(_) => {
            Code::NotFound
        }
        BrokerError::TopicExists(_) => Code::AlreadyExists,
        BrokerError::InvalidArgument(_) => Code::InvalidArgument,
        BrokerError::OffsetOutOfRange { .. } => Code::OutOfRange,
        BrokerError::FailedPrecondition(_) => Code::FailedPrecondition,
        BrokerError::ResourceExhausted(_) => Code::ResourceExhausted,
        BrokerError::ShuttingDown => Code::Unavailable,
        BrokerError::Internal(_) => Code::Internal,
        BrokerError::Storage { source, .. } => match source {
            s if s.is_disk_full() || s.is_out_of_files() => Code::ResourceExhausted,
            StorageError::Corrupt { .. } => Code::DataLoss,
            StorageError::BatchTooLarge { .. } => Code::InvalidArgument,
            StorageError::SequenceTooOld { .. } | StorageError::SequenceOverlaps { .. } => Code::FailedPrecondition,
            StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
            // The write was refused or undone; the client may retry.
            StorageError::Io { .. } | StorageError::SyncFailed { .. } | StorageError::Poisoned { .. } => {
                Code::Unavailable
            }
        },
    };
    Status::new(code, message)
}

/// tonic refuses a request over the size limit with OUT_OF_RANGE; the spec
/// says RESOURCE_EXHAUSTED. Streaming handlers see that status themselves.
pub fn map_decode_status(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        Status::resource_exhausted(format!("request too large: {}", status.message()))
    } else {
        status
    }
}

/// Rewrites a trailers-only response carrying tonic's size-limit error (the
/// unary case) to RESOURCE_EXHAUSTED. Used as a tower layer on the server.
pub fn rewrite_size_limit<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let is_limit = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if is_limit {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
