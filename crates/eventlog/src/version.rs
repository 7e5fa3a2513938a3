//! Stream versions: what a writer expects and what a stream has.

use std::fmt;

/// What the writer believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events (never written or soft-deleted).
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last event has exactly this version.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Where a stream stands, as reported in a version conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentVersion {
    /// The stream has no events (never written, or soft-deleted).
    NoStream,
    /// The version of the stream's last event.
    Version(u64),
}

impl fmt::Display for CurrentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurrentVersion::NoStream => f.write_str("no stream"),
            CurrentVersion::Version(v) => write!(f, "version {v}"),
        }
    }
}
