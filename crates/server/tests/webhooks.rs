//! Webhooks through the API, against receivers started here on loopback:
//! in order per Session while some attempts fail and others run
//! concurrently; at least once, a repeat only with the same event id and
//! body; every request signed and fresh; a receiver down across a
//! `kill -9` of the server gets the backlog after the restart; a dead
//! endpoint beside a live one leaves the live one's latency alone; 72 hours
//! of failure (on a moved clock) pause an endpoint, reported by
//! `GetWebhook`, `/metrics` and the audit trail, and resuming delivers the
//! rest; rotation signs with both secrets; redelivery of a time range;
//! refused destinations (server-side request forgery) and bad requests.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::receiver::{DOWN, FLAKY, Got, HANG, Receiver, UP, now_micros};
use common::{Clients, Setup, authed, clients, post, setup};
use proto::api as pb;
use tonic::Code;
use tonic::transport::Channel;

fn webhooks(ch: &Channel) -> pb::webhook_service_client::WebhookServiceClient<Channel> {
    pb::webhook_service_client::WebhookServiceClient::new(ch.clone())
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

/// A config that allows loopback endpoints and retries quickly.
fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("pypes.toml");
    std::fs::write(&config, format!("[integrations]\nallow_loopback = true\nwebhook_first_retry_ms = 200\n{extra}"))
        .unwrap();
    config
}

