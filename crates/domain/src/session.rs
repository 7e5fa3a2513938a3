//! Session: one conversation in a Pype between one end user and the
//! tenant's agents and bots. Messages carry a per-Session sequence number;
//! each participant has a read horizon that only moves forward. Timers
//! move it `active → inactive → closed`; a message in an inactive Session
//! makes it active again; `closed` is final.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::common::{Aggregate, Ctx, FieldClass, PiiGroup, Rejection, Timers, check_text};

pub const MAX_BODY_CHARS: usize = 10_000;
pub const MAX_DEVICE_CHARS: usize = 200;
/// Attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
/// Media one Session may hold (each is an event of its stream and an entry
/// of the actor's state).
pub const MAX_MEDIA_PER_SESSION: usize = 10_000;
pub const MAX_FILE_NAME_CHARS: usize = 255;
pub const MAX_CONTENT_TYPE_CHARS: usize = 127;

/// What pypes knows of one uploaded blob. Content type, digest and file
/// name are content (sealed under the Session's key); after a shred they
/// read as empty.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediaMeta {
    pub uploader: Uuid,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 of the plaintext (empty once erased).
    pub sha256: Vec<u8>,
    pub file_name: Option<String>,
    /// The media key's id (a keystore `KeyId`'s bytes).
    pub key_id: Uuid,
    pub at_micros: i64,
}

/// A message's reference to a blob of its Session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub media: Uuid,
    pub content_type: String,
    pub size: u64,
    pub sha256: Vec<u8>,
    pub file_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ParticipantKind {
    EndUser,
    Agent,
    Bot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Status {
    Active,
    Inactive,
    Closed,
}

/// Why the state changed: a call of the API, or a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Reason {
    Api,
    Timer,
}

/// Messages of one imported Session, at most.
pub const MAX_IMPORTED_MESSAGES: usize = 10_000;
/// Characters of all bodies of one imported Session, at most (the Session
/// is written in one append, which the log caps at 16 MiB).
pub const MAX_IMPORTED_CHARS: usize = 8 << 20;

/// A message of a Session imported from another platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedMessage {
    pub sender: Uuid,
    /// How a sender other than the end user joins (agent or bot).
    pub kind: ParticipantKind,
    pub body: String,
    pub sent_at_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCommand {
    /// A whole historic Session from another platform, with its original
    /// times: started, its agents and bots joined at their first message,
    /// its messages, and closed if it was. All or nothing: one append.
    Import {
        session: Uuid,
        tenant: Uuid,
        pype: Uuid,
        end_user: Uuid,
        pype_timers: Timers,
        started_at_micros: i64,
        messages: Vec<ImportedMessage>,
        closed_at_micros: Option<i64>,
    },
    Start {
        session: Uuid,
        tenant: Uuid,
        pype: Uuid,
        end_user: Uuid,
        /// The Pype's defaults, and this Session's own values if any.
        pype_timers: Timers,
        timers: Option<Timers>,
        /// The end user's user agent's tracking signals.
        tracking: Tracking,
    },
    PostMessage {
        sender: Uuid,
        body: String,
        device: Option<String>,
        /// Media of this Session, by id.
        attachments: Vec<Uuid>,
    },
    /// A blob is complete and durable in the blob store: from now on
    /// messages may reference it.
    RecordMedia {
        media: Uuid,
        meta: MediaMeta,
    },
    AdvanceReadHorizon {
        participant: Uuid,
        up_to: u64,
        private: bool,
    },
    Join {
        participant: Uuid,
        kind: ParticipantKind,
    },
    Leave {
        participant: Uuid,
    },
    Close,
    /// A timer went off: apply every deadline that has passed at `ctx.now`.
    Tick,
    /// The end user's erasure: the Session takes nothing more, ever (its
    /// content key is about to be shredded). Idempotent.
    Erase {
        request: Uuid,
    },
    /// The end user's processing is restricted: messages, joins, read
    /// horizons and locations are refused until lifted (closing and timers
    /// still apply). Idempotent.
    Restrict,
    LiftRestriction,
    /// Retention: the closed Session's content key was destroyed because
    /// its time was up. Idempotent.
    ExpireContent {
        retention_days: u32,
    },
    /// The end user shares where they are (e.g. for roadside help).
    /// `consented`: the end user's geolocation consent holds (the caller
    /// reads it from the subject).
    ShareLocation {
        participant: Uuid,
        /// Degrees × 10⁶.
        latitude_e6: i64,
        longitude_e6: i64,
        accuracy_m: u32,
        consented: bool,
    },
}

