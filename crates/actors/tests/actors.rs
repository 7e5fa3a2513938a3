//! The actors on paused time, over the in-memory log and key store:
//! commands end to end, Session timers (and their re-arming after a
//! restart), passivation, the live-actor cap, and a retry after another
//! writer moved the stream.

use std::sync::Arc;
use std::time::Duration;

use actors::{ActorError, Metrics, Registry, RegistryConfig, Shared, TokioClock};
use domain::Rejection;
use domain::Timers;
use domain::pype::{Pype, PypeCommand};
use domain::session::{Reason, Session, SessionCommand, SessionEvent, Status};
use domain::tenant::{Tenant, TenantCommand, TenantSettings};
use eventlog::mem::MemLog;
use eventlog::{EventFilter, EventLog};
use keystore::crypto::SecretKey;
use keystore::{EmbeddedRootProvider, KeyPolicy, Keyring, LocalKeyStore};
use uuid::Uuid;

const T0: i64 = 1_795_000_000_000_000;

struct World {
    log: Arc<MemLog>,
    keyring: Keyring,
    clock: TokioClock,
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
    }
}

async fn registry(w: &World, config: RegistryConfig) -> Arc<Registry> {
    let shared = Arc::new(Shared {
        log: w.log.clone(),
        keyring: w.keyring.clone(),
        clock: Arc::new(w.clock),
        metrics: Arc::new(Metrics::default()),
    });
    Registry::start(shared, config).await.unwrap()
}

fn config() -> RegistryConfig {
    RegistryConfig { idle: Duration::from_secs(3600), max_actors: 1000, arbiters: 0, snapshot_every: 0 }
}

struct Ids {
    tenant: Uuid,
    pype: Uuid,
    session: Uuid,
    user: Uuid,
}

async fn conversation(r: &Registry, timers: Timers) -> Ids {
    let ids = Ids { tenant: Uuid::now_v7(), pype: Uuid::now_v7(), session: Uuid::now_v7(), user: Uuid::now_v7() };
    r.execute::<Tenant>(
        ids.tenant,
        ids.tenant,
        TenantCommand::Create {
            tenant: ids.tenant,
            name: "Acme".into(),
            settings: TenantSettings::default(),
            first_key: (Uuid::now_v7(), [1; 32]),
        },
    )
    .await
    .unwrap();
    r.execute::<Pype>(
        ids.tenant,
        ids.pype,
        PypeCommand::Create {
            pype: ids.pype,
            tenant: ids.tenant,
            name: "Support".into(),
            description: String::new(),
            timers,
        },
    )
    .await
    .unwrap();
    r.execute::<Session>(
        ids.tenant,
        ids.session,
        SessionCommand::Start {
            session: ids.session,
            tenant: ids.tenant,
            pype: ids.pype,
            end_user: ids.user,
            pype_timers: timers,
            timers: None,
            tracking: Default::default(),
        },
    )
    .await
    .unwrap();
    ids
}

fn post(who: Uuid, body: &str) -> SessionCommand {
    SessionCommand::PostMessage { sender: who, body: body.into(), device: Some("pixel-9".into()), attachments: vec![] }
}

#[actix_rt::test]
async fn a_conversation_is_sealed_in_the_log_and_reads_back() {
    let w = world();
    let r = registry(&w, config()).await;
    let ids = conversation(&r, Timers::DEFAULT).await;
    let done = r.execute::<Session>(ids.tenant, ids.session, post(ids.user, "my card was stolen")).await.unwrap();
    assert!(matches!(done.events[0], SessionEvent::MessagePosted { seq: 1, .. }));
    assert_eq!(done.version, Some(1));
    // Nothing personal in the log: not the body, not the device.
    let page = w.log.read_all(0, 100, &EventFilter::all()).await.unwrap();
    for e in &page.events {
        let bytes: Vec<u8> = e
            .event
            .payload
            .iter()
            .copied()
            .chain(e.event.sealed_fields.iter().flat_map(|f| f.ciphertext.to_vec()))
            .collect();
        for secret in [&b"stolen"[..], b"pixel-9"] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret), "plaintext in {}", e.event.event_type);
        }
    }
    let posted = page.events.iter().find(|e| e.event.event_type == "MessagePosted").unwrap();
    assert_eq!(posted.event.sealed_fields.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(), ["body", "device"]);
    assert_eq!(&*posted.stream, format!("session-{}-{}", ids.tenant, ids.session));
    // A fresh registry (cold actors) decodes the sealed history.
    let again = registry(&w, config()).await;
    let read = again.read::<Session>(ids.tenant, ids.session).await.unwrap();
    assert_eq!(read.state.last_seq, 1);
    // Another tenant asking for the same id finds nothing.
    let other = again.read::<Session>(Uuid::now_v7(), ids.session).await.unwrap();
    assert_eq!(other.state.id, None);
    let refused = again.execute::<Session>(Uuid::now_v7(), ids.session, post(ids.user, "x")).await;
    assert!(matches!(refused, Err(ActorError::Rejected(Rejection::NotFound { .. }))));
}

