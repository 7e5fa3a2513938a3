//! Logs and traces: the process's one tracing subscriber.
//!
//! Logs go to stderr as text (colour only on a terminal, never with
//! `NO_COLOR`) or as one JSON object per line (`--log-format json`), at
//! the level `RUST_LOG` gives (default `info` for `serve`, `warn` for the
//! tools). Every RPC writes one line on the `pypes::request` target
//! (method, code, latency, tenant, incident; never personal data).
//!
//! With an OTLP endpoint configured, the spans of the request path
//! (target [`SPAN_TARGET`]: the RPC, the actor's batch, sealing, the
//! append, the log's commit and its fsync) are exported over OTLP/gRPC
//! by a batch processor on a runtime of its own, so a slow collector
//! never holds up a request. Without one, those spans are disabled at
//! their call sites and cost nothing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The target of every span pypes exports (the crates' spans use it, so
/// the exporter's filter is one comparison).
pub const SPAN_TARGET: &str = eventlog::SPAN_TARGET;

/// The target of the request log's lines.
pub const REQUEST_TARGET: &str = "pypes::request";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (colour only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

/// Where traces go.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// An OTLP/gRPC collector, `http://host:4317` or `https://…`.
    pub endpoint: String,
    /// A CA certificate (PEM) for an `https` endpoint (default: the
    /// system's roots).
    pub ca_cert: Option<PathBuf>,
    /// The share of traces kept (0 to 1; a trace's spans are kept or
    /// dropped together). None: the SDK's default (`OTEL_TRACES_SAMPLER`,
    /// else every trace).
    pub sample_ratio: Option<f64>,
}

/// What the subscriber is set up with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    pub log_format: LogFormat,
    pub otlp: Option<Otlp>,
}

/// Keeps the exporter alive; dropping it flushes the spans not sent yet.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    /// The exporter's runtime (its channel's tasks live there).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("warning: traces not flushed at exit: {e}");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The `RUST_LOG` filter, or `default_level`; a `RUST_LOG` that does not
/// parse is an error naming it (never a silent fallback).
fn filter(default_level: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let v = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return Ok(tracing_subscriber::EnvFilter::new(default_level)),
    };
    let refuse = |why: String| {
        anyhow::anyhow!(
            "RUST_LOG={v:?}: {why}; give levels like RUST_LOG=info or RUST_LOG=info,pypes::request=off \
             (docs/operations.md, Logs)"
        )
    };
    // EnvFilter takes `target=nonsense` as a target named so: a misspelt
    // level would silently log nothing. Every `=level` must be a level.
    for directive in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if let Some((_, level)) = directive.rsplit_once('=')
            && !directive.ends_with(']')
            && !is_level(level)
        {
            return Err(refuse(format!(
                "{level:?} in {directive:?} is not a level (trace, debug, info, warn, error, off)"
            )));
        }
    }
    tracing_subscriber::EnvFilter::builder().parse(&v).map_err(|e| refuse(format!("does not parse ({e})")))
}

fn is_level(s: &str) -> bool {
    ["trace", "debug", "info", "warn", "error", "off", "0", "1", "2", "3", "4", "5"]
        .iter()
        .any(|l| s.trim().eq_ignore_ascii_case(l))
}