/// Serialize: for operators' tools (`pypes replay`), never a stored format.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SessionEvent {
    Started {
        session: Uuid,
        tenant: Uuid,
        pype: Uuid,
        end_user: Uuid,
        timers: Timers,
        at_micros: i64,
        tracking: Tracking,
    },
    ParticipantJoined {
        participant: Uuid,
        kind: ParticipantKind,
        at_micros: i64,
    },
    ParticipantLeft {
        participant: Uuid,
        at_micros: i64,
    },
    MessagePosted {
        seq: u64,
        sender: Uuid,
        sent_at_micros: i64,
        body: String,
        device: Option<String>,
        attachments: Vec<Attachment>,
    },
    MediaUploaded {
        media: Uuid,
        meta: MediaMeta,
    },
    ReadHorizonAdvanced {
        participant: Uuid,
        up_to: u64,
        private: bool,
    },
    BecameInactive {
        reason: Reason,
        at_micros: i64,
    },
    Reactivated {
        reason: Reason,
        at_micros: i64,
    },
    Closed {
        reason: Reason,
        at_micros: i64,
    },
    Erased {
        request: Uuid,
        at_micros: i64,
    },
    Restricted {
        at_micros: i64,
    },
    ContentExpired {
        retention_days: u32,
        at_micros: i64,
    },
    RestrictionLifted {
        at_micros: i64,
    },
    /// `location` is "latitude,longitude,accuracy_m" (empty once erased).
    LocationShared {
        participant: Uuid,
        location: String,
        at_micros: i64,
    },
}

/// Message bodies are content (the Session's key); the device a message
/// came from is the end user's device data.
pub const FIELDS: &[(&str, &str, FieldClass)] = &[
    ("MessagePosted", "body", FieldClass::Content),
    ("MessagePosted", "device", FieldClass::Pii(PiiGroup::Device)),
    ("MessagePosted", "attachments", FieldClass::Content),
    ("MediaUploaded", "content_type", FieldClass::Content),
    ("MediaUploaded", "sha256", FieldClass::Content),
    ("MediaUploaded", "file_name", FieldClass::Content),
    ("LocationShared", "location", FieldClass::Pii(PiiGroup::Geo)),
];

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Participant {
    pub kind: ParticipantKind,
    pub present: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Horizon {
    pub up_to: u64,
    /// Hidden from agents (the end user's choice).
    pub private: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub id: Option<Uuid>,
    pub tenant: Uuid,
    pub pype: Uuid,
    pub end_user: Uuid,
    pub timers: Timers,
    pub status: Status,
    pub participants: BTreeMap<Uuid, Participant>,
    pub horizons: BTreeMap<Uuid, Horizon>,
    /// Sequence number of the last message (0 = none yet).
    pub last_seq: u64,
    /// Start of the current idle period (last message, start or reactivation).
    pub last_activity_micros: i64,
    pub inactive_since_micros: i64,
    /// The end user was erased: final, like closed, and then some.
    pub erased: bool,
    /// The end user's processing is restricted.
    pub restricted: bool,
    /// Retention destroyed the content key.
    pub content_expired: bool,
    /// When it closed (0 while open).
    pub closed_micros: i64,
    /// Blobs uploaded into the Session.
    pub media: BTreeMap<Uuid, MediaMeta>,
    /// The end user's tracking signals at the start (snapshots written
    /// before they existed read none).
    #[serde(default)]
    pub tracking: Tracking,
}

/// The tracking signals of the end user's user agent, passed through the
/// API by the customer's front end: Do-Not-Track (`DNT: 1`) and Global
/// Privacy Control (`Sec-GPC: 1`). Either one declines tracking: no device
/// detail is recorded for the Session and it counts in no analytics
/// aggregate (docs/privacy.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tracking {
    pub do_not_track: bool,
    pub global_privacy_control: bool,
}

impl Tracking {
    /// Whether the user agent declined tracking (either signal).
    pub fn declined(&self) -> bool {
        self.do_not_track || self.global_privacy_control
    }
}

