//! Domain events to stored events and back. Clear fields go into the
//! protobuf payload (`proto/pypes/events/v1`); personal fields and content
//! are sealed through the keyring into the envelope's sealed fields, with
//! AAD binding tenant, stream, event id, field and key. Opening a field
//! whose key was shredded gives an empty value: the event still decodes.

use std::future::Future;

use bytes::Bytes;
use domain::pype::{Pype, PypeEvent};
use domain::session::{ParticipantKind, Reason, Session, SessionEvent};
use domain::staff::StaffEvent;
use domain::subject::{Birth, Subject, SubjectEvent};
use domain::tenant::{Tenant, TenantEvent, TenantSettings};
use domain::{Aggregate, Timers};
use eventlog::{NewEvent, RecordedEvent, SealedField};
use keystore::{Aad, Group, KeyPurpose, Keyring, Opened};
use prost::Message;
use proto::events as pb;
use uuid::Uuid;

use crate::stream::Kind;
use crate::types as ty;

/// How an entity's events are stored.
pub trait Codec: Aggregate<Command: Send + 'static, Event: Send + Sync + 'static> + Send + Sync + 'static {
    /// The kind of stream the entity's events go to.
    const KIND: Kind;

    /// Encodes `event` (decided on `self`, the state before it) as a new
    /// stored event of `stream`.
    fn encode(
        &self,
        event: &Self::Event,
        tenant: Uuid,
        stream: &str,
        keyring: &Keyring,
    ) -> impl Future<Output = Result<NewEvent, CodecError>> + Send;

    fn decode(
        recorded: &RecordedEvent,
        keyring: &Keyring,
    ) -> impl Future<Output = Result<Self::Event, CodecError>> + Send;

    /// When this entity's next timer goes off (Sessions only).
    fn deadline(&self) -> Option<i64> {
        None
    }

    /// Whether this entity keeps snapshots of its state (entities whose
    /// streams grow long: Sessions, subjects).
    const SNAPSHOTS: bool = false;

    /// The key a snapshot of this state is sealed under, and the state
    /// serialised (`None`: no snapshot of this state).
    fn snapshot(&self) -> Option<(KeyPurpose, Vec<u8>)> {
        None
    }

    /// The state a snapshot's bytes hold (`None`: not this format).
    fn from_snapshot(bytes: &[u8]) -> Option<Self> {
        let _ = bytes;
        None
    }

    /// Streams `events` claim (each must not exist yet), appended in one
    /// atomic write with the entity's own: a subject's username
    /// reservation. Most entities claim nothing.
    fn claims(
        &self,
        events: &[Self::Event],
        tenant: Uuid,
        keyring: &Keyring,
    ) -> impl Future<Output = Result<Vec<Claim>, CodecError>> + Send {
        let _ = (events, tenant, keyring);
        async { Ok(Vec::new()) }
    }
}

/// A stream an entity's events claim: the stream must not exist yet; when
/// it does, the command is refused as `what` already existing.
#[derive(Debug)]
pub struct Claim {
    pub stream: String,
    pub events: Vec<NewEvent>,
    pub what: &'static str,
}

/// What encoding or decoding a stored event can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("key store: {0}")]
    Keys(#[from] keystore::KeyError),
    /// A stored event that does not decode: names the stream, version and why.
    #[error("stored event {stream}@{version} does not decode: {reason}")]
    Corrupt { stream: String, version: u64, reason: String },
}

fn new_event(event_type: &str, tenant: Uuid, payload: impl Message) -> NewEvent {
    let mut e = NewEvent::new(event_type, Bytes::from(payload.encode_to_vec()));
    e.tenant_id = Some(tenant);
    e
}

struct Sealer<'a> {
    keyring: &'a Keyring,
    tenant: Uuid,
    stream: &'a str,
    event: NewEvent,
}

impl<'a> Sealer<'a> {
    fn new(keyring: &'a Keyring, tenant: Uuid, stream: &'a str, event: NewEvent) -> Self {
        Self { keyring, tenant, stream, event }
    }

    async fn seal(self, field: &str, value: &str, purpose: KeyPurpose) -> Result<Self, CodecError> {
        self.seal_bytes(field, value.as_bytes(), purpose).await
    }

    async fn seal_bytes(mut self, field: &str, value: &[u8], purpose: KeyPurpose) -> Result<Self, CodecError> {
        let aad = Aad { tenant: self.tenant, stream: self.stream, event_id: self.event.id };
        let sealed = self.keyring.seal(field, value, &purpose, &aad).await?;
        self.event.sealed_fields.push(sealed);
        Ok(self)
    }

    fn done(self) -> NewEvent {
        self.event
    }
}

fn corrupt(r: &RecordedEvent, reason: impl Into<String>) -> CodecError {
    CodecError::Corrupt { stream: r.stream.to_string(), version: r.version, reason: reason.into() }
}

fn payload<M: Message + Default>(r: &RecordedEvent) -> Result<M, CodecError> {
    M::decode(r.event.payload.as_ref()).map_err(|e| corrupt(r, format!("payload: {e}")))
}

fn uuid(r: &RecordedEvent, field: &str, bytes: &[u8]) -> Result<Uuid, CodecError> {
    Uuid::from_slice(bytes).map_err(|_| corrupt(r, format!("{field} is {} bytes, not a uuid", bytes.len())))
}

fn tenant_of(r: &RecordedEvent) -> Result<Uuid, CodecError> {
    r.event.tenant_id.ok_or_else(|| corrupt(r, "no tenant id"))
}

/// Opens a sealed field: `None` when absent; an erased field reads as empty.
async fn open_bytes(r: &RecordedEvent, keyring: &Keyring, field: &str) -> Result<Option<Vec<u8>>, CodecError> {
    let Some(sealed) = r.event.sealed_fields.iter().find(|s: &&SealedField| s.field == field) else { return Ok(None) };
    let aad = Aad { tenant: tenant_of(r)?, stream: &r.stream, event_id: r.event.id };
    match keyring.open(field, sealed, &aad).await? {
        Opened::Plaintext(p) => Ok(Some(p.to_vec())),
        Opened::Erased => Ok(Some(Vec::new())),
    }
}

/// Opens a sealed text field: `None` when absent; an erased field reads as
/// an empty string.
async fn open_text(r: &RecordedEvent, keyring: &Keyring, field: &str) -> Result<Option<String>, CodecError> {
    match open_bytes(r, keyring, field).await? {
        Some(p) => String::from_utf8(p).map(Some).map_err(|_| corrupt(r, format!("{field} is not UTF-8"))),
        None => Ok(None),
    }
}

async fn required_text(r: &RecordedEvent, keyring: &Keyring, field: &str) -> Result<String, CodecError> {
    open_text(r, keyring, field).await?.ok_or_else(|| corrupt(r, format!("sealed field {field} missing")))
}

fn timers_pb(t: Timers) -> pb::Timers {
    pb::Timers { inactive_after_secs: t.inactive_after_secs, close_after_secs: t.close_after_secs }
}

fn timers_of(t: Option<pb::Timers>) -> Timers {
    t.map_or(Timers::DEFAULT, |t| Timers {
        inactive_after_secs: t.inactive_after_secs,
        close_after_secs: t.close_after_secs,
    })
}

fn settings_pb(s: &TenantSettings) -> pb::TenantSettings {
    pb::TenantSettings { timers: Some(timers_pb(s.timers)), retention_days: s.retention_days, region: s.region.clone() }
}

fn settings_of(s: Option<pb::TenantSettings>) -> TenantSettings {
    let s = s.unwrap_or_default();
    TenantSettings { timers: timers_of(s.timers), retention_days: s.retention_days, region: s.region }
}

fn id_bytes(id: Uuid) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

/// The sealed field that holds a webhook's signing secret.
const WEBHOOK_SECRET: &str = "webhook_secret";

async fn seal_secret(
    keyring: &Keyring,
    tenant: Uuid,
    stream: &str,
    e: NewEvent,
    secret: &[u8],
) -> Result<NewEvent, CodecError> {
    Ok(Sealer::new(keyring, tenant, stream, e)
        .seal_bytes(WEBHOOK_SECRET, secret, KeyPurpose::TenantIndex { tenant })
        .await?
        .done())
}

fn opt_id(r: &RecordedEvent, field: &str, bytes: &[u8]) -> Result<Option<Uuid>, CodecError> {
    if bytes.is_empty() { Ok(None) } else { uuid(r, field, bytes).map(Some) }
}

impl Codec for Tenant {
    const KIND: Kind = Kind::Tenant;