/// Installs the process's subscriber. Call once, before any work.
pub fn init(telemetry: &Telemetry, default_level: &str) -> anyhow::Result<Guard> {
    use std::io::IsTerminal;
    let filter = filter(default_level)?;
    let logs = match telemetry.log_format {
        LogFormat::Text => {
            // Colour only on a terminal, and never with NO_COLOR set
            // (https://no-color.org): files and the journal get plain text.
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            tracing_subscriber::fmt::layer().with_ansi(colour).with_writer(std::io::stderr).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    let mut guard = Guard { provider: None, runtime: None };
    let traces = match &telemetry.otlp {
        None => None,
        Some(otlp) => {
            let (provider, runtime) = exporter(otlp)?;
            let tracer = provider.tracer("pypes");
            guard.provider = Some(provider);
            guard.runtime = Some(runtime);
            let only_ours = tracing_subscriber::filter::filter_fn(|m| m.is_span() && m.target() == SPAN_TARGET);
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_ours))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
    Ok(guard)
}

/// The OTLP/gRPC exporter behind a batch processor, its channel on a
/// one-thread runtime of its own.
fn exporter(otlp: &Otlp) -> anyhow::Result<(SdkTracerProvider, tokio::runtime::Runtime)> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let what = || format!("telemetry.otlp_endpoint {:?}", otlp.endpoint);
    let uri: http::Uri = otlp.endpoint.parse().map_err(|e| {
        anyhow::anyhow!("{}: not a URL ({e}); give http://collector:4317 or https://collector:4317", what())
    })?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => anyhow::bail!("{}: the scheme must be http or https (OTLP over gRPC, port 4317)", what()),
    };
    if uri.host().is_none() {
        anyhow::bail!("{}: no host; give http://collector:4317", what());
    }
    if otlp.ca_cert.is_some() && !tls {
        anyhow::bail!("{}: telemetry.otlp_ca_cert is set but the endpoint is not https", what());
    }
    let mut endpoint = Endpoint::from(uri).timeout(Duration::from_secs(10)).connect_timeout(Duration::from_secs(5));
    if tls {
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &otlp.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading telemetry.otlp_ca_cert {}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(config).with_context(what)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .context("starting the trace exporter's runtime")?;
    let channel = {
        let _entered = runtime.enter();
        endpoint.connect_lazy()
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(what)?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("pypes")
        .with_attribute(opentelemetry::KeyValue::new("service.version", crate::version::VERSION))
        .build();
    let mut provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource);
    if let Some(ratio) = otlp.sample_ratio {
        if !(0.0..=1.0).contains(&ratio) {
            anyhow::bail!("telemetry.trace_sample_ratio: {ratio}; 0 to 1 (0.01 keeps one trace in a hundred)");
        }
        use opentelemetry_sdk::trace::Sampler;
        provider = provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
    }
    let provider = provider.build();
    Ok((provider, runtime))
}

tokio::task_local! {
    /// The caller's trace context (W3C `traceparent`) for the call being
    /// served, set by [`TraceParent`].
    static REMOTE: Option<opentelemetry::Context>;
}

/// Makes `span` a child of the caller's trace when the call carried a
/// W3C `traceparent` header (and traces are exported).
pub fn adopt_remote_parent(span: &tracing::Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    if let Ok(Some(cx)) = REMOTE.try_with(Clone::clone) {
        span.set_parent(cx);
    }
}

/// A tower layer for the gRPC server: reads a W3C `traceparent` (and
/// `tracestate`) from each call's headers so the call's `rpc` span
/// continues the caller's trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceParentLayer;

impl<S> tower::Layer<S> for TraceParentLayer {
    type Service = TraceParent<S>;
    fn layer(&self, inner: S) -> TraceParent<S> {
        TraceParent(inner)
    }
}

#[derive(Clone, Debug)]
pub struct TraceParent<S>(S);

struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, B> tower::Service<http::Request<B>> for TraceParent<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<Option<opentelemetry::Context>, S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use opentelemetry::propagation::TextMapPropagator;
        let remote = request.headers().contains_key("traceparent").then(|| {
            opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Headers(request.headers()))
        });
        REMOTE.scope(remote, self.0.call(request))
    }
}

/// The gRPC status codes that mean the server failed (an error span; the
/// same four the PypesServerErrors alert counts); the others are the
/// caller's (the span is fine).
pub fn server_fault(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss | tonic::Code::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_told_from_misspellings() {
        assert!(is_level("INFO") && is_level("off") && is_level("3"));
        assert!(!is_level("loudest") && !is_level("") && !is_level("infos"));
    }

    #[test]
    fn bad_endpoints_are_refused_naming_the_setting() {
        for (endpoint, says) in [
            ("collector:4317", "scheme must be http or https"),
            ("ftp://collector:4317", "scheme must be http or https"),
            ("http://", "not a URL"),
        ] {
            let e = exporter(&Otlp { endpoint: endpoint.into(), ca_cert: None, sample_ratio: None })
                .map(|_| ())
                .expect_err(endpoint)
                .to_string();
            assert!(e.contains("telemetry.otlp_endpoint") && e.contains(says), "{endpoint}: {e}");
        }
        let e =
            exporter(&Otlp { endpoint: "http://c:4317".into(), ca_cert: Some("ca.pem".into()), sample_ratio: None })
                .map(|_| ())
                .expect_err("CA without https")
                .to_string();
        assert!(e.contains("not https"), "{e}");
        let e = exporter(&Otlp { endpoint: "http://c:4317".into(), ca_cert: None, sample_ratio: Some(1.5) })
            .map(|_| ())
            .expect_err("ratio above 1")
            .to_string();
        assert!(e.contains("trace_sample_ratio") && e.contains("0 to 1"), "{e}");
    }
}
