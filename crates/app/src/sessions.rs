//! Sessions: start, messages, presence, read horizons, locations, close,
//! reads and the live watch.
//!
//! Starting a Session is two steps, [`App::admit_session`] and
//! [`App::open_admitted`], because the subject's state is read before the
//! Session's start is in the log: an erasure or a restriction recorded in
//! between may already have planned its work without the new Session. So
//! once the start is durable the subject is read again; anything recorded
//! before the start is seen there, and the new Session is then erased (its
//! keys shredded) or restricted on the spot, and the start refused. What
//! is recorded after the start finds the Session in its own plan. Either
//! way no Session of an erased subject keeps a live key.

use std::sync::Arc;

use actors::Executed;
use domain::Timers;
use domain::session::{ParticipantKind, Session, SessionCommand, SessionEvent};
use domain::subject::Subject;
use eventlog::{Direction, LogError, ReadFrom};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::tenants::timers_in;
use crate::{App, AppError, parse_id};

/// A Session that may start: the checks passed as of reading.
#[derive(Debug, Clone)]
pub struct Admission {
    pub tenant: Uuid,
    pub session: Uuid,
    pub pype: Uuid,
    pub end_user: Uuid,
    pype_timers: Timers,
    timers: Option<Timers>,
    /// The end user's tracking signals (none unless the start passed them).
    pub tracking: domain::session::Tracking,
}

/// The device a message came from, as the customer's front end passed it.
#[derive(Debug, Clone, Default)]
pub struct SentFrom {
    /// "iPhone 15, iOS 18"; empty: none given.
    pub device: String,
    /// The device's user agent sent Do-Not-Track or Global Privacy
    /// Control: the device is not recorded.
    pub do_not_track: bool,
}

/// What posting a message answers.
pub struct Posted {
    pub seq: u64,
    pub sent_at_micros: i64,
    /// The Session's status after the message.
    pub status: domain::session::Status,
}

/// One event of a Session as a watch sees it.
pub struct Watched {
    pub version: u64,
    pub recorded_at_micros: i64,
    pub event: SessionEvent,
}

/// A page of Sessions and the token of the next (empty: the last page).
pub struct SessionPage {
    pub sessions: Vec<Executed<Session>>,
    pub next_page_token: String,
}

/// The page size of a request (0: the default).
pub(crate) fn page_size(field: &'static str, n: u32, default: usize) -> Result<usize, AppError> {
    match n {
        0 => Ok(default),
        n @ 1..=500 => Ok(n as usize),
        n => Err(AppError::invalid(field, format!("{n}; 1 to 500"))),
    }
}

impl App {
    pub async fn start_session(
        &self,
        who: &Credentials,
        pype_id: &str,
        end_user_id: &str,
        timers: Option<Timers>,
        tracking: domain::session::Tracking,
    ) -> Result<Executed<Session>, AppError> {
        let tenant = self.tenant(who).await?;
        let admission = self.admit_session(tenant, pype_id, end_user_id, timers).await?;
        self.open_admitted(Admission { tracking, ..admission }).await
    }

    /// Step 1 of a start: the Pype is open and the end user may start a
    /// Session (`domain::subject::Subject::may_start_session`).
    pub async fn admit_session(
        &self,
        tenant: Uuid,
        pype_id: &str,
        end_user_id: &str,
        timers: Option<Timers>,
    ) -> Result<Admission, AppError> {
        let pype_id = parse_id("pype_id", pype_id)?;
        let end_user = parse_id("end_user_id", end_user_id)?;
        let timers = timers_in("timers", timers)?;
        let pype = self.registry.read::<domain::pype::Pype>(tenant, pype_id).await?.into_state();
        pype.require_open()?;
        self.registry.read::<Subject>(tenant, end_user).await?.state.may_start_session()?;
        Ok(Admission {
            tenant,
            session: Uuid::now_v7(),
            pype: pype_id,
            end_user,
            pype_timers: pype.timers,
            timers,
            tracking: Default::default(),
        })
    }

    /// Step 2: the start, then the subject read again (see the module's
    /// documentation).
    pub async fn open_admitted(&self, a: Admission) -> Result<Executed<Session>, AppError> {
        let (tenant, id, end_user) = (a.tenant, a.session, a.end_user);
        let cmd = SessionCommand::Start {
            session: id,
            tenant,
            pype: a.pype,
            end_user,
            pype_timers: a.pype_timers,
            timers: a.timers,
            tracking: a.tracking,
        };
        let started = self.registry.execute::<Session>(tenant, id, cmd).await?;
        self.settle_new_session(tenant, end_user, id).await?;
        Ok(started)
    }

