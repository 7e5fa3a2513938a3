//! `loadgen send-message` and `loadgen actors-memory`: the pypes server (a
//! release `pypes` binary next to `loadgen`, started here on a fresh data
//! directory) measured over gRPC.
//!
//! - send-message: `PostMessage` (auth, actor, seal, durable append, reply)
//!   at N requests in flight over many Sessions, against a bare tonic unary
//!   echo of the same payload (`loadgen echo-server`, its own process),
//!   alternating rounds.
//! - actors-memory: the server's RSS with N live Session actors, and the
//!   latency of activating a Session actor from the log (cold, after a
//!   restart) versus answering from a live one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::api as pb;
use proto::bench as echo;
use tonic::Request;
use tonic::transport::Channel;

pub(crate) const ADMIN: &str = "bench-admin-key-0123456789abcdef0123456789abcdef";
const ROUNDS: usize = 3;

pub(crate) struct Proc {
    child: Child,
    pub(crate) addr: String,
    /// The HTTP address, for servers that print one.
    http: Option<String>,
}

/// User + system CPU seconds process `pid` (`None`: this one) has used,
/// from /proc (in ticks of 10 ms, Linux's fixed `USER_HZ`).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Takes charge of a started child (killed when dropped) serving at `addr`.
    pub(crate) fn adopt(child: Child, addr: String) -> Self {
        Self { child, addr, http: None }
    }

    /// Waits until the server's /readyz answers 200 (recovery done), as a
    /// load balancer would before sending traffic.
    pub(crate) async fn ready(&self) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let http = self.http.as_deref().context("no http address")?;
        for _ in 0..600 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(http).await {
                s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await?;
                let mut out = String::new();
                s.read_to_string(&mut out).await?;
                if out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the server did not become ready within 60 s")
    }

    /// The values of the server's metrics named in `names` (unlabelled
    /// samples), from one scrape of /metrics; a missing one is `None`.
    pub(crate) async fn metrics(&self, names: &[&str]) -> Result<Vec<Option<f64>>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let http = self.http.as_deref().context("no http address")?;
        let mut s = tokio::net::TcpStream::connect(http).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(names
            .iter()
            .map(|name| {
                out.lines().find_map(|l| {
                    let (n, v) = l.split_once(' ')?;
                    (n == *name).then(|| v.trim().parse::<f64>().ok()).flatten()
                })
            })
            .collect())
    }

    /// The server's process id (for /proc).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found: build it with `cargo build --release -p server -p benches`", path.display());
    }
    Ok(path)
}

/// Starts a process and waits for its first stdout line containing `key=`.
pub(crate) fn spawn(mut cmd: Command, key: &str) -> Result<Proc> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .with_context(|| format!("no {key} in {line:?}"))?
        .to_string();
    let http = line.split_whitespace().find_map(|w| w.strip_prefix("http=")).map(str::to_string);
    Ok(Proc { child, addr: format!("http://{addr}"), http })
}

pub(crate) fn start_pypes(data: &Path, max_actors: usize) -> Result<Proc> {
    start_pypes_with(data, max_actors, &[])
}

/// [`start_pypes`] with extra environment variables (a config file).
pub(crate) fn start_pypes_with(data: &Path, max_actors: usize, env: &[(&str, &str)]) -> Result<Proc> {
    let mut cmd = Command::new(sibling("pypes")?);
    cmd.envs(env.iter().copied());
    cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-key", ADMIN, "--data-dir"])
        .arg(data)
        .env("PYPES_MAX_ACTORS", max_actors.to_string())
        .env("PYPES_ACTOR_IDLE_SECS", "3600")
        // The server's log level (default warn: no request log) and an
        // OTLP endpoint (spans made and exported), to measure what the
        // request log and tracing cost; its log goes to /dev/null.
        .env("RUST_LOG", std::env::var("LOADGEN_SERVER_LOG").unwrap_or_else(|_| "warn".into()));
    if let Ok(endpoint) = std::env::var("LOADGEN_SERVER_OTLP") {
        cmd.env("PYPES_OTLP_ENDPOINT", endpoint);
    }
    spawn(cmd, "grpc=")
}

