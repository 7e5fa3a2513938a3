//! Session timers: one task holds every armed deadline of the node and
//! fires a `Tick` at the Session when its time comes (activating the actor
//! if it was passivated). At start the deadlines are recomputed from the
//! log, so timers survive restarts; overdue ones fire at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use domain::Aggregate;
use domain::session::Session;
use eventlog::{Clock, EventFilter, EventLog};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::ActorError;
use events::codec::decode_session_clear;

/// Arms (or, with `None`, disarms) the timer of a Session.
#[derive(Debug, Clone, Copy)]
pub struct TimerRequest {
    pub tenant: Uuid,
    pub session: Uuid,
    pub deadline_micros: Option<i64>,
}

/// A timer that went off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    pub tenant: Uuid,
    pub session: Uuid,
}

/// Runs the timer loop until `requests` closes. Sleeps on the tokio clock
/// for the time `clock` says is left, so paused-time tests work with a
/// clock that follows tokio's.
pub async fn run_timers(
    mut requests: mpsc::UnboundedReceiver<TimerRequest>,
    fired: mpsc::UnboundedSender<Fired>,
    clock: Arc<dyn Clock>,
) {
    let mut by_time: BTreeSet<(i64, Uuid, Uuid)> = BTreeSet::new();
    let mut by_session: HashMap<(Uuid, Uuid), i64> = HashMap::new();
    loop {
        let now = clock.now_micros();
        while let Some(&(deadline, tenant, session)) = by_time.first() {
            if deadline > now {
                break;
            }
            by_time.pop_first();
            by_session.remove(&(tenant, session));
            if fired.send(Fired { tenant, session }).is_err() {
                return;
            }
        }
        let wait = by_time.first().map(|(d, _, _)| std::time::Duration::from_micros((d - now).max(0) as u64));
        let request = match wait {
            Some(wait) => tokio::select! {
                r = requests.recv() => r,
                _ = tokio::time::sleep(wait) => continue,
            },
            None => requests.recv().await,
        };
        let Some(r) = request else { return };
        if let Some(old) = by_session.remove(&(r.tenant, r.session)) {
            by_time.remove(&(old, r.tenant, r.session));
        }
        if let Some(d) = r.deadline_micros {
            by_session.insert((r.tenant, r.session), d);
            by_time.insert((d, r.tenant, r.session));
        }
    }
}

/// The deadline of every Session in the log, from Clear fields alone.
pub async fn deadlines_from_log(log: &dyn EventLog) -> Result<Vec<TimerRequest>, ActorError> {
    let filter = EventFilter { stream_prefixes: vec![events::Kind::Session.prefix().into()], ..EventFilter::default() };
    let mut sessions: HashMap<std::sync::Arc<str>, Session> = HashMap::new();
    let mut from = 0;
    loop {
        let page = log.read_all(from, 4096, &filter).await?;
        for r in &page.events {
            let event = decode_session_clear(r)?;
            sessions.entry(r.stream.clone()).or_default().evolve(&event);
        }
        if page.next_position >= page.head {
            break;
        }
        from = page.next_position;
    }
    Ok(sessions
        .values()
        .filter_map(|s| {
            let id = s.id?;
            Some(TimerRequest { tenant: s.tenant, session: id, deadline_micros: Some(s.next_deadline_micros()?) })
        })
        .collect())
}
