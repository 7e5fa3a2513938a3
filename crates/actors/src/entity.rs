//! The actor of one entity (a tenant, Pype, Session or subject): the one
//! writer of the entity's stream in this node. It keeps two states: the
//! *durable* one (every event in it is acknowledged by the log) and the
//! *speculative* one (the durable state plus the events of the appends in
//! flight).
//!
//! A pipeline of batches. Commands that wait in the mailbox together are
//! decided together, one after another against the speculative state, and
//! their events written as one append (a *batch*). While a batch's append
//! is in flight the actor goes on deciding the next commands on top of it
//! and submits their batch behind it (up to [`DEPTH_EXCLUSIVE`] batches in
//! flight on a log this process alone writes, one on a shared log: see
//! [`depth`]). Each caller gets its outcome together with the batch's
//! completion (a shared future) and returns when its own events are
//! durable: the log's acknowledgement wakes the caller directly, without a
//! hop through the actor's thread. A command decided without events (a
//! rejection, a no-op, a read) waits for the batch it was decided on top of.
//!
//! When a batch fails, nobody is told "ok" for it: its callers and those of
//! every batch decided on top of it wait for the actor instead. The actor
//! lets the pipeline drain, folds the stream from its durable state (what
//! other writers wrote since), and decides again exactly those commands, in
//! their order, by the retry rules: a version conflict (another node wrote
//! the stream) retries up to [`MAX_ATTEMPTS`] times with a random back-off;
//! a claimed stream that exists refuses its command as `AlreadyExists`;
//! any other failure of a batch fails the commands whose events were in it
//! and retries the ones decided on top of them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;

use actix::prelude::*;
use domain::{Aggregate, Ctx};
use eventlog::{BoxFuture, Direction, ExpectedVersion, LogError, ReadFrom, StreamAppend};
use futures_util::future::Shared;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::ActorError;
use crate::{Shared as SharedParts, timers::TimerRequest};
use events::{Codec, stream_name};

/// Attempts of a command when other writers keep moving the stream (with
/// the backoff below, about 1.5 s of waiting at most before ABORTED).
pub const MAX_ATTEMPTS: u32 = 12;
const PAGE: usize = 512;
/// Commands decided into one batch, at most.
pub const MAX_BATCH: usize = 256;
/// Batches in flight at once on a log only this process writes.
pub const DEPTH_EXCLUSIVE: usize = 4;

/// How many batches may be in flight. More than one only on a log this
/// process alone writes (it holds the file log's lock): there, the appends
/// of one actor reach the log in the order they were submitted, and a
/// batch after a failed one always fails too (it expects a version the
/// failed one would have made). On a log other nodes write, a foreign
/// append of exactly the failed batch's length could let the next batch
/// through on a state it was not decided against; so one at a time there
/// (commands still batch while it is in flight).
fn depth(shared: &SharedParts) -> usize {
    if shared.log.exclusive() { DEPTH_EXCLUSIVE } else { 1 }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    pub events: Vec<A::Event>,
    /// Version of the stream's last event (`None`: the stream does not exist).
    pub version: Option<u64>,
    /// The state after the command (shared with the encoder of the batch
    /// that wrote it; by the time the caller has it, usually unshared).
    pub state: Arc<A>,
}

impl<A: Aggregate> Executed<A> {
    /// The state after the command, owned (a copy only if still shared).
    pub fn into_state(self) -> A {
        Arc::unwrap_or_clone(self.state)
    }
}

type Outcome<A> = Result<Executed<A>, ActorError>;

/// Why a batch was not written. Cloned to every waiter of the batch.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The stream was not at the expected version.
    Conflict,
    /// A stream the batch claims exists already.
    Claimed(&'static str),
    /// The batch before it failed before it reached the log.
    Earlier,
    Error(Arc<ActorError>),
}

/// The completion of a batch: the stream's version after it, once durable.
type Durable = Shared<BoxFuture<'static, Result<(u64, Uuid), Failure>>>;

