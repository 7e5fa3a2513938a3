//! `MediaService`: uploads (a client stream) and downloads (a server
//! stream) of pictures, files and video.

use app::media::{UploadPart, UploadStart};
use proto::api as pb;
use tonic::{Request, Streaming};

use super::convert::media_out;
use super::{Handle, Reply, Streamed, credentials};

/// Forwards an upload's messages to the application as they arrive.
fn parts(mut stream: Streaming<pb::UploadMediaRequest>) -> app::media::UploadStream {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(m)) => Ok(match m.part {
                    Some(pb::upload_media_request::Part::Start(s)) => UploadPart::Start(UploadStart {
                        session_id: s.session_id,
                        uploader_id: s.uploader_id,
                        content_type: s.content_type,
                        size: s.size,
                        sha256: s.sha256,
                        file_name: s.file_name,
                    }),
                    Some(pb::upload_media_request::Part::Chunk(c)) => {
                        UploadPart::Chunk { offset: c.offset, data: c.data.to_vec() }
                    }
                    None => UploadPart::Empty,
                }),
                Ok(None) => return,
                Err(status) => Err(status.message().to_string()),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

#[tonic::async_trait]
impl pb::media_service_server::MediaService for Handle {
    async fn upload_media(&self, request: Request<Streaming<pb::UploadMediaRequest>>) -> Reply<pb::Media> {
        let who = credentials(request.metadata());
        let stream = parts(request.into_inner());
        self.unary("UploadMedia", async { Ok(media_out(&self.app.upload_media(&who, stream).await?)) }).await
    }

    type DownloadMediaStream = Streamed<pb::MediaChunk>;

    async fn download_media(&self, request: Request<pb::DownloadMediaRequest>) -> Reply<Self::DownloadMediaStream> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let (session, media, participant) = (&r.session_id, &r.media_id, &r.participant_id);
        self.streaming(
            "DownloadMedia",
            self.app.download_media(&who, session, media, participant, r.offset, r.length),
            |c| pb::MediaChunk { media: c.media.as_ref().map(media_out), offset: c.offset, data: c.data.into() },
        )
        .await
    }
}