pub(crate) fn authed<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {key}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// A new tenant (admin key) and a Pype of it, both named `name`: (the
/// tenant's API key, the Pype's id).
pub(crate) async fn tenant_with_pype(channel: &Channel, name: &str) -> Result<(String, String)> {
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let mut pypes = pb::pype_service_client::PypeServiceClient::new(channel.clone());
    let key = tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: name.into(), ..Default::default() }))
        .await?
        .into_inner()
        .api_key;
    let pype = pypes
        .create_pype(authed(&key, pb::CreatePypeRequest { name: name.into(), ..Default::default() }))
        .await?
        .into_inner()
        .pype_id;
    Ok((key, pype))
}

/// A new end user `name` (an email made from it): their subject id.
pub(crate) async fn register(
    c: &mut pb::subject_service_client::SubjectServiceClient<Channel>,
    key: &str,
    name: &str,
) -> Result<String> {
    let request = pb::RegisterSubjectRequest {
        username: name.into(),
        email: format!("{name}@example.com"),
        attested_at_least_13: true,
        ..Default::default()
    };
    Ok(c.register_subject(authed(key, request)).await?.into_inner().subject_id)
}

/// A new Session of `user` in `pype`: its id.
pub(crate) async fn start_session(
    c: &mut pb::session_service_client::SessionServiceClient<Channel>,
    key: &str,
    pype: &str,
    user: &str,
) -> Result<String> {
    let request = pb::StartSessionRequest { pype_id: pype.into(), end_user_id: user.into(), ..Default::default() };
    Ok(c.start_session(authed(key, request)).await?.into_inner().session_id)
}

pub(crate) struct World {
    pub key: String,
    pub user: String,
    pub sessions: Vec<String>,
}