    async fn encode(
        &self,
        event: &TenantEvent,
        tenant: Uuid,
        stream: &str,
        keyring: &Keyring,
    ) -> Result<NewEvent, CodecError> {
        Ok(match event {
            TenantEvent::WebhookCreated { webhook: w } => {
                let e = new_event(
                    ty::WEBHOOK_CREATED,
                    tenant,
                    pb::WebhookCreated {
                        webhook_id: id_bytes(w.id),
                        url: w.url.clone(),
                        description: w.description.clone(),
                        types: w.types.clone(),
                        pype_id: w.pype.map(id_bytes).unwrap_or_default(),
                        at_micros: w.created_micros,
                    },
                );
                seal_secret(keyring, tenant, stream, e, &w.secret).await?
            }
            TenantEvent::WebhookSecretRotated { id, secret: s, previous_until_micros, at_micros } => {
                let e = new_event(
                    ty::WEBHOOK_SECRET_ROTATED,
                    tenant,
                    pb::WebhookSecretRotated {
                        webhook_id: id_bytes(*id),
                        previous_until_micros: *previous_until_micros,
                        at_micros: *at_micros,
                    },
                );
                seal_secret(keyring, tenant, stream, e, s).await?
            }
            TenantEvent::WebhookPaused { id, reason, at_micros } => new_event(
                ty::WEBHOOK_PAUSED,
                tenant,
                pb::WebhookPaused { webhook_id: id_bytes(*id), reason: reason.clone(), at_micros: *at_micros },
            ),
            TenantEvent::WebhookResumed { id, at_micros } => new_event(
                ty::WEBHOOK_RESUMED,
                tenant,
                pb::WebhookResumed { webhook_id: id_bytes(*id), at_micros: *at_micros },
            ),
            TenantEvent::WebhookDeleted { id, at_micros } => new_event(
                ty::WEBHOOK_DELETED,
                tenant,
                pb::WebhookDeleted { webhook_id: id_bytes(*id), at_micros: *at_micros },
            ),
            TenantEvent::Created { tenant: id, name, settings, at_micros } => new_event(
                ty::TENANT_CREATED,
                tenant,
                pb::TenantCreated {
                    tenant_id: id_bytes(*id),
                    name: name.clone(),
                    settings: Some(settings_pb(settings)),
                    at_micros: *at_micros,
                },
            ),
            TenantEvent::SettingsUpdated { settings } => new_event(
                ty::TENANT_SETTINGS_UPDATED,
                tenant,
                pb::TenantSettingsUpdated { settings: Some(settings_pb(settings)) },
            ),
            TenantEvent::ApiKeyIssued { key_id, secret_sha256, at_micros } => new_event(
                ty::TENANT_API_KEY_ISSUED,
                tenant,
                pb::TenantApiKeyIssued {
                    key_id: id_bytes(*key_id),
                    secret_sha256: Bytes::copy_from_slice(secret_sha256),
                    at_micros: *at_micros,
                },
            ),
            TenantEvent::ApiKeyRevoked { key_id, at_micros } => new_event(
                ty::TENANT_API_KEY_REVOKED,
                tenant,
                pb::TenantApiKeyRevoked { key_id: id_bytes(*key_id), at_micros: *at_micros },
            ),
            TenantEvent::Cancelled { at_micros } => {
                new_event(ty::TENANT_CANCELLED, tenant, pb::TenantCancelled { at_micros: *at_micros })
            }
            TenantEvent::KeysShredded { key_fingerprints, at_micros } => new_event(
                ty::TENANT_KEYS_SHREDDED,
                tenant,
                pb::TenantKeysShredded { key_fingerprints: key_fingerprints.clone(), at_micros: *at_micros },
            ),
            TenantEvent::OffboardingCertified { certificate, signature } => new_event(
                ty::TENANT_OFFBOARDING_CERTIFIED,
                tenant,
                pb::TenantOffboardingCertified { certificate: certificate.clone(), signature: signature.clone() },
            ),
        })
    }

    async fn decode(r: &RecordedEvent, keyring: &Keyring) -> Result<TenantEvent, CodecError> {
        Ok(match r.event_type() {
            ty::WEBHOOK_CREATED => {
                let p: pb::WebhookCreated = payload(r)?;
                TenantEvent::WebhookCreated {
                    webhook: domain::tenant::Webhook {
                        id: uuid(r, "webhook_id", &p.webhook_id)?,
                        url: p.url,
                        description: p.description,
                        types: p.types,
                        pype: opt_id(r, "pype_id", &p.pype_id)?,
                        secret: open_bytes(r, keyring, WEBHOOK_SECRET).await?.unwrap_or_default(),
                        previous: None,
                        created_micros: p.at_micros,
                        paused: None,
                    },
                }
            }
            ty::WEBHOOK_SECRET_ROTATED => {
                let p: pb::WebhookSecretRotated = payload(r)?;
                TenantEvent::WebhookSecretRotated {
                    id: uuid(r, "webhook_id", &p.webhook_id)?,
                    secret: open_bytes(r, keyring, WEBHOOK_SECRET).await?.unwrap_or_default(),
                    previous_until_micros: p.previous_until_micros,
                    at_micros: p.at_micros,
                }
            }
            ty::WEBHOOK_PAUSED => {
                let p: pb::WebhookPaused = payload(r)?;
                TenantEvent::WebhookPaused {
                    id: uuid(r, "webhook_id", &p.webhook_id)?,
                    reason: p.reason,
                    at_micros: p.at_micros,
                }
            }
            ty::WEBHOOK_RESUMED => {
                let p: pb::WebhookResumed = payload(r)?;
                TenantEvent::WebhookResumed { id: uuid(r, "webhook_id", &p.webhook_id)?, at_micros: p.at_micros }
            }
            ty::WEBHOOK_DELETED => {
                let p: pb::WebhookDeleted = payload(r)?;
                TenantEvent::WebhookDeleted { id: uuid(r, "webhook_id", &p.webhook_id)?, at_micros: p.at_micros }
            }
            ty::TENANT_CREATED => {
                let p: pb::TenantCreated = payload(r)?;
                TenantEvent::Created {
                    tenant: uuid(r, "tenant_id", &p.tenant_id)?,
                    name: p.name,
                    settings: settings_of(p.settings),
                    at_micros: p.at_micros,
                }
            }
            ty::TENANT_SETTINGS_UPDATED => TenantEvent::SettingsUpdated {
                settings: settings_of(payload::<pb::TenantSettingsUpdated>(r)?.settings),
            },
            ty::TENANT_API_KEY_ISSUED => {
                let p: pb::TenantApiKeyIssued = payload(r)?;
                let secret_sha256 =
                    p.secret_sha256.as_ref().try_into().map_err(|_| corrupt(r, "secret_sha256 is not 32 bytes"))?;
                TenantEvent::ApiKeyIssued {
                    key_id: uuid(r, "key_id", &p.key_id)?,
                    secret_sha256,
                    at_micros: p.at_micros,
                }
            }
            ty::TENANT_API_KEY_REVOKED => {
                let p: pb::TenantApiKeyRevoked = payload(r)?;
                TenantEvent::ApiKeyRevoked { key_id: uuid(r, "key_id", &p.key_id)?, at_micros: p.at_micros }
            }
            ty::TENANT_CANCELLED => TenantEvent::Cancelled { at_micros: payload::<pb::TenantCancelled>(r)?.at_micros },
            ty::TENANT_KEYS_SHREDDED => {
                let p: pb::TenantKeysShredded = payload(r)?;
                TenantEvent::KeysShredded { key_fingerprints: p.key_fingerprints, at_micros: p.at_micros }
            }
            ty::TENANT_OFFBOARDING_CERTIFIED => {
                let p: pb::TenantOffboardingCertified = payload(r)?;
                TenantEvent::OffboardingCertified { certificate: p.certificate, signature: p.signature }
            }
            other => return Err(corrupt(r, format!("unknown tenant event type {other:?}"))),
        })
    }
}

impl Codec for Pype {
    const KIND: Kind = Kind::Pype;