/// What the actor tells a caller: the final outcome, or an outcome that
/// holds once a batch is durable (and, if it is not, the next word).
pub(crate) enum Step<A: Aggregate> {
    Done(Outcome<A>),
    Wait { durable: Durable, outcome: Outcome<A>, next: oneshot::Receiver<Step<A>> },
}

/// Waits for a command's outcome: normally the batch's acknowledgement
/// completes it here, on the caller's thread.
pub(crate) async fn settle<A: Aggregate>(mut rx: oneshot::Receiver<Step<A>>) -> Outcome<A> {
    loop {
        match rx.await {
            Err(_) => return Err(ActorError::Unavailable("the entity's actor stopped".into())),
            Ok(Step::Done(outcome)) => return outcome,
            Ok(Step::Wait { durable, outcome, next }) => {
                if durable.await.is_ok() {
                    return outcome;
                }
                rx = next;
            }
        }
    }
}

/// A command (or, with `None`, a read of the state) and where its answer goes.
pub(crate) struct Job<A: Aggregate> {
    /// Boxed: an actor's fields must be `Unpin`.
    command: Option<Box<A::Command>>,
    reply: oneshot::Sender<Step<A>>,
    attempts: u32,
    /// Decide alone in its batch (its claim failed a shared batch once).
    solo: bool,
    /// Its own events are in the batch it waits for.
    wrote: bool,
    /// The caller's span (an exported trace's RPC; disabled otherwise).
    span: tracing::Span,
}

impl<A: Aggregate> Job<A> {
    pub(crate) fn new(command: Option<A::Command>) -> (Self, oneshot::Receiver<Step<A>>) {
        let (reply, rx) = oneshot::channel();
        let span = tracing::Span::current();
        (Self { command: command.map(Box::new), reply, attempts: 0, solo: false, wrote: false, span }, rx)
    }
}

impl<A: Aggregate + 'static> Message for Job<A> {
    type Result = ();
}

/// Stops the actor once its work is done (passivation).
pub struct Passivate;

impl Message for Passivate {
    type Result = ();
}

struct Batch<A: Aggregate> {
    id: u64,
    durable: Durable,
    jobs: Vec<Job<A>>,
    events: Arc<Vec<A::Event>>,
    /// The stream's version after the batch, as decided.
    predicted: u64,
    result: Option<Result<(u64, Uuid), Failure>>,
}

/// The pipeline after a failure: what to decide again once it drained.
#[derive(Default)]
struct Recovery<A: Aggregate> {
    retry: Vec<Job<A>>,
    /// Fold the whole stream again (the durable state cannot be trusted).
    full: bool,
    /// A version conflict: back off before folding (attempt number).
    conflict: Option<u32>,
}

pub struct EntityActor<A: Codec> {
    shared: Arc<SharedParts>,
    tenant: Uuid,
    id: Uuid,
    stream: Arc<str>,
    durable: A,
    durable_version: Option<u64>,
    /// The id of the event at `durable_version` (what a snapshot names).
    durable_last_event: Option<Uuid>,
    /// The version the newest snapshot holds; a new one is written every
    /// `snapshot_every` events (0: never).
    snapshot_version: Option<u64>,
    snapshot_every: u64,
    snapshotting: bool,
    /// Shared with the outcomes of the commands decided last (copied on
    /// the next change only if still shared).
    spec: Arc<A>,
    spec_version: Option<u64>,
    loaded: bool,
    /// A fold (load, reload) is running.
    busy: bool,
    recovery: Option<Recovery<A>>,
    pending: VecDeque<Job<A>>,
    inflight: VecDeque<Batch<A>>,
    /// Resolves when the last batch has reached the log (the next one is
    /// submitted only after it, so the log sees them in order).
    last_submitted: Option<oneshot::Receiver<bool>>,
    next_batch: u64,
    pump_scheduled: bool,
    passivating: bool,
    /// The actor this one replaces (passivated): nothing is read before it
    /// has stopped, so a stream never has two writers in one node.
    predecessor: Option<oneshot::Receiver<()>>,
    /// Dropped with the actor: tells a successor it may start.
    _gone: oneshot::Sender<()>,
    timers: Option<tokio::sync::mpsc::UnboundedSender<TimerRequest>>,
}

