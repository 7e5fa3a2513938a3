//! `RegionService`: the steps of a tenant's move between regions
//! (docs/residency.md), driven by `pypes tenant move`.

use std::sync::Arc;

use app::AppError;
use app::moves::{MoveDigest, MovePart};
use keystore::{DataKey, Group, KeyId, KeyPurpose, TenantKeys};
use media::BlobId;
use proto::Message;
use proto::api as pb;
use tonic::{Request, Streaming};
use uuid::Uuid;

use super::{Handle, Reply, Streamed, credentials};

fn bad(what: &str) -> AppError {
    AppError::invalid("part", what.to_string())
}

fn uuid_of(bytes: &[u8], what: &str) -> Result<Uuid, AppError> {
    Uuid::from_slice(bytes).map_err(|_| bad(&format!("{what} is {} bytes, not a 16-byte id", bytes.len())))
}

fn key_out(k: DataKey) -> pb::MoveKey {
    let id = |u: Uuid| u.as_bytes().to_vec();
    let (purpose, anchor, group, media) = match k.purpose {
        KeyPurpose::Subject { subject, group } => ("subject", subject, group.name(), Vec::new()),
        KeyPurpose::SessionContent { session } => ("session", session, "", Vec::new()),
        KeyPurpose::Media { session, media } => ("media", session, "", id(media)),
        KeyPurpose::TenantIndex { tenant } => ("index", tenant, "", Vec::new()),
    };
    pb::MoveKey {
        id: k.id.as_bytes().to_vec(),
        purpose: purpose.into(),
        anchor: id(anchor),
        group: group.into(),
        media,
        material: k.material.expose().to_vec(),
        uses_reserved: k.uses_reserved,
        retired: k.retired,
    }
}

fn key_in(tenant: Uuid, k: pb::MoveKey) -> Result<DataKey, AppError> {
    let anchor = uuid_of(&k.anchor, "a key's anchor")?;
    let purpose = match k.purpose.as_str() {
        "subject" => KeyPurpose::Subject {
            subject: anchor,
            group: k.group.parse::<Group>().map_err(|e| bad(&format!("a key's group: {e}")))?,
        },
        "session" => KeyPurpose::SessionContent { session: anchor },
        "media" => KeyPurpose::Media { session: anchor, media: uuid_of(&k.media, "a media key's media id")? },
        "index" => KeyPurpose::TenantIndex { tenant: anchor },
        other => return Err(bad(&format!("a key's purpose {other:?} is not subject, session, media or index"))),
    };
    Ok(DataKey {
        id: KeyId(uuid_of(&k.id, "a key's id")?),
        tenant,
        purpose,
        material: keystore::crypto::SecretKey::from_bytes(&k.material).map_err(|e| bad(&format!("a key: {e}")))?,
        uses_reserved: k.uses_reserved,
        retired: k.retired,
        fresh: false,
    })
}

fn part_out(tenant_id: &str, part: MovePart) -> pb::MovePart {
    use pb::move_part::Part;
    let part = match part {
        MovePart::Keys(keys) => Part::Keys(pb::MoveKeys {
            live: keys.live.into_iter().map(key_out).collect(),
            shredded: keys.shredded.iter().map(|id| id.as_bytes().to_vec()).collect(),
        }),
        MovePart::Events(events) => Part::Events(pb::MoveEvents {
            stored: events
                .iter()
                .map(|r| r.event.to_stored(&r.stream, r.version, r.position, r.recorded_at_micros).encode_to_vec())
                .collect(),
        }),
        MovePart::Blob { id, size, offset, data } => Part::Blob(pb::MoveBlobChunk {
            session_id: id.session.to_string(),
            media_id: id.media.to_string(),
            size,
            offset,
            data,
        }),
    };
    pb::MovePart { tenant_id: tenant_id.to_string(), part: Some(part) }
}

