//! The pipelined, batching entity actor tested like the log: a model-based
//! property test. Random commands go to one Session (posts by its end user,
//! by an agent that joins and leaves, by a stranger; reads), submitted in
//! waves so that many wait in the mailbox together, over an in-memory log
//! that acknowledges late (so several batches are in flight), fails appends
//! with an I/O error, and (on a log other nodes may write) lets another
//! node post first so the append conflicts.
//!
//! Checked: the stream's events, less the other node's, are exactly the
//! events of the acknowledged commands, once each, in the order the
//! commands were sent; no event of a failed command is in it; messages are
//! numbered without gaps (every decision was made on the state the events
//! before it produce); every read returned the state of a prefix of the
//! stream; and the actor's final state is the replay of the stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actors::{ActorError, Codec, Metrics, Registry, RegistryConfig, Shared, TokioClock};
use domain::session::{ParticipantKind, Session, SessionCommand, SessionEvent};
use domain::{Aggregate, Timers};
use eventlog::mem::MemLog;
use eventlog::{
    AllPage, AppendResult, BoxFuture, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError,
    ReadFrom, RecordedEvent, ScavengeReport, StreamAppend, StreamMetadata,
};
use keystore::crypto::SecretKey;
use keystore::{EmbeddedRootProvider, KeyPolicy, Keyring, LocalKeyStore};
use proptest::prelude::*;
use uuid::Uuid;

const T0: i64 = 1_795_000_000_000_000;

/// What happens to the next append.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    Io,
    Conflict,
}

struct Script {
    rng: u64,
    /// Per mille of appends that fail with an I/O error / lose a race.
    io: u64,
    conflict: u64,
    armed: bool,
}

impl Script {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fault(&mut self) -> (Fault, u64) {
        if !self.armed {
            return (Fault::None, 0);
        }
        let roll = self.next() % 1000;
        let delay = self.next() % 4;
        let fault = if roll < self.io {
            Fault::Io
        } else if roll < self.io + self.conflict {
            Fault::Conflict
        } else {
            Fault::None
        };
        (fault, delay)
    }
}

/// The in-memory log with faults: appends reach the log at their first
/// poll (in submission order, like the file log) and are acknowledged a
/// few scheduler turns later.
struct FaultyLog {
    inner: Arc<MemLog>,
    exclusive: bool,
    script: Mutex<Script>,
    /// Another node writing the same log (for conflicts).
    other: OnceLock<(Arc<Registry>, Uuid, Uuid, Uuid)>,
    injected: Mutex<VecDeque<&'static str>>,
}

impl EventLog for FaultyLog {
    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, eventlog::Result<Vec<AppendResult>>> {
        let (fault, delay) = self.script.lock().unwrap().fault();
        Box::pin(async move {
            let result = match fault {
                Fault::Io => {
                    self.injected.lock().unwrap().push_back("io");
                    Err(LogError::Io {
                        context: "writing (injected)".into(),
                        source: std::io::Error::other("injected"),
                    })
                }
                Fault::Conflict => {
                    self.injected.lock().unwrap().push_back("conflict");
                    if let Some((other, tenant, session, user)) = self.other.get() {
                        let _ = other.execute::<Session>(*tenant, *session, post(*user, "foreign")).await;
                    }
                    self.inner.append_multi(appends).await
                }
                Fault::None => self.inner.append_multi(appends).await,
            };
            for _ in 0..delay {
                tokio::task::yield_now().await;
            }
            result
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from: ReadFrom,
        direction: Direction,
        max_count: usize,
    ) -> BoxFuture<'a, eventlog::Result<Vec<RecordedEvent>>> {
        self.inner.read_stream(stream, from, direction, max_count)
    }

    fn read_all<'a>(
        &'a self,
        from: u64,
        max_count: usize,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, eventlog::Result<AllPage>> {
        self.inner.read_all(from, max_count, filter)
    }

    fn head(&self) -> u64 {
        self.inner.head()
    }

    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }

    fn exclusive(&self) -> bool {
        self.exclusive
    }

    fn set_stream_metadata<'a>(&'a self, stream: &'a str, m: StreamMetadata) -> BoxFuture<'a, eventlog::Result<()>> {
        self.inner.set_stream_metadata(stream, m)
    }

    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, eventlog::Result<StreamMetadata>> {
        self.inner.stream_metadata(stream)
    }

    fn delete_stream<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> BoxFuture<'a, eventlog::Result<()>> {
        self.inner.delete_stream(stream, expected, mode)
    }

    fn scavenge(&self) -> BoxFuture<'_, eventlog::Result<ScavengeReport>> {
        self.inner.scavenge()
    }
}

