//! `loadgen crash-cycles`: the process-level crash test at scale, through
//! the gRPC API. One data directory; each cycle starts `pypes serve` on it
//! (views, the erasure process and every background task running), waits
//! until `/readyz` says ready, lets clients post messages (and, every few
//! cycles, register an end user and request their erasure) for a random
//! moment, and kills the server with SIGKILL in the middle of it.
//!
//! Afterwards one more start reads everything back through the API:
//! every acknowledged message must be there exactly once at the number it
//! was acknowledged with (lost and duplicated must be 0), every Session's
//! numbers dense, every acknowledged erasure certified, and the sessions
//! view must count what the log holds. Any of those failing makes the run
//! exit non-zero. A message whose call the kill cut off may be there (at
//! most once): the figures count them apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proto::api as pb;
use tonic::transport::Channel;

use crate::apibench::{Proc, authed, register, start_pypes, start_session, tenant_with_pype};
use crate::peers::Rng;

/// The run's settings (the command line's).
pub struct Options {
    pub dir: PathBuf,
    pub cycles: usize,
    pub clients: usize,
    pub sessions: usize,
    /// Load before the kill: a random time between these (ms).
    pub min_ms: u64,
    pub max_ms: u64,
    /// The kill also waits until this many posts of the cycle were
    /// acknowledged, so how much the run writes does not depend on the
    /// machine's speed.
    pub min_acks: usize,
    /// Each body padded to this many bytes (0: as short as it comes).
    pub body_bytes: usize,
    /// An erasure every this many cycles (0: none).
    pub erase_every: usize,
    pub seed: u64,
    pub out: PathBuf,
}

/// How long past its random window a cycle waits for `min_acks`.
const MIN_ACKS_WAIT: Duration = Duration::from_secs(60);

/// `body` padded with `.` to `bytes` (unchanged when already as long).
fn padded(mut body: String, bytes: usize) -> String {
    if body.len() < bytes {
        body.push('-');
        while body.len() < bytes {
            body.push('.');
        }
    }
    body
}

/// A number below `n` (0 for `n` = 0) from the benches' seeded generator.
fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next() % n.max(1)
}

/// What the clients of the whole run were told.
#[derive(Default)]
struct Ledger {
    /// (Session index, body) → the number it was acknowledged with.
    acked: HashMap<(usize, String), u64>,
    /// Posts the kill cut off (no answer, or an error).
    unanswered: Vec<(usize, String)>,
    /// End users whose erasure was acknowledged.
    erasures: Vec<String>,
}

struct Tenant {
    key: String,
    pype: String,
    sessions: Vec<String>,
    users: Vec<String>,
}

async fn connect(server: &Proc) -> Result<Channel> {
    Ok(Channel::from_shared(server.addr.clone())?.connect().await?)
}

async fn tenant(channel: Channel, sessions: usize) -> Result<Tenant> {
    let (key, pype) = tenant_with_pype(&channel, "Crash").await?;
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let mut starts = pb::session_service_client::SessionServiceClient::new(channel);
    let (mut ids, mut users) = (Vec::new(), Vec::new());
    for i in 0..sessions {
        let (user, session) =
            end_user_with_session(&mut subjects, &mut starts, &key, &pype, &format!("user{i}")).await?;
        users.push(user);
        ids.push(session);
    }
    Ok(Tenant { key, pype, sessions: ids, users })
}

async fn end_user_with_session(
    subjects: &mut pb::subject_service_client::SubjectServiceClient<Channel>,
    starts: &mut pb::session_service_client::SessionServiceClient<Channel>,
    key: &str,
    pype: &str,
    username: &str,
) -> Result<(String, String)> {
    let user = register(subjects, key, username).await?;
    let session = start_session(starts, key, pype, &user).await?;
    Ok((user, session))
}

/// An end user with a Session and a message, then their erasure: the
/// subject id once the erasure request was acknowledged.
async fn erase_one(channel: Channel, key: String, pype: String, name: String) -> Option<String> {
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let mut sessions = pb::session_service_client::SessionServiceClient::new(channel.clone());
    let mut erasure = pb::erasure_service_client::ErasureServiceClient::new(channel);
    let (user, session) = end_user_with_session(&mut subjects, &mut sessions, &key, &pype, &name).await.ok()?;
    let post = pb::PostMessageRequest {
        session_id: session,
        sender_id: user.clone(),
        body: format!("{name} says something personal"),
        ..Default::default()
    };
    sessions.post_message(authed(&key, post)).await.ok()?;
    let request = pb::RequestErasureRequest { subject_id: user.clone(), ..Default::default() };
    erasure.request_erasure(authed(&key, request)).await.ok()?;
    Some(user)
}

