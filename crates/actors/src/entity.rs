//! The actor of one entity (a tenant, Pype, Session or subject): it keeps
//! the entity's state and stream version, and runs each command as load
//! (first time) → decide → seal → append with the expected version →
//! evolve → reply. One command at a time (`AtomicResponse`), so there is
//! one writer per stream in a node; across nodes a version conflict
//! reloads the stream and decides again.

use std::sync::Arc;

use actix::prelude::*;
use domain::{Aggregate, Ctx};
use eventlog::{Direction, ExpectedVersion, LogError, ReadFrom, StreamAppend};
use uuid::Uuid;

use crate::error::ActorError;
use crate::{Shared, timers::TimerRequest};
use events::{Codec, stream_name};

/// Attempts of a command when other writers keep moving the stream (with
/// the backoff below, about 1.5 s of waiting at most before ABORTED).
const MAX_ATTEMPTS: u32 = 12;
const PAGE: usize = 512;

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    pub events: Vec<A::Event>,
    /// Version of the stream's last event (`None`: the stream does not exist).
    pub version: Option<u64>,
    pub state: A,
}

pub struct Execute<A: Aggregate>(pub A::Command);

impl<A: Aggregate + 'static> Message for Execute<A> {
    type Result = Result<Executed<A>, ActorError>;
}

/// Stops the actor once its mailbox is drained (passivation).
pub struct Passivate;

impl Message for Passivate {
    type Result = ();
}

pub struct EntityActor<A: Codec> {
    shared: Arc<Shared>,
    tenant: Uuid,
    id: Uuid,
    stream: String,
    state: A,
    version: Option<u64>,
    loaded: bool,
    timers: Option<tokio::sync::mpsc::UnboundedSender<TimerRequest>>,
}

impl<A: Codec + Unpin> EntityActor<A> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tenant: Uuid,
        id: Uuid,
        timers: Option<tokio::sync::mpsc::UnboundedSender<TimerRequest>>,
    ) -> Self {
        Self {
            stream: stream_name(A::KIND, tenant, id),
            shared,
            tenant,
            id,
            state: A::default(),
            version: None,
            loaded: false,
            timers,
        }
    }
}

/// Reads a whole stream and folds it.
pub(crate) async fn load<A: Codec>(shared: &Shared, stream: &str) -> Result<(A, Option<u64>), ActorError> {
    load_after(shared, stream, A::default(), None).await
}

/// Folds into `state` (the stream folded up to `version`) the events
/// written after `version`.
async fn load_after<A: Codec>(
    shared: &Shared,
    stream: &str,
    mut state: A,
    mut version: Option<u64>,
) -> Result<(A, Option<u64>), ActorError> {
    let mut from = version.map_or(0, |v| v + 1);
    loop {
        let page = match shared.log.read_stream(stream, ReadFrom::Version(from), Direction::Forward, PAGE).await {
            Ok(page) => page,
            Err(LogError::StreamNotFound { .. }) => return Ok((state, version)),
            Err(e) => return Err(e.into()),
        };
        for r in &page {
            state.evolve(&A::decode(r, &shared.keyring).await?);
            version = Some(r.version);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.version + 1,
            _ => return Ok((state, version)),
        }
    }
}

struct Run<A: Aggregate> {
    state: A,
    version: Option<u64>,
    loaded: bool,
    result: Result<Executed<A>, ActorError>,
}

