//! The gRPC adapters: one file per service. Each handler converts the
//! request, makes one call into `app`, and converts the answer
//! ([`convert`]); who may call, what it touches and what is audited is
//! the application's business. A tidy test holds every handler to that
//! (`crates/server/tests/tidy.rs`).

pub mod analytics;
pub mod convert;
pub mod erasure;
pub mod integration;
pub mod login;
pub mod media;
pub mod privacy;
pub mod pype;
pub mod region;
pub mod session;
pub mod staff;
pub mod subject;
pub mod tenant;
pub mod view;
pub mod webhook;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use app::auth::{Credentials, TENANT_HEADER};
use app::{App, AppError};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Response, Status};
use tracing::Instrument;

use crate::metrics::ApiMetrics;

/// What every service shares: the application and the request metrics.
#[derive(Clone)]
pub struct Handle {
    pub app: Arc<App>,
    pub metrics: Arc<ApiMetrics>,
}

pub(crate) type Reply<T> = Result<Response<T>, Status>;

/// A server stream of answers.
pub(crate) type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a call presents: its bearer key and the tenant header.
pub(crate) fn credentials(metadata: &MetadataMap) -> Credentials {
    let text = |name: &str| metadata.get(name).map(|v| v.to_str().map(str::to_owned).map_err(|_| ()));
    Credentials { authorization: text("authorization"), tenant: text(TENANT_HEADER) }
}

/// The gRPC status of an application error (the code from the one table).
pub(crate) fn status(e: AppError) -> Status {
    status_noting(e).0
}

/// [`status`], and the incident id of an internal failure.
fn status_noting(e: AppError) -> (Status, Option<uuid::Uuid>) {
    let region = e.region().map(str::to_string);
    let (code, message, incident) = e.answer_noting();
    let mut status = Status::new(tonic::Code::from(code.grpc()), message);
    // A tenant of another region: a router reads where to send it on.
    if let Some(r) = region.and_then(|r| tonic::metadata::MetadataValue::try_from(r).ok()) {
        status.metadata_mut().insert("pypes-region", r);
    }
    // A retry hint a gRPC client's retry policy reads (gRFC A6): the node
    // is failing over, reconnecting or shutting down.
    if status.code() == tonic::Code::Unavailable {
        status.metadata_mut().insert("grpc-retry-pushback-ms", tonic::metadata::MetadataValue::from_static("1000"));
    }
    (status, incident)
}

/// The span of one RPC (exported when traces are on; disabled, and free,
/// otherwise).
fn rpc_span(method: &'static str) -> tracing::Span {
    let span = tracing::debug_span!(
        target: crate::telemetry::SPAN_TARGET,
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // A caller's W3C traceparent makes this span part of its trace.
    crate::telemetry::adopt_remote_parent(&span);
    span
}

impl Handle {
    /// Runs one unary call as `method`: the application call, then its
    /// refusal (if any) noted and its latency observed.
    pub(crate) async fn unary<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, AppError>>,
    ) -> Reply<T> {
        let span = rpc_span(method);
        let started = Instant::now();
        let (result, noted) = app::call::scope_noting(method, call).instrument(span.clone()).await;
        self.finish(method, started, result, noted, &span).await.map(Response::new)
    }

    /// Runs the call that opens a server stream as `method`; each item is
    /// converted by `out` as it comes.
    // tonic's streams carry `Result<T, Status>`: the error type is theirs.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn streaming<I: Send + 'static, T: Send + 'static>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<tokio::sync::mpsc::Receiver<Result<I, AppError>>, AppError>>,
        out: impl Fn(I) -> T + Send + 'static,
    ) -> Reply<Streamed<T>> {
        let span = rpc_span(method);
        let started = Instant::now();
        let (result, noted) = app::call::scope_noting(method, call).instrument(span.clone()).await;
        let rx = self.finish(method, started, result, noted, &span).await?;
        let items = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| item.map(&out).map_err(status));
        Ok(Response::new(Box::pin(items)))
    }

    /// Notes a refusal, observes the latency, closes the span and writes
    /// the request log's line: method, code, latency, the verified tenant
    /// and an internal failure's incident id (never personal data: no
    /// request fields, no message text, no peer address).
    async fn finish<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<T, AppError>,
        noted: app::call::Noted,
        span: &tracing::Span,
    ) -> Result<T, Status> {
        let tenant = noted.tenant;
        let (code, incident, result) = match result {
            Ok(v) => (tonic::Code::Ok, None, Ok(v)),
            Err(e) => {
                let app_code = e.code();
                self.app.note_refusal(method, app_code, noted.actor()).await;
                let (s, incident) = status_noting(e);
                (s.code(), incident, Err(s))
            }
        };
        let took = started.elapsed();
        self.metrics.observe(method, code, took);
        span.record("rpc.grpc.status_code", code as i64);
        if crate::telemetry::server_fault(code) {
            span.record("otel.status_code", "ERROR");
        }
        tracing::info!(
            target: crate::telemetry::REQUEST_TARGET,
            method,
            code = crate::client::code_name(code),
            latency_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            tenant = tenant.map(tracing::field::display),
            incident = incident.map(tracing::field::display),
            "rpc"
        );
        result
    }
}
