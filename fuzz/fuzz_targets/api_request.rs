//! Fuzzes the API's request handling: the first byte picks an RPC, the
//! rest is decoded as its request message (as tonic decodes the wire
//! bytes) and handed to the server's own gRPC handler, which checks it and
//! calls the application layer, on an in-memory log and key store with a
//! tenant, a Pype, an end user and a Session. Empty id fields are filled
//! with those of the world, so inputs get past "not found" and deep into
//! the handlers. Any bytes: an answer or a status, never a panic.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::api as pb;
use server::grpc::Handle;
use tonic::Request;

const ADMIN: &str = "fuzz-admin-key-0123456789abcdef0123456789abcdef";
/// Inputs before the world is made again. Its log only grows, and what
/// reads it (an export reads every message of the user) costs with it: at
/// 20,000 the target ran at 130 inputs a second, at 2,000 many times that.
const REBUILD_EVERY: u64 = 2_000;

struct World {
    system: actix_rt::SystemRunner,
    handle: Handle,
    /// Stopped before the world is replaced: their threads would otherwise
    /// outlive it and keep its memory (the RSS limit after ~20 worlds).
    registry: Arc<actors::Registry>,
    views: Arc<app::views::Views>,
    key: String,
    pype: String,
    user: String,
    session: String,
    runs: u64,
    _dir: tempfile::TempDir,
}

fn authed<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii"));
    r
}

fn build() -> World {
    let system = actix_rt::System::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_path_buf();
    let (handle, registry, views, key, pype, user, session) = system.block_on(async move {
        use eventlog::{Clock, EventLog};
        let clock: Arc<dyn Clock> = Arc::new(eventlog::SystemClock);
        let log: Arc<dyn EventLog> = Arc::new(eventlog::mem::MemLog::new());
        let root = keystore::crypto::SecretKey::from_bytes(&[5; 32]).expect("root");
        let provider = Arc::new(keystore::EmbeddedRootProvider::in_memory(root, 0).expect("provider"));
        let store = Arc::new(keystore::LocalKeyStore::in_memory(provider, clock.clone()));
        let keyring = keystore::Keyring::new(store, keystore::KeyPolicy::default()).expect("keyring");
        let shared = Arc::new(actors::Shared {
            log: log.clone(),
            keyring: keyring.clone(),
            clock: clock.clone(),
            metrics: Arc::new(actors::Metrics::default()),
        });
        let config = actors::RegistryConfig {
            idle: Duration::from_secs(3600),
            max_actors: 100_000,
            arbiters: 0,
            snapshot_every: 0,
        };
        let registry = actors::Registry::start(shared, config).await.expect("registry");
        let (ready, _) = tokio::sync::watch::channel(false);
        let views = app::views::Views::start(&path, log.clone(), ready).expect("views");
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let audit = audit::AuditLog::start(&path, log.clone(), signing.clone(), clock.clone()).await.expect("audit");
        let media_config = app::media::MediaConfig {
            default: app::media::MediaPolicy { max_bytes: 1 << 20, allowed_types: vec!["image/png".into()] },
            tenants: Default::default(),
            upload_idle_secs: 30,
            sweep_secs: 3600,
            store: app::media::BlobStoreConfig::File,
        };
        let blobs = app::media::open_store(&media_config, &path).expect("blobs");
        let erasures = app::erasure::Erasures::new(
            registry.clone(),
            log.clone(),
            keyring.clone(),
            views.clone(),
            signing.clone(),
            app::erasure::ErasureConfig::default(),
            blobs.clone(),
        );
        let kept = (registry.clone(), views.clone());
        let application = app::App::new(app::Parts {
            registry: registry.clone(),
            log: log.clone(),
            keyring,
            clock: clock.clone(),
            admin_sha256: app::auth::sha256(ADMIN.as_bytes()),
            views,
            erasures,
            analytics_k: 5,
            audit,
            auth: Arc::new(
                app::end_user_auth::EndUserAuth::new(clock.clone(), log.clone(), Default::default()).expect("auth"),
            ),
            staff: Arc::new(app::staff::Staff::new(registry.clone())),
            offboarding_grace_days: 30,
            feed_limits: Default::default(),
            deliveries: Arc::new(app::webhook_port::Disabled(Default::default())),
            media: Arc::new(app::media::Media::new(blobs, media_config)),
            regions: None,
            signing,
        });
        application.resume_processes();
        let handle = Handle { app: application, metrics: Arc::new(server::metrics::ApiMetrics::default()) };
        use pb::pype_service_server::PypeService;
        use pb::session_service_server::SessionService;
        use pb::subject_service_server::SubjectService;
        use pb::tenant_service_server::TenantService;
        let created = handle
            .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Fuzz".into(), ..Default::default() }))
            .await
            .expect("tenant")
            .into_inner();
        let key = created.api_key;
        let pype = handle
            .create_pype(authed(&key, pb::CreatePypeRequest { name: "Fuzz".into(), ..Default::default() }))
            .await
            .expect("pype")
            .into_inner()
            .pype_id;
        let register = pb::RegisterSubjectRequest {
            username: "fuzz".into(),
            email: "f@example.com".into(),
            attested_at_least_13: true,
            ..Default::default()
        };
        let user = handle.register_subject(authed(&key, register)).await.expect("subject").into_inner().subject_id;
        let start = pb::StartSessionRequest { pype_id: pype.clone(), end_user_id: user.clone(), ..Default::default() };
        let session = handle.start_session(authed(&key, start)).await.expect("session").into_inner().session_id;
        (handle, kept.0, kept.1, key, pype, user, session)
    });
    World { system, handle, registry, views, key, pype, user, session, runs: 0, _dir: dir }
}

