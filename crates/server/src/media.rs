//! `MediaService`: pictures, files and video in Sessions.
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
use std::time::{Duration, Instant};

use domain::session::{Attachment, MediaMeta, Session, SessionCommand};
use keystore::{KeyId, Keyring, ShredTarget};
use media::sealed::{self, Decryptor, Encryptor, FormatError, HEADER_LEN, Header};
use media::{BlobError, BlobId, BlobStore, BlobWriter};
use proto::api as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};
use uuid::Uuid;

use crate::api::{Api, Handle, in_method};
use crate::config::{BlobStoreConfig, MediaConfig};
use crate::error::{ApiError, parse_id};

/// The largest `data` of one upload message.
pub const MAX_UPLOAD_MESSAGE: usize = 3 << 20;

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
struct LiveGuard<'a>(&'a Media, BlobId);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

impl Media {
    pub fn new(store: Arc<dyn BlobStore>, config: MediaConfig) -> Self {
        Self { store, config, live: Mutex::new(HashSet::new()) }
    }

    fn live(&self, id: BlobId) -> LiveGuard<'_> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        LiveGuard(self, id)
    }

    fn live_now(&self) -> HashSet<BlobId> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Removes what a failed upload left: the blob (committed or not) and
    /// its key. Errors are logged: the sweep retries what this misses.
    async fn discard(&self, keyring: &Keyring, id: BlobId) {
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
    pub async fn reconcile(&self, api: &Api, all: bool) -> Result<(usize, usize), ApiError> {
        let all = all && !self.store.shared();
        let idle = if all { Duration::ZERO } else { Duration::from_secs(4 * self.config.upload_idle_secs.max(15)) };
        let live = self.live_now();
        let incomplete = self.store.sweep_incomplete(idle, &live).await?;
        for id in &incomplete {
            api.keyring.shred(id.tenant, ShredTarget::Media { session: id.session, media: id.media }).await?;
        }
        let mut dropped = 0;
        for id in self.store.unconfirmed(if all { Duration::ZERO } else { Duration::from_secs(600) }).await? {
            if live.contains(&id) {
                continue;
            }
            let recorded = match api.registry.read::<Session>(id.tenant, id.session).await {
                Ok(s) => s.state.media.contains_key(&id.media),
                Err(actors::ActorError::Rejected(domain::Rejection::NotFound { .. })) => false,
                Err(e) => return Err(e.into()),
            };
            if recorded {
                self.store.confirm(id).await?;
            } else {
                self.discard(&api.keyring, id).await;
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
    pub async fn sweep(api: Arc<Api>) {
        let period = Duration::from_secs(api.media.config.sweep_secs);
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = api.media.reconcile(&api, false).await {
                tracing::warn!(error = %e, "media sweep failed; retrying next period");
            }
        }
    }
}

pub(crate) fn media_out(session: Uuid, media: Uuid, m: &MediaMeta) -> pb::Media {
    pb::Media {
        media_id: media.to_string(),
        session_id: session.to_string(),
        uploader_id: m.uploader.to_string(),
        // Content type and digest are sealed: empty once the key is gone.
        erased: m.content_type.is_empty(),
        content_type: m.content_type.clone(),
        size: m.size,
        sha256: m.sha256.clone(),
        file_name: m.file_name.clone().unwrap_or_default(),
        uploaded_at_micros: m.at_micros,
    }
}

pub(crate) fn attachment_out(session: Uuid, a: &Attachment) -> pb::Media {
    pb::Media {
        media_id: a.media.to_string(),
        session_id: session.to_string(),
        content_type: a.content_type.clone(),
        size: a.size,
        sha256: a.sha256.clone(),
        file_name: a.file_name.clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn format_error(e: FormatError) -> ApiError {
    match e {
        FormatError::TooLong { .. } | FormatError::TooShort { .. } => ApiError::invalid("size", e.to_string()),
        FormatError::Digest { .. } => ApiError::DataLoss(format!("sha256: {e}")),
        other => ApiError::Internal(other.to_string()),
    }
}

/// An upload's first message, checked.
struct Start {
    session: Uuid,
    uploader: Uuid,
    content_type: String,
    size: u64,
    sha256: Vec<u8>,
    file_name: Option<String>,
}

fn start_in(config: &MediaConfig, tenant: Uuid, s: pb::UploadStart) -> Result<Start, ApiError> {
    let policy = config.policy(tenant);
    let content_type = s.content_type.trim().to_ascii_lowercase();
    if content_type.is_empty() {
        return Err(ApiError::invalid("start.content_type", "is required (e.g. \"image/png\")"));
    }
    if !policy.allowed_types.contains(&content_type) {
        return Err(ApiError::invalid(
            "start.content_type",
            format!("{} is not allowed; allowed: {}", domain::quote(&content_type), policy.allowed_types.join(", ")),
        ));
    }
    if s.size == 0 {
        return Err(ApiError::invalid("start.size", "0: an upload holds at least one byte"));
    }
    if s.size > policy.max_bytes {
        return Err(ApiError::invalid(
            "start.size",
            format!("{} bytes is over the limit of {} bytes", s.size, policy.max_bytes),
        ));
    }
    if !s.sha256.is_empty() && s.sha256.len() != 32 {
        return Err(ApiError::invalid(
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
    domain::session::check_media_meta(&probe).map_err(|r| ApiError::Actor(actors::ActorError::Rejected(r)))?;
    Ok(Start {
        session: parse_id("start.session_id", &s.session_id)?,
        uploader: parse_id("start.uploader_id", &s.uploader_id)?,
        content_type,
        size: s.size,
        sha256: s.sha256,
        file_name,
    })
}

/// The next message of an upload, within the idle limit.
async fn next(
    stream: &mut Streaming<pb::UploadMediaRequest>,
    idle: Duration,
    received: u64,
) -> Result<Option<pb::UploadMediaRequest>, ApiError> {
    match tokio::time::timeout(idle, stream.message()).await {
        Err(_) => Err(ApiError::Deadline(format!(
            "no upload message for {} s after {received} bytes; the upload was dropped",
            idle.as_secs()
        ))),
        Ok(Err(status)) => Err(ApiError::invalid("stream", format!("the upload stream failed: {}", status.message()))),
        Ok(Ok(m)) => Ok(m),
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
async fn receive(
    stream: &mut Streaming<pb::UploadMediaRequest>,
    writer: Box<dyn BlobWriter>,
    enc: Encryptor,
    idle: Duration,
) -> (Box<dyn BlobWriter>, Result<[u8; 32], ApiError>) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let writing = tokio::spawn(write_all(writer, rx));
    let fed = feed(stream, enc, idle, tx).await;
    let (writer, written) = match writing.await {
        Ok(done) => done,
        Err(e) => {
            // The task panicked: nothing is left to clean up with.
            return (Box::new(Lost), Err(ApiError::Internal(format!("blob writer task: {e}"))));
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

#[tonic::async_trait]
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
    stream: &mut Streaming<pb::UploadMediaRequest>,
    mut enc: Encryptor,
    idle: Duration,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<[u8; 32], ApiError> {
    let closed = || ApiError::Internal("the blob writer stopped".into());
    tx.send(enc.header().encode().to_vec()).await.map_err(|_| closed())?;
    while let Some(message) = next(stream, idle, enc.received()).await? {
        let chunk = match message.part {
            Some(pb::upload_media_request::Part::Chunk(c)) => c,
            Some(pb::upload_media_request::Part::Start(_)) => {
                return Err(ApiError::invalid("start", "sent twice; an upload has one start, then chunks"));
            }
            None => return Err(ApiError::invalid("part", "an upload message holds a start or a chunk")),
        };
        if chunk.offset != enc.received() {
            return Err(ApiError::invalid(
                "chunk.offset",
                format!(
                    "{}; expected {} (chunks come in order, without gaps or overlaps)",
                    chunk.offset,
                    enc.received()
                ),
            ));
        }
        if chunk.data.len() > MAX_UPLOAD_MESSAGE {
            return Err(ApiError::invalid(
                "chunk.data",
                format!("{} bytes; at most {MAX_UPLOAD_MESSAGE} per message", chunk.data.len()),
            ));
        }
        for sealed in enc.push(&chunk.data).map_err(format_error)? {
            tx.send(sealed).await.map_err(|_| closed())?;
        }
    }
    let (last, digest) = enc.finish().map_err(format_error)?;
    if let Some(last) = last {
        tx.send(last).await.map_err(|_| closed())?;
    }
    Ok(digest)
}

impl Handle {
    /// The upload after its first message: runs in a task of its own, so
    /// a client that goes away cannot cut it short before it cleans up.
    async fn run_upload(
        api: Arc<Api>,
        tenant: Uuid,
        start: Start,
        mut stream: Streaming<pb::UploadMediaRequest>,
    ) -> Result<pb::Media, ApiError> {
        let session = api.session_of(tenant, start.session).await?;
        session.state.may_upload(start.uploader).map_err(|r| ApiError::Actor(actors::ActorError::Rejected(r)))?;
        let media = Uuid::now_v7();
        let id = BlobId { tenant, session: start.session, media };
        let _live = api.media.live(id);
        let (key_id, cipher) = api.keyring.media_key(tenant, start.session, media).await?;
        let enc = Encryptor::new(Header::new(id, key_id.0, start.size), cipher);
        let idle = Duration::from_secs(api.media.config.upload_idle_secs);
        let stored = async {
            let writer = api.media.store.create(id).await?;
            let (writer, received) = receive(&mut stream, writer, enc, idle).await;
            let checked = received
                .and_then(|digest| sealed::check_digest(&start.sha256, &digest).map(|()| digest).map_err(format_error));
            let digest = match checked {
                Ok(d) => d,
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(blob = %id, error = %abort, "aborting an upload");
                    }
                    return Err(e);
                }
            };
            writer.commit().await?;
            let meta = MediaMeta {
                uploader: start.uploader,
                content_type: start.content_type.clone(),
                size: start.size,
                sha256: digest.to_vec(),
                file_name: start.file_name.clone(),
                key_id: key_id.0,
                at_micros: 0,
            };
            let command = SessionCommand::RecordMedia { media, meta };
            Ok::<_, ApiError>(api.registry.execute::<Session>(tenant, start.session, command).await?)
        }
        .await;
        // Anything short of a recorded blob leaves nothing: no file, no key.
        let done = match stored {
            Ok(done) => done,
            Err(e) => {
                api.media.discard(&api.keyring, id).await;
                return Err(e);
            }
        };
        // Recorded: a failed confirm only leaves the mark for the sweep.
        if let Err(e) = api.media.store.confirm(id).await {
            tracing::warn!(blob = %id, error = %e, "confirming a recorded blob; the sweep will");
        }
        let meta = done
            .state
            .media
            .get(&media)
            .ok_or_else(|| ApiError::Internal(format!("media {media} recorded but not in the session's state")))?;
        Ok(media_out(start.session, media, meta))
    }
}

type ChunkSender = tokio::sync::mpsc::Sender<Result<pb::MediaChunk, GrpcStatus>>;

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
pub(crate) async fn open_blob(
    store: &dyn BlobStore,
    id: BlobId,
    meta: &domain::session::MediaMeta,
) -> Result<(Box<dyn media::BlobReader>, Header), ApiError> {
    let media_id = id.media;
    let reader = match store.open(id).await {
        Ok(r) => r,
        Err(BlobError::NotFound(_)) => {
            return Err(ApiError::DataLoss(format!("the blob of media {media_id} is missing from the blob store")));
        }
        Err(e) => return Err(e.into()),
    };
    let header = match reader.read_at(0, HEADER_LEN).await {
        Ok(bytes) => Header::decode(&bytes).map_err(|e| ApiError::DataLoss(format!("media {media_id}: {e}")))?,
        Err(e @ (BlobError::OutOfRange { .. } | BlobError::Io { .. })) => {
            return Err(ApiError::DataLoss(format!("media {media_id}: the stored blob cannot be read whole: {e}")));
        }
        Err(e) => return Err(e.into()),
    };
    if header.id != id || header.key_id != meta.key_id || header.size != meta.size {
        return Err(ApiError::DataLoss(format!("media {media_id}: the blob's header does not match the log")));
    }
    Ok((reader, header))
}

/// Reads, decrypts and sends the chunks covering [offset, offset + len).
async fn send_range(
    reader: Box<dyn media::BlobReader>,
    dec: Decryptor,
    first: pb::Media,
    offset: u64,
    len: u64,
    tx: ChunkSender,
) {
    let media_id = first.media_id.clone();
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
                .map_err(|e| ApiError::DataLoss(format!("media {media_id}: chunk {index} is damaged: {e}"))),
            Some(Err(e @ (BlobError::OutOfRange { .. } | BlobError::Io { .. }))) => {
                Err(ApiError::DataLoss(format!("media {media_id}: the stored blob cannot be read whole: {e}")))
            }
            Some(Err(e)) => Err(ApiError::from(e)),
            None => Err(ApiError::Internal("the blob reader stopped".into())),
        };
        let item = plain.map(|data| {
            let chunk = pb::MediaChunk { media: first.take(), offset: at, data: data.into() };
            at += chunk.data.len() as u64;
            chunk
        });
        let failed = item.is_err();
        if tx.send(item.map_err(GrpcStatus::from)).await.is_err() || failed {
            return;
        }
    }
    if let Some(media) = first {
        // An empty range: the description alone.
        let _ = tx.send(Ok(pb::MediaChunk { media: Some(media), offset, data: Default::default() })).await;
    }
}

#[tonic::async_trait]
impl pb::media_service_server::MediaService for Handle {
    async fn upload_media(
        &self,
        request: Request<Streaming<pb::UploadMediaRequest>>,
    ) -> Result<Response<pb::Media>, GrpcStatus> {
        let api = self.0.clone();
        api.clone()
            .timed("UploadMedia", async move {
                let tenant = api.tenant(request.metadata()).await?;
                let mut stream = request.into_inner();
                let idle = Duration::from_secs(api.media.config.upload_idle_secs);
                let start = match next(&mut stream, idle, 0).await? {
                    Some(pb::UploadMediaRequest { part: Some(pb::upload_media_request::Part::Start(s)) }) => {
                        start_in(&api.media.config, tenant, s)?
                    }
                    Some(_) => {
                        return Err(ApiError::invalid("start", "the first message of an upload must be its start"));
                    }
                    None => return Err(ApiError::invalid("start", "the upload stream ended before its start")),
                };
                tokio::spawn(Handle::run_upload(api, tenant, start, stream))
                    .await
                    .map_err(|e| ApiError::Internal(format!("upload task: {e}")))?
            })
            .await
    }

    type DownloadMediaStream = ReceiverStream<Result<pb::MediaChunk, GrpcStatus>>;

    async fn download_media(
        &self,
        request: Request<pb::DownloadMediaRequest>,
    ) -> Result<Response<Self::DownloadMediaStream>, GrpcStatus> {
        let api = self.0.clone();
        let started = Instant::now();
        let setup = async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let session_id = parse_id("session_id", &r.session_id)?;
            let media_id = parse_id("media_id", &r.media_id)?;
            let session = api.session_of(tenant, session_id).await?.state;
            if !r.participant_id.is_empty() {
                let who = parse_id("participant_id", &r.participant_id)?;
                if !session.participants.contains_key(&who) {
                    return Err(ApiError::Forbidden(format!("{who} did not take part in the session")));
                }
            }
            if session.restricted {
                return Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::precondition(
                    "processing of the end user's data is restricted: media are not served until it is lifted",
                ))));
            }
            let Some(meta) = session.media.get(&media_id) else {
                return Err(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound {
                    what: "media",
                })));
            };
            let erased = || {
                ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::precondition(
                    "the media was erased (its key was shredded by an erasure or retention)",
                )))
            };
            if session.erased || session.content_expired {
                return Err(erased());
            }
            let Some(cipher) = api.keyring.media_cipher(tenant, KeyId(meta.key_id)).await? else {
                return Err(erased());
            };
            let id = BlobId { tenant, session: session_id, media: media_id };
            let (reader, header) = open_blob(api.media.store.as_ref(), id, meta).await?;
            let (offset, size) = (r.offset, meta.size);
            if offset > size {
                return Err(ApiError::OutOfRange(format!("offset {offset} is past the end ({size} bytes)")));
            }
            let len = if r.length == 0 { size - offset } else { r.length };
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(ApiError::OutOfRange(format!("{len} bytes at {offset} go past the end ({size} bytes)")));
            }
            Ok::<_, ApiError>((
                reader,
                Decryptor::new(header, cipher),
                media_out(session_id, media_id, meta),
                offset,
                len,
            ))
        };
        let (reader, dec, first, offset, len) = match in_method("DownloadMedia", setup).await {
            Ok(v) => v,
            Err(e) => {
                let status = GrpcStatus::from(e);
                api.note_refusal("DownloadMedia", status.code()).await;
                api.metrics.observe("DownloadMedia", status.code(), started.elapsed());
                return Err(status);
            }
        };
        api.metrics.observe("DownloadMedia", tonic::Code::Ok, started.elapsed());
        // A few chunks in flight: memory stays bounded whatever the size.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(send_range(reader, dec, first, offset, len, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
