//! Wire types to the application's and back.

use actors::Executed;
use app::AppError;
use app::feed::{FeedData, FeedItem, FeedMessage, IntegrationEvent};
use app::media::MediaInfo;
use app::tenant_export::{ExportItem, ExportRecord};
use domain::Timers;
use domain::pype::Pype;
use domain::session::{Attachment, ParticipantKind, Reason, Session, SessionEvent, Status};
use domain::staff::{Grant, Member, Role};
use domain::subject::{Birth, Subject, SubjectStatus};
use domain::tenant::Tenant;
use proto::api as pb;
use uuid::Uuid;

pub(crate) fn timers_in(t: Option<pb::Timers>) -> Option<Timers> {
    t.map(|t| Timers { inactive_after_secs: t.inactive_after_secs, close_after_secs: t.close_after_secs })
}

pub(crate) fn timers_out(t: Timers) -> pb::Timers {
    pb::Timers { inactive_after_secs: t.inactive_after_secs, close_after_secs: t.close_after_secs }
}

pub(crate) fn tenant_out(t: &Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.map(|i| i.to_string()).unwrap_or_default(),
        name: t.name.clone(),
        default_timers: Some(timers_out(t.settings.timers)),
        retention_days: t.settings.retention_days,
        region: t.settings.region.clone(),
        cancelled: t.cancelled,
    }
}

pub(crate) fn offboarding_out(o: app::tenants::Offboarding) -> pb::Offboarding {
    pb::Offboarding {
        tenant_id: o.tenant.to_string(),
        cancelled_at_micros: o.cancelled_at_micros,
        shred_due_micros: o.shred_due_micros,
        shredded_at_micros: o.shredded_at_micros,
        certificate: o.certificate,
        signature: o.signature,
    }
}

pub(crate) fn pype_out(p: &Pype) -> pb::Pype {
    pb::Pype {
        pype_id: p.id.map(|i| i.to_string()).unwrap_or_default(),
        name: p.name.clone(),
        description: p.description.clone(),
        agent_ids: p.agents.iter().map(Uuid::to_string).collect(),
        bot_ids: p.bots.iter().map(Uuid::to_string).collect(),
        timers: Some(timers_out(p.timers)),
        archived: p.archived,
    }
}

pub(crate) fn kind_out(k: ParticipantKind) -> i32 {
    (match k {
        ParticipantKind::EndUser => pb::ParticipantKind::EndUser,
        ParticipantKind::Agent => pb::ParticipantKind::Agent,
        ParticipantKind::Bot => pb::ParticipantKind::Bot,
    }) as i32
}

pub(crate) fn kind_in(field: &'static str, k: i32) -> Result<ParticipantKind, AppError> {
    match pb::ParticipantKind::try_from(k) {
        Ok(pb::ParticipantKind::EndUser) => Ok(ParticipantKind::EndUser),
        Ok(pb::ParticipantKind::Agent) => Ok(ParticipantKind::Agent),
        Ok(pb::ParticipantKind::Bot) => Ok(ParticipantKind::Bot),
        _ => Err(AppError::invalid(field, format!("{k} is not END_USER, AGENT or BOT"))),
    }
}

pub(crate) fn state_out(s: Status) -> i32 {
    (match s {
        Status::Active => pb::SessionState::Active,
        Status::Inactive => pb::SessionState::Inactive,
        Status::Closed => pb::SessionState::Closed,
    }) as i32
}

pub(crate) fn session_out(s: &Executed<Session>) -> pb::Session {
    let st = &s.state;
    pb::Session {
        session_id: st.id.map(|i| i.to_string()).unwrap_or_default(),
        pype_id: st.pype.to_string(),
        end_user_id: st.end_user.to_string(),
        state: state_out(st.status),
        participants: st
            .participants
            .iter()
            .map(|(id, p)| pb::Participant {
                participant_id: id.to_string(),
                kind: kind_out(p.kind),
                present: p.present,
                read_up_to: st.horizons.get(id).filter(|h| !h.private).map(|h| h.up_to),
            })
            .collect(),
        last_seq: st.last_seq,
        timers: Some(timers_out(st.timers)),
        version: s.version.unwrap_or_default(),
        do_not_track: st.tracking.declined(),
    }
}

