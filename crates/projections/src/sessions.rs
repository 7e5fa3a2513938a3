//! The Sessions read model: each Session with participants, state and read
//! horizons, the Sessions of each Pype in start order, the Sessions of each
//! end user (for erasure), and Pype overviews (open Sessions by state, last
//! activity).
//!
//! Messages are not copied into the view: a Session's messages are the
//! `MessagePosted` events of its own stream, which the log already indexes
//! by version, with their bodies and devices sealed exactly as written. The
//! view keeps how far it has applied them (`last_seq`) and a sparse index
//! (every [`INDEX_EVERY`]th sequence number → stream version) so a page of
//! messages starts reading near its first message. Listing reads the
//! stream and stops at `last_seq`, so messages agree with the Session row
//! (also in a replay as of a past time).
//!
//! Tables (keys are fixed-width, big-endian):
//! - `sessions`: session → SessionRow
//! - `msg_index`: session ‖ seq / INDEX_EVERY → stream version (u64 BE) of
//!   the first message of that block
//! - `by_pype`: tenant ‖ pype ‖ started µs ‖ session → ()
//! - `by_end_user`: tenant ‖ subject ‖ session → ()
//! - `pypes`: tenant ‖ pype → PypeOverviewRow

use eventlog::{Direction, EventFilter, EventLog, LogError, ReadFrom, RecordedEvent};
use proto::Message;
use proto::events as pb;
use proto::views::{HorizonRow, MessageRow, ParticipantRow, PypeOverviewRow, SessionRow, SessionState};
use uuid::Uuid;

use crate::cache::RowCache;
use crate::keys::{copy_id, key, sealed_ref, uuid_at, uuid_of};
use crate::{ApplyError, PURGE_EVENT, Projection, ReadView, ViewError, WriteView};

pub const NAME: &str = "sessions";

/// Messages per entry of the sparse message index.
pub const INDEX_EVERY: u64 = 64;

#[derive(Debug, Clone, Copy)]
pub struct SessionsProjection;

/// `<kind>-<tenant>-<id>` → (tenant, id).
pub fn parse_stream(stream: &str, kind: events::Kind) -> Option<(Uuid, Uuid)> {
    events::StreamName::parse_as(stream, kind).map(|n| (n.tenant, n.id))
}

/// [`parse_stream`] once per run of events sharing a stream name (a log
/// read hands consecutive events of one stream the same `Arc`).
#[derive(Default)]
pub(crate) struct StreamIds {
    /// The last stream name and what it parsed to.
    last: Option<(std::sync::Arc<str>, Option<TenantAndId>)>,
}

type TenantAndId = (Uuid, Uuid);

impl StreamIds {
    pub(crate) fn parse(&mut self, r: &RecordedEvent, kind: events::Kind) -> Option<(Uuid, Uuid)> {
        match &self.last {
            Some((name, ids)) if std::sync::Arc::ptr_eq(name, &r.stream) => *ids,
            _ => {
                let ids = parse_stream(&r.stream, kind);
                self.last = Some((r.stream.clone(), ids));
                ids
            }
        }
    }
}

fn poison(r: &RecordedEvent, what: impl std::fmt::Display) -> ApplyError {
    ApplyError::Poison(format!("{} at position {} ({}): {what}", r.event_type(), r.position, r.stream))
}