pub(crate) async fn world(channel: Channel, sessions: usize, in_flight: usize) -> Result<World> {
    let (key, pype_id) = tenant_with_pype(&channel, "Bench").await?;
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let user_id = register(&mut subjects, &key, "bench").await?;
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(sessions)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (mut client, ids, next, key, pype_id, user_id) = (
            pb::session_service_client::SessionServiceClient::new(channel.clone()),
            ids.clone(),
            next.clone(),
            key.clone(),
            pype_id.clone(),
            user_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < sessions {
                let s = client
                    .start_session(authed(
                        &key,
                        pb::StartSessionRequest {
                            pype_id: pype_id.clone(),
                            end_user_id: user_id.clone(),
                            timers: None,
                            ..Default::default()
                        },
                    ))
                    .await?
                    .into_inner();
                ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(s.session_id);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let sessions = std::mem::take(&mut *ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(World { key, user: user_id, sessions })
}

/// Runs `in_flight` loops of `op` for `run`; returns (ops per second, latencies in µs).
pub(crate) async fn drive<F, Fut>(in_flight: usize, run: Duration, op: F) -> Result<(f64, Vec<u32>)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..in_flight as u64 {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rng = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while started.elapsed() < run {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let t0 = Instant::now();
                op(rng).await?;
                lat.push(t0.elapsed().as_micros() as u32);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}

pub(crate) fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn send_message(
    dir: &Path,
    seconds: f64,
    sessions: usize,
    in_flight: usize,
    body_bytes: usize,
) -> Result<()> {
    let pypes = start_pypes(&dir.join("data"), sessions * 2 + 100)?;
    pypes.ready().await?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("echo-server");
    let echo_proc = spawn(cmd, "echo=")?;
    let api = Channel::from_shared(pypes.addr.clone())?.connect().await?;
    let echo_ch = Channel::from_shared(echo_proc.addr.clone())?.connect().await?;
    let w = Arc::new(world(api.clone(), sessions, in_flight).await?);
    println!("# {} sessions started; {} in flight; {} B bodies", w.sessions.len(), in_flight, body_bytes);
    let body = "x".repeat(body_bytes);
    // Warm-up: one message per Session (its content key is made on the first).
    {
        let client = pb::session_service_client::SessionServiceClient::new(api.clone());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let (mut c, w, next, body) = (client.clone(), w.clone(), next.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(session) = w.sessions.get(i) else { return Ok::<_, anyhow::Error>(()) };
                    c.post_message(authed(
                        &w.key,
                        pb::PostMessageRequest {
                            session_id: session.clone(),
                            sender_id: w.user.clone(),
                            body: body.clone(),
                            device: String::new(),
                            ..Default::default()
                        },
                    ))
                    .await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let run = Duration::from_secs_f64(seconds);
    let (mut echo_rates, mut post_rates, mut post_lat) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let client = echo::echo_service_client::EchoServiceClient::new(echo_ch.clone());
        let payload = body.clone().into_bytes();
        let (rate, _) = drive(in_flight, run, move |_| {
            let (mut c, payload) = (client.clone(), payload.clone());
            async move {
                c.echo(echo::EchoRequest { payload }).await?;
                Ok(())
            }
        })
        .await?;
        echo_rates.push(rate);
        let client = pb::session_service_client::SessionServiceClient::new(api.clone());
        let (w2, body2) = (w.clone(), body.clone());
        let (rate, lat) = drive(in_flight, run, move |r| {
            let (mut c, w, body) = (client.clone(), w2.clone(), body2.clone());
            async move {
                let session = w.sessions[(r % w.sessions.len() as u64) as usize].clone();
                c.post_message(authed(
                    &w.key,
                    pb::PostMessageRequest {
                        session_id: session,
                        sender_id: w.user.clone(),
                        body,
                        device: String::new(),
                        ..Default::default()
                    },
                ))
                .await?;
                Ok(())
            }
        })
        .await?;
        post_rates.push(rate);
        post_lat.extend(lat);
    }
    echo_rates.sort_by(f64::total_cmp);
    post_rates.sort_by(f64::total_cmp);
    post_lat.sort_unstable();
    let (rps, echo_rps) = (post_rates[ROUNDS / 2], echo_rates[ROUNDS / 2]);
    println!(
        "BENCH send_message rps={rps:.0} echo_rps={echo_rps:.0} ratio={:.2} p50_us={} p99_us={} in_flight={in_flight} sessions={}",
        rps / echo_rps,
        pct(&post_lat, 0.5),
        pct(&post_lat, 0.99),
        w.sessions.len()
    );
    Ok(())
}

/// `loadgen import`: historic Sessions of `messages` messages each through
/// `ImportSessions` on `streams` concurrent streams, against the raw
/// group-commit loop writing one record per Session (of about the size the
/// log stores for it) from as many writers as the server imports at once.
pub async fn import(dir: &Path, sessions: usize, messages: usize, body_bytes: usize, streams: usize) -> Result<()> {
    let pypes = start_pypes(&dir.join("data"), sessions + 100)?;
    pypes.ready().await?;
    let api = Channel::from_shared(pypes.addr.clone())?.connect().await?;
    let w = world(api.clone(), 0, 1).await?;
    let pype = {
        let mut pypes = pb::pype_service_client::PypeServiceClient::new(api.clone());
        pypes
            .create_pype(authed(&w.key, pb::CreatePypeRequest { name: "Import".into(), ..Default::default() }))
            .await?
            .into_inner()
            .pype_id
    };
    let agent = uuid::Uuid::now_v7().to_string();
    let body = "x".repeat(body_bytes);
    let t0 = 1_700_000_000_000_000i64;
    let item = |i: usize| pb::ImportSessionRequest {
        import_id: format!("bench-{i}"),
        pype_id: pype.clone(),
        end_user_id: w.user.clone(),
        started_at_micros: t0,
        messages: (0..messages)
            .map(|m| pb::ImportedMessage {
                sender_id: if m % 2 == 0 { w.user.clone() } else { agent.clone() },
                sender_kind: pb::ParticipantKind::Agent as i32,
                body: body.clone(),
                sent_at_micros: t0 + m as i64,
            })
            .collect(),
        closed_at_micros: t0 + messages as i64,
    };
    let per_stream = sessions.div_ceil(streams);
    let chunks: Vec<Vec<pb::ImportSessionRequest>> =
        (0..streams).map(|s| (s * per_stream..((s + 1) * per_stream).min(sessions)).map(item).collect()).collect();
    println!("# {sessions} sessions x {messages} messages of {body_bytes} B on {streams} streams");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (mut client, key) = (pb::session_service_client::SessionServiceClient::new(api.clone()), w.key.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.import_sessions(authed(&key, tokio_stream::iter(chunk))).await?.into_inner();
            Ok::<_, anyhow::Error>(r)
        }));
    }
    let (mut written, mut failed) = (0, 0);
    for t in tasks {
        let r = t.await??;
        written += r.messages_written;
        failed += r.failed;
    }
    let elapsed = started.elapsed();
    if failed > 0 {
        anyhow::bail!("{failed} sessions failed to import");
    }
    let rate = written as f64 / elapsed.as_secs_f64();
    drop(pypes);
    // The same bytes per fsync'd record as one Session's append (sealed
    // body, envelope, frame), from as many writers as the server runs.
    let record = messages * (body_bytes + 150);
    let raw = crate::raw_group_commit(&dir.join("raw.bin"), streams * 64, record, elapsed).await?;
    let raw_rate = raw.events_per_s * messages as f64;
    println!(
        "BENCH import messages_per_s={rate:.0} raw_messages_per_s={raw_rate:.0} ratio={:.2} sessions={sessions} messages={messages} body_bytes={body_bytes} streams={streams} seconds={:.1}",
        rate / raw_rate,
        elapsed.as_secs_f64()
    );
    Ok(())
}

pub async fn actors_memory(dir: &Path, sessions: usize, in_flight: usize, samples: usize) -> Result<()> {
    let data = dir.join("data");
    let pypes = start_pypes(&data, sessions * 2 + 100)?;
    let api = Channel::from_shared(pypes.addr.clone())?.connect().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = pypes.rss_mb();
    let started = Instant::now();
    let w = world(api.clone(), sessions, in_flight).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pypes.rss_mb();
    println!(
        "BENCH actors_memory actors={} rss_mb={after:.0} rss_before_mb={before:.0} bytes_per_actor={:.0} start_sessions_per_s={:.0}",
        w.sessions.len(),
        (after - before) * 1024.0 * 1024.0 / w.sessions.len() as f64,
        w.sessions.len() as f64 / took.as_secs_f64()
    );
    drop(api);
    drop(pypes);
    // Cold: a restarted server (once ready) activates each Session actor from the log.
    let restarted = Instant::now();
    let pypes = start_pypes(&data, sessions * 2 + 100)?;
    pypes.ready().await?;
    println!(
        "# restart to ready with {} sessions in the log: {} ms",
        w.sessions.len(),
        restarted.elapsed().as_millis()
    );
    let api = Channel::from_shared(pypes.addr.clone())?.connect().await?;
    let mut client = pb::session_service_client::SessionServiceClient::new(api);
    let step = (w.sessions.len() / samples.max(1)).max(1);
    let pick: Vec<&String> = w.sessions.iter().step_by(step).take(samples).collect();
    let mut cold = Vec::new();
    for s in &pick {
        let t0 = Instant::now();
        client.get_session(authed(&w.key, pb::GetSessionRequest { session_id: (*s).clone() })).await?;
        cold.push(t0.elapsed().as_micros() as u32);
    }
    let mut warm = Vec::new();
    for s in &pick {
        let t0 = Instant::now();
        client.get_session(authed(&w.key, pb::GetSessionRequest { session_id: (*s).clone() })).await?;
        warm.push(t0.elapsed().as_micros() as u32);
    }
    cold.sort_unstable();
    warm.sort_unstable();
    println!(
        "BENCH actor_activation cold_p50_us={} cold_p99_us={} warm_p50_us={} warm_p99_us={} samples={} events_per_session=1 snapshots=none",
        pct(&cold, 0.5),
        pct(&cold, 0.99),
        pct(&warm, 0.5),
        pct(&warm, 0.99),
        pick.len()
    );
    Ok(())
}

/// The bare echo service (the baseline), in its own process.
pub async fn echo_server() -> Result<()> {
    #[derive(Default)]
    struct Echo;
    #[tonic::async_trait]
    impl echo::echo_service_server::EchoService for Echo {
        async fn echo(
            &self,
            r: Request<echo::EchoRequest>,
        ) -> Result<tonic::Response<echo::EchoResponse>, tonic::Status> {
            Ok(tonic::Response::new(echo::EchoResponse { payload: r.into_inner().payload }))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("echo={}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    tonic::transport::Server::builder()
        .add_service(echo::echo_service_server::EchoServiceServer::new(Echo))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}