impl<A: Codec + Unpin> EntityActor<A> {
    pub(crate) fn new(
        shared: Arc<SharedParts>,
        tenant: Uuid,
        id: Uuid,
        timers: Option<tokio::sync::mpsc::UnboundedSender<TimerRequest>>,
        predecessor: Option<oneshot::Receiver<()>>,
        gone: oneshot::Sender<()>,
        snapshot_every: u64,
    ) -> Self {
        Self {
            stream: Arc::from(stream_name(A::KIND, tenant, id)),
            shared,
            tenant,
            id,
            durable: A::default(),
            durable_version: None,
            durable_last_event: None,
            snapshot_version: None,
            snapshot_every,
            snapshotting: false,
            spec: Arc::new(A::default()),
            spec_version: None,
            loaded: false,
            busy: false,
            recovery: None,
            pending: VecDeque::new(),
            inflight: VecDeque::new(),
            last_submitted: None,
            next_batch: 0,
            pump_scheduled: false,
            passivating: false,
            predecessor,
            _gone: gone,
            timers,
        }
    }
}

/// What a fold yields: the state, the stream's version and the id of the
/// event at that version (for snapshots), and the version of the snapshot
/// it started from, if any.
pub(crate) struct Folded<A> {
    pub(crate) state: A,
    pub(crate) version: Option<u64>,
    pub(crate) last_event: Option<Uuid>,
    pub(crate) snapshot: Option<u64>,
}

/// Reads a whole stream and folds it: from its snapshot when there is a
/// usable one (an entity that keeps them), else from the start.
pub(crate) async fn load<A: Codec>(shared: &SharedParts, stream: &str) -> Result<Folded<A>, ActorError> {
    if A::SNAPSHOTS
        && let Some(snapshot) = usable_snapshot::<A>(shared, stream).await
        && let Some(folded) = fold_from_snapshot(shared, stream, snapshot).await?
    {
        return Ok(folded);
    }
    load_after(shared, stream, A::default(), None).await
}

