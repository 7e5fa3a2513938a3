//! The HTTP side (actix-web): `/healthz` (the process answers), `/readyz`
//! (recovery done: the log is open, timers are re-armed and every view has
//! caught up with the log as it was at start), `/metrics` (Prometheus
//! text), and the projections' admin endpoint (admin key as a bearer
//! token): `GET /admin/projections` lists each projection's state, lag and
//! generations; `POST /admin/projections/<name>/{pause,resume,skip,reset}`.

use std::fmt::Write as _;
use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};
use projections::RunnerState;
use tokio::sync::watch;

use crate::metrics::ApiMetrics;
use app::erasure::Erasures;
use app::views::Views;

#[derive(Clone)]
pub struct HttpState {
    pub ready: watch::Receiver<bool>,
    pub metrics: Arc<ApiMetrics>,
    pub registry: Arc<actors::Registry>,
    pub views: Arc<Views>,
    pub erasures: Arc<Erasures>,
    pub admin_sha256: [u8; 32],
    pub log: Arc<dyn eventlog::EventLog>,
    /// The file log's directory (its size is reported); none for databases.
    pub log_dir: Option<std::path::PathBuf>,
    /// Listening without TLS off loopback (a mesh terminates TLS).
    pub plaintext_behind_mesh: bool,
    /// Webhook delivery's counters (`None`: this node does not deliver).
    pub webhooks: Option<Arc<app::delivery::Deliveries>>,
    /// The access alerts' counters.
    pub alerts: Arc<app::alerts::Alerts>,
    /// The console (`/console`): its sessions and the metrics history.
    pub console: Arc<crate::console::session::Console>,
}

/// The access alerts on `/metrics`.
fn alert_metrics(body: &mut String, a: &app::alerts::Alerts) {
    use crate::metrics::sample;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &a.metrics;
    body.push_str("# HELP pypes_access_alerts_total Privileged-access alerts raised (written to the alerts stream) by this node, by rule.\n# TYPE pypes_access_alerts_total counter\n");
    for (rule, n) in app::alert_rules::RULES.iter().zip(&m.raised) {
        let _ = writeln!(body, "pypes_access_alerts_total{{rule=\"{rule}\"}} {}", n.load(Relaxed));
    }
    let delivered = m.hook_delivered.load(Relaxed);
    sample(
        body,
        "pypes_alert_webhook_deliveries_total",
        "counter",
        "Alerts delivered to alert webhooks (2xx).",
        delivered,
    );
    let failed = m.hook_failed_attempts.load(Relaxed);
    sample(body, "pypes_alert_webhook_failed_attempts_total", "counter", "Alert webhook attempts that failed.", failed);
    let backlog_help = "Alerts not yet delivered, summed over the alert webhooks.";
    sample(body, "pypes_alert_webhook_backlog", "gauge", backlog_help, m.hook_backlog.load(Relaxed));
    let next_help = "The next audit-trail position the alert rules read.";
    sample(body, "pypes_access_alerts_next_position", "gauge", next_help, m.next_position.load(Relaxed));
}

