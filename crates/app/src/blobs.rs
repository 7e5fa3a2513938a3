//! Where media live: the blob store, the upload pipeline (seal as it
//! arrives, check, commit, record) and the reader of a range; the media
//! service (the `media` module) drives them.
//!
//! Pictures, files and video in Sessions.
//!
//! An upload streams in as chunks; each 1 MiB of plaintext is sealed under
//! the blob's own media key as it arrives (`media::sealed`) and written to
//! the blob store, so memory stays bounded whatever the size. Only when
//! the blob is complete, its size and SHA-256 checked and fsync'd, does
//! the Session record `MediaUploaded`; from then on messages may reference
//! it. Any failure (bad input, a stalled or vanished client, a refusal by
//! the Session) deletes what was written and shreds the key.
//!
//! Crash safety: the blob store marks committed blobs *unconfirmed* until
//! the Session has recorded them. At start and every `media.sweep_secs`,
//! [`Media::reconcile`] removes incomplete uploads and settles each
//! unconfirmed blob against the log (kept when recorded, deleted when not).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::Registry;
use domain::session::{MediaMeta, Session};
use keystore::{Keyring, ShredTarget};
use media::sealed::{Decryptor, Encryptor, FormatError, HEADER_LEN, Header};
use media::{BlobError, BlobId, BlobStore, BlobWriter};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{AppError, parse_id};

/// The largest `data` of one upload message.
pub const MAX_UPLOAD_MESSAGE: usize = 3 << 20;

/// What a tenant may upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPolicy {
    pub max_bytes: u64,
    pub allowed_types: Vec<String>,
}

/// Where blobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobStoreConfig {
    /// `<data dir>/blobs`.
    File,
    S3 {
        bucket: String,
        endpoint: String,
        region: String,
        prefix: String,
        allow_http: bool,
    },
}

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub default: MediaPolicy,
    pub tenants: std::collections::HashMap<uuid::Uuid, MediaPolicy>,
    pub upload_idle_secs: u64,
    pub sweep_secs: u64,
    pub store: BlobStoreConfig,
}

impl MediaConfig {
    pub fn policy(&self, tenant: uuid::Uuid) -> &MediaPolicy {
        self.tenants.get(&tenant).unwrap_or(&self.default)
    }
}

/// Types allowed when the config names none: common pictures, video,
/// audio and documents. Never HTML or SVG (script in a file a browser may
/// open inline).
pub const DEFAULT_MEDIA_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/heic",
    "video/mp4",
    "video/webm",
    "video/quicktime",
    "audio/mpeg",
    "audio/ogg",
    "audio/mp4",
    "application/pdf",
    "text/plain",
];

/// 500 MiB.
pub const DEFAULT_MEDIA_MAX_BYTES: u64 = 500 << 20;
/// The blob store and what is in flight on this node.
pub struct Media {
    pub store: Arc<dyn BlobStore>,
    pub config: MediaConfig,
    /// Uploads in progress here: the sweep leaves them alone.
    live: Mutex<HashSet<BlobId>>,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media").field("store", &self.store.describe()).finish()
    }
}

/// Opens the configured blob store.
pub fn open_store(config: &MediaConfig, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn BlobStore>> {
    match &config.store {
        BlobStoreConfig::File => Ok(Arc::new(media::FileBlobStore::open(&data_dir.join("blobs"))?)),
        #[cfg(feature = "s3")]
        BlobStoreConfig::S3 { bucket, endpoint, region, prefix, allow_http } => {
            Ok(Arc::new(media::s3::S3BlobStore::new(&media::s3::S3Config {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
                region: region.clone(),
                prefix: prefix.clone(),
                allow_http: *allow_http,
                ..Default::default()
            })?))
        }
        #[cfg(not(feature = "s3"))]
        BlobStoreConfig::S3 { .. } => anyhow::bail!(
            "media.store = \"s3\": this pypes was built without the s3 feature (cargo build --release --features s3)"
        ),
    }
}

/// Removes `id` from the live set when dropped.
pub(crate) struct LiveGuard<'a>(&'a Media, BlobId);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

impl Media {
    pub fn new(store: Arc<dyn BlobStore>, config: MediaConfig) -> Self {
        Self { store, config, live: Mutex::new(HashSet::new()) }
    }

