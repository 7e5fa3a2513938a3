//! One read of the log for every webhook endpoint on this node.
//!
//! Without it each endpoint's worker reads its own tenant feed: with 20
//! endpoints in a tenant every event is read, decoded and opened 20 times.
//! The hub reads the log once (the tenants that have endpoints here),
//! turns each integration event into its request body once, and keeps the
//! last few seconds of them in a ring that the workers read from, each at
//! its own cursor and with its own filter:
//!
//! - **Coverage.** Every event of a wanted tenant after the ring's floor
//!   (and after the moment the tenant became wanted) is in the ring. A
//!   worker whose cursor is below that is told so ([`Pull::Gap`]) and reads
//!   its own feed until it is live, then comes back at the position its
//!   feed reached. So a worker that fell behind (a slow endpoint, a
//!   restart with an old checkpoint) costs its own reads, and one that
//!   keeps up costs a scan of the new entries.
//! - **Bounded.** The ring holds at most `webhook_ring_entries` entries
//!   (`webhook_port::RING_ENTRIES` by default) and [`RING_BYTES`] of bodies; the
//!   oldest go first, moving the floor.
//! - **Never a hole.** An event the hub cannot decode moves the floor past
//!   it, so every worker still below it reads it through its own feed
//!   (which retries) rather than skipping it.
//! - **Wake-ups.** After each page of the log it read (what the log had
//!   when it looked), the hub wakes only the workers that page has
//!   entries for (by tenant and Pype), so a node with many endpoints does
//!   not wake all of them for every commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventlog::{EventFilter, RecordedEvent, SubscribeFrom, SubscriptionMessage, SubscriptionOptions, subscribe_all};
use events::{Kind, StreamName};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::App;
use crate::feed::{Filters, IntegrationEvent, SessionCache, TYPES};

/// Bytes of request bodies the ring keeps at most.
pub const RING_BYTES: usize = 32 << 20;
/// The hub reads the log at most this often while live.
const COALESCE: Duration = Duration::from_millis(2);

/// An integration event ready to send: what a worker filters on, and the
/// request body (the same for every endpoint).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) position: u64,
    pub(crate) tenant: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: &'static str,
    pub(crate) pype: Option<Uuid>,
    pub(crate) session: Option<Uuid>,
    pub(crate) recorded_at_micros: i64,
    pub(crate) body: Vec<u8>,
}

impl Entry {
    pub(crate) fn of(e: &IntegrationEvent) -> Self {
        Self {
            position: e.position,
            tenant: e.tenant,
            event_id: e.event_id,
            event_type: e.event_type,
            pype: e.pype,
            session: e.session,
            recorded_at_micros: e.recorded_at_micros,
            body: crate::webhook_json::body(e),
        }
    }
}

/// What a worker wants from the ring: its integration event types (empty:
/// all) and its Pype. The same rules as the feed's filters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wants {
    pub(crate) types: Vec<&'static str>,
    pub(crate) pype: Option<Uuid>,
}

impl Wants {
    fn matches(&self, e: &Entry) -> bool {
        (self.types.is_empty() || self.types.contains(&e.event_type)) && (self.pype.is_none() || e.pype == self.pype)
    }
}

/// The answer to [`Hub::pull`].
#[derive(Debug)]
pub(crate) enum Pull {
    /// The ring no longer (or does not yet) hold everything after the
    /// cursor: read the tenant's own feed from there.
    Gap,
    /// These entries, in log order; everything of the tenant up to
    /// `through` has been looked at (`None`: nothing yet).
    Read { entries: Vec<Arc<Entry>>, through: Option<u64> },
}

/// A worker to wake when entries of its Pype (`None`: any) arrive.
struct Waker {
    id: u64,
    pype: Option<Uuid>,
    notify: Arc<Notify>,
}

struct Wanted {
    /// Workers of the tenant reading the ring.
    wakers: Vec<Waker>,
    /// The ring holds the tenant's events after this position.
    since: Option<u64>,
    /// Changes each time the tenant becomes wanted (the hub forgets what
    /// it knew of the tenant's Sessions while it was not).
    epoch: u64,
}

struct Ring {
    /// `false` until the hub knows where it starts.
    started: bool,
    /// The hub has looked at every event up to here.
    through: Option<u64>,
    /// Every wanted event after here (and after its tenant's `since`) is in
    /// `entries`.
    floor: Option<u64>,
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    tenants: HashMap<Uuid, Wanted>,
    epochs: u64,
    /// What the page being read added: (tenant, Pype) of its entries.
    touched: HashSet<(Uuid, Option<Uuid>)>,
    /// Tenants whose workers must all look (an event the hub skipped).
    touched_all: HashSet<Uuid>,
}