/// One cycle: start, load, kill. Returns the start-to-ready time.
async fn cycle(o: &Options, data: &Path, t: &Tenant, n: usize, rng: &mut Rng, ledger: &mut Ledger) -> Result<Duration> {
    let started = Instant::now();
    let server = start_pypes(data, 100_000).context("starting pypes")?;
    server.ready().await.with_context(|| format!("cycle {n}: the server did not become ready"))?;
    let ready_in = started.elapsed();
    let channel = connect(&server).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..o.clients {
        let mut client = pb::session_service_client::SessionServiceClient::new(channel.clone());
        let (stop, answered, body_bytes) = (stop.clone(), answered.clone(), o.body_bytes);
        let (key, sessions, users) = (t.key.clone(), t.sessions.clone(), t.users.clone());
        let mut rng = Rng(rng.next() | 1);
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut unanswered) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let s = below(&mut rng, sessions.len() as u64) as usize;
                let body = padded(format!("c{n}-{c}-{i}"), body_bytes);
                let request = pb::PostMessageRequest {
                    session_id: sessions[s].clone(),
                    sender_id: users[s].clone(),
                    body: body.clone(),
                    ..Default::default()
                };
                match client.post_message(authed(&key, request)).await {
                    Ok(r) => {
                        acked.push((s, body, r.into_inner().seq));
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        unanswered.push((s, body));
                        break;
                    }
                }
            }
            (acked, unanswered)
        }));
    }
    let erasure = (o.erase_every > 0 && n.is_multiple_of(o.erase_every))
        .then(|| tokio::spawn(erase_one(channel.clone(), t.key.clone(), t.pype.clone(), format!("erased{n}"))));
    let window = o.min_ms + below(rng, o.max_ms.saturating_sub(o.min_ms) + 1);
    tokio::time::sleep(Duration::from_millis(window)).await;
    let waited = Instant::now();
    while answered.load(Ordering::Relaxed) < o.min_acks {
        if waited.elapsed() > MIN_ACKS_WAIT {
            bail!(
                "cycle {n}: only {} of the {} posts the cycle needs were acknowledged in {} s more",
                answered.load(Ordering::Relaxed),
                o.min_acks,
                MIN_ACKS_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(server); // SIGKILL, and waited for
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let (acked, unanswered) = task.await?;
        for (s, body, seq) in acked {
            if ledger.acked.insert((s, body.clone()), seq).is_some() {
                bail!("a body was posted twice: {body}");
            }
        }
        ledger.unanswered.extend(unanswered);
    }
    if let Some(e) = erasure
        && let Some(user) = e.await?
    {
        ledger.erasures.push(user);
    }
    Ok(ready_in)
}

async fn all_messages(channel: &Channel, key: &str, session: &str) -> Result<Vec<(u64, String)>> {
    let mut views = pb::view_service_client::ViewServiceClient::new(channel.clone());
    let (mut out, mut after) = (Vec::new(), 0);
    loop {
        let request = pb::ListMessagesRequest { session_id: session.into(), after_seq: after, page_size: 500 };
        let page = views.list_messages(authed(key, request)).await?.into_inner();
        out.extend(page.messages.into_iter().map(|m| (m.seq, m.body)));
        if page.next_after_seq == 0 {
            return Ok(out);
        }
        after = page.next_after_seq;
    }
}

pub async fn run(o: Options) -> Result<()> {
    std::fs::create_dir_all(&o.dir)?;
    let work = tempfile::Builder::new().prefix("crash-cycles-").tempdir_in(&o.dir)?;
    let data = work.path().join("data");
    let started = Instant::now();
    let t = {
        let server = start_pypes(&data, 100_000)?;
        server.ready().await?;
        let t = tenant(connect(&server).await?, o.sessions.max(1)).await?;
        drop(server);
        t
    };
    let mut rng = Rng(o.seed | 1);
    let mut ledger = Ledger::default();
    let mut ready_ms = Vec::new();
    for n in 1..=o.cycles {
        let ready = cycle(&o, &data, &t, n, &mut rng, &mut ledger).await?;
        ready_ms.push(ready.as_secs_f64() * 1000.0);
        if n % 50 == 0 || n == o.cycles {
            println!(
                "# cycle {n}/{}: {} acknowledged, {} cut off so far ({:.0} s)",
                o.cycles,
                ledger.acked.len(),
                ledger.unanswered.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // Read everything back through the API.
    let server = start_pypes(&data, 100_000)?;
    server.ready().await?;
    let channel = connect(&server).await?;
    let (mut found, mut lost, mut duplicated, mut moved, mut not_dense, mut cut_off_found) = (0, 0, 0, 0, 0, 0);
    let mut total = 0;
    let mut problems = Vec::new();
    for (s, session) in t.sessions.iter().enumerate() {
        let messages = all_messages(&channel, &t.key, session).await?;
        total += messages.len();
        if messages.iter().map(|m| m.0).ne(1..=messages.len() as u64) {
            not_dense += 1;
            problems.push(format!("Session {s}: numbers are not dense"));
        }
        let mut at: HashMap<&str, Vec<u64>> = HashMap::new();
        for (seq, body) in &messages {
            at.entry(body.as_str()).or_default().push(*seq);
        }
        for (body, seqs) in &at {
            if seqs.len() > 1 {
                duplicated += seqs.len() - 1;
                problems.push(format!("Session {s}: {body} {} times", seqs.len()));
            }
        }
        for ((ss, body), seq) in ledger.acked.iter().filter(|((ss, _), _)| *ss == s) {
            match at.get(body.as_str()) {
                None => {
                    lost += 1;
                    problems.push(format!("Session {ss}: acknowledged {body} (#{seq}) is lost"));
                }
                Some(seqs) if !seqs.contains(seq) => {
                    moved += 1;
                    problems.push(format!("Session {ss}: {body} acknowledged as #{seq}, found as {seqs:?}"));
                }
                Some(_) => found += 1,
            }
        }
        cut_off_found += ledger.unanswered.iter().filter(|(ss, b)| *ss == s && at.contains_key(b.as_str())).count();
        let known = ledger.acked.keys().filter(|(ss, _)| *ss == s).count()
            + ledger.unanswered.iter().filter(|(ss, b)| *ss == s && at.contains_key(b.as_str())).count();
        if at.len() != known {
            problems.push(format!("Session {s}: {} distinct messages, {known} posted", at.len()));
        }
    }
    // The sessions view counts what the log holds (projections survived).
    let mut views = pb::view_service_client::ViewServiceClient::new(channel.clone());
    let mut view_mismatch = 0;
    for (s, session) in t.sessions.iter().enumerate() {
        let expected = all_messages(&channel, &t.key, session).await?.len() as u64;
        let waited = Instant::now();
        loop {
            let request = pb::GetSessionViewRequest { session_id: session.clone() };
            let count = views.get_session_view(authed(&t.key, request)).await?.into_inner().message_count;
            if count == expected {
                break;
            }
            if waited.elapsed() > Duration::from_secs(60) {
                view_mismatch += 1;
                problems.push(format!("Session {s}: the sessions view counts {count}, the log {expected}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every acknowledged erasure goes on to its certificate.
    let mut erasure = pb::erasure_service_client::ErasureServiceClient::new(channel);
    let mut certified = 0;
    for user in &ledger.erasures {
        let waited = Instant::now();
        loop {
            let request = pb::GetErasureRequest { subject_id: user.clone(), ..Default::default() };
            let step = erasure.get_erasure(authed(&t.key, request)).await?.into_inner().step;
            if step == "certified" {
                certified += 1;
                break;
            }
            if waited.elapsed() > Duration::from_secs(120) {
                problems.push(format!("erasure of {user} stuck at {step}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The file log's shape (absent on a database log): its segments, and
    // how many had their index spilled to the scratch file, which a start
    // does for every sealed segment as it scans it.
    let shape = server.metrics(&["pypes_log_segments", "pypes_log_index_spilled_segments"]).await?;
    let (segments, spilled) = (shape[0].unwrap_or(0.0) as u64, shape[1].unwrap_or(0.0) as u64);
    if segments > 1 && spilled + 1 < segments {
        problems.push(format!("{spilled} of the log's {} sealed segments have their index spilled", segments - 1));
    }
    drop(server);
    ready_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ready_ms.get(((ready_ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "BENCH crash-cycles cycles={} acknowledged={} found={found} lost={lost} duplicated={duplicated} \
         misnumbered={moved} cut_off={} cut_off_found={cut_off_found} messages={total} erasures={} \
         certified={certified} view_mismatch={view_mismatch} not_dense={not_dense} ready_p50_ms={:.0} \
         ready_p99_ms={:.0} segments={segments} spilled_segments={spilled} seconds={seconds:.0}",
        o.cycles,
        ledger.acked.len(),
        ledger.unanswered.len(),
        ledger.erasures.len(),
        pct(0.5),
        pct(0.99),
    );
    if let Some(parent) = o.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json = format!(
        "{{\"cycles\": {}, \"clients\": {}, \"sessions\": {}, \"acknowledged\": {}, \"found\": {found}, \
         \"lost\": {lost}, \"duplicated\": {duplicated}, \"misnumbered\": {moved}, \"cut_off\": {}, \
         \"cut_off_found\": {cut_off_found}, \"messages\": {total}, \"erasures\": {}, \"certified\": {certified}, \
         \"view_mismatch\": {view_mismatch}, \"not_dense\": {not_dense}, \"ready_p50_ms\": {:.1}, \
         \"ready_p99_ms\": {:.1}, \"segments\": {segments}, \"spilled_segments\": {spilled}, \
         \"seconds\": {seconds:.1}}}\n",
        o.cycles,
        o.clients,
        o.sessions,
        ledger.acked.len(),
        ledger.unanswered.len(),
        ledger.erasures.len(),
        pct(0.5),
        pct(0.99),
    );
    std::fs::write(&o.out, json).with_context(|| format!("writing {}", o.out.display()))?;
    if !problems.is_empty() {
        for p in problems.iter().take(20) {
            eprintln!("PROBLEM {p}");
        }
        bail!("{} problems after {} crash cycles (first ones above)", problems.len(), o.cycles);
    }
    Ok(())
}