pub(crate) fn payload<M: Message + Default>(r: &RecordedEvent) -> Result<M, ApplyError> {
    // From a `Bytes` handle: `bytes` fields share the payload, no copies.
    M::decode(r.event.payload.clone()).map_err(|e| poison(r, e))
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

fn index_key(session: &[u8], seq: u64) -> Vec<u8> {
    key(&[session, &(seq / INDEX_EVERY).to_be_bytes()])
}

/// The rows a page changes, decoded once and written once at its end.
struct Page<'a, 't> {
    w: &'a mut WriteView<'t>,
    sessions: RowCache<SessionRow>,
    overviews: RowCache<PypeOverviewRow>,
    streams: StreamIds,
}

impl Page<'_, '_> {
    fn session(&mut self, skey: [u8; 16]) -> Result<Option<&mut SessionRow>, ApplyError> {
        Ok(self.sessions.get(self.w, &skey)?)
    }

    /// The overview at `okey` (tenant ‖ pype), made when there is none.
    fn overview(&mut self, okey: &[u8]) -> Result<&mut PypeOverviewRow, ApplyError> {
        Ok(self.overviews.get_or_insert_with(self.w, okey, || PypeOverviewRow {
            tenant_id: okey[..16].to_vec(),
            pype_id: okey[16..].to_vec(),
            ..PypeOverviewRow::default()
        })?)
    }

    fn finish(self) -> Result<(), ViewError> {
        self.sessions.flush(self.w)?;
        self.overviews.flush(self.w)
    }
}

impl Projection for SessionsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: messages are read from the log (no `messages` table), rows
        // carry `last_seq`, and `msg_index` appeared.
        2
    }

    fn filter(&self) -> EventFilter {
        EventFilter {
            stream_prefixes: vec![events::Kind::Session.prefix().into(), events::Kind::Subject.prefix().into()],
            event_types: vec![],
        }
    }

    fn apply(&self, w: &mut WriteView<'_>, r: &RecordedEvent) -> Result<(), ApplyError> {
        self.apply_batch(w, &[r]).map_err(|(_, e)| e)
    }

    fn apply_batch(&self, w: &mut WriteView<'_>, events: &[&RecordedEvent]) -> Result<(), (usize, ApplyError)> {
        let mut page = Page {
            w,
            sessions: RowCache::new("sessions"),
            overviews: RowCache::new("pypes"),
            streams: StreamIds::default(),
        };
        for (i, r) in events.iter().enumerate() {
            apply_one(&mut page, r).map_err(|e| (i, e))?;
        }
        page.finish().map_err(|e| (events.len().saturating_sub(1), e.into()))
    }
}

