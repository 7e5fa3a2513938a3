//! Access and portability: everything pypes holds about one end user, as
//! one JSON document (docs/export-format.md, `pypes-subject-export` v1),
//! written while it is read and sent in chunks of about 64 KiB through a
//! small channel. A slow reader holds the export back instead of the
//! server buffering it, so a subject with 100,000 messages exports in
//! bounded memory. Erased fields (shredded keys) read `"[erased]"`.

use std::fmt::Write as _;

use actors::{Codec, stream_name};
use domain::Aggregate;
use domain::session::{ParticipantKind, Reason, Session, SessionEvent, Status};
use domain::subject::{Birth, Subject, SubjectEvent, SubjectStatus};
use eventlog::{Direction, EventLog, LogError, ReadFrom, RecordedEvent};
use keystore::Keyring;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::certificate::json_str;
use crate::error::AppError;
use audit::time::time_text;

pub const FORMAT: &str = "pypes-subject-export";
pub const VERSION: u32 = 1;
/// A chunk is sent once it holds this much.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Events read from a stream at a time.
const PAGE: usize = 256;

/// Where the document goes: chunks of bytes, in order.
pub struct Sink {
    buf: String,
    tx: mpsc::Sender<Result<Vec<u8>, AppError>>,
}

impl Sink {
    pub fn new(tx: mpsc::Sender<Result<Vec<u8>, AppError>>) -> Self {
        Self { buf: String::with_capacity(CHUNK_BYTES + 4096), tx }
    }

    async fn push(&mut self, s: &str) -> Result<(), AppError> {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), AppError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK_BYTES + 4096)).into_bytes();
        self.tx.send(Ok(chunk)).await.map_err(|_| AppError::Unavailable("the export's reader went away".into()))
    }

    /// Ends the stream with `error` (the reader sees an error status, not a
    /// document that merely stops).
    pub async fn fail(self, error: AppError) {
        let _ = self.tx.send(Err(error)).await;
    }
}

fn text(s: &str) -> String {
    if s.is_empty() { json_str("[erased]") } else { json_str(s) }
}

fn time(micros: i64) -> String {
    json_str(&time_text(micros))
}

fn birth(b: &Option<Birth>) -> String {
    match b {
        Some(Birth::Date { year, month, day }) => json_str(&format!("{year:04}-{month:02}-{day:02}")),
        Some(Birth::AttestedAtLeast13) => json_str("attested at least 13"),
        None => "null".into(),
    }
}

fn kind(k: ParticipantKind) -> &'static str {
    match k {
        ParticipantKind::EndUser => "\"end_user\"",
        ParticipantKind::Agent => "\"agent\"",
        ParticipantKind::Bot => "\"bot\"",
    }
}

fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Api => "\"api\"",
        Reason::Timer => "\"timer\"",
    }
}

/// A stream read forward a page at a time.
struct Pages<'a> {
    log: &'a dyn EventLog,
    stream: &'a str,
    from: u64,
    done: bool,
}

impl<'a> Pages<'a> {
    fn new(log: &'a dyn EventLog, stream: &'a str) -> Self {
        Self { log, stream, from: 0, done: false }
    }

