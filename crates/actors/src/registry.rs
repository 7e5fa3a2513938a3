//! The registry: finds or starts the actor of an entity on the arbiter its
//! id hashes to, stops actors idle longer than the configured time, and
//! caps the number of live actors per kind (least recently used stop
//! first). A stopped actor is started again from the log on next use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use domain::pype::Pype;
use domain::session::{Session, SessionCommand};
use domain::staff::StaffDirectory;
use domain::subject::Subject;
use domain::tenant::Tenant;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::Shared;
use crate::entity::{self, EntityActor, Executed, Job, Passivate};
use crate::error::ActorError;
use crate::timers::{Fired, TimerRequest, deadlines_from_log, run_timers};
use events::Codec;
use events::stream::username_stream;

/// Limits of the registry.
#[derive(Clone, Copy, Debug)]
pub struct RegistryConfig {
    /// An actor not used for this long is stopped.
    pub idle: Duration,
    /// Live actors per kind, at most.
    pub max_actors: usize,
    /// Arbiters (threads) actors are spread over; default: one per core.
    /// Zero runs every actor on the caller's arbiter (tests on paused time).
    pub arbiters: usize,
    /// A snapshot of a Session or subject every this many events (0: none).
    pub snapshot_every: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(300),
            max_actors: 100_000,
            arbiters: std::thread::available_parallelism().map_or(2, |n| n.get()),
            snapshot_every: 256,
        }
    }
}

struct Slot<A: Codec + Unpin> {
    addr: Addr<EntityActor<A>>,
    used: Instant,
    /// Closes when the actor is gone (its successor waits for that).
    gone: oneshot::Receiver<()>,
}

type Key = (Uuid, Uuid);

struct Slots<A: Codec + Unpin> {
    live: HashMap<Key, Slot<A>>,
    /// Actors told to stop that may still be finishing their appends: a
    /// new actor of the same entity reads nothing before they are gone.
    retiring: HashMap<Key, oneshot::Receiver<()>>,
}

impl<A: Codec + Unpin> Slots<A> {
    fn retire(&mut self, key: Key, slot: Slot<A>) {
        slot.addr.do_send(Passivate);
        self.retiring.insert(key, slot.gone);
    }
}

/// The live actors of one kind.
pub struct Pool<A: Codec + Unpin> {
    slots: Mutex<Slots<A>>,
}