/// The shared reader.
pub(crate) struct Hub {
    /// Entries kept at most.
    capacity: usize,
    ring: Mutex<Ring>,
}

/// A worker's interest in its tenant: while it lives, the hub decodes the
/// tenant's events.
pub(crate) struct Lease {
    hub: Arc<Hub>,
    tenant: Uuid,
    id: u64,
    /// Woken when the hub added entries this worker may want.
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut ring = self.hub.lock();
        if let Some(w) = ring.tenants.get_mut(&self.tenant) {
            w.wakers.retain(|k| k.id != self.id);
            if w.wakers.is_empty() {
                ring.tenants.remove(&self.tenant);
            }
        }
    }
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                started: false,
                through: None,
                floor: None,
                entries: VecDeque::new(),
                bytes: 0,
                tenants: HashMap::new(),
                epochs: 0,
                touched: HashSet::new(),
                touched_all: HashSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a reader of `tenant`'s events (of one Pype, or all).
    pub(crate) fn want(self: &Arc<Self>, tenant: Uuid, pype: Option<Uuid>) -> Lease {
        let mut ring = self.lock();
        let through = ring.through;
        ring.epochs += 1;
        let id = ring.epochs;
        let notify = Arc::new(Notify::new());
        ring.tenants
            .entry(tenant)
            .or_insert(Wanted { wakers: Vec::new(), since: through, epoch: id })
            .wakers
            .push(Waker { id, pype, notify: notify.clone() });
        Lease { hub: self.clone(), tenant, id, notify }
    }

    /// Up to `room` entries of `tenant` after `after` that `wants` passes.
    pub(crate) fn pull(&self, tenant: Uuid, after: Option<u64>, room: usize, wants: &Wants) -> Pull {
        let ring = self.lock();
        let Some(w) = ring.tenants.get(&tenant) else { return Pull::Gap };
        // `None` sorts first: a cursor of `None` is before every event.
        if !ring.started || after < ring.floor || after < w.since {
            return Pull::Gap;
        }
        if after >= ring.through {
            return Pull::Read { entries: Vec::new(), through: after };
        }
        let start = ring.entries.partition_point(|e| Some(e.position) <= after);
        let mut entries = Vec::new();
        let mut through = ring.through;
        for e in ring.entries.range(start..) {
            if e.tenant != tenant || !wants.matches(e) {
                continue;
            }
            if entries.len() == room {
                // Everything before this one was looked at.
                through = Some(e.position - 1);
                break;
            }
            entries.push(e.clone());
        }
        Pull::Read { entries, through }
    }

    /// The tenant's epoch if its events are wanted.
    fn wanted(&self, tenant: Uuid) -> Option<u64> {
        self.lock().tenants.get(&tenant).map(|w| w.epoch)
    }

    /// Adds an entry (or, with `None`, only moves past `position`).
    fn add(&self, position: u64, entry: Option<Entry>) {
        let mut ring = self.lock();
        if let Some(e) = entry {
            ring.touched.insert((e.tenant, e.pype));
            ring.bytes += e.body.len();
            ring.entries.push_back(Arc::new(e));
            while ring.entries.len() > self.capacity || ring.bytes > RING_BYTES {
                let Some(old) = ring.entries.pop_front() else { break };
                ring.bytes -= old.body.len();
                ring.floor = ring.floor.max(Some(old.position));
            }
        }
        ring.through = ring.through.max(Some(position));
    }

    /// An event of a wanted tenant the hub could not decode: no worker
    /// below it may use the ring past it.
    fn hole(&self, tenant: Uuid, position: u64) {
        let mut ring = self.lock();
        ring.touched_all.insert(tenant);
        ring.floor = ring.floor.max(Some(position));
        ring.through = ring.through.max(Some(position));
    }

    /// The hub finished a page: everything below `next` was looked at;
    /// the workers with new entries are woken.
    fn page_done(&self, next: u64) {
        let mut ring = self.lock();
        if let Some(t) = next.checked_sub(1) {
            ring.through = ring.through.max(Some(t));
        }
        let touched = std::mem::take(&mut ring.touched);
        let all = std::mem::take(&mut ring.touched_all);
        for (tenant, w) in &ring.tenants {
            let everyone = all.contains(tenant);
            for k in &w.wakers {
                // An entry of no Pype (an end user's) wakes only the
                // workers without a Pype filter, as it passes only theirs.
                if everyone
                    || touched.contains(&(*tenant, k.pype))
                    || (k.pype.is_none() && touched.iter().any(|(t, _)| t == tenant))
                {
                    k.notify.notify_one();
                }
            }
        }
    }

    /// Starts the hub at the log's head: the ring covers what comes next.
    pub(crate) fn start(self: &Arc<Self>, app: &Arc<App>) {
        let head = *app.log.watch_head().borrow();
        let last = head.checked_sub(1);
        {
            let mut ring = self.lock();
            ring.started = true;
            ring.through = last;
            ring.floor = last;
        }
        let from = last.map_or(SubscribeFrom::Start, SubscribeFrom::After);
        tokio::spawn(self.clone().run(app.clone(), from));
    }

    async fn run(self: Arc<Self>, app: Arc<App>, mut from: SubscribeFrom) {
        let filter = EventFilter {
            stream_prefixes: [Kind::Session, Kind::Pype, Kind::Subject]
                .iter()
                .map(|k| k.prefix().to_string())
                .collect(),
            event_types: TYPES.iter().flat_map(|(_, stored)| stored.iter().map(|s| s.to_string())).collect(),
        };
        let options = SubscriptionOptions { page_size: 512, fall_behind_threshold: u64::MAX, coalesce: COALESCE };
        // What the hub knows of each wanted tenant's Sessions, by epoch.
        let mut sessions: HashMap<Uuid, (u64, SessionCache)> = HashMap::new();
        let all = Filters::default();
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut sub = subscribe_all(app.log.clone(), from, filter.clone(), options);
            loop {
                let r = match sub.next().await {
                    Ok(SubscriptionMessage::Event(r)) => Some(r),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: the shared reader's subscription failed; resubscribing");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        break;
                    }
                };
                backoff = Duration::from_millis(200);
                if let Some(r) = r {
                    from = SubscribeFrom::After(r.position);
                    self.take(&app, &all, &mut sessions, &r).await;
                }
                if sub.buffered() == 0 {
                    self.page_done(sub.next_position());
                    if let Some(last) = sub.next_position().checked_sub(1) {
                        from = SubscribeFrom::After(last);
                    }
                    sessions.retain(|t, _| self.wanted(*t).is_some());
                }
            }
        }
    }

    /// Decodes one event if its tenant is wanted.
    async fn take(
        &self,
        app: &App,
        all: &Filters,
        sessions: &mut HashMap<Uuid, (u64, SessionCache)>,
        r: &RecordedEvent,
    ) {
        let tenant = StreamName::parse(&r.stream).map(|n| n.tenant);
        let Some((tenant, epoch)) = tenant.and_then(|t| Some((t, self.wanted(t)?))) else {
            return self.add(r.position, None);
        };
        let cache = sessions.entry(tenant).or_insert_with(|| (epoch, SessionCache::new()));
        if cache.0 != epoch {
            *cache = (epoch, SessionCache::new());
        }
        match app.integration_event(tenant, all, &mut cache.1, r).await {
            Ok(e) => self.add(r.position, e.as_ref().map(Entry::of)),
            Err(e) => {
                tracing::warn!(position = r.position, error = %e, "webhooks: the shared reader cannot decode an event; workers read it through their own feeds");
                self.hole(tenant, r.position);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING_ENTRIES: usize = 1000;

    fn entry(position: u64, tenant: Uuid, pype: Option<Uuid>, event_type: &'static str) -> Entry {
        Entry {
            position,
            tenant,
            event_id: Uuid::now_v7(),
            event_type,
            pype,
            session: None,
            recorded_at_micros: 0,
            body: vec![0; 10],
        }
    }

    fn started(hub: &Hub, at: Option<u64>) {
        let mut ring = hub.lock();
        ring.started = true;
        ring.through = at;
        ring.floor = at;
    }

    fn positions(p: Pull) -> (Vec<u64>, Option<u64>) {
        match p {
            Pull::Read { entries, through } => (entries.iter().map(|e| e.position).collect(), through),
            Pull::Gap => panic!("a gap"),
        }
    }

    #[test]
    fn a_worker_reads_its_tenant_and_filter_in_order_and_room_limits_the_cursor() {
        let hub = Hub::new(RING_ENTRIES);
        started(&hub, Some(9));
        let (a, b, pype) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let _la = hub.want(a, None);
        let _lb = hub.want(b, None);
        for (p, t, y, ty) in [
            (10, a, Some(pype), "message.posted"),
            (11, b, Some(pype), "message.posted"),
            (12, a, None, "subject.registered"),
            (13, a, Some(Uuid::now_v7()), "message.posted"),
            (14, a, Some(pype), "session.started"),
            (15, a, Some(pype), "message.posted"),
        ] {
            hub.add(p, Some(entry(p, t, y, ty)));
        }
        hub.page_done(17);
        let all = Wants::default();
        assert_eq!(positions(hub.pull(a, Some(9), 100, &all)), (vec![10, 12, 13, 14, 15], Some(16)));
        let mine = Wants { types: vec!["message.posted"], pype: Some(pype) };
        assert_eq!(positions(hub.pull(a, Some(9), 100, &mine)), (vec![10, 15], Some(16)));
        // With room for one, the cursor stops just before the next match.
        assert_eq!(positions(hub.pull(a, Some(9), 1, &mine)), (vec![10], Some(14)));
        assert_eq!(positions(hub.pull(a, Some(14), 1, &mine)), (vec![15], Some(16)));
        assert_eq!(positions(hub.pull(a, Some(16), 8, &mine)), (vec![], Some(16)));
        // Ahead of the hub: nothing, and the cursor stays.
        assert_eq!(positions(hub.pull(a, Some(30), 8, &mine)), (vec![], Some(30)));
    }

    #[test]
    fn gaps_send_a_worker_to_its_own_feed() {
        let hub = Hub::new(RING_ENTRIES);
        let t = Uuid::now_v7();
        let _l = hub.want(t, None);
        assert!(matches!(hub.pull(t, None, 8, &Wants::default()), Pull::Gap), "not started");
        started(&hub, Some(99));
        assert!(matches!(hub.pull(t, Some(50), 8, &Wants::default()), Pull::Gap), "before the hub's start");
        assert!(matches!(hub.pull(Uuid::now_v7(), Some(99), 8, &Wants::default()), Pull::Gap), "a tenant not wanted");
        // A tenant wanted later is covered from then on.
        hub.add(100, None);
        let late = Uuid::now_v7();
        let _l2 = hub.want(late, None);
        assert!(matches!(hub.pull(late, Some(99), 8, &Wants::default()), Pull::Gap));
        assert!(matches!(hub.pull(late, Some(100), 8, &Wants::default()), Pull::Read { .. }));
        // Eviction moves the floor.
        for p in 101..=(100 + RING_ENTRIES as u64 + 5) {
            hub.add(p, Some(entry(p, t, None, "message.posted")));
        }
        assert!(matches!(hub.pull(t, Some(100), 8, &Wants::default()), Pull::Gap), "evicted");
        assert_eq!(positions(hub.pull(t, Some(105), 2, &Wants::default())).0, vec![106, 107]);
        // An event the hub could not decode is never skipped by the ring.
        let next = 100 + RING_ENTRIES as u64 + 6;
        hub.hole(t, next);
        assert!(matches!(hub.pull(t, Some(next - 1), 8, &Wants::default()), Pull::Gap));
        assert!(matches!(hub.pull(t, Some(next), 8, &Wants::default()), Pull::Read { .. }));
    }

    #[test]
    fn the_last_lease_of_a_tenant_stops_its_decoding() {
        let hub = Hub::new(RING_ENTRIES);
        started(&hub, None);
        let t = Uuid::now_v7();
        let (l1, l2) = (hub.want(t, None), hub.want(t, None));
        drop(l1);
        assert!(hub.wanted(t).is_some());
        drop(l2);
        assert!(hub.wanted(t).is_none());
        let epoch = {
            let _l3 = hub.want(t, None);
            hub.wanted(t)
        };
        let _l4 = hub.want(t, None);
        assert_ne!(hub.wanted(t), epoch, "wanted again: a new epoch (the Session facts are read afresh)");
    }

    #[tokio::test]
    async fn a_page_wakes_only_the_workers_it_has_entries_for() {
        let hub = Hub::new(RING_ENTRIES);
        started(&hub, Some(0));
        let (t, other, p1, p2) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (w1, w2, any, elsewhere) =
            (hub.want(t, Some(p1)), hub.want(t, Some(p2)), hub.want(t, None), hub.want(other, None));
        let woken = |l: &Lease| {
            let n = l.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable()
        };
        hub.add(1, Some(entry(1, t, Some(p1), "message.posted")));
        hub.page_done(2);
        assert!(woken(&w1) && woken(&any));
        assert!(!woken(&w2) && !woken(&elsewhere));
        // An end user's event (no Pype) wakes only the unfiltered worker.
        hub.add(2, Some(entry(2, t, None, "subject.registered")));
        hub.page_done(3);
        assert!(woken(&any) && !woken(&w1) && !woken(&w2));
        // An event the hub could not decode wakes every worker of its tenant.
        hub.hole(t, 3);
        hub.page_done(4);
        assert!(woken(&w1) && woken(&w2) && woken(&any) && !woken(&elsewhere));
    }
}
