//! The media service: uploads and downloads of pictures, files and video
//! in Sessions (the store and the pipeline are [`crate::blobs`]).

use std::sync::Arc;
use std::time::Duration;

use domain::session::{MediaMeta, Session, SessionCommand};
use keystore::KeyId;
use media::BlobId;
use media::sealed::{self, Decryptor, Encryptor, Header};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::blobs::{Download, Start, format_error, next, receive, start_in};
use crate::{App, AppError, parse_id};

pub use crate::blobs::{
    BlobStoreConfig, DEFAULT_MEDIA_MAX_BYTES, DEFAULT_MEDIA_TYPES, Media, MediaConfig, MediaPolicy, UploadStart,
    open_blob, open_store,
};
pub use crate::blobs::{DownloadChunk, MediaInfo, UploadPart, UploadStream};

impl App {
    /// The upload after its first message: runs in a task of its own, so
    /// a client that goes away cannot cut it short before it cleans up.
    async fn run_upload(
        self: Arc<Self>,
        tenant: Uuid,
        start: Start,
        mut stream: UploadStream,
    ) -> Result<MediaInfo, AppError> {
        let api = &self;
        let session = api.session_of(tenant, start.session).await?;
        session.state.may_upload(start.uploader).map_err(AppError::rejected)?;
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
            Ok::<_, AppError>(api.registry.execute::<Session>(tenant, start.session, command).await?)
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
            .ok_or_else(|| AppError::Internal(format!("media {media} recorded but not in the session's state")))?;
        Ok(MediaInfo { session: start.session, media, meta: meta.clone() })
    }

    /// Receives an upload: its first message is the start, then chunks in
    /// order. Runs in a task of its own, so a client that goes away cannot
    /// cut it short before it cleans up.
    pub async fn upload_media(
        self: &Arc<Self>,
        who: &Credentials,
        mut stream: UploadStream,
    ) -> Result<MediaInfo, AppError> {
        let tenant = self.tenant(who).await?;
        let idle = Duration::from_secs(self.media.config.upload_idle_secs);
        let start = match next(&mut stream, idle, 0).await? {
            Some(UploadPart::Start(s)) => start_in(&self.media.config, tenant, s)?,
            Some(_) => return Err(AppError::invalid("start", "the first message of an upload must be its start")),
            None => return Err(AppError::invalid("start", "the upload stream ended before its start")),
        };
        tokio::spawn(self.clone().run_upload(tenant, start, stream))
            .await
            .map_err(|e| AppError::internal("upload task", e))?
    }

    /// A range of a media item, decrypted as the receiver reads it (the
    /// first chunk carries the item's description).
    pub async fn download_media(
        &self,
        who: &Credentials,
        session_id: &str,
        media_id: &str,
        participant_id: &str,
        offset: u64,
        length: u64,
    ) -> Result<mpsc::Receiver<Result<DownloadChunk, AppError>>, AppError> {
        let tenant = self.tenant_about(who, crate::call::Object::Session, session_id).await?;
        let session_id = parse_id("session_id", session_id)?;
        let media_id = parse_id("media_id", media_id)?;
        let session = self.session_of(tenant, session_id).await?.into_state();
        if !participant_id.is_empty() {
            let who = parse_id("participant_id", participant_id)?;
            if !session.participants.contains_key(&who) {
                return Err(AppError::Forbidden(format!("{who} did not take part in the session")));
            }
        }
        if session.restricted {
            return Err(AppError::rejected(domain::Rejection::precondition(
                "processing of the end user's data is restricted: media are not served until it is lifted",
            )));
        }
        let Some(meta) = session.media.get(&media_id) else { return Err(AppError::not_found("media")) };
        let erased = || {
            AppError::rejected(domain::Rejection::precondition(
                "the media was erased (its key was shredded by an erasure or retention)",
            ))
        };
        if session.erased || session.content_expired {
            return Err(erased());
        }
        let Some(cipher) = self.keyring.media_cipher(tenant, KeyId(meta.key_id)).await? else {
            return Err(erased());
        };
        let id = BlobId { tenant, session: session_id, media: media_id };
        let (reader, header) = open_blob(self.media.store.as_ref(), id, meta).await?;
        let size = meta.size;
        if offset > size {
            return Err(AppError::OutOfRange(format!("offset {offset} is past the end ({size} bytes)")));
        }
        let len = if length == 0 { size - offset } else { length };
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(AppError::OutOfRange(format!("{len} bytes at {offset} go past the end ({size} bytes)")));
        }
        let download = Download {
            reader,
            dec: Decryptor::new(header, cipher),
            info: MediaInfo { session: session_id, media: media_id, meta: meta.clone() },
            offset,
            len,
        };
        // A few chunks in flight: memory stays bounded whatever the size.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(download.send(tx));
        Ok(rx)
    }
}
