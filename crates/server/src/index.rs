//! The Sessions of each Pype, for `ListSessions`: a catch-up subscription
//! over `$all` (SessionStarted events only; Clear fields) kept in memory.
//! The projections issue replaces it with a persisted read model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use eventlog::{EventFilter, EventLog, SubscribeFrom, SubscriptionMessage, SubscriptionOptions, subscribe_all};
use proto::Message;
use tokio::sync::watch;
use uuid::Uuid;

#[derive(Default)]
pub struct SessionIndex {
    by_pype: Mutex<HashMap<(Uuid, Uuid), Vec<Uuid>>>,
}

impl SessionIndex {
    /// Session ids of a Pype in start order, from `offset`, at most `limit`;
    /// and whether more follow.
    pub fn page(&self, tenant: Uuid, pype: Uuid, offset: usize, limit: usize) -> (Vec<Uuid>, bool) {
        let map = self.by_pype.lock().unwrap_or_else(|e| e.into_inner());
        let all = map.get(&(tenant, pype)).map(Vec::as_slice).unwrap_or_default();
        let page: Vec<Uuid> = all.iter().skip(offset).take(limit).copied().collect();
        let more = all.len() > offset + page.len();
        (page, more)
    }

    fn add(&self, tenant: Uuid, pype: Uuid, session: Uuid) {
        self.by_pype.lock().unwrap_or_else(|e| e.into_inner()).entry((tenant, pype)).or_default().push(session);
    }

    /// Follows the log for as long as the process runs; `ready` turns true
    /// once the index has caught up with the log as it was at start.
    pub async fn follow(self: Arc<Self>, log: Arc<dyn EventLog>, ready: watch::Sender<bool>) {
        let filter = EventFilter { event_types: vec!["SessionStarted".into()], ..EventFilter::default() };
        let mut sub = subscribe_all(log, SubscribeFrom::Start, filter, SubscriptionOptions::default());
        loop {
            match sub.next().await {
                Ok(SubscriptionMessage::Event(r)) => {
                    match proto::events::SessionStarted::decode(r.event.payload.as_ref()) {
                        Ok(p) => match (
                            Uuid::from_slice(&p.tenant_id),
                            Uuid::from_slice(&p.pype_id),
                            Uuid::from_slice(&p.session_id),
                        ) {
                            (Ok(t), Ok(pype), Ok(s)) => self.add(t, pype, s),
                            _ => tracing::warn!(stream = %r.stream, "SessionStarted with malformed ids; not indexed"),
                        },
                        Err(e) => {
                            tracing::warn!(stream = %r.stream, error = %e, "undecodable SessionStarted; not indexed")
                        }
                    }
                }
                Ok(SubscriptionMessage::CaughtUp { .. }) => {
                    let _ = ready.send(true);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "session index subscription failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
