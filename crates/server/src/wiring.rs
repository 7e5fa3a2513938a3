//! Wiring of `pypes serve`: open the key store and the event log of the
//! data directory, start the registry (re-arming Session timers), the
//! projections (views) and the erasure process, the gRPC server (API,
//! health, reflection) and the HTTP server, then wait for the shutdown
//! signal.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::{Clock, EventLog, SystemClock};
use keystore::embedded::{OpenMode, ROOT_KEY_ENV};
use keystore::{KeyPolicy, Keyring};
use proto::api as pb;
use tokio::sync::watch;

use crate::config::{Config, KeysBackend, LogBackend};
use crate::grpc::Handle;
use crate::http::{self, HttpState};
use crate::metrics::ApiMetrics;

const LOG_KEY_FILE: &str = "log-signing.key";
const ADMIN_KEY_FILE: &str = "admin.key";

fn write_secret_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn random_hex() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    Ok(hex::encode(b))
}

/// The log's checkpoint signing key: made with the log, never over one.
/// The environment variable that gives the log's Ed25519 signing key (64
/// hex digits) instead of `<data>/log-signing.key`: several nodes sharing
/// one database then sign their audit trails with one key, which an
/// auditor checks with one public key.
pub const LOG_SIGNING_KEY_ENV: &str = "PYPES_LOG_SIGNING_KEY";

/// A signing key from 64 hex digits.
pub fn parse_signing_key(text: &str, from: &str) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{from} is not 64 hex digits"))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&bytes))
}

