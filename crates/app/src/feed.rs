//! The tenant's event feed: the log's events of one tenant as integration
//! events (docs/integrations.md), catch-up then live.
//!
//! The feed reads `$all` through a catch-up subscription filtered to the
//! tenant's streams, at the pace of its consumer: nothing is queued for a
//! slow client but a small channel, so writers never wait for it. Each
//! stored event becomes at most one integration event; every event of a
//! Session stream becomes one, so a Session's sequence (its stream
//! version + 1) has no gaps. Content is opened with the tenant's keys;
//! shredded content arrives marked erased, and the content of a Session
//! whose processing is restricted is withheld.

use std::collections::HashMap;
use std::sync::Arc;

use domain::Timers;
use domain::pype::{Pype, PypeEvent};
use domain::session::{Attachment, MediaMeta, ParticipantKind, Reason, Session, SessionEvent, Status};
use domain::subject::{Subject, SubjectEvent};
use eventlog::{EventFilter, RecordedEvent};
use eventlog::{SubscribeFrom, SubscriptionMessage, SubscriptionOptions, subscribe_all};
use events::types as t;
use events::{Codec, Kind, StreamName};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::{App, AppError, parse_id};

/// The schema version every integration event of this module carries.
pub const SCHEMA_VERSION: u32 = 1;

pub use crate::limits::FeedLimits;

/// Each integration event type and the stored event types it comes from.
pub const TYPES: &[(&str, &[&str])] = &[
    ("session.started", &[t::SESSION_STARTED]),
    ("session.state_changed", &[t::SESSION_BECAME_INACTIVE, t::SESSION_REACTIVATED]),
    ("session.closed", &[t::SESSION_CLOSED]),
    ("session.erased", &[t::SESSION_ERASED]),
    ("session.content_expired", &[t::SESSION_CONTENT_EXPIRED]),
    ("session.restricted", &[t::SESSION_RESTRICTED]),
    ("session.restriction_lifted", &[t::SESSION_RESTRICTION_LIFTED]),
    ("participant.joined", &[t::PARTICIPANT_JOINED]),
    ("participant.left", &[t::PARTICIPANT_LEFT]),
    ("message.posted", &[t::MESSAGE_POSTED]),
    ("media.uploaded", &[t::MEDIA_UPLOADED]),
    ("read_horizon.moved", &[t::READ_HORIZON_ADVANCED]),
    ("location.shared", &[t::LOCATION_SHARED]),
    ("pype.created", &[t::PYPE_CREATED]),
    ("pype.archived", &[t::PYPE_ARCHIVED]),
    ("subject.registered", &[t::SUBJECT_REGISTERED]),
    ("subject.invited", &[t::SUBJECT_INVITED]),
    ("subject.onboarded", &[t::SUBJECT_ONBOARDED]),
    ("subject.deactivated", &[t::SUBJECT_DEACTIVATED]),
    ("subject.reactivated", &[t::SUBJECT_REACTIVATED]),
    ("subject.rectified", &[t::SUBJECT_RECTIFIED]),
    ("subject.restricted", &[t::SUBJECT_PROCESSING_RESTRICTED]),
    ("subject.restriction_lifted", &[t::SUBJECT_RESTRICTION_LIFTED]),
    ("consent.granted", &[t::CONSENT_GRANTED]),
    ("consent.withdrawn", &[t::CONSENT_WITHDRAWN]),
    ("erasure.requested", &[t::SUBJECT_ERASURE_REQUESTED]),
    ("subject.erased", &[t::SUBJECT_ERASED]),
    ("erasure.certified", &[t::SUBJECT_ERASURE_CERTIFIED]),
];

/// Where a feed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedStart {
    /// Only events written after the call.
    Now,
    /// From the first event of the log.
    Start,
    /// After this log position (a resume token).
    After(u64),
}

/// What a feed carries.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    pub start: FeedStart,
    /// Integration event types (empty: all).
    pub types: Vec<String>,
    /// A Pype's id (empty: all).
    pub pype_id: String,
    /// A Session's id (empty: all).
    pub session_id: String,
}