impl Default for Session {
    fn default() -> Self {
        Self {
            id: None,
            tenant: Uuid::nil(),
            pype: Uuid::nil(),
            end_user: Uuid::nil(),
            timers: Timers::DEFAULT,
            status: Status::Active,
            participants: BTreeMap::new(),
            horizons: BTreeMap::new(),
            last_seq: 0,
            last_activity_micros: 0,
            inactive_since_micros: 0,
            erased: false,
            restricted: false,
            content_expired: false,
            closed_micros: 0,
            media: BTreeMap::new(),
            tracking: Tracking::default(),
        }
    }
}

const MICROS: i64 = 1_000_000;

impl Session {
    /// When the next timer goes off, if one is armed.
    pub fn next_deadline_micros(&self) -> Option<i64> {
        self.id?;
        if self.erased {
            return None;
        }
        match self.status {
            Status::Active => Some(self.last_activity_micros + i64::from(self.timers.inactive_after_secs) * MICROS),
            Status::Inactive => Some(self.inactive_since_micros + i64::from(self.timers.close_after_secs) * MICROS),
            Status::Closed => None,
        }
    }

    fn require_writable(&self) -> Result<(), Rejection> {
        match (self.id, self.status) {
            (None, _) => Err(Rejection::NotFound { what: "session" }),
            _ if self.erased => Err(Rejection::precondition("the session was erased with its end user")),
            _ if self.restricted => Err(Rejection::precondition(
                "processing of the end user's data is restricted: the session takes nothing new until it is lifted",
            )),
            (Some(_), Status::Closed) => Err(Rejection::precondition("the session is closed")),
            _ => Ok(()),
        }
    }

    fn is_present(&self, who: Uuid) -> bool {
        self.participants.get(&who).is_some_and(|p| p.present)
    }

    /// Whether `who` may upload into the Session now: a present
    /// participant of a Session that takes new content. The server asks
    /// before it accepts the first byte; the domain decides again when the
    /// upload is recorded.
    pub fn may_upload(&self, who: Uuid) -> Result<(), Rejection> {
        self.require_writable()?;
        if !self.is_present(who) {
            return Err(Rejection::precondition("the uploader is not a participant of the session"));
        }
        if self.media.len() >= MAX_MEDIA_PER_SESSION {
            return Err(Rejection::precondition(format!(
                "the session holds {MAX_MEDIA_PER_SESSION} media already (the most one session may hold)"
            )));
        }
        Ok(())
    }
}

/// Checks an uploaded blob's description (the server checks it before the
/// upload too, so a bad one never costs a byte of transfer).
pub fn check_media_meta(meta: &MediaMeta) -> Result<(), Rejection> {
    check_text("content_type", &meta.content_type, MAX_CONTENT_TYPE_CHARS, true)?;
    if meta.size == 0 {
        return Err(Rejection::invalid("size", "0: an upload holds at least one byte"));
    }
    if meta.sha256.len() != 32 {
        return Err(Rejection::invalid("sha256", format!("{} bytes; a SHA-256 is 32", meta.sha256.len())));
    }
    if let Some(name) = &meta.file_name {
        check_text("file_name", name, MAX_FILE_NAME_CHARS, false)?;
        if name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Rejection::invalid("file_name", "a name without path separators, not . or .."));
        }
    }
    Ok(())
}

impl Aggregate for Session {
    type Command = SessionCommand;
    type Event = SessionEvent;

