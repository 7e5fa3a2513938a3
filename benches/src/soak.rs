//! `loadgen soak`: hours of steady load on one `pypes serve` (the release
//! binary next to loadgen, a fresh data directory), to find what only time
//! shows: memory that grows, files or threads that leak, latency that
//! creeps, errors that appear.
//!
//! First the messaging scenario's maximum is measured (closed loop, 64 in
//! flight, 10 s); then messages are offered at half of it (open loop: a
//! slow answer does not slow the offer) for `--minutes`, with the privacy
//! work mixed in, one operation every `--mixed-every-ms` in turn: an end
//! user registered, given a Session and a message, then erased; an export
//! of an end user; a restriction and its lifting; the tenant's retention
//! changed (the retention sweep runs every 10 s); the tenant's API key
//! rotated (a new key, the old one revoked). The root-provider epoch
//! rotation runs on its own schedule (hourly checks, a period of days) and
//! is not forced here.
//!
//! Every `--sample-secs` the server's RSS, open files and threads, and the
//! interval's message count, p50/p99 and errors go into a JSON file, and a
//! plot of them into an SVG beside it. With `--check` the run fails on any
//! failed call, or when the last sample holds more open files (8) or
//! threads (4) than any sample of the first half after warm-up held (no
//! figure of speed is ever checked: offers
//! dropped because 512 posts were already in flight are counted apart).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::api as pb;
use tonic::transport::Channel;

use crate::apibench::{Proc, authed, pct, register, start_pypes_with, start_session, tenant_with_pype};

pub struct Options {
    pub dir: PathBuf,
    pub minutes: f64,
    pub sample_secs: f64,
    pub sessions: usize,
    pub mixed_every_ms: u64,
    /// Offer this many messages/s instead of half the measured maximum.
    pub rate: Option<f64>,
    pub out: PathBuf,
    pub check: bool,
}

/// One sample.
struct Sample {
    at_s: f64,
    rss_mib: f64,
    open_files: usize,
    threads: usize,
    messages: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// Calls that failed.
    errors: u64,
    /// Offers not sent because 512 posts were in flight already (the
    /// server, or this machine, stalled for a moment).
    dropped: u64,
    mixed_ops: u64,
    mixed_errors: u64,
    /// Events in the log, and frames whose index entry is in memory (the
    /// active segment's; sealed segments' are spilled to disk).
    log_events: u64,
    index_frames_in_memory: u64,
}

