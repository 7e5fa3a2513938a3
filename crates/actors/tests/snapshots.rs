//! Snapshots: written in the background every N events, used on
//! activation, never required. A damaged, older-format or mismatched
//! snapshot means a full replay (same state); an erased Session's snapshot
//! no longer opens (its key is shredded) and the Session still loads from
//! the log's Clear fields.

use std::sync::Arc;
use std::time::Duration;

use actors::{Codec, Metrics, Registry, RegistryConfig, Shared, TokioClock};
use domain::session::{Session, SessionCommand};
use domain::{Aggregate, Timers};
use eventlog::mem::MemLog;
use eventlog::{Direction, EventFilter, EventLog, ExpectedVersion, ReadFrom, RecordedEvent};
use keystore::crypto::SecretKey;
use keystore::{EmbeddedRootProvider, KeyPolicy, Keyring, LocalKeyStore, ShredTarget};
use uuid::Uuid;

const T0: i64 = 1_795_000_000_000_000;

struct World {
    log: Arc<MemLog>,
    keyring: Keyring,
    clock: TokioClock,
    tenant: Uuid,
    session: Uuid,
    user: Uuid,
}

fn world() -> World {
    tokio::time::pause();
    let clock = TokioClock::new(T0);
    let provider = EmbeddedRootProvider::in_memory(SecretKey::random().unwrap(), 0).unwrap();
    let store = LocalKeyStore::in_memory(Arc::new(provider), Arc::new(clock));
    World {
        log: Arc::new(MemLog::with_clock(Arc::new(clock))),
        keyring: Keyring::new(Arc::new(store), KeyPolicy::default()).unwrap(),
        clock,
        tenant: Uuid::now_v7(),
        session: Uuid::now_v7(),
        user: Uuid::now_v7(),
    }
}

async fn node(w: &World, snapshot_every: u64) -> Arc<Registry> {
    let shared = Arc::new(Shared {
        log: w.log.clone(),
        keyring: w.keyring.clone(),
        clock: Arc::new(w.clock),
        metrics: Arc::new(Metrics::default()),
    });
    let config = RegistryConfig { idle: Duration::from_secs(3600), max_actors: 1000, arbiters: 0, snapshot_every };
    Registry::start(shared, config).await.unwrap()
}

fn stream(w: &World) -> String {
    actors::stream_name(Session::KIND, w.tenant, w.session)
}

fn snapshot_stream(w: &World) -> String {
    events::stream::snapshot_stream(&stream(w))
}

/// A Session with `n` messages (posted in waves, so in batches).
async fn conversation(w: &World, r: &Registry, n: usize) {
    let start = SessionCommand::Start {
        session: w.session,
        tenant: w.tenant,
        pype: Uuid::now_v7(),
        end_user: w.user,
        pype_timers: Timers::DEFAULT,
        timers: None,
        tracking: Default::default(),
    };
    r.execute::<Session>(w.tenant, w.session, start).await.unwrap();
    for wave in 0..n.div_ceil(50) {
        let posts = (0..50.min(n - wave * 50)).map(|i| {
            let body = format!("secret canary {wave}-{i}");
            r.execute::<Session>(
                w.tenant,
                w.session,
                SessionCommand::PostMessage { sender: w.user, body, device: None, attachments: vec![] },
            )
        });
        for done in futures_util::future::join_all(posts).await {
            done.unwrap();
        }
    }
    // Let the background snapshot land.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn snapshots(w: &World) -> Vec<RecordedEvent> {
    w.log.read_stream(&snapshot_stream(w), ReadFrom::Start, Direction::Forward, 1000).await.unwrap_or_default()
}

async fn replayed(w: &World) -> Session {
    let mut state = Session::default();
    for r in w.log.read_stream(&stream(w), ReadFrom::Start, Direction::Forward, 100_000).await.unwrap() {
        state.evolve(&Session::decode(&r, &w.keyring).await.unwrap());
    }
    state
}

async fn fresh_read(w: &World) -> Session {
    node(w, 0).await.read::<Session>(w.tenant, w.session).await.unwrap().into_state()
}

/// Appends a snapshot of `state` claiming to be taken at `version`/`last`.
async fn put_snapshot(w: &World, state: &Session, version: u64, last: Uuid) {
    let name = snapshot_stream(w);
    let e = events::codec::encode_snapshot(state, version, last, w.tenant, &name, &w.keyring).await.unwrap().unwrap();
    w.log.append(&name, ExpectedVersion::Any, vec![e]).await.unwrap();
}