    pub(crate) fn live(&self, id: BlobId) -> LiveGuard<'_> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        LiveGuard(self, id)
    }

    fn live_now(&self) -> HashSet<BlobId> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes what a failed upload left: the blob (committed or not) and
    /// its key. Errors are logged: the sweep retries what this misses.
    pub(crate) async fn discard(&self, keyring: &Keyring, id: BlobId) {
        if let Err(e) = self.store.delete(id).await {
            tracing::warn!(blob = %id, error = %e, "discarding a failed upload; the sweep will retry");
        }
        let target = ShredTarget::Media { session: id.session, media: id.media };
        if let Err(e) = keyring.shred(id.tenant, target).await {
            tracing::warn!(blob = %id, error = %e, "shredding a failed upload's key");
        }
    }

    /// Settles what a crash or a vanished client left. `all`: at start,
    /// when nothing is in flight on this node (and the store is this
    /// node's alone: in a shared store other nodes' uploads may be in
    /// flight); else only what has been idle a while.
    pub async fn reconcile(
        &self,
        registry: &Registry,
        keyring: &Keyring,
        all: bool,
    ) -> Result<(usize, usize), AppError> {
        let all = all && !self.store.shared();
        let idle = if all { Duration::ZERO } else { Duration::from_secs(4 * self.config.upload_idle_secs.max(15)) };
        let live = self.live_now();
        let incomplete = self.store.sweep_incomplete(idle, &live).await?;
        for id in &incomplete {
            keyring.shred(id.tenant, ShredTarget::Media { session: id.session, media: id.media }).await?;
        }
        let mut dropped = 0;
        for id in self.store.unconfirmed(if all { Duration::ZERO } else { Duration::from_secs(600) }).await? {
            if live.contains(&id) {
                continue;
            }
            let recorded = match registry.read::<Session>(id.tenant, id.session).await {
                Ok(s) => s.state.media.contains_key(&id.media),
                Err(actors::ActorError::Rejected(domain::Rejection::NotFound { .. })) => false,
                Err(e) => return Err(e.into()),
            };
            if recorded {
                self.store.confirm(id).await?;
            } else {
                self.discard(keyring, id).await;
                dropped += 1;
            }
        }
        if !incomplete.is_empty() || dropped > 0 {
            tracing::info!(
                incomplete = incomplete.len(),
                unrecorded = dropped,
                "media: cleaned up after interrupted uploads"
            );
        }
        Ok((incomplete.len(), dropped))
    }

    /// Reconciles every `sweep_secs` for the life of the process.
    pub async fn sweep(self: Arc<Self>, registry: Arc<Registry>, keyring: Keyring) {
        let period = Duration::from_secs(self.config.sweep_secs);
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = self.reconcile(&registry, &keyring, false).await {
                tracing::warn!(error = %e, "media sweep failed; retrying next period");
            }
        }
    }
}

pub(crate) fn format_error(e: FormatError) -> AppError {
    match e {
        FormatError::TooLong { .. } | FormatError::TooShort { .. } => AppError::invalid("size", e.to_string()),
        FormatError::Digest { .. } => AppError::DataLoss(format!("sha256: {e}")),
        other => AppError::Internal(other.to_string()),
    }
}

/// An upload's first message, checked.
pub(crate) struct Start {
    pub(crate) session: Uuid,
    pub(crate) uploader: Uuid,
    pub(crate) content_type: String,
    pub(crate) size: u64,
    pub(crate) sha256: Vec<u8>,
    pub(crate) file_name: Option<String>,
}

pub(crate) fn start_in(config: &MediaConfig, tenant: Uuid, s: UploadStart) -> Result<Start, AppError> {
    let policy = config.policy(tenant);
    let content_type = s.content_type.trim().to_ascii_lowercase();
    if content_type.is_empty() {
        return Err(AppError::invalid("start.content_type", "is required (e.g. \"image/png\")"));
    }
    if !policy.allowed_types.contains(&content_type) {
        return Err(AppError::invalid(
            "start.content_type",
            format!("{} is not allowed; allowed: {}", domain::quote(&content_type), policy.allowed_types.join(", ")),
        ));
    }
    if s.size == 0 {
        return Err(AppError::invalid("start.size", "0: an upload holds at least one byte"));
    }
    if s.size > policy.max_bytes {
        return Err(AppError::invalid(
            "start.size",
            format!("{} bytes is over the limit of {} bytes", s.size, policy.max_bytes),
        ));
    }
    if !s.sha256.is_empty() && s.sha256.len() != 32 {
        return Err(AppError::invalid(
            "start.sha256",
            format!("{} bytes; a SHA-256 is 32 (or leave it empty)", s.sha256.len()),
        ));
    }
    let file_name = (!s.file_name.is_empty()).then_some(s.file_name);
    let probe = MediaMeta {
        uploader: Uuid::nil(),
        content_type: content_type.clone(),
        size: s.size,
        sha256: vec![0; 32],
        file_name: file_name.clone(),
        key_id: Uuid::nil(),
        at_micros: 0,
    };
    domain::session::check_media_meta(&probe).map_err(AppError::rejected)?;
    Ok(Start {
        session: parse_id("start.session_id", &s.session_id)?,
        uploader: parse_id("start.uploader_id", &s.uploader_id)?,
        content_type,
        size: s.size,
        sha256: s.sha256,
        file_name,
    })
}