    async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, AppError> {
        if self.done {
            return Ok(None);
        }
        let page = match self.log.read_stream(self.stream, ReadFrom::Version(self.from), Direction::Forward, PAGE).await
        {
            Ok(p) => p,
            Err(LogError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        match page.last() {
            Some(last) if page.len() == PAGE => self.from = last.version + 1,
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}

fn subject_history(e: &SubjectEvent, at: i64) -> String {
    let what = match e {
        SubjectEvent::Registered { .. } => "registered".to_string(),
        SubjectEvent::Invited { .. } => "invited".to_string(),
        SubjectEvent::Onboarded { .. } => "onboarded".to_string(),
        SubjectEvent::Deactivated { .. } => "deactivated by the tenant".to_string(),
        SubjectEvent::Reactivated { .. } => "reactivated by the tenant".to_string(),
        SubjectEvent::PasswordSet { .. } => "password set".to_string(),
        SubjectEvent::Rectified { email, phone, birth, .. } => {
            let mut named = Vec::new();
            if email.is_some() {
                named.push("email");
            }
            if phone.is_some() {
                named.push("phone");
            }
            if birth.is_some() {
                named.push("date of birth");
            }
            format!("rectified: {}", named.join(", "))
        }
        SubjectEvent::ProcessingRestricted { .. } => "processing restricted".to_string(),
        SubjectEvent::RestrictionLifted { .. } => "restriction lifted".to_string(),
        SubjectEvent::RestrictionApplied { restricted, sessions, .. } => {
            format!("restriction {} on {sessions} sessions", if *restricted { "applied" } else { "lifted" })
        }
        SubjectEvent::ConsentGranted { purpose, policy_version, .. } => {
            format!("consent to {purpose} granted (policy {policy_version})")
        }
        SubjectEvent::ConsentWithdrawn { purpose, .. } => format!("consent to {purpose} withdrawn"),
        SubjectEvent::ErasureRequested { request, due_micros, .. } => {
            format!("erasure requested (request {request}, due {})", time_text(*due_micros))
        }
        SubjectEvent::ErasureShredPlanned { .. } => "erasure: keys to destroy recorded".to_string(),
        SubjectEvent::ErasureKeysShredded { .. } => "erasure: keys destroyed".to_string(),
        SubjectEvent::Erased { .. } => "erased".to_string(),
        SubjectEvent::ErasureCertified { .. } => "erasure certified".to_string(),
    };
    format!("{{\"at\":{},\"event\":{}}}", time(at), json_str(&what))
}

/// Writes the export of `subject` of `tenant` to `sink`; `sessions` are the
/// Sessions they took part in as end user (from the sessions view).
pub async fn write(
    log: &dyn EventLog,
    keyring: &Keyring,
    tenant: Uuid,
    subject: Uuid,
    sessions: &[Uuid],
    now_micros: i64,
    sink: &mut Sink,
) -> Result<(), AppError> {
    // The subject's own stream: profile, history and requests.
    let stream = stream_name(Subject::KIND, tenant, subject);
    let mut state = Subject::default();
    let mut history = Vec::new();
    let mut requests = Vec::new();
    let mut pages = Pages::new(log, &stream);
    while let Some(page) = pages.next().await? {
        for r in &page {
            let e = Subject::decode(r, keyring).await?;
            history.push(subject_history(&e, r.recorded_at_micros));
            if let SubjectEvent::ErasureRequested { request, at_micros, due_micros } = &e {
                requests.push(format!(
                    "{{\"kind\":\"erasure\",\"request_id\":{},\"received_at\":{},\"due_at\":{}}}",
                    json_str(&request.to_string()),
                    time(*at_micros),
                    time(*due_micros)
                ));
            }
            state.evolve(&e);
        }
    }
    if state.id.is_none() {
        return Err(AppError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound { what: "subject" })));
    }
    let status = match state.status {
        Some(SubjectStatus::Invited) => "invited",
        Some(SubjectStatus::Active) => "active",
        Some(SubjectStatus::Deactivated) => "deactivated",
        None => "unknown",
    };
    let erased = state.erasure.as_ref().is_some_and(|e| e.shredded.is_some());
    let mut head = String::new();
    let _ = write!(
        head,
        "{{\"format\":{},\"version\":{VERSION},\"exported_at\":{},\"tenant_id\":{},\"subject_id\":{},",
        json_str(FORMAT),
        time(now_micros),
        json_str(&tenant.to_string()),
        json_str(&subject.to_string())
    );
    let _ = write!(
        head,
        "\"profile\":{{\"status\":{},\"erased\":{erased},\"username\":{},\"email\":{},\"phone\":{},\"date_of_birth\":{},\"password\":{}}},",
        json_str(status),
        text(&state.username),
        text(&state.email),
        if state.phone.is_empty() && !erased { "\"\"".to_string() } else { text(&state.phone) },
        if erased { json_str("[erased]") } else { birth(&state.birth) },
        json_str(if state.password_hash.is_empty() { "none" } else { "set (the hash is not exported)" }),
    );
    let consents: Vec<String> = state
        .consents
        .iter()
        .map(|(purpose, c)| {
            format!(
                "{{\"purpose\":{},\"granted\":{},\"policy_version\":{},\"at\":{}}}",
                json_str(purpose),
                c.granted,
                json_str(&c.policy_version),
                time(c.at_micros)
            )
        })
        .collect();
    let _ = write!(
        head,
        "\"processing_restricted\":{},\"consents\":[{}],\"requests\":[{}],\"history\":[{}],\"sessions\":[",
        state.restricted,
        consents.join(","),
        requests.join(","),
        history.join(",")
    );
    sink.push(&head).await?;

    for (i, session) in sessions.iter().enumerate() {
        if i > 0 {
            sink.push(",").await?;
        }
        write_session(log, keyring, tenant, *session, subject, sink).await?;
    }
    sink.push("]}\n").await?;
    sink.flush().await
}

async fn write_session(
    log: &dyn EventLog,
    keyring: &Keyring,
    tenant: Uuid,
    session: Uuid,
    subject: Uuid,
    sink: &mut Sink,
) -> Result<(), AppError> {
    let stream = stream_name(Session::KIND, tenant, session);
    sink.push(&format!("{{\"session_id\":{},\"messages\":[", json_str(&session.to_string()))).await?;
    let mut state = Session::default();
    let mut first = true;
    let mut started = 0;
    let mut closed = None;
    let mut locations = Vec::new();
    let mut pages = Pages::new(log, &stream);
    while let Some(page) = pages.next().await? {
        for r in &page {
            let e = Session::decode(r, keyring).await?;
            match &e {
                SessionEvent::Started { at_micros, .. } => started = *at_micros,
                SessionEvent::Closed { reason: why, at_micros } => closed = Some((*why, *at_micros)),
                SessionEvent::LocationShared { location, at_micros, .. } => {
                    locations.push(format!("{{\"at\":{},\"location\":{}}}", time(*at_micros), text(location)));
                }
                SessionEvent::MessagePosted { seq, sender, sent_at_micros, body, device, attachments } => {
                    let from = if *sender == subject {
                        "\"you\"".to_string()
                    } else {
                        state.participants.get(sender).map_or("\"participant\"", |p| kind(p.kind)).to_string()
                    };
                    let mut m = format!(
                        "{}{{\"seq\":{seq},\"from\":{from},\"sender_id\":{},\"sent_at\":{},\"body\":{}",
                        if first { "" } else { "," },
                        json_str(&sender.to_string()),
                        time(*sent_at_micros),
                        text(body)
                    );
                    if let Some(d) = device {
                        let _ = write!(m, ",\"device\":{}", text(d));
                    }
                    if !attachments.is_empty() {
                        let list: Vec<String> = attachments
                            .iter()
                            .map(|a| {
                                format!(
                                    "{{\"media_id\":{},\"content_type\":{},\"size\":{},\"sha256\":{},\"file_name\":{}}}",
                                    json_str(&a.media.to_string()),
                                    text(&a.content_type),
                                    a.size,
                                    json_str(&hex::encode(&a.sha256)),
                                    json_str(a.file_name.as_deref().unwrap_or_default())
                                )
                            })
                            .collect();
                        let _ = write!(m, ",\"attachments\":[{}]", list.join(","));
                    }
                    m.push('}');
                    first = false;
                    sink.push(&m).await?;
                }
                _ => {}
            }
            state.evolve(&e);
        }
    }
    let state_name = match state.status {
        Status::Active => "active",
        Status::Inactive => "inactive",
        Status::Closed => "closed",
    };
    let participants: Vec<String> = state
        .participants
        .iter()
        .map(|(id, p)| {
            format!(
                "{{\"id\":{},\"kind\":{},\"present\":{}}}",
                json_str(&if *id == subject { "you".to_string() } else { id.to_string() }),
                kind(p.kind),
                p.present
            )
        })
        .collect();
    let horizons: Vec<String> = state
        .horizons
        .iter()
        .map(|(id, h)| {
            format!(
                "{{\"participant\":{},\"read_up_to\":{},\"private\":{}}}",
                json_str(&if *id == subject { "you".to_string() } else { id.to_string() }),
                h.up_to,
                h.private
            )
        })
        .collect();
    let mut tail = format!(
        "],\"pype_id\":{},\"state\":{},\"erased\":{},\"started_at\":{},\"participants\":[{}],\"read_horizons\":[{}],\"locations\":[{}]",
        json_str(&state.pype.to_string()),
        json_str(state_name),
        state.erased,
        time(started),
        participants.join(","),
        horizons.join(","),
        locations.join(",")
    );
    if let Some((why, at)) = closed {
        let _ = write!(tail, ",\"closed_at\":{},\"closed_by\":{}", time(at), reason(why));
    }
    // Under Do-Not-Track the export says what was not recorded.
    let t = state.tracking;
    let _ = write!(
        tail,
        ",\"tracking\":{{\"do_not_track\":{},\"global_privacy_control\":{},\"effect\":{}}}",
        t.do_not_track,
        t.global_privacy_control,
        json_str(if t.declined() {
            "your browser or app asked not to be tracked: no device details were recorded for this Session, \
             and it is counted in no statistics"
        } else {
            "none"
        })
    );
    tail.push('}');
    sink.push(&tail).await
}