/// Folds the events after `snapshot` into it. The first page is read from
/// the snapshot's own version, so the same read checks that the stream
/// still holds the event the snapshot was taken at (`None`: it does not,
/// logged; the caller replays the whole stream).
async fn fold_from_snapshot<A: Codec>(
    shared: &SharedParts,
    stream: &str,
    snapshot: events::codec::Snapshot<A>,
) -> Result<Option<Folded<A>>, ActorError> {
    let (version, last_event) = (snapshot.version, snapshot.last_event);
    let page = match shared.log.read_stream(stream, ReadFrom::Version(version), Direction::Forward, PAGE).await {
        Ok(page) => page,
        Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if !page.first().is_some_and(|e| e.version == version && e.event.id == last_event) {
        tracing::warn!(stream, version, "snapshot does not match the stream; replaying the whole stream");
        return Ok(None);
    }
    let mut state = snapshot.state;
    let (mut at, mut id) = (version, last_event);
    for r in &page[1..] {
        state.evolve(&A::decode(r, &shared.keyring).await?);
        (at, id) = (r.version, r.event.id);
    }
    let mut folded = if page.len() == PAGE {
        load_after(shared, stream, state, Some(at)).await?
    } else {
        Folded { state, version: Some(at), last_event: None, snapshot: None }
    };
    folded.last_event = folded.last_event.or(Some(id));
    folded.snapshot = Some(version);
    Ok(Some(folded))
}

/// The entity's state from its whole stream, ignoring any snapshot (what
/// activation costs when no snapshot can be used).
pub async fn replay_whole<A: Codec>(shared: &SharedParts, tenant: Uuid, id: Uuid) -> Result<A, ActorError> {
    Ok(load_after(shared, &stream_name(A::KIND, tenant, id), A::default(), None).await?.state)
}

/// The entity's newest snapshot if it opens and has this build's format
/// (whether the stream still holds its event is checked as it is folded).
/// Anything else is logged and means a full replay (snapshots are never
/// required).
async fn usable_snapshot<A: Codec>(shared: &SharedParts, stream: &str) -> Option<events::codec::Snapshot<A>> {
    let name = events::stream::snapshot_stream(stream);
    let last = match shared.log.read_stream(&name, ReadFrom::End, Direction::Backward, 1).await {
        Ok(page) => page.into_iter().next()?,
        Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => return None,
        // The replay fails alike, and says so.
        Err(e) if e.is_unreachable() => return None,
        Err(e) => {
            tracing::warn!(stream, error = %e, "snapshot not readable; replaying the whole stream");
            return None;
        }
    };
    let snapshot = match events::codec::decode_snapshot::<A>(&last, &shared.keyring).await {
        Ok(s) => s,
        Err(reason) => {
            tracing::warn!(stream, %reason, "snapshot not used; replaying the whole stream");
            return None;
        }
    };
    Some(snapshot)
}

/// Folds into `state` (the stream folded up to `version`) the events
/// written after `version`.
async fn load_after<A: Codec>(
    shared: &SharedParts,
    stream: &str,
    mut state: A,
    mut version: Option<u64>,
) -> Result<Folded<A>, ActorError> {
    let mut from = version.map_or(0, |v| v + 1);
    let mut last_event = None;
    loop {
        let page = match shared.log.read_stream(stream, ReadFrom::Version(from), Direction::Forward, PAGE).await {
            Ok(page) => page,
            Err(LogError::StreamNotFound { .. }) => return Ok(Folded { state, version, last_event, snapshot: None }),
            Err(e) => return Err(e.into()),
        };
        for r in &page {
            state.evolve(&A::decode(r, &shared.keyring).await?);
            version = Some(r.version);
            last_event = Some(r.event.id);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.version + 1,
            _ => return Ok(Folded { state, version, last_event, snapshot: None }),
        }
    }
}

/// What to fold and why.
struct Fold<A: Aggregate> {
    full: bool,
    backoff_attempt: Option<u32>,
    /// A read on a shared log, answered with the folded state.
    read: Option<Job<A>>,
}

/// Encodes and seals a batch's events (each against the state just before
/// it), waits until the batch before it reached the log, submits the
/// append (one poll: the log takes its place in line), then waits for the
/// acknowledgement.
/// A batch's place in line: the previous batch's "reached the log", and
/// this one's.
struct InLine {
    previous: Option<oneshot::Receiver<bool>>,
    submitted: oneshot::Sender<bool>,
}

fn batch_future<A: Codec>(
    shared: Arc<SharedParts>,
    tenant: Uuid,
    stream: Arc<str>,
    expected: ExpectedVersion,
    events: Arc<Vec<A::Event>>,
    items: Vec<(Arc<A>, std::ops::Range<usize>)>,
    line: InLine,
) -> impl Future<Output = Result<(u64, Uuid), Failure>> + Send + 'static {
    let InLine { previous, submitted } = line;
    async move {
        let encoded = async {
            let mut stored = Vec::with_capacity(events.len());
            let mut claims = Vec::new();
            for (before, range) in &items {
                let mine = &events[range.clone()];
                if let [only] = mine {
                    stored.push(before.encode(only, tenant, &stream, &shared.keyring).await?);
                } else {
                    // Each event against the state just before it (an
                    // import starts the Session and posts into it).
                    let mut state = A::clone(before);
                    for e in mine {
                        stored.push(state.encode(e, tenant, &stream, &shared.keyring).await?);
                        state.evolve(e);
                    }
                }
                claims.extend(before.claims(&events[range.clone()], tenant, &shared.keyring).await?);
            }
            Ok::<_, events::CodecError>((stored, claims))
        }
        .instrument(tracing::debug_span!(target: eventlog::SPAN_TARGET, "seal", events = events.len()))
        .await;
        let in_line = match previous {
            Some(p) => p.await.unwrap_or(false),
            None => true,
        };
        let (stored, claims) = match (in_line, encoded) {
            (true, Ok(e)) => e,
            (false, _) => {
                let _ = submitted.send(false);
                return Err(Failure::Earlier);
            }
            (true, Err(e)) => {
                let _ = submitted.send(false);
                return Err(Failure::Error(Arc::new(e.into())));
            }
        };
        let last_id = stored.last().map(|e| e.id).unwrap_or_default();
        let append_span =
            tracing::debug_span!(target: eventlog::SPAN_TARGET, "eventlog.append", streams = 1 + claims.len());
        let append = if claims.is_empty() {
            shared.log.append_multi(vec![StreamAppend { stream: stream.to_string(), expected, events: stored }])
        } else {
            let mut appends = vec![StreamAppend { stream: stream.to_string(), expected, events: stored }];
            appends.extend(claims.iter().map(|c| StreamAppend {
                stream: c.stream.clone(),
                expected: ExpectedVersion::NoStream,
                events: c.events.clone(),
            }));
            shared.log.append_multi(appends)
        };
        let mut append = append.instrument(append_span);
        // The first poll hands the append to the log; only then may the
        // next batch be submitted.
        let first = std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut append).poll(cx))).await;
        let _ = submitted.send(true);
        let result = match first {
            Poll::Ready(r) => r,
            Poll::Pending => append.await,
        };
        match result {
            Ok(r) => {
                shared.metrics.appends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok((r.first().map_or(0, |r| r.next_expected_version), last_id))
            }
            Err(LogError::WrongExpectedVersion { stream: s, .. })
                if let Some(c) = claims.iter().find(|c| c.stream == s) =>
            {
                Err(Failure::Claimed(c.what))
            }
            Err(LogError::WrongExpectedVersion { .. }) => Err(Failure::Conflict),
            Err(e) => Err(Failure::Error(Arc::new(e.into()))),
        }
    }
}