/// An upload's first message, as the request gives it.
pub struct UploadStart {
    pub session_id: String,
    pub uploader_id: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: Vec<u8>,
    pub file_name: String,
}

/// One message of an upload.
pub enum UploadPart {
    Start(UploadStart),
    Chunk {
        offset: u64,
        data: Vec<u8>,
    },
    /// A message that holds neither.
    Empty,
}

/// An upload's messages as the edge receives them (`Err`: the client's
/// stream failed, with its message).
pub type UploadStream = mpsc::Receiver<Result<UploadPart, String>>;

/// The next message of an upload, within the idle limit.
pub(crate) async fn next(
    stream: &mut UploadStream,
    idle: Duration,
    received: u64,
) -> Result<Option<UploadPart>, AppError> {
    match tokio::time::timeout(idle, stream.recv()).await {
        Err(_) => Err(AppError::Deadline(format!(
            "no upload message for {} s after {received} bytes; the upload was dropped",
            idle.as_secs()
        ))),
        Ok(Some(Err(message))) => Err(AppError::invalid("stream", format!("the upload stream failed: {message}"))),
        Ok(Some(Ok(m))) => Ok(Some(m)),
        Ok(None) => Ok(None),
    }
}

/// Writes what `rx` brings into `writer` (its own task, so the next chunk
/// is received and sealed while this one is written); gives the writer
/// back with the first error.
async fn write_all(
    mut writer: Box<dyn BlobWriter>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> (Box<dyn BlobWriter>, Result<(), BlobError>) {
    while let Some(sealed) = rx.recv().await {
        if let Err(e) = writer.write(sealed).await {
            return (writer, Err(e));
        }
    }
    (writer, Ok(()))
}

/// Streams the chunks through `enc` into `writer`; gives the writer back
/// with the SHA-256 of the plaintext, or the first error.
pub(crate) async fn receive(
    stream: &mut UploadStream,
    writer: Box<dyn BlobWriter>,
    enc: Encryptor,
    idle: Duration,
) -> (Box<dyn BlobWriter>, Result<[u8; 32], AppError>) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let writing = tokio::spawn(write_all(writer, rx));
    let fed = feed(stream, enc, idle, tx).await;
    let (writer, written) = match writing.await {
        Ok(done) => done,
        Err(e) => {
            // The task panicked: nothing is left to clean up with.
            return (Box::new(Lost), Err(AppError::Internal(format!("blob writer task: {e}"))));
        }
    };
    // A write error explains a failed feed (the channel closed under it).
    let result = match (written, fed) {
        (Err(e), _) => Err(e.into()),
        (Ok(()), fed) => fed,
    };
    (writer, result)
}

/// A writer that was lost with a panicked task: the sweep removes its
/// file.
struct Lost;

#[async_trait::async_trait]
impl BlobWriter for Lost {
    async fn write(&mut self, _: Vec<u8>) -> Result<(), BlobError> {
        Err(BlobError::Backend("the blob writer was lost".into()))
    }
    async fn commit(self: Box<Self>) -> Result<(), BlobError> {
        Err(BlobError::Backend("the blob writer was lost".into()))
    }
    async fn abort(self: Box<Self>) -> Result<(), BlobError> {
        Ok(())
    }
}

/// Reads the upload's chunks, seals them and sends them to the writer.
async fn feed(
    stream: &mut UploadStream,
    mut enc: Encryptor,
    idle: Duration,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<[u8; 32], AppError> {
    let closed = || AppError::Internal("the blob writer stopped".into());
    tx.send(enc.header().encode().to_vec()).await.map_err(|_| closed())?;
    while let Some(message) = next(stream, idle, enc.received()).await? {
        let (offset, data) = match message {
            UploadPart::Chunk { offset, data } => (offset, data),
            UploadPart::Start(_) => {
                return Err(AppError::invalid("start", "sent twice; an upload has one start, then chunks"));
            }
            UploadPart::Empty => return Err(AppError::invalid("part", "an upload message holds a start or a chunk")),
        };
        if offset != enc.received() {
            return Err(AppError::invalid(
                "chunk.offset",
                format!("{}; expected {} (chunks come in order, without gaps or overlaps)", offset, enc.received()),
            ));
        }
        if data.len() > MAX_UPLOAD_MESSAGE {
            return Err(AppError::invalid(
                "chunk.data",
                format!("{} bytes; at most {MAX_UPLOAD_MESSAGE} per message", data.len()),
            ));
        }
        for sealed in enc.push(&data).map_err(format_error)? {
            tx.send(sealed).await.map_err(|_| closed())?;
        }
    }
    let (last, digest) = enc.finish().map_err(format_error)?;
    if let Some(last) = last {
        tx.send(last).await.map_err(|_| closed())?;
    }
    Ok(digest)
}

/// A media item as answers describe it.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    pub session: Uuid,
    pub media: Uuid,
    pub meta: MediaMeta,
}