/// One item of the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    Event(Box<IntegrationEvent>),
    /// Caught up: the resume token as of now (`None`: the log is empty).
    Live {
        after_position: Option<u64>,
    },
    /// Fell behind while live; catching up again from `position`.
    Behind {
        position: u64,
        head: u64,
    },
}

/// An integration event: the envelope and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct IntegrationEvent {
    pub event_id: Uuid,
    pub position: u64,
    pub event_type: &'static str,
    pub recorded_at_micros: i64,
    pub tenant: Uuid,
    pub pype: Option<Uuid>,
    pub session: Option<Uuid>,
    /// The event's number in its Session, from 1 (0: not a Session event).
    pub session_seq: u64,
    pub subject: Option<Uuid>,
    pub data: FeedData,
}

/// What is particular to an integration event's type.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedData {
    None,
    SessionStarted {
        end_user: Uuid,
        timers: Timers,
        do_not_track: bool,
    },
    /// The state after the event and why ("api", "timer", "erasure").
    SessionState {
        status: Status,
        reason: &'static str,
    },
    Participant {
        participant: Uuid,
        kind: Option<ParticipantKind>,
    },
    Message(FeedMessage),
    Media {
        session: Uuid,
        media: Uuid,
        meta: MediaMeta,
    },
    ReadHorizon {
        participant: Uuid,
        up_to: u64,
        private: bool,
    },
    Location {
        participant: Uuid,
        location: String,
        erased: bool,
        withheld: bool,
    },
    Retention {
        retention_days: u32,
    },
    Erasure {
        request: Uuid,
        due_micros: i64,
        certificate: String,
        signature: String,
    },
    Pype {
        name: String,
        description: String,
    },
    Consent {
        purpose: String,
        policy_version: String,
    },
}

/// A message as the feed sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedMessage {
    pub seq: u64,
    pub sender: Uuid,
    pub sent_at_micros: i64,
    pub body: String,
    pub device: Option<String>,
    pub attachments: Vec<Attachment>,
    pub erased: bool,
    pub withheld: bool,
}

impl FeedMessage {
    /// A message as the Session's event holds it; `restricted` withholds
    /// its content (body, device, attachments). A message has a body or
    /// attachments, so neither means its key was shredded: erased.
    pub fn new(
        seq: u64,
        sender: Uuid,
        sent_at_micros: i64,
        body: String,
        device: Option<String>,
        attachments: Vec<Attachment>,
        restricted: bool,
    ) -> Self {
        let erased = body.is_empty() && attachments.is_empty();
        let withheld = restricted && !erased;
        if withheld {
            Self {
                seq,
                sender,
                sent_at_micros,
                body: String::new(),
                device: None,
                attachments: Vec::new(),
                erased,
                withheld,
            }
        } else {
            Self { seq, sender, sent_at_micros, body, device, attachments, erased, withheld }
        }
    }
}

/// The checked filters of a feed (the default passes every event).
#[derive(Debug, Clone, Default)]
pub(crate) struct Filters {
    /// Stored event types to read (empty: every type the feed knows).
    pub(crate) stored_types: Vec<String>,
    pub(crate) pype: Option<Uuid>,
    pub(crate) session: Option<Uuid>,
}

/// The stored types of integration event types; `field` names the request
/// field in the error for an unknown one.
pub(crate) fn stored_types(field: &'static str, types: &[String]) -> Result<Vec<String>, AppError> {
    let (known, unknown) = known_stored_types(types);
    match unknown.first() {
        Some(name) => Err(AppError::invalid(
            field,
            format!("{name:?} is not an integration event type (docs/integrations.md lists them)"),
        )),
        None => Ok(known),
    }
}

/// The stored types of the integration event types this server knows,
/// and the names it does not know.
pub(crate) fn known_stored_types(types: &[String]) -> (Vec<String>, Vec<&str>) {
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for name in types {
        match TYPES.iter().find(|(n, _)| n == name) {
            Some((_, stored)) => known.extend(stored.iter().map(|s| s.to_string())),
            None => unknown.push(name.as_str()),
        }
    }
    (known, unknown)
}