    async fn encode(&self, event: &PypeEvent, tenant: Uuid, _: &str, _: &Keyring) -> Result<NewEvent, CodecError> {
        let member = |t: &str, id: &Uuid| new_event(t, tenant, pb::PypeMemberChanged { member_id: id_bytes(*id) });
        Ok(match event {
            PypeEvent::Created { pype, tenant: t, name, description, timers, at_micros } => new_event(
                ty::PYPE_CREATED,
                tenant,
                pb::PypeCreated {
                    pype_id: id_bytes(*pype),
                    tenant_id: id_bytes(*t),
                    name: name.clone(),
                    description: description.clone(),
                    timers: Some(timers_pb(*timers)),
                    at_micros: *at_micros,
                },
            ),
            PypeEvent::AgentAssigned { agent } => member(ty::PYPE_AGENT_ASSIGNED, agent),
            PypeEvent::AgentUnassigned { agent } => member(ty::PYPE_AGENT_UNASSIGNED, agent),
            PypeEvent::BotAssigned { bot } => member(ty::PYPE_BOT_ASSIGNED, bot),
            PypeEvent::BotUnassigned { bot } => member(ty::PYPE_BOT_UNASSIGNED, bot),
            PypeEvent::TimersSet { timers } => {
                new_event(ty::PYPE_TIMERS_SET, tenant, pb::PypeTimersSet { timers: Some(timers_pb(*timers)) })
            }
            PypeEvent::RetentionSet { days } => new_event(
                ty::PYPE_RETENTION_SET,
                tenant,
                pb::PypeRetentionSet { inherit: days.is_none(), days: days.unwrap_or(0) },
            ),
            PypeEvent::Archived { at_micros } => {
                new_event(ty::PYPE_ARCHIVED, tenant, pb::PypeArchived { at_micros: *at_micros })
            }
        })
    }

    async fn decode(r: &RecordedEvent, _: &Keyring) -> Result<PypeEvent, CodecError> {
        let member = || -> Result<Uuid, CodecError> {
            let p: pb::PypeMemberChanged = payload(r)?;
            uuid(r, "member_id", &p.member_id)
        };
        Ok(match r.event_type() {
            ty::PYPE_CREATED => {
                let p: pb::PypeCreated = payload(r)?;
                PypeEvent::Created {
                    pype: uuid(r, "pype_id", &p.pype_id)?,
                    tenant: uuid(r, "tenant_id", &p.tenant_id)?,
                    name: p.name,
                    description: p.description,
                    timers: timers_of(p.timers),
                    at_micros: p.at_micros,
                }
            }
            ty::PYPE_AGENT_ASSIGNED => PypeEvent::AgentAssigned { agent: member()? },
            ty::PYPE_AGENT_UNASSIGNED => PypeEvent::AgentUnassigned { agent: member()? },
            ty::PYPE_BOT_ASSIGNED => PypeEvent::BotAssigned { bot: member()? },
            ty::PYPE_BOT_UNASSIGNED => PypeEvent::BotUnassigned { bot: member()? },
            ty::PYPE_TIMERS_SET => PypeEvent::TimersSet { timers: timers_of(payload::<pb::PypeTimersSet>(r)?.timers) },
            ty::PYPE_ARCHIVED => PypeEvent::Archived { at_micros: payload::<pb::PypeArchived>(r)?.at_micros },
            ty::PYPE_RETENTION_SET => {
                let p: pb::PypeRetentionSet = payload(r)?;
                PypeEvent::RetentionSet { days: (!p.inherit).then_some(p.days) }
            }
            other => return Err(corrupt(r, format!("unknown pype event type {other:?}"))),
        })
    }
}

fn kind_pb(k: ParticipantKind) -> i32 {
    (match k {
        ParticipantKind::EndUser => pb::ParticipantKind::EndUser,
        ParticipantKind::Agent => pb::ParticipantKind::Agent,
        ParticipantKind::Bot => pb::ParticipantKind::Bot,
    }) as i32
}

fn reason_pb(r: Reason) -> i32 {
    (match r {
        Reason::Api => pb::ChangeReason::Api,
        Reason::Timer => pb::ChangeReason::Timer,
    }) as i32
}

fn state_changed(r: &RecordedEvent) -> Result<(Reason, i64), CodecError> {
    let p: pb::SessionStateChanged = payload(r)?;
    let reason = match pb::ChangeReason::try_from(p.reason) {
        Ok(pb::ChangeReason::Api) => Reason::Api,
        Ok(pb::ChangeReason::Timer) => Reason::Timer,
        _ => return Err(corrupt(r, format!("unknown change reason {}", p.reason))),
    };
    Ok((reason, p.at_micros))
}

impl Codec for Session {
    const KIND: Kind = Kind::Session;
    const SNAPSHOTS: bool = true;

    fn snapshot(&self) -> Option<(KeyPurpose, Vec<u8>)> {
        // Never seal anything new under a key that is or is about to be
        // shredded (sealing would make the key anew).
        if self.erased || self.content_expired {
            return None;
        }
        let session = self.id?;
        Some((KeyPurpose::SessionContent { session }, serde_json::to_vec(self).ok()?))
    }