/// A piece of a download: the first carries the description.
pub struct DownloadChunk {
    pub media: Option<MediaInfo>,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A download ready to stream.
pub struct Download {
    pub(crate) reader: Box<dyn media::BlobReader>,
    pub(crate) dec: Decryptor,
    pub(crate) info: MediaInfo,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Download {
    /// Reads, decrypts and sends the chunks of the range to `tx`.
    pub async fn send(self, tx: mpsc::Sender<Result<DownloadChunk, AppError>>) {
        send_range(self.reader, self.dec, self.info, self.offset, self.len, tx).await
    }
}

/// Reads the stored chunks of `indexes` ahead of their decryption.
async fn read_ahead(
    reader: Box<dyn media::BlobReader>,
    ranges: Vec<(u64, usize)>,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, BlobError>>,
) {
    for (at, len) in ranges {
        let read = reader.read_at(at, len).await;
        let failed = read.is_err();
        if tx.send(read).await.is_err() || failed {
            return;
        }
    }
}

/// Opens a media blob for reading and checks its header against what the
/// log recorded (`meta`): a missing blob, an unreadable or foreign header
/// is DATA_LOSS naming the media. Downloads and `pypes check` both read
/// blobs through here.
pub async fn open_blob(
    store: &dyn BlobStore,
    id: BlobId,
    meta: &domain::session::MediaMeta,
) -> Result<(Box<dyn media::BlobReader>, Header), AppError> {
    let media_id = id.media;
    let reader = match store.open(id).await {
        Ok(r) => r,
        Err(BlobError::NotFound(_)) => {
            return Err(AppError::DataLoss(format!("the blob of media {media_id} is missing from the blob store")));
        }
        Err(e) => return Err(e.into()),
    };
    let header = match reader.read_at(0, HEADER_LEN).await {
        Ok(bytes) => Header::decode(&bytes).map_err(|e| AppError::DataLoss(format!("media {media_id}: {e}")))?,
        Err(e @ (BlobError::OutOfRange { .. } | BlobError::Io { .. })) => {
            return Err(AppError::DataLoss(format!("media {media_id}: the stored blob cannot be read whole: {e}")));
        }
        Err(e) => return Err(e.into()),
    };
    if header.id != id || header.key_id != meta.key_id || header.size != meta.size {
        return Err(AppError::DataLoss(format!("media {media_id}: the blob's header does not match the log")));
    }
    Ok((reader, header))
}

/// Reads, decrypts and sends the chunks covering [offset, offset + len).
async fn send_range(
    reader: Box<dyn media::BlobReader>,
    dec: Decryptor,
    first: MediaInfo,
    offset: u64,
    len: u64,
    tx: mpsc::Sender<Result<DownloadChunk, AppError>>,
) {
    let media_id = first.media;
    let mut first = Some(first);
    let mut at = offset;
    let indexes = dec.chunks_of(offset, len);
    let (read_tx, mut reads) = tokio::sync::mpsc::channel(2);
    tokio::spawn(read_ahead(reader, indexes.clone().map(|i| dec.stored_range(i)).collect(), read_tx));
    for index in indexes {
        let plain = match reads.recv().await {
            // A chunk that fails authentication, or a blob shorter than its
            // header says, is damage: DATA_LOSS naming the media, never
            // other bytes.
            Some(Ok(stored)) => dec
                .open(index, stored, offset, len)
                .map_err(|e| AppError::DataLoss(format!("media {media_id}: chunk {index} is damaged: {e}"))),
            Some(Err(e @ (BlobError::OutOfRange { .. } | BlobError::Io { .. }))) => {
                Err(AppError::DataLoss(format!("media {media_id}: the stored blob cannot be read whole: {e}")))
            }
            Some(Err(e)) => Err(AppError::from(e)),
            None => Err(AppError::Internal("the blob reader stopped".into())),
        };
        let item = plain.map(|data| {
            let chunk = DownloadChunk { media: first.take(), offset: at, data: data.to_vec() };
            at += chunk.data.len() as u64;
            chunk
        });
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
    if let Some(media) = first {
        // An empty range: the description alone.
        let _ = tx.send(Ok(DownloadChunk { media: Some(media), offset, data: Vec::new() })).await;
    }
}