/// The span of a batch: a child of its first traced command's span and
/// linked to the others (one append serves them all). Disabled, at no
/// cost, unless traces are exported.
fn batch_span<A: Aggregate, O>(decided: &[(Job<A>, O)], stream: &str, events: usize) -> tracing::Span {
    let mut traced = decided.iter().map(|(job, _)| &job.span).filter(|s| !s.is_disabled());
    let Some(first) = traced.next() else { return tracing::Span::none() };
    let span = tracing::debug_span!(
        target: eventlog::SPAN_TARGET,
        parent: first,
        "actor.batch",
        stream,
        commands = decided.len(),
        events
    );
    for other in traced {
        span.follows_from(other);
    }
    span
}

fn send<A: Aggregate>(job: Job<A>, outcome: Outcome<A>) {
    let _ = job.reply.send(Step::Done(outcome));
}

/// One error for several callers.
fn shared_error(e: &Arc<ActorError>) -> ActorError {
    ActorError::Batch(e.clone())
}

impl<A: Codec + Unpin> EntityActor<A> {
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.inflight.is_empty() && !self.busy && self.recovery.is_none()
    }

    fn schedule_pump(&mut self, ctx: &mut Context<Self>) {
        // Deciding after the mailbox's other messages were taken in lets
        // the commands that arrived together be decided together.
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.spawn(fut::ready(()).map(|(), act: &mut Self, ctx| {
                act.pump_scheduled = false;
                act.pump(ctx);
            }));
        }
    }

    /// Decides what waits, as far as the pipeline allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        if !self.loaded {
            if !self.pending.is_empty() {
                self.fold(ctx, Fold { full: true, backoff_attempt: None, read: None });
            }
            return self.maybe_stop(ctx);
        }
        if let Some(r) = &self.recovery {
            if self.inflight.is_empty() {
                let fold = Fold { full: r.full, backoff_attempt: r.conflict, read: None };
                self.fold(ctx, fold);
            }
            return;
        }
        let exclusive = self.shared.log.exclusive();
        while !self.pending.is_empty() && self.inflight.len() < depth(&self.shared) {
            // A read on a shared log folds in what other nodes wrote; it
            // waits until nothing is in flight.
            if let Some(job) = self.pending.front()
                && job.command.is_none()
                && !exclusive
            {
                if self.inflight.is_empty()
                    && let Some(read) = self.pending.pop_front()
                {
                    self.fold(ctx, Fold { full: false, backoff_attempt: None, read: Some(read) });
                }
                return;
            }
            self.decide_round(ctx, exclusive);
        }
        self.maybe_stop(ctx);
    }

    /// Decides the commands at the head of the queue into one batch.
    fn decide_round(&mut self, ctx: &mut Context<Self>, exclusive: bool) {
        let now = Ctx { now_micros: self.shared.clock.now_micros() };
        let mut decided: Vec<(Job<A>, Outcome<A>)> = Vec::new();
        let mut events: Vec<A::Event> = Vec::new();
        let mut items: Vec<(Arc<A>, std::ops::Range<usize>)> = Vec::new();
        let expected = self.spec_version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        while decided.len() < MAX_BATCH {
            let Some(front) = self.pending.front() else { break };
            if (front.command.is_none() && !exclusive) || (front.solo && !decided.is_empty()) {
                break;
            }
            let Some(mut job) = self.pending.pop_front() else { break };
            let solo = job.solo;
            let decision = match &job.command {
                None => Ok(Vec::new()),
                Some(command) => self.spec.decide(command, &now),
            };
            let outcome = match decision {
                Err(rejection) => Err(rejection.into()),
                Ok(new) if new.is_empty() => {
                    Ok(Executed { events: new, version: self.spec_version, state: self.spec.clone() })
                }
                Ok(new) => {
                    let before = self.spec.clone();
                    let spec = Arc::make_mut(&mut self.spec);
                    for e in &new {
                        spec.evolve(e);
                    }
                    let n = new.len() as u64;
                    self.spec_version = Some(self.spec_version.map_or(n - 1, |v| v + n));
                    let start = events.len();
                    events.extend(new.iter().cloned());
                    items.push((before, start..events.len()));
                    job.wrote = true;
                    Ok(Executed { events: new, version: self.spec_version, state: self.spec.clone() })
                }
            };
            decided.push((job, outcome));
            if solo {
                break;
            }
        }
        if events.is_empty() {
            // Nothing to write: answer now, or after the batch it was
            // decided on top of.
            match self.inflight.back_mut() {
                None => {
                    for (job, outcome) in decided {
                        send(job, outcome);
                    }
                }
                Some(last) => {
                    for (job, outcome) in decided {
                        last.jobs.push(Self::wait(job, last.durable.clone(), outcome));
                    }
                }
            }
            return;
        }
        let (submitted, in_line) = oneshot::channel();
        let previous = self.last_submitted.replace(in_line);
        let events = Arc::new(events);
        let span = batch_span(&decided, &self.stream, events.len());
        let batch = batch_future::<A>(
            self.shared.clone(),
            self.tenant,
            self.stream.clone(),
            expected,
            events.clone(),
            items,
            InLine { previous, submitted },
        );
        let batch: BoxFuture<'static, _> = Box::pin(batch.instrument(span));
        let durable = futures_util::FutureExt::shared(batch);
        let id = self.next_batch;
        self.next_batch += 1;
        let jobs = decided.into_iter().map(|(job, outcome)| Self::wait(job, durable.clone(), outcome)).collect();
        self.inflight.push_back(Batch {
            id,
            durable: durable.clone(),
            jobs,
            events,
            predicted: self.spec_version.unwrap_or_default(),
            result: None,
        });
        ctx.spawn(durable.into_actor(self).map(move |result, act: &mut Self, ctx| act.completed(id, result, ctx)));
    }

    /// Gives the caller its outcome and the batch to wait for; keeps the
    /// job, with a new channel, in case the batch fails.
    fn wait(job: Job<A>, durable: Durable, outcome: Outcome<A>) -> Job<A> {
        let (reply, next) = oneshot::channel();
        let _ = job.reply.send(Step::Wait { durable, outcome, next });
        Job { reply, ..job }
    }

    fn completed(&mut self, id: u64, result: Result<(u64, Uuid), Failure>, ctx: &mut Context<Self>) {
        if let Some(b) = self.inflight.iter_mut().find(|b| b.id == id) {
            b.result = Some(result);
        }
        // In order: the front batch first.
        while self.inflight.front().is_some_and(|b| b.result.is_some()) {
            let Some(batch) = self.inflight.pop_front() else { break };
            let Some(result) = batch.result else { break };
            match (result, &mut self.recovery) {
                (Ok((version, last)), None) if version == batch.predicted => {
                    for e in batch.events.iter() {
                        self.durable.evolve(e);
                    }
                    self.durable_version = Some(version);
                    self.durable_last_event = Some(last);
                    self.arm_timer();
                }
                (Ok((version, _)), recovery) => {
                    // Written, but not on the state it was decided on (a
                    // batch before it failed, or the log numbered it
                    // otherwise): its callers were right to hear "ok" (it
                    // is durable); the state is folded again from scratch.
                    tracing::warn!(stream = %self.stream, version, predicted = batch.predicted,
                        "a batch was written out of line; folding the stream again");
                    recovery.get_or_insert_with(Recovery::default).full = true;
                }
                (Err(failure), recovery) => {
                    let first = recovery.is_none();
                    let writers = batch.jobs.iter().filter(|j| j.wrote).count();
                    let recovery = recovery.get_or_insert_with(Recovery::default);
                    for mut job in batch.jobs {
                        match &failure {
                            // Decided on top of a failed batch: decide again.
                            _ if !first || !job.wrote => recovery.retry.push(job),
                            Failure::Earlier => recovery.retry.push(job),
                            Failure::Conflict => {
                                job.attempts += 1;
                                if job.attempts >= MAX_ATTEMPTS {
                                    let stream = self.stream.to_string();
                                    send(job, Err(ActorError::Contended { stream, attempts: MAX_ATTEMPTS }));
                                } else {
                                    recovery.conflict = Some(recovery.conflict.unwrap_or(0).max(job.attempts));
                                    recovery.retry.push(job);
                                }
                            }
                            Failure::Claimed(what) => {
                                if writers == 1 {
                                    send(job, Err(domain::Rejection::AlreadyExists { what }.into()));
                                } else {
                                    job.solo = true;
                                    recovery.retry.push(job);
                                }
                            }
                            Failure::Error(e) => send(job, Err(shared_error(e))),
                        }
                    }
                    if let Failure::Conflict = failure {
                        self.shared.metrics.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(stream = %self.stream, "version conflict; folding in and deciding again");
                    }
                }
            }
        }
        self.maybe_snapshot(ctx);
        self.pump(ctx);
    }

    /// Writes a snapshot of the durable state in the background once
    /// `snapshot_every` events were written since the last one.
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let (Some(version), Some(last_event)) = (self.durable_version, self.durable_last_event) else { return };
        let since = version.saturating_add(1).saturating_sub(self.snapshot_version.map_or(0, |v| v + 1));
        if !A::SNAPSHOTS || self.snapshot_every == 0 || self.snapshotting || since < self.snapshot_every {
            return;
        }
        self.snapshotting = true;
        let (shared, tenant, state) = (self.shared.clone(), self.tenant, self.durable.clone());
        let name = events::stream::snapshot_stream(&self.stream);
        let work = async move {
            let Some(event) =
                events::codec::encode_snapshot(&state, version, last_event, tenant, &name, &shared.keyring).await?
            else {
                return Ok(false);
            };
            let r = crate::write::append(shared.log.as_ref(), &name, ExpectedVersion::Any, vec![event]).await?;
            if r.next_expected_version == 0 {
                // Only the newest is kept (older ones are scavenged).
                let keep_one = eventlog::StreamMetadata { max_count: Some(1), ..Default::default() };
                shared.log.set_stream_metadata(&name, keep_one).await?;
            }
            Ok::<_, ActorError>(true)
        };
        ctx.spawn(work.into_actor(self).map(move |done, act: &mut Self, _ctx| {
            act.snapshotting = false;
            match done {
                Ok(true) => act.snapshot_version = Some(version),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(stream = %act.stream, error = %e, "snapshot not written (it is never required)")
                }
            }
        }));
    }

    /// Folds the stream (from scratch, or from the durable state), then
    /// decides again what a failure left, or answers a read.
    fn fold(&mut self, ctx: &mut Context<Self>, fold: Fold<A>) {
        self.busy = true;
        let shared = self.shared.clone();
        let stream = self.stream.clone();
        let predecessor = self.predecessor.take();
        let full = fold.full || !self.loaded;
        let (state, version) = if full { (A::default(), None) } else { (self.durable.clone(), self.durable_version) };
        let backoff = fold.backoff_attempt;
        let work = async move {
            if let Some(p) = predecessor {
                let _ = p.await;
            }
            if let Some(attempt) = backoff {
                // Another node writes the same stream: back off a random
                // moment (up to 2, 4, … 256 ms, doubling with each attempt;
                // an append to a database log takes milliseconds) so the
                // writers spread out instead of colliding again.
                let jitter = (Uuid::new_v4().as_u128() % (2u128 << attempt.min(7))) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
            }
            if full {
                return load::<A>(&shared, &stream).await;
            }
            let before = version;
            match load_after::<A>(&shared, &stream, state, version).await {
                // A conflict with nothing new after our version (the stream
                // was cut back): fold it all again.
                Ok(f) if backoff.is_some() && f.version == before => load::<A>(&shared, &stream).await,
                folded => folded,
            }
        };
        let read = fold.read;
        ctx.spawn(work.into_actor(self).map(move |folded, act: &mut Self, ctx| {
            act.busy = false;
            act.last_submitted = None;
            let retry = act.recovery.take().map(|r| r.retry).unwrap_or_default();
            match folded {
                Ok(Folded { state, version, last_event, snapshot }) => {
                    act.spec = Arc::new(state.clone());
                    act.durable = state;
                    if last_event.is_some() || act.durable_version != version {
                        act.durable_last_event = last_event;
                    }
                    act.durable_version = version;
                    act.spec_version = version;
                    if full {
                        act.snapshot_version = snapshot;
                    }
                    act.loaded = true;
                    act.arm_timer();
                    for job in retry.into_iter().rev() {
                        act.pending.push_front(job);
                    }
                    act.maybe_snapshot(ctx);
                    if let Some(read) = read {
                        let state = Arc::new(act.durable.clone());
                        send(read, Ok(Executed { events: Vec::new(), version: act.durable_version, state }));
                    }
                }
                Err(e) => {
                    // Nothing can be decided on a state that does not
                    // load: every waiting command gets the error.
                    act.loaded = false;
                    let e = Arc::new(e);
                    for job in retry.into_iter().chain(read).chain(act.pending.drain(..)) {
                        send(job, Err(shared_error(&e)));
                    }
                }
            }
            act.pump(ctx);
        }));
    }

    fn arm_timer(&self) {
        if let Some(timers) = &self.timers {
            let _ = timers.send(TimerRequest {
                tenant: self.tenant,
                session: self.id,
                deadline_micros: A::deadline(&self.durable),
            });
        }
    }

    fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        if self.passivating && self.idle() {
            ctx.stop();
        }
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

impl<A: Codec + Unpin> Handler<Job<A>> for EntityActor<A> {
    type Result = ();

    fn handle(&mut self, job: Job<A>, ctx: &mut Self::Context) {
        self.pending.push_back(job);
        self.schedule_pump(ctx);
    }
}

impl<A: Codec + Unpin> Handler<Passivate> for EntityActor<A> {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        self.passivating = true;
        self.maybe_stop(ctx);
    }
}
