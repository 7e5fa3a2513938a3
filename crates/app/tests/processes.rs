//! The privacy processes on the in-memory log with a manual clock: a
//! Session started while its end user's erasure is being planned (both
//! orders), a restriction of a subject with 1,000 Sessions killed halfway
//! and finished by the next node, and a location sealed after its consent
//! was withdrawn.

use std::sync::Arc;
use std::time::Duration;

use actors::{Registry, RegistryConfig};
use app::auth::Credentials;
use app::media::{BlobStoreConfig, MediaConfig, MediaPolicy};
use app::{App, Code, Parts};
use domain::session::{Session, SessionCommand, SessionEvent};
use domain::subject::Subject;
use eventlog::mem::MemLog;
use eventlog::{Clock, EventFilter, EventLog, ManualClock};
use keystore::crypto::SecretKey;
use keystore::{EmbeddedRootProvider, Group, KeyPolicy, Keyring, LocalKeyStore, ShredTarget};
use uuid::Uuid;

const ADMIN: &str = "admin-key-for-the-tests";
const T0: i64 = 1_795_000_000_000_000;

/// One node: the application over a log and key store that outlive it.
struct Node {
    app: Arc<App>,
    registry: Arc<Registry>,
    views: Arc<app::views::Views>,
}

struct World {
    log: Arc<dyn EventLog>,
    keyring: Keyring,
    clock: ManualClock,
    dir: tempfile::TempDir,
}

fn world() -> World {
    let clock = ManualClock::new(T0);
    let provider = EmbeddedRootProvider::in_memory(SecretKey::random().unwrap(), 0).unwrap();
    let store = LocalKeyStore::in_memory(Arc::new(provider), Arc::new(clock.clone()));
    let keyring = Keyring::new(Arc::new(store), KeyPolicy::default()).unwrap();
    World { log: Arc::new(MemLog::new()), keyring, clock, dir: tempfile::tempdir().unwrap() }
}

fn media_config() -> MediaConfig {
    MediaConfig {
        default: MediaPolicy { max_bytes: 1 << 20, allowed_types: vec!["image/png".into()] },
        tenants: Default::default(),
        upload_idle_secs: 30,
        sweep_secs: 3600,
        store: BlobStoreConfig::File,
    }
}

async fn node(w: &World) -> Node {
    let clock: Arc<dyn Clock> = Arc::new(w.clock.clone());
    let shared = Arc::new(actors::Shared {
        log: w.log.clone(),
        keyring: w.keyring.clone(),
        clock: clock.clone(),
        metrics: Arc::new(actors::Metrics::default()),
    });
    let config =
        RegistryConfig { idle: Duration::from_secs(3600), max_actors: 100_000, arbiters: 0, snapshot_every: 0 };
    let registry = Registry::start(shared, config).await.unwrap();
    let (ready, _) = tokio::sync::watch::channel(false);
    let views = app::views::Views::start(w.dir.path(), w.log.clone(), ready).unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let audit = audit::AuditLog::start(w.dir.path(), w.log.clone(), signing.clone(), clock.clone()).await.unwrap();
    let blobs = app::media::open_store(&media_config(), w.dir.path()).unwrap();
    let erasures = app::erasure::Erasures::new(
        registry.clone(),
        w.log.clone(),
        w.keyring.clone(),
        views.clone(),
        signing.clone(),
        app::erasure::ErasureConfig::default(),
        blobs.clone(),
    );
    let app = App::new(Parts {
        registry: registry.clone(),
        log: w.log.clone(),
        keyring: w.keyring.clone(),
        clock: clock.clone(),
        admin_sha256: app::auth::sha256(ADMIN.as_bytes()),
        views: views.clone(),
        erasures,
        analytics_k: 5,
        audit,
        auth: Arc::new(app::end_user_auth::EndUserAuth::new(clock.clone(), w.log.clone(), Default::default()).unwrap()),
        staff: Arc::new(app::staff::Staff::new(registry.clone())),
        offboarding_grace_days: 30,
        feed_limits: Default::default(),
        deliveries: Arc::new(app::webhook_port::Disabled(Default::default())),
        media: Arc::new(app::media::Media::new(blobs, media_config())),
        regions: None,
        signing,
    });
    app.resume_processes();
    Node { app, registry, views }
}

fn bearer(key: &str) -> Credentials {
    Credentials { authorization: Some(Ok(format!("Bearer {key}"))), tenant: None }
}

