//! `loadgen webhooks`: webhook delivery beside the messaging scenario.
//!
//! A release `pypes` (next to `loadgen`) on a fresh data directory, set to
//! allow loopback endpoints; 5 tenants with 20 Pypes each and Sessions in
//! every Pype; 100 receivers (HTTP/1.1, keep-alive, answering 204) in this
//! process, one endpoint per Pype filtered to `message.posted`, so every
//! message is delivered once. Alternating rounds of the messaging scenario
//! (PostMessage, `in_flight` requests in flight over all Sessions) without
//! endpoints and with the 100 endpoints registered: messages/s of each, the
//! drop, events/s delivered, and the delivery latency from the append
//! (`recorded_at_micros` in the body) to the request's arrival at the
//! receiver, p50 and p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use proto::api as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use crate::apibench::{ADMIN, authed, drive, pct, start_pypes_with};

const TENANTS: usize = 5;
const PYPES_PER_TENANT: usize = 20;

struct Tenant {
    key: String,
    user: String,
    pypes: Vec<String>,
}

/// What the receivers saw.
#[derive(Default)]
struct Seen {
    count: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The number after `"recorded_at_micros":` in a body.
fn recorded_at(body: &[u8]) -> Option<i64> {
    let key = b"\"recorded_at_micros\":";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = body[at..].iter().copied().take_while(|c| c.is_ascii_digit() || *c == b'-').collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn serve(mut s: TcpStream, seen: Arc<Seen>) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + length {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let arrived = now_micros();
        if let Some(at) = recorded_at(&buf[head_end + 4..head_end + 4 + length]) {
            seen.count.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = seen.latencies.lock() {
                l.push((arrived - at).clamp(0, u32::MAX as i64) as u32);
            }
        }
        buf.drain(..head_end + 4 + length);
        if s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

async fn receiver(seen: Arc<Seen>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/hooks", listener.local_addr()?.port());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, seen.clone()));
        }
    });
    Ok(url)
}