    fn from_snapshot(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    fn deadline(&self) -> Option<i64> {
        self.next_deadline_micros()
    }

    async fn encode(
        &self,
        event: &SessionEvent,
        tenant: Uuid,
        stream: &str,
        keyring: &Keyring,
    ) -> Result<NewEvent, CodecError> {
        let changed = |t: &str, reason: &Reason, at: &i64| {
            new_event(t, tenant, pb::SessionStateChanged { reason: reason_pb(*reason), at_micros: *at })
        };
        Ok(match event {
            SessionEvent::Started { session, tenant: t, pype, end_user, timers, at_micros, tracking } => new_event(
                ty::SESSION_STARTED,
                tenant,
                pb::SessionStarted {
                    session_id: id_bytes(*session),
                    tenant_id: id_bytes(*t),
                    pype_id: id_bytes(*pype),
                    end_user_id: id_bytes(*end_user),
                    timers: Some(timers_pb(*timers)),
                    at_micros: *at_micros,
                    do_not_track: tracking.do_not_track,
                    global_privacy_control: tracking.global_privacy_control,
                },
            ),
            SessionEvent::ParticipantJoined { participant, kind, at_micros } => new_event(
                ty::PARTICIPANT_JOINED,
                tenant,
                pb::ParticipantJoined {
                    participant_id: id_bytes(*participant),
                    kind: kind_pb(*kind),
                    at_micros: *at_micros,
                },
            ),
            SessionEvent::ParticipantLeft { participant, at_micros } => new_event(
                ty::PARTICIPANT_LEFT,
                tenant,
                pb::ParticipantLeft { participant_id: id_bytes(*participant), at_micros: *at_micros },
            ),
            SessionEvent::MessagePosted { seq, sender, sent_at_micros, body, device, attachments } => {
                let e = new_event(
                    ty::MESSAGE_POSTED,
                    tenant,
                    pb::MessagePosted {
                        seq: *seq,
                        sender_id: id_bytes(*sender),
                        sent_at_micros: *sent_at_micros,
                        has_device: device.is_some(),
                        sender_kind: self.participants.get(sender).map(|p| kind_pb(p.kind)).unwrap_or_default(),
                        attachment_count: attachments.len() as u32,
                    },
                );
                let content = KeyPurpose::SessionContent { session: self.id.unwrap_or_default() };
                let mut s = Sealer::new(keyring, tenant, stream, e).seal("body", body, content).await?;
                if let Some(d) = device {
                    s = s
                        .seal("device", d, KeyPurpose::Subject { subject: self.end_user, group: Group::Device })
                        .await?;
                }
                if !attachments.is_empty() {
                    let list = pb::Attachments { items: attachments.iter().map(attachment_pb).collect() };
                    s = s.seal_bytes("attachments", &list.encode_to_vec(), content).await?;
                }
                s.done()
            }
            SessionEvent::MediaUploaded { media, meta } => {
                let e = new_event(
                    ty::MEDIA_UPLOADED,
                    tenant,
                    pb::MediaUploaded {
                        media_id: id_bytes(*media),
                        uploader_id: id_bytes(meta.uploader),
                        size: meta.size,
                        key_id: id_bytes(meta.key_id),
                        at_micros: meta.at_micros,
                        has_file_name: meta.file_name.is_some(),
                    },
                );
                let content = KeyPurpose::SessionContent { session: self.id.unwrap_or_default() };
                let mut s = Sealer::new(keyring, tenant, stream, e)
                    .seal("content_type", &meta.content_type, content)
                    .await?
                    .seal_bytes("sha256", &meta.sha256, content)
                    .await?;
                if let Some(name) = &meta.file_name {
                    s = s.seal("file_name", name, content).await?;
                }
                s.done()
            }
            SessionEvent::ReadHorizonAdvanced { participant, up_to, private } => new_event(
                ty::READ_HORIZON_ADVANCED,
                tenant,
                pb::ReadHorizonAdvanced { participant_id: id_bytes(*participant), up_to: *up_to, private: *private },
            ),
            SessionEvent::BecameInactive { reason, at_micros } => {
                changed(ty::SESSION_BECAME_INACTIVE, reason, at_micros)
            }
            SessionEvent::Reactivated { reason, at_micros } => changed(ty::SESSION_REACTIVATED, reason, at_micros),
            SessionEvent::Closed { reason, at_micros } => changed(ty::SESSION_CLOSED, reason, at_micros),
            SessionEvent::Erased { request, at_micros } => new_event(
                ty::SESSION_ERASED,
                tenant,
                pb::SessionErased { request_id: id_bytes(*request), at_micros: *at_micros },
            ),
            SessionEvent::ContentExpired { retention_days, at_micros } => new_event(
                ty::SESSION_CONTENT_EXPIRED,
                tenant,
                pb::SessionContentExpired { retention_days: *retention_days, at_micros: *at_micros },
            ),
            SessionEvent::Restricted { at_micros } => {
                new_event(ty::SESSION_RESTRICTED, tenant, pb::RestrictionChanged { at_micros: *at_micros })
            }
            SessionEvent::RestrictionLifted { at_micros } => {
                new_event(ty::SESSION_RESTRICTION_LIFTED, tenant, pb::RestrictionChanged { at_micros: *at_micros })
            }
            SessionEvent::LocationShared { participant, location, at_micros } => {
                let e = new_event(
                    ty::LOCATION_SHARED,
                    tenant,
                    pb::LocationShared { participant_id: id_bytes(*participant), at_micros: *at_micros },
                );
                Sealer::new(keyring, tenant, stream, e)
                    .seal("location", location, KeyPurpose::Subject { subject: self.end_user, group: Group::Geo })
                    .await?
                    .done()
            }
        })
    }

    async fn decode(r: &RecordedEvent, keyring: &Keyring) -> Result<SessionEvent, CodecError> {
        Ok(match decode_session_clear(r)? {
            SessionEvent::MessagePosted { seq, sender, sent_at_micros, device, .. } => SessionEvent::MessagePosted {
                seq,
                sender,
                sent_at_micros,
                body: required_text(r, keyring, "body").await?,
                device: if device.is_some() { open_text(r, keyring, "device").await? } else { None },
                attachments: match open_bytes(r, keyring, "attachments").await? {
                    Some(bytes) => attachments_of(r, &bytes)?,
                    None => Vec::new(),
                },
            },
            SessionEvent::MediaUploaded { media, meta } => SessionEvent::MediaUploaded {
                media,
                meta: domain::session::MediaMeta {
                    content_type: required_text(r, keyring, "content_type").await?,
                    sha256: open_bytes(r, keyring, "sha256").await?.unwrap_or_default(),
                    file_name: if meta.file_name.is_some() { open_text(r, keyring, "file_name").await? } else { None },
                    ..meta
                },
            },
            SessionEvent::LocationShared { participant, at_micros, .. } => SessionEvent::LocationShared {
                participant,
                location: required_text(r, keyring, "location").await?,
                at_micros,
            },
            other => other,
        })
    }
}

/// A Session event from its Clear fields alone: a message's body reads as
/// empty and its device as `Some("")` when one was given. Enough for
/// timers, and needs no key.
pub fn decode_session_clear(r: &RecordedEvent) -> Result<SessionEvent, CodecError> {
    Ok(match r.event_type() {
        ty::SESSION_STARTED => {
            let p: pb::SessionStarted = payload(r)?;
            SessionEvent::Started {
                session: uuid(r, "session_id", &p.session_id)?,
                tenant: uuid(r, "tenant_id", &p.tenant_id)?,
                pype: uuid(r, "pype_id", &p.pype_id)?,
                end_user: uuid(r, "end_user_id", &p.end_user_id)?,
                timers: timers_of(p.timers),
                at_micros: p.at_micros,
                tracking: domain::session::Tracking {
                    do_not_track: p.do_not_track,
                    global_privacy_control: p.global_privacy_control,
                },
            }
        }
        ty::PARTICIPANT_JOINED => {
            let p: pb::ParticipantJoined = payload(r)?;
            let kind = match pb::ParticipantKind::try_from(p.kind) {
                Ok(pb::ParticipantKind::EndUser) => ParticipantKind::EndUser,
                Ok(pb::ParticipantKind::Agent) => ParticipantKind::Agent,
                Ok(pb::ParticipantKind::Bot) => ParticipantKind::Bot,
                _ => return Err(corrupt(r, format!("unknown participant kind {}", p.kind))),
            };
            SessionEvent::ParticipantJoined {
                participant: uuid(r, "participant_id", &p.participant_id)?,
                kind,
                at_micros: p.at_micros,
            }
        }
        ty::PARTICIPANT_LEFT => {
            let p: pb::ParticipantLeft = payload(r)?;
            SessionEvent::ParticipantLeft {
                participant: uuid(r, "participant_id", &p.participant_id)?,
                at_micros: p.at_micros,
            }
        }
        ty::MESSAGE_POSTED => {
            let p: pb::MessagePosted = payload(r)?;
            SessionEvent::MessagePosted {
                seq: p.seq,
                sender: uuid(r, "sender_id", &p.sender_id)?,
                sent_at_micros: p.sent_at_micros,
                body: String::new(),
                device: p.has_device.then(String::new),
                attachments: Vec::new(),
            }
        }
        ty::MEDIA_UPLOADED => {
            let p: pb::MediaUploaded = payload(r)?;
            SessionEvent::MediaUploaded {
                media: uuid(r, "media_id", &p.media_id)?,
                meta: domain::session::MediaMeta {
                    uploader: uuid(r, "uploader_id", &p.uploader_id)?,
                    content_type: String::new(),
                    size: p.size,
                    sha256: Vec::new(),
                    file_name: p.has_file_name.then(String::new),
                    key_id: uuid(r, "key_id", &p.key_id)?,
                    at_micros: p.at_micros,
                },
            }
        }
        ty::READ_HORIZON_ADVANCED => {
            let p: pb::ReadHorizonAdvanced = payload(r)?;
            SessionEvent::ReadHorizonAdvanced {
                participant: uuid(r, "participant_id", &p.participant_id)?,
                up_to: p.up_to,
                private: p.private,
            }
        }
        ty::SESSION_BECAME_INACTIVE => {
            let (reason, at_micros) = state_changed(r)?;
            SessionEvent::BecameInactive { reason, at_micros }
        }
        ty::SESSION_REACTIVATED => {
            let (reason, at_micros) = state_changed(r)?;
            SessionEvent::Reactivated { reason, at_micros }
        }
        ty::SESSION_CLOSED => {
            let (reason, at_micros) = state_changed(r)?;
            SessionEvent::Closed { reason, at_micros }
        }
        ty::SESSION_ERASED => {
            let p: pb::SessionErased = payload(r)?;
            SessionEvent::Erased { request: uuid(r, "request_id", &p.request_id)?, at_micros: p.at_micros }
        }
        ty::SESSION_RESTRICTED => {
            SessionEvent::Restricted { at_micros: payload::<pb::RestrictionChanged>(r)?.at_micros }
        }
        ty::SESSION_CONTENT_EXPIRED => {
            let p: pb::SessionContentExpired = payload(r)?;
            SessionEvent::ContentExpired { retention_days: p.retention_days, at_micros: p.at_micros }
        }
        ty::SESSION_RESTRICTION_LIFTED => {
            SessionEvent::RestrictionLifted { at_micros: payload::<pb::RestrictionChanged>(r)?.at_micros }
        }
        ty::LOCATION_SHARED => {
            let p: pb::LocationShared = payload(r)?;
            SessionEvent::LocationShared {
                participant: uuid(r, "participant_id", &p.participant_id)?,
                location: String::new(),
                at_micros: p.at_micros,
            }
        }
        other => return Err(corrupt(r, format!("unknown session event type {other:?}"))),
    })
}

fn attachment_pb(a: &domain::session::Attachment) -> pb::Attachment {
    pb::Attachment {
        media_id: id_bytes(a.media),
        content_type: a.content_type.clone(),
        size: a.size,
        sha256: Bytes::copy_from_slice(&a.sha256),
        file_name: a.file_name.clone().unwrap_or_default(),
    }
}

/// A message's sealed attachment list (empty once erased).
fn attachments_of(r: &RecordedEvent, bytes: &[u8]) -> Result<Vec<domain::session::Attachment>, CodecError> {
    decode_attachments(bytes).map_err(|e| corrupt(r, e))
}

/// The plaintext of a message's sealed "attachments" field (empty: none,
/// or erased); `Err` names what is malformed.
pub fn decode_attachments(bytes: &[u8]) -> Result<Vec<domain::session::Attachment>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let list = pb::Attachments::decode(bytes).map_err(|e| format!("attachments: {e}"))?;
    list.items
        .into_iter()
        .map(|a| {
            let media = Uuid::from_slice(&a.media_id)
                .map_err(|_| format!("attachments.media_id is {} bytes, not a uuid", a.media_id.len()))?;
            Ok(domain::session::Attachment {
                media,
                content_type: a.content_type,
                size: a.size,
                sha256: a.sha256.to_vec(),
                file_name: (!a.file_name.is_empty()).then_some(a.file_name),
            })
        })
        .collect()
}

