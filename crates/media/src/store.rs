//! The blob store port: where sealed blobs are kept. A store sees only
//! ciphertext (the `sealed` format) and opaque ids.
//!
//! The life of a blob: [`BlobStore::create`] starts an upload that nothing
//! can read; [`BlobWriter::commit`] makes it durable and readable but
//! *unconfirmed*; once the Session has recorded it (`MediaUploaded`),
//! [`BlobStore::confirm`] drops the mark. A crash between commit and confirm
//! leaves an unconfirmed blob that [`BlobStore::unconfirmed`] lists, so the
//! server can check the log and keep or delete it; a crash before commit
//! leaves an incomplete upload that [`BlobStore::sweep_incomplete`] removes.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use uuid::Uuid;

/// Where a blob belongs: the tenant, the Session, and its own id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId {
    pub tenant: Uuid,
    pub session: Uuid,
    pub media: Uuid,
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.session, self.media)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(BlobId),
    #[error("blob {id}: {what}: {source}")]
    Io {
        id: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("blob store: {0}")]
    Backend(String),
    #[error("blob {id}: a read of {len} bytes at {offset} goes past its end ({size} bytes)")]
    OutOfRange { id: BlobId, offset: u64, len: usize, size: u64 },
}

impl BlobError {
    pub(crate) fn io(id: impl fmt::Display, what: &'static str, source: std::io::Error) -> Self {
        BlobError::Io { id: id.to_string(), what, source }
    }
}

/// The port. Every method is safe to call again after a crash or an error
/// (deletes of what is gone succeed).
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// e.g. `file:/var/lib/pypes/blobs`.
    fn describe(&self) -> String;
    /// Whether other nodes write to this store too (then no node may
    /// assume that nothing is in flight, not even at its own start).
    fn shared(&self) -> bool {
        false
    }
    /// Starts an upload; nothing is readable until [`BlobWriter::commit`].
    async fn create(&self, id: BlobId) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// A committed blob.
    async fn open(&self, id: BlobId) -> Result<Box<dyn BlobReader>, BlobError>;
    /// Confirms a committed blob (the log has recorded it).
    async fn confirm(&self, id: BlobId) -> Result<(), BlobError>;
    /// Deletes one blob (committed or not); false when there was none.
    async fn delete(&self, id: BlobId) -> Result<bool, BlobError>;
    /// Deletes every blob of a Session, uploads in flight included;
    /// returns how many blobs were deleted.
    async fn delete_session(&self, tenant: Uuid, session: Uuid) -> Result<usize, BlobError>;
    /// Deletes every blob of a tenant.
    async fn delete_tenant(&self, tenant: Uuid) -> Result<usize, BlobError>;
    /// Removes incomplete uploads not written to for `idle` (all of them
    /// when `idle` is zero) except those in `live`; returns their ids. An
    /// upload in progress counts as written to at least every 30 s.
    async fn sweep_incomplete(&self, idle: Duration, live: &HashSet<BlobId>) -> Result<Vec<BlobId>, BlobError>;
    /// Every committed blob of a tenant (confirmed or not), sorted (a
    /// tenant moving to another region).
    async fn committed_of(&self, tenant: Uuid) -> Result<Vec<BlobId>, BlobError>;
    /// Committed blobs not confirmed within `older_than`.
    async fn unconfirmed(&self, older_than: Duration) -> Result<Vec<BlobId>, BlobError>;
}

/// An upload in progress.
#[async_trait::async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: Vec<u8>) -> Result<(), BlobError>;
    /// Durable (fsync'd) and readable when this returns; unconfirmed.
    async fn commit(self: Box<Self>) -> Result<(), BlobError>;
    /// Removes what was written.
    async fn abort(self: Box<Self>) -> Result<(), BlobError>;
}

/// A committed blob, read by ranges.
#[async_trait::async_trait]
pub trait BlobReader: Send + Sync {
    /// Stored bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly `len` bytes at `offset`.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BlobError>;
}
