//! Webhook delivery: one worker per endpoint, driven by the log.
//!
//! - **The directory.** [`Deliveries::run`] follows the tenants' streams
//!   for webhook events (and cancellations) from the start of the log and
//!   keeps one worker per live endpoint; the API's calls also reconcile at
//!   once, so a new endpoint does not wait for the follower.
//! - **A worker** reads the integration events of its tenant that pass the
//!   endpoint's filter (the same events as `SubscribeTenantEvents`) from
//!   the node's shared reader ([`crate::webhook_hub`]: one read and one
//!   request body per event for all endpoints), or from its own tenant
//!   feed ([`App::open_feed`]) while the shared ring does not reach back
//!   to its cursor; into a [`Schedule`] (in order per Session, concurrent
//!   across Sessions, back-off, pause after 72 hours), sends what is due with
//!   [`Client::post`] signed with the endpoint's live secrets, and records
//!   its checkpoint in the log (`process-webhook-<id>`, every second while
//!   it moves), so after a restart it reads the feed from there: delivery
//!   is at least once, a repeat carries the same event id.
//! - **Isolation.** Each endpoint has its own task, its own queue and its
//!   own in-flight limit; an endpoint that hangs holds only its own
//!   attempts (each bounded by the attempt deadline).
//! - **A pause** (72 hours of failures) is recorded on the tenant's stream
//!   (`WebhookPaused`, which `GetWebhook` shows), in the audit trail, in
//!   the log and on `/metrics`.
//! - **Redelivery** of a time range is recorded on
//!   `process-webhook-redelivery-<id>` before the API answers; the worker
//!   reads the feed from the start (or from the recorded progress) and
//!   sends the range's events one at a time in log order, retrying as the
//!   schedule does, recording its progress at most once a second and when
//!   done; after a restart it goes on from there. A newer request
//!   supersedes a running one (its next record fails the version check).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::webhooks::backoff;
use ::webhooks::deliver::{Attempt, Client, Url};
use ::webhooks::schedule::{Lane, Outcome, Schedule, TENANT_LANE};
use ::webhooks::sign;
use audit::Record;
use domain::tenant::{Tenant, Webhook};
use eventlog::{
    EventFilter, ExpectedVersion, StreamMetadata, SubscribeFrom, SubscriptionMessage, SubscriptionOptions,
    subscribe_all,
};
use events::codec::WebhookRedeliveryState as RedeliveryState;
use events::types as t;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::feed::{FeedItem, FeedLimits, Filters};
use crate::regions::Gate;
use crate::webhook_hub::{Entry, Hub, Pull, Wants};
pub use crate::webhook_port::{DeliveryStatus, WebhookDirectory, WebhookSettings};
use crate::{App, AppError};

