//! The Sessions read model: each Session with participants, state, read
//! horizons and its messages (paged), the Sessions of each Pype in start
//! order, the Sessions of each end user (for erasure), and Pype overviews
//! (open Sessions by state, last activity). Message bodies and devices stay
//! sealed as in the log.
//!
//! Tables (keys are fixed-width, big-endian):
//! - `sessions`: session → SessionRow
//! - `messages`: session ‖ seq → MessageRow
//! - `by_pype`: tenant ‖ pype ‖ started µs ‖ session → ()
//! - `by_end_user`: tenant ‖ subject ‖ session → ()
//! - `pypes`: tenant ‖ pype → PypeOverviewRow

use eventlog::{EventFilter, RecordedEvent};
use proto::Message;
use proto::events as pb;
use proto::views::{HorizonRow, MessageRow, ParticipantRow, PypeOverviewRow, SessionRow, SessionState};
use uuid::Uuid;

use crate::keys::{key, sealed_ref, uuid_at, uuid_of};
use crate::{ApplyError, PURGE_EVENT, Projection, ReadView, ViewError, WriteView};

pub const NAME: &str = "sessions";

#[derive(Debug, Clone, Copy)]
pub struct SessionsProjection;

/// `<kind>-<tenant>-<id>` → (tenant, id).
pub fn parse_stream(stream: &str, kind: &str) -> Option<(Uuid, Uuid)> {
    let rest = stream.strip_prefix(kind)?.strip_prefix('-')?;
    if rest.len() != 73 || rest.as_bytes()[36] != b'-' {
        return None;
    }
    Some((Uuid::parse_str(&rest[..36]).ok()?, Uuid::parse_str(&rest[37..]).ok()?))
}

fn poison(r: &RecordedEvent, what: impl std::fmt::Display) -> ApplyError {
    ApplyError::Poison(format!("{} at position {} ({}): {what}", r.event_type(), r.position, r.stream))
}

pub(crate) fn payload<M: Message + Default>(r: &RecordedEvent) -> Result<M, ApplyError> {
    M::decode(r.event.payload.as_ref()).map_err(|e| poison(r, e))
}

fn id(r: &RecordedEvent, field: &str, bytes: &[u8]) -> Result<Uuid, ApplyError> {
    uuid_of(bytes).ok_or_else(|| poison(r, format!("{field} is not a uuid")))
}

fn micros_key(m: i64) -> [u8; 8] {
    // Order-preserving for negative times too.
    ((m as u64) ^ (1 << 63)).to_be_bytes()
}

fn state_of(row: &SessionRow) -> SessionState {
    SessionState::try_from(row.state).unwrap_or(SessionState::Unspecified)
}