impl Sample {
    /// Every figure by name, formatted: the printed line and the JSON
    /// rows are made of these.
    fn fields(&self) -> [(&'static str, String); 13] {
        [
            ("at_s", format!("{:.1}", self.at_s)),
            ("rss_mib", format!("{:.1}", self.rss_mib)),
            ("open_files", self.open_files.to_string()),
            ("threads", self.threads.to_string()),
            ("messages", self.messages.to_string()),
            ("p50_ms", format!("{:.3}", self.p50_ms)),
            ("p99_ms", format!("{:.3}", self.p99_ms)),
            ("errors", self.errors.to_string()),
            ("dropped", self.dropped.to_string()),
            ("mixed_ops", self.mixed_ops.to_string()),
            ("mixed_errors", self.mixed_errors.to_string()),
            ("log_events", self.log_events.to_string()),
            ("index_frames_in_memory", self.index_frames_in_memory.to_string()),
        ]
    }
}

fn proc_status(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A tenant with a Pype, its end users and their Sessions; some end users
/// only for restrictions and exports (never posting).
struct World {
    key: String,
    pype: String,
    sessions: Vec<(String, String)>,
    bystanders: Vec<String>,
}

async fn world(channel: Channel, sessions: usize) -> Result<World> {
    let (key, pype) = tenant_with_pype(&channel, "Soak").await?;
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let mut starts = pb::session_service_client::SessionServiceClient::new(channel);
    let mut all = Vec::new();
    for i in 0..sessions {
        let user = register(&mut subjects, &key, &format!("poster{i}")).await?;
        let session = start_session(&mut starts, &key, &pype, &user).await?;
        all.push((session, user));
    }
    let mut bystanders = Vec::new();
    for i in 0..16 {
        let user = register(&mut subjects, &key, &format!("bystander{i}")).await?;
        let session = start_session(&mut starts, &key, &pype, &user).await?;
        let post = pb::PostMessageRequest {
            session_id: session,
            sender_id: user.clone(),
            body: "hello".into(),
            ..Default::default()
        };
        starts.post_message(authed(&key, post)).await?;
        bystanders.push(user);
    }
    Ok(World { key, pype, sessions: all, bystanders })
}

/// Closed loop at 64 in flight for `seconds`: messages/s.
async fn maximum(channel: &Channel, w: &World, seconds: f64) -> Result<f64> {
    let run = Duration::from_secs_f64(seconds);
    let sessions = Arc::new(w.sessions.clone());
    let key = w.key.clone();
    let client = pb::session_service_client::SessionServiceClient::new(channel.clone());
    let (rate, _) = crate::apibench::drive(64, run, move |r| {
        let (mut client, sessions, key) = (client.clone(), sessions.clone(), key.clone());
        async move {
            let (session, user) = &sessions[(r % sessions.len() as u64) as usize];
            let post = pb::PostMessageRequest {
                session_id: session.clone(),
                sender_id: user.clone(),
                body: "calibration".into(),
                ..Default::default()
            };
            client.post_message(authed(&key, post)).await?;
            Ok(())
        }
    })
    .await?;
    Ok(rate)
}

/// The privacy work, one operation per tick in turn, until `stop`.
async fn mixed(
    channel: Channel,
    w: Arc<World>,
    every: Duration,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let mut sessions = pb::session_service_client::SessionServiceClient::new(channel.clone());
    let mut erasure = pb::erasure_service_client::ErasureServiceClient::new(channel.clone());
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(channel.clone());
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel);
    // The key this task uses; rotated in turn (the posters keep theirs).
    let mut key = match tenants.create_api_key(authed(&w.key, pb::CreateApiKeyRequest {})).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            eprintln!("soak: creating the mixed work's API key failed: {e}");
            errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        n += 1;
        let k = key.api_key.clone();
        let bystander = w.bystanders[(n as usize / 5) % w.bystanders.len()].clone();
        let result: Result<()> = async {
            match n % 5 {
                0 => {
                    let user = register(&mut subjects, &k, &format!("erased{n}")).await?;
                    let session = start_session(&mut sessions, &k, &w.pype, &user).await?;
                    let post = pb::PostMessageRequest {
                        session_id: session,
                        sender_id: user.clone(),
                        body: "please forget me".into(),
                        ..Default::default()
                    };
                    sessions.post_message(authed(&k, post)).await?;
                    let request = pb::RequestErasureRequest { subject_id: user, ..Default::default() };
                    erasure.request_erasure(authed(&k, request)).await?;
                }
                1 => {
                    let request = pb::ExportSubjectRequest { subject_id: bystander, ..Default::default() };
                    let mut stream = privacy.export_subject(authed(&k, request)).await?.into_inner();
                    let mut bytes = 0;
                    while let Some(chunk) = stream.message().await? {
                        bytes += chunk.data.len();
                    }
                    if bytes == 0 {
                        bail!("an empty export");
                    }
                }
                2 => {
                    let r = pb::SubjectRef { subject_id: bystander.clone(), ..Default::default() };
                    privacy.restrict_processing(authed(&k, r.clone())).await?;
                    privacy.lift_restriction(authed(&k, r)).await?;
                }
                3 => {
                    let days = 1 + (n / 5 % 2) as u32;
                    let request = pb::SetRetentionRequest { retention_days: days, ..Default::default() };
                    tenants.set_retention(authed(&k, request)).await?;
                }
                _ => {
                    let fresh = tenants.create_api_key(authed(&k, pb::CreateApiKeyRequest {})).await?.into_inner();
                    let old = std::mem::replace(&mut key, fresh);
                    let revoke = pb::RevokeApiKeyRequest { api_key_id: old.api_key_id, ..Default::default() };
                    tenants.revoke_api_key(authed(&key.api_key, revoke)).await?;
                }
            }
            Ok(())
        }
        .await;
        ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: mixed operation {} failed: {e:#}", n % 5);
        }
    }
}