/// Buckets (ms) of the delivery latency histogram: from the event's
/// append to its 2xx.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 60_000];

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub paused: AtomicU64,
    /// Events queued from the shared reader's ring.
    pub read_shared: AtomicU64,
    /// Events queued from a worker's own feed (behind the ring).
    pub read_own: AtomicU64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_MS`], then +Inf.
    pub latency_buckets: [AtomicU64; 13],
    pub latency_sum_micros: AtomicU64,
}

impl DeliveryMetrics {
    fn observe(&self, latency_micros: i64) {
        let ms = (latency_micros.max(0) / 1000) as u64;
        let i = LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(latency_micros.max(0) as u64, Ordering::Relaxed);
    }
}

struct Handle {
    tenant: Uuid,
    def: watch::Sender<Arc<Webhook>>,
    /// "A redelivery was recorded: read it."
    redeliver: mpsc::Sender<()>,
    status: Arc<Mutex<DeliveryStatus>>,
    task: tokio::task::JoinHandle<()>,
}

/// The node's webhook delivery: the workers, their status and counters.
pub struct Deliveries {
    settings: WebhookSettings,
    client: Client,
    app: std::sync::OnceLock<Weak<App>>,
    workers: Mutex<HashMap<Uuid, Handle>>,
    /// The workers' shared reader of the log.
    hub: Arc<Hub>,
    pub metrics: Arc<DeliveryMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Deliveries {
    pub fn new(settings: WebhookSettings, client: Client) -> Arc<Self> {
        let hub = Hub::new(settings.ring_entries);
        Arc::new(Self {
            settings,
            client,
            app: std::sync::OnceLock::new(),
            workers: Mutex::new(HashMap::new()),
            hub,
            metrics: Arc::default(),
        })
    }

    /// Starts delivering for `app` (which holds this as its directory):
    /// the directory follower, and through it a worker per endpoint.
    pub fn start(self: &Arc<Self>, app: &Arc<App>) {
        let _ = self.app.set(Arc::downgrade(app));
        self.hub.start(app);
        tokio::spawn(Self::run(app.clone()));
    }

    /// Endpoints delivered to by this node: (active, paused).
    pub fn endpoints(&self) -> (u64, u64) {
        let w = lock(&self.workers);
        let paused = w.values().filter(|h| h.def.borrow().paused.is_some()).count() as u64;
        (w.len() as u64 - paused, paused)
    }
}

impl WebhookDirectory for Deliveries {
    fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    fn status(&self, id: Uuid) -> DeliveryStatus {
        match lock(&self.workers).get(&id) {
            Some(h) => lock(&h.status).clone(),
            None => DeliveryStatus::default(),
        }
    }

    fn can_redeliver(&self, id: Uuid) -> Result<(), AppError> {
        match lock(&self.workers).contains_key(&id) {
            true => Ok(()),
            false => Err(AppError::Unavailable(
                "the endpoint has no delivery worker on this node yet (just created, or its tenant is cancelled); try again"
                    .into(),
            )),
        }
    }

    fn redeliver(&self, id: Uuid) {
        if let Some(h) = lock(&self.workers).get(&id) {
            // Full: a signal is pending already, and it reads the latest.
            let _ = h.redeliver.try_send(());
        }
    }

    fn reconcile(&self, tenant_id: Uuid, tenant: &Tenant) {
        let Some(app) = self.app.get().and_then(Weak::upgrade) else { return };
        let client = &self.client;
        let mut workers = lock(&self.workers);
        // Another region's tenant (or one moving) is not delivered here.
        let here = crate::regions::gate(app.regions.as_deref(), tenant_id).is_ok_and(|g| g == Gate::Go);
        let live = |id: &Uuid| here && !tenant.cancelled && tenant.webhooks.contains_key(id);
        workers.retain(|id, h| {
            let keep = h.tenant != tenant_id || live(id);
            if !keep {
                h.task.abort();
                tracing::info!(tenant = %tenant_id, webhook = %id, "webhook delivery stopped");
            }
            keep
        });
        if tenant.cancelled || !here {
            return;
        }
        for (id, w) in &tenant.webhooks {
            match workers.get(id) {
                Some(h) => {
                    h.def.send_if_modified(|old| {
                        let changed = **old != *w;
                        if changed {
                            *old = Arc::new(w.clone());
                        }
                        changed
                    });
                }
                None => {
                    let (def, def_rx) = watch::channel(Arc::new(w.clone()));
                    let (redeliver, redeliver_rx) = mpsc::channel(1);
                    let status = Arc::new(Mutex::new(DeliveryStatus { delivering_here: true, ..Default::default() }));
                    let worker = Worker {
                        app: app.clone(),
                        hub: self.hub.clone(),
                        client: client.clone(),
                        settings: self.settings.clone(),
                        metrics: self.metrics.clone(),
                        tenant: tenant_id,
                        id: *id,
                        def: def_rx,
                        status: status.clone(),
                    };
                    let task = tokio::spawn(worker.run(redeliver_rx));
                    workers.insert(*id, Handle { tenant: tenant_id, def, redeliver, status, task });
                }
            }
        }
    }
}

impl Deliveries {
    /// Follows the tenants' webhook events for the life of the process.
    async fn run(app: Arc<App>) {
        let filter = EventFilter {
            stream_prefixes: vec![events::Kind::Tenant.prefix().into()],
            event_types: [
                t::WEBHOOK_CREATED,
                t::WEBHOOK_SECRET_ROTATED,
                t::WEBHOOK_PAUSED,
                t::WEBHOOK_RESUMED,
                t::WEBHOOK_DELETED,
                t::TENANT_CANCELLED,
            ]
            .map(String::from)
            .to_vec(),
        };
        let options = SubscriptionOptions { page_size: 256, fall_behind_threshold: u64::MAX, ..Default::default() };
        let mut from = SubscribeFrom::Start;
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut sub = subscribe_all(app.log.clone(), from, filter.clone(), options);
            loop {
                match sub.next().await {
                    Ok(SubscriptionMessage::Event(r)) => {
                        from = SubscribeFrom::After(r.position);
                        backoff = Duration::from_millis(200);
                        let Some(tenant) = r.event.tenant_id else { continue };
                        match app.registry.read::<Tenant>(tenant, tenant).await {
                            Ok(t) => app.deliveries.reconcile(tenant, &t.state),
                            Err(e) => tracing::warn!(%tenant, error = %e, "webhooks: cannot read the tenant"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: the directory's subscription failed; resubscribing");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        break;
                    }
                }
            }
        }
    }
}

/// A worker's feed reads at most this often while live: a hundred workers
/// over a busy log would otherwise each read after every commit.
const COALESCE: Duration = Duration::from_millis(10);

/// The checkpoint stream of an endpoint keeps only its last few events.
const CHECKPOINTS_KEPT: u64 = 16;

async fn load_checkpoint(app: &App, id: Uuid) -> Result<Option<(Option<u64>, Option<i64>)>, AppError> {
    let stream = events::stream::webhook_process_stream(id);
    match actors::write::last_event(app.log.as_ref(), &stream).await? {
        Some(r) => Ok(Some(events::codec::decode_webhook_checkpoint(&r)?)),
        None => Ok(None),
    }
}

pub(crate) async fn save_checkpoint(
    app: &App,
    id: Uuid,
    position: Option<u64>,
    failing: Option<i64>,
) -> Result<(), AppError> {
    let stream = events::stream::webhook_process_stream(id);
    let event = events::codec::webhook_checkpoint(position, failing);
    append_kept(app.log.as_ref(), &stream, ExpectedVersion::Any, event).await.map(|_| ())
}

/// Appends to one of an endpoint's process streams, which keep only
/// their last [`CHECKPOINTS_KEPT`] events; the event's version.
pub(crate) async fn append_kept(
    log: &dyn eventlog::EventLog,
    stream: &str,
    expected: ExpectedVersion,
    event: eventlog::NewEvent,
) -> Result<u64, AppError> {
    let r = actors::write::append(log, stream, expected, vec![event]).await?;
    if r.next_expected_version == 0 {
        let meta = StreamMetadata { max_count: Some(CHECKPOINTS_KEPT), ..Default::default() };
        log.set_stream_metadata(stream, meta).await?;
    }
    Ok(r.next_expected_version)
}

/// The redelivery the log records for endpoint `id`, with its version.
async fn load_redelivery(app: &App, id: Uuid) -> Result<Option<(RedeliveryState, u64)>, AppError> {
    let stream = events::stream::webhook_redelivery_stream(id);
    match actors::write::last_event(app.log.as_ref(), &stream).await? {
        Some(r) => Ok(Some((events::codec::decode_webhook_redelivery(&r)?, r.version))),
        None => Ok(None),
    }
}

/// Records a redelivery (asked for, progress, done); the new version.
pub(crate) async fn save_redelivery(
    app: &App,
    id: Uuid,
    state: &RedeliveryState,
    expected: ExpectedVersion,
) -> Result<u64, AppError> {
    let stream = events::stream::webhook_redelivery_stream(id);
    append_kept(app.log.as_ref(), &stream, expected, events::codec::webhook_redelivery(state)).await
}

/// What a checkpoint records: (delivered through, failing since).
type CheckpointState = (Option<u64>, Option<i64>);

/// What a worker's status shows of its schedule: (queued, checkpoint,
/// failing since, next attempt).
type Shown = (usize, Option<u64>, Option<i64>, Option<i64>);

/// An event queued for an endpoint: the shared entry and its failed
/// attempts so far.
struct Queued {
    entry: Arc<Entry>,
    attempts: u32,
}

struct Worker {
    app: Arc<App>,
    hub: Arc<Hub>,
    client: Client,
    settings: WebhookSettings,
    metrics: Arc<DeliveryMetrics>,
    tenant: Uuid,
    id: Uuid,
    def: watch::Receiver<Arc<Webhook>>,
    status: Arc<Mutex<DeliveryStatus>>,
}
/// What an attempt task hands back.
struct Done {
    lane: Lane,
    position: u64,
    attempt: Attempt,
    at_micros: i64,
}

impl Worker {
    /// The feed filter of an endpoint; an error when it names types and
    /// this server knows none of them (an empty list would mean "all").
    /// Types it does not know are left out (a newer server's, after a
    /// downgrade) and logged.
    fn filters(id: Uuid, def: &Webhook) -> Result<(Filters, Wants), String> {
        let (stored_types, unknown) = crate::feed::known_stored_types(&def.types);
        if !unknown.is_empty() {
            tracing::warn!(webhook = %id, ?unknown, "webhook: event types this server does not know are left out");
        }
        if stored_types.is_empty() && !def.types.is_empty() {
            return Err(format!(
                "none of the endpoint's event types is known to this server ({}): nothing is delivered",
                def.types.join(", ")
            ));
        }
        let types = def.types.iter().filter_map(|n| crate::feed::TYPES.iter().find(|(t, _)| t == n)).map(|(t, _)| *t);
        let wants = Wants { types: types.collect(), pype: def.pype };
        Ok((Filters { stored_types, pype: def.pype, session: None }, wants))
    }

    /// The feed options of a worker: it reads as it has room, so the
    /// stall limit is long (a cut-off feed is reopened anyway).
    fn feed_limits() -> FeedLimits {
        FeedLimits { stall: Duration::from_secs(3600), behind_positions: u64::MAX, coalesce: COALESCE }
    }

    fn now(&self) -> i64 {
        self.app.clock.now_micros()
    }

    async fn run(self, mut redeliver: mpsc::Receiver<()>) {
        let mut backoff_wait = Duration::from_millis(200);
        let (checkpoint, failing) = loop {
            match load_checkpoint(&self.app, self.id).await {
                Ok(c) => break c.unwrap_or((None, None)),
                Err(e) => {
                    tracing::warn!(webhook = %self.id, error = %e, "webhook: cannot read its checkpoint; retrying");
                    tokio::time::sleep(backoff_wait).await;
                    backoff_wait = (backoff_wait * 2).min(Duration::from_secs(30));
                }
            }
        };
        let settings = self.settings.clone();
        let mut schedule = Schedule::new(checkpoint, settings.max_in_flight, settings.max_queued)
            .with_first_retry(settings.first_retry);
        schedule.inherit_failure(failing);
        if self.def.borrow().paused.is_some() {
            schedule.pause();
        }
        // Without a recorded start, what came before the endpoint is skipped.
        let mut before_start = checkpoint.is_none().then(|| self.def.borrow().created_micros);
        let mut pending: HashMap<u64, Queued> = HashMap::new();
        // The attempts in flight, polled by this task: no task per
        // attempt, and the client does each attempt's I/O in its future.
        let mut inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>> = FuturesUnordered::new();
        // The endpoint's URL as checked against the destination policy,
        // for the definition it was checked for.
        let mut target: (String, Result<Url, String>) = (String::new(), Err(String::new()));
        // Where the events come from: the shared ring, or (when the ring
        // does not reach back to this worker's cursor) its own feed until
        // that is live.
        let lease = self.hub.want(self.tenant, self.def.borrow().pype);
        let mut on_hub = true;
        let mut feed: Option<mpsc::Receiver<Result<FeedItem, AppError>>> = None;
        let mut reopen_at = 0i64;
        let mut saved = (checkpoint, failing);
        let mut last_save = tokio::time::Instant::now();
        let mut def_rx = self.def.clone();
        // The running redelivery (its record's version) and, after a
        // restart, the one the log says is unfinished.
        let mut replay: Option<(u64, tokio::task::JoinHandle<()>)> = None;
        self.start_redelivery(&mut replay).await;
        let mut saving: Option<tokio::task::JoinHandle<(CheckpointState, Result<(), AppError>)>> = None;
        let mut paused_def = self.def.borrow().paused.is_some();
        let mut filters = Self::filters(self.id, &self.def.borrow());
        let id_text = self.id.to_string();
        // One timer for the whole run, moved only when what it waits for
        // changes: the housekeeping tick (every second: the clock may be
        // moved, the checkpoint may need saving) or an earlier retry.
        let mut tick_at = tokio::time::Instant::now() + Duration::from_secs(1);
        let timer = tokio::time::sleep_until(tick_at);
        tokio::pin!(timer);
        // What the status shows of the schedule, published when it changes.
        let mut published = None;
        loop {
            // A tenant moving to another region is delivered by the region
            // it lands in, from the first event not delivered here.
            if crate::regions::gate(self.app.regions.as_deref(), self.tenant).is_ok_and(|g| g != Gate::Go) {
                tracing::info!(tenant = %self.tenant, webhook = %self.id, "webhook delivery stopped: the tenant moves to another region");
                lock(&self.status).last_error = "the tenant moves to another region".into();
                return;
            }
            let def = def_rx.borrow().clone();
            let now = self.now();
            if schedule.paused() {
                feed = None;
            }
            let reading = !schedule.paused() && schedule.has_room();
            match &filters {
                Err(reason) => {
                    lock(&self.status).last_error = reason.clone();
                }
                Ok((_, wants)) if reading && on_hub => {
                    match self.hub.pull(self.tenant, schedule.highest(), schedule.room(), wants) {
                        Pull::Gap => on_hub = false,
                        Pull::Read { entries, through } => {
                            // Every entry fits (at most `room`); were one
                            // refused, the cursor stays before it.
                            let n = entries.len() as u64;
                            let all = entries
                                .into_iter()
                                .all(|e| self.take(&mut schedule, &mut pending, &mut before_start, e));
                            self.metrics.read_shared.fetch_add(n, Ordering::Relaxed);
                            if let Some(t) = through.filter(|_| all) {
                                schedule.read_through(t);
                            }
                        }
                    }
                }
                Ok(_) => {}
            }
            // Behind the ring: the worker's own feed, from its cursor.
            if let Ok((feed_filters, _)) = &filters
                && reading
                && !on_hub
                && feed.is_none()
                && now >= reopen_at
            {
                let from = schedule.highest().map_or(SubscribeFrom::Start, SubscribeFrom::After);
                feed = Some(self.app.open_feed(self.tenant, from, feed_filters.clone(), Self::feed_limits()));
            }
            // Send what is due (including what was just read).
            if !schedule.paused() {
                if target.0 != def.url {
                    target = (def.url.clone(), self.client.check(&def.url));
                }
                for p in schedule.ready(now) {
                    let Some(q) = pending.get(&p.position) else { continue };
                    let headers = headers(&id_text, now, &def, &q.entry, q.attempts);
                    let entry = q.entry.clone();
                    let (client, url, clock) = (self.client.clone(), target.1.clone(), self.app.clock.clone());
                    inflight.push(Box::pin(async move {
                        let attempt = match url {
                            Ok(url) => client.post_checked(url, &headers, &entry.body).await,
                            Err(reason) => Attempt::refused(reason),
                        };
                        Done { lane: p.lane, position: p.position, attempt, at_micros: clock.now_micros() }
                    }));
                }
            }
            // Record progress at most once a second, in the background (a
            // delivery does not wait for the checkpoint's fdatasync); one
            // save at a time, so they land in order.
            if saving.as_ref().is_some_and(|s| s.is_finished())
                && let Some(done) = saving.take()
            {
                match done.await {
                    Ok((state, Ok(()))) => saved = state,
                    Ok((_, Err(e))) => {
                        tracing::warn!(webhook = %self.id, error = %e, "webhook: cannot record its checkpoint")
                    }
                    Err(_) => {}
                }
            }
            let state = (schedule.checkpoint(), schedule.failing_since());
            if state != saved && saving.is_none() && last_save.elapsed() >= Duration::from_secs(1) {
                let (app, id) = (self.app.clone(), self.id);
                saving = Some(tokio::spawn(async move { (state, save_checkpoint(&app, id, state.0, state.1).await) }));
                last_save = tokio::time::Instant::now();
            }
            let shown = (schedule.queued(), saved.0, schedule.failing_since(), schedule.next_due());
            if published != Some(shown) {
                self.publish(shown);
                published = Some(shown);
            }
            // Wake for what comes due, and at least every second. Due
            // already but not sent means the in-flight limit holds it: a
            // completion wakes the loop, not a timer (no spinning).
            let deadline = match shown.3 {
                Some(due) if due > now => {
                    tick_at.min(tokio::time::Instant::now() + Duration::from_micros((due - now) as u64))
                }
                _ => tick_at,
            };
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let room = reading && filters.is_ok();
            // Unbiased: under steady load an answer or an entry is ready on
            // most passes, and a fixed order would starve the definition's
            // changes (a pause, a deletion) behind them.
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    self.finish(&mut schedule, &mut pending, done);
                    // Every other attempt that ended meanwhile, before the
                    // next round of reading and sending.
                    while let Some(Some(done)) = inflight.next().now_or_never() {
                        self.finish(&mut schedule, &mut pending, done);
                    }
                    if schedule.paused() {
                        self.pause(&def).await;
                    }
                }
                // A page the hub read has entries for this endpoint (a wake
                // during the pull above is kept, so none is lost).
                _ = lease.notify.notified(), if on_hub && room => {}
                item = recv_opt(&mut feed), if feed.is_some() && room => {
                    match item {
                        Some(Ok(FeedItem::Event(e))) => {
                            let entry = Arc::new(Entry::of(&e));
                            self.take(&mut schedule, &mut pending, &mut before_start, entry);
                            self.metrics.read_own.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Ok(FeedItem::Live { after_position })) => {
                            // Caught up: back to the shared ring from here.
                            if let Some(p) = after_position {
                                schedule.read_through(p);
                            }
                            feed = None;
                            on_hub = true;
                        }
                        Some(Ok(FeedItem::Behind { .. })) => {}
                        Some(Err(e)) => {
                            tracing::warn!(webhook = %self.id, error = %e, "webhook: its feed failed; reopening");
                            feed = None;
                            reopen_at = self.now() + 1_000_000;
                        }
                        None => {
                            feed = None;
                            reopen_at = self.now() + 1_000_000;
                        }
                    }
                }
                r = def_rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // Resumed (or paused) through the API or by another node.
                    let paused = def_rx.borrow().paused.is_some();
                    if paused_def && !paused {
                        schedule.resume();
                        tracing::info!(webhook = %self.id, "webhook delivery resumed");
                    } else if paused {
                        schedule.pause();
                    }
                    paused_def = paused;
                    filters = Self::filters(self.id, &def_rx.borrow());
                }
                Some(()) = redeliver.recv() => self.start_redelivery(&mut replay).await,
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= tick_at {
                        tick_at = now + Duration::from_secs(1);
                    }
                }
            }
        }
    }

    /// Starts the redelivery the log records, unless it is done or runs
    /// already; a newer one supersedes the running one.
    async fn start_redelivery(&self, replay: &mut Option<(u64, tokio::task::JoinHandle<()>)>) {
        let recorded = match load_redelivery(&self.app, self.id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(webhook = %self.id, error = %e, "webhook: cannot read its redelivery; ask again");
                return;
            }
        };
        let Some((state, version)) = recorded.filter(|(s, _)| !s.done) else { return };
        if replay.as_ref().is_some_and(|(v, task)| *v == version && !task.is_finished()) {
            return;
        }
        if let Some((_, old)) = replay.take() {
            old.abort();
        }
        let r = Replay {
            app: self.app.clone(),
            client: self.client.clone(),
            tenant: self.tenant,
            id: self.id,
            def: self.def.clone(),
            status: self.status.clone(),
            first_retry: self.settings.first_retry,
        };
        *replay = Some((version, tokio::spawn(r.run(state, version))));
    }

    /// Queues an event read from the ring or the feed (past the cursor).
    fn take(
        &self,
        schedule: &mut Schedule,
        pending: &mut HashMap<u64, Queued>,
        before_start: &mut Option<i64>,
        entry: Arc<Entry>,
    ) -> bool {
        if schedule.highest().is_some_and(|h| entry.position <= h) {
            return true; // read already (the feed and the ring overlap)
        }
        if let Some(created) = *before_start {
            if entry.recorded_at_micros < created {
                schedule.read_through(entry.position);
                return true;
            }
            *before_start = None;
        }
        let (position, lane) = (entry.position, entry.session.map_or(TENANT_LANE, |s| s.as_u128()));
        let queued = schedule.push(position, lane);
        if queued {
            pending.insert(position, Queued { entry, attempts: 0 });
        }
        queued
    }

    /// Records an attempt's outcome in the schedule, the status and the
    /// counters.
    fn finish(&self, schedule: &mut Schedule, pending: &mut HashMap<u64, Queued>, done: Done) {
        let metrics = &self.metrics;
        let outcome = Outcome::of_status(match &done.attempt.outcome {
            Ok(()) => done.attempt.status,
            Err(_) if done.attempt.status.is_some_and(|s| (200..300).contains(&s)) => None,
            Err(_) => done.attempt.status,
        });
        // The jitter's random draw (a system call) only for a retry.
        let unit = if outcome == Outcome::Delivered { 0.5 } else { backoff::random_unit() };
        schedule.complete(done.lane, outcome, done.at_micros, unit);
        let mut st = lock(&self.status);
        st.last_attempt_micros = done.at_micros;
        st.last_status = done.attempt.status.unwrap_or(0);
        st.last_latency_micros = done.attempt.latency.as_micros() as i64;
        match &done.attempt.outcome {
            Ok(()) => {
                st.delivered += 1;
                st.last_error.clear();
                st.last_delivered_micros = done.at_micros;
                metrics.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(q) = pending.remove(&done.position) {
                    metrics.observe(done.at_micros - q.entry.recorded_at_micros);
                }
            }
            Err(reason) => {
                st.failed_attempts += 1;
                st.last_error = reason.clone();
                metrics.failed_attempts.fetch_add(1, Ordering::Relaxed);
                if let Some(q) = pending.get_mut(&done.position) {
                    q.attempts += 1;
                }
                tracing::debug!(webhook = %self.id, position = done.position, reason, "webhook attempt failed");
            }
        }
    }

    /// Shows (queued, checkpoint, failing since, next attempt) in the
    /// endpoint's status.
    fn publish(&self, (queued, checkpoint, failing_since, next_due): Shown) {
        let mut st = lock(&self.status);
        st.queued = queued as u64;
        st.checkpoint = checkpoint;
        st.failing_since_micros = failing_since.unwrap_or(0);
        st.next_attempt_micros = next_due.unwrap_or(0);
    }

    /// The endpoint failed for the whole retry window: recorded on the
    /// tenant's stream, in the audit trail and on `/metrics`.
    async fn pause(&self, def: &Webhook) {
        if def.paused.is_some() {
            return;
        }
        let reason = {
            let st = lock(&self.status);
            format!(
                "failing for {} hours; the last attempt: {}",
                backoff::GIVE_UP_AFTER.as_secs() / 3600,
                if st.last_error.is_empty() { "unknown" } else { &st.last_error }
            )
        };
        self.metrics.paused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(tenant = %self.tenant, webhook = %self.id, reason, "webhook paused");
        let cmd = domain::tenant::TenantCommand::PauseWebhook { id: self.id, reason: reason.clone() };
        match self.app.registry.execute::<Tenant>(self.tenant, self.tenant, cmd).await {
            Ok(t) => self.app.deliveries.reconcile(self.tenant, &t.state),
            Err(e) => tracing::error!(webhook = %self.id, error = %e, "webhook: cannot record its pause"),
        }
        self.app
            .audit
            .note(
                Record::new("webhook.paused", "system", "ok")
                    .tenant(self.tenant)
                    .target(self.id.to_string())
                    .detail(reason),
            )
            .await;
    }
}

/// The headers of one attempt of endpoint `id`, signed at `now` (µs) with
/// the live secrets.
fn headers(id: &str, now: i64, def: &Webhook, e: &Entry, attempts: u32) -> Vec<(&'static str, String)> {
    let mut secrets: Vec<&[u8]> = vec![&def.secret];
    if let Some((old, until)) = &def.previous
        && *until > now
    {
        secrets.push(old);
    }
    vec![
        (sign::HEADER, sign::header(&secrets, now.div_euclid(1_000_000), &e.body)),
        ("pypes-event-id", e.event_id.to_string()),
        ("pypes-event-type", e.event_type.to_string()),
        ("pypes-webhook-id", id.to_string()),
        ("pypes-delivery-attempt", (attempts + 1).to_string()),
    ]
}

/// The feed's next item, or never when there is no feed (its arm is off).
async fn recv_opt(feed: &mut Option<mpsc::Receiver<Result<FeedItem, AppError>>>) -> Option<Result<FeedItem, AppError>> {
    match feed {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

/// A redelivery: the events of one time range, in log order, one at a time.
struct Replay {
    app: Arc<App>,
    client: Client,
    tenant: Uuid,
    id: Uuid,
    def: watch::Receiver<Arc<Webhook>>,
    status: Arc<Mutex<DeliveryStatus>>,
    first_retry: Duration,
}
impl Replay {
    /// Runs the redelivery recorded as `state` (at `version` of its
    /// stream), recording its progress at most once a second; stops when
    /// a newer request took its place.
    async fn run(self, mut state: RedeliveryState, mut version: u64) {
        lock(&self.status).redelivered = state.sent;
        let def = self.def.borrow().clone();
        let filters = match Worker::filters(self.id, &def) {
            Ok((f, _)) => f,
            Err(reason) => {
                tracing::warn!(webhook = %self.id, reason, "webhook redelivery: nothing to send");
                return;
            }
        };
        let from = state.after_position.map_or(SubscribeFrom::Start, SubscribeFrom::After);
        let mut feed = self.app.open_feed(self.tenant, from, filters, Worker::feed_limits());
        let first_retry = self.first_retry;
        let id_text = self.id.to_string();
        let mut saved_at = tokio::time::Instant::now();
        while let Some(item) = feed.recv().await {
            let e = match item {
                Ok(FeedItem::Event(e)) => e,
                Ok(FeedItem::Live { .. }) => break,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(webhook = %self.id, error = %e, "webhook redelivery: the feed failed; it goes on after a restart or a new request");
                    return;
                }
            };
            if e.recorded_at_micros < state.from_micros {
                continue;
            }
            if e.recorded_at_micros >= state.to_micros {
                break;
            }
            let entry = Entry::of(&e);
            let mut attempts = 0;
            let started = self.app.clock.now_micros();
            loop {
                if self.def.has_changed().is_err() {
                    return; // the endpoint was deleted
                }
                let def = self.def.borrow().clone();
                let mut headers = headers(&id_text, self.app.clock.now_micros(), &def, &entry, attempts);
                headers.push(("pypes-redelivery", "true".into()));
                let attempt = self.client.post(&def.url, &headers, &entry.body).await;
                if attempt.delivered() {
                    state.sent += 1;
                    state.after_position = Some(entry.position);
                    lock(&self.status).redelivered = state.sent;
                    break;
                }
                attempts += 1;
                let now = self.app.clock.now_micros();
                if !backoff::keep_trying(Duration::from_micros(now.saturating_sub(started).max(0) as u64)) {
                    tracing::warn!(webhook = %self.id, "webhook redelivery given up after 72 hours");
                    state.done = true;
                    let _ = self.save(&state, &mut version).await;
                    return;
                }
                tokio::time::sleep(backoff::delay_from(first_retry, attempts, backoff::random_unit())).await;
            }
            // Sent: recorded at most once a second.
            if saved_at.elapsed() >= Duration::from_secs(1) {
                if !self.save(&state, &mut version).await {
                    return;
                }
                saved_at = tokio::time::Instant::now();
            }
        }
        state.done = true;
        if self.save(&state, &mut version).await {
            tracing::info!(tenant = %self.tenant, webhook = %self.id, sent = state.sent, "webhook redelivery done");
        }
    }

    /// Records the progress; `false` when a newer request superseded this
    /// one (or the log failed: a restart goes on from the last record).
    async fn save(&self, state: &RedeliveryState, version: &mut u64) -> bool {
        match save_redelivery(&self.app, self.id, state, ExpectedVersion::Exact(*version)).await {
            Ok(next) => {
                *version = next;
                true
            }
            // A newer request was recorded: it runs instead.
            Err(AppError::Actor(actors::ActorError::Log(eventlog::LogError::WrongExpectedVersion { .. }))) => false,
            Err(e) => {
                tracing::warn!(webhook = %self.id, error = %e, "webhook redelivery: cannot record its progress");
                false
            }
        }
    }
}