    fn decide(&self, command: &SessionCommand, ctx: &Ctx) -> Result<Vec<SessionEvent>, Rejection> {
        let now = ctx.now_micros;
        match command {
            SessionCommand::Start { session, tenant, pype, end_user, pype_timers, timers, tracking } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { what: "session" });
                }
                let timers = match timers {
                    Some(t) => t.validate("timers")?,
                    None => *pype_timers,
                };
                Ok(vec![SessionEvent::Started {
                    session: *session,
                    tenant: *tenant,
                    pype: *pype,
                    end_user: *end_user,
                    timers,
                    at_micros: now,
                    tracking: *tracking,
                }])
            }
            SessionCommand::Import {
                session,
                tenant,
                pype,
                end_user,
                pype_timers,
                started_at_micros,
                messages,
                closed_at_micros,
            } => {
                if self.id.is_some() {
                    return Err(Rejection::AlreadyExists { what: "session" });
                }
                import(ImportPlan {
                    session: *session,
                    tenant: *tenant,
                    pype: *pype,
                    end_user: *end_user,
                    timers: *pype_timers,
                    started: *started_at_micros,
                    messages,
                    closed: *closed_at_micros,
                    now,
                })
            }
            SessionCommand::PostMessage { sender, body, device, attachments } => {
                self.require_writable()?;
                if !self.is_present(*sender) {
                    return Err(Rejection::precondition("the sender is not a participant of the session"));
                }
                if attachments.len() > MAX_ATTACHMENTS {
                    return Err(Rejection::invalid(
                        "attachment_ids",
                        format!("{} attachments; at most {MAX_ATTACHMENTS}", attachments.len()),
                    ));
                }
                // A message is text, attachments, or both.
                check_text("body", body, MAX_BODY_CHARS, attachments.is_empty())?;
                if let Some(d) = device {
                    check_text("device", d, MAX_DEVICE_CHARS, true)?;
                }
                let mut refs = Vec::with_capacity(attachments.len());
                for (i, media) in attachments.iter().enumerate() {
                    if attachments[..i].contains(media) {
                        return Err(Rejection::invalid("attachment_ids", format!("{media} is named twice")));
                    }
                    let Some(m) = self.media.get(media) else {
                        return Err(Rejection::invalid(
                            "attachment_ids",
                            format!("{media} is no media of this session (upload it with MediaService.UploadMedia)"),
                        ));
                    };
                    refs.push(Attachment {
                        media: *media,
                        content_type: m.content_type.clone(),
                        size: m.size,
                        sha256: m.sha256.clone(),
                        file_name: m.file_name.clone(),
                    });
                }
                let mut events = Vec::with_capacity(2);
                if self.status == Status::Inactive {
                    events.push(SessionEvent::Reactivated { reason: Reason::Api, at_micros: now });
                }
                // Under Do-Not-Track no device detail is recorded: it is
                // not needed to deliver the message.
                let device = if self.tracking.declined() { None } else { device.clone() };
                events.push(SessionEvent::MessagePosted {
                    seq: self.last_seq + 1,
                    sender: *sender,
                    sent_at_micros: now,
                    body: body.clone(),
                    device,
                    attachments: refs,
                });
                Ok(events)
            }
            SessionCommand::RecordMedia { media, meta } => {
                self.may_upload(meta.uploader)?;
                check_media_meta(meta)?;
                if self.media.contains_key(media) {
                    return Err(Rejection::AlreadyExists { what: "media" });
                }
                Ok(vec![SessionEvent::MediaUploaded {
                    media: *media,
                    meta: MediaMeta { at_micros: now, ..meta.clone() },
                }])
            }
            SessionCommand::AdvanceReadHorizon { participant, up_to, private } => {
                self.require_writable()?;
                if !self.participants.contains_key(participant) {
                    return Err(Rejection::precondition("not a participant of the session"));
                }
                if *up_to > self.last_seq {
                    return Err(Rejection::invalid(
                        "up_to",
                        format!("{up_to} is past the last message ({})", self.last_seq),
                    ));
                }
                let current = self.horizons.get(participant).copied();
                // Only forward; the same horizon again (or an older one) changes nothing
                // unless the privacy flag changes.
                match current {
                    Some(h) if h.up_to >= *up_to && h.private == *private => Ok(vec![]),
                    Some(h) if h.up_to > *up_to => Ok(vec![SessionEvent::ReadHorizonAdvanced {
                        participant: *participant,
                        up_to: h.up_to,
                        private: *private,
                    }]),
                    _ => Ok(vec![SessionEvent::ReadHorizonAdvanced {
                        participant: *participant,
                        up_to: *up_to,
                        private: *private,
                    }]),
                }
            }
            SessionCommand::Join { participant, kind } => {
                self.require_writable()?;
                if *kind == ParticipantKind::EndUser && *participant != self.end_user {
                    return Err(Rejection::invalid("kind", "a session has exactly one end user"));
                }
                if self.is_present(*participant) {
                    return Ok(vec![]);
                }
                Ok(vec![SessionEvent::ParticipantJoined { participant: *participant, kind: *kind, at_micros: now }])
            }
            SessionCommand::Leave { participant } => {
                self.require_writable()?;
                if *participant == self.end_user {
                    return Err(Rejection::precondition("the end user cannot leave their own session; close it"));
                }
                if !self.is_present(*participant) {
                    return Ok(vec![]);
                }
                Ok(vec![SessionEvent::ParticipantLeft { participant: *participant, at_micros: now }])
            }
            SessionCommand::Close => {
                if self.id.is_none() {
                    return Err(Rejection::NotFound { what: "session" });
                }
                Ok(if self.status == Status::Closed {
                    vec![]
                } else {
                    vec![SessionEvent::Closed { reason: Reason::Api, at_micros: now }]
                })
            }
            SessionCommand::Tick => {
                let mut state = self.clone();
                let mut events = Vec::new();
                // Overdue timers (after a restart) may pass both deadlines at once;
                // each change is stamped with its own deadline.
                while let Some(deadline) = state.next_deadline_micros().filter(|d| *d <= now) {
                    let event = match state.status {
                        Status::Active => SessionEvent::BecameInactive { reason: Reason::Timer, at_micros: deadline },
                        _ => SessionEvent::Closed { reason: Reason::Timer, at_micros: deadline },
                    };
                    state.evolve(&event);
                    events.push(event);
                }
                Ok(events)
            }
            SessionCommand::Erase { request } => {
                if self.id.is_none() {
                    return Err(Rejection::NotFound { what: "session" });
                }
                Ok(if self.erased { vec![] } else { vec![SessionEvent::Erased { request: *request, at_micros: now }] })
            }
            SessionCommand::Restrict | SessionCommand::LiftRestriction => {
                if self.id.is_none() {
                    return Err(Rejection::NotFound { what: "session" });
                }
                let restrict = matches!(command, SessionCommand::Restrict);
                Ok(match (restrict, self.restricted) {
                    (true, false) => vec![SessionEvent::Restricted { at_micros: now }],
                    (false, true) => vec![SessionEvent::RestrictionLifted { at_micros: now }],
                    _ => vec![],
                })
            }
            SessionCommand::ExpireContent { retention_days } => {
                if self.id.is_none() {
                    return Err(Rejection::NotFound { what: "session" });
                }
                if self.status != Status::Closed {
                    return Err(Rejection::precondition("only a closed session's content expires"));
                }
                Ok(if self.content_expired {
                    vec![]
                } else {
                    vec![SessionEvent::ContentExpired { retention_days: *retention_days, at_micros: now }]
                })
            }
            SessionCommand::ShareLocation { participant, latitude_e6, longitude_e6, accuracy_m, consented } => {
                self.require_writable()?;
                if *participant != self.end_user {
                    return Err(Rejection::invalid("participant_id", "only the session's end user shares a location"));
                }
                if !consented {
                    return Err(Rejection::precondition(
                        "the end user has not consented to geolocation: no location is accepted",
                    ));
                }
                let degrees = |e6: i64| {
                    format!("{}{}.{:06}", if e6 < 0 { "-" } else { "" }, e6.abs() / 1_000_000, e6.abs() % 1_000_000)
                };
                if !(-90_000_000..=90_000_000).contains(latitude_e6) {
                    return Err(Rejection::invalid("latitude", format!("{}; -90 to 90", degrees(*latitude_e6))));
                }
                if !(-180_000_000..=180_000_000).contains(longitude_e6) {
                    return Err(Rejection::invalid("longitude", format!("{}; -180 to 180", degrees(*longitude_e6))));
                }
                Ok(vec![SessionEvent::LocationShared {
                    participant: *participant,
                    location: format!("{},{},{accuracy_m}", degrees(*latitude_e6), degrees(*longitude_e6)),
                    at_micros: now,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::Started { session, tenant, pype, end_user, timers, at_micros, tracking } => {
                self.tracking = *tracking;
                self.id = Some(*session);
                self.tenant = *tenant;
                self.pype = *pype;
                self.end_user = *end_user;
                self.timers = *timers;
                self.status = Status::Active;
                self.last_activity_micros = *at_micros;
                self.participants.insert(*end_user, Participant { kind: ParticipantKind::EndUser, present: true });
            }
            SessionEvent::ParticipantJoined { participant, kind, .. } => {
                self.participants.insert(*participant, Participant { kind: *kind, present: true });
            }
            SessionEvent::ParticipantLeft { participant, .. } => {
                if let Some(p) = self.participants.get_mut(participant) {
                    p.present = false;
                }
            }
            SessionEvent::MessagePosted { seq, sent_at_micros, .. } => {
                self.last_seq = *seq;
                self.last_activity_micros = *sent_at_micros;
            }
            SessionEvent::ReadHorizonAdvanced { participant, up_to, private } => {
                self.horizons.insert(*participant, Horizon { up_to: *up_to, private: *private });
            }
            SessionEvent::BecameInactive { at_micros, .. } => {
                self.status = Status::Inactive;
                self.inactive_since_micros = *at_micros;
            }
            SessionEvent::Reactivated { at_micros, .. } => {
                self.status = Status::Active;
                self.last_activity_micros = *at_micros;
            }
            SessionEvent::Closed { at_micros, .. } => {
                self.status = Status::Closed;
                self.closed_micros = *at_micros;
            }
            SessionEvent::ContentExpired { .. } => self.content_expired = true,
            SessionEvent::Erased { at_micros, .. } => {
                self.erased = true;
                if self.status != Status::Closed {
                    self.closed_micros = *at_micros;
                }
                self.status = Status::Closed;
            }
            SessionEvent::Restricted { .. } => self.restricted = true,
            SessionEvent::RestrictionLifted { .. } => self.restricted = false,
            SessionEvent::LocationShared { .. } => {}
            SessionEvent::MediaUploaded { media, meta } => {
                self.media.insert(*media, meta.clone());
            }
        }
    }
}

struct ImportPlan<'a> {
    session: Uuid,
    tenant: Uuid,
    pype: Uuid,
    end_user: Uuid,
    timers: Timers,
    started: i64,
    messages: &'a [ImportedMessage],
    closed: Option<i64>,
    now: i64,
}

