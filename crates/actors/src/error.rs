//! What an actor call can fail with.

use domain::Rejection;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActorError {
    /// The domain refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("event log: {0}")]
    Log(#[from] eventlog::LogError),
    #[error("key store: {0}")]
    Keys(#[from] keystore::KeyError),
    /// A stored event that does not decode: names the stream, version and why.
    #[error("stored event {stream}@{version} does not decode: {reason}")]
    Corrupt { stream: String, version: u64, reason: String },
    /// Writers kept conflicting (another node writes the same stream).
    #[error("stream {stream} kept changing under {attempts} attempts")]
    Contended { stream: String, attempts: u32 },
    /// One failure shared by the commands of a batch (or of the commands
    /// waiting for a state that did not load).
    #[error("{0}")]
    Batch(std::sync::Arc<ActorError>),
    /// The actor stopped or its mailbox is gone.
    #[error("actor unavailable: {0}")]
    Unavailable(String),
}

impl ActorError {
    /// The log's or the key store's disk is full (also when a batch
    /// shares the failure).
    pub fn is_storage_full(&self) -> bool {
        self.full_store().is_some()
    }

    /// Which store's disk is full: "event log" or "key store".
    pub fn full_store(&self) -> Option<&'static str> {
        match self {
            ActorError::Log(e) if e.is_storage_full() => Some("event log"),
            ActorError::Keys(e) if e.is_storage_full() => Some("key store"),
            ActorError::Batch(inner) => inner.full_store(),
            _ => None,
        }
    }

    /// The log's or the key store's database cannot be reached for now (a
    /// failover, a network cut): the caller may retry in a moment.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ActorError::Log(e) => e.is_unreachable(),
            ActorError::Keys(keystore::KeyError::Unreachable { .. }) => true,
            ActorError::Batch(inner) => inner.is_unreachable(),
            _ => false,
        }
    }
}

impl From<events::CodecError> for ActorError {
    fn from(e: events::CodecError) -> Self {
        match e {
            events::CodecError::Keys(k) => Self::Keys(k),
            events::CodecError::Corrupt { stream, version, reason } => Self::Corrupt { stream, version, reason },
            other => Self::Corrupt { stream: String::new(), version: 0, reason: other.to_string() },
        }
    }
}