fn birth_text(b: &Birth) -> String {
    match b {
        Birth::Date { year, month, day } => format!("{year:04}-{month:02}-{day:02}"),
        Birth::AttestedAtLeast13 => "attested:13+".to_string(),
    }
}

fn birth_of(r: &RecordedEvent, s: &str) -> Result<Birth, CodecError> {
    if s == "attested:13+" || s.is_empty() {
        // An erased birth field reads as the attestation: the person was of age.
        return Ok(Birth::AttestedAtLeast13);
    }
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y, m, d] => match (y.parse(), m.parse(), d.parse()) {
            (Ok(year), Ok(month), Ok(day)) => Ok(Birth::Date { year, month, day }),
            _ => Err(corrupt(r, "birth is not a date")),
        },
        _ => Err(corrupt(r, "birth is not a date")),
    }
}

impl Codec for Subject {
    const KIND: Kind = Kind::Subject;
    const SNAPSHOTS: bool = true;

    fn snapshot(&self) -> Option<(KeyPurpose, Vec<u8>)> {
        // Not once an erasure is requested: its keys are about to go.
        if self.erasure.is_some() {
            return None;
        }
        let subject = self.id?;
        let purpose = KeyPurpose::Subject { subject, group: Group::Profile };
        Some((purpose, serde_json::to_vec(self).ok()?))
    }

