//! Runs one projection: reads `$all` from its checkpoint a page at a time,
//! applies the page and commits the rows and the new checkpoint in one
//! view-store transaction. A crash before the commit loses the page's
//! effects and the checkpoint together; after it, both are durable. Either
//! way the page is applied exactly once.
//!
//! Operators (through [`Runner`]'s methods, which the server exposes on its
//! admin endpoint) pause and resume, skip the poison event a runner is
//! stalled at (recorded in the store, and skipped by rebuilds too), and
//! reset: a new generation is built from position 0 beside the serving one
//! (pages alternate between the two) and becomes the serving one in one
//! transaction once it has caught up with it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use eventlog::{AllPage, EventFilter, EventLog, LogError, RecordedEvent};
use proto::views::{GenerationMeta, SkippedEvent};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::store::{Generation, WriteView};
use crate::{ApplyError, PURGE_EVENT, Projection, ViewError, ViewStore};

#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Events read and committed per transaction.
    pub page_size: usize,
    /// Longest wait between looks at the log when nothing wakes the runner.
    pub idle_poll: Duration,
    /// Free bytes the view store leaves on its filesystem; `None`: the
    /// default rule ([`crate::store::reserve_for`]).
    pub disk_reserve: Option<u64>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self { page_size: 4096, idle_poll: Duration::from_secs(1), disk_reserve: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerState {
    Starting,
    CatchingUp,
    Live,
    Paused,
    /// Stopped at a poison event until an operator skips it.
    Stalled {
        position: u64,
        error: String,
    },
    /// The store or the log failed; retrying.
    Failing(String),
    Stopped,
}

impl RunnerState {
    pub fn name(&self) -> &'static str {
        match self {
            RunnerState::Starting => "starting",
            RunnerState::CatchingUp => "catching_up",
            RunnerState::Live => "live",
            RunnerState::Paused => "paused",
            RunnerState::Stalled { .. } => "stalled",
            RunnerState::Failing(_) => "failing",
            RunnerState::Stopped => "stopped",
        }
    }
}

/// What operators see of a projection.
#[derive(Debug, Clone)]
pub struct ProjectionStatus {
    pub name: &'static str,
    pub version: u32,
    pub state: RunnerState,
    pub serving_generation: u32,
    /// The serving generation's checkpoint: the next position it reads.
    pub next_position: u64,
    pub head: u64,
    pub lag_positions: u64,
    pub lag_seconds: f64,
    pub events_applied: u64,
    /// A generation being rebuilt: (generation, its next position).
    pub building: Option<(u32, u64)>,
    pub skipped: usize,
}

/// Requests from operators, picked up by the runner thread.
#[derive(Debug, Default)]
pub struct Control {
    woken: Mutex<bool>,
    cv: Condvar,
    /// An operator changed something (pause, resume, skip, reset, stop):
    /// the next round reads the store whatever the log's head says.
    poked: AtomicBool,
    stop: AtomicBool,
    skip: AtomicBool,
    reset: AtomicBool,
}

impl Control {
    /// Wakes the runner for an operator's request.
    fn poke(&self) {
        self.poked.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Waits (on a plain condition variable, so a runtime shutting down
    /// cannot break the wait) until woken or `timeout`.
    fn wait(&self, timeout: Duration) {
        let guard = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) =
            self.cv.wait_timeout_while(guard, timeout, |woken| !*woken).unwrap_or_else(|e| e.into_inner());
        *guard = false;
    }
}

/// A running projection.
pub struct Runner {
    projection: Arc<dyn Projection>,
    store: Arc<ViewStore>,
    config: RunnerConfig,
    status: Mutex<ProjectionStatus>,
    control: Control,
    /// The serving generation's checkpoint, for waiters.
    checkpoint: watch::Sender<u64>,
    /// When a page was last committed durably.
    last_durable: Mutex<Instant>,
    /// Where `$all` is read from (shared with the other live runners).
    pages: Arc<SharedPages>,
    /// Events in the last page read (to linger after a short one).
    last_page: AtomicUsize,
}

/// How long a runner that just applied a short page waits before it looks
/// again (see `run`).
const LINGER: Duration = Duration::from_millis(5);
const LINGER_STEP: Duration = Duration::from_micros(500);

/// Pages commit without an fsync (visible at once, durable with the next
/// durable commit) except about once per this long and for purges; a crash
/// re-applies what was not yet durable, view and checkpoint together.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("projection", &self.projection.name()).finish()
    }
}

