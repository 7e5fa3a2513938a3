//! The one error type of the event log.

use std::path::PathBuf;

use crate::version::{CurrentVersion, ExpectedVersion};

/// Everything that can go wrong in an event log operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The stream name is empty, too long, reserved or not printable.
    #[error("invalid stream name {stream:?}: {reason}")]
    InvalidStreamName { stream: String, reason: String },

    /// An event of the batch is malformed (index is its place in the batch).
    #[error("invalid event #{index} for stream {stream:?}: {reason}")]
    InvalidEvent { stream: String, index: usize, reason: String },

    /// An encoded event is over [`crate::MAX_EVENT_BYTES`].
    #[error("event #{index} for stream {stream:?} is {size} bytes encoded; the limit is {limit}")]
    EventTooLarge { stream: String, index: usize, size: usize, limit: usize },

    /// The whole append is over [`crate::MAX_BATCH_BYTES`] or has no events.
    #[error("invalid batch: {reason}")]
    InvalidBatch { reason: String },

    /// Optimistic concurrency: the stream is not at the expected version.
    #[error("wrong expected version for stream {stream:?}: expected {expected}, stream is at {actual}")]
    WrongExpectedVersion { stream: String, expected: ExpectedVersion, actual: CurrentVersion },

    /// The stream was hard-deleted: it can never be written or read again.
    #[error("stream {stream:?} is deleted (tombstoned)")]
    StreamDeleted { stream: String },

    /// The stream does not exist (never written, or soft-deleted).
    #[error("stream {stream:?} not found")]
    StreamNotFound { stream: String },

    /// An event id was already used for an event with other content, or a
    /// retried batch only partly matches the earlier append.
    #[error("event id {id} was already appended with different content or to a different stream ({detail})")]
    EventIdReused { id: uuid::Uuid, detail: String },

    /// Stored bytes fail their checksum or do not decode. Never served.
    #[error("corrupt log: {file}: at offset {offset}: {reason}")]
    Corrupt { file: PathBuf, offset: u64, reason: String },

    /// An I/O error (full disk included); nothing of the failed append was
    /// acknowledged and the log stays consistent.
    #[error("i/o error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The log hit an I/O error it could not roll back and refuses writes
    /// until it is reopened (reopening repairs the tail).
    #[error("log is unavailable for writes after an unrecoverable i/o error; reopen it: {reason}")]
    Poisoned { reason: String },

    /// The configured checkpoint signing key is not the one the log was
    /// created with.
    #[error(
        "log {} was created with signing key {recorded} (as its signing.pub records it), but it is being opened with {configured} (from the data directory's log-signing.key or PYPES_LOG_SIGNING_KEY)",
        dir.display()
    )]
    WrongSigningKey { dir: PathBuf, configured: String, recorded: String },

    /// Another process (or another `FileLog` in this one) has the log open.
    #[error("log directory {} is in use by another process", dir.display())]
    Locked { dir: PathBuf },

    /// The log was closed.
    #[error("log is closed")]
    Closed,

    /// The database of a database backend failed or refused (the message
    /// names the database, never its password).
    #[error("event log database: {detail}")]
    Database { detail: String },

    /// The database of a database backend cannot be reached: it stopped,
    /// a failover is under way, the network to it is cut, or the server
    /// reached takes no writes. The operation failed and may be retried;
    /// the log connects again by itself. An append whose connection broke
    /// during its COMMIT may have been written (its caller was not told
    /// "ok", and a retry with the same event ids is idempotent).
    #[error("event log database unreachable: {detail}")]
    Unreachable { detail: String },
}

/// Why a log refuses appends for now through no fault of the caller
/// ([`crate::EventLog::write_trouble`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteTrouble {
    /// The disk is full: appends resume once space is freed.
    StorageFull(String),
    /// The log's database cannot be reached: appends resume once it can.
    Unreachable(String),
}

impl std::fmt::Display for WriteTrouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteTrouble::StorageFull(t) => write!(f, "{t}; appends resume once space is freed"),
            WriteTrouble::Unreachable(t) => {
                write!(f, "the event log's database is unreachable: {t}; reads and writes resume once it is back")
            }
        }
    }
}

/// ENOSPC or EDQUOT, however the platform spells them.
pub fn is_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

impl LogError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io { context: context.into(), source }
    }

    /// True when the append failed because the disk is full (or over its
    /// quota): nothing of it was acknowledged, and appends work again by
    /// themselves once space is freed.
    pub fn is_storage_full(&self) -> bool {
        match self {
            LogError::Io { source, .. } => is_full(source),
            _ => false,
        }
    }

    /// True when the log's database cannot be reached for now (a database
    /// backend during a failover or a network cut): retry in a moment.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, LogError::Unreachable { .. })
    }

    /// True for errors caused by the caller's input rather than the log.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            LogError::InvalidStreamName { .. }
                | LogError::InvalidEvent { .. }
                | LogError::EventTooLarge { .. }
                | LogError::InvalidBatch { .. }
        )
    }
}