async fn execute<A: Codec>(
    shared: Arc<Shared>,
    tenant: Uuid,
    stream: String,
    mut state: A,
    mut version: Option<u64>,
    mut loaded: bool,
    command: Option<A::Command>,
) -> Run<A> {
    let fail = |state, version, loaded, e: ActorError| Run { state, version, loaded, result: Err(e) };
    for attempt in 0..MAX_ATTEMPTS {
        // The first use folds the whole stream. After that only what was
        // written since this actor last saw the stream: on a retry after a
        // version conflict (another node wrote it), and for a read on a log
        // other processes write (not on one this process owns). A
        // command's first attempt needs no such step: its expected version
        // refuses a stale state.
        let folded = if !loaded {
            Some(load::<A>(&shared, &stream).await)
        } else if attempt > 0 || (command.is_none() && !shared.log.exclusive()) {
            let before = version;
            match load_after::<A>(&shared, &stream, std::mem::take(&mut state), version).await {
                // A conflict with nothing new after our version (the stream
                // was cut back): fold it all again.
                Ok((_, v)) if attempt > 0 && v == before => Some(load::<A>(&shared, &stream).await),
                folded => Some(folded),
            }
        } else {
            None
        };
        match folded {
            Some(Ok((s, v))) => {
                state = s;
                version = v;
                loaded = true;
            }
            Some(Err(e)) => return fail(A::default(), None, false, e),
            None => {}
        }
        let Some(command) = &command else {
            return Run {
                result: Ok(Executed { events: vec![], version, state: state.clone() }),
                state,
                version,
                loaded,
            };
        };
        let ctx = Ctx { now_micros: shared.clock.now_micros() };
        let events = match state.decide(command, &ctx) {
            Ok(events) => events,
            Err(rejection) => return fail(state, version, loaded, rejection.into()),
        };
        if events.is_empty() {
            return Run { result: Ok(Executed { events, version, state: state.clone() }), state, version, loaded };
        }
        let mut stored = Vec::with_capacity(events.len());
        for e in &events {
            match state.encode(e, tenant, &stream, &shared.keyring).await {
                Ok(n) => stored.push(n),
                Err(err) => return fail(state, version, loaded, err.into()),
            }
        }
        let claims = match state.claims(&events, tenant, &shared.keyring).await {
            Ok(c) => c,
            Err(err) => return fail(state, version, loaded, err.into()),
        };
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let appended = if claims.is_empty() {
            shared.log.append(&stream, expected, stored).await
        } else {
            let mut appends = vec![StreamAppend { stream: stream.clone(), expected, events: stored }];
            appends.extend(claims.iter().map(|c| StreamAppend {
                stream: c.stream.clone(),
                expected: ExpectedVersion::NoStream,
                events: c.events.clone(),
            }));
            shared.log.append_multi(appends).await.map(|mut r| r.remove(0))
        };
        match appended {
            Ok(appended) => {
                shared.metrics.appends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for e in &events {
                    state.evolve(e);
                }
                version = Some(appended.next_expected_version);
                return Run { result: Ok(Executed { events, version, state: state.clone() }), state, version, loaded };
            }
            // A claimed stream exists: taken (by this entity or another).
            Err(LogError::WrongExpectedVersion { stream: s, .. })
                if let Some(c) = claims.iter().find(|c| c.stream == s) =>
            {
                let what = c.what;
                return fail(state, version, loaded, domain::Rejection::AlreadyExists { what }.into());
            }
            Err(LogError::WrongExpectedVersion { .. }) => {
                shared.metrics.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(stream = %stream, attempt, "version conflict; reloading");
                // Another node writes the same stream: back off a random
                // moment (up to 2, 4, … 256 ms, doubling with each attempt;
                // an append to a database log takes milliseconds) so the
                // writers spread out instead of colliding again.
                let jitter = (Uuid::new_v4().as_u128() % (2u128 << attempt.min(7))) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                continue;
            }
            Err(e) => return fail(state, version, loaded, e.into()),
        }
    }
    fail(state, version, loaded, ActorError::Contended { stream, attempts: MAX_ATTEMPTS })
}

impl<A: Codec + Unpin> EntityActor<A> {
    fn run(&mut self, command: Option<A::Command>) -> AtomicResponse<Self, Result<Executed<A>, ActorError>> {
        // One command at a time (AtomicResponse): the state moves into the
        // command's future and back, instead of being cloned. If the future
        // never finishes (the actor stops), the state is reloaded next time.
        let loaded = std::mem::replace(&mut self.loaded, false);
        let fut = execute(
            self.shared.clone(),
            self.tenant,
            self.stream.clone(),
            std::mem::take(&mut self.state),
            self.version,
            loaded,
            command,
        );
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|run, act, _ctx| {
            act.state = run.state;
            act.version = run.version;
            act.loaded = run.loaded;
            if let (Some(timers), true) = (&act.timers, act.loaded) {
                let _ = timers.send(TimerRequest {
                    tenant: act.tenant,
                    session: act.id,
                    deadline_micros: A::deadline(&act.state),
                });
            }
            run.result
        })))
    }
}

impl<A: Codec + Unpin> Actor for EntityActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        self.shared.metrics.live_actors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.shared.metrics.live_actors.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<A: Codec + Unpin> Handler<Execute<A>> for EntityActor<A> {
    type Result = AtomicResponse<Self, Result<Executed<A>, ActorError>>;

    fn handle(&mut self, msg: Execute<A>, _ctx: &mut Self::Context) -> Self::Result {
        self.run(Some(msg.0))
    }
}

/// Reads the state, loading it if needed.
pub struct Read<A: Aggregate>(std::marker::PhantomData<A>);

impl<A: Aggregate> Default for Read<A> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<A: Aggregate + 'static> Message for Read<A> {
    type Result = Result<Executed<A>, ActorError>;
}

impl<A: Codec + Unpin> Handler<Read<A>> for EntityActor<A> {
    type Result = AtomicResponse<Self, Result<Executed<A>, ActorError>>;

    fn handle(&mut self, _: Read<A>, _ctx: &mut Self::Context) -> Self::Result {
        self.run(None)
    }
}

impl<A: Codec + Unpin> Handler<Passivate> for EntityActor<A> {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