fn log_signing_key(data: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    if let Ok(text) = std::env::var(LOG_SIGNING_KEY_ENV) {
        return parse_signing_key(&text, LOG_SIGNING_KEY_ENV);
    }
    let path = data.join(LOG_KEY_FILE);
    if !path.exists() {
        let log_dir = data.join("log");
        if log_dir.exists() && std::fs::read_dir(&log_dir)?.next().is_some() {
            anyhow::bail!(
                "{} holds an event log but {} is missing: restore it (a new key would not verify the log's checkpoints)",
                log_dir.display(),
                path.display()
            );
        }
        write_secret_file(&path, &format!("{}\n", random_hex()?))?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_signing_key(&text, &path.display().to_string())
}

/// The signing key a tool reads for a stopped server (never made).
pub fn read_signing_key(data: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    if let Ok(text) = std::env::var(LOG_SIGNING_KEY_ENV) {
        return parse_signing_key(&text, LOG_SIGNING_KEY_ENV);
    }
    let path = data.join(LOG_KEY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_signing_key(&text, &path.display().to_string())
}

/// The admin key: configured, or `admin.key` in the data directory, made
/// on the first start only. A data directory that held data before this
/// start and has no `admin.key` is refused: a new key made silently would
/// lock out whoever holds the old one and hide that the file went missing.
fn admin_key(config: &Config, existed: bool) -> anyhow::Result<(String, String)> {
    if let Some(k) = &config.admin_key {
        return Ok((k.clone(), "from configuration".into()));
    }
    let path = config.data_dir.join(ADMIN_KEY_FILE);
    if !path.exists() {
        if existed {
            anyhow::bail!(
                "{} is missing, and {} holds data: pypes does not make a new admin key silently. Restore it from \
                 your backup, or make a new one on purpose: \
                 (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > {}), or set admin_key",
                path.display(),
                config.data_dir.display(),
                path.display()
            );
        }
        write_secret_file(&path, &format!("{}\n", random_hex()?))?;
    }
    let key = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_string();
    Ok((key, format!("in {}", path.display())))
}

/// tonic answers a request that does not decode (e.g. a string field that
/// is not UTF-8) with INTERNAL; it is the caller's input that is wrong, so
/// the code becomes INVALID_ARGUMENT. The message, from prost, names the
/// field ("PostMessageRequest.body: invalid string value: ...").
fn undecodable_is_invalid_argument<B>(mut response: ::http::Response<B>) -> ::http::Response<B> {
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|v| v == "13")
        && headers.get("grpc-message").and_then(|v| v.to_str().ok()).is_some_and(|m| {
            m.starts_with("failed to decode Protobuf message")
                || m.starts_with("failed%20to%20decode%20Protobuf%20message")
        });
    if undecodable {
        headers.insert("grpc-status", ::http::HeaderValue::from_static("3"));
    }
    response
}

/// The TLS material of `[tls]`, read and checked before anything listens.
pub struct Tls {
    grpc: tonic::transport::ServerTlsConfig,
    http: rustls::ServerConfig,
}

fn load_tls(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = std::fs::read(cert).with_context(|| format!("tls.cert_file {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("tls.key_file {}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("tls.cert_file {}: no CERTIFICATE in it", cert.display());
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("tls.key_file {}: not a PEM private key: {e}", key.display()))?;
    // One crypto provider for the process (ring); a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| anyhow::anyhow!("tls: the key does not fit the certificate, or is unusable: {e}"))?;
    let grpc =
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
    Ok(Tls { grpc, http })
}

/// Test builds only (the `test-hooks` feature): the file named by
/// `PYPES_DEV_CLOCK_OFFSET_FILE` holds seconds added to the wall clock,
/// re-read every 50 ms, so integration tests can move time (retention,
/// offboarding grace, timeouts) without waiting days. Builds without the
/// feature (release) have no such code.
pub const DEV_CLOCK_ENV: &str = "PYPES_DEV_CLOCK_OFFSET_FILE";

#[cfg(feature = "test-hooks")]
struct OffsetClock(Arc<std::sync::atomic::AtomicI64>);

#[cfg(feature = "test-hooks")]
impl Clock for OffsetClock {
    fn now_micros(&self) -> i64 {
        SystemClock.now_micros() + self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(not(feature = "test-hooks"))]
fn server_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(feature = "test-hooks")]
fn server_clock() -> Arc<dyn Clock> {
    let Some(path) = std::env::var_os(DEV_CLOCK_ENV) else {
        return Arc::new(SystemClock);
    };
    tracing::warn!(file = ?path, "development clock: time is offset by the seconds in this file");
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let shared = offset.clone();
    std::thread::spawn(move || {
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(secs) = text.trim().parse::<i64>()
            {
                shared.store(secs.saturating_mul(1_000_000), std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    Arc::new(OffsetClock(offset))
}

/// Puts what opening the key store found (copies repaired from their twin,
/// torn appends cut, format 1 migrated) into `/metrics` and the audit
/// trail (the key store logged each when it settled it). Paths are named relative to the data directory; they hold
/// tenant ids (opaque) and nothing personal.
async fn report_key_store_findings(
    keys: &keystore::embedded::Embedded,
    data_dir: &Path,
    metrics: &ApiMetrics,
    audit: &audit::AuditLog,
) -> anyhow::Result<()> {
    for f in keys.findings() {
        let action = match f.action {
            keystore::FindingAction::Repaired => "repaired",
            keystore::FindingAction::TornTailCut => "torn_tail_cut",
            keystore::FindingAction::Migrated => "migrated",
            keystore::FindingAction::LeftoverRemoved => "leftover_removed",
        };
        // The key store logged each finding when it settled it.
        let file = f.path.strip_prefix(data_dir).unwrap_or(&f.path).display().to_string();
        metrics.count_integrity("keys", action);
        audit
            .record(
                audit::Record::new("integrity.keys", "pypes", action)
                    .target(file)
                    .detail(format!("offset {}: {}", f.offset, f.what)),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Takes in other nodes' shreds of a shared key store, every second.
async fn sync_keys(keyring: Keyring) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match keyring.sync().await {
            Ok(0) => {}
            Ok(keys) => tracing::info!(keys, "dropped keys shredded by another node"),
            Err(e) => tracing::warn!(error = %e, "key store sync failed; trying again"),
        }
    }
}

/// Opens the configured key store (the server, and the tools that read a
/// stopped server's data).
pub async fn open_keys(
    backend: &KeysBackend,
    data_dir: &Path,
    clock: Arc<dyn Clock>,
    mode: OpenMode,
) -> anyhow::Result<keystore::embedded::Embedded> {
    let root = std::env::var(ROOT_KEY_ENV).ok();
    let dir = data_dir.to_path_buf();
    match backend {
        KeysBackend::File { provider_dir } => {
            let provider = provider_dir.clone().unwrap_or_else(|| dir.join(keystore::embedded::PROVIDER_DIR));
            tokio::task::spawn_blocking(move || {
                keystore::embedded::open_embedded_in(&dir, &provider, root.as_deref(), clock, mode)
            })
            .await?
        }
        KeysBackend::Postgres { url, provider_url } => {
            if url == provider_url {
                tracing::warn!(
                    "the root-key provider's epochs are in the key store's database: its backups and archived WAL \
                     keep destroyed epochs, so an erasure reaches them only when they expire; set \
                     keys.provider_url to a cluster without backups (docs/backends.md)"
                );
            }
            let (url, provider_url) = (url.clone(), provider_url.clone());
            tokio::task::spawn_blocking(move || {
                keystore::embedded::open_postgres(&url, &provider_url, &dir, root.as_deref(), clock, mode)
            })
            .await?
        }
    }
    .with_context(|| format!("opening the key store ({backend:?})"))
}

/// Opens the configured event log; `signing` gives the file log's
/// checkpoint key (not asked for on the other backends).
pub async fn open_log(
    backend: &LogBackend,
    data_dir: &Path,
    signing: impl FnOnce() -> anyhow::Result<ed25519_dalek::SigningKey>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn EventLog>> {
    let log: anyhow::Result<Arc<dyn EventLog>> = match backend {
        LogBackend::File { witness_dir, segment_size } => {
            let mut log_config = FileLogConfig::new(signing()?);
            log_config.witness_dir = witness_dir.clone();
            if let Some(size) = segment_size {
                log_config.segment_size = *size;
            }
            let log_dir = data_dir.join("log");
            match tokio::task::spawn_blocking(move || FileLog::open(&log_dir, log_config)).await? {
                Ok(log) => Ok(Arc::new(log)),
                Err(e) => Err(e.into()),
            }
        }
        LogBackend::Postgres { url } => match eventlog_postgres::PgLog::open(url, clock).await {
            Ok(log) => Ok(Arc::new(log)),
            Err(e) => Err(e.into()),
        },
        #[cfg(feature = "kurrentdb")]
        LogBackend::KurrentDb { url } => match eventlog_kurrentdb::KurrentLog::open(url, clock).await {
            Ok(log) => Ok(Arc::new(log)),
            Err(e) => Err(e.into()),
        },
        #[cfg(not(feature = "kurrentdb"))]
        LogBackend::KurrentDb { .. } => {
            let _ = clock;
            Err(anyhow::anyhow!(
                "log.backend = \"kurrentdb\": this build has no KurrentDB backend; build pypes with \
                 `--features kurrentdb`"
            ))
        }
    };
    log.with_context(|| format!("opening the event log ({backend:?})"))
}

/// Runs the server until `shutdown` resolves. Must run inside an actix System.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(load_tls(cert, key)?),
        None => None,
    };
    // Listeners first: a port in use is refused before anything is
    // created or opened.
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC to {} (grpc_addr)", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_listener = std::net::TcpListener::bind(config.http_addr)
        .with_context(|| format!("binding HTTP to {} (http_addr)", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    // The data directory is pypes' or refused; one this start makes is
    // removed again if the start fails.
    let claim = crate::datadir::claim(&config.data_dir)?;
    let (admin, admin_where) = admin_key(&config, claim.existed())?;
    let clock: Arc<dyn Clock> = server_clock();
    let keys = open_keys(&config.keys, &config.data_dir, clock.clone(), OpenMode::CreateIfEmpty).await?;
    let keyring = Keyring::new(keys.store.clone(), KeyPolicy::default())?;
    if matches!(config.keys, KeysBackend::Postgres { .. }) {
        // Other nodes shred keys too: drop this node's copies within a second.
        tokio::spawn(sync_keys(keyring.clone()));
    }
    let signing = log_signing_key(&config.data_dir)?;
    let for_log = signing.clone();
    let log = open_log(&config.log, &config.data_dir, move || Ok(for_log), clock.clone()).await?;
    if let Some(url) = &config.sql_url {
        let sink = projections::sql::SqlSink::open(url).await.context("starting the SQL read models (sql.url)")?;
        tokio::spawn(sink.run(log.clone()));
    }
    let signing_for_scheduler = signing.clone();
    let audit = audit::AuditLog::start(&config.data_dir, log.clone(), signing.clone(), clock.clone())
        .await
        .context("starting the audit log")?;
    audit.record(audit::Record::new("server.start", "pypes", "ok")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let shared = Arc::new(actors::Shared {
        log: log.clone(),
        keyring: keyring.clone(),
        clock: clock.clone(),
        metrics: Arc::new(actors::Metrics::default()),
    });
    let registry = actors::Registry::start(
        shared,
        actors::RegistryConfig {
            idle: std::time::Duration::from_secs(config.actor_idle_secs),
            max_actors: config.max_actors,
            arbiters: config.arbiters,
            snapshot_every: config.snapshot_every,
        },
    )
    .await
    .context("starting the actors")?;
    let metrics = Arc::new(ApiMetrics::default());
    report_key_store_findings(&keys, &config.data_dir, &metrics, &audit).await?;
    let (ready_tx, ready_rx) = watch::channel(false);
    let views = app::views::Views::start(&config.data_dir, log.clone(), ready_tx)?;
    for r in &views.rebuilding {
        let action = if r.moved_to.is_some() { "set_aside_rebuilding" } else { "missing_rebuilding" };
        metrics.count_integrity("views", action);
        let moved = r.moved_to.as_ref().map(|p| p.strip_prefix(&config.data_dir).unwrap_or(p).display().to_string());
        audit
            .record(
                audit::Record::new("integrity.views", "pypes", action).target(format!("views/{}.redb", r.name)).detail(
                    match moved {
                        Some(m) => format!("moved aside to {m}; rebuilding from the log up to position {}", r.until),
                        None => format!("rebuilding from the log up to position {}", r.until),
                    },
                ),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let blobs = app::media::open_store(&config.media, &config.data_dir).context("opening the blob store")?;
    let regions = match &config.regions {
        Some(r) => {
            let directory: Arc<dyn app::regions::TenantDirectory> = match &r.directory {
                crate::config::DirectorySpec::Files(dir) => Arc::new(crate::regions::FileDirectory::open(dir)?),
                crate::config::DirectorySpec::Postgres(url) => Arc::new(crate::regions::PgDirectory::open(url).await?),
            };
            tracing::info!(region = %r.this, regions = ?r.known, directory = %r.directory, "serving one region");
            Some(Arc::new(app::regions::Regions::new(r.this.clone(), r.known.clone(), directory)))
        }
        None => None,
    };
    let erasures = app::erasure::Erasures::new(
        registry.clone(),
        log.clone(),
        keyring.clone(),
        views.clone(),
        signing,
        app::erasure::ErasureConfig { warn_after_days: config.erasure_warn_days },
        blobs.clone(),
    );
    actix_rt::spawn(keystore::rotation_schedule(
        keyring.clone(),
        config.rotation_days * 86_400,
        clock.clone(),
        std::time::Duration::from_secs(3600),
    ));
    let media = Arc::new(app::media::Media::new(blobs.clone(), config.media.clone()));
    let deliveries = match config.webhooks.0.deliver {
        true => {
            let (settings, ca) = &config.webhooks;
            let client = webhooks::deliver::Client::new(settings.policy, settings.limits, ca.as_deref())
                .map_err(|e| anyhow::anyhow!("integrations: {e}"))?;
            Some(app::delivery::Deliveries::new(settings.clone(), client))
        }
        false => None,
    };
    let alerts = {
        let (settings, policy, ca) = &config.alerts;
        let client = match settings.hooks.is_empty() {
            true => None,
            false => {
                let limits = webhooks::deliver::Limits { idle_connections_per_host: 1, ..Default::default() };
                Some(
                    webhooks::deliver::Client::new(*policy, limits, ca.as_deref())
                        .map_err(|e| anyhow::anyhow!("alerts: {e}"))?,
                )
            }
        };
        app::alerts::Alerts::start(log.clone(), clock.clone(), settings.clone(), client)
    };
    let application = app::App::new(app::Parts {
        registry: registry.clone(),
        log: log.clone(),
        keyring: keyring.clone(),
        clock: clock.clone(),
        admin_sha256: app::auth::sha256(admin.as_bytes()),
        views: views.clone(),
        erasures: erasures.clone(),
        analytics_k: config.analytics_k,
        audit: audit.clone(),
        auth: Arc::new(app::end_user_auth::EndUserAuth::new(clock.clone(), log.clone(), config.auth)?),
        staff: Arc::new(app::staff::Staff::new(registry.clone())),
        offboarding_grace_days: config.offboarding_grace_days,
        media: media.clone(),
        feed_limits: config.feed,
        deliveries: match &deliveries {
            Some(d) => d.clone(),
            None => Arc::new(app::webhook_port::Disabled(config.webhooks.0.clone())),
        },
        regions: regions.clone(),
        signing: signing_for_scheduler.clone(),
    });
    application.resume_processes();
    if let Some(d) = &deliveries {
        d.start(&application);
    } else {
        tracing::info!("this node does not deliver webhooks (integrations.deliver_webhooks = false)");
    }
    let scheduler = Arc::new(app::retention::Scheduler {
        registry: registry.clone(),
        log: log.clone(),
        keyring: keyring.clone(),
        views: views.clone(),
        audit: audit.clone(),
        clock: clock.clone(),
        signing: signing_for_scheduler,
        grace_days: config.offboarding_grace_days,
        blobs: blobs.clone(),
        pending: Default::default(),
        regions,
    });
    tokio::spawn(scheduler.run(std::time::Duration::from_secs(config.sweep_secs)));
    // Nothing is in flight yet: settle everything a crash left.
    media
        .reconcile(&registry, &keyring, true)
        .await
        .map_err(|e| anyhow::anyhow!("settling interrupted uploads: {e}"))?;
    tokio::spawn(media.clone().sweep(registry.clone(), keyring.clone()));
    let console_app = application.clone();
    let api = Handle { app: application, metrics: metrics.clone() };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<pb::session_service_server::SessionServiceServer<Handle>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::API_FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1, and v1alpha for older grpcurl versions that only speak that.
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    let (http_tls, tls_text) = match tls {
        Some(t) => {
            builder = builder.tls_config(t.grpc).context("configuring TLS for gRPC")?;
            (Some(t.http), "on")
        }
        None if config.plaintext_behind_mesh => {
            tracing::error!(
                grpc = %config.grpc_addr,
                http = %config.http_addr,
                "TLS IS OFF on a non-loopback listener (tls.plaintext_behind_mesh): only a service mesh that \
                 terminates TLS on this host may reach these ports; anyone else on the network reads every \
                 request, the admin key and personal data in clear"
            );
            (None, "OFF (plaintext_behind_mesh: TLS must be terminated in front)")
        }
        None => (None, "off (loopback only)"),
    };
    let grpc = builder
        .layer(crate::telemetry::TraceParentLayer)
        .layer(tower::util::MapResponseLayer::new(undecodable_is_invalid_argument::<tonic::body::Body>))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::tenant_service_server::TenantServiceServer::new(api.clone()))
        .add_service(pb::pype_service_server::PypeServiceServer::new(api.clone()))
        .add_service(pb::session_service_server::SessionServiceServer::new(api.clone()))
        .add_service(pb::subject_service_server::SubjectServiceServer::new(api.clone()))
        .add_service(pb::view_service_server::ViewServiceServer::new(api.clone()))
        .add_service(pb::analytics_service_server::AnalyticsServiceServer::new(api.clone()))
        .add_service(pb::erasure_service_server::ErasureServiceServer::new(api.clone()))
        .add_service(pb::end_user_auth_service_server::EndUserAuthServiceServer::new(api.clone()))
        .add_service(pb::staff_service_server::StaffServiceServer::new(api.clone()))
        .add_service(pb::privacy_service_server::PrivacyServiceServer::new(api.clone()))
        .add_service(pb::media_service_server::MediaServiceServer::new(api.clone()))
        .add_service(pb::integration_service_server::IntegrationServiceServer::new(api.clone()))
        .add_service(pb::webhook_service_server::WebhookServiceServer::new(api.clone()))
        .add_service(pb::region_service_server::RegionServiceServer::new(api.clone()))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY, Nagle and delayed ACKs hold small responses ~40 ms.
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            async {
                let _ = grpc_stopped.await;
            },
        );
    let grpc_task = tokio::spawn(grpc);
    let history = crate::console::history::History::new(config.console_sample_secs);
    // Behind a mesh the browser still reaches pypes over TLS: cookies stay Secure.
    let secure = config.tls.is_some() || config.plaintext_behind_mesh;
    let console = crate::console::session::Console::new(console_app, history.clone(), clock.clone(), secure);
    let http_state = HttpState {
        ready: ready_rx,
        metrics,
        registry: registry.clone(),
        views: views.clone(),
        erasures,
        admin_sha256: app::auth::sha256(admin.as_bytes()),
        log: log.clone(),
        log_dir: matches!(config.log, LogBackend::File { .. }).then(|| config.data_dir.join("log")),
        plaintext_behind_mesh: config.plaintext_behind_mesh,
        webhooks: deliveries.clone(),
        alerts: alerts.clone(),
        console,
    };
    let sources = crate::console::history::Sources {
        ready: http_state.ready.clone(),
        metrics: http_state.metrics.clone(),
        registry: http_state.registry.clone(),
        views: http_state.views.clone(),
        log: http_state.log.clone(),
        log_dir: http_state.log_dir.clone(),
    };
    crate::console::history::spawn(history, sources);
    let http = http::start(http_listener, http_state, http_tls, crate::console::pages::routes)?;
    claim.keep();

    // Whoever started us may stop reading stdout: a closed pipe must not
    // take the server down (println! would panic on EPIPE).
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "pypes listening grpc={grpc_addr} http={http_addr} data={} tls={tls_text}",
        config.data_dir.display()
    );
    let _ = writeln!(out, "admin key {admin_where}; root key {}", keys.origin);
    let _ = writeln!(out, "event log: {}; key store: {}", config.log, config.keys);
    let _ = out.flush();
    drop(out);
    tracing::info!(%grpc_addr, %http_addr, data = %config.data_dir.display(), "pypes started");

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_grpc.send(());
    http.stop(true).await;
    let _ = grpc_task.await;
    if let Err(e) = audit.record(audit::Record::new("server.stop", "pypes", "ok")).await {
        tracing::error!(error = %e, "audit record at shutdown");
    }
    if let Err(e) = audit.checkpoint().await {
        tracing::error!(error = %e, "audit checkpoint at shutdown");
    }
    registry.shutdown();
    views.stop();
    // A clean stop leaves every frame under a signed head.
    let closing = log.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || closing.close_for_shutdown()).await {
        tracing::error!(error = %e, "closing the event log at shutdown");
    }
    Ok(())
}
