//! The one error type of the key store, its providers and the keyring.

use std::path::PathBuf;

use uuid::Uuid;

use crate::id::KeyId;

/// Everything that can go wrong while keeping or using keys. A shredded key
/// is not an error: opening with one gives [`crate::Opened::Erased`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A ciphertext or wrapped key failed authentication: it was altered, or
    /// moved to another tenant, stream, event, field or key.
    #[error("integrity check failed: {what}")]
    Integrity { what: String },
    /// A sealed field names a key this store never issued.
    #[error("unknown key {key} for tenant {tenant}")]
    UnknownKey { tenant: Uuid, key: KeyId },
    /// A key was asked for under another tenant than the one owning it.
    #[error("key {key} belongs to another tenant than {tenant}")]
    WrongTenant { tenant: Uuid, key: KeyId },
    /// The sealed field carries another field name than the one asked for.
    #[error("sealed field is named {found:?}, expected {expected:?}")]
    FieldMismatch { expected: String, found: String },
    /// Input that cannot be a sealed field, key id or setting.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The tenant's KEK was shredded (offboarded): no key can be made for it.
    #[error("tenant {tenant} was shredded; no new keys can be made for it")]
    TenantShredded { tenant: Uuid },
    /// The root key does not open the provider's state.
    #[error(
        "root key does not match {path}: it was made with another root key (check the data directory's root.key or PYPES_ROOT_KEY); refusing to start"
    )]
    RootKeyMismatch { path: PathBuf },
    /// Key material exists but no root key was given.
    #[error("no root key: {detail}")]
    RootKeyMissing { detail: String },
    /// A stored KEK names an epoch the provider no longer (or never) had.
    #[error("epoch {epoch} is not available at the root-key provider ({detail})")]
    EpochUnavailable { epoch: u32, detail: String },
    /// A file of the key store or provider is damaged.
    #[error("corrupt key-store file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A directory that is not (only) a key store.
    #[error("{dir} is not a key store: {reason}")]
    NotAKeyStore { dir: PathBuf, reason: String },
    /// Another process holds the key store.
    #[error("key store {dir} is locked by another process")]
    Locked { dir: PathBuf },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write failed part-way; the store refuses writes until it has read
    /// its files back and repaired what the failed write left, which it
    /// tries by itself (at most once a second) on the next write.
    #[error("key store refuses writes after a failed write ({reason}); it retries once the disk takes writes again")]
    Poisoned { reason: String, storage_full: bool },
    /// The key store's database failed or refused.
    #[error("key store database {store}: {detail}")]
    Database { store: String, detail: String },
    /// The key store's database cannot be reached (stopped, failing over,
    /// network cut): the call failed and may be retried; the store
    /// connects again by itself.
    #[error("key store database {store} unreachable: {detail}")]
    Unreachable { store: String, detail: String },
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// A blocking task of the keyring did not finish (runtime shut down).
    #[error("key store task failed: {0}")]
    Task(String),
}

impl KeyError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// The key store's disk is full (or over quota): also when the store
    /// refuses writes after a write failed that way.
    pub fn is_storage_full(&self) -> bool {
        match self {
            KeyError::Io { source, .. } => eventlog::is_storage_full(source),
            KeyError::Poisoned { storage_full, .. } => *storage_full,
            _ => false,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt { path: path.into(), reason: reason.into() }
    }
}