    fn from_snapshot(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Registering or onboarding claims the username: its reservation
    /// stream, named from a keyed hash of tenant and username, is written
    /// in the same append as the subject's events, so a username is taken
    /// exactly when its subject holds it.
    async fn claims(&self, events: &[SubjectEvent], tenant: Uuid, keyring: &Keyring) -> Result<Vec<Claim>, CodecError> {
        let mut claims = Vec::new();
        for e in events {
            if let SubjectEvent::Registered { subject, username, .. } = e {
                claims.push(username_claim(tenant, *subject, username, keyring).await?);
            } else if let (SubjectEvent::Onboarded { username, .. }, Some(subject)) = (e, self.id) {
                claims.push(username_claim(tenant, subject, username, keyring).await?);
            }
        }
        Ok(claims)
    }

    async fn encode(
        &self,
        event: &SubjectEvent,
        tenant: Uuid,
        stream: &str,
        keyring: &Keyring,
    ) -> Result<NewEvent, CodecError> {
        let profile = |subject: Uuid| KeyPurpose::Subject { subject, group: Group::Profile };
        Ok(match event {
            SubjectEvent::Registered { subject, tenant: t, username, email, phone, birth, at_micros } => {
                let e = new_event(
                    ty::SUBJECT_REGISTERED,
                    tenant,
                    pb::SubjectRegistered {
                        subject_id: id_bytes(*subject),
                        tenant_id: id_bytes(*t),
                        at_micros: *at_micros,
                    },
                );
                Sealer::new(keyring, tenant, stream, e)
                    .seal("username", username, profile(*subject))
                    .await?
                    .seal("email", email, profile(*subject))
                    .await?
                    .seal("phone", phone, profile(*subject))
                    .await?
                    .seal("birth", &birth_text(birth), profile(*subject))
                    .await?
                    .done()
            }
            SubjectEvent::Invited { subject, tenant: t, email, at_micros } => {
                let e = new_event(
                    ty::SUBJECT_INVITED,
                    tenant,
                    pb::SubjectInvited {
                        subject_id: id_bytes(*subject),
                        tenant_id: id_bytes(*t),
                        at_micros: *at_micros,
                    },
                );
                Sealer::new(keyring, tenant, stream, e).seal("email", email, profile(*subject)).await?.done()
            }
            SubjectEvent::Onboarded { username, phone, birth, at_micros } => {
                let subject = self.id.unwrap_or_default();
                let e = new_event(ty::SUBJECT_ONBOARDED, tenant, pb::SubjectOnboarded { at_micros: *at_micros });
                Sealer::new(keyring, tenant, stream, e)
                    .seal("username", username, profile(subject))
                    .await?
                    .seal("phone", phone, profile(subject))
                    .await?
                    .seal("birth", &birth_text(birth), profile(subject))
                    .await?
                    .done()
            }
            SubjectEvent::Deactivated { at_micros } => {
                new_event(ty::SUBJECT_DEACTIVATED, tenant, pb::SubjectStatusChanged { at_micros: *at_micros })
            }
            SubjectEvent::Reactivated { at_micros } => {
                new_event(ty::SUBJECT_REACTIVATED, tenant, pb::SubjectStatusChanged { at_micros: *at_micros })
            }
            SubjectEvent::PasswordSet { hash, at_micros } => {
                let subject = self.id.unwrap_or_default();
                let e = new_event(ty::SUBJECT_PASSWORD_SET, tenant, pb::SubjectStatusChanged { at_micros: *at_micros });
                Sealer::new(keyring, tenant, stream, e).seal("password_hash", hash, profile(subject)).await?.done()
            }
            SubjectEvent::Rectified { email, phone, birth, at_micros } => {
                let subject = self.id.unwrap_or_default();
                let mut fields = Vec::new();
                if email.is_some() {
                    fields.push("email".to_string());
                }
                if phone.is_some() {
                    fields.push("phone".to_string());
                }
                if birth.is_some() {
                    fields.push("birth".to_string());
                }
                let e =
                    new_event(ty::SUBJECT_RECTIFIED, tenant, pb::SubjectRectified { fields, at_micros: *at_micros });
                let mut s = Sealer::new(keyring, tenant, stream, e);
                if let Some(v) = email {
                    s = s.seal("email", v, profile(subject)).await?;
                }
                if let Some(v) = phone {
                    s = s.seal("phone", v, profile(subject)).await?;
                }
                if let Some(v) = birth {
                    s = s.seal("birth", &birth_text(v), profile(subject)).await?;
                }
                s.done()
            }
            SubjectEvent::ProcessingRestricted { at_micros } => {
                new_event(ty::SUBJECT_PROCESSING_RESTRICTED, tenant, pb::RestrictionChanged { at_micros: *at_micros })
            }
            SubjectEvent::RestrictionLifted { at_micros } => {
                new_event(ty::SUBJECT_RESTRICTION_LIFTED, tenant, pb::RestrictionChanged { at_micros: *at_micros })
            }
            SubjectEvent::RestrictionApplied { restricted, sessions, at_micros } => new_event(
                ty::SUBJECT_RESTRICTION_APPLIED,
                tenant,
                pb::RestrictionApplied { restricted: *restricted, sessions: *sessions, at_micros: *at_micros },
            ),
            SubjectEvent::ConsentGranted { purpose, policy_version, at_micros } => new_event(
                ty::CONSENT_GRANTED,
                tenant,
                pb::ConsentGranted {
                    purpose: purpose.clone(),
                    policy_version: policy_version.clone(),
                    at_micros: *at_micros,
                },
            ),
            SubjectEvent::ConsentWithdrawn { purpose, at_micros } => new_event(
                ty::CONSENT_WITHDRAWN,
                tenant,
                pb::ConsentWithdrawn { purpose: purpose.clone(), at_micros: *at_micros },
            ),
            SubjectEvent::ErasureRequested { request, at_micros, due_micros } => new_event(
                ty::SUBJECT_ERASURE_REQUESTED,
                tenant,
                pb::SubjectErasureRequested {
                    subject_id: id_bytes(self.id.unwrap_or_default()),
                    request_id: id_bytes(*request),
                    at_micros: *at_micros,
                    due_micros: *due_micros,
                },
            ),
            SubjectEvent::ErasureShredPlanned { request, sessions, key_fingerprints } => new_event(
                ty::SUBJECT_ERASURE_SHRED_PLANNED,
                tenant,
                pb::SubjectErasureShredPlanned {
                    subject_id: id_bytes(self.id.unwrap_or_default()),
                    request_id: id_bytes(*request),
                    session_ids: sessions.iter().map(|s| id_bytes(*s)).collect(),
                    key_fingerprints: key_fingerprints.clone(),
                },
            ),
            SubjectEvent::ErasureKeysShredded { request, sessions, at_micros } => new_event(
                ty::SUBJECT_ERASURE_KEYS_SHREDDED,
                tenant,
                pb::SubjectErasureKeysShredded {
                    subject_id: id_bytes(self.id.unwrap_or_default()),
                    request_id: id_bytes(*request),
                    session_ids: sessions.iter().map(|s| id_bytes(*s)).collect(),
                    at_micros: *at_micros,
                },
            ),
            SubjectEvent::Erased { request, acknowledged_by, at_micros } => new_event(
                ty::SUBJECT_ERASED,
                tenant,
                pb::SubjectErased {
                    subject_id: id_bytes(self.id.unwrap_or_default()),
                    request_id: id_bytes(*request),
                    acknowledged_by: acknowledged_by.clone(),
                    at_micros: *at_micros,
                },
            ),
            SubjectEvent::ErasureCertified { request, certificate, signature } => new_event(
                ty::SUBJECT_ERASURE_CERTIFIED,
                tenant,
                pb::SubjectErasureCertified {
                    subject_id: id_bytes(self.id.unwrap_or_default()),
                    request_id: id_bytes(*request),
                    certificate: certificate.clone(),
                    signature: signature.clone(),
                },
            ),
        })
    }

    async fn decode(r: &RecordedEvent, keyring: &Keyring) -> Result<SubjectEvent, CodecError> {
        Ok(match r.event_type() {
            ty::SUBJECT_REGISTERED => {
                let p: pb::SubjectRegistered = payload(r)?;
                let birth = required_text(r, keyring, "birth").await?;
                SubjectEvent::Registered {
                    subject: uuid(r, "subject_id", &p.subject_id)?,
                    tenant: uuid(r, "tenant_id", &p.tenant_id)?,
                    username: required_text(r, keyring, "username").await?,
                    email: required_text(r, keyring, "email").await?,
                    phone: required_text(r, keyring, "phone").await?,
                    birth: birth_of(r, &birth)?,
                    at_micros: p.at_micros,
                }
            }
            ty::SUBJECT_INVITED => {
                let p: pb::SubjectInvited = payload(r)?;
                SubjectEvent::Invited {
                    subject: uuid(r, "subject_id", &p.subject_id)?,
                    tenant: uuid(r, "tenant_id", &p.tenant_id)?,
                    email: required_text(r, keyring, "email").await?,
                    at_micros: p.at_micros,
                }
            }
            ty::SUBJECT_ONBOARDED => {
                let p: pb::SubjectOnboarded = payload(r)?;
                let birth = required_text(r, keyring, "birth").await?;
                SubjectEvent::Onboarded {
                    username: required_text(r, keyring, "username").await?,
                    phone: required_text(r, keyring, "phone").await?,
                    birth: birth_of(r, &birth)?,
                    at_micros: p.at_micros,
                }
            }
            ty::SUBJECT_DEACTIVATED => {
                SubjectEvent::Deactivated { at_micros: payload::<pb::SubjectStatusChanged>(r)?.at_micros }
            }
            ty::SUBJECT_REACTIVATED => {
                SubjectEvent::Reactivated { at_micros: payload::<pb::SubjectStatusChanged>(r)?.at_micros }
            }
            ty::SUBJECT_PASSWORD_SET => SubjectEvent::PasswordSet {
                // Erased (shredded) reads as no password: nobody can log in.
                hash: open_text(r, keyring, "password_hash").await?.unwrap_or_default(),
                at_micros: payload::<pb::SubjectStatusChanged>(r)?.at_micros,
            },
            ty::SUBJECT_RECTIFIED => {
                let p: pb::SubjectRectified = payload(r)?;
                let named = |f: &str| p.fields.iter().any(|x| x == f);
                let email = if named("email") { Some(required_text(r, keyring, "email").await?) } else { None };
                let phone = if named("phone") { Some(required_text(r, keyring, "phone").await?) } else { None };
                let birth = if named("birth") {
                    let b = required_text(r, keyring, "birth").await?;
                    Some(birth_of(r, &b)?)
                } else {
                    None
                };
                SubjectEvent::Rectified { email, phone, birth, at_micros: p.at_micros }
            }
            ty::SUBJECT_PROCESSING_RESTRICTED => {
                SubjectEvent::ProcessingRestricted { at_micros: payload::<pb::RestrictionChanged>(r)?.at_micros }
            }
            ty::SUBJECT_RESTRICTION_LIFTED => {
                SubjectEvent::RestrictionLifted { at_micros: payload::<pb::RestrictionChanged>(r)?.at_micros }
            }
            ty::SUBJECT_RESTRICTION_APPLIED => {
                let p: pb::RestrictionApplied = payload(r)?;
                SubjectEvent::RestrictionApplied {
                    restricted: p.restricted,
                    sessions: p.sessions,
                    at_micros: p.at_micros,
                }
            }
            ty::CONSENT_GRANTED => {
                let p: pb::ConsentGranted = payload(r)?;
                SubjectEvent::ConsentGranted {
                    purpose: p.purpose,
                    policy_version: p.policy_version,
                    at_micros: p.at_micros,
                }
            }
            ty::CONSENT_WITHDRAWN => {
                let p: pb::ConsentWithdrawn = payload(r)?;
                SubjectEvent::ConsentWithdrawn { purpose: p.purpose, at_micros: p.at_micros }
            }
            ty::SUBJECT_ERASURE_REQUESTED => {
                let p: pb::SubjectErasureRequested = payload(r)?;
                SubjectEvent::ErasureRequested {
                    request: uuid(r, "request_id", &p.request_id)?,
                    at_micros: p.at_micros,
                    due_micros: p.due_micros,
                }
            }
            ty::SUBJECT_ERASURE_SHRED_PLANNED => {
                let p: pb::SubjectErasureShredPlanned = payload(r)?;
                SubjectEvent::ErasureShredPlanned {
                    request: uuid(r, "request_id", &p.request_id)?,
                    sessions: p.session_ids.iter().map(|s| uuid(r, "session_ids", s)).collect::<Result<_, _>>()?,
                    key_fingerprints: p.key_fingerprints,
                }
            }
            ty::SUBJECT_ERASURE_KEYS_SHREDDED => {
                let p: pb::SubjectErasureKeysShredded = payload(r)?;
                SubjectEvent::ErasureKeysShredded {
                    request: uuid(r, "request_id", &p.request_id)?,
                    sessions: p.session_ids.iter().map(|s| uuid(r, "session_ids", s)).collect::<Result<_, _>>()?,
                    at_micros: p.at_micros,
                }
            }
            ty::SUBJECT_ERASED => {
                let p: pb::SubjectErased = payload(r)?;
                SubjectEvent::Erased {
                    request: uuid(r, "request_id", &p.request_id)?,
                    acknowledged_by: p.acknowledged_by,
                    at_micros: p.at_micros,
                }
            }
            ty::SUBJECT_ERASURE_CERTIFIED => {
                let p: pb::SubjectErasureCertified = payload(r)?;
                SubjectEvent::ErasureCertified {
                    request: uuid(r, "request_id", &p.request_id)?,
                    certificate: p.certificate,
                    signature: p.signature,
                }
            }
            other => return Err(corrupt(r, format!("unknown subject event type {other:?}"))),
        })
    }
}

/// The reservation of a username by `subject` (the first event of the
/// name's stream, [`crate::stream::username_stream`]).
pub fn username_reserved(tenant: Uuid, subject: Uuid) -> NewEvent {
    new_event(ty::USERNAME_RESERVED, tenant, pb::UsernameReserved { subject_id: id_bytes(subject) })
}

/// The subject a username's reservation names.
pub fn decode_username_reserved(r: &RecordedEvent) -> Result<Uuid, CodecError> {
    let p: pb::UsernameReserved = payload(r)?;
    uuid(r, "subject_id", &p.subject_id)
}

async fn username_claim(tenant: Uuid, subject: Uuid, username: &str, keyring: &Keyring) -> Result<Claim, CodecError> {
    let secret = keyring.tenant_index_secret(tenant).await?;
    Ok(Claim {
        stream: crate::stream::username_stream(secret.expose(), tenant, username),
        events: vec![username_reserved(tenant, subject)],
        what: "username",
    })
}

/// A process's checkpoint: the log position it has handled up to.
pub fn process_checkpoint(position: u64) -> NewEvent {
    NewEvent::new(ty::PROCESS_CHECKPOINT, Bytes::from(pb::ProcessCheckpoint { position }.encode_to_vec()))
}

/// A webhook endpoint's delivery checkpoint (see `WebhookCheckpoint` in
/// events.proto): every event at or below `position` was delivered
/// (`None`: nothing yet), and since when the oldest undelivered one fails.
pub fn webhook_checkpoint(position: Option<u64>, failing_since_micros: Option<i64>) -> NewEvent {
    let p = pb::WebhookCheckpoint {
        position: position.unwrap_or(0),
        failing_since_micros: failing_since_micros.unwrap_or(0),
        nothing_delivered: position.is_none(),
    };
    NewEvent::new(ty::WEBHOOK_CHECKPOINT, Bytes::from(p.encode_to_vec()))
}

/// What a webhook checkpoint holds: (position, failing since).
pub fn decode_webhook_checkpoint(r: &RecordedEvent) -> Result<(Option<u64>, Option<i64>), CodecError> {
    let p: pb::WebhookCheckpoint = payload(r)?;
    let position = if p.nothing_delivered { None } else { Some(p.position) };
    Ok((position, (p.failing_since_micros != 0).then_some(p.failing_since_micros)))
}

/// A webhook redelivery as recorded (see `WebhookRedelivery` in
/// events.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookRedeliveryState {
    pub from_micros: i64,
    pub to_micros: i64,
    /// Events of the range at or below it were sent (`None`: none yet).
    pub after_position: Option<u64>,
    pub sent: u64,
    pub done: bool,
}