    /// After a new Session (started or imported) is durable: the subject
    /// read again; an erasure or restriction recorded before the Session
    /// was written (so planned without it) erases or restricts it now, and
    /// the start is refused.
    pub(crate) async fn settle_new_session(&self, tenant: Uuid, end_user: Uuid, id: Uuid) -> Result<(), AppError> {
        let subject = self.registry.read::<Subject>(tenant, end_user).await?.into_state();
        if let Some(e) = &subject.erasure {
            tracing::info!(%tenant, session = %id, request = %e.request, "a session started while its end user's erasure was requested: erased at once");
            self.erasures.erase_late_session(tenant, end_user, id, e.request).await?;
            return Err(AppError::rejected(domain::Rejection::precondition("the end user's erasure was requested")));
        }
        if subject.restricted {
            self.restrictions.restrict_late_session(tenant, end_user, id).await?;
            return Err(AppError::rejected(domain::Rejection::precondition(
                "processing of the end user's data is restricted: no new sessions until it is lifted",
            )));
        }
        Ok(())
    }

    pub async fn post_message(
        &self,
        who: &Credentials,
        session_id: &str,
        sender_id: &str,
        body: String,
        from: SentFrom,
        attachment_ids: &[String],
    ) -> Result<Posted, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("session_id", session_id)?;
        let sender = parse_id("sender_id", sender_id)?;
        // The sending device declined tracking: its detail goes no further.
        let device = (!from.device.is_empty() && !from.do_not_track).then_some(from.device);
        if attachment_ids.len() > domain::session::MAX_ATTACHMENTS {
            return Err(AppError::invalid(
                "attachment_ids",
                format!("{} attachments; at most {}", attachment_ids.len(), domain::session::MAX_ATTACHMENTS),
            ));
        }
        let attachments =
            attachment_ids.iter().map(|a| parse_id("attachment_ids", a)).collect::<Result<Vec<_>, _>>()?;
        let done = self
            .registry
            .execute::<Session>(tenant, id, SessionCommand::PostMessage { sender, body, device, attachments })
            .await?;
        let (seq, sent_at_micros) = done
            .events
            .iter()
            .find_map(|e| match e {
                SessionEvent::MessagePosted { seq, sent_at_micros, .. } => Some((*seq, *sent_at_micros)),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Posted { seq, sent_at_micros, status: done.state.status })
    }