impl Projection for SessionsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> EventFilter {
        EventFilter { stream_prefixes: vec!["session-".into(), "subject-".into()], event_types: vec![] }
    }

    fn apply(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        if r.stream.starts_with("subject-") {
            if r.event_type() == PURGE_EVENT {
                purge(w, r)?;
            }
            return Ok(());
        }
        let Some((tenant, session)) = parse_stream(&r.stream, "session") else {
            return Err(poison(r, "stream name is not session-<tenant>-<id>"));
        };
        let skey = *session.as_bytes();
        if r.event_type() == "SessionStarted" {
            let p: pb::SessionStarted = payload(r)?;
            let pype = id(r, "pype_id", &p.pype_id)?;
            let end_user = id(r, "end_user_id", &p.end_user_id)?;
            let row = SessionRow {
                session_id: skey.to_vec(),
                tenant_id: tenant.as_bytes().to_vec(),
                pype_id: pype.as_bytes().to_vec(),
                end_user_id: end_user.as_bytes().to_vec(),
                state: SessionState::Active as i32,
                started_micros: p.at_micros,
                last_activity_micros: p.at_micros,
                participants: vec![ParticipantRow {
                    participant_id: end_user.as_bytes().to_vec(),
                    kind: pb::ParticipantKind::EndUser as i32,
                    present: true,
                    joined_micros: p.at_micros,
                }],
                ..SessionRow::default()
            };
            w.put_msg("sessions", &skey, &row)?;
            w.put("by_pype", &key(&[tenant.as_bytes(), pype.as_bytes(), &micros_key(p.at_micros), &skey]), &[])?;
            w.put("by_end_user", &key(&[tenant.as_bytes(), end_user.as_bytes(), &skey]), &[])?;
            overview(w, tenant, pype, |o| {
                o.sessions_total += 1;
                o.active += 1;
                o.last_activity_micros = o.last_activity_micros.max(p.at_micros);
            })?;
            return Ok(());
        }
        let Some(mut row) = w.get_msg::<SessionRow>("sessions", &skey)? else {
            // Purged, or never started: nothing to update.
            return Ok(());
        };
        let pype = uuid_of(&row.pype_id).unwrap_or_default();
        let before = state_of(&row);
        let mut activity = None;
        match r.event_type() {
            "ParticipantJoined" => {
                let p: pb::ParticipantJoined = payload(r)?;
                let who = p.participant_id.to_vec();
                row.participants.retain(|x| x.participant_id != who);
                row.participants.push(ParticipantRow {
                    participant_id: who,
                    kind: p.kind,
                    present: true,
                    joined_micros: p.at_micros,
                });
            }
            "ParticipantLeft" => {
                let p: pb::ParticipantLeft = payload(r)?;
                for x in row.participants.iter_mut().filter(|x| x.participant_id == p.participant_id.as_ref()) {
                    x.present = false;
                }
            }
            "MessagePosted" => {
                let p: pb::MessagePosted = payload(r)?;
                let field = |name: &str| r.event.sealed_fields.iter().find(|f| f.field == name);
                let body = field("body").map(|f| sealed_ref(r.id(), f));
                let device = field("device").map(|f| sealed_ref(r.id(), f));
                let m = MessageRow {
                    seq: p.seq,
                    sender_id: p.sender_id.to_vec(),
                    sender_kind: p.sender_kind,
                    sent_at_micros: p.sent_at_micros,
                    body,
                    device,
                    erased: row.erased,
                };
                w.put_msg("messages", &key(&[&skey, &p.seq.to_be_bytes()]), &m)?;
                row.messages += 1;
                row.last_activity_micros = p.sent_at_micros;
                activity = Some(p.sent_at_micros);
            }
            "ReadHorizonAdvanced" => {
                let p: pb::ReadHorizonAdvanced = payload(r)?;
                let who = p.participant_id.to_vec();
                row.horizons.retain(|h| h.participant_id != who);
                row.horizons.push(HorizonRow { participant_id: who, up_to: p.up_to, private: p.private });
            }
            "SessionBecameInactive" | "SessionReactivated" | "SessionClosed" => {
                let p: pb::SessionStateChanged = payload(r)?;
                row.state = match r.event_type() {
                    "SessionBecameInactive" => SessionState::Inactive,
                    "SessionReactivated" => {
                        row.last_activity_micros = p.at_micros;
                        activity = Some(p.at_micros);
                        SessionState::Active
                    }
                    _ => {
                        row.closed_micros = p.at_micros;
                        row.close_reason = p.reason;
                        SessionState::Closed
                    }
                } as i32;
            }
            "SessionErased" => {
                let p: pb::SessionErased = payload(r)?;
                if before != SessionState::Closed {
                    row.closed_micros = p.at_micros;
                }
                row.state = SessionState::Closed as i32;
            }
            _ => {}
        }
        let after = state_of(&row);
        w.put_msg("sessions", &skey, &row)?;
        if before != after || activity.is_some() {
            overview(w, tenant, pype, |o| {
                count(o, before, -1);
                count(o, after, 1);
                if let Some(at) = activity {
                    o.last_activity_micros = o.last_activity_micros.max(at);
                }
            })?;
        }
        Ok(())
    }
}

fn count(o: &mut PypeOverviewRow, state: SessionState, by: i64) {
    let slot = match state {
        SessionState::Active => &mut o.active,
        SessionState::Inactive => &mut o.inactive,
        SessionState::Closed => &mut o.closed,
        SessionState::Unspecified => return,
    };
    *slot = slot.saturating_add_signed(by);
}

fn overview(
    w: &mut WriteView<'_>,
    tenant: Uuid,
    pype: Uuid,
    f: impl FnOnce(&mut PypeOverviewRow),
) -> Result<(), ApplyError> {
    let k = key(&[tenant.as_bytes(), pype.as_bytes()]);
    let mut o = w.get_msg::<PypeOverviewRow>("pypes", &k)?.unwrap_or_else(|| PypeOverviewRow {
        pype_id: pype.as_bytes().to_vec(),
        tenant_id: tenant.as_bytes().to_vec(),
        ..PypeOverviewRow::default()
    });
    f(&mut o);
    w.put_msg("pypes", &k, &o)?;
    Ok(())
}