fn apply_one(page: &mut Page<'_, '_>, r: &RecordedEvent) -> Result<(), ApplyError> {
    if events::Kind::Subject.owns(&r.stream) {
        if r.event_type() == PURGE_EVENT {
            purge(page, r)?;
        }
        return Ok(());
    }
    let Some((tenant, session)) = page.streams.parse(r, events::Kind::Session) else {
        return Err(poison(r, "stream name is not session-<tenant>-<id>"));
    };
    let skey = *session.as_bytes();
    if r.event_type() == events::types::SESSION_STARTED {
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
        page.sessions.put(&skey, row);
        page.w.put("by_pype", &key(&[tenant.as_bytes(), pype.as_bytes(), &micros_key(p.at_micros), &skey]), &[])?;
        page.w.put("by_end_user", &key(&[tenant.as_bytes(), end_user.as_bytes(), &skey]), &[])?;
        let o = page.overview(&key(&[tenant.as_bytes(), pype.as_bytes()]))?;
        o.sessions_total += 1;
        o.active += 1;
        o.last_activity_micros = o.last_activity_micros.max(p.at_micros);
        return Ok(());
    }
    let Some(row) = page.session(skey)? else {
        // Purged, or never started: nothing to update.
        return Ok(());
    };
    let before = state_of(row);
    let mut activity = None;
    let mut index = None;
    match r.event_type() {
        events::types::PARTICIPANT_JOINED => {
            let p: pb::ParticipantJoined = payload(r)?;
            row.participants.retain(|x| x.participant_id != p.participant_id.as_ref());
            row.participants.push(ParticipantRow {
                participant_id: p.participant_id.to_vec(),
                kind: p.kind,
                present: true,
                joined_micros: p.at_micros,
            });
        }
        events::types::PARTICIPANT_LEFT => {
            let p: pb::ParticipantLeft = payload(r)?;
            for x in row.participants.iter_mut().filter(|x| x.participant_id == p.participant_id.as_ref()) {
                x.present = false;
            }
        }
        events::types::MESSAGE_POSTED => {
            let p: pb::MessagePosted = payload(r)?;
            if row.messages == 0 || row.last_seq / INDEX_EVERY != p.seq / INDEX_EVERY {
                index = Some(index_key(&skey, p.seq));
            }
            row.messages += 1;
            row.last_seq = p.seq;
            row.last_activity_micros = p.sent_at_micros;
            activity = Some(p.sent_at_micros);
        }
        events::types::READ_HORIZON_ADVANCED => {
            let p: pb::ReadHorizonAdvanced = payload(r)?;
            row.horizons.retain(|h| h.participant_id != p.participant_id.as_ref());
            row.horizons.push(HorizonRow {
                participant_id: p.participant_id.to_vec(),
                up_to: p.up_to,
                private: p.private,
            });
        }
        events::types::SESSION_BECAME_INACTIVE | events::types::SESSION_REACTIVATED | events::types::SESSION_CLOSED => {
            let p: pb::SessionStateChanged = payload(r)?;
            row.state = match r.event_type() {
                events::types::SESSION_BECAME_INACTIVE => SessionState::Inactive,
                events::types::SESSION_REACTIVATED => {
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
        events::types::SESSION_RESTRICTED => row.restricted = true,
        events::types::SESSION_CONTENT_EXPIRED => row.content_expired = true,
        events::types::SESSION_RESTRICTION_LIFTED => row.restricted = false,
        events::types::SESSION_ERASED => {
            let p: pb::SessionErased = payload(r)?;
            if before != SessionState::Closed {
                row.closed_micros = p.at_micros;
            }
            row.state = SessionState::Closed as i32;
        }
        _ => {}
    }
    let after = state_of(row);
    let mut okey = [0u8; 32];
    copy_id(&mut okey[..16], tenant.as_bytes());
    copy_id(&mut okey[16..], &row.pype_id);
    if let Some(k) = index {
        page.w.put("msg_index", &k, &r.version.to_be_bytes())?;
    }
    if before != after || activity.is_some() {
        let o = page.overview(&okey)?;
        count(o, before, -1);
        count(o, after, 1);
        if let Some(at) = activity {
            o.last_activity_micros = o.last_activity_micros.max(at);
        }
    }
    Ok(())
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

/// The erased subject's Sessions lose their end user and are marked
/// erased (listing then shows their messages without bodies, devices or
/// the subject as sender); the end-user index forgets them. What remains
/// is Clear: the Sessions happened, with this many messages, at these times.
fn purge(page: &mut Page<'_, '_>, r: &RecordedEvent) -> Result<(), ApplyError> {
    let p: pb::SubjectErasureKeysShredded = payload(r)?;
    let subject = id(r, "subject_id", &p.subject_id)?;
    let Some((tenant, _)) = parse_stream(&r.stream, events::Kind::Subject) else {
        return Err(poison(r, "stream name is not subject-<tenant>-<id>"));
    };
    let subject_bytes = subject.as_bytes().as_slice();
    for s in &p.session_ids {
        let session = id(r, "session_ids", s)?;
        if let Some(row) = page.session(*session.as_bytes())? {
            row.erased = true;
            row.end_user_id.clear();
            row.participants.retain(|x| x.participant_id != subject_bytes);
            row.horizons.retain(|h| h.participant_id != subject_bytes);
        }
    }
    for (k, _) in page.w.scan_prefix("by_end_user", &key(&[tenant.as_bytes(), subject.as_bytes()]))? {
        page.w.delete("by_end_user", &k)?;
    }
    Ok(())
}

/// A Session of `tenant` (another tenant's reads as absent).
pub fn get_session(view: &ReadView, tenant: Uuid, session: Uuid) -> Result<Option<SessionRow>, ViewError> {
    Ok(view.get_msg::<SessionRow>("sessions", session.as_bytes())?.filter(|r| r.tenant_id == tenant.as_bytes()))
}

/// Where to read a page of a Session's messages: taken from the view (the
/// Session's row and the sparse index), then used without it by
/// [`list_messages`], so no view snapshot is held across the log read.
#[derive(Debug, Clone)]
pub struct MessageCursor {
    stream: String,
    from_version: u64,
    after_seq: u64,
    last_seq: u64,
    erased: bool,
    /// Participants still named in the row (after an erasure, the erased
    /// end user is not among them).
    members: Vec<Vec<u8>>,
}

/// Messages of `row`'s Session after `after_seq`.
pub fn message_cursor(view: &ReadView, row: &SessionRow, after_seq: u64) -> Result<MessageCursor, ViewError> {
    let bad = |what: &str| ViewError::Corrupt { table: "sessions".into(), reason: format!("{what} is not a uuid") };
    let tenant = uuid_of(&row.tenant_id).ok_or_else(|| bad("tenant_id"))?;
    let session = uuid_of(&row.session_id).ok_or_else(|| bad("session_id"))?;
    let target = index_key(&row.session_id, after_seq.saturating_add(1));
    let from_version = match view.floor("msg_index", &row.session_id, &target)? {
        Some((_, v)) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| ViewError::Corrupt {
            table: "msg_index".into(),
            reason: format!("version is {} bytes", v.len()),
        })?),
        None => 0,
    };
    Ok(MessageCursor {
        stream: events::stream_name(events::Kind::Session, tenant, session),
        from_version,
        after_seq,
        last_seq: if row.messages == 0 { 0 } else { row.last_seq },
        erased: row.erased,
        members: row.participants.iter().map(|p| p.participant_id.clone()).collect(),
    })
}

/// At most `limit` messages at `cursor`, read from the Session's stream;
/// bodies and devices stay sealed (a Session whose end user was erased has
/// none, and that user's id is blanked).
pub async fn list_messages(
    log: &dyn EventLog,
    cursor: &MessageCursor,
    limit: usize,
) -> Result<Vec<MessageRow>, ViewError> {
    const CHUNK: usize = 256;
    let mut out = Vec::new();
    let mut from = cursor.from_version;
    if cursor.after_seq >= cursor.last_seq || limit == 0 {
        return Ok(out);
    }
    loop {
        let events = match log.read_stream(&cursor.stream, ReadFrom::Version(from), Direction::Forward, CHUNK).await {
            Ok(events) => events,
            Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for r in &events {
            from = r.version + 1;
            if r.event_type() != events::types::MESSAGE_POSTED {
                continue;
            }
            // The projection skipped what does not decode; so does listing.
            let Ok(p) = pb::MessagePosted::decode(r.event.payload.as_ref()) else { continue };
            if p.seq <= cursor.after_seq {
                continue;
            }
            if p.seq > cursor.last_seq {
                return Ok(out);
            }
            let field = |name: &str| r.event.sealed_fields.iter().find(|f| f.field == name);
            let mut sender_id = p.sender_id.to_vec();
            if cursor.erased && !cursor.members.contains(&sender_id) {
                sender_id.clear();
            }
            out.push(MessageRow {
                seq: p.seq,
                sender_id,
                sender_kind: p.sender_kind,
                sent_at_micros: p.sent_at_micros,
                body: if cursor.erased { None } else { field("body").map(|f| sealed_ref(r.id(), f)) },
                device: if cursor.erased { None } else { field("device").map(|f| sealed_ref(r.id(), f)) },
                attachments: if cursor.erased { None } else { field("attachments").map(|f| sealed_ref(r.id(), f)) },
                erased: cursor.erased,
            });
            if out.len() >= limit {
                return Ok(out);
            }
        }
        if events.len() < CHUNK {
            return Ok(out);
        }
    }
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

/// Closed Sessions whose content may still be kept, in session-id order
/// after `after`, at most `limit` (the retention scheduler pages through
/// them): (tenant, session, pype, closed at).
pub fn closed_with_content(
    view: &ReadView,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<(Uuid, Uuid, Uuid, i64)>, ViewError> {
    let start = after.map(|a| *a.as_bytes());
    let mut out = Vec::new();
    let mut cursor = start;
    loop {
        let rows = view.scan("sessions", &[], cursor.as_ref().map(|c| c.as_slice()), 1024)?;
        let Some((last, _)) = rows.last() else { break };
        cursor = <[u8; 16]>::try_from(last.as_slice()).ok();
        let done = rows.len() < 1024;
        for (_, v) in &rows {
            let row = <SessionRow as Message>::decode(v.as_slice())
                .map_err(|e| ViewError::Corrupt { table: "sessions".into(), reason: e.to_string() })?;
            if state_of(&row) != SessionState::Closed || row.erased || row.content_expired {
                continue;
            }
            let (Some(t), Some(s), Some(p)) =
                (uuid_of(&row.tenant_id), uuid_of(&row.session_id), uuid_of(&row.pype_id))
            else {
                continue;
            };
            out.push((t, s, p, row.closed_micros));
            if out.len() >= limit {
                return Ok(out);
            }
        }
        if done || cursor.is_none() {
            break;
        }
    }
    Ok(out)
}