async fn create(ch: &Channel, key: &str, url: &str, types: &[&str]) -> (String, String) {
    let r = webhooks(ch)
        .create_webhook(authed(
            key,
            pb::CreateWebhookRequest {
                url: url.into(),
                description: "test".into(),
                types: types.iter().map(|t| t.to_string()).collect(),
                pype_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (r.webhook.unwrap().webhook_id, r.secret)
}

/// Asks for a redelivery of `[from, to)`.
async fn redeliver(ch: &Channel, key: &str, id: &str, from: i64, to: i64) {
    let request = pb::RedeliverWebhookRequest { webhook_id: id.to_string(), from_micros: from, to_micros: to };
    webhooks(ch).redeliver_webhook(authed(key, request)).await.unwrap();
}

async fn get(ch: &Channel, key: &str, id: &str) -> pb::WebhookInfo {
    webhooks(ch).get_webhook(authed(key, pb::GetWebhookRequest { webhook_id: id.into() })).await.unwrap().into_inner()
}

async fn another_session(c: &mut Clients, s: &Setup) -> String {
    c.sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: s.pype.clone(),
                end_user_id: s.user.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id
}

/// Posts `n` messages into each Session, the Sessions concurrently.
async fn post_concurrently(grpc: &str, s: &Setup, sessions: &[String], n: usize, tag: &str) {
    let mut tasks = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        let mut c = clients(grpc).await;
        let mut one = post(s, "");
        one.session_id = session.clone();
        let (key, tag) = (s.key.clone(), format!("{tag}-{i}"));
        tasks.push(tokio::spawn(async move {
            for k in 0..n {
                let mut m = one.clone();
                m.body = format!("{tag}-{k}");
                c.sessions.post_message(authed(&key, m)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// What every receiver's record must hold to: signed with one of
/// `secrets` within 5 minutes; a repeated event id with the same body; in
/// each Session, no request for an event before the one before it (its
/// session_seq - 1, when the endpoint gets every type) was acknowledged.
fn check(got: &[Got], secrets: &[&str], every_type: bool) {
    check_at(got, secrets, every_type, 0)
}

/// [`check`] for a server whose clock is `offset` seconds ahead.
fn check_at(got: &[Got], secrets: &[&str], every_type: bool, offset: i64) {
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    for g in got {
        let sig = &g.headers["pypes-signature"];
        let now = g.at_micros / 1_000_000 + offset;
        assert!(
            secrets.iter().any(|s| webhooks::sign::verify(sig, s.as_bytes(), &g.body, now, 300).is_ok()),
            "a request whose signature does not verify: {sig}"
        );
        let id = g.headers["pypes-event-id"].clone();
        assert_eq!(id, g.json()["event_id"], "the header names the body's event");
        let prior = bodies.entry(id).or_insert_with(|| g.body.clone());
        assert_eq!(prior, &g.body, "a repeat with another body");
    }
    if every_type {
        // Per Session: acknowledged sequence numbers, in arrival order.
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        for g in got {
            let v = g.json();
            let Some(session) = v["session_id"].as_str() else { continue };
            let seq = v["session_seq"].as_u64().unwrap();
            // The endpoint's first event of a Session may be past its start.
            let done = *acked.entry(session.to_string()).or_insert(seq - 1);
            assert!(seq <= done + 1, "session {session}: event {seq} sent before {} was acknowledged", done + 1);
            if g.acked && seq == done + 1 {
                acked.insert(session.to_string(), seq);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_order_signed_at_least_once_and_a_backlog_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // A short queue and a small shared ring: an endpoint that is down falls
    // behind the ring and reads its own feed, then comes back to the ring.
    let cfg = config(dir.path(), "webhook_max_queued = 10\nwebhook_ring_entries = 32\n");
    let data = dir.path().join("data");
    let env = [("PYPES_CONFIG", cfg.to_str().unwrap())];
    let mut server = common::start_with(&data, &env);
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "ada").await;
    let mut sessions = vec![s.session.clone()];
    for _ in 0..3 {
        sessions.push(another_session(&mut c, &s).await);
    }
    let ch = channel(&server.grpc).await;
    // One receiver that fails a third of its requests, one that takes
    // only messages.
    let flaky = Receiver::start(FLAKY).await;
    let only_messages = Receiver::start(UP).await;
    let (flaky_id, flaky_secret) = create(&ch, &s.key, &flaky.url, &[]).await;
    let (_, messages_secret) = create(&ch, &s.key, &only_messages.url, &["message.posted"]).await;

    post_concurrently(&server.grpc, &s, &sessions, 50, "a").await;
    flaky.wait_acked("message.posted", 200, Duration::from_secs(120)).await;
    only_messages.wait_acked("message.posted", 200, Duration::from_secs(60)).await;
    let got = flaky.got();
    check(&got, &[&flaky_secret], true);
    assert!(got.iter().any(|g| !g.acked), "the receiver failed some requests");
    assert!(
        got.iter().any(|g| g.headers["pypes-delivery-attempt"] != "1"),
        "a failed request was retried (attempt > 1)"
    );
    check(&only_messages.got(), &[&messages_secret], false);
    assert!(only_messages.got().iter().all(|g| g.headers["pypes-event-type"] == "message.posted"));
    // Every message of each Session, in its order, came exactly once acknowledged.
    let acked: Vec<serde_json::Value> = only_messages.got().iter().filter(|g| g.acked).map(Got::json).collect();
    for (i, session) in sessions.iter().enumerate() {
        let bodies: Vec<String> = acked
            .iter()
            .filter(|v| v["session_id"] == session.as_str())
            .map(|v| v["data"]["message_posted"]["body"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..50).map(|k| format!("a-{i}-{k}")).collect();
        assert_eq!(bodies, want, "session {i}");
    }
    let info = get(&ch, &s.key, &flaky_id).await;
    let st = info.status.unwrap();
    assert!(st.delivering_here && st.delivered >= 200 && st.failed_attempts > 0, "{st:?}");

    // The receiver goes down; a backlog builds; the server is killed.
    flaky.mode.store(DOWN, Ordering::Relaxed);
    post_concurrently(&server.grpc, &s, &sessions, 25, "b").await;
    let st = get(&ch, &s.key, &flaky_id).await.status.unwrap();
    assert!(st.last_error.contains("503"), "{st:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    flaky.mode.store(UP, Ordering::Relaxed);
    let server = common::start_with(&data, &env);
    flaky.wait_acked("message.posted", 300, Duration::from_secs(120)).await;
    check(&flaky.got(), &[&flaky_secret], true);
    // The backlog after the restart was read through the worker's own feed,
    // and then the worker went back to the shared ring.
    post_concurrently(&server.grpc, &s, &sessions, 5, "c").await;
    flaky.wait_acked("message.posted", 320, Duration::from_secs(60)).await;
    check(&flaky.got(), &[&flaky_secret], true);
    let text = common::metrics_text(&server.http).await;
    let read = |source: &str| -> u64 {
        let line = format!("pypes_webhook_events_read_total{{source=\"{source}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).unwrap().parse().unwrap()
    };
    assert!(read("own") > 0 && read("shared") > 0, "own {} shared {}", read("own"), read("shared"));
    let ch = channel(&server.grpc).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = get(&ch, &s.key, &flaky_id).await.status.unwrap();
        if st.queued == 0 && st.last_error.is_empty() {
            assert!(st.delivered_through_position.is_some(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every event the feed has for the tenant reached the receiver.
    let ids = flaky.acked_ids();
    let mut feed = pb::integration_service_client::IntegrationServiceClient::new(ch.clone())
        .subscribe_tenant_events(authed(
            &s.key,
            pb::SubscribeTenantEventsRequest {
                from: Some(pb::subscribe_tenant_events_request::From::FromStart(true)),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut after_creation = 0;
    while let Some(m) = feed.message().await.unwrap() {
        match m.item.unwrap() {
            pb::feed_message::Item::Event(e) => {
                if e.r#type == "message.posted" {
                    after_creation += 1;
                    assert!(ids.contains(&e.event_id), "event {} ({}) never delivered", e.event_id, e.r#type);
                }
            }
            _ => break,
        }
    }
    assert_eq!(after_creation, 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_endpoint_does_not_delay_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let server = common::start_with(&dir.path().join("data"), &[("PYPES_CONFIG", cfg.to_str().unwrap())]);
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "ada").await;
    let other = setup(&mut c, "bob").await;
    let ch = channel(&server.grpc).await;
    let dead = Receiver::start(HANG).await;
    let live = Receiver::start(UP).await;
    let live_other = Receiver::start(UP).await;
    let (dead_id, _) = create(&ch, &s.key, &dead.url, &["message.posted"]).await;
    create(&ch, &s.key, &live.url, &["message.posted"]).await;
    create(&ch, &other.key, &live_other.url, &["message.posted"]).await;
    let sessions = vec![s.session.clone(), another_session(&mut c, &s).await];
    let (a, b) = tokio::join!(
        post_concurrently(&server.grpc, &s, &sessions, 100, "x"),
        post_concurrently(&server.grpc, &other, std::slice::from_ref(&other.session), 100, "y"),
    );
    let _ = (a, b);
    live.wait_acked("message.posted", 200, Duration::from_secs(60)).await;
    live_other.wait_acked("message.posted", 100, Duration::from_secs(60)).await;
    // Latency from the append (recorded_at) to the request's arrival.
    let p99 = |r: &Receiver| {
        let mut l: Vec<i64> =
            r.got().iter().map(|g| g.at_micros - g.json()["recorded_at_micros"].as_i64().unwrap()).collect();
        l.sort();
        l[(l.len() * 99 / 100).min(l.len() - 1)]
    };
    let (p_live, p_other) = (p99(&live), p99(&live_other));
    println!(
        "p99 after the append: live beside a dead one {} ms, another tenant's {} ms",
        p_live / 1000,
        p_other / 1000
    );
    // A dead endpoint's attempts last 10 s each; had the live endpoints
    // waited behind them, their latency would be at least that.
    assert!(p_live < 5_000_000 && p_other < 5_000_000, "{p_live} µs, {p_other} µs");
    assert!(dead.acked_ids().is_empty());
    let st = get(&ch, &s.key, &dead_id).await.status.unwrap();
    assert_eq!(st.delivered, 0);
    // The hanging receiver holds its attempts (at most 8 in flight, one
    // per Session) until the 10 s deadline names them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = get(&ch, &s.key, &dead_id).await.status.unwrap();
        if !st.last_error.is_empty() {
            assert!(st.last_error.contains("no answer within 10 s"), "{st:?}");
            assert!(st.failing_since_micros > 0 && st.queued > 0, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seventy_two_hours_of_failure_pause_and_resume_rotation_and_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let offset = dir.path().join("clock-offset");
    std::fs::write(&offset, "0").unwrap();
    let server = common::start_with(
        &dir.path().join("data"),
        &[("PYPES_CONFIG", cfg.to_str().unwrap()), ("PYPES_DEV_CLOCK_OFFSET_FILE", offset.to_str().unwrap())],
    );
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "ada").await;
    let ch = channel(&server.grpc).await;
    let r = Receiver::start(DOWN).await;
    let (id, secret) = create(&ch, &s.key, &r.url, &["message.posted"]).await;
    c.sessions.post_message(authed(&s.key, post(&s, "one"))).await.unwrap();
    c.sessions.post_message(authed(&s.key, post(&s, "two"))).await.unwrap();
    // Failing, but not for 72 hours yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.got().len() < 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!get(&ch, &s.key, &id).await.paused);
    // 73 hours later (the server's clock moves), the next failure pauses it.
    std::fs::write(&offset, (73 * 3600).to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = get(&ch, &s.key, &id).await;
        if info.paused {
            break info;
        }
        assert!(Instant::now() < deadline, "not paused: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(info.paused_reason.contains("72 hours") && info.paused_reason.contains("503"), "{info:?}");
    let text = common::metrics_text(&server.http).await;
    assert_eq!(common::metric(&text, "pypes_webhook_pauses_total"), 1);
    assert!(text.contains("pypes_webhook_endpoints{state=\"paused\"} 1"), "{text}");
    // Paused: nothing is sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = r.got().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.got().len(), before, "a paused endpoint got requests");

    // Resumed with the receiver up: both messages, in order.
    r.mode.store(UP, Ordering::Relaxed);
    let info = webhooks(&ch)
        .resume_webhook(authed(&s.key, pb::GetWebhookRequest { webhook_id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(!info.paused);
    r.wait_acked("message.posted", 2, Duration::from_secs(30)).await;
    let acked: Vec<String> = r
        .got()
        .iter()
        .filter(|g| g.acked)
        .map(|g| g.json()["data"]["message_posted"]["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(acked, ["one", "two"]);
    check_at(&r.got()[3..], &[&secret], false, 73 * 3600);

    // Rotation: both secrets sign during the overlap.
    let rotated = webhooks(&ch)
        .rotate_webhook_secret(authed(
            &s.key,
            pb::RotateWebhookSecretRequest { webhook_id: id.clone(), overlap_secs: 0 },
        ))
        .await
        .unwrap()
        .into_inner();
    let new_secret = rotated.secret;
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert!(rotated.webhook.unwrap().previous_secret_until_micros > 0);
    c.sessions.post_message(authed(&s.key, post(&s, "three"))).await.unwrap();
    r.wait_acked("message.posted", 3, Duration::from_secs(30)).await;
    let last = r.got().into_iter().rfind(|g| g.acked).unwrap();
    let sig = &last.headers["pypes-signature"];
    assert_eq!(sig.matches("v1=").count(), 2, "{sig}");
    for s in [&secret, &new_secret] {
        webhooks::sign::verify(sig, s.as_bytes(), &last.body, last.at_micros / 1_000_000 + 73 * 3600, 300).unwrap();
    }

    // Redelivery of a time range: the same ids again, marked.
    let before = r.got().len();
    // The range holds the three messages (recorded before and after the
    // server's clock moved 73 hours).
    let (from, to) = (now_micros() - 3_600_000_000, now_micros() + 74 * 3_600_000_000);
    redeliver(&ch, &s.key, &id, from, to).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.got().len() < before + 3 {
        assert!(Instant::now() < deadline, "redelivered {}", r.got().len() - before);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = r.got()[before..].to_vec();
    assert!(again.iter().all(|g| g.headers.get("pypes-redelivery").map(String::as_str) == Some("true")));
    let first: Vec<String> =
        r.got()[..before].iter().filter(|g| g.acked).map(|g| g.headers["pypes-event-id"].clone()).collect();
    let second: Vec<String> = again.iter().map(|g| g.headers["pypes-event-id"].clone()).collect();
    assert_eq!(first, second, "the same events, in the same order");

    // A redelivery survives a restart: asked while the receiver is down,
    // the server killed before it sent anything, and after the next start
    // it goes on by itself.
    r.mode.store(DOWN, Ordering::Relaxed);
    let before = r.got().len();
    redeliver(&ch, &s.key, &id, from, to).await;
    r.wait_requests_past(before).await;
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(r.got()[before..].iter().all(|g| !g.acked));
    r.mode.store(UP, Ordering::Relaxed);
    let server = common::start_with(
        &dir.path().join("data"),
        &[("PYPES_CONFIG", cfg.to_str().unwrap()), ("PYPES_DEV_CLOCK_OFFSET_FILE", offset.to_str().unwrap())],
    );
    let mut c = clients(&server.grpc).await;
    let ch = channel(&server.grpc).await;
    let redelivered = |from: usize| -> Vec<String> {
        r.got()[from..]
            .iter()
            .filter(|g| g.acked && g.headers.contains_key("pypes-redelivery"))
            .map(|g| g.headers["pypes-event-id"].clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while redelivered(before).len() < 3 {
        assert!(Instant::now() < deadline, "redelivered after the restart: {:?}", redelivered(before));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redelivered(before), first, "the same events, in the same order, after the restart");
    assert_eq!(get(&ch, &s.key, &id).await.status.unwrap().redelivered, 3);

    // A newer request replaces a running one: the first (the whole range)
    // waits on the receiver being down; the second asks only for the last
    // message; once the receiver is up, only that one comes.
    r.mode.store(DOWN, Ordering::Relaxed);
    let before = r.got().len();
    redeliver(&ch, &s.key, &id, from, to).await;
    r.wait_requests_past(before).await;
    let last = r.got()[..before].iter().rfind(|g| g.acked).unwrap().json();
    redeliver(&ch, &s.key, &id, last["recorded_at_micros"].as_i64().unwrap(), to).await;
    r.mode.store(UP, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redelivered(before).is_empty() {
        assert!(Instant::now() < deadline, "the second redelivery sent nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(redelivered(before), [last["event_id"].as_str().unwrap().to_string()], "only the newer request's event");
    let bad = webhooks(&ch)
        .redeliver_webhook(authed(
            &s.key,
            pb::RedeliverWebhookRequest { webhook_id: id.clone(), from_micros: 10, to_micros: 5 },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Deleted: nothing more is sent, and it is gone.
    webhooks(&ch).delete_webhook(authed(&s.key, pb::GetWebhookRequest { webhook_id: id.clone() })).await.unwrap();
    let n = r.got().len();
    c.sessions.post_message(authed(&s.key, post(&s, "four"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.got().len(), n);
    let gone =
        webhooks(&ch).get_webhook(authed(&s.key, pb::GetWebhookRequest { webhook_id: id.clone() })).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The pause is in the audit trail, by the system, naming the endpoint.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["audit", "trail", "--json", "--data-dir"])
        .arg(dir.path().join("data"))
        .envs(common::backend_env(&dir.path().join("data")))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    let paused: Vec<&serde_json::Value> =
        v["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "webhook.paused").collect();
    assert_eq!(paused.len(), 1, "{v}");
    assert_eq!(paused[0]["actor"], "system");
    assert!(paused[0]["target"].as_str().unwrap().contains(&id), "{}", paused[0]);
    assert!(paused[0]["detail"].as_str().unwrap().contains("503"), "{}", paused[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destinations_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    // The production defaults: no loopback, no private addresses.
    let server = common::start(&dir.path().join("data"));
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "ada").await;
    let other = setup(&mut c, "bob").await;
    let ch = channel(&server.grpc).await;
    let attempt = |url: &str, types: Vec<String>, pype: String| {
        let (ch, key, url) = (ch.clone(), s.key.clone(), url.to_string());
        async move {
            webhooks(&ch)
                .create_webhook(authed(
                    &key,
                    pb::CreateWebhookRequest { url, description: String::new(), types, pype_id: pype },
                ))
                .await
                .unwrap_err()
        }
    };
    for (url, says) in [
        ("http://127.0.0.1:9/h", "https://"),
        ("https://127.0.0.1/h", "loopback"),
        ("https://localhost/h", "loopback"),
        ("https://10.1.2.3/h", "private"),
        ("https://192.168.0.10/h", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/h", "loopback"),
        ("https://[fd00::1]/h", "unique"),
        ("https://100.64.0.1/h", "carrier"),
        ("https://user:pw@example.com/h", "password"),
        ("ftp://example.com/h", "https://"),
        ("not a url", "not a URL"),
        ("", "url"),
    ] {
        let e = attempt(url, vec![], String::new()).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().starts_with("url:") && e.message().contains(says), "{url}: {}", e.message());
    }
    let e = attempt("https://93.184.215.14/h", vec!["message.sent".into()], String::new()).await;
    assert!(e.code() == Code::InvalidArgument && e.message().contains("message.sent"), "{e:?}");
    let e = attempt("https://93.184.215.14/h", vec![], other.pype.clone()).await;
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A public address literal is accepted (nothing is sent until an event).
    let ok = webhooks(&ch)
        .create_webhook(authed(
            &s.key,
            pb::CreateWebhookRequest { url: "https://93.184.215.14/h".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    let id = ok.webhook.unwrap().webhook_id;
    // Another tenant cannot see or touch it.
    for code in [
        webhooks(&ch).get_webhook(authed(&other.key, pb::GetWebhookRequest { webhook_id: id.clone() })).await,
        webhooks(&ch).resume_webhook(authed(&other.key, pb::GetWebhookRequest { webhook_id: id.clone() })).await,
    ]
    .map(|r| r.unwrap_err().code())
    {
        assert_eq!(code, Code::NotFound);
    }
    let listed = webhooks(&ch).list_webhooks(authed(&other.key, pb::ListWebhooksRequest {})).await.unwrap();
    assert!(listed.into_inner().webhooks.is_empty());
    let e = webhooks(&ch)
        .rotate_webhook_secret(authed(
            &s.key,
            pb::RotateWebhookSecretRequest { webhook_id: id.clone(), overlap_secs: 8 * 86_400 },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // At most 20 endpoints.
    for _ in 1..20 {
        webhooks(&ch)
            .create_webhook(authed(
                &s.key,
                pb::CreateWebhookRequest { url: "https://93.184.215.14/h".into(), ..Default::default() },
            ))
            .await
            .unwrap();
    }
    let e = attempt("https://93.184.215.14/h", vec![], String::new()).await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let listed = webhooks(&ch).list_webhooks(authed(&s.key, pb::ListWebhooksRequest {})).await.unwrap().into_inner();
    assert_eq!(listed.webhooks.len(), 20);
}