    /// Runs one command on a Session (the domain answers NOT_FOUND for a
    /// Session that does not exist, or belongs to another tenant).
    async fn session_command(
        &self,
        who: &Credentials,
        session_id: &str,
        command: impl FnOnce() -> Result<SessionCommand, AppError>,
    ) -> Result<Executed<Session>, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("session_id", session_id)?;
        let cmd = command()?;
        Ok(self.registry.execute::<Session>(tenant, id, cmd).await?)
    }

    pub async fn advance_read_horizon(
        &self,
        who: &Credentials,
        session_id: &str,
        participant_id: &str,
        up_to: u64,
        private: bool,
    ) -> Result<Executed<Session>, AppError> {
        self.session_command(who, session_id, || {
            Ok(SessionCommand::AdvanceReadHorizon {
                participant: parse_id("participant_id", participant_id)?,
                up_to,
                private,
            })
        })
        .await
    }

    pub async fn join_session(
        &self,
        who: &Credentials,
        session_id: &str,
        participant_id: &str,
        kind: Result<ParticipantKind, AppError>,
    ) -> Result<Executed<Session>, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("session_id", session_id)?;
        let participant = parse_id("participant_id", participant_id)?;
        let kind = kind?;
        let session = self.session_of(tenant, id).await?;
        let pype = self.registry.read::<domain::pype::Pype>(tenant, session.state.pype).await?.into_state();
        pype.may_join(participant, kind)?;
        Ok(self.registry.execute::<Session>(tenant, id, SessionCommand::Join { participant, kind }).await?)
    }

    pub async fn leave_session(
        &self,
        who: &Credentials,
        session_id: &str,
        participant_id: &str,
    ) -> Result<Executed<Session>, AppError> {
        self.session_command(who, session_id, || {
            Ok(SessionCommand::Leave { participant: parse_id("participant_id", participant_id)? })
        })
        .await
    }

    /// Shares the end user's location, kept only with their consent for
    /// `geolocation`. A withdrawal recorded after the consent is read here
    /// is caught by the consent process, which shreds what this seals.
    pub async fn share_location(
        &self,
        who: &Credentials,
        session_id: &str,
        participant_id: &str,
        latitude: f64,
        longitude: f64,
        accuracy_m: u32,
    ) -> Result<Executed<Session>, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("session_id", session_id)?;
        let participant = parse_id("participant_id", participant_id)?;
        let e6 = |field: &'static str, v: f64| {
            if v.is_finite() { Ok((v * 1e6).round() as i64) } else { Err(AppError::invalid(field, "is not a number")) }
        };
        let (latitude_e6, longitude_e6) = (e6("latitude", latitude)?, e6("longitude", longitude)?);
        let consented = self.registry.read::<Subject>(tenant, participant).await?.state.location_consented();
        let cmd = SessionCommand::ShareLocation { participant, latitude_e6, longitude_e6, accuracy_m, consented };
        Ok(self.registry.execute::<Session>(tenant, id, cmd).await?)
    }

    pub async fn close_session(&self, who: &Credentials, session_id: &str) -> Result<Executed<Session>, AppError> {
        self.session_command(who, session_id, || Ok(SessionCommand::Close)).await
    }

    pub async fn get_session(&self, who: &Credentials, session_id: &str) -> Result<Executed<Session>, AppError> {
        let tenant = self.tenant_about(who, crate::call::Object::Session, session_id).await?;
        let id = parse_id("session_id", session_id)?;
        self.session_of(tenant, id).await
    }

    /// A Pype's Sessions in start order, a page at a time.
    pub async fn list_sessions(
        &self,
        who: &Credentials,
        pype_id: &str,
        page_size_wanted: u32,
        page_token: &str,
    ) -> Result<SessionPage, AppError> {
        let tenant = self.tenant(who).await?;
        let pype = parse_id("pype_id", pype_id)?;
        let size = page_size("page_size", page_size_wanted, 50)?;
        let cursor = match page_token {
            "" => None,
            t => Some(
                t.strip_prefix("c")
                    .and_then(|h| hex::decode(h).ok())
                    .filter(|c| c.len() == 56)
                    .ok_or_else(|| AppError::invalid("page_token", "not a token this server issued"))?,
            ),
        };
        self.pype_of(tenant, pype).await?;
        // The Session ids come from the sessions view (start order); each
        // Session's state from its actor, like GetSession.
        let view = self.views.read(projections::sessions::NAME).await?;
        let rows = projections::sessions::list_sessions(&view, tenant, pype, cursor.as_deref(), size + 1)
            .map_err(|e| AppError::internal("listing sessions", e))?;
        drop(view);
        let more = rows.len() > size;
        let mut sessions = Vec::with_capacity(size);
        let mut next = None;
        for (key, row) in rows.iter().take(size) {
            let id =
                Uuid::from_slice(&row.session_id).map_err(|e| AppError::internal("a session id in the view", e))?;
            sessions.push(self.registry.read::<Session>(tenant, id).await?);
            next = Some(key.clone());
        }
        let next_page_token = match (more, next) {
            (true, Some(k)) => format!("c{}", hex::encode(k)),
            _ => String::new(),
        };
        Ok(SessionPage { sessions, next_page_token })
    }

    /// A Session's events from `from_version` on, then live as they are
    /// written, until the receiver is dropped.
    pub async fn watch_session(
        self: &Arc<Self>,
        who: &Credentials,
        session_id: &str,
        from_version: u64,
    ) -> Result<mpsc::Receiver<Result<Watched, AppError>>, AppError> {
        let tenant = self.tenant_about(who, crate::call::Object::Session, session_id).await?;
        let id = parse_id("session_id", session_id)?;
        let session = self.session_of(tenant, id).await?;
        if session.state.restricted {
            return Err(AppError::rejected(domain::Rejection::precondition(
                "processing of the end user's data is restricted: the session cannot be watched",
            )));
        }
        check_watch_start(from_version, session.version)?;
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move { me.follow_session(tenant, id, from_version, tx).await });
        Ok(rx)
    }

    /// Sends a Session's events from `from` to `tx`, then follows the log
    /// until `tx` closes.
    async fn follow_session(
        &self,
        tenant: Uuid,
        session: Uuid,
        mut from: u64,
        tx: mpsc::Sender<Result<Watched, AppError>>,
    ) {
        let stream = events::stream_name(events::Kind::Session, tenant, session);
        let mut head = self.log.watch_head();
        loop {
            let page = match self.log.read_stream(&stream, ReadFrom::Version(from), Direction::Forward, 256).await {
                Ok(page) => page,
                Err(LogError::StreamNotFound { .. }) => Vec::new(),
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            for r in &page {
                let item = <Session as events::Codec>::decode(r, &self.keyring)
                    .await
                    .map(|event| Watched { version: r.version, recorded_at_micros: r.recorded_at_micros, event })
                    .map_err(AppError::from);
                if tx.send(item).await.is_err() {
                    return;
                }
                from = r.version + 1;
            }
            if page.is_empty() {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        }
    }

    /// A Session of `tenant` that exists.
    pub(crate) async fn session_of(&self, tenant: Uuid, session: Uuid) -> Result<Executed<Session>, AppError> {
        let s = self.registry.read::<Session>(tenant, session).await?;
        s.state.id.ok_or_else(|| AppError::not_found("session"))?;
        Ok(s)
    }
}

/// A watch may start at any version up to the Session's next one (the
/// resume point after the last event seen); a start past that names the
/// end instead of waiting for events that may never be written.
pub fn check_watch_start(from: u64, last_version: Option<u64>) -> Result<(), AppError> {
    let next = last_version.map_or(0, |v| v + 1);
    if from > next {
        return Err(AppError::OutOfRange(format!(
            "from_version {from} is past the session's end: it has {next} events, so resume from at most {next}"
        )));
    }
    Ok(())
}