pub(crate) fn subject_out(s: &Subject) -> pb::Subject {
    // While processing is restricted the profile is stored, not shown.
    let shown = |v: &String| if s.restricted { String::new() } else { v.clone() };
    pb::Subject {
        subject_id: s.id.map(|i| i.to_string()).unwrap_or_default(),
        username: shown(&s.username),
        email: shown(&s.email),
        phone: shown(&s.phone),
        status: (match s.status {
            Some(SubjectStatus::Invited) => pb::SubjectStatus::Invited,
            Some(SubjectStatus::Active) => pb::SubjectStatus::Active,
            Some(SubjectStatus::Deactivated) => pb::SubjectStatus::Deactivated,
            None => pb::SubjectStatus::Unspecified,
        }) as i32,
        restricted: s.restricted,
        consents: s
            .consents
            .iter()
            .map(|(purpose, c)| pb::Consent {
                purpose: purpose.clone(),
                granted: c.granted,
                policy_version: c.policy_version.clone(),
                at_micros: c.at_micros,
            })
            .collect(),
    }
}

fn reason_text(r: Reason) -> String {
    match r {
        Reason::Api => "api".into(),
        Reason::Timer => "timer".into(),
    }
}

pub(crate) fn event_out(session: Uuid, w: app::sessions::Watched) -> pb::SessionEvent {
    use pb::session_event::Event;
    let state =
        |s: Status, r: Reason| Event::StateChanged(pb::StateChange { state: state_out(s), reason: reason_text(r) });
    let event = match w.event {
        SessionEvent::Started { pype, end_user, timers, tracking, .. } => Event::Started(pb::SessionStarted {
            pype_id: pype.to_string(),
            end_user_id: end_user.to_string(),
            timers: Some(timers_out(timers)),
            do_not_track: tracking.declined(),
        }),
        SessionEvent::ParticipantJoined { participant, kind, .. } => {
            Event::Joined(pb::ParticipantChanged { participant_id: participant.to_string(), kind: kind_out(kind) })
        }
        SessionEvent::ParticipantLeft { participant, .. } => Event::Left(pb::ParticipantChanged {
            participant_id: participant.to_string(),
            kind: pb::ParticipantKind::Unspecified as i32,
        }),
        SessionEvent::MessagePosted { seq, sender, sent_at_micros, body, device, attachments } => {
            Event::Message(pb::Message {
                seq,
                sender_id: sender.to_string(),
                sent_at_micros,
                // A message has a body or attachments: neither means its key was shredded.
                erased: body.is_empty() && attachments.is_empty(),
                body,
                device: device.unwrap_or_default(),
                attachments: attachments.iter().map(|a| attachment_out(session, a)).collect(),
            })
        }
        SessionEvent::MediaUploaded { media, meta } => {
            Event::MediaUploaded(media_out(&MediaInfo { session, media, meta }))
        }
        SessionEvent::ReadHorizonAdvanced { participant, up_to, private } => Event::ReadHorizon(pb::ReadHorizon {
            participant_id: participant.to_string(),
            up_to: if private { 0 } else { up_to },
        }),
        SessionEvent::BecameInactive { reason, .. } => state(Status::Inactive, reason),
        SessionEvent::Reactivated { reason, .. } => state(Status::Active, reason),
        SessionEvent::Closed { reason, .. } => state(Status::Closed, reason),
        SessionEvent::Erased { .. } => {
            Event::StateChanged(pb::StateChange { state: state_out(Status::Closed), reason: "erasure".into() })
        }
        SessionEvent::ContentExpired { .. } => {
            Event::StateChanged(pb::StateChange { state: state_out(Status::Closed), reason: "retention".into() })
        }
        SessionEvent::Restricted { .. } => Event::Restriction(pb::Restriction { restricted: true }),
        SessionEvent::RestrictionLifted { .. } => Event::Restriction(pb::Restriction { restricted: false }),
        SessionEvent::LocationShared { participant, location, .. } => Event::Location(pb::Location {
            participant_id: participant.to_string(),
            location: if location.is_empty() { "[erased]".into() } else { location },
        }),
    };
    pb::SessionEvent { version: w.version, recorded_at_micros: w.recorded_at_micros, event: Some(event) }
}

