//! Logs and traces as an operator gets them: traces exported over OTLP to
//! a collector (a receiver this test runs), the request log in JSON, plain
//! text without colour codes off a terminal, and refusals of bad settings.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// A collector's trace service that keeps what it receives.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Starts the receiver on a free loopback port; its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        url
    }

    fn spans(&self) -> Vec<Span> {
        let got = self.got.lock().unwrap();
        got.iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.iter().cloned())
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        got.iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_message_is_one_trace_from_the_rpc_to_the_fsync() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(
        &dir.path().join("data"),
        &[("PYPES_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "otlp-canary-user").await;
    c.sessions.post_message(authed(&s.key, post(&s, "otlp-canary-body"))).await.unwrap();

    // Everything of the PostMessage has arrived once its fsync has.
    let deadline = Instant::now() + Duration::from_secs(30);
    let chain = loop {
        if let Some(chain) = post_message_chain(&receiver.spans()) {
            break chain;
        }
        assert!(Instant::now() < deadline, "no complete PostMessage trace; got {:#?}", names(&receiver.spans()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let chain_names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(chain_names, ["fsync", "eventlog.commit", "eventlog.append", "actor.batch", "PostMessage"]);
    let rpc = chain.last().unwrap();
    assert_eq!(attribute(rpc, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert!(rpc.parent_span_id.is_empty(), "the RPC is the trace's root");
    // Sealing is a child of the batch, next to the append.
    let spans = receiver.spans();
    let batch = &chain[3];
    assert!(
        spans.iter().any(|x| x.name == "seal" && x.parent_span_id == batch.span_id),
        "no seal span under the batch: {:#?}",
        names(&spans)
    );
    assert!(receiver.service_names().iter().all(|n| n == "pypes") && !receiver.service_names().is_empty());
    // A call that carries a W3C traceparent continues the caller's trace.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut request = authed(&s.key, post(&s, "otlp-canary-body"));
    request.metadata_mut().insert("traceparent", format!("00-{trace}-{parent}-01").parse().unwrap());
    c.sessions.post_message(request).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = receiver.spans();
        if let Some(rpc) = spans.iter().find(|x| x.name == "PostMessage" && hex(&x.trace_id) == trace) {
            assert_eq!(hex(&rpc.parent_span_id), parent, "the caller's span is the parent");
            break;
        }
        assert!(Instant::now() < deadline, "no PostMessage span in the caller's trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = receiver.spans();
    // No personal data in any span: names, attributes, events.
    let text = format!("{spans:?}");
    for canary in ["otlp-canary-body", "otlp-canary-user", "u@example.com"] {
        assert!(!text.contains(canary), "{canary} is in an exported span");
    }
    stop_cleanly(server);
}

/// The spans of one PostMessage from its fsync up to its RPC, following
/// parent ids; `None` until all of them arrived.
fn post_message_chain(spans: &[Span]) -> Option<Vec<Span>> {
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    spans.iter().filter(|s| s.name == "fsync").find_map(|fsync| {
        let mut chain = vec![fsync.clone()];
        let mut at = fsync;
        while !at.parent_span_id.is_empty() {
            at = by_id.get(at.parent_span_id.as_slice())?;
            assert_eq!(at.trace_id, fsync.trace_id, "a parent in another trace");
            chain.push(at.clone());
        }
        (at.name == "PostMessage").then_some(chain)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

/// Starts `pypes serve` with `env`, waits for it to exit; its stderr.
fn refused(data: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-key", ADMIN])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A start that is not refused would serve forever: give it 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pypes serve {args:?} with {env:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "started: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!data.exists(), "a refused start left {} behind", data.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_log_and_trace_settings_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let e = refused(&data, &["--otlp-endpoint", "collector:4317"], &[]);
    assert!(e.contains("telemetry.otlp_endpoint") && e.contains("http or https"), "{e}");
    let e = refused(&data, &[], &[("RUST_LOG", "pypes=loudest")]);
    assert!(e.contains("RUST_LOG") && e.contains("RUST_LOG=info"), "{e}");
    let e = refused(&data, &["--log-format", "xml"], &[]);
    assert!(e.contains("--log-format") && e.contains("json"), "{e}");
    let e = refused(&data, &["--otlp-ca-cert", "ca.pem"], &[]);
    assert!(e.contains("otlp_ca_cert") && e.contains("otlp_endpoint"), "{e}");
    let e = refused(&data, &["--plaintext-behind-mesh", "--tls-cert", "c", "--tls-key", "k"], &[]);
    assert!(e.contains("plaintext_behind_mesh") && e.contains("pick one"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_is_one_json_line_per_rpc_without_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("pypes.log");
    let server = start_logging_with(&dir.path().join("data"), &logs, &[("PYPES_LOG_FORMAT", "json")]);
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "log-canary-user").await;
    c.sessions.post_message(authed(&s.key, post(&s, "log-canary-body"))).await.unwrap();
    let mut wrong = post(&s, "log-canary-body");
    wrong.session_id = uuid::Uuid::now_v7().to_string();
    let refused = c.sessions.post_message(authed(&s.key, wrong)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    stop_cleanly(server);

    let text = std::fs::read_to_string(&logs).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "pypes::request").collect();
    let posts: Vec<&&serde_json::Value> = requests.iter().filter(|l| l["method"] == "PostMessage").collect();
    assert_eq!(posts.len(), 2, "{requests:#?}");
    assert_eq!(posts[0]["code"], "OK");
    assert_eq!(posts[0]["tenant"], s.tenant.as_str());
    assert!(posts[0]["latency_us"].as_u64().is_some() && posts[0]["timestamp"].is_string(), "{}", posts[0]);
    assert_eq!(posts[1]["code"], "NOT_FOUND");
    assert!(requests.iter().any(|l| l["method"] == "CreateTenant" && l["code"] == "OK" && l.get("tenant").is_none()));
    for l in &requests {
        let line = l.to_string();
        assert!(!line.contains("canary") && !line.contains("u@example.com"), "personal data in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("pypes.log");
    let server = start_logging(&dir.path().join("data"), &logs);
    let mut c = clients(&server.grpc).await;
    setup(&mut c, "someone").await;
    stop_cleanly(server);
    let text = std::fs::read_to_string(&logs).unwrap();
    assert!(text.contains("pypes::request") && text.contains("method=\"StartSession\""), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
}