pub async fn run(o: Options) -> Result<()> {
    std::fs::create_dir_all(&o.dir)?;
    let work = tempfile::Builder::new().prefix("soak-").tempdir_in(&o.dir)?;
    let config = work.path().join("pypes.toml");
    std::fs::write(&config, "[privacy]\nsweep_secs = 10\n")?;
    let config_text = config.display().to_string();
    let server: Proc = start_pypes_with(&work.path().join("data"), 100_000, &[("PYPES_CONFIG", config_text.as_str())])?;
    server.ready().await?;
    let pid = server.pid();
    let channel = Channel::from_shared(server.addr.clone())?.connect().await?;
    let w = Arc::new(world(channel.clone(), o.sessions.max(1)).await.context("setting up the tenant")?);
    let max = maximum(&channel, &w, 10.0).await.context("measuring the maximum")?;
    let rate = o.rate.unwrap_or(max / 2.0).max(1.0);
    println!("# soak: maximum {max:.0} messages/s (64 in flight, 10 s); offering {rate:.0}/s for {} min", o.minutes);

    let stop = Arc::new(AtomicBool::new(false));
    let (mixed_ops, mixed_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mixer = tokio::spawn(mixed(
        channel.clone(),
        w.clone(),
        Duration::from_millis(o.mixed_every_ms.max(10)),
        stop.clone(),
        mixed_ops.clone(),
        mixed_errors.clone(),
    ));
    // The offer: one post per tick, at most 512 in flight (an offer past
    // that is dropped and counted: the server, or this machine, stalled).
    let latencies: Arc<Mutex<Vec<u32>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let offer = {
        let (stop, latencies, errors, dropped, w, in_flight) =
            (stop.clone(), latencies.clone(), errors.clone(), dropped.clone(), w.clone(), in_flight.clone());
        let client = pb::session_service_client::SessionServiceClient::new(channel.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut sent: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    continue;
                };
                let (session, user) = w.sessions[(sent % w.sessions.len() as u64) as usize].clone();
                let (mut client, key, latencies, errors) =
                    (client.clone(), w.key.clone(), latencies.clone(), errors.clone());
                let body = format!("soak message {sent}");
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let post =
                        pb::PostMessageRequest { session_id: session, sender_id: user, body, ..Default::default() };
                    match client.post_message(authed(&key, post)).await {
                        Ok(_) => {
                            latencies.lock().unwrap_or_else(|e| e.into_inner()).push(t0.elapsed().as_micros() as u32)
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("soak: a post failed: {e}");
                            }
                        }
                    }
                    drop(permit);
                });
                sent += 1;
            }
        })
    };

    let started = Instant::now();
    let total = Duration::from_secs_f64(o.minutes * 60.0);
    let every = Duration::from_secs_f64(o.sample_secs.max(1.0));
    let mut samples = Vec::new();
    let mut next = started + every;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
        lat.sort_unstable();
        let scraped = server
            .metrics(&["pypes_log_head_position", "pypes_log_index_frames_in_memory"])
            .await
            .unwrap_or_else(|_| vec![None, None]);
        let metric = |i: usize| scraped.get(i).copied().flatten().unwrap_or(0.0) as u64;
        let s = Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_mib: proc_status(pid, "VmRSS:").unwrap_or(0.0) / 1024.0,
            open_files: open_files(pid),
            threads: proc_status(pid, "Threads:").unwrap_or(0.0) as usize,
            messages: lat.len(),
            p50_ms: pct(&lat, 0.50) as f64 / 1000.0,
            p99_ms: pct(&lat, 0.99) as f64 / 1000.0,
            errors: errors.swap(0, Ordering::Relaxed),
            dropped: dropped.swap(0, Ordering::Relaxed),
            mixed_ops: mixed_ops.swap(0, Ordering::Relaxed),
            mixed_errors: mixed_errors.swap(0, Ordering::Relaxed),
            log_events: metric(0),
            index_frames_in_memory: metric(1),
        };
        let line: Vec<String> = s.fields().iter().map(|(name, value)| format!("{name} {value}")).collect();
        println!("# {}", line.join("  "));
        samples.push(s);
        if started.elapsed() + Duration::from_millis(10) >= total {
            break;
        }
        next += every;
    }
    stop.store(true, Ordering::Relaxed);
    offer.await?;
    mixer.await?;
    drop(server);

    let verdict = verdict(&samples, o.check);
    write_json(&o.out, max, rate, &o, &samples, &verdict)?;
    let svg = o.out.with_extension("svg");
    std::fs::write(&svg, plot(&samples, rate)).with_context(|| format!("writing {}", svg.display()))?;
    println!("BENCH soak minutes={} rate={rate:.0} {}", o.minutes, verdict.line);
    println!("# wrote {} and {}", o.out.display(), svg.display());
    if o.check && !verdict.ok {
        bail!("soak failed: {}", verdict.line);
    }
    Ok(())
}

struct Verdict {
    ok: bool,
    line: String,
}