async fn tenant(ch: &Channel, n: usize, sessions_per_pype: usize) -> Result<(Tenant, Vec<String>)> {
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(ch.clone());
    let mut pypes = pb::pype_service_client::PypeServiceClient::new(ch.clone());
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(ch.clone());
    let mut sessions = pb::session_service_client::SessionServiceClient::new(ch.clone());
    let key = tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: format!("Bench {n}"), ..Default::default() }))
        .await?
        .into_inner()
        .api_key;
    let user = subjects
        .register_subject(authed(
            &key,
            pb::RegisterSubjectRequest {
                username: "bench".into(),
                email: "b@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .subject_id;
    let mut ids = Vec::new();
    let mut session_ids = Vec::new();
    for p in 0..PYPES_PER_TENANT {
        let pype = pypes
            .create_pype(authed(&key, pb::CreatePypeRequest { name: format!("P{p}"), ..Default::default() }))
            .await?
            .into_inner()
            .pype_id;
        for _ in 0..sessions_per_pype {
            let s = sessions
                .start_session(authed(
                    &key,
                    pb::StartSessionRequest {
                        pype_id: pype.clone(),
                        end_user_id: user.clone(),
                        timers: None,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .session_id;
            session_ids.push(s);
        }
        ids.push(pype);
    }
    Ok((Tenant { key, user, pypes: ids }, session_ids))
}

/// (tenant index, Session id) of every Session.
type Sessions = Arc<Vec<(usize, String)>>;

/// The messaging scenario for `run`: `in_flight` requests at once as fast
/// as they are answered (`rate` 0), or offered at `rate` per second (open
/// loop: request i is due at start + i / rate); (messages/s, latencies).
async fn messaging(
    ch: &Channel,
    tenants: &Arc<Vec<Tenant>>,
    sessions: &Sessions,
    in_flight: usize,
    run: Duration,
    rate: f64,
) -> Result<(f64, Vec<u32>)> {
    let client = pb::session_service_client::SessionServiceClient::new(ch.clone());
    let (tenants, sessions) = (tenants.clone(), sessions.clone());
    let started = tokio::time::Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    // Each request's own latency (from its due time when paced, so the
    // wait for its turn is not counted but a late start is).
    let own = Arc::new(std::sync::Mutex::new(Vec::new()));
    let own2 = own.clone();
    let (rate_done, _) = drive(in_flight, run, move |r| {
        let (issued, due, own) = (issued.clone(), rate, own2.clone());
        let (mut c, tenants, sessions) = (client.clone(), tenants.clone(), sessions.clone());
        async move {
            let mut t0 = tokio::time::Instant::now();
            if due > 0.0 {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                let at = started + Duration::from_secs_f64(i as f64 / due);
                tokio::time::sleep_until(at).await;
                t0 = at;
            }
            let (t, session) = &sessions[(r % sessions.len() as u64) as usize];
            let t = &tenants[*t];
            c.post_message(authed(
                &t.key,
                pb::PostMessageRequest {
                    session_id: session.clone(),
                    sender_id: t.user.clone(),
                    body: "x".repeat(256),
                    ..Default::default()
                },
            ))
            .await?;
            if let Ok(mut own) = own.lock() {
                own.push(t0.elapsed().as_micros() as u32);
            }
            Ok(())
        }
    })
    .await?;
    let own = own.lock().map(|l| l.clone()).unwrap_or_default();
    Ok((rate_done, own))
}

pub async fn run(
    dir: &std::path::Path,
    seconds: f64,
    rounds: usize,
    in_flight: usize,
    sessions_per_pype: usize,
    rate: f64,
) -> Result<()> {
    let config = dir.join("pypes.toml");
    std::fs::write(&config, "[integrations]\nallow_loopback = true\nwebhook_max_in_flight = 8\n")?;
    let pypes = start_pypes_with(&dir.join("data"), 100_000, &[("PYPES_CONFIG", config.to_str().context("path")?)])?;
    pypes.ready().await?;
    let ch = Channel::from_shared(pypes.addr.clone())?.connect().await?;
    let mut tenants = Vec::new();
    let mut sessions = Vec::new();
    for n in 0..TENANTS {
        let (t, s) = tenant(&ch, n, sessions_per_pype).await?;
        sessions.extend(s.into_iter().map(|s| (n, s)));
        tenants.push(t);
    }
    let (tenants, sessions): (Arc<Vec<Tenant>>, Sessions) = (Arc::new(tenants), Arc::new(sessions));
    let seen = Arc::new(Seen::default());
    let mut urls = Vec::new();
    for _ in 0..TENANTS * PYPES_PER_TENANT {
        urls.push(receiver(seen.clone()).await?);
    }
    println!(
        "# {} tenants x {} Pypes x {} Sessions; {} receivers; {in_flight} PostMessage in flight{}; {seconds} s rounds",
        TENANTS,
        PYPES_PER_TENANT,
        sessions_per_pype,
        urls.len(),
        if rate > 0.0 { format!(", offered at {rate:.0}/s") } else { " (as fast as answered)".into() }
    );
    let run = Duration::from_secs_f64(seconds);
    // Warm-up: every Session's actor and content key.
    messaging(&ch, &tenants, &sessions, in_flight, Duration::from_secs_f64(seconds.min(2.0)), 0.0).await?;
    let mut webhooks = pb::webhook_service_client::WebhookServiceClient::new(ch.clone());
    let (mut alone, mut beside, mut delivered_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p50s, mut p99s, mut drain_ms) = (Vec::new(), Vec::new(), Vec::new());
    // Round 0 warms up (the workers' first feeds, connections, the blocking
    // pool) and is printed but not counted.
    for round in 0..=rounds {
        let (r, mut post_alone) = messaging(&ch, &tenants, &sessions, in_flight, run, rate).await?;
        alone.push(r);
        post_alone.sort_unstable();
        // Register the 100 endpoints, one per Pype.
        let mut ids = Vec::new();
        for (n, t) in tenants.iter().enumerate() {
            for (p, pype) in t.pypes.iter().enumerate() {
                let r = webhooks
                    .create_webhook(authed(
                        &t.key,
                        pb::CreateWebhookRequest {
                            url: urls[n * PYPES_PER_TENANT + p].clone(),
                            description: "bench".into(),
                            types: vec!["message.posted".into()],
                            pype_id: pype.clone(),
                        },
                    ))
                    .await?
                    .into_inner();
                ids.push((n, r.webhook.context("webhook")?.webhook_id));
            }
        }
        // Let the workers open their feeds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = seen.count.load(Ordering::Relaxed);
        if let Ok(mut l) = seen.latencies.lock() {
            l.clear();
        }
        let started = Instant::now();
        let (r, mut posted) = messaging(&ch, &tenants, &sessions, in_flight, run, rate).await?;
        let sent = posted.len() as u64;
        posted.sort_unstable();
        beside.push(r);
        // Wait for the deliveries to drain (at most 60 s).
        let posted_until = Instant::now();
        let mut last = seen.count.load(Ordering::Relaxed);
        while posted_until.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = seen.count.load(Ordering::Relaxed);
            if now == last && now - before >= sent {
                break;
            }
            last = now;
        }
        let got = seen.count.load(Ordering::Relaxed) - before;
        let elapsed = started.elapsed().as_secs_f64();
        drain_ms.push(posted_until.elapsed().as_millis() as u64);
        delivered_rates.push(got as f64 / elapsed);
        let mut l = seen.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        println!(
            "# {} {round}: alone {:.0}/s (PostMessage p99 {} ms), with webhooks {:.0}/s (p99 {} ms), delivered {got} of {sent} ({:.0}/s), after the append p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            if round == 0 { "warm-up" } else { "round" },
            alone.last().copied().unwrap_or(0.0),
            pct(&post_alone, 0.99) / 1000,
            r,
            pct(&posted, 0.99) / 1000,
            got as f64 / elapsed,
            pct(&l, 0.5) / 1000,
            pct(&l, 0.9) / 1000,
            pct(&l, 0.99) / 1000,
            pct(&l, 0.999) / 1000,
            l.last().copied().unwrap_or(0) / 1000,
        );
        if round > 0 {
            p50s.push(pct(&l, 0.5));
            p99s.push(pct(&l, 0.99));
        } else {
            alone.pop();
            beside.pop();
            delivered_rates.pop();
            drain_ms.pop();
        }
        for (n, id) in ids {
            webhooks.delete_webhook(authed(&tenants[n].key, pb::GetWebhookRequest { webhook_id: id })).await?;
        }
    }
    alone.sort_by(f64::total_cmp);
    beside.sort_by(f64::total_cmp);
    delivered_rates.sort_by(f64::total_cmp);
    p50s.sort_unstable();
    p99s.sort_unstable();
    let (a, b) = (alone[rounds / 2], beside[rounds / 2]);
    println!(
        "BENCH webhooks endpoints={} offered={rate:.0} messages_alone={a:.0} messages_with_webhooks={b:.0} drop_pct={:.1} delivered_per_s={:.0} p50_ms={:.1} p99_ms={:.1} p99_worst_round_ms={:.1} drain_ms={}",
        urls.len(),
        (1.0 - b / a) * 100.0,
        delivered_rates[rounds / 2],
        p50s[rounds / 2] as f64 / 1000.0,
        p99s[rounds / 2] as f64 / 1000.0,
        p99s.last().copied().unwrap_or(0) as f64 / 1000.0,
        drain_ms.iter().max().copied().unwrap_or(0),
    );
    Ok(())
}