/// A tenant (its key), a Pype and an active end user.
async fn setup(app: &App) -> (Credentials, Uuid, Uuid, Uuid) {
    let t = app.create_tenant(&bearer(ADMIN), "Race Co".into(), None, 0, String::new()).await.unwrap();
    let key = bearer(&t.api_key);
    let pype = app.create_pype(&key, "Help".into(), String::new(), None).await.unwrap().id.unwrap();
    let profile = app::subjects::Profile {
        username: format!("u{}", &Uuid::now_v7().simple().to_string()[20..]),
        email: "someone@example.com".into(),
        phone: String::new(),
        date_of_birth: String::new(),
        attested_at_least_13: true,
        password: String::new(),
    };
    let subject = app.register_subject(&key, profile).await.unwrap().id.unwrap();
    (key, t.tenant.id.unwrap(), pype, subject)
}

/// Waits (in small steps of the test's own runtime) until `f` holds.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..6000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting until {what}");
}

async fn certified(node: &Node, tenant: Uuid, subject: Uuid) -> String {
    until("the erasure is certified", async || {
        node.registry
            .read::<Subject>(tenant, subject)
            .await
            .unwrap()
            .into_state()
            .erasure
            .is_some_and(|e| e.certificate.is_some())
    })
    .await;
    let s = node.registry.read::<Subject>(tenant, subject).await.unwrap().state;
    s.erasure.clone().unwrap().certificate.unwrap().0
}

/// A Session admitted before the erasure was requested and started after
/// it had been planned: the start is refused and the Session erased.
#[actix_rt::test]
async fn a_session_started_while_the_erasure_is_planned_is_erased_and_refused() {
    let w = world();
    let n = node(&w).await;
    let (key, tenant, pype, subject) = setup(&n.app).await;
    let admitted = n.app.admit_session(tenant, &pype.to_string(), &subject.to_string(), None).await.unwrap();
    n.app.request_erasure(&key, "", &subject.to_string()).await.unwrap();
    until("the erasure has planned its work", async || {
        n.registry
            .read::<Subject>(tenant, subject)
            .await
            .unwrap()
            .state
            .erasure
            .as_ref()
            .is_some_and(|e| e.planned.is_some())
    })
    .await;
    let session = admitted.session;
    let refused = n.app.open_admitted(admitted).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    let s = n.registry.read::<Session>(tenant, session).await.unwrap().state;
    assert!(s.id.is_some() && s.erased, "the late Session exists and is erased: {s:?}");
    assert!(w.keyring.keys_of(tenant, ShredTarget::Session { session }).await.unwrap().is_empty());
    // Nothing can be sealed into it any more.
    let post =
        SessionCommand::PostMessage { sender: subject, body: "canary".into(), device: None, attachments: vec![] };
    assert!(n.registry.execute::<Session>(tenant, session, post).await.is_err());
    certified(&n, tenant, subject).await;
}