/// A key ring and an in-memory log on `clock`.
fn keys_and_log(clock: TokioClock) -> (Keyring, Arc<MemLog>) {
    let provider = EmbeddedRootProvider::in_memory(SecretKey::random().unwrap(), 0).unwrap();
    let store = LocalKeyStore::in_memory(Arc::new(provider), Arc::new(clock));
    (Keyring::new(Arc::new(store), KeyPolicy::default()).unwrap(), Arc::new(MemLog::with_clock(Arc::new(clock))))
}

fn start(tenant: Uuid, session: Uuid, user: Uuid) -> SessionCommand {
    SessionCommand::Start {
        session,
        tenant,
        pype: Uuid::now_v7(),
        end_user: user,
        pype_timers: Timers::DEFAULT,
        timers: None,
        tracking: Default::default(),
    }
}

fn post(who: Uuid, body: &str) -> SessionCommand {
    SessionCommand::PostMessage { sender: who, body: body.into(), device: None, attachments: vec![] }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    PostByUser,
    PostByAgent,
    PostByStranger,
    Join,
    Leave,
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::PostByUser),
        2 => Just(Op::PostByAgent),
        1 => Just(Op::PostByStranger),
        1 => Just(Op::Join),
        1 => Just(Op::Leave),
        1 => Just(Op::Read),
    ]
}

enum Answer {
    Command(Result<Vec<SessionEvent>, String>),
    Read(Result<(Option<u64>, Session), String>),
}