impl Filters {
    /// The backend's filter: the tenant's streams (narrowed by the Pype or
    /// Session) and the stored types.
    fn log_filter(&self, tenant: Uuid) -> EventFilter {
        let stream_prefixes = match (self.session, self.pype) {
            (Some(s), _) => vec![events::stream_name(Kind::Session, tenant, s)],
            (None, Some(p)) => {
                vec![Kind::Session.tenant_prefix(tenant), events::stream_name(Kind::Pype, tenant, p)]
            }
            (None, None) => {
                [Kind::Session, Kind::Pype, Kind::Subject].iter().map(|k| k.tenant_prefix(tenant)).collect()
            }
        };
        let event_types = if self.stored_types.is_empty() {
            TYPES.iter().flat_map(|(_, stored)| stored.iter().map(|s| s.to_string())).collect()
        } else {
            self.stored_types.clone()
        };
        EventFilter { stream_prefixes, event_types }
    }
}

/// What the feed remembers of a Session: its Pype never changes; whether
/// its processing is restricted is known as of `as_of` (the version read)
/// and follows the Session's restriction events after that.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionFacts {
    pype: Uuid,
    restricted: bool,
    as_of: Option<u64>,
}

/// Sessions remembered by one feed, at most this many (then forgotten and
/// read again as needed).
const SESSION_CACHE: usize = 50_000;

/// The Sessions one reader of the log remembers.
pub(crate) type SessionCache = HashMap<Uuid, SessionFacts>;

impl App {
    /// Starts a tenant's feed: the checks happen here (so a bad request is
    /// refused before the stream opens), the events come on the receiver.
    pub async fn subscribe_tenant_events(
        self: &Arc<Self>,
        who: &Credentials,
        request: FeedRequest,
    ) -> Result<mpsc::Receiver<Result<FeedItem, AppError>>, AppError> {
        let tenant = self.tenant(who).await?;
        let stored_types = stored_types("types", &request.types)?;
        let pype = self.optional_pype(tenant, &request.pype_id).await?;
        let session = match request.session_id.as_str() {
            "" => None,
            id => {
                let id = parse_id("session_id", id)?;
                let s = self.session_of(tenant, id).await?;
                if pype.is_some_and(|p| p != s.state.pype) {
                    return Err(AppError::invalid("session_id", "the Session is not in the Pype named by pype_id"));
                }
                Some(id)
            }
        };
        let head = *self.log.watch_head().borrow();
        let from = match request.start {
            FeedStart::Start => SubscribeFrom::Start,
            FeedStart::Now => match head {
                0 => SubscribeFrom::Start,
                h => SubscribeFrom::After(h - 1),
            },
            FeedStart::After(p) if p >= head => {
                return Err(AppError::OutOfRange(format!(
                    "after_position {p} is past the log's head: the last position is {}",
                    head.checked_sub(1).map_or("none (the log is empty)".into(), |l| l.to_string())
                )));
            }
            FeedStart::After(p) => SubscribeFrom::After(p),
        };
        let filters = Filters { stored_types, pype, session };
        Ok(self.open_feed(tenant, from, filters, self.feed_limits))
    }