/// Webhook delivery on `/metrics`.
fn webhook_metrics(body: &mut String, d: &app::delivery::Deliveries) {
    use crate::metrics::sample;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &d.metrics;
    let (active, paused) = d.endpoints();
    body.push_str("# HELP pypes_webhook_endpoints Webhook endpoints this node delivers to, by state.\n# TYPE pypes_webhook_endpoints gauge\n");
    let _ = writeln!(body, "pypes_webhook_endpoints{{state=\"active\"}} {active}");
    let _ = writeln!(body, "pypes_webhook_endpoints{{state=\"paused\"}} {paused}");
    sample(
        body,
        "pypes_webhook_deliveries_total",
        "counter",
        "Webhook events delivered (2xx).",
        m.delivered.load(Relaxed),
    );
    let failed = m.failed_attempts.load(Relaxed);
    sample(body, "pypes_webhook_failed_attempts_total", "counter", "Webhook attempts that failed.", failed);
    body.push_str("# HELP pypes_webhook_events_read_total Integration events queued for webhook endpoints, by where they were read: the shared reader's ring, or a worker's own feed (behind the ring).\n# TYPE pypes_webhook_events_read_total counter\n");
    let _ = writeln!(body, "pypes_webhook_events_read_total{{source=\"shared\"}} {}", m.read_shared.load(Relaxed));
    let _ = writeln!(body, "pypes_webhook_events_read_total{{source=\"own\"}} {}", m.read_own.load(Relaxed));
    let paused_help = "Webhook endpoints paused after failing for 72 hours (since start).";
    sample(body, "pypes_webhook_pauses_total", "counter", paused_help, m.paused.load(Relaxed));
    body.push_str("# HELP pypes_webhook_delivery_seconds From an event's append to its webhook's 2xx.\n# TYPE pypes_webhook_delivery_seconds histogram\n");
    let mut cumulative = 0;
    for (i, bucket) in m.latency_buckets.iter().enumerate() {
        cumulative += bucket.load(Relaxed);
        match app::delivery::LATENCY_BUCKETS_MS.get(i) {
            Some(ms) => {
                let _ = writeln!(
                    body,
                    "pypes_webhook_delivery_seconds_bucket{{le=\"{}\"}} {cumulative}",
                    *ms as f64 / 1000.0
                );
            }
            None => {
                let _ = writeln!(body, "pypes_webhook_delivery_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let sum = m.latency_sum_micros.load(Relaxed) as f64 / 1e6;
    let _ =
        writeln!(body, "pypes_webhook_delivery_seconds_sum {sum}\npypes_webhook_delivery_seconds_count {cumulative}");
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    let mut rebuilding = String::new();
    for r in &state.views.rebuilding {
        if state.views.rebuild_of(r.name).is_some() {
            let at = state.views.runner(r.name).map_or(0, |x| x.status().next_position);
            let _ = writeln!(
                rebuilding,
                "view {} is being rebuilt from the log ({}): position {at} of {}",
                r.name,
                if r.moved_to.is_some() { "its file was damaged and moved aside" } else { "its file was missing" },
                r.until
            );
        }
    }
    // Whatever refuses writes or keeps a view from following the log, each
    // by name: the log, the key store, a view store (a full disk, a lost
    // database).
    let mut troubles = String::new();
    if let Some(trouble) = state.log.write_trouble() {
        let _ = writeln!(troubles, "writes refused: {trouble}");
    }
    if let Some(trouble) = state.registry.shared().keyring.store().write_trouble() {
        let _ = writeln!(troubles, "key store refuses new keys: {trouble}");
    }
    for r in &state.views.runners {
        if let RunnerState::Failing(why) = r.status().state {
            let _ = writeln!(troubles, "view {} is not following the log: {why}", r.name());
        }
    }
    if !troubles.is_empty() {
        return HttpResponse::ServiceUnavailable().content_type("text/plain").body(troubles);
    }
    if *state.ready.borrow() {
        HttpResponse::Ok().content_type("text/plain").body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable().content_type("text/plain").body(format!("recovering\n{rebuilding}"))
    }
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let mut body = state.metrics.render(&state.registry.shared().metrics, state.registry.live_actors());
    body.push_str("# HELP pypes_projection_lag_positions Log positions between the head and a projection's checkpoint.\n# TYPE pypes_projection_lag_positions gauge\n");
    let statuses: Vec<_> = state.views.runners.iter().map(|r| r.status()).collect();
    for s in &statuses {
        let _ = writeln!(body, "pypes_projection_lag_positions{{projection=\"{}\"}} {}", s.name, s.lag_positions);
    }
    body.push_str("# HELP pypes_projection_lag_seconds Age of the oldest event a projection has not applied.\n# TYPE pypes_projection_lag_seconds gauge\n");
    for s in &statuses {
        let _ = writeln!(body, "pypes_projection_lag_seconds{{projection=\"{}\"}} {:.3}", s.name, s.lag_seconds);
    }
    body.push_str("# HELP pypes_projection_events_applied_total Events applied by a projection's serving generation.\n# TYPE pypes_projection_events_applied_total counter\n");
    for s in &statuses {
        let _ =
            writeln!(body, "pypes_projection_events_applied_total{{projection=\"{}\"}} {}", s.name, s.events_applied);
    }
    body.push_str("# HELP pypes_projection_stalled 1 while a projection is stopped at a poison event.\n# TYPE pypes_projection_stalled gauge\n");
    for s in &statuses {
        let stalled = u8::from(matches!(s.state, RunnerState::Stalled { .. }));
        let _ = writeln!(body, "pypes_projection_stalled{{projection=\"{}\"}} {stalled}", s.name);
    }
    body.push_str("# HELP pypes_projection_failing 1 while a projection cannot write its view store (its disk is full or nearly, an I/O error) or read the log; it retries by itself.\n# TYPE pypes_projection_failing gauge\n");
    for s in &statuses {
        let failing = u8::from(matches!(s.state, RunnerState::Failing(_)));
        let _ = writeln!(body, "pypes_projection_failing{{projection=\"{}\"}} {failing}", s.name);
    }
    use crate::metrics::sample;
    let keys_help = "1 while the key store refuses new keys after a failed write (a full disk); it retries by itself.";
    let keys_refused = state.registry.shared().keyring.store().write_trouble().is_some();
    sample(&mut body, "pypes_keystore_writes_refused", "gauge", keys_help, u8::from(keys_refused));
    if let Some(d) = &state.webhooks {
        webhook_metrics(&mut body, d);
    }
    alert_metrics(&mut body, &state.alerts);
    let (open, warned, overdue) = state.erasures.ages();
    sample(&mut body, "pypes_erasure_requests_open", "gauge", "Erasure requests not certified yet.", open);
    let warned_help = "Open erasure requests past the warning age.";
    sample(&mut body, "pypes_erasure_requests_past_warning", "gauge", warned_help, warned);
    let overdue_help = "Open erasure requests past their due date.";
    sample(&mut body, "pypes_erasure_requests_overdue", "gauge", overdue_help, overdue);
    let head_help = "The position the next committed event gets (events in the log).";
    sample(&mut body, "pypes_log_head_position", "gauge", head_help, state.log.head());
    let full_help = "1 while appends fail because the event log's disk is full.";
    let trouble = state.log.write_trouble();
    let full = matches!(trouble, Some(eventlog::WriteTrouble::StorageFull(_)));
    sample(&mut body, "pypes_log_storage_full", "gauge", full_help, u8::from(full));
    let unreachable = matches!(trouble, Some(eventlog::WriteTrouble::Unreachable(_)));
    let db_help = "1 while the event log's database cannot be reached (a failover, a cut network).";
    sample(&mut body, "pypes_log_database_unreachable", "gauge", db_help, u8::from(unreachable));
    let tls_help = "1 when listening without TLS off loopback (tls.plaintext_behind_mesh).";
    sample(&mut body, "pypes_tls_disabled", "gauge", tls_help, u8::from(state.plaintext_behind_mesh));
    if let Some(dir) = &state.log_dir {
        let size_help = "Bytes of the event log's files on disk.";
        sample(&mut body, "pypes_log_size_bytes", "gauge", size_help, crate::metrics::dir_bytes(dir, 2));
    }
    if let Some(index) = state.log.index_stats() {
        let help = "Frames of the event log whose index entry is in memory (the active segment's; sealed segments' are spilled).";
        sample(&mut body, "pypes_log_index_frames_in_memory", "gauge", help, index.frames_in_memory);
        let help = "Stream versions of the event log whose index entry is in memory.";
        sample(&mut body, "pypes_log_index_versions_in_memory", "gauge", help, index.versions_in_memory);
        let help = "Segments of the event log whose index was spilled to the scratch file.";
        sample(&mut body, "pypes_log_index_spilled_segments", "gauge", help, index.spilled_segments);
        let help = "Segments of the event log.";
        sample(&mut body, "pypes_log_segments", "gauge", help, index.segments);
        let help = "Bytes of the event log's index scratch file (an unlinked file: not in pypes_log_size_bytes, nor seen by du).";
        sample(&mut body, "pypes_log_index_scratch_bytes", "gauge", help, index.scratch_bytes);
    }
    if let Some(fsync) = state.log.fsync_latency() {
        body.push_str("# HELP pypes_log_fsync_seconds How long the event log's commit fdatasyncs take.\n# TYPE pypes_log_fsync_seconds histogram\n");
        crate::metrics::histogram(&mut body, "pypes_log_fsync_seconds", "", &fsync);
    }
    crate::metrics::build_info(&mut body);
    crate::metrics::process(&mut body);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

/// The answer to an error, its status from the one code table (`app::Code`).
fn error_response(e: app::AppError) -> HttpResponse {
    let (code, message) = e.answer();
    let status = actix_web::http::StatusCode::from_u16(code.http())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).content_type("text/plain").body(format!("{message}\n"))
}

fn admin(req: &HttpRequest, state: &HttpState) -> Result<(), Box<HttpResponse>> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refused = match token {
        Some(t) if app::auth::same(&app::auth::sha256(t.as_bytes()), &state.admin_sha256) => return Ok(()),
        Some(_) => app::AppError::Forbidden("not the admin key".into()),
        None => app::AppError::Unauthenticated("missing header: Authorization: Bearer <admin key>".into()),
    };
    Err(Box::new(error_response(refused)))
}

async fn list_projections(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    if let Err(r) = admin(&req, &state) {
        return *r;
    }
    let mut items = Vec::new();
    for r in &state.views.runners {
        let s = r.status();
        let (stalled_at, error) = match &s.state {
            RunnerState::Stalled { position, error } => (position.to_string(), app::certificate::json_str(error)),
            RunnerState::Failing(e) => ("null".into(), app::certificate::json_str(e)),
            _ => ("null".into(), "null".into()),
        };
        let building = match s.building {
            Some((g, p)) => format!("{{\"generation\":{g},\"next_position\":{p}}}"),
            None => "null".into(),
        };
        let recovered = match state.views.rebuilding.iter().find(|x| x.name == s.name) {
            Some(x) => format!(
                "{{\"reason\":{},\"moved_to\":{},\"until\":{},\"done\":{}}}",
                app::certificate::json_str(&x.reason),
                x.moved_to.as_ref().map_or("null".into(), |p| app::certificate::json_str(&p.display().to_string())),
                x.until,
                state.views.rebuild_of(s.name).is_none()
            ),
            None => "null".into(),
        };
        items.push(format!(
            "{{\"name\":\"{}\",\"version\":{},\"state\":\"{}\",\"stalled_at\":{stalled_at},\"error\":{error},\"serving_generation\":{},\"next_position\":{},\"head\":{},\"lag_positions\":{},\"lag_seconds\":{:.3},\"events_applied\":{},\"building\":{building},\"skipped_events\":{},\"rebuilt_at_start\":{recovered}}}",
            s.name,
            s.version,
            s.state.name(),
            s.serving_generation,
            s.next_position,
            s.head,
            s.lag_positions,
            s.lag_seconds,
            s.events_applied,
            s.skipped
        ));
    }
    HttpResponse::Ok().content_type("application/json").body(format!("{{\"projections\":[{}]}}\n", items.join(",")))
}

async fn control_projection(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<HttpState>,
) -> HttpResponse {
    if let Err(r) = admin(&req, &state) {
        return *r;
    }
    let (name, action) = path.into_inner();
    match state.views.control(&name, &action) {
        Ok(m) => HttpResponse::Ok().content_type("text/plain").body(format!("{m}\n")),
        Err(e) => error_response(e),
    }
}

/// Starts the HTTP server on an already bound listener, with `routes`
/// (the console's) beside its own.
pub fn start(
    listener: std::net::TcpListener,
    state: HttpState,
    tls: Option<rustls::ServerConfig>,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<ServerHandle> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/admin/projections", web::get().to(list_projections))
            .route("/admin/projections/{name}/{action}", web::post().to(control_projection))
            .configure(routes)
    })
    .workers(1)
    .disable_signals();
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    }
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}