enum Step {
    /// Nothing new.
    Idle,
    /// Applied a page.
    Applied,
    /// Stopped at a poison event.
    Poisoned { skip: SkippedEvent },
}

/// Pages of `$all` read once and shared by the runners that follow the log
/// together: at the head the live runners ask for the same positions, and
/// the first to ask reads and decodes the page (with the union of their
/// filters) for all of them; each applies only what its own filter passes.
/// A runner elsewhere in the log (catching up, rebuilding a generation)
/// simply reads its own pages.
pub struct SharedPages {
    filter: EventFilter,
    recent: Mutex<std::collections::VecDeque<(u64, Arc<AllPage>)>>,
}

/// Pages kept for runners that are a little behind the first reader.
const SHARED_PAGES: usize = 4;

impl std::fmt::Debug for SharedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPages").field("filter", &self.filter).finish()
    }
}

impl SharedPages {
    /// Pages for runners whose filters are `filters`.
    pub fn new(filters: impl Iterator<Item = EventFilter>) -> Arc<Self> {
        Arc::new(Self { filter: union_filter(filters), recent: Mutex::default() })
    }

    /// The page of `$all` from `from` (up to `max` events passing the union
    /// filter), read now or by another runner a moment ago. A page read
    /// earlier may end before the current head; the caller goes on from its
    /// `next_position`, so nothing is skipped.
    fn read(&self, log: &Arc<dyn EventLog>, rt: &Handle, from: u64, max: usize) -> Result<Arc<AllPage>, LogError> {
        if let Some((_, page)) = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(start, p)| *start == from && p.next_position > from)
        {
            return Ok(page.clone());
        }
        let page = Arc::new(rt.block_on(log.read_all(from, max, &self.filter))?);
        if page.next_position > from {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.retain(|(start, _)| *start != from);
            recent.push_back((from, page.clone()));
            while recent.len() > SHARED_PAGES {
                recent.pop_front();
            }
        }
        Ok(page)
    }
}

impl Runner {
    /// Opens the projection's generations and starts its thread.
    pub fn start(
        projection: Arc<dyn Projection>,
        store: Arc<ViewStore>,
        log: Arc<dyn EventLog>,
        config: RunnerConfig,
        rt: Handle,
    ) -> Result<Arc<Self>, ViewError> {
        let pages = SharedPages::new(std::iter::once(projection.filter()));
        Self::start_sharing(projection, store, log, config, rt, pages)
    }

