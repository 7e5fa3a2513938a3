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
//! receiver, p50 and p99. Beside the rates, the CPU time of the server
//! and of this process (which holds the receivers) per message in each
//! phase, from `/proc/<pid>/stat`: what a delivery costs each side, a
//! figure that moves less with the machine's other load than the rates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use proto::api as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use crate::apibench::{ADMIN, authed, cpu_seconds, drive, pct, start_pypes_with};

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
    /// The first request a receiver got, byte for byte (head and body):
    /// what the bare baseline sends.
    sample: std::sync::Mutex<Option<Vec<u8>>>,
}

/// CPU time of the server and of this process, in µs.
fn cpu_pair(server: u32) -> (f64, f64) {
    (cpu_seconds(Some(server)) * 1e6, cpu_seconds(None) * 1e6)
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
        if let Ok(mut sample) = seen.sample.lock()
            && sample.is_none()
        {
            *sample = Some(buf[..head_end + 4 + length].to_vec());
        }
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

/// The baseline: a bare HTTP/1.1 client (one kept-alive connection per
/// receiver, nothing but a write of `request` and a read of the answer's
/// head) sending to every receiver for `run`, one request after another
/// (`total_rate` 0) or paced so that all of them together send
/// `total_rate` a second (what deliveries at that rate cost at the least:
/// sparse requests each wake both ends): (exchanges, CPU µs of this
/// process, which holds both ends, per exchange).
async fn bare_exchanges(urls: &[String], request: Arc<Vec<u8>>, run: Duration, total_rate: f64) -> Result<(u64, f64)> {
    let until = tokio::time::Instant::now() + run;
    let cpu0 = cpu_seconds(None);
    let mut tasks = tokio::task::JoinSet::new();
    let every = (total_rate > 0.0).then(|| Duration::from_secs_f64(urls.len() as f64 / total_rate));
    for (i, url) in urls.iter().enumerate() {
        let addr = url.trim_start_matches("http://").split('/').next().context("receiver url")?.to_string();
        let request = request.clone();
        // Paced connections start spread over one interval.
        let mut next = tokio::time::Instant::now() + every.map_or(Duration::ZERO, |e| e * i as u32 / urls.len() as u32);
        tasks.spawn(async move {
            let mut s = TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 1024];
            let mut n = 0u64;
            while tokio::time::Instant::now() < until {
                if let Some(every) = every {
                    tokio::time::sleep_until(next).await;
                    next += every;
                }
                s.write_all(&request).await?;
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let k = s.read(&mut buf).await?;
                    anyhow::ensure!(k > 0, "the receiver closed the connection");
                    got.extend_from_slice(&buf[..k]);
                }
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let cpu = (cpu_seconds(None) - cpu0) * 1e6;
    Ok((total, cpu / total.max(1) as f64))
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
    let server = pypes.pid();
    // CPU µs per delivery, (server, this process), by round.
    let mut per_delivery: Vec<(f64, f64)> = Vec::new();
    let mut bare = 0.0;
    for round in 0..=rounds {
        let cpu0 = cpu_pair(server);
        let (r, mut post_alone) = messaging(&ch, &tenants, &sessions, in_flight, run, rate).await?;
        let cpu1 = cpu_pair(server);
        let n_alone = post_alone.len().max(1) as f64;
        // Per message alone: (server, load generator).
        let alone_cost = ((cpu1.0 - cpu0.0) / n_alone, (cpu1.1 - cpu0.1) / n_alone);
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
        let cpu2 = cpu_pair(server);
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
        let cpu3 = cpu_pair(server);
        // What the phase with endpoints cost beyond its messages at the
        // alone phase's cost per message, per event delivered.
        let n_with = sent.max(1) as f64;
        let with_cost = ((cpu3.0 - cpu2.0) / n_with, (cpu3.1 - cpu2.1) / n_with);
        let extra = |alone: f64, with: f64| (with - alone) * n_with / got.max(1) as f64;
        let delivery = (extra(alone_cost.0, with_cost.0), extra(alone_cost.1, with_cost.1));
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
        println!(
            "#   CPU per message: server {:.0} µs alone, {:.0} µs with webhooks; load generator (client and receivers) {:.0} / {:.0} µs; a delivery: server {:.0} µs, receivers {:.0} µs",
            alone_cost.0, with_cost.0, alone_cost.1, with_cost.1, delivery.0, delivery.1
        );
        if round > 0 {
            per_delivery.push(delivery);
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
        // After the warm-up: the baseline, with a request the server sent.
        if round == 0 {
            let request = seen.sample.lock().ok().and_then(|s| s.clone()).context("no request reached a receiver")?;
            let request = Arc::new(request);
            let bytes = request.len();
            let span = Duration::from_secs_f64(seconds.min(3.0));
            let (n, flat_out) = bare_exchanges(&urls, request.clone(), span, 0.0).await?;
            // Paced at the rate the server delivered in the warm-up.
            let paced_rate = (got as f64 / elapsed).max(100.0);
            let (m, paced) = bare_exchanges(&urls, request, span, paced_rate).await?;
            bare = paced;
            println!(
                "# baseline: a bare HTTP/1.1 client sending the same request ({bytes} bytes) to the same receivers, CPU per exchange (client and receiver): {flat_out:.0} µs flat out ({n} exchanges), {paced:.0} µs paced at {paced_rate:.0}/s ({m})"
            );
        }
    }
    alone.sort_by(f64::total_cmp);
    beside.sort_by(f64::total_cmp);
    delivered_rates.sort_by(f64::total_cmp);
    p50s.sort_unstable();
    p99s.sort_unstable();
    let (a, b) = (alone[rounds / 2], beside[rounds / 2]);
    let mut server_cost: Vec<f64> = per_delivery.iter().map(|d| d.0).collect();
    let mut receiver_cost: Vec<f64> = per_delivery.iter().map(|d| d.1).collect();
    server_cost.sort_by(f64::total_cmp);
    receiver_cost.sort_by(f64::total_cmp);
    println!(
        "BENCH webhooks endpoints={} offered={rate:.0} messages_alone={a:.0} messages_with_webhooks={b:.0} drop_pct={:.1} delivered_per_s={:.0} p50_ms={:.1} p99_ms={:.1} p99_worst_round_ms={:.1} drain_ms={} server_cpu_us_per_delivery={:.0} loadgen_cpu_us_per_delivery={:.0} bare_exchange_cpu_us={bare:.0} delivery_vs_bare={:.1}",
        urls.len(),
        (1.0 - b / a) * 100.0,
        delivered_rates[rounds / 2],
        p50s[rounds / 2] as f64 / 1000.0,
        p99s[rounds / 2] as f64 / 1000.0,
        p99s.last().copied().unwrap_or(0) as f64 / 1000.0,
        drain_ms.iter().max().copied().unwrap_or(0),
        server_cost[rounds / 2],
        receiver_cost[rounds / 2],
        (server_cost[rounds / 2] + receiver_cost[rounds / 2]) / bare.max(1.0),
    );
    Ok(())
}
