//! The HTTP side (actix-web): `/healthz` (the process answers), `/readyz`
//! (recovery done: the log is open, timers are re-armed and the session
//! index has caught up) and `/metrics` (Prometheus text).

use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, dev::ServerHandle, web};
use tokio::sync::watch;

use crate::metrics::ApiMetrics;

#[derive(Clone)]
pub struct HttpState {
    pub ready: watch::Receiver<bool>,
    pub metrics: Arc<ApiMetrics>,
    pub registry: Arc<actors::Registry>,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    if *state.ready.borrow() {
        HttpResponse::Ok().content_type("text/plain").body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable().content_type("text/plain").body("recovering\n")
    }
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let body = state.metrics.render(&state.registry.shared().metrics, state.registry.live_actors());
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

/// Starts the HTTP server on an already bound listener.
pub fn start(listener: std::net::TcpListener, state: HttpState) -> std::io::Result<ServerHandle> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}
