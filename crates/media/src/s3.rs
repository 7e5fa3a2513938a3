//! An S3-compatible blob store (AWS S3, MinIO, Ceph RGW, ...) through
//! `object_store` (the `s3` feature).
//!
//! ```text
//! <prefix>blobs/<tenant>/<session>/<media>.blob     committed blobs
//! <prefix>unconfirmed/<tenant>/<session>/<media>    committed, not yet recorded
//! <prefix>incoming/<tenant>/<session>/<media>       uploads in flight
//! ```
//!
//! A blob is a multipart upload that becomes visible, whole, when it is
//! completed (S3 writes are atomic per object and durable when the request
//! returns). Parts of an upload that was never completed are invisible; the
//! `incoming/` mark lets the sweep find it (to shred its key), but S3 keeps
//! the parts until a bucket lifecycle rule (`AbortIncompleteMultipartUpload`)
//! removes them: `docs/media.md` says how to set one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload};
use uuid::Uuid;

use crate::store::{BlobError, BlobId, BlobReader, BlobStore, BlobWriter};

/// Bytes per multipart part (S3's minimum is 5 MiB for all but the last).
const PART: usize = 8 << 20;
/// How often an upload in progress renews its `incoming/` mark, so the
/// sweep (on any node) sees it as alive: a mark's age is since its last
/// write.
const MARK_REFRESH: Duration = Duration::from_secs(30);

/// Where the store is.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub bucket: String,
    /// e.g. `http://127.0.0.1:9000` for MinIO; empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// Keys (from config or the environment: AWS_ACCESS_KEY_ID, ...).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Object names start with this (e.g. `pypes/`).
    pub prefix: String,
    /// Plain HTTP (a local test server only).
    pub allow_http: bool,
}

#[derive(Clone, Debug)]
pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    describe: String,
}

fn backend(e: object_store::Error) -> BlobError {
    BlobError::Backend(e.to_string())
}

fn parse_triple(rest: &str) -> Option<BlobId> {
    let mut parts = rest.trim_end_matches(".blob").split('/');
    let id = BlobId {
        tenant: Uuid::parse_str(parts.next()?).ok()?,
        session: Uuid::parse_str(parts.next()?).ok()?,
        media: Uuid::parse_str(parts.next()?).ok()?,
    };
    parts.next().is_none().then_some(id)
}

impl S3BlobStore {
    pub fn new(config: &S3Config) -> Result<Self, BlobError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if !config.endpoint.is_empty() {
            builder = builder.with_endpoint(&config.endpoint);
        }
        if !config.region.is_empty() {
            builder = builder.with_region(&config.region);
        }
        if !config.access_key_id.is_empty() {
            builder =
                builder.with_access_key_id(&config.access_key_id).with_secret_access_key(&config.secret_access_key);
        }
        let store = builder.with_allow_http(config.allow_http).build().map_err(backend)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.clone(),
            describe: format!("s3://{}/{}", config.bucket, config.prefix),
        })
    }

    fn path(&self, kind: &str, id: &BlobId) -> Path {
        let suffix = if kind == "blobs" { ".blob" } else { "" };
        Path::from(format!("{}{kind}/{}/{}/{}{suffix}", self.prefix, id.tenant, id.session, id.media))
    }

    fn dir(&self, kind: &str, tail: &str) -> Path {
        Path::from(format!("{}{kind}/{tail}", self.prefix))
    }

    async fn delete_quietly(&self, path: &Path) -> Result<(), BlobError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// Objects under `prefix`: (id, age).
    async fn listed(&self, kind: &str, tail: &str) -> Result<Vec<(BlobId, Path, Duration)>, BlobError> {
        let root = format!("{}{kind}/", self.prefix);
        let mut out = Vec::new();
        let mut stream = self.store.list(Some(&self.dir(kind, tail)));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(backend)?;
            let name = meta.location.to_string();
            let Some(id) = name.strip_prefix(&root).and_then(parse_triple) else { continue };
            let age = (chrono::Utc::now() - meta.last_modified).to_std().unwrap_or_default();
            out.push((id, meta.location, age));
        }
        Ok(out)
    }

    async fn delete_under(&self, tail: &str) -> Result<usize, BlobError> {
        let mut blobs = 0;
        for kind in ["blobs", "unconfirmed", "incoming"] {
            for (_, path, _) in self.listed(kind, tail).await? {
                self.delete_quietly(&path).await?;
                blobs += usize::from(kind == "blobs");
            }
        }
        Ok(blobs)
    }
}