/// The events of an imported Session, or why it cannot be imported.
fn import(p: ImportPlan<'_>) -> Result<Vec<SessionEvent>, Rejection> {
    if p.started <= 0 || p.started > p.now {
        return Err(Rejection::invalid("started_at_micros", "must be a time in the past"));
    }
    if p.messages.len() > MAX_IMPORTED_MESSAGES {
        return Err(Rejection::invalid(
            "messages",
            format!("{} messages; at most {MAX_IMPORTED_MESSAGES} per session", p.messages.len()),
        ));
    }
    let chars: usize = p.messages.iter().map(|m| m.body.len()).sum();
    if chars > MAX_IMPORTED_CHARS {
        return Err(Rejection::invalid(
            "messages",
            format!("{chars} bytes of message bodies; at most {MAX_IMPORTED_CHARS} per session"),
        ));
    }
    let mut events = Vec::with_capacity(p.messages.len() + 2);
    events.push(SessionEvent::Started {
        session: p.session,
        tenant: p.tenant,
        pype: p.pype,
        end_user: p.end_user,
        timers: p.timers,
        at_micros: p.started,
        tracking: Tracking::default(),
    });
    let mut joined = std::collections::BTreeSet::new();
    let mut last = p.started;
    for (i, m) in p.messages.iter().enumerate() {
        let field = || format!("messages[{i}]");
        if m.sent_at_micros < last {
            return Err(Rejection::invalid(
                "messages",
                format!(
                    "{}: sent at {} before the message or start before it ({last}): out of order",
                    field(),
                    m.sent_at_micros
                ),
            ));
        }
        if m.sent_at_micros > p.now {
            return Err(Rejection::invalid("messages", format!("{}: sent in the future", field())));
        }
        check_text("body", &m.body, MAX_BODY_CHARS, true)
            .map_err(|r| Rejection::invalid("messages", format!("{}: {r}", field())))?;
        last = m.sent_at_micros;
        if m.sender != p.end_user && joined.insert(m.sender) {
            if m.kind == ParticipantKind::EndUser {
                return Err(Rejection::invalid(
                    "messages",
                    format!(
                        "{}: sender {} is not the session's end user; import it as an agent or a bot",
                        field(),
                        m.sender
                    ),
                ));
            }
            events.push(SessionEvent::ParticipantJoined {
                participant: m.sender,
                kind: m.kind,
                at_micros: m.sent_at_micros,
            });
        }
        events.push(SessionEvent::MessagePosted {
            seq: i as u64 + 1,
            sender: m.sender,
            sent_at_micros: m.sent_at_micros,
            body: m.body.clone(),
            device: None,
            attachments: Vec::new(),
        });
    }
    if let Some(closed) = p.closed {
        if closed < last || closed > p.now {
            return Err(Rejection::invalid("closed_at_micros", "before the last message or in the future"));
        }
        events.push(SessionEvent::Closed { reason: Reason::Api, at_micros: closed });
    }
    Ok(events)
}