    /// A feed of `tenant`'s events from `from` under `filters`, without
    /// the caller's checks (the webhooks' delivery reads it too).
    pub(crate) fn open_feed(
        self: &Arc<Self>,
        tenant: Uuid,
        from: SubscribeFrom,
        filters: Filters,
        limits: FeedLimits,
    ) -> mpsc::Receiver<Result<FeedItem, AppError>> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move { me.run_feed(tenant, from, filters, limits, tx).await });
        rx
    }

    /// Follows the log for one feed until the consumer goes away, stalls,
    /// or the log fails.
    async fn run_feed(
        self: Arc<Self>,
        tenant: Uuid,
        from: SubscribeFrom,
        filters: Filters,
        limits: FeedLimits,
        tx: mpsc::Sender<Result<FeedItem, AppError>>,
    ) {
        let options = SubscriptionOptions {
            page_size: 256,
            fall_behind_threshold: limits.behind_positions,
            coalesce: limits.coalesce,
        };
        let mut sub = subscribe_all(self.log.clone(), from, filters.log_filter(tenant), options);
        let mut sessions: HashMap<Uuid, SessionFacts> = HashMap::new();
        let mut last_sent: Option<u64> = match from {
            SubscribeFrom::Start => None,
            SubscribeFrom::After(p) => Some(p),
        };
        loop {
            let message = tokio::select! {
                m = sub.next() => m,
                _ = tx.closed() => return,
            };
            let item = match message {
                Ok(SubscriptionMessage::Event(recorded)) => {
                    let position = recorded.position;
                    match self.integration_event(tenant, &filters, &mut sessions, &recorded).await {
                        Ok(Some(event)) => Ok(FeedItem::Event(Box::new(event))),
                        Ok(None) => continue,
                        Err(e) => Err(AppError::internal(&format!("the feed at log position {position}"), e)),
                    }
                }
                Ok(SubscriptionMessage::CaughtUp { position }) => {
                    Ok(FeedItem::Live { after_position: position.checked_sub(1).or(last_sent) })
                }
                Ok(SubscriptionMessage::FellBehind { position, head }) => Ok(FeedItem::Behind { position, head }),
                Err(e) => Err(e.into()),
            };
            let failed = item.is_err();
            let sending = match &item {
                Ok(FeedItem::Event(e)) => Some(e.position),
                _ => None,
            };
            match tokio::time::timeout(limits.stall, tx.send(item)).await {
                // Only what the channel took counts as sent: the item whose
                // send timed out is the first the consumer will not get.
                Ok(Ok(())) => last_sent = sending.or(last_sent),
                Ok(Err(_)) => return,
                Err(_) => {
                    // The consumer read nothing for the whole limit: say
                    // where to resume once it reads again, and stop.
                    let resume = last_sent.map_or("from_start".into(), |p| format!("after_position {p}"));
                    let _ = tx
                        .send(Err(AppError::TooMany(format!(
                            "the feed's consumer read nothing for {} s; resume with {resume}",
                            limits.stall.as_secs()
                        ))))
                        .await;
                    return;
                }
            }
            if failed {
                return;
            }
        }
    }

    /// The integration event a stored event of `tenant` is, if it is one
    /// and passes the filters.
    pub(crate) async fn integration_event(
        &self,
        tenant: Uuid,
        filters: &Filters,
        sessions: &mut SessionCache,
        r: &RecordedEvent,
    ) -> Result<Option<IntegrationEvent>, AppError> {
        let Some(name) = StreamName::parse(&r.stream).filter(|n| n.tenant == tenant) else {
            return Ok(None);
        };
        let Some(event_type) = feed_type(r.event_type()) else { return Ok(None) };
        let mut e = IntegrationEvent {
            event_id: r.id(),
            position: r.position,
            event_type,
            recorded_at_micros: r.recorded_at_micros,
            tenant,
            pype: None,
            session: None,
            session_seq: 0,
            subject: None,
            data: FeedData::None,
        };
        match name.kind {
            Kind::Session => {
                if filters.session.is_some_and(|s| s != name.id) {
                    return Ok(None);
                }
                // A Pype filter is decided from the cached Session before its
                // content is opened (a webhook per Pype reads every Session).
                if let Some(want) = filters.pype
                    && self.cached_facts(tenant, name.id, sessions).await?.pype != want
                {
                    return Ok(None);
                }
                let event = <Session as Codec>::decode(r, &self.keyring).await?;
                let facts = self.session_facts(tenant, name.id, &event, r.version, sessions).await?;
                if filters.pype.is_some_and(|p| p != facts.pype) || filters.session.is_some_and(|s| s != name.id) {
                    return Ok(None);
                }
                e.pype = Some(facts.pype);
                e.session = Some(name.id);
                e.session_seq = r.version + 1;
                e.data = session_data(name.id, event, facts.restricted, &mut e.subject);
            }
            Kind::Pype => {
                if filters.session.is_some() || filters.pype.is_some_and(|p| p != name.id) {
                    return Ok(None);
                }
                e.pype = Some(name.id);
                if let PypeEvent::Created { name, description, .. } = <Pype as Codec>::decode(r, &self.keyring).await? {
                    e.data = FeedData::Pype { name, description };
                }
            }
            Kind::Subject => {
                if filters.session.is_some() || filters.pype.is_some() {
                    return Ok(None);
                }
                e.subject = Some(name.id);
                e.data = subject_data(<Subject as Codec>::decode(r, &self.keyring).await?);
            }
            Kind::Tenant | Kind::Staff => return Ok(None),
        }
        Ok(Some(e))
    }

    /// What the feed knows of a Session, read once and then cached.
    async fn cached_facts(
        &self,
        tenant: Uuid,
        session: Uuid,
        sessions: &mut HashMap<Uuid, SessionFacts>,
    ) -> Result<SessionFacts, AppError> {
        if let Some(f) = sessions.get(&session) {
            return Ok(*f);
        }
        let s = self.registry.read::<Session>(tenant, session).await?;
        let facts = SessionFacts { pype: s.state.pype, restricted: s.state.restricted, as_of: s.version };
        if sessions.len() >= SESSION_CACHE {
            sessions.clear();
        }
        sessions.insert(session, facts);
        Ok(facts)
    }

    /// The Pype and restriction of a Session, read once and then followed.
    async fn session_facts(
        &self,
        tenant: Uuid,
        session: Uuid,
        event: &SessionEvent,
        version: u64,
        sessions: &mut HashMap<Uuid, SessionFacts>,
    ) -> Result<SessionFacts, AppError> {
        let facts = self.cached_facts(tenant, session, sessions).await?;
        // A restriction recorded after the state was read.
        let newer = facts.as_of.is_none_or(|v| version > v);
        let restricted = match event {
            SessionEvent::Restricted { .. } if newer => Some(true),
            SessionEvent::RestrictionLifted { .. } if newer => Some(false),
            _ => None,
        };
        Ok(match restricted {
            Some(restricted) => {
                let f = SessionFacts { restricted, as_of: Some(version), ..facts };
                sessions.insert(session, f);
                f
            }
            None => facts,
        })
    }
}