/// The run's figures after warm-up (the first fifth of the samples, at
/// least one): RSS spread around its median, open files and threads from
/// first to last, errors, p99 spread.
fn verdict(samples: &[Sample], _check: bool) -> Verdict {
    let warm = (samples.len() / 5).max(1).min(samples.len().saturating_sub(1));
    let after = &samples[warm..];
    let mut rss: Vec<f64> = after.iter().map(|s| s.rss_mib).collect();
    rss.sort_by(f64::total_cmp);
    let median = rss.get(rss.len() / 2).copied().unwrap_or(0.0);
    let spread = |v: f64| if median > 0.0 { (v / median - 1.0) * 100.0 } else { 0.0 };
    let (rss_lo, rss_hi) = (spread(*rss.first().unwrap_or(&0.0)), spread(*rss.last().unwrap_or(&0.0)));
    let first = after.first();
    let last = after.last();
    let files = (first.map_or(0, |s| s.open_files), last.map_or(0, |s| s.open_files));
    let threads = (first.map_or(0, |s| s.threads), last.map_or(0, |s| s.threads));
    let errors: u64 = samples.iter().map(|s| s.errors + s.mixed_errors).sum();
    let dropped: u64 = samples.iter().map(|s| s.dropped).sum();
    let p99: Vec<f64> = after.iter().map(|s| s.p99_ms).collect();
    let (p99_min, p99_max) = p99.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let messages: usize = samples.iter().map(|s| s.messages).sum();
    let mixed: u64 = samples.iter().map(|s| s.mixed_ops).sum();
    // Descriptors come and go with connections and compactions, and the
    // runtime's blocking pool starts threads for a burst and ends them
    // 10 s after it (both bounded): a leak is what the last sample holds
    // beyond the most any sample of the first half after warm-up held.
    let first_half = &after[..after.len().div_ceil(2)];
    let most = |f: fn(&Sample) -> usize| first_half.iter().map(f).max().unwrap_or(0);
    let leak_files = files.1 > most(|s| s.open_files) + 8;
    let leak_threads = threads.1 > most(|s| s.threads) + 4;
    let ok = errors == 0 && !leak_files && !leak_threads;
    let line = format!(
        "messages={messages} mixed_ops={mixed} errors={errors} dropped={dropped} rss_median_mib={median:.1} \
         rss_spread_pct={rss_lo:+.1}..{rss_hi:+.1} open_files={}->{} threads={}->{} p99_ms={:.1}..{:.1} ok={ok}",
        files.0,
        files.1,
        threads.0,
        threads.1,
        if p99.is_empty() { 0.0 } else { p99_min },
        p99_max
    );
    Verdict { ok, line }
}

fn write_json(path: &Path, max: f64, rate: f64, o: &Options, samples: &[Sample], v: &Verdict) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let rows: Vec<String> = samples
        .iter()
        .map(|s| {
            let fields: Vec<String> = s.fields().iter().map(|(name, value)| format!("\"{name}\": {value}")).collect();
            format!("    {{{}}}", fields.join(", "))
        })
        .collect();
    let json = format!(
        "{{\n  \"minutes\": {}, \"sample_secs\": {}, \"sessions\": {}, \"max_messages_per_s\": {max:.1}, \
         \"offered_per_s\": {rate:.1}, \"ok\": {},\n  \"summary\": \"{}\",\n  \"samples\": [\n{}\n  ]\n}}\n",
        o.minutes,
        o.sample_secs,
        o.sessions,
        v.ok,
        v.line,
        rows.join(",\n")
    );
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// One plotted figure: its title and how a sample gives it.
type Panel = (&'static str, fn(&Sample) -> f64);

/// Four panels (RSS, open files, threads, p99) against minutes, as SVG.
fn plot(samples: &[Sample], rate: f64) -> String {
    let (w, h, pad) = (900.0, 180.0, 50.0);
    let panels: [Panel; 4] = [
        ("RSS (MiB)", |s| s.rss_mib),
        ("open files", |s| s.open_files as f64),
        ("threads", |s| s.threads as f64),
        ("p99 of PostMessage (ms)", |s| s.p99_ms),
    ];
    let t_max = samples.last().map_or(1.0, |s| s.at_s).max(1.0) / 60.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\" font-size=\"14\">loadgen soak: {rate:.0} messages/s offered, {:.0} min</text>\n",
        4.0 * h + 40.0,
        t_max
    );
    for (i, (name, value)) in panels.iter().enumerate() {
        let top = 40.0 + i as f64 * h;
        let values: Vec<f64> = samples.iter().map(value).collect();
        let hi = values.iter().copied().fold(0.0f64, f64::max).max(1e-9) * 1.1;
        let x = |t: f64| pad + (t / 60.0) / t_max * (w - 2.0 * pad);
        let y = |v: f64| top + h - 30.0 - v / hi * (h - 50.0);
        let points: Vec<String> =
            samples.iter().zip(&values).map(|(s, v)| format!("{:.1},{:.1}", x(s.at_s), y(*v))).collect();
        svg.push_str(&format!(
            "<text x=\"{pad}\" y=\"{:.0}\">{name} (0 to {hi:.1})</text>\n\
             <line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\n\
             <line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{pad}\" y2=\"{:.1}\" stroke=\"#999\"/>\n\
             <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t_max:.0} min</text>\n",
            top + 12.0,
            y(0.0),
            w - pad,
            y(0.0),
            y(0.0),
            y(hi),
            points.join(" "),
            w - pad,
            y(0.0) + 15.0,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