/// The erased subject's Sessions lose their end user, message bodies and
/// devices; the end-user index forgets them. What remains is Clear: the
/// Sessions happened, with this many messages, at these times.
fn purge(w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
    let p: pb::SubjectErasureKeysShredded = payload(r)?;
    let subject = id(r, "subject_id", &p.subject_id)?;
    let Some((tenant, _)) = parse_stream(&r.stream, "subject") else {
        return Err(poison(r, "stream name is not subject-<tenant>-<id>"));
    };
    let subject_bytes = subject.as_bytes().to_vec();
    for s in &p.session_ids {
        let session = id(r, "session_ids", s)?;
        let skey = *session.as_bytes();
        if let Some(mut row) = w.get_msg::<SessionRow>("sessions", &skey)? {
            row.erased = true;
            row.end_user_id.clear();
            row.participants.retain(|x| x.participant_id != subject_bytes);
            row.horizons.retain(|h| h.participant_id != subject_bytes);
            w.put_msg("sessions", &skey, &row)?;
        }
        for (k, v) in w.scan_prefix("messages", &skey)? {
            let mut m = MessageRow::decode(v.as_slice()).map_err(|e| {
                ApplyError::Store(ViewError::Corrupt { table: "messages".into(), reason: e.to_string() })
            })?;
            m.body = None;
            m.device = None;
            m.erased = true;
            if m.sender_id == subject_bytes {
                m.sender_id.clear();
            }
            w.put_msg("messages", &k, &m)?;
        }
    }
    for (k, _) in w.scan_prefix("by_end_user", &key(&[tenant.as_bytes(), subject.as_bytes()]))? {
        w.delete("by_end_user", &k)?;
    }
    Ok(())
}

/// A Session of `tenant` (another tenant's reads as absent).
pub fn get_session(view: &ReadView, tenant: Uuid, session: Uuid) -> Result<Option<SessionRow>, ViewError> {
    Ok(view.get_msg::<SessionRow>("sessions", session.as_bytes())?.filter(|r| r.tenant_id == tenant.as_bytes()))
}

/// Messages of a Session after `after_seq`, at most `limit`.
pub fn list_messages(
    view: &ReadView,
    session: Uuid,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<MessageRow>, ViewError> {
    let after = key(&[session.as_bytes(), &after_seq.to_be_bytes()]);
    view.scan("messages", session.as_bytes(), Some(&after), limit)?
        .into_iter()
        .map(|(_, v)| {
            MessageRow::decode(v.as_slice())
                .map_err(|e| ViewError::Corrupt { table: "messages".into(), reason: e.to_string() })
        })
        .collect()
}

/// Sessions of a Pype in start order after the opaque cursor `after`,
/// each with its own cursor (to continue after it).
pub fn list_sessions(
    view: &ReadView,
    tenant: Uuid,
    pype: Uuid,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, SessionRow)>, ViewError> {
    let prefix = key(&[tenant.as_bytes(), pype.as_bytes()]);
    let mut out = Vec::new();
    for (k, _) in view.scan("by_pype", &prefix, after, limit)? {
        if let Some(s) = uuid_at(&k, 40)
            && let Some(row) = get_session(view, tenant, s)?
        {
            out.push((k, row));
        }
    }
    Ok(out)
}

/// Sessions the subject took part in as end user (not purged yet).
pub fn sessions_of_end_user(view: &ReadView, tenant: Uuid, subject: Uuid) -> Result<Vec<Uuid>, ViewError> {
    let prefix = key(&[tenant.as_bytes(), subject.as_bytes()]);
    Ok(view.scan("by_end_user", &prefix, None, usize::MAX)?.into_iter().filter_map(|(k, _)| uuid_at(&k, 32)).collect())
}

pub fn pype_overview(view: &ReadView, tenant: Uuid, pype: Uuid) -> Result<Option<PypeOverviewRow>, ViewError> {
    view.get_msg("pypes", &key(&[tenant.as_bytes(), pype.as_bytes()]))
}