/// The integration event type of a stored event type.
pub fn feed_type(stored: &str) -> Option<&'static str> {
    TYPES.iter().find(|(_, s)| s.contains(&stored)).map(|(n, _)| *n)
}

fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Api => "api",
        Reason::Timer => "timer",
    }
}

/// A Session event's data; `restricted` withholds content.
fn session_data(session: Uuid, event: SessionEvent, restricted: bool, subject: &mut Option<Uuid>) -> FeedData {
    let state = |status, reason| FeedData::SessionState { status, reason };
    match event {
        SessionEvent::Started { end_user, timers, tracking, .. } => {
            *subject = Some(end_user);
            FeedData::SessionStarted { end_user, timers, do_not_track: tracking.declined() }
        }
        SessionEvent::ParticipantJoined { participant, kind, .. } => {
            FeedData::Participant { participant, kind: Some(kind) }
        }
        SessionEvent::ParticipantLeft { participant, .. } => FeedData::Participant { participant, kind: None },
        SessionEvent::MessagePosted { seq, sender, sent_at_micros, body, device, attachments } => {
            FeedData::Message(FeedMessage::new(seq, sender, sent_at_micros, body, device, attachments, restricted))
        }
        SessionEvent::MediaUploaded { media, meta } => FeedData::Media { session, media, meta },
        SessionEvent::ReadHorizonAdvanced { participant, up_to, private } => {
            FeedData::ReadHorizon { participant, up_to: if private { 0 } else { up_to }, private }
        }
        SessionEvent::BecameInactive { reason: r, .. } => state(Status::Inactive, reason(r)),
        SessionEvent::Reactivated { reason: r, .. } => state(Status::Active, reason(r)),
        SessionEvent::Closed { reason: r, .. } => state(Status::Closed, reason(r)),
        SessionEvent::Erased { .. } => state(Status::Closed, "erasure"),
        SessionEvent::ContentExpired { retention_days, .. } => FeedData::Retention { retention_days },
        SessionEvent::Restricted { .. } | SessionEvent::RestrictionLifted { .. } => FeedData::None,
        SessionEvent::LocationShared { participant, location, .. } => {
            let erased = location.is_empty();
            let withheld = restricted && !erased;
            FeedData::Location {
                participant,
                location: if withheld { String::new() } else { location },
                erased,
                withheld,
            }
        }
    }
}