pub(crate) fn media_out(m: &MediaInfo) -> pb::Media {
    pb::Media {
        media_id: m.media.to_string(),
        session_id: m.session.to_string(),
        uploader_id: m.meta.uploader.to_string(),
        // Content type and digest are sealed: empty once the key is gone.
        erased: m.meta.content_type.is_empty(),
        content_type: m.meta.content_type.clone(),
        size: m.meta.size,
        sha256: m.meta.sha256.clone(),
        file_name: m.meta.file_name.clone().unwrap_or_default(),
        uploaded_at_micros: m.meta.at_micros,
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

pub(crate) fn role_in(r: i32) -> Result<Role, AppError> {
    match pb::StaffRole::try_from(r) {
        Ok(pb::StaffRole::Support) => Ok(Role::Support),
        Ok(pb::StaffRole::PrivacyOfficer) => Ok(Role::PrivacyOfficer),
        Ok(pb::StaffRole::Admin) => Ok(Role::Admin),
        _ => Err(AppError::invalid("role", "one of SUPPORT, PRIVACY_OFFICER, ADMIN")),
    }
}

fn role_out(r: Role) -> i32 {
    (match r {
        Role::Support => pb::StaffRole::Support,
        Role::PrivacyOfficer => pb::StaffRole::PrivacyOfficer,
        Role::Admin => pb::StaffRole::Admin,
    }) as i32
}

pub(crate) fn member_out(id: Uuid, m: &Member) -> pb::StaffMember {
    pb::StaffMember {
        staff_id: id.to_string(),
        role: role_out(m.role),
        disabled: m.disabled,
        added_micros: m.added_micros,
    }
}

pub(crate) fn grant_out(id: Uuid, g: &Grant, now: i64) -> pb::BreakGlassGrant {
    pb::BreakGlassGrant {
        grant_id: id.to_string(),
        staff_id: g.staff.to_string(),
        tenant_id: g.tenant.to_string(),
        reason: g.reason.clone(),
        opened_micros: g.opened_micros,
        expires_micros: g.expires_micros,
        live: g.live(now),
    }
}

pub(crate) fn id_text(b: &[u8]) -> String {
    Uuid::from_slice(b).map(|u| u.to_string()).unwrap_or_default()
}

/// A feed item on the wire.
pub(crate) fn feed_out(item: FeedItem) -> pb::FeedMessage {
    use pb::feed_message::Item;
    let item = match item {
        FeedItem::Event(e) => Item::Event(integration_event_out(*e)),
        FeedItem::Live { after_position } => Item::Live(pb::FeedLive { after_position }),
        FeedItem::Behind { position, head } => Item::Behind(pb::FeedBehind { position, head }),
    };
    pb::FeedMessage { item: Some(item) }
}

/// An integration event on the wire (the same message a webhook carries).
pub(crate) fn integration_event_out(e: IntegrationEvent) -> pb::IntegrationEvent {
    use pb::integration_event::Data;
    let text = |id: Option<Uuid>| id.map(|i| i.to_string()).unwrap_or_default();
    let session = e.session.unwrap_or_default();
    let data = match e.data {
        FeedData::None => None,
        FeedData::SessionStarted { end_user, timers, do_not_track } => {
            Some(Data::SessionStarted(pb::FeedSessionStarted {
                end_user_id: end_user.to_string(),
                timers: Some(timers_out(timers)),
                do_not_track,
            }))
        }
        FeedData::SessionState { status, reason } => {
            Some(Data::SessionState(pb::FeedSessionState { state: state_out(status), reason: reason.into() }))
        }
        FeedData::Participant { participant, kind } => Some(Data::Participant(pb::FeedParticipant {
            participant_id: participant.to_string(),
            kind: kind.map_or(pb::ParticipantKind::Unspecified as i32, kind_out),
        })),
        FeedData::Message(m) => {
            let withheld = m.withheld;
            let message = message_out(session, m);
            Some(Data::MessagePosted(pb::FeedMessagePosted {
                seq: message.seq,
                sender_id: message.sender_id,
                sent_at_micros: message.sent_at_micros,
                body: message.body,
                device: message.device,
                attachments: message.attachments,
                erased: message.erased,
                withheld,
            }))
        }
        FeedData::Media { session, media, meta } => {
            Some(Data::MediaUploaded(media_out(&MediaInfo { session, media, meta })))
        }
        FeedData::ReadHorizon { participant, up_to, private } => {
            Some(Data::ReadHorizon(pb::FeedReadHorizon { participant_id: participant.to_string(), up_to, private }))
        }
        FeedData::Location { participant, location, erased, withheld } => Some(Data::Location(pb::FeedLocation {
            participant_id: participant.to_string(),
            location,
            erased,
            withheld,
        })),
        FeedData::Retention { retention_days } => Some(Data::Retention(pb::FeedRetention { retention_days })),
        FeedData::Erasure { request, due_micros, certificate, signature } => {
            Some(Data::Erasure(pb::FeedErasure { request_id: request.to_string(), due_micros, certificate, signature }))
        }
        FeedData::Pype { name, description } => Some(Data::Pype(pb::FeedPype { name, description })),
        FeedData::Consent { purpose, policy_version } => {
            Some(Data::Consent(pb::FeedConsent { purpose, policy_version }))
        }
    };
    pb::IntegrationEvent {
        schema_version: app::feed::SCHEMA_VERSION,
        event_id: e.event_id.to_string(),
        position: e.position,
        r#type: e.event_type.into(),
        recorded_at_micros: e.recorded_at_micros,
        tenant_id: e.tenant.to_string(),
        pype_id: text(e.pype),
        session_id: text(e.session),
        session_seq: e.session_seq,
        subject_id: text(e.subject),
        data,
    }
}

/// A message as the feed and the tenant export have it.
fn message_out(session: Uuid, m: FeedMessage) -> pb::Message {
    pb::Message {
        seq: m.seq,
        sender_id: m.sender.to_string(),
        sent_at_micros: m.sent_at_micros,
        body: m.body,
        device: m.device.unwrap_or_default(),
        erased: m.erased,
        attachments: m.attachments.iter().map(|a| attachment_out(session, a)).collect(),
    }
}

/// A tenant export's record on the wire.
pub(crate) fn export_record_out(item: ExportItem) -> pb::TenantExportRecord {
    use pb::tenant_export_record::Record;
    let record = match item.record {
        ExportRecord::Header { tenant, tenant_name, as_of, started_at_micros } => {
            Record::Header(pb::TenantExportHeader {
                format: app::tenant_export::FORMAT.into(),
                version: app::tenant_export::VERSION,
                tenant_id: tenant.to_string(),
                tenant_name,
                as_of_position: as_of,
                started_at_micros,
            })
        }
        ExportRecord::Pype(id, p) => Record::Pype(pb::Pype { pype_id: id.to_string(), ..pype_out(&p) }),
        ExportRecord::Subject(s) => Record::Subject(exported_subject_out(&s)),
        ExportRecord::Session(s) => Record::Session(session_out(&s)),
        ExportRecord::Message { session, message } => {
            let withheld = message.withheld;
            Record::Message(pb::ExportedMessage {
                session_id: session.to_string(),
                message: Some(message_out(session, message)),
                withheld,
            })
        }
        ExportRecord::Media { info, .. } => Record::Media(media_out(&info)),
        ExportRecord::End { as_of, counts } => Record::End(pb::TenantExportEnd {
            as_of_position: as_of,
            pypes: counts.pypes,
            subjects: counts.subjects,
            sessions: counts.sessions,
            messages: counts.messages,
            media: counts.media,
        }),
    };
    pb::TenantExportRecord { resume_token: item.token, record: Some(record) }
}

/// An end user with their personal data (withheld while restricted, gone
/// once erased).
fn exported_subject_out(s: &Subject) -> pb::ExportedSubject {
    let erased = s.erasure.as_ref().is_some_and(|e| e.shredded.is_some());
    let shown = |v: &String| if s.restricted || erased { String::new() } else { v.clone() };
    let base = subject_out(s);
    pb::ExportedSubject {
        subject_id: base.subject_id,
        username: shown(&s.username),
        email: shown(&s.email),
        phone: shown(&s.phone),
        birth_date: match s.birth {
            Some(Birth::Date { year, month, day }) if !s.restricted && !erased => {
                format!("{year:04}-{month:02}-{day:02}")
            }
            _ => String::new(),
        },
        status: base.status,
        consents: base.consents,
        erased,
        restricted: s.restricted,
        invited: s.status == Some(SubjectStatus::Invited),
    }
}

pub fn webhook_out(v: app::webhook::WebhookView) -> pb::WebhookInfo {
    let w = v.webhook;
    let s = v.status;
    let (paused, paused_reason, paused_at_micros) = match w.paused {
        Some((reason, at)) => (true, reason, at),
        None => (false, String::new(), 0),
    };
    pb::WebhookInfo {
        webhook_id: w.id.to_string(),
        url: w.url,
        description: w.description,
        types: w.types,
        pype_id: w.pype.map(|p| p.to_string()).unwrap_or_default(),
        created_at_micros: w.created_micros,
        previous_secret_until_micros: w.previous.map_or(0, |(_, until)| until),
        paused,
        paused_reason,
        paused_at_micros,
        status: Some(pb::WebhookStatus {
            delivering_here: s.delivering_here,
            delivered: s.delivered,
            failed_attempts: s.failed_attempts,
            queued: s.queued,
            delivered_through_position: s.checkpoint,
            last_attempt_at_micros: s.last_attempt_micros,
            last_status: s.last_status.into(),
            last_error: s.last_error,
            last_latency_micros: s.last_latency_micros,
            last_delivered_at_micros: s.last_delivered_micros,
            failing_since_micros: s.failing_since_micros,
            next_attempt_at_micros: s.next_attempt_micros,
            redelivered: s.redelivered,
        }),
    }
}
