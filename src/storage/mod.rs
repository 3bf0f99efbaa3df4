//! The log engine: one partition is a directory of segments, each a `.log`
//! of record batches plus a memory-mapped `.index` and `.timeindex`.
//!
//! Synchronous and deterministic: no tokio, no tonic, no prost here. Files go
//! through the [`fs`] seam, time through [`Clock`]. The on-disk format is
//! specified byte by byte in `docs/format.md` and in [`batch`].

pub mod batch;
pub mod batch_v1;
pub mod checkpoint;
pub mod compression;
pub mod fs;
pub mod index;
pub mod log;
pub mod producer;
pub mod segment;
pub mod simfs;
pub mod upgrade;
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

/// What went wrong with an I/O call, kept typed (not as text) so callers
/// can tell a full disk from a broken one. Shared, because one cause fails
/// many waiters.
#[derive(Debug, Clone)]
pub struct IoCause {
    /// What was being done: "fsync of 00000000000000000000.log".
    pub context: String,
    pub source: Arc<std::io::Error>,
}

impl IoCause {
    pub fn new(context: impl Into<String>, source: std::io::Error) -> IoCause {
        IoCause { context: context.into(), source: Arc::new(source) }
    }

    /// A cause holding a copy of `source` (same OS error code or kind), for
    /// when the original goes on to the caller.
    pub fn copied(context: impl Into<String>, source: &std::io::Error) -> IoCause {
        let copy = match source.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(source.kind(), source.to_string()),
        };
        IoCause::new(context, copy)
    }
}

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.context, self.source)
    }
}

/// Why a log refuses writes until it is reopened.
#[derive(Debug, Clone)]
pub enum PoisonCause {
    /// An I/O error left what is on disk in doubt (a failed fsync of data
    /// readers saw, a failed cut, a failed directory fsync).
    Io(IoCause),
    /// Two I/O errors: the first, then the cut that should have undone it.
    IoThenCut { first: IoCause, cut: IoCause },
    /// A panic while the writer lock was held: the writer's state is in doubt.
    Panic,
}

impl PoisonCause {
    fn io_errors(&self) -> Vec<&std::io::Error> {
        match self {
            PoisonCause::Io(c) => vec![&c.source],
            PoisonCause::IoThenCut { first, cut } => vec![&first.source, &cut.source],
            PoisonCause::Panic => vec![],
        }
    }
}

impl std::fmt::Display for PoisonCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoisonCause::Io(c) => write!(f, "{c}"),
            PoisonCause::IoThenCut { first, cut } => write!(f, "{first}, and cutting it off: {cut}"),
            PoisonCause::Panic => write!(f, "a panic while appending"),
        }
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
    #[error("producer {producer_id}: sequence {sequence} is out of order: expected {expected} (a batch before it is missing)")]
    SequenceOutOfOrder { producer_id: i64, sequence: i32, expected: i32 },
    #[error("producer {producer_id}: epoch {epoch} is older than its current epoch {current}: a newer instance of the producer fenced this one")]
    ProducerFenced { producer_id: i64, epoch: i16, current: i16 },
    #[error("log {path} refuses writes after an unrecoverable error ({cause}); it is reopened once the fault clears")]
    Poisoned { path: PathBuf, cause: PoisonCause },
    #[error("the data appended to {path} was discarded: {cause}")]
    SyncFailed { path: PathBuf, cause: IoCause },
    #[error("the log {path} was reopened after an error; this append's outcome is unknown")]
    Reopened { path: PathBuf },
    #[error("log {path} is closed")]
    Closed { path: PathBuf },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { path: path.into(), source }
    }

    /// The I/O errors behind this error, if any.
    fn io_errors(&self) -> Vec<&std::io::Error> {
        match self {
            StorageError::Io { source, .. } => vec![source],
            StorageError::SyncFailed { cause, .. } => vec![&cause.source],
            StorageError::Poisoned { cause, .. } => cause.io_errors(),
            _ => vec![],
        }
    }

    /// True when the error means the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        self.io_errors().into_iter().any(is_disk_full)
    }

    /// True when the process ran out of file descriptors (EMFILE, ENFILE).
    pub fn is_out_of_files(&self) -> bool {
        self.io_errors().into_iter().any(is_out_of_files)
    }
}

pub fn is_out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// Result alias for the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// File name of a segment file: base offset as 20 digits plus extension.
pub fn segment_file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}
