//! The JSON body of a webhook request: one integration event, with the
//! field names of `IntegrationEvent` in `proto/pypes/api/v1/integration.proto`
//! (docs/integrations.md, "The request"). Ids are text, times are
//! microseconds since the Unix epoch, absent ids are left out, `data`
//! holds one member named as the proto's `data` oneof member.

use domain::session::{Attachment, MediaMeta, ParticipantKind, Status};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::feed::{FeedData, IntegrationEvent, SCHEMA_VERSION};

fn state(s: Status) -> &'static str {
    match s {
        Status::Active => "SESSION_STATE_ACTIVE",
        Status::Inactive => "SESSION_STATE_INACTIVE",
        Status::Closed => "SESSION_STATE_CLOSED",
    }
}

fn kind(k: Option<ParticipantKind>) -> &'static str {
    match k {
        None => "PARTICIPANT_KIND_UNSPECIFIED",
        Some(ParticipantKind::EndUser) => "PARTICIPANT_KIND_END_USER",
        Some(ParticipantKind::Agent) => "PARTICIPANT_KIND_AGENT",
        Some(ParticipantKind::Bot) => "PARTICIPANT_KIND_BOT",
    }
}

fn attachment(session: Uuid, sender: Uuid, a: &Attachment) -> Value {
    json!({
        "media_id": a.media.to_string(),
        "session_id": session.to_string(),
        "uploader_id": sender.to_string(),
        "content_type": a.content_type,
        "size": a.size,
        "sha256": hex::encode(&a.sha256),
        "file_name": a.file_name.clone().unwrap_or_default(),
    })
}

fn media(session: Uuid, media: Uuid, m: &MediaMeta) -> Value {
    json!({
        "media_id": media.to_string(),
        "session_id": session.to_string(),
        "uploader_id": m.uploader.to_string(),
        "content_type": m.content_type,
        "size": m.size,
        "sha256": hex::encode(&m.sha256),
        "file_name": m.file_name.clone().unwrap_or_default(),
        "uploaded_at_micros": m.at_micros,
        "erased": m.sha256.is_empty(),
    })
}

/// The `data` member: `(oneof member name, value)`, or `None`.
fn data(e: &IntegrationEvent) -> Option<(&'static str, Value)> {
    let session = e.session.unwrap_or_default();
    Some(match &e.data {
        FeedData::None => return None,
        FeedData::SessionStarted { end_user, timers, do_not_track } => (
            "session_started",
            json!({
                "end_user_id": end_user.to_string(),
                "do_not_track": do_not_track,
                "timers": {
                    "inactive_after_secs": timers.inactive_after_secs,
                    "close_after_secs": timers.close_after_secs,
                },
            }),
        ),
        FeedData::SessionState { status, reason } => {
            ("session_state", json!({ "state": state(*status), "reason": reason }))
        }
        FeedData::Participant { participant, kind: k } => {
            ("participant", json!({ "participant_id": participant.to_string(), "kind": kind(*k) }))
        }
        FeedData::Message(m) => (
            "message_posted",
            json!({
                "seq": m.seq,
                "sender_id": m.sender.to_string(),
                "sent_at_micros": m.sent_at_micros,
                "body": m.body,
                "device": m.device.clone().unwrap_or_default(),
                "attachments": m.attachments.iter().map(|a| attachment(session, m.sender, a)).collect::<Vec<_>>(),
                "erased": m.erased,
                "withheld": m.withheld,
            }),
        ),
        FeedData::Media { session, media: id, meta } => ("media_uploaded", media(*session, *id, meta)),
        FeedData::ReadHorizon { participant, up_to, private } => {
            ("read_horizon", json!({ "participant_id": participant.to_string(), "up_to": up_to, "private": private }))
        }
        FeedData::Location { participant, location, erased, withheld } => (
            "location",
            json!({
                "participant_id": participant.to_string(),
                "location": location,
                "erased": erased,
                "withheld": withheld,
            }),
        ),
        FeedData::Retention { retention_days } => ("retention", json!({ "retention_days": retention_days })),
        FeedData::Erasure { request, due_micros, certificate, signature } => (
            "erasure",
            json!({
                "request_id": request.to_string(),
                "due_micros": due_micros,
                "certificate": certificate,
                "signature": signature,
            }),
        ),
        FeedData::Pype { name, description } => ("pype", json!({ "name": name, "description": description })),
        FeedData::Consent { purpose, policy_version } => {
            ("consent", json!({ "purpose": purpose, "policy_version": policy_version }))
        }
    })
}

/// The request body of `e`.
pub fn body(e: &IntegrationEvent) -> Vec<u8> {
    let mut o = Map::new();
    o.insert("schema_version".into(), json!(SCHEMA_VERSION));
    o.insert("event_id".into(), json!(e.event_id.to_string()));
    o.insert("position".into(), json!(e.position));
    o.insert("type".into(), json!(e.event_type));
    o.insert("recorded_at_micros".into(), json!(e.recorded_at_micros));
    o.insert("tenant_id".into(), json!(e.tenant.to_string()));
    for (name, id) in [("pype_id", e.pype), ("session_id", e.session), ("subject_id", e.subject)] {
        if let Some(id) = id {
            o.insert(name.into(), json!(id.to_string()));
        }
    }
    if e.session_seq > 0 {
        o.insert("session_seq".into(), json!(e.session_seq));
    }
    let mut d = Map::new();
    if let Some((name, value)) = data(e) {
        d.insert(name.into(), value);
    }
    o.insert("data".into(), Value::Object(d));
    // Serialising a map of strings, numbers and booleans cannot fail.
    serde_json::to_vec(&Value::Object(o)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::FeedMessage;

    #[test]
    fn a_message_posted_body_names_the_fields_of_the_proto() {
        let s = Uuid::from_u128(3);
        let e = IntegrationEvent {
            event_id: Uuid::from_u128(1),
            position: 42,
            event_type: "message.posted",
            recorded_at_micros: 7,
            tenant: Uuid::from_u128(2),
            pype: Some(Uuid::from_u128(4)),
            session: Some(s),
            session_seq: 5,
            subject: None,
            data: FeedData::Message(FeedMessage::new(
                2,
                Uuid::from_u128(9),
                6,
                "hi \"there\"".into(),
                None,
                vec![],
                false,
            )),
        };
        let v: Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["event_id"], Uuid::from_u128(1).to_string());
        assert_eq!(v["position"], 42);
        assert_eq!(v["type"], "message.posted");
        assert_eq!(v["session_seq"], 5);
        assert!(v.get("subject_id").is_none());
        assert_eq!(v["data"]["message_posted"]["body"], "hi \"there\"");
        assert_eq!(v["data"]["message_posted"]["seq"], 2);
        assert_eq!(v["data"]["message_posted"]["erased"], false);
    }
}