#[async_trait::async_trait]
impl BlobStore for S3BlobStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn create(&self, id: BlobId) -> Result<Box<dyn BlobWriter>, BlobError> {
        self.store.put(&self.path("incoming", &id), PutPayload::new()).await.map_err(backend)?;
        let upload = self.store.put_multipart(&self.path("blobs", &id)).await.map_err(backend)?;
        Ok(Box::new(S3Writer {
            id,
            store: self.clone(),
            upload,
            buffer: Vec::with_capacity(PART),
            marked: Instant::now(),
        }))
    }

    async fn open(&self, id: BlobId) -> Result<Box<dyn BlobReader>, BlobError> {
        let path = self.path("blobs", &id);
        let meta = match self.store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(id)),
            Err(e) => return Err(backend(e)),
        };
        Ok(Box::new(S3Reader { id, store: self.store.clone(), path, len: meta.size }))
    }

    async fn confirm(&self, id: BlobId) -> Result<(), BlobError> {
        self.delete_quietly(&self.path("unconfirmed", &id)).await
    }

    async fn delete(&self, id: BlobId) -> Result<bool, BlobError> {
        let path = self.path("blobs", &id);
        let existed = match self.store.head(&path).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(backend(e)),
        };
        for kind in ["blobs", "unconfirmed", "incoming"] {
            self.delete_quietly(&self.path(kind, &id)).await?;
        }
        Ok(existed)
    }

    async fn delete_session(&self, tenant: Uuid, session: Uuid) -> Result<usize, BlobError> {
        self.delete_under(&format!("{tenant}/{session}")).await
    }

    async fn delete_tenant(&self, tenant: Uuid) -> Result<usize, BlobError> {
        self.delete_under(&tenant.to_string()).await
    }

    async fn sweep_incomplete(&self, idle: Duration, live: &HashSet<BlobId>) -> Result<Vec<BlobId>, BlobError> {
        let mut removed = Vec::new();
        for (id, path, age) in self.listed("incoming", "").await? {
            if !live.contains(&id) && (idle.is_zero() || age >= idle) {
                self.delete_quietly(&path).await?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    async fn committed_of(&self, tenant: Uuid) -> Result<Vec<BlobId>, BlobError> {
        let mut ids: Vec<BlobId> =
            self.listed("blobs", &format!("{tenant}/")).await?.into_iter().map(|(id, _, _)| id).collect();
        ids.sort();
        Ok(ids)
    }

    async fn unconfirmed(&self, older_than: Duration) -> Result<Vec<BlobId>, BlobError> {
        Ok(self
            .listed("unconfirmed", "")
            .await?
            .into_iter()
            .filter(|(_, _, age)| older_than.is_zero() || *age >= older_than)
            .map(|(id, _, _)| id)
            .collect())
    }
}

struct S3Writer {
    id: BlobId,
    store: S3BlobStore,
    upload: Box<dyn MultipartUpload>,
    buffer: Vec<u8>,
    /// When the `incoming/` mark was last written.
    marked: Instant,
}

impl S3Writer {
    async fn flush(&mut self) -> Result<(), BlobError> {
        let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART));
        self.upload.put_part(PutPayload::from(part)).await.map_err(backend)
    }
}

#[async_trait::async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, data: Vec<u8>) -> Result<(), BlobError> {
        if self.marked.elapsed() >= MARK_REFRESH {
            self.store.store.put(&self.store.path("incoming", &self.id), PutPayload::new()).await.map_err(backend)?;
            self.marked = Instant::now();
        }
        self.buffer.extend_from_slice(&data);
        if self.buffer.len() >= PART {
            self.flush().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), BlobError> {
        if !self.buffer.is_empty() {
            self.flush().await?;
        }
        let id = self.id;
        self.store.store.put(&self.store.path("unconfirmed", &id), PutPayload::new()).await.map_err(backend)?;
        self.upload.complete().await.map_err(backend)?;
        self.store.delete_quietly(&self.store.path("incoming", &id)).await
    }

    async fn abort(mut self: Box<Self>) -> Result<(), BlobError> {
        let aborted = self.upload.abort().await.map_err(backend);
        self.store.delete_quietly(&self.store.path("incoming", &self.id)).await?;
        aborted
    }
}

struct S3Reader {
    id: BlobId,
    store: Arc<dyn ObjectStore>,
    path: Path,
    len: u64,
}

#[async_trait::async_trait]
impl BlobReader for S3Reader {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        let end = offset.checked_add(len as u64).filter(|end| *end <= self.len);
        let Some(end) = end else {
            return Err(BlobError::OutOfRange { id: self.id, offset, len, size: self.len });
        };
        let bytes = self.store.get_range(&self.path, offset..end).await.map_err(backend)?;
        Ok(bytes.to_vec())
    }
}