fn part_in(p: pb::MovePart) -> Result<(String, MovePart), AppError> {
    use pb::move_part::Part;
    let tenant = app::parse_id("tenant_id", &p.tenant_id)?;
    let part = match p.part {
        None => return Err(bad("a part with nothing in it")),
        Some(Part::Keys(k)) => {
            let mut shredded = Vec::with_capacity(k.shredded.len());
            for id in &k.shredded {
                shredded.push(KeyId(uuid_of(id, "a destroyed key's id")?));
            }
            let mut live = Vec::with_capacity(k.live.len());
            for key in k.live {
                live.push(key_in(tenant, key)?);
            }
            MovePart::Keys(TenantKeys { live, shredded })
        }
        Some(Part::Events(e)) => {
            let mut events = Vec::with_capacity(e.stored.len());
            for bytes in e.stored {
                let stored = proto::storage::StoredEvent::decode(bytes.as_slice())
                    .map_err(|err| bad(&format!("an event is not a StoredEvent: {err}")))?;
                let stream: Arc<str> = stored.stream.clone().into();
                events.push(
                    eventlog::RecordedEvent::from_stored(stored, stream)
                        .map_err(|err| bad(&format!("an event: {err}")))?,
                );
            }
            MovePart::Events(events)
        }
        Some(Part::Blob(b)) => MovePart::Blob {
            id: BlobId {
                tenant,
                session: app::parse_id("session_id", &b.session_id)?,
                media: app::parse_id("media_id", &b.media_id)?,
            },
            size: b.size,
            offset: b.offset,
            data: b.data,
        },
    };
    Ok((p.tenant_id, part))
}

/// Forwards a move's parts to the application as they arrive.
fn parts(mut stream: Streaming<pb::MovePart>) -> tokio::sync::mpsc::Receiver<Result<(String, MovePart), AppError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(p)) => part_in(p),
                Ok(None) => return,
                Err(status) => Err(AppError::Unavailable(format!("the move's stream broke: {}", status.message()))),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

fn digest_out(d: MoveDigest) -> pb::MoveDigestResponse {
    pb::MoveDigestResponse {
        streams: d.streams,
        events: d.events,
        keys: d.keys,
        keys_shredded: d.keys_shredded,
        blobs: d.blobs,
        blob_bytes: d.blob_bytes,
        digest: d.digest,
    }
}

fn undelivered_in(list: &[pb::MoveUndelivered]) -> Vec<(String, String)> {
    list.iter().map(|u| (u.webhook_id.clone(), u.event_id.clone())).collect()
}

#[tonic::async_trait]
impl pb::region_service_server::RegionService for Handle {
    async fn begin_move(&self, request: Request<pb::BeginMoveRequest>) -> Reply<pb::MovePlacement> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("BeginMove", async {
            let p = self.app.begin_move(&who, &r.tenant_id, &r.to_region).await?;
            Ok(pb::MovePlacement { region: p.region, moving_to: p.moving_to.unwrap_or_default() })
        })
        .await
    }

    type ReadMoveStream = Streamed<pb::MovePart>;

    async fn read_move(&self, request: Request<pb::MoveRef>) -> Reply<Self::ReadMoveStream> {
        let who = credentials(request.metadata());
        let tenant_id = request.into_inner().tenant_id;
        let out_id = tenant_id.clone();
        self.streaming("ReadMove", self.app.read_move(&who, &tenant_id), move |p| part_out(&out_id, p)).await
    }

    async fn write_move(&self, request: Request<Streaming<pb::MovePart>>) -> Reply<pb::MoveWritten> {
        let who = credentials(request.metadata());
        let stream = parts(request.into_inner());
        self.unary("WriteMove", async {
            let w = self.app.write_move(&who, stream).await?;
            Ok(pb::MoveWritten {
                events_written: w.events_written,
                events_present: w.events_present,
                keys_added: w.keys_added,
                keys_present: w.keys_present,
                keys_shredded: w.keys_shredded,
                blobs_written: w.blobs_written,
                blobs_present: w.blobs_present,
            })
        })
        .await
    }

    async fn move_digest(&self, request: Request<pb::MoveRef>) -> Reply<pb::MoveDigestResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("MoveDigest", async { Ok(digest_out(self.app.move_digest(&who, &r.tenant_id).await?)) }).await
    }

    async fn finish_move(&self, request: Request<pb::FinishMoveRequest>) -> Reply<pb::MoveCertificate> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("FinishMove", async {
            let done = self.app.finish_move(&who, &r.tenant_id, &r.destination_digest).await?;
            Ok(pb::MoveCertificate {
                to_region: done.to_region,
                certificate: done.certificate,
                signature: done.signature,
                undelivered: done
                    .undelivered
                    .iter()
                    .map(|(w, e)| pb::MoveUndelivered { webhook_id: w.to_string(), event_id: e.to_string() })
                    .collect(),
            })
        })
        .await
    }

    async fn adopt_move(&self, request: Request<pb::AdoptMoveRequest>) -> Reply<pb::MoveAdopted> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let undelivered = undelivered_in(&r.undelivered);
        self.unary("AdoptMove", async {
            let a = self.app.adopt_move(&who, &r.tenant_id, &undelivered).await?;
            Ok(pb::MoveAdopted {
                webhooks: a.webhooks,
                erasures_resumed: a.erasures_resumed,
                restrictions_resumed: a.restrictions_resumed,
            })
        })
        .await
    }
}