pub fn webhook_redelivery(s: &WebhookRedeliveryState) -> NewEvent {
    let p = pb::WebhookRedelivery {
        from_micros: s.from_micros,
        to_micros: s.to_micros,
        after_position: s.after_position.unwrap_or(0),
        started: s.after_position.is_some(),
        sent: s.sent,
        done: s.done,
    };
    NewEvent::new(ty::WEBHOOK_REDELIVERY, Bytes::from(p.encode_to_vec()))
}

pub fn decode_webhook_redelivery(r: &RecordedEvent) -> Result<WebhookRedeliveryState, CodecError> {
    let p: pb::WebhookRedelivery = payload(r)?;
    Ok(WebhookRedeliveryState {
        from_micros: p.from_micros,
        to_micros: p.to_micros,
        after_position: p.started.then_some(p.after_position),
        sent: p.sent,
        done: p.done,
    })
}

/// A privileged-access alert (see `AccessAlert` in events.proto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessAlertState {
    pub rule: String,
    pub actor: String,
    pub tenant: Option<Uuid>,
    pub at_micros: i64,
    pub audit_position: u64,
    pub audit_stream: String,
    pub audit_seq: u64,
    pub count: u64,
    pub threshold: u64,
    pub detail: String,
}

pub fn access_alert(a: &AccessAlertState) -> NewEvent {
    let p = pb::AccessAlert {
        rule: a.rule.clone(),
        actor: a.actor.clone(),
        tenant_id: a.tenant.map(|t| Bytes::copy_from_slice(t.as_bytes())).unwrap_or_default(),
        at_micros: a.at_micros,
        audit_position: a.audit_position,
        audit_stream: a.audit_stream.clone(),
        audit_seq: a.audit_seq,
        count: a.count,
        threshold: a.threshold,
        detail: a.detail.clone(),
    };
    NewEvent::new(ty::ACCESS_ALERT, Bytes::from(p.encode_to_vec()))
}

pub fn decode_access_alert(r: &RecordedEvent) -> Result<AccessAlertState, CodecError> {
    let p: pb::AccessAlert = payload(r)?;
    let tenant = match p.tenant_id.len() {
        0 => None,
        _ => Some(Uuid::from_slice(&p.tenant_id).map_err(|_| CodecError::Corrupt {
            stream: r.stream.to_string(),
            version: r.version,
            reason: "AccessAlert.tenant_id is not 16 bytes".into(),
        })?),
    };
    Ok(AccessAlertState {
        rule: p.rule,
        actor: p.actor,
        tenant,
        at_micros: p.at_micros,
        audit_position: p.audit_position,
        audit_stream: p.audit_stream,
        audit_seq: p.audit_seq,
        count: p.count,
        threshold: p.threshold,
        detail: p.detail,
    })
}

/// A move's switch, as the old region records it (`TenantMoveSwitched`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveSwitched {
    pub to_region: String,
    pub digest: String,
    pub key_fingerprints: Vec<String>,
    pub at_micros: i64,
    /// (webhook, first event not delivered).
    pub undelivered: Vec<(Uuid, Uuid)>,
    pub streams: u64,
    pub events: u64,
    pub keys: u64,
    pub blobs: u64,
}

pub fn move_switched(m: &MoveSwitched) -> NewEvent {
    let id = |u: &Uuid| Bytes::copy_from_slice(u.as_bytes());
    let p = pb::TenantMoveSwitched {
        to_region: m.to_region.clone(),
        digest: m.digest.clone(),
        key_fingerprints: m.key_fingerprints.clone(),
        at_micros: m.at_micros,
        undelivered: m
            .undelivered
            .iter()
            .map(|(w, e)| pb::MoveUndelivered { webhook_id: id(w), event_id: id(e) })
            .collect(),
        streams: m.streams,
        events: m.events,
        keys: m.keys,
        blobs: m.blobs,
    };
    NewEvent::new(ty::TENANT_MOVE_SWITCHED, Bytes::from(p.encode_to_vec()))
}

pub fn decode_move_switched(r: &RecordedEvent) -> Result<MoveSwitched, CodecError> {
    let p: pb::TenantMoveSwitched = payload(r)?;
    let mut undelivered = Vec::with_capacity(p.undelivered.len());
    for u in &p.undelivered {
        undelivered.push((uuid(r, "webhook_id", &u.webhook_id)?, uuid(r, "event_id", &u.event_id)?));
    }
    Ok(MoveSwitched {
        to_region: p.to_region,
        digest: p.digest,
        key_fingerprints: p.key_fingerprints,
        at_micros: p.at_micros,
        undelivered,
        streams: p.streams,
        events: p.events,
        keys: p.keys,
        blobs: p.blobs,
    })
}

pub fn move_certified(certificate: &str, signature: &str) -> NewEvent {
    let p = pb::TenantMoveCertified { certificate: certificate.into(), signature: signature.into() };
    NewEvent::new(ty::TENANT_MOVE_CERTIFIED, Bytes::from(p.encode_to_vec()))
}

/// (certificate, signature) of a `TenantMoveCertified`.
pub fn decode_move_certified(r: &RecordedEvent) -> Result<(String, String), CodecError> {
    let p: pb::TenantMoveCertified = payload(r)?;
    Ok((p.certificate, p.signature))
}

/// The position a process checkpoint names.
pub fn decode_process_checkpoint(r: &RecordedEvent) -> Result<u64, CodecError> {
    Ok(payload::<pb::ProcessCheckpoint>(r)?.position)
}

/// The end user a Session's `LocationShared` names (Clear fields only).
pub fn location_shared_by(r: &RecordedEvent) -> Result<Uuid, CodecError> {
    let p: pb::LocationShared = payload(r)?;
    uuid(r, "participant_id", &p.participant_id)
}

/// The events of end users' auth sessions (`authsession-…` streams) and of
/// their login failures (`loginfail-…`): ids and times only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEvent {
    LoginSucceeded { at_micros: i64 },
    LoginFailed { at_micros: i64 },
    SessionStarted { subject: Uuid, created_micros: i64 },
    SessionUsed { at_micros: i64 },
    SessionEnded { at_micros: i64, reason: String },
}

/// Encodes an auth event of `tenant`.
pub fn encode_auth(tenant: Uuid, e: &AuthEvent) -> NewEvent {
    match e {
        AuthEvent::LoginSucceeded { at_micros } => {
            new_event(ty::LOGIN_SUCCEEDED, tenant, pb::LoginSucceeded { at_micros: *at_micros })
        }
        AuthEvent::LoginFailed { at_micros } => {
            new_event(ty::LOGIN_FAILED, tenant, pb::LoginFailed { at_micros: *at_micros })
        }
        AuthEvent::SessionStarted { subject, created_micros } => new_event(
            ty::AUTH_SESSION_STARTED,
            tenant,
            pb::AuthSessionStarted { subject_id: id_bytes(*subject), created_micros: *created_micros },
        ),
        AuthEvent::SessionUsed { at_micros } => {
            new_event(ty::AUTH_SESSION_USED, tenant, pb::AuthSessionUsed { at_micros: *at_micros })
        }
        AuthEvent::SessionEnded { at_micros, reason } => new_event(
            ty::AUTH_SESSION_ENDED,
            tenant,
            pb::AuthSessionEnded { at_micros: *at_micros, reason: reason.clone() },
        ),
    }
}

