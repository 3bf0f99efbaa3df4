//! The log engine: one partition is a directory of segments, each a `.log`
//! of record batches plus a memory-mapped `.index` and `.timeindex`.
//!
//! Synchronous and deterministic: no tokio, no tonic, no prost here. Files go
//! through the [`fs`] seam, time through [`Clock`]. The on-disk format is
//! specified byte by byte in `docs/format.md` and in [`batch`].

pub mod batch;
pub mod checkpoint;
pub mod fs;
pub mod index;
pub mod log;
pub mod producer;
pub mod segment;
pub mod simfs;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub use self::log::{AppendOutcome, BatchRef, FlushPolicy, Log, LogConfig, PendingAppend, ReadBatches};

/// Where the engine gets the time, so tests can move it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Errors of the storage layer, with the context an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("offset {offset} is out of range: log start offset {log_start_offset}, high watermark {high_watermark}")]
    OffsetOutOfRange { offset: u64, log_start_offset: u64, high_watermark: u64 },
    #[error("corrupt data in {path} at byte {position} (offsets from {first_offset}): {reason}")]
    Corrupt { path: PathBuf, position: u64, first_offset: u64, reason: String },
    #[error("batch of {size} bytes exceeds the limit of {limit} bytes")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("producer {producer_id}: sequence {sequence} is older than the last one seen ({last_sequence}) and no longer remembered")]
    SequenceTooOld { producer_id: i64, sequence: i32, last_sequence: i32 },
    #[error("producer {producer_id}: sequence {sequence} starts inside the batch of sequences {first_sequence}..={last_sequence} already appended; retry with the same first sequence")]
    SequenceOverlaps { producer_id: i64, sequence: i32, first_sequence: i32, last_sequence: i32 },
    #[error("log {path} refuses writes after an unrecoverable I/O error ({reason}); reopen it")]
    Poisoned { path: PathBuf, reason: String },
    #[error("the data appended to {path} was discarded because an fsync failed: {reason}")]
    SyncFailed { path: PathBuf, reason: String },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { path: path.into(), source }
    }

    /// True when the error means the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => is_disk_full(source),
            StorageError::SyncFailed { reason, .. } | StorageError::Poisoned { reason, .. } => {
                reason.contains("No space left") || reason.contains("quota")
            }
            _ => false,
        }
    }
}

impl StorageError {
    /// True when the process ran out of file descriptors (EMFILE, ENFILE).
    pub fn is_out_of_files(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if is_out_of_files(source))
    }
}

pub fn is_out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// Result alias for the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// File name of a segment file: base offset as 20 digits plus extension.
pub fn segment_file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}