    /// [`Runner::start`], reading `$all` through `pages`, shared with the
    /// other runners of the same log (their filters must be in its union).
    pub fn start_sharing(
        projection: Arc<dyn Projection>,
        store: Arc<ViewStore>,
        log: Arc<dyn EventLog>,
        config: RunnerConfig,
        rt: Handle,
        pages: Arc<SharedPages>,
    ) -> Result<Arc<Self>, ViewError> {
        let (serving, building) = store.generations()?;
        match (&serving, &building) {
            (None, _) => {
                store.new_generation(projection.version())?;
            }
            (Some(s), None) if s.projection_version != projection.version() => {
                tracing::info!(
                    projection = projection.name(),
                    from = s.projection_version,
                    to = projection.version(),
                    "projection version changed; rebuilding beside the serving generation"
                );
                store.new_generation(projection.version())?;
            }
            _ => {}
        }
        let (serving, building) = store.generations()?;
        let serving = serving.unwrap_or_default();
        let status = ProjectionStatus {
            name: projection.name(),
            version: projection.version(),
            state: RunnerState::Starting,
            serving_generation: serving.generation,
            next_position: serving.next_position,
            head: log.head(),
            lag_positions: log.head().saturating_sub(serving.next_position),
            lag_seconds: 0.0,
            events_applied: serving.events_applied,
            building: building.map(|b| (b.generation, b.next_position)),
            skipped: store.skipped()?.len(),
        };
        let runner = Arc::new(Self {
            projection,
            store,
            config,
            status: Mutex::new(status),
            control: Control::default(),
            checkpoint: watch::channel(serving.next_position).0,
            last_durable: Mutex::new(Instant::now()),
            pages,
            last_page: AtomicUsize::new(0),
        });
        // Head changes wake the runner.
        let weak = Arc::downgrade(&runner);
        let mut head_rx = log.watch_head();
        rt.spawn(async move {
            while head_rx.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(r) => r.control.wake(),
                    None => break,
                }
            }
        });
        let r = runner.clone();
        std::thread::Builder::new()
            .name(format!("projection-{}", runner.projection.name()))
            .spawn(move || r.run(log, rt))
            .map_err(|e| ViewError::Store(format!("cannot start the runner thread: {e}")))?;
        Ok(runner)
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    pub fn store(&self) -> &Arc<ViewStore> {
        &self.store
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, state: RunnerState) {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).state = state;
    }

    /// Waits until the serving generation has read past `position` (its
    /// checkpoint is at least `position`).
    pub async fn wait_for(&self, position: u64) {
        let mut rx = self.checkpoint.subscribe();
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    pub fn pause(&self) -> Result<(), ViewError> {
        self.store.set_paused(true)?;
        self.control.poke();
        Ok(())
    }

    pub fn resume(&self) -> Result<(), ViewError> {
        self.store.set_paused(false)?;
        self.control.poke();
        Ok(())
    }

    /// Skips the poison event the runner is stalled at; an error when it
    /// is not stalled.
    pub fn skip(&self) -> Result<u64, String> {
        match self.status().state {
            RunnerState::Stalled { position, .. } => {
                self.control.skip.store(true, Ordering::SeqCst);
                self.control.poke();
                Ok(position)
            }
            other => Err(format!("projection {} is {}, not stalled at a poison event", self.name(), other.name())),
        }
    }

    /// Rebuilds from position 0 beside the serving generation.
    pub fn reset(&self) {
        self.control.reset.store(true, Ordering::SeqCst);
        self.control.poke();
    }

    pub fn stop(&self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.control.poke();
    }

    fn run(self: Arc<Self>, log: Arc<dyn EventLog>, rt: Handle) {
        let mut stalled: Option<(Generation, GenerationMeta, SkippedEvent)> = None;
        let mut backoff = Duration::from_millis(100);
        let mut low_on_disk = false;
        while !self.control.stop.load(Ordering::SeqCst) {
            let round = self.tick(&log, &rt, &mut stalled);
            if low_on_disk && round.is_ok() {
                tracing::info!(projection = self.name(), "view store has space again; the view catches up");
                low_on_disk = false;
            }
            match round {
                Ok(true) => {
                    backoff = Duration::from_millis(100);
                    // Caught up with a short page: under a steady load the
                    // head moves every group commit, and a page (one view
                    // commit) per group costs more than the events in it.
                    // Lingering a moment gathers the next groups into one
                    // page. Not while a reader waits for this view to
                    // reach its own write (`wait_for`): it is served at once.
                    if self.last_page.load(Ordering::Relaxed) < self.config.page_size / 8 {
                        let until = Instant::now() + LINGER;
                        while Instant::now() < until && self.checkpoint.receiver_count() == 0 {
                            std::thread::sleep(LINGER_STEP);
                        }
                    }
                    continue;
                }
                Ok(false) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.set_state(RunnerState::Failing(e.to_string()));
                    if matches!(e, ViewError::DiskLow { .. }) {
                        // Nothing failed: the view waits for space, looking once a second.
                        if !low_on_disk {
                            tracing::warn!(projection = self.name(), error = %e, "view store disk nearly full; the view waits");
                            low_on_disk = true;
                        }
                        let until = Instant::now() + Duration::from_secs(1);
                        while Instant::now() < until && !self.control.stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        continue;
                    }
                    tracing::error!(projection = self.name(), error = %e, "projection failed; retrying");
                    if e.is_io() {
                        // redb refuses the file after a failed write until
                        // it is reopened; the reopen rolls it back to its
                        // last durable commit, and the next round re-reads
                        // the checkpoint from there.
                        match self.store.reopen() {
                            Ok(()) => tracing::info!(projection = self.name(), "view store reopened"),
                            Err(e) => {
                                tracing::warn!(projection = self.name(), error = %e, "view store does not reopen yet")
                            }
                        }
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            self.control.wait(self.config.idle_poll);
        }
        self.set_state(RunnerState::Stopped);
    }

    /// One round: operator requests, then a page for the generation being
    /// built and one for the serving one. True when it did some work.
    fn tick(
        &self,
        log: &Arc<dyn EventLog>,
        rt: &Handle,
        stalled: &mut Option<(Generation, GenerationMeta, SkippedEvent)>,
    ) -> Result<bool, ViewError> {
        // Caught up, nothing rebuilding, no operator request: nothing to
        // read, not even the store (a round per group commit otherwise
        // reads the store's shape for nothing).
        if stalled.is_none() {
            let head = log.head();
            let idle = {
                let st = self.status.lock().unwrap_or_else(|e| e.into_inner());
                st.building.is_none() && st.next_position >= head && matches!(st.state, RunnerState::Live)
            };
            if idle && !self.control.poked.swap(false, Ordering::SeqCst) {
                return Ok(false);
            }
        }
        self.control.poked.store(false, Ordering::SeqCst);
        if self.control.reset.swap(false, Ordering::SeqCst) {
            let gn = self.store.new_generation(self.projection.version())?;
            tracing::info!(
                projection = self.name(),
                generation = gn.0,
                "reset: rebuilding beside the serving generation"
            );
            *stalled = None;
        }
        // One read of the store's shape per round (paused, skips, the
        // generations), not one per question.
        let shape = self.store.state()?;
        if shape.paused {
            self.set_state(RunnerState::Paused);
            self.refresh_from(log, None, &shape)?;
            return Ok(false);
        }
        if let Some((gn, meta, skip)) = stalled.take() {
            if self.control.skip.swap(false, Ordering::SeqCst) {
                tracing::warn!(projection = self.name(), position = skip.position, error = %skip.error, "skipping poison event");
                self.store.skip(gn, meta, skip)?;
                self.refresh(log, None)?;
                return Ok(true);
            }
            self.set_state(RunnerState::Stalled { position: skip.position, error: skip.error.clone() });
            *stalled = Some((gn, meta, skip));
            return Ok(false);
        }
        let skips: BTreeSet<u64> = shape.skipped.iter().map(|s| s.position).collect();
        let mut worked = false;
        let mut lag_seconds = None;
        let rebuilding = shape.building.is_some();
        // A page for the generation being built, then switch if it has caught up.
        if let Some(b) = shape.building {
            let gn = Generation(b.generation);
            match self.step(log, rt, gn, b, &skips, None, &mut lag_seconds)? {
                Step::Poisoned { skip } => {
                    let meta = self.store.generations()?.1.unwrap_or_default();
                    *stalled = Some((gn, meta, skip));
                    return Ok(true);
                }
                Step::Applied => worked = true,
                Step::Idle => {}
            }
            if let (Some(s), Some(b)) = self.store.generations()?
                && b.next_position >= s.next_position
            {
                self.store.switch_to_building()?;
                tracing::info!(
                    projection = self.name(),
                    generation = b.generation,
                    "rebuilt generation is now serving"
                );
                worked = true;
            }
            lag_seconds = None;
        }
        // Then a page for the serving generation, read afresh after a
        // rebuild's page: after a switch it is the one just built (the old
        // one's tables are gone).
        let serving = if rebuilding { self.store.generations()?.0 } else { shape.serving };
        if let Some(s) = serving {
            let gn = Generation(s.generation);
            match self.step(log, rt, gn, s, &skips, None, &mut lag_seconds)? {
                Step::Poisoned { skip } => {
                    let meta = self.store.generations()?.0.unwrap_or_default();
                    *stalled = Some((gn, meta, skip));
                    worked = true;
                }
                Step::Applied => worked = true,
                Step::Idle => {}
            }
        }
        if worked {
            self.refresh(log, lag_seconds)?;
        } else {
            self.refresh_from(log, lag_seconds, &shape)?;
        }
        if stalled.is_none() {
            let st = self.status();
            let state =
                if st.lag_positions > 0 || st.building.is_some() { RunnerState::CatchingUp } else { RunnerState::Live };
            self.set_state(state);
        }
        Ok(worked)
    }

    /// Updates the status and the checkpoint watch from the store.
    fn refresh(&self, log: &Arc<dyn EventLog>, lag_seconds: Option<f64>) -> Result<(), ViewError> {
        self.refresh_from(log, lag_seconds, &self.store.state()?)
    }

    /// [`Runner::refresh`] from a shape already read.
    fn refresh_from(
        &self,
        log: &Arc<dyn EventLog>,
        lag_seconds: Option<f64>,
        shape: &crate::store::StoreState,
    ) -> Result<(), ViewError> {
        let serving = shape.serving.unwrap_or_default();
        let building = shape.building;
        let head = log.head();
        let skipped = shape.skipped.len();
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            st.serving_generation = serving.generation;
            st.next_position = serving.next_position;
            st.head = head;
            st.lag_positions = head.saturating_sub(serving.next_position);
            if st.lag_positions == 0 {
                st.lag_seconds = 0.0;
            } else if let Some(l) = lag_seconds {
                st.lag_seconds = l;
            }
            st.events_applied = serving.events_applied;
            st.building = building.map(|b| (b.generation, b.next_position));
            st.skipped = skipped;
        }
        self.checkpoint.send_replace(serving.next_position);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        log: &Arc<dyn EventLog>,
        rt: &Handle,
        gn: Generation,
        meta: GenerationMeta,
        skips: &BTreeSet<u64>,
        until_micros: Option<i64>,
        lag_seconds: &mut Option<f64>,
    ) -> Result<Step, ViewError> {
        let filter = self.projection.filter();
        let page = self.pages.read(log, rt, meta.next_position, self.config.page_size)?;
        self.last_page.store(page.events.len(), Ordering::Relaxed);
        if let Some(first) = page.events.first() {
            *lag_seconds = Some((now_micros() - first.recorded_at_micros).max(0) as f64 / 1e6);
        }
        // Commit durably about once a second (and any page holding a purge:
        // the erasure process acts on its acknowledgement). In between,
        // commits are visible at once but not fsync'd: a crash rolls the
        // view and its checkpoint back together and the runner re-applies
        // from the log. Under load this is three projections' fsyncs a
        // second instead of three per page, next to the log's own.
        let mut last_durable = self.last_durable.lock().unwrap_or_else(|e| e.into_inner());
        let durable = last_durable.elapsed() >= DURABLE_EVERY;
        let events: Vec<&RecordedEvent> =
            page.events.iter().filter(|e| filter.matches(&e.stream, e.event_type())).collect();
        if !page.events.is_empty() {
            self.store.check_space(self.config.disk_reserve)?;
        }
        let step = apply_page(
            self.projection.as_ref(),
            &self.store,
            gn,
            meta,
            &events,
            page.next_position,
            skips,
            until_micros,
            durable,
        )?;
        if durable {
            *last_durable = Instant::now();
        }
        Ok(step)
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default()
}

fn is_skipped(e: &RecordedEvent, skips: &BTreeSet<u64>, until: Option<i64>) -> bool {
    skips.contains(&e.position) || until.is_some_and(|t| e.recorded_at_micros > t)
}

/// Applies `events` to generation `gn` and commits them with the new
/// checkpoint `next_position`; at a poison event, commits what precedes it
/// and reports it. A page holding a purge always commits durably (the
/// erasure process acts on its acknowledgement).
#[allow(clippy::too_many_arguments)]
fn apply_page(
    projection: &dyn Projection,
    store: &ViewStore,
    gn: Generation,
    mut meta: GenerationMeta,
    events: &[&RecordedEvent],
    next_position: u64,
    skips: &BTreeSet<u64>,
    until: Option<i64>,
    durable: bool,
) -> Result<Step, ViewError> {
    if events.is_empty() && next_position <= meta.next_position {
        return Ok(Step::Idle);
    }
    let applicable: Vec<(usize, &RecordedEvent)> =
        events.iter().copied().enumerate().filter(|(_, e)| !is_skipped(e, skips, until)).collect();
    let purges = applicable.iter().any(|(_, e)| e.event_type() == PURGE_EVENT);
    let mut poisoned = None;
    let txn = store.begin_write_with(durable || purges)?;
    {
        let mut w = WriteView::new(&txn, gn);
        let batch: Vec<&RecordedEvent> = applicable.iter().map(|(_, e)| *e).collect();
        match projection.apply_batch(&mut w, &batch).and_then(|()| acknowledge(&mut w, &batch)) {
            Ok(()) => {}
            Err((j, ApplyError::Poison(error))) => poisoned = Some((applicable[j].0, error)),
            Err((_, ApplyError::Store(e))) => return Err(e),
        }
        if poisoned.is_none() {
            meta.next_position = next_position.max(meta.next_position);
            meta.events_applied += batch.len() as u64;
            if let Some(last) = events.last() {
                meta.last_event_micros = last.recorded_at_micros;
            }
            w.put_meta(&meta)?;
            w.flush()?;
        }
    }
    let Some((i, error)) = poisoned else {
        txn.commit()?;
        return Ok(Step::Applied);
    };
    // Undo the page and commit only what precedes the poison event.
    txn.abort()?;
    let bad = events[i];
    if i > 0 {
        apply_page(projection, store, gn, meta, &events[..i], bad.position, skips, until, true)?;
    }
    let skip = SkippedEvent {
        position: bad.position,
        event_id: bad.id().as_bytes().to_vec(),
        stream: bad.stream.to_string(),
        event_type: bad.event_type().to_string(),
        error,
        skipped_at_micros: now_micros(),
    };
    tracing::error!(projection = projection.name(), position = bad.position, error = %skip.error, "poison event; projection stalled until an operator skips it");
    Ok(Step::Poisoned { skip })
}

/// Every projection acknowledges a purge in the transaction that applies it.
fn acknowledge(w: &mut WriteView<'_>, batch: &[&RecordedEvent]) -> Result<(), (usize, ApplyError)> {
    for (i, e) in batch.iter().enumerate().filter(|(_, e)| e.event_type() == PURGE_EVENT) {
        let p: proto::events::SubjectErasureKeysShredded = crate::sessions::payload(e).map_err(|err| (i, err))?;
        w.put("acks", &p.request_id, &e.position.to_le_bytes()).map_err(|err| (i, err.into()))?;
    }
    Ok(())
}

/// Builds `projection` from position 0 into a fresh `store`, applying only
/// events recorded at or before `until_micros` (all when `None`), up to the
/// log's head at the call. Poison events are skipped and returned.
/// `progress(done, total)` is called after each page.
pub fn rebuild_until(
    projection: &dyn Projection,
    store: &ViewStore,
    log: &Arc<dyn EventLog>,
    rt: &Handle,
    until_micros: Option<i64>,
    page_size: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<SkippedEvent>, ViewError> {
    let mut skipped = rebuild_all(&[(projection, store)], log, rt, until_micros, page_size, progress)?;
    Ok(skipped.pop().unwrap_or_default())
}

/// Builds several projections at once from one read of `$all`: this thread
/// reads pages (the union of their filters) and hands each page to one
/// applier thread per projection, so reading and applying overlap and the
/// log is read once. Each store resumes from its own checkpoint; pages
/// commit without an fsync except about once a second, at a purge and at
/// the end. Returns the poison events each one skipped, in order.
pub fn rebuild_all(
    targets: &[(&dyn Projection, &ViewStore)],
    log: &Arc<dyn EventLog>,
    rt: &Handle,
    until_micros: Option<i64>,
    page_size: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<Vec<SkippedEvent>>, ViewError> {
    let head = log.head();
    let mut from = head;
    for (p, store) in targets {
        if store.generations()?.0.is_none() {
            store.new_generation(p.version())?;
        }
        from = from.min(store.generations()?.0.unwrap_or_default().next_position);
    }
    let filter = union_filter(targets.iter().map(|(p, _)| p.filter()));
    let done: Vec<std::sync::atomic::AtomicU64> = targets.iter().map(|_| from.into()).collect();
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut appliers = Vec::new();
        for (i, (p, store)) in targets.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<(Vec<RecordedEvent>, u64)>>(2);
            senders.push(tx);
            let done = &done[i];
            let applier = std::thread::Builder::new()
                .name(format!("rebuild-{}", p.name()))
                .spawn_scoped(scope, move || rebuild_applier(*p, store, rx, head, until_micros, done))
                .map_err(|e| ViewError::Store(format!("starting a rebuild thread: {e}")))?;
            appliers.push(applier);
        }
        let mut failure = None;
        let mut in_flight = std::collections::VecDeque::new();
        while from < head {
            let page = match log.read_all_on_thread(rt, from, page_size, &filter) {
                Ok(page) => page,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            let next = page.next_position.min(head);
            let events: Vec<RecordedEvent> = page.events.into_iter().filter(|e| e.position < head).collect();
            let shared = Arc::new((events, next));
            // An applier that stopped (it failed) reports why when joined.
            if senders.iter().map(|tx| tx.send(shared.clone())).any(|r| r.is_err()) {
                break;
            }
            // Pages are freed here, by the thread that allocated them, once
            // every applier is done with them (freeing in another thread is
            // several times slower with the system allocator).
            in_flight.push_back(shared);
            while in_flight.front().is_some_and(|p| Arc::strong_count(p) == 1) {
                in_flight.pop_front();
            }
            progress(done.iter().map(|d| d.load(Ordering::Relaxed)).min().unwrap_or(next), head);
            if next <= from {
                break;
            }
            from = next;
        }
        drop(senders);
        let mut out = Vec::new();
        for a in appliers {
            match a.join() {
                Ok(Ok(skipped)) => out.push(skipped),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some(ViewError::Store("a rebuild thread panicked".into()))),
            }
        }
        progress(head, head);
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

/// The smallest filter that passes everything each of `filters` passes.
fn union_filter(filters: impl Iterator<Item = EventFilter>) -> EventFilter {
    let mut any_stream = false;
    let mut any_type = false;
    let mut out = EventFilter::default();
    for f in filters {
        any_stream |= f.stream_prefixes.is_empty();
        any_type |= f.event_types.is_empty();
        out.stream_prefixes.extend(f.stream_prefixes);
        out.event_types.extend(f.event_types);
    }
    if any_stream {
        out.stream_prefixes.clear();
    }
    if any_type {
        out.event_types.clear();
    }
    out.stream_prefixes.sort();
    out.stream_prefixes.dedup();
    out.event_types.sort();
    out.event_types.dedup();
    out
}

/// One projection's side of [`rebuild_all`]: applies the pages it is
/// handed, skipping (and recording) poison events as it meets them.
fn rebuild_applier(
    projection: &dyn Projection,
    store: &ViewStore,
    pages: std::sync::mpsc::Receiver<Arc<(Vec<RecordedEvent>, u64)>>,
    head: u64,
    until_micros: Option<i64>,
    done: &std::sync::atomic::AtomicU64,
) -> Result<Vec<SkippedEvent>, ViewError> {
    let filter = projection.filter();
    let mut skips = store.skipped_positions()?;
    let mut skipped = Vec::new();
    let mut last_durable = Instant::now();
    for page in pages {
        let (events, next) = (&page.0, page.1);
        loop {
            let meta = store.generations()?.0.unwrap_or_default();
            if meta.next_position >= next {
                break;
            }
            let mine: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| e.position >= meta.next_position && filter.matches(&e.stream, e.event_type()))
                .collect();
            let durable = next >= head || last_durable.elapsed() >= DURABLE_EVERY;
            let gn = Generation(meta.generation);
            match apply_page(projection, store, gn, meta, &mine, next, &skips, until_micros, durable)? {
                Step::Poisoned { skip } => {
                    let meta = store.generations()?.0.unwrap_or_default();
                    skips.insert(skip.position);
                    store.skip(Generation(meta.generation), meta, skip.clone())?;
                    skipped.push(skip);
                }
                Step::Idle | Step::Applied => {
                    if durable {
                        last_durable = Instant::now();
                    }
                    break;
                }
            }
        }
        done.store(next, Ordering::Relaxed);
    }
    // However the pages ended, what was applied is on disk.
    let txn = store.begin_write()?;
    txn.commit()?;
    Ok(skipped)
}