/// The other order: started before the request, with a canary message in
/// it; the erasure's plan names the Session and the canary cannot be read.
#[actix_rt::test]
async fn a_session_started_before_the_request_is_erased_with_the_rest() {
    let w = world();
    let n = node(&w).await;
    let (key, tenant, pype, subject) = setup(&n.app).await;
    let admitted = n.app.admit_session(tenant, &pype.to_string(), &subject.to_string(), None).await.unwrap();
    let session = admitted.session;
    n.app.open_admitted(admitted).await.unwrap();
    let canary = format!("canary {}", Uuid::now_v7());
    let post = SessionCommand::PostMessage { sender: subject, body: canary.clone(), device: None, attachments: vec![] };
    n.registry.execute::<Session>(tenant, session, post).await.unwrap();
    n.app.request_erasure(&key, "", &subject.to_string()).await.unwrap();
    let certificate = certified(&n, tenant, subject).await;
    assert!(certificate.contains(&session.to_string()), "the certificate names the Session: {certificate}");
    assert!(w.keyring.keys_of(tenant, ShredTarget::Session { session }).await.unwrap().is_empty());
    // The message reads back without its body; the canary is nowhere.
    let stream = events::stream_name(events::Kind::Session, tenant, session);
    let stored =
        w.log.read_stream(&stream, eventlog::ReadFrom::Start, eventlog::Direction::Forward, 100).await.unwrap();
    let mut saw_message = false;
    for r in &stored {
        assert!(!String::from_utf8_lossy(&r.event.payload).contains(&canary));
        if let SessionEvent::MessagePosted { body, .. } =
            <Session as events::Codec>::decode(r, &w.keyring).await.unwrap()
        {
            assert_eq!(body, "", "the canary's key is gone");
            saw_message = true;
        }
    }
    assert!(saw_message);
    // And a Session asked for after the request is refused at once.
    let refused = n.app.admit_session(tenant, &pype.to_string(), &subject.to_string(), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

async fn count(log: &dyn EventLog, event_type: &str) -> usize {
    let filter = EventFilter { stream_prefixes: vec![], event_types: vec![event_type.into()] };
    let (mut from, mut n) = (0, 0);
    loop {
        let page = log.read_all(from, 4096, &filter).await.unwrap();
        n += page.events.len();
        if page.next_position >= page.head || page.next_position == from {
            return n;
        }
        from = page.next_position;
    }
}

/// Restricting a subject with 1,000 Sessions, killed halfway: the next
/// node finds the unfinished change in the log and finishes it.
#[actix_rt::test]
async fn a_restriction_killed_halfway_finishes_after_a_restart() {
    let w = world();
    let n = node(&w).await;
    let (key, tenant, pype, subject) = setup(&n.app).await;
    for _ in 0..1000 {
        n.app.start_session(&key, &pype.to_string(), &subject.to_string(), None, Default::default()).await.unwrap();
    }
    let app = n.app.clone();
    let running = tokio::spawn(async move {
        app::call::scope("RestrictProcessing", app.set_restriction(&key, "", &subject.to_string(), true)).await
    });
    until("half the Sessions are restricted", async || {
        count(w.log.as_ref(), events::types::SESSION_RESTRICTED).await >= 500
    })
    .await;
    // The power goes out.
    running.abort();
    let _ = running.await;
    n.views.stop();
    drop(n);
    let restricted = count(w.log.as_ref(), events::types::SESSION_RESTRICTED).await;
    assert!((500..1000).contains(&restricted), "killed halfway: {restricted} of 1000 restricted");
    assert_eq!(count(w.log.as_ref(), events::types::SUBJECT_RESTRICTION_APPLIED).await, 0);

    let n2 = node(&w).await;
    until("the restriction is applied", async || {
        count(w.log.as_ref(), events::types::SUBJECT_RESTRICTION_APPLIED).await == 1
    })
    .await;
    assert_eq!(count(w.log.as_ref(), events::types::SESSION_RESTRICTED).await, 1000, "each Session once");
    assert!(n2.app.restrictions.unfinished().await.unwrap().is_empty());
    assert!(n2.registry.read::<Subject>(tenant, subject).await.unwrap().state.restricted);
    // No new Session while restricted.
    let refused = n2.app.admit_session(tenant, &pype.to_string(), &subject.to_string(), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

/// A location whose consent check ran before the withdrawal and whose seal
/// reached the log after it: the consent process shreds it, also when the
/// node restarts in between.
#[actix_rt::test]
async fn a_location_sealed_after_the_withdrawal_is_shredded() {
    let w = world();
    let n = node(&w).await;
    let (key, tenant, pype, subject) = setup(&n.app).await;
    let s = subject.to_string();
    n.app.grant_consent(&key, "", &s, "geolocation".into(), "v1".into()).await.unwrap();
    let session =
        n.app.start_session(&key, &pype.to_string(), &s, None, Default::default()).await.unwrap().state.id.unwrap();
    n.app.share_location(&key, &session.to_string(), &s, 52.5, 13.4, 10).await.unwrap();
    let geo = ShredTarget::Subject { subject, group: Some(Group::Geo) };
    assert!(!w.keyring.keys_of(tenant, geo).await.unwrap().is_empty());
    n.app.withdraw_consent(&key, "", &s, "geolocation".into()).await.unwrap();
    assert!(w.keyring.keys_of(tenant, geo).await.unwrap().is_empty(), "shredded at once");
    // The late one: its consent was read before the withdrawal.
    n.views.stop();
    drop(n);
    let late = SessionCommand::ShareLocation {
        participant: subject,
        latitude_e6: 1,
        longitude_e6: 2,
        accuracy_m: 3,
        consented: true,
    };
    let n2 = node(&w).await;
    n2.registry.execute::<Session>(tenant, session, late).await.unwrap();
    until("the late location's key is shredded", async || w.keyring.keys_of(tenant, geo).await.unwrap().is_empty())
        .await;
    let stream = events::stream_name(events::Kind::Session, tenant, session);
    let stored =
        w.log.read_stream(&stream, eventlog::ReadFrom::Start, eventlog::Direction::Forward, 100).await.unwrap();
    let locations: Vec<String> = {
        let mut out = Vec::new();
        for r in &stored {
            if let SessionEvent::LocationShared { location, .. } =
                <Session as events::Codec>::decode(r, &w.keyring).await.unwrap()
            {
                out.push(location);
            }
        }
        out
    };
    assert_eq!(locations, vec![String::new(), String::new()], "both locations unreadable");
    // A consent granted again lets locations be kept again.
    n2.app.grant_consent(&key, "", &s, "geolocation".into(), "v2".into()).await.unwrap();
    n2.app.share_location(&key, &session.to_string(), &s, 1.0, 2.0, 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!w.keyring.keys_of(tenant, geo).await.unwrap().is_empty(), "a consented location is kept");
}