async fn run(exclusive: bool, seed: u64, waves: Vec<Vec<(Op, u8)>>) -> Result<(), TestCaseError> {
    tokio::time::pause();
    let clock = TokioClock::new(T0);
    let (keyring, inner) = keys_and_log(clock);
    let (io, conflict) = if exclusive { (200, 0) } else { (150, 150) };
    let log = Arc::new(FaultyLog {
        inner: inner.clone(),
        exclusive,
        script: Mutex::new(Script { rng: seed, io, conflict, armed: false }),
        other: OnceLock::new(),
        injected: Mutex::new(VecDeque::new()),
    });
    // Snapshots every few events, written while batches are in flight.
    let config = RegistryConfig { idle: Duration::from_secs(3600), max_actors: 1000, arbiters: 0, snapshot_every: 7 };
    let shared = |log: Arc<dyn EventLog>| {
        Arc::new(Shared {
            log,
            keyring: keyring.clone(),
            clock: Arc::new(clock),
            metrics: Arc::new(Metrics::default()),
        })
    };
    let node = Registry::start(shared(log.clone()), config).await.unwrap();
    let (tenant, session, user, agent, stranger) =
        (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let started = node.execute::<Session>(tenant, session, start(tenant, session, user)).await.unwrap();
    if !exclusive {
        let other = Registry::start(shared(inner.clone()), config).await.unwrap();
        let _ = log.other.set((other, tenant, session, user));
    }
    log.script.lock().unwrap().armed = true;

    let mut sent: Vec<Vec<SessionEvent>> = vec![started.events.clone()];
    let mut answers = Vec::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut body = 0;
    for wave in &waves {
        // Every future's first poll sends its command, in order: the
        // mailbox holds the wave in the order of `wave`.
        let futures = wave.iter().map(|&(op, pause)| {
            body += 1;
            let text = format!("m{body}");
            let node = node.clone();
            let order = order.clone();
            let me = body;
            async move {
                // Some commands arrive while batches are in flight.
                for _ in 0..pause {
                    tokio::task::yield_now().await;
                }
                let command = match op {
                    Op::PostByUser => post(user, &text),
                    Op::PostByAgent => post(agent, &text),
                    Op::PostByStranger => post(stranger, &text),
                    Op::Join => SessionCommand::Join { participant: agent, kind: ParticipantKind::Agent },
                    Op::Leave => SessionCommand::Leave { participant: agent },
                    Op::Read => {
                        // Sent at the first poll of `read`, right after this.
                        order.lock().unwrap().push(me);
                        let r = node.read::<Session>(tenant, session).await;
                        return (me, Answer::Read(r.map(|e| (e.version, e.into_state())).map_err(|e| e.to_string())));
                    }
                };
                order.lock().unwrap().push(me);
                let r = node.execute::<Session>(tenant, session, command).await;
                (me, Answer::Command(r.map(|e| e.events).map_err(|e| describe(&e))))
            }
        });
        answers.extend(futures_util::future::join_all(futures).await);
    }
    // In the order the commands reached the mailbox.
    let order = order.lock().unwrap().clone();
    let mut answers: std::collections::HashMap<usize, Answer> = answers.into_iter().collect();
    let answers: Vec<Answer> = order.iter().filter_map(|i| answers.remove(i)).collect();
    log.script.lock().unwrap().armed = false;
    let injected = log.injected.lock().unwrap().len();
    if std::env::var_os("PIPELINE_TRACE").is_some() {
        eprintln!(
            "exclusive={exclusive} commands={} injected={injected} appends={}",
            body,
            node.shared().metrics.appends.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    // The stream as stored.
    let stored = inner
        .read_stream(&actors::stream_name(Session::KIND, tenant, session), ReadFrom::Start, Direction::Forward, 100_000)
        .await
        .unwrap();
    let mut stream = Vec::new();
    for r in &stored {
        stream.push(Session::decode(r, &keyring).await.unwrap());
    }
    let foreign = |e: &SessionEvent| matches!(e, SessionEvent::MessagePosted { body, .. } if body == "foreign");
    let ours: Vec<SessionEvent> = stream.iter().filter(|e| !foreign(e)).cloned().collect();
    let mut reads = Vec::new();
    for a in answers {
        match a {
            Answer::Command(Ok(events)) => sent.push(events),
            Answer::Command(Err(e)) => {
                prop_assert!(
                    e.starts_with("rejected") || e.starts_with("contended") || e.contains("injected"),
                    "unexpected failure: {e}"
                );
            }
            Answer::Read(Ok(r)) => reads.push(r),
            Answer::Read(Err(e)) => prop_assert!(e.contains("injected"), "read failed: {e}"),
        }
    }
    let acknowledged: Vec<SessionEvent> = sent.into_iter().flatten().collect();
    prop_assert_eq!(&ours, &acknowledged, "the stream's own events are the acknowledged ones, once, in order");
    // Decisions were made on the state the events before them produce.
    let seqs: Vec<u64> = stream
        .iter()
        .filter_map(|e| if let SessionEvent::MessagePosted { seq, .. } = e { Some(*seq) } else { None })
        .collect();
    prop_assert_eq!(
        seqs,
        (1..)
            .take(stream.iter().filter(|e| matches!(e, SessionEvent::MessagePosted { .. })).count())
            .collect::<Vec<u64>>()
    );
    for (version, state) in reads {
        let n = version.map_or(0, |v| v as usize + 1);
        prop_assert_eq!(&state, &Session::replay(&stream[..n]), "a read returned the state of a prefix");
    }
    let last = node.read::<Session>(tenant, session).await.unwrap();
    prop_assert_eq!(&*last.state, &Session::replay(&stream));
    prop_assert_eq!(last.version, Some(stream.len() as u64 - 1));
    // A fresh node (from the newest snapshot, if one was written) agrees.
    let fresh = Registry::start(shared(inner.clone()), config).await.unwrap();
    let again = fresh.read::<Session>(tenant, session).await.unwrap();
    prop_assert_eq!(&*again.state, &Session::replay(&stream));
    Ok(())
}

fn describe(e: &ActorError) -> String {
    match e {
        ActorError::Rejected(r) => format!("rejected: {r}"),
        ActorError::Contended { .. } => format!("contended: {e}"),
        other => other.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn pipelined_batches_acknowledge_exactly_what_was_written(
        exclusive in any::<bool>(),
        seed in any::<u64>(),
        waves in prop::collection::vec(prop::collection::vec((op(), 0u8..6), 1..24), 1..8),
    ) {
        actix_rt::System::new().block_on(run(exclusive, seed, waves))?;
    }
}

/// The batching is real: many posts waiting together go out in far fewer
/// appends than posts, and every one is acknowledged.
#[actix_rt::test]
async fn commands_waiting_together_share_appends() {
    tokio::time::pause();
    let clock = TokioClock::new(T0);
    let (keyring, inner) = keys_and_log(clock);
    let log = Arc::new(FaultyLog {
        inner: inner.clone(),
        exclusive: true,
        script: Mutex::new(Script { rng: 1, io: 0, conflict: 0, armed: true }),
        other: OnceLock::new(),
        injected: Mutex::new(VecDeque::new()),
    });
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared { log, keyring, clock: Arc::new(clock), metrics: metrics.clone() });
    let config = RegistryConfig { idle: Duration::from_secs(3600), max_actors: 1000, arbiters: 0, snapshot_every: 0 };
    let node = Registry::start(shared, config).await.unwrap();
    let (tenant, session, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    node.execute::<Session>(tenant, session, start(tenant, session, user)).await.unwrap();
    let before = metrics.appends.load(std::sync::atomic::Ordering::Relaxed);
    let posts = (0..200).map(|i| node.execute::<Session>(tenant, session, post(user, &format!("p{i}"))));
    let done = futures_util::future::join_all(posts).await;
    assert!(done.iter().all(Result::is_ok));
    let appends = metrics.appends.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(appends <= 20, "200 posts took {appends} appends");
    let last = node.read::<Session>(tenant, session).await.unwrap();
    assert_eq!(last.state.last_seq, 200);
}