fn fill(field: &mut String, with: &str) {
    if field.is_empty() {
        *field = with.to_string();
    }
}

/// One input: an RPC, its request, the answer ignored (any status is fine).
async fn call(w: &World, selector: u8, bytes: &[u8]) {
    use pb::analytics_service_server::AnalyticsService;
    use pb::end_user_auth_service_server::EndUserAuthService;
    use pb::erasure_service_server::ErasureService;
    use pb::privacy_service_server::PrivacyService;
    use pb::pype_service_server::PypeService;
    use pb::session_service_server::SessionService;
    use pb::subject_service_server::SubjectService;
    use pb::tenant_service_server::TenantService;
    use pb::view_service_server::ViewService;
    let h = &w.handle;
    let key = if selector & 0x80 != 0 { ADMIN } else { w.key.as_str() };
    macro_rules! decoded {
        ($t:ty) => {
            match <$t>::decode(bytes) {
                Ok(m) => m,
                Err(_) => return,
            }
        };
    }
    match selector & 0x7f {
        0 => {
            let mut m = decoded!(pb::PostMessageRequest);
            fill(&mut m.session_id, &w.session);
            fill(&mut m.sender_id, &w.user);
            let _ = h.post_message(authed(key, m)).await;
        }
        1 => {
            let mut m = decoded!(pb::StartSessionRequest);
            fill(&mut m.pype_id, &w.pype);
            fill(&mut m.end_user_id, &w.user);
            let _ = h.start_session(authed(key, m)).await;
        }
        2 => {
            let m = decoded!(pb::RegisterSubjectRequest);
            let _ = h.register_subject(authed(key, m)).await;
        }
        3 => {
            let m = decoded!(pb::CreatePypeRequest);
            let _ = h.create_pype(authed(key, m)).await;
        }
        4 => {
            let mut m = decoded!(pb::ListMessagesRequest);
            fill(&mut m.session_id, &w.session);
            let _ = h.list_messages(authed(key, m)).await;
        }
        5 => {
            let mut m = decoded!(pb::AdvanceReadHorizonRequest);
            fill(&mut m.session_id, &w.session);
            let _ = h.advance_read_horizon(authed(key, m)).await;
        }
        6 => {
            let mut m = decoded!(pb::SubjectRef);
            fill(&mut m.subject_id, &w.user);
            let _ = h.restrict_processing(authed(key, m.clone())).await;
            let _ = h.lift_restriction(authed(key, m)).await;
        }
        7 => {
            let m = decoded!(pb::SetRetentionRequest);
            let _ = h.set_retention(authed(key, m)).await;
        }
        8 => {
            let mut m = decoded!(pb::QueryAnalyticsRequest);
            fill(&mut m.pype_id, &w.pype);
            let _ = h.query_analytics(authed(key, m)).await;
        }
        9 => {
            let m = decoded!(pb::LoginRequest);
            let _ = h.login(authed(key, m)).await;
        }
        10 => {
            let mut m = decoded!(pb::GetSessionViewRequest);
            fill(&mut m.session_id, &w.session);
            let _ = h.get_session_view(authed(key, m)).await;
        }
        11 => {
            let mut m = decoded!(pb::GetErasureRequest);
            fill(&mut m.subject_id, &w.user);
            let _ = h.get_erasure(authed(key, m)).await;
        }
        12 => {
            let m = decoded!(pb::CreateTenantRequest);
            let _ = h.create_tenant(authed(key, m)).await;
        }
        13 => {
            let mut m = decoded!(pb::ExportSubjectRequest);
            fill(&mut m.subject_id, &w.user);
            if let Ok(r) = h.export_subject(authed(key, m)).await {
                use tokio_stream::StreamExt;
                let mut stream = r.into_inner();
                while stream.next().await.is_some() {}
            }
        }
        14 => {
            let mut m = decoded!(pb::CloseSessionRequest);
            fill(&mut m.session_id, &w.session);
            let _ = h.close_session(authed(key, m)).await;
        }
        _ => {
            let mut m = decoded!(pb::RectifySubjectRequest);
            fill(&mut m.subject_id, &w.user);
            let _ = h.rectify_subject(authed(key, m)).await;
        }
    }
}

thread_local! {
    // Never dropped at exit: the actix system's tasks would reach for
    // thread-locals already torn down (a harness artefact, not a finding).
    static WORLD: std::mem::ManuallyDrop<RefCell<Option<World>>> =
        const { std::mem::ManuallyDrop::new(RefCell::new(None)) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    WORLD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|w| w.runs >= REBUILD_EVERY) {
            if let Some(old) = slot.take() {
                old.views.stop();
                old.registry.shutdown();
                drop(old);
            }
            *slot = Some(build());
        }
        let Some(w) = slot.as_mut() else { return };
        w.runs += 1;
        w.system.block_on(call(w, selector, rest));
    });
});