/// A subject event's data: no personal data (the tenant's systems have
/// the subject's id; its details are read with GetSubject).
fn subject_data(event: SubjectEvent) -> FeedData {
    match event {
        SubjectEvent::ConsentGranted { purpose, policy_version, .. } => FeedData::Consent { purpose, policy_version },
        SubjectEvent::ConsentWithdrawn { purpose, .. } => FeedData::Consent { purpose, policy_version: String::new() },
        SubjectEvent::ErasureRequested { request, due_micros, .. } => {
            FeedData::Erasure { request, due_micros, certificate: String::new(), signature: String::new() }
        }
        SubjectEvent::Erased { request, .. } => {
            FeedData::Erasure { request, due_micros: 0, certificate: String::new(), signature: String::new() }
        }
        SubjectEvent::ErasureCertified { request, certificate, signature } => {
            FeedData::Erasure { request, due_micros: 0, certificate, signature }
        }
        _ => FeedData::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_named_and_never_widen_a_filter() {
        let types = vec!["message.posted".to_string(), "message.sent".to_string()];
        let (known, unknown) = known_stored_types(&types);
        assert_eq!((known, unknown), (vec![t::MESSAGE_POSTED.to_string()], vec!["message.sent"]));
        let e = stored_types("types", &types).unwrap_err();
        assert!(e.to_string().contains("message.sent"), "{e}");
        let gone = ["gone.type".to_string()];
        let (known, unknown) = known_stored_types(&gone);
        assert!(known.is_empty() && unknown == ["gone.type"]);
    }

    #[test]
    fn every_session_event_type_is_an_integration_event_and_no_type_is_mapped_twice() {
        // The Session's sequence has no gaps only if every stored type a
        // Session stream holds maps to an integration event.
        for stored in [
            t::SESSION_STARTED,
            t::PARTICIPANT_JOINED,
            t::PARTICIPANT_LEFT,
            t::MESSAGE_POSTED,
            t::MEDIA_UPLOADED,
            t::READ_HORIZON_ADVANCED,
            t::SESSION_BECAME_INACTIVE,
            t::SESSION_REACTIVATED,
            t::SESSION_CLOSED,
            t::SESSION_ERASED,
            t::SESSION_RESTRICTED,
            t::SESSION_CONTENT_EXPIRED,
            t::SESSION_RESTRICTION_LIFTED,
            t::LOCATION_SHARED,
        ] {
            assert!(feed_type(stored).is_some(), "{stored} has no integration event");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, stored) in TYPES {
            assert!(name.contains('.') && name.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'));
            for s in *stored {
                assert!(t::ALL.contains(s), "{s} is not a stored type");
                assert!(seen.insert(*s), "{s} maps to two integration types");
            }
        }
    }

    #[test]
    fn restricted_content_is_withheld_and_shredded_content_is_erased() {
        let s = Uuid::now_v7();
        let posted = |body: &str| SessionEvent::MessagePosted {
            seq: 1,
            sender: s,
            sent_at_micros: 5,
            body: body.into(),
            device: Some("phone".into()),
            attachments: Vec::new(),
        };
        let mut subject = None;
        let FeedData::Message(m) = session_data(s, posted("hello"), true, &mut subject) else { panic!() };
        assert!(m.withheld && !m.erased && m.body.is_empty() && m.device.is_none());
        let FeedData::Message(m) = session_data(s, posted(""), true, &mut subject) else { panic!() };
        assert!(m.erased && !m.withheld);
        let FeedData::Message(m) = session_data(s, posted("hello"), false, &mut subject) else { panic!() };
        assert_eq!((m.body.as_str(), m.device.as_deref(), m.withheld), ("hello", Some("phone"), false));
    }
}