/// Decodes an auth event (any other type is corrupt here).
pub fn decode_auth(r: &RecordedEvent) -> Result<AuthEvent, CodecError> {
    Ok(match r.event_type() {
        ty::LOGIN_SUCCEEDED => AuthEvent::LoginSucceeded { at_micros: payload::<pb::LoginSucceeded>(r)?.at_micros },
        ty::LOGIN_FAILED => AuthEvent::LoginFailed { at_micros: payload::<pb::LoginFailed>(r)?.at_micros },
        ty::AUTH_SESSION_STARTED => {
            let p: pb::AuthSessionStarted = payload(r)?;
            AuthEvent::SessionStarted {
                subject: uuid(r, "subject_id", &p.subject_id)?,
                created_micros: p.created_micros,
            }
        }
        ty::AUTH_SESSION_USED => AuthEvent::SessionUsed { at_micros: payload::<pb::AuthSessionUsed>(r)?.at_micros },
        ty::AUTH_SESSION_ENDED => {
            let p: pb::AuthSessionEnded = payload(r)?;
            AuthEvent::SessionEnded { at_micros: p.at_micros, reason: p.reason }
        }
        other => return Err(corrupt(r, format!("{other} is not an auth event"))),
    })
}

impl Codec for domain::staff::StaffDirectory {
    const KIND: Kind = Kind::Staff;

    async fn encode(&self, event: &StaffEvent, _: Uuid, _: &str, _: &Keyring) -> Result<NewEvent, CodecError> {
        Ok(encode_staff(event))
    }

    async fn decode(r: &RecordedEvent, _: &Keyring) -> Result<StaffEvent, CodecError> {
        decode_staff(r)
    }
}

fn encode_staff(e: &StaffEvent) -> NewEvent {
    let (kind, payload) = match e {
        StaffEvent::Added { staff, role, key_sha256, at_micros } => (
            ty::STAFF_ADDED,
            pb::StaffAdded {
                staff_id: id_bytes(*staff),
                role: role.name().into(),
                key_sha256: Bytes::copy_from_slice(key_sha256),
                at_micros: *at_micros,
            }
            .encode_to_vec(),
        ),
        StaffEvent::KeyRotated { staff, key_sha256, at_micros } => (
            ty::STAFF_KEY_ROTATED,
            pb::StaffKeyRotated {
                staff_id: id_bytes(*staff),
                key_sha256: Bytes::copy_from_slice(key_sha256),
                at_micros: *at_micros,
            }
            .encode_to_vec(),
        ),
        StaffEvent::Disabled { staff, at_micros } => (
            ty::STAFF_DISABLED,
            pb::StaffDisabled { staff_id: id_bytes(*staff), at_micros: *at_micros }.encode_to_vec(),
        ),
        StaffEvent::BreakGlassOpened { grant, staff, tenant, reason, at_micros, expires_micros } => (
            ty::BREAK_GLASS_OPENED,
            pb::BreakGlassOpened {
                grant_id: id_bytes(*grant),
                staff_id: id_bytes(*staff),
                tenant_id: id_bytes(*tenant),
                reason: reason.clone(),
                at_micros: *at_micros,
                expires_micros: *expires_micros,
            }
            .encode_to_vec(),
        ),
        StaffEvent::BreakGlassClosed { grant, by, at_micros } => (
            ty::BREAK_GLASS_CLOSED,
            pb::BreakGlassClosed { grant_id: id_bytes(*grant), by_staff_id: id_bytes(*by), at_micros: *at_micros }
                .encode_to_vec(),
        ),
    };
    NewEvent::new(kind, payload)
}

fn decode_staff(r: &RecordedEvent) -> Result<StaffEvent, CodecError> {
    let bad = |what: &str| corrupt(r, what);
    let id = |b: &[u8], field: &str| Uuid::from_slice(b).map_err(|_| bad(&format!("{field} is not a uuid")));
    let key = |b: &[u8]| <[u8; 32]>::try_from(b).map_err(|_| bad("key_sha256 is not 32 bytes"));
    let p = r.event.payload.clone();
    let dec = |e: prost::DecodeError| bad(&e.to_string());
    Ok(match r.event_type() {
        ty::STAFF_ADDED => {
            let m = pb::StaffAdded::decode(p).map_err(dec)?;
            StaffEvent::Added {
                staff: id(&m.staff_id, "staff_id")?,
                role: domain::staff::role_of(&m.role).ok_or_else(|| bad(&format!("unknown role {:?}", m.role)))?,
                key_sha256: key(&m.key_sha256)?,
                at_micros: m.at_micros,
            }
        }
        ty::STAFF_KEY_ROTATED => {
            let m = pb::StaffKeyRotated::decode(p).map_err(dec)?;
            StaffEvent::KeyRotated {
                staff: id(&m.staff_id, "staff_id")?,
                key_sha256: key(&m.key_sha256)?,
                at_micros: m.at_micros,
            }
        }
        ty::STAFF_DISABLED => {
            let m = pb::StaffDisabled::decode(p).map_err(dec)?;
            StaffEvent::Disabled { staff: id(&m.staff_id, "staff_id")?, at_micros: m.at_micros }
        }
        ty::BREAK_GLASS_OPENED => {
            let m = pb::BreakGlassOpened::decode(p).map_err(dec)?;
            StaffEvent::BreakGlassOpened {
                grant: id(&m.grant_id, "grant_id")?,
                staff: id(&m.staff_id, "staff_id")?,
                tenant: id(&m.tenant_id, "tenant_id")?,
                reason: m.reason,
                at_micros: m.at_micros,
                expires_micros: m.expires_micros,
            }
        }
        ty::BREAK_GLASS_CLOSED => {
            let m = pb::BreakGlassClosed::decode(p).map_err(dec)?;
            StaffEvent::BreakGlassClosed {
                grant: id(&m.grant_id, "grant_id")?,
                by: id(&m.by_staff_id, "by_staff_id")?,
                at_micros: m.at_micros,
            }
        }
        other => return Err(bad(&format!("unknown event type {other:?}"))),
    })
}

/// An audit trail entry: `payload` is the encoded `AuditEntry`, whose
/// bytes the trail's hash chain covers (so the caller encodes it).
pub fn audit_entry(payload: Vec<u8>) -> NewEvent {
    NewEvent::new(ty::AUDIT_ENTRY, Bytes::from(payload))
}

/// The snapshot format this build writes (and the only one it reads; an
/// older one is replayed over, then replaced).
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A snapshot read back.
#[derive(Debug)]
pub struct Snapshot<A> {
    pub state: A,
    /// The stream's version the state is folded up to.
    pub version: u64,
    /// The id of the event at `version`.
    pub last_event: Uuid,
}

/// The snapshot event of `state` (folded up to `version`, whose event is
/// `last_event`), sealed under the entity's own key; `None` for an entity
/// that keeps no snapshot.
pub async fn encode_snapshot<A: Codec>(
    state: &A,
    version: u64,
    last_event: Uuid,
    tenant: Uuid,
    snapshot_stream: &str,
    keyring: &Keyring,
) -> Result<Option<NewEvent>, CodecError> {
    let Some((purpose, bytes)) = state.snapshot() else { return Ok(None) };
    let e = new_event(
        ty::SNAPSHOT_TAKEN,
        tenant,
        pb::SnapshotTaken {
            format: SNAPSHOT_FORMAT,
            stream_version: version,
            last_event_id: Bytes::copy_from_slice(last_event.as_bytes()),
        },
    );
    Ok(Some(Sealer::new(keyring, tenant, snapshot_stream, e).seal_bytes("state", &bytes, purpose).await?.done()))
}

/// Reads a snapshot back; the error says why it cannot be used (the
/// caller then replays the whole stream).
pub async fn decode_snapshot<A: Codec>(r: &RecordedEvent, keyring: &Keyring) -> Result<Snapshot<A>, String> {
    if r.event.event_type != ty::SNAPSHOT_TAKEN {
        return Err(format!("a {} event, not a snapshot", r.event.event_type));
    }
    let p: pb::SnapshotTaken = payload(r).map_err(|e| e.to_string())?;
    if p.format != SNAPSHOT_FORMAT {
        return Err(format!("format {}, this build reads {SNAPSHOT_FORMAT}", p.format));
    }
    let last_event = uuid(r, "last_event_id", &p.last_event_id).map_err(|e| e.to_string())?;
    let Some(sealed) = r.event.sealed_fields.iter().find(|s| s.field == "state") else {
        return Err("no sealed state".into());
    };
    let aad = Aad { tenant: tenant_of(r).map_err(|e| e.to_string())?, stream: &r.stream, event_id: r.event.id };
    let bytes = match keyring.open("state", sealed, &aad).await {
        Ok(Opened::Plaintext(p)) => p,
        Ok(Opened::Erased) => return Err("its key was shredded (erasure or retention)".into()),
        Err(e) => return Err(format!("the sealed state does not open: {e}")),
    };
    let state = A::from_snapshot(&bytes).ok_or("the state does not parse")?;
    Ok(Snapshot { state, version: p.stream_version, last_event })
}