#[actix_rt::test]
async fn timers_make_a_session_inactive_then_closed() {
    let w = world();
    let r = registry(&w, config()).await;
    let ids = conversation(&r, Timers { inactive_after_secs: 10, close_after_secs: 20 }).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(r.read::<Session>(ids.tenant, ids.session).await.unwrap().state.status, Status::Active);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.read::<Session>(ids.tenant, ids.session).await.unwrap().state.status, Status::Inactive);
    // A message revives it and restarts the idle clock.
    r.execute::<Session>(ids.tenant, ids.session, post(ids.user, "still there?")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(r.read::<Session>(ids.tenant, ids.session).await.unwrap().state.status, Status::Active);
    tokio::time::sleep(Duration::from_secs(40)).await;
    let s = r.read::<Session>(ids.tenant, ids.session).await.unwrap();
    assert_eq!(s.state.status, Status::Closed);
    assert_eq!(r.shared().metrics.timer_firings.load(std::sync::atomic::Ordering::Relaxed), 3);
    let closed = r.execute::<Session>(ids.tenant, ids.session, post(ids.user, "hello?")).await;
    assert!(matches!(closed, Err(ActorError::Rejected(Rejection::FailedPrecondition { .. }))));
}

#[actix_rt::test]
async fn timers_are_rearmed_from_the_log_after_a_restart() {
    let w = world();
    let ids = {
        let r = registry(&w, config()).await;
        conversation(&r, Timers { inactive_after_secs: 10, close_after_secs: 20 }).await
        // The registry (the node) goes away with its timers.
    };
    // Down for longer than both deadlines; at start the overdue timers fire at once.
    tokio::time::sleep(Duration::from_secs(100)).await;
    let r = registry(&w, config()).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s = r.read::<Session>(ids.tenant, ids.session).await.unwrap();
    assert_eq!(s.state.status, Status::Closed);
    let page = w
        .log
        .read_all(
            0,
            100,
            &EventFilter {
                event_types: vec!["SessionBecameInactive".into(), "SessionClosed".into()],
                ..EventFilter::default()
            },
        )
        .await
        .unwrap();
    let decoded: Vec<SessionEvent> =
        page.events.iter().map(|e| events::codec::decode_session_clear(e).unwrap()).collect();
    assert_eq!(
        decoded,
        vec![
            SessionEvent::BecameInactive { reason: Reason::Timer, at_micros: T0 + 10_000_000 },
            SessionEvent::Closed { reason: Reason::Timer, at_micros: T0 + 30_000_000 },
        ]
    );
}

#[actix_rt::test]
async fn idle_actors_stop_and_come_back_from_the_log() {
    let w = world();
    let r = registry(&w, RegistryConfig { idle: Duration::from_secs(60), ..config() }).await;
    let ids = conversation(&r, Timers::DEFAULT).await;
    assert_eq!(r.live_actors(), 3);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(r.live_actors(), 0);
    assert_eq!(r.shared().metrics.live_actors.load(std::sync::atomic::Ordering::Relaxed), 0);
    let done = r.execute::<Session>(ids.tenant, ids.session, post(ids.user, "back")).await.unwrap();
    assert!(matches!(done.events[0], SessionEvent::MessagePosted { seq: 1, .. }));
}

#[actix_rt::test]
async fn the_number_of_live_actors_is_capped() {
    let w = world();
    let r = registry(&w, RegistryConfig { max_actors: 16, ..config() }).await;
    let ids = conversation(&r, Timers::DEFAULT).await;
    for _ in 0..100 {
        let _ = r.read::<Session>(ids.tenant, Uuid::now_v7()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(r.live_actors() <= 18, "{} live", r.live_actors());
    // The first Session was evicted long ago and still works.
    r.execute::<Session>(ids.tenant, ids.session, post(ids.user, "hi")).await.unwrap();
}

#[actix_rt::test]
async fn a_write_by_another_node_is_retried_not_lost() {
    let w = world();
    let node_a = registry(&w, config()).await;
    let node_b = registry(&w, config()).await;
    let ids = conversation(&node_a, Timers::DEFAULT).await;
    node_a.read::<Session>(ids.tenant, ids.session).await.unwrap();
    node_b.execute::<Session>(ids.tenant, ids.session, post(ids.user, "from b")).await.unwrap();
    // Node A's actor still holds version 0; its append conflicts, reloads and lands as message 2.
    let done = node_a.execute::<Session>(ids.tenant, ids.session, post(ids.user, "from a")).await.unwrap();
    assert!(matches!(done.events[0], SessionEvent::MessagePosted { seq: 2, .. }));
    assert_eq!(node_a.shared().metrics.conflicts.load(std::sync::atomic::Ordering::Relaxed), 1);
}