#[actix_rt::test]
async fn a_snapshot_is_written_every_n_events_and_used_on_activation() {
    let w = world();
    let r = node(&w, 100).await;
    conversation(&w, &r, 350).await;
    let taken = snapshots(&w).await;
    assert!(!taken.is_empty(), "no snapshot written");
    // Only the newest is kept for readers.
    assert_eq!(taken.len(), 1, "max-count 1 keeps the newest");
    let snap = events::codec::decode_snapshot::<Session>(&taken[0], &w.keyring).await.unwrap();
    assert!(snap.version >= 299, "the newest snapshot is recent: {}", snap.version);
    // Sealed: no message body in its bytes.
    let bytes: Vec<u8> = taken[0].event.sealed_fields.iter().flat_map(|f| f.ciphertext.to_vec()).collect();
    assert!(!bytes.windows(13).any(|x| x == b"secret canary"));
    assert_eq!(fresh_read(&w).await, replayed(&w).await);

    // Used, not just written: a snapshot that says something else (sealed
    // with the right key, at the right event) is what activation starts from.
    // (The timers: no event after the start changes them.)
    let mut doctored = snap.state.clone();
    doctored.timers.close_after_secs = 12_345;
    put_snapshot(&w, &doctored, snap.version, snap.last_event).await;
    let read = fresh_read(&w).await;
    assert_eq!(read.timers.close_after_secs, 12_345);
    assert_eq!(read.last_seq, 350, "the events after the snapshot are folded in");
}

#[actix_rt::test]
async fn a_damaged_old_or_mismatched_snapshot_means_a_full_replay() {
    let w = world();
    let r = node(&w, 100).await;
    conversation(&w, &r, 120).await;
    let truth = replayed(&w).await;
    let real = snapshots(&w).await.pop().expect("a snapshot");
    let snap = events::codec::decode_snapshot::<Session>(&real, &w.keyring).await.unwrap();
    let mut wrong = snap.state.clone();
    wrong.last_seq = 7;

    // Damaged: one byte of the sealed state flipped.
    let mut damaged = real.event.clone();
    damaged.id = Uuid::now_v7();
    let mut ct = damaged.sealed_fields[0].ciphertext.to_vec();
    let mid = ct.len() / 2;
    ct[mid] ^= 0x40;
    damaged.sealed_fields[0].ciphertext = ct.into();
    w.log.append(&snapshot_stream(&w), ExpectedVersion::Any, vec![damaged]).await.unwrap();
    assert_eq!(fresh_read(&w).await, truth, "damaged snapshot");

    // Taken at an event the stream does not hold.
    put_snapshot(&w, &wrong, snap.version, Uuid::now_v7()).await;
    assert_eq!(fresh_read(&w).await, truth, "mismatched snapshot");

    // An older format.
    let mut old = real.event.clone();
    old.id = Uuid::now_v7();
    let mut p = <proto::events::SnapshotTaken as prost::Message>::decode(old.payload.as_ref()).unwrap();
    p.format = 0;
    old.payload = prost::Message::encode_to_vec(&p).into();
    w.log.append(&snapshot_stream(&w), ExpectedVersion::Any, vec![old]).await.unwrap();
    assert_eq!(fresh_read(&w).await, truth, "older-format snapshot");
}

#[actix_rt::test]
async fn erasure_reaches_snapshots() {
    let w = world();
    let r = node(&w, 50).await;
    conversation(&w, &r, 120).await;
    let real = snapshots(&w).await.pop().expect("a snapshot");
    assert!(events::codec::decode_snapshot::<Session>(&real, &w.keyring).await.is_ok());
    // The Session's content key is shredded (as erasure and retention do).
    w.keyring.shred(w.tenant, ShredTarget::Session { session: w.session }).await.unwrap();
    let refused = events::codec::decode_snapshot::<Session>(&real, &w.keyring).await.unwrap_err();
    assert!(refused.contains("shredded"), "{refused}");
    // The Session still loads, from the Clear fields of its events.
    let state = fresh_read(&w).await;
    assert_eq!(state.last_seq, 120);
    assert_eq!(state, replayed(&w).await);
    // Nothing in the whole log holds a body in clear.
    let page = w.log.read_all(0, 100_000, &EventFilter::all()).await.unwrap();
    for e in &page.events {
        let bytes: Vec<u8> = e
            .event
            .payload
            .iter()
            .copied()
            .chain(e.event.sealed_fields.iter().flat_map(|f| f.ciphertext.to_vec()))
            .collect();
        assert!(!bytes.windows(13).any(|x| x == b"secret canary"), "{}", e.event.event_type);
    }
}