impl<A: Codec + Unpin> Pool<A> {
    fn new() -> Self {
        Self { slots: Mutex::new(Slots { live: HashMap::new(), retiring: HashMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<A>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Stops actors idle since before `cutoff`.
    fn sweep(&self, cutoff: Instant) -> usize {
        let mut slots = self.lock();
        let before = slots.live.len();
        let idle: Vec<Key> =
            slots.live.iter().filter(|(_, s)| s.used < cutoff || !s.addr.connected()).map(|(k, _)| *k).collect();
        for key in idle {
            if let Some(slot) = slots.live.remove(&key) {
                slots.retire(key, slot);
            }
        }
        // Forget the retired ones that are gone.
        slots.retiring.retain(|_, gone| matches!(gone.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        before - slots.live.len()
    }
}

pub struct Registry {
    shared: Arc<Shared>,
    config: RegistryConfig,
    arbiters: Vec<ArbiterHandle>,
    tenants: Pool<Tenant>,
    pypes: Pool<Pype>,
    sessions: Pool<Session>,
    subjects: Pool<Subject>,
    staff: Pool<StaffDirectory>,
    timers: mpsc::UnboundedSender<TimerRequest>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Which pool an entity kind lives in.
pub trait Registered: Codec + Unpin {
    fn pool(registry: &Registry) -> &Pool<Self>
    where
        Self: Sized;
}

impl Registered for Tenant {
    fn pool(r: &Registry) -> &Pool<Self> {
        &r.tenants
    }
}
impl Registered for Pype {
    fn pool(r: &Registry) -> &Pool<Self> {
        &r.pypes
    }
}
impl Registered for Session {
    fn pool(r: &Registry) -> &Pool<Self> {
        &r.sessions
    }
}
impl Registered for Subject {
    fn pool(r: &Registry) -> &Pool<Self> {
        &r.subjects
    }
}
impl Registered for StaffDirectory {
    fn pool(r: &Registry) -> &Pool<Self> {
        &r.staff
    }
}

fn arbiter_index(id: Uuid, n: usize) -> usize {
    // The id's last 8 bytes are random in v4 and v7 alike.
    (u64::from_le_bytes(id.as_bytes()[8..].try_into().unwrap_or_default()) % n.max(1) as u64) as usize
}

impl Registry {
    /// Starts the registry inside an actix System: arbiters, the timer task
    /// (re-armed from the log: overdue timers fire at once) and the idle
    /// sweep. Returns once every Session deadline in the log is armed.
    pub async fn start(shared: Arc<Shared>, config: RegistryConfig) -> Result<Arc<Self>, ActorError> {
        let arbiters = match config.arbiters {
            0 => vec![Arbiter::current()],
            n => (0..n).map(|_| Arbiter::new().handle()).collect(),
        };
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let (fired_tx, mut fired_rx) = mpsc::unbounded_channel::<Fired>();
        actix_rt::spawn(run_timers(timer_rx, fired_tx, shared.clock.clone()));
        let registry = Arc::new(Self {
            shared: shared.clone(),
            config,
            arbiters,
            tenants: Pool::new(),
            pypes: Pool::new(),
            sessions: Pool::new(),
            subjects: Pool::new(),
            staff: Pool::new(),
            timers: timer_tx.clone(),
        });
        let rearmed = deadlines_from_log(shared.log.as_ref()).await?;
        tracing::info!(sessions = rearmed.len(), "session timers re-armed from the log");
        for r in rearmed {
            let _ = timer_tx.send(r);
        }
        let weak = Arc::downgrade(&registry);
        actix_rt::spawn(async move {
            while let Some(f) = fired_rx.recv().await {
                let Some(registry) = weak.upgrade() else { return };
                registry.shared.metrics.timer_firings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r = registry.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = r.execute::<Session>(f.tenant, f.session, SessionCommand::Tick).await {
                        tracing::warn!(session = %f.session, error = %e, "session timer failed");
                    }
                });
            }
        });
        let weak = Arc::downgrade(&registry);
        let idle = config.idle;
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                let Some(r) = weak.upgrade() else { return };
                let cutoff = Instant::now() - idle;
                let stopped = r.tenants.sweep(cutoff)
                    + r.pypes.sweep(cutoff)
                    + r.sessions.sweep(cutoff)
                    + r.subjects.sweep(cutoff)
                    + r.staff.sweep(cutoff);
                if stopped > 0 {
                    tracing::debug!(stopped, "passivated idle actors");
                }
            }
        });
        Ok(registry)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Live actors of every kind.
    pub fn live_actors(&self) -> usize {
        self.tenants.len() + self.pypes.len() + self.sessions.len() + self.subjects.len() + self.staff.len()
    }

    fn addr<A: Registered>(&self, tenant: Uuid, id: Uuid) -> Addr<EntityActor<A>> {
        let pool = A::pool(self);
        let mut slots = pool.lock();
        let now = Instant::now();
        let key = (tenant, id);
        if let Some(slot) = slots.live.get_mut(&key) {
            if slot.addr.connected() {
                slot.used = now;
                return slot.addr.clone();
            }
            if let Some(dead) = slots.live.remove(&key) {
                slots.retiring.insert(key, dead.gone);
            }
        }
        if slots.live.len() >= self.config.max_actors {
            // Stop the least recently used sixteenth.
            let mut ages: Vec<(Instant, Key)> = slots.live.iter().map(|(k, s)| (s.used, *k)).collect();
            let n = (self.config.max_actors / 16).max(1).min(ages.len());
            ages.select_nth_unstable(n - 1);
            for (_, key) in &ages[..n] {
                if let Some(s) = slots.live.remove(key) {
                    slots.retire(*key, s);
                }
            }
        }
        let arbiter = &self.arbiters[arbiter_index(id, self.arbiters.len())];
        let (shared, timers) = (self.shared.clone(), (A::KIND == events::Kind::Session).then(|| self.timers.clone()));
        let predecessor = slots.retiring.remove(&key);
        let (gone_tx, gone) = oneshot::channel();
        let every = self.config.snapshot_every;
        let addr = EntityActor::<A>::start_in_arbiter(arbiter, move |_| {
            EntityActor::new(shared, tenant, id, timers, predecessor, gone_tx, every)
        });
        slots.live.insert(key, Slot { addr: addr.clone(), used: now, gone });
        addr
    }

    /// Runs a command on the entity's actor.
    pub async fn execute<A: Registered>(
        &self,
        tenant: Uuid,
        id: Uuid,
        command: A::Command,
    ) -> Result<Executed<A>, ActorError>
    where
        A::Command: Send,
    {
        let (job, answer) = Job::new(Some(command));
        self.addr::<A>(tenant, id).do_send(job);
        entity::settle(answer).await
    }

    /// The entity's state (loaded from the log if its actor was not live).
    pub async fn read<A: Registered>(&self, tenant: Uuid, id: Uuid) -> Result<Executed<A>, ActorError> {
        let (job, answer) = Job::new(None);
        self.addr::<A>(tenant, id).do_send(job);
        entity::settle(answer).await
    }

    /// Who holds `username` in `tenant`: the subject its reservation names
    /// and the reservation stream's name and version (`None` when the name
    /// is free).
    pub async fn username_owner(
        &self,
        tenant: Uuid,
        username: &str,
    ) -> Result<Option<(Uuid, String, u64)>, ActorError> {
        use eventlog::{Direction, LogError, ReadFrom};
        let secret = self.shared.keyring.tenant_index_secret(tenant).await?;
        let stream = username_stream(secret.expose(), tenant, username);
        let first = match self.shared.log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 1).await {
            Ok(events) => events.into_iter().next(),
            Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(first) = first else { return Ok(None) };
        let subject = events::codec::decode_username_reserved(&first)?;
        Ok(Some((subject, stream.clone(), first.version)))
    }

    /// Stops the entity's actor if live (its state is stale after a write
    /// made outside it); the next use loads it again.
    pub fn forget<A: Registered>(&self, tenant: Uuid, id: Uuid) {
        let mut slots = A::pool(self).lock();
        if let Some(slot) = slots.live.remove(&(tenant, id)) {
            slots.retire((tenant, id), slot);
        }
    }

    /// Stops every actor and arbiter.
    pub fn shutdown(&self) {
        if self.config.arbiters == 0 {
            return;
        }
        for a in &self.arbiters {
            a.stop();
        }
    }
}
