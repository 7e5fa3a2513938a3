//! The auditors' commands: `pypes audit verify` (every record's checksum,
//! the hash chain and the signed checkpoints of the whole log, with only
//! the public key) and `pypes replay --stream S --as-of T` (one stream's
//! timeline and state as of a time, erased content shown as `[erased]`).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use actors::Codec;
use anyhow::{Context, bail};
use domain::pype::Pype;
use domain::session::{Session, SessionEvent};
use domain::subject::{Subject, SubjectEvent};
use domain::tenant::Tenant;
use eventlog::file::vfs::OsVfs;
use eventlog::file::{PUBLIC_KEY_FILE, VerifyOptions, verify_log_with};
use eventlog::{Direction, EventLog, ReadFrom, RecordedEvent, SystemClock};
use keystore::embedded::OpenMode;
use keystore::{KeyPolicy, Keyring};
use uuid::Uuid;

use crate::config::{KeysBackend, LogBackend};

/// Verifies the log of `data_dir`; the public key comes from `public_key`
/// (hex) or, failing that, from the log's own `signing.pub` (an auditor
/// should pass the key from a trusted place instead).
/// With `trail`, the audit entries are printed after the summary.
/// What `audit verify` demands of the signed heads.
#[derive(Debug, Clone, Default)]
pub struct HeadPolicy {
    /// The witness directory holding a second copy of the log's signed head.
    pub witness_dir: Option<std::path::PathBuf>,
    /// Accept a log (or audit trail) that holds records but no signed head.
    pub allow_missing_head: bool,
}

/// Which audit entries `audit trail` shows: all of them, or those in a
/// time range and matching every field given.
#[derive(Debug, Clone, Default)]
pub struct TrailQuery {
    /// Unix microseconds, inclusive.
    pub since: Option<i64>,
    /// Unix microseconds, exclusive.
    pub until: Option<i64>,
    /// An action, or a prefix ending in `.` (`auth.` for every sign-in).
    pub action: Option<String>,
    pub actor: Option<String>,
    pub tenant: Option<Uuid>,
    pub outcome: Option<String>,
}

impl TrailQuery {
    fn matches(&self, e: &audit::TrailEntry) -> bool {
        self.since.is_none_or(|t| e.at_micros >= t)
            && self.until.is_none_or(|t| e.at_micros < t)
            && self.action.as_deref().is_none_or(
                |a| {
                    if a.ends_with('.') { e.action.starts_with(a) } else { e.action == a }
                },
            )
            && self.actor.as_deref().is_none_or(|a| e.actor == a)
            && self.tenant.is_none_or(|t| e.tenant == Some(t))
            && self.outcome.as_deref().is_none_or(|o| e.outcome == o)
    }
}

/// A report for people, and the same as JSON (`--json`).
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
    /// The entries the trail query matched (none without one).
    pub entries: Vec<audit::TrailEntry>,
}

pub fn verify(
    data_dir: &Path,
    public_key: Option<&str>,
    heads: &HeadPolicy,
    trail: Option<&TrailQuery>,
) -> anyhow::Result<Report> {
    let log_dir = data_dir.join("log");
    let (hex_key, from) = match public_key {
        Some(k) => (k.trim().to_string(), "given on the command line".to_string()),
        None => {
            let path = log_dir.join(PUBLIC_KEY_FILE);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {} (or pass --public-key)", path.display()))?;
            // Exactly as the log writes it: 64 lower-case hex digits and a newline.
            if text.len() != 65
                || !text.ends_with('\n')
                || text[..64].bytes().any(|b| !b.is_ascii_digit() && !(b'a'..=b'f').contains(&b))
            {
                bail!("{}: not 64 lower-case hex digits and a newline (altered or damaged)", path.display());
            }
            (
                text.trim().to_string(),
                format!("read from {} (pass --public-key from a trusted copy for a real audit)", path.display()),
            )
        }
    };
    let bytes: [u8; 32] =
        hex::decode(&hex_key).ok().and_then(|b| b.try_into().ok()).context("the public key is not 64 hex digits")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).context("not an Ed25519 public key")?;
    let mut audit = audit::AuditChecker::new(key);
    let mut entries = Vec::new();
    let mut visit = |e: RecordedEvent| {
        audit.visit(&e)?;
        if let Some(q) = trail
            && e.stream.starts_with(audit::STREAM_PREFIX)
            && let Some(entry) = audit::TrailEntry::read(&e).filter(|x| q.matches(x))
        {
            entries.push(entry);
        }
        Ok(())
    };
    let options = VerifyOptions {
        witness: heads.witness_dir.as_ref().map(|d| d.join(eventlog::file::witness_file_name(&key))),
        require_head: !heads.allow_missing_head,
    };
    let report =
        verify_log_with(&OsVfs, &log_dir, &key, &options, Some(&mut visit)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let head = audit::read_head(data_dir)?;
    let audit = audit.finish(head.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if head.is_none() && audit.entries > 0 && !heads.allow_missing_head {
        bail!(
            "{}: the audit trail's signed head is missing although the trail holds {} entries: a cut tail could \
             not be seen (pass --allow-missing-head to verify without it)",
            data_dir.join(audit::HEAD_FILE).display(),
            audit.entries
        );
    }
    let mut out = String::new();
    let _ = writeln!(out, "log {}: OK", log_dir.display());
    let _ = writeln!(out, "  public key        {hex_key} ({from})");
    let _ = writeln!(out, "  segments          {}", report.segments);
    let _ = writeln!(out, "  frames            {} (checksums and hash chain verified)", report.frames);
    let _ = writeln!(out, "  events            {} ({} redacted by scavenging)", report.events, report.redacted_events);
    let _ = writeln!(out, "  signed checkpoints {}", report.checkpoints);
    let _ = writeln!(
        out,
        "  unsigned tail     {} frames (covered by the chain, not yet by a signature)",
        report.unsigned_tail_frames
    );
    let _ = writeln!(out, "  signed head       {}", if report.signed_head_checked { "checked" } else { "absent" });
    let _ = writeln!(
        out,
        "  witness           {}",
        match (&options.witness, report.witness_checked) {
            (Some(w), true) => format!("checked ({})", w.display()),
            (Some(w), false) => format!("absent ({})", w.display()),
            (None, _) => "none configured (log.witness_dir)".to_string(),
        }
    );
    let log_json = serde_json::json!({
        "backend": "file",
        "dir": log_dir.display().to_string(),
        "public_key": hex_key,
        "segments": report.segments,
        "frames": report.frames,
        "events": report.events,
        "redacted_events": report.redacted_events,
        "signed_checkpoints": report.checkpoints,
        "unsigned_tail_frames": report.unsigned_tail_frames,
        "signed_head_checked": report.signed_head_checked,
        "witness_checked": report.witness_checked,
    });
    Ok(finish_report(out, log_json, &audit, trail.map(|_| entries)))
}

/// The audit part of the report, the entries (for `audit trail`), and
/// the JSON form of it all.
fn finish_report(
    mut out: String,
    log: serde_json::Value,
    audit: &audit::AuditReport,
    entries: Option<Vec<audit::TrailEntry>>,
) -> Report {
    audit_summary(&mut out, audit, entries.as_deref());
    let kept = entries.clone().unwrap_or_default();
    let mut json = serde_json::json!({
        "ok": true,
        "log": log,
        "audit": {
            "streams": audit.streams,
            "entries": audit.entries,
            "attempts": audit.attempts,
            "signed_checkpoints": audit.checkpoints,
            "unsigned_tail": audit.unsigned_tail,
            "signed_head_checked": audit.heads_checked > 0,
        },
    });
    if let Some(entries) = entries {
        json["entries"] = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "time": audit::time::time_text(e.at_micros),
                    "stream": e.stream,
                    "seq": e.seq,
                    "action": e.action,
                    "actor": e.actor,
                    "tenant": e.tenant.map(|t| t.to_string()),
                    "target": e.target,
                    "outcome": e.outcome,
                    "detail": e.detail,
                    "count": e.count,
                })
            })
            .collect();
    }
    Report { text: out, json, entries: kept }
}

/// The audit trail's part of a verification report (and the entries, for
/// `audit trail`, in aligned columns).
fn audit_summary(out: &mut String, audit: &audit::AuditReport, entries: Option<&[audit::TrailEntry]>) {
    let _ = writeln!(out, "audit streams: OK");
    let _ = writeln!(out, "  streams           {}", audit.streams);
    let _ = writeln!(out, "  entries           {} ({} attempts; hash links verified)", audit.entries, audit.attempts);
    let _ = writeln!(out, "  signed checkpoints {}", audit.checkpoints);
    let _ = writeln!(out, "  unsigned tail     {} entries", audit.unsigned_tail);
    let _ = writeln!(
        out,
        "  signed head       {}",
        if audit.heads_checked > 0 { "checked (audit.head)" } else { "absent" }
    );
    if let Some(entries) = entries {
        const HEAD: [&str; 9] =
            ["TIME (UTC)", "STREAM #SEQ", "ACTION", "ACTOR", "TENANT", "TARGET", "OUTCOME", "COUNT", "DETAIL"];
        let rows: Vec<[String; 9]> = entries
            .iter()
            .map(|e| {
                let [time, stream, action, actor, tenant, target, outcome, detail] = e.columns();
                [time, stream, action, actor, tenant, target, outcome, e.count.to_string(), detail]
            })
            .collect();
        let mut widths = HEAD.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let _ = writeln!(out, "\n{} entries shown", rows.len());
        let heading = HEAD.map(str::to_string);
        for row in std::iter::once(&heading).chain(&rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$}  ");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
}

/// Verifies the audit trail on a database backend (PostgreSQL, KurrentDB):
/// every audit stream's hash links and signed checkpoints, read through
/// the log. The file log's own checksums and hash chain have no
/// counterpart there (the database's integrity is its own). The public
/// key is given, or derived from this node's signing key.
pub async fn verify_database(
    data_dir: &Path,
    backend: &LogBackend,
    public_key: Option<&str>,
    trail: Option<&TrailQuery>,
) -> anyhow::Result<Report> {
    let (key, from) = match public_key {
        Some(k) => {
            let bytes: [u8; 32] = hex::decode(k.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("the public key is not 64 hex digits")?;
            (
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).context("not an Ed25519 public key")?,
                "given on the command line",
            )
        }
        None => (
            crate::wiring::read_signing_key(data_dir)?.verifying_key(),
            "derived from this node's signing key (pass --public-key from a trusted copy for a real audit)",
        ),
    };
    let dir = data_dir.to_path_buf();
    let log = crate::wiring::open_log(
        backend,
        data_dir,
        move || crate::wiring::read_signing_key(&dir),
        Arc::new(SystemClock),
    )
    .await?;
    let head = audit::read_head(data_dir)?;
    let keep = |e: &audit::TrailEntry| trail.is_some_and(|q| q.matches(e));
    let (audit, entries) =
        audit::check_trail(log.as_ref(), key, head.as_deref(), keep).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let events = audit.entries;
    let mut out = String::new();
    let _ = writeln!(out, "log {backend}: the database's own integrity (no file hash chain on this backend)");
    let _ = writeln!(out, "  public key        {} ({from})", hex::encode(key.as_bytes()));
    let _ = writeln!(out, "  audit events read {events}");
    let log_json = serde_json::json!({
        "backend": backend.to_string(),
        "public_key": hex::encode(key.as_bytes()),
        "audit_events_read": events,
    });
    Ok(finish_report(out, log_json, &audit, trail.map(|_| entries)))
}

/// Parses `--as-of`: unix seconds, or `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn parse_as_of(text: &str) -> anyhow::Result<i64> {
    audit::time::parse_time(text).map_err(|e| anyhow::anyhow!("--as-of {e}"))
}

pub use audit::time::time_text;

/// A sealed field as replay shows it: `[erased]` once its key is gone.
fn shown(text: &str) -> String {
    if text.is_empty() { "[erased]".into() } else { text.to_string() }
}

/// One value of an event for people: times (`*_micros`, `*_at`) in RFC
/// 3339, byte strings (hashes) in hex, nothing for an absent option.
fn value_text(key: &str, v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    Some(match v {
        Value::Null => return None,
        Value::String(s) if s.contains(char::is_whitespace) || s.is_empty() => format!("{s:?}"),
        Value::String(s) => s.clone(),
        Value::Number(n) if key.ends_with("_micros") || key == "at" => {
            n.as_i64().map_or_else(|| n.to_string(), time_text)
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.as_u64().is_some_and(|b| b <= 255)) => {
            items.iter().filter_map(Value::as_u64).map(|b| format!("{b:02x}")).collect()
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(|i| value_text("", i)).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(fields) => {
            let parts: Vec<String> =
                fields.iter().filter_map(|(k, v)| value_text(k, v).map(|t| format!("{k}={t}"))).collect();
            format!("{{{}}}", parts.join(" "))
        }
        other => other.to_string(),
    })
}

/// An event as `Name field=value …` (no Rust debug formatting).
fn describe_event<E: serde::Serialize + std::fmt::Debug>(e: &E) -> String {
    match serde_json::to_value(e) {
        Ok(serde_json::Value::String(unit)) => unit,
        Ok(serde_json::Value::Object(variant)) if variant.len() == 1 => {
            let (name, body) = variant.into_iter().next().unwrap_or_default();
            match body {
                serde_json::Value::Object(fields) => {
                    let parts: Vec<String> =
                        fields.iter().filter_map(|(k, v)| value_text(k, v).map(|t| format!("{k}={t}"))).collect();
                    if parts.is_empty() { name } else { format!("{name} {}", parts.join(" ")) }
                }
                other => value_text(&name, &other).map_or(name.clone(), |t| format!("{name} {t}")),
            }
        }
        _ => format!("{e:?}"),
    }
}

/// A state (`Option<enum>` or an enum) as its lower-case name, `none` when absent.
fn state_text<T: serde::Serialize>(state: &T) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::Null) => "none".into(),
        Ok(serde_json::Value::String(s)) => s.to_lowercase(),
        Ok(other) => value_text("", &other).unwrap_or_default(),
        Err(_) => "?".into(),
    }
}

fn describe_session(e: &SessionEvent) -> String {
    match e {
        SessionEvent::MessagePosted { seq, sender, body, device, .. } => format!(
            "MessagePosted #{seq} from {sender}: {}{}",
            shown(body),
            device.as_deref().map(|d| format!(" (device {})", shown(d))).unwrap_or_default()
        ),
        other => describe_event(other),
    }
}

fn describe_subject(e: &SubjectEvent) -> String {
    match e {
        SubjectEvent::Registered { username, email, phone, .. } => {
            format!("Registered username={} email={} phone={}", shown(username), shown(email), shown(phone))
        }
        SubjectEvent::Invited { email, .. } => format!("Invited email={}", shown(email)),
        SubjectEvent::Onboarded { username, phone, .. } => {
            format!("Onboarded username={} phone={}", shown(username), shown(phone))
        }
        other => describe_event(other),
    }
}

async fn fold<A: Codec>(
    events: &[RecordedEvent],
    keyring: &Keyring,
    describe: impl Fn(&A::Event) -> String,
    out: &mut String,
    rows: &mut Vec<serde_json::Value>,
) -> anyhow::Result<A> {
    let mut state = A::default();
    for r in events {
        let e = A::decode(r, keyring).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let (at, event) = (time_text(r.recorded_at_micros), describe(&e));
        let _ = writeln!(out, "  v{:<5} {at}  {event}", r.version);
        rows.push(serde_json::json!({"version": r.version, "position": r.position, "recorded_at": at, "event": event}));
        state.evolve(&e);
    }
    Ok(state)
}

/// The key store and the log of a stopped server, on its backends.
async fn open_stopped(
    data_dir: &Path,
    backends: &(LogBackend, KeysBackend),
) -> anyhow::Result<(Keyring, Arc<dyn EventLog>)> {
    let clock: Arc<dyn eventlog::Clock> = Arc::new(SystemClock);
    let keys = crate::wiring::open_keys(&backends.1, data_dir, clock.clone(), OpenMode::MustExist)
        .await
        .context("is the server stopped?")?;
    let keyring = Keyring::new(keys.store.clone(), KeyPolicy::default())?;
    let dir = data_dir.to_path_buf();
    let signing = move || crate::wiring::read_signing_key(&dir);
    let log = crate::wiring::open_log(&backends.0, data_dir, signing, clock).await.context("is the server stopped?")?;
    Ok((keyring, log))
}

/// The timeline and state of `stream` as of `as_of_micros`. Needs the
/// server stopped (the log and key store are opened for reading).
pub async fn replay_stream(
    data_dir: &Path,
    backends: &(LogBackend, KeysBackend),
    stream: &str,
    as_of_micros: i64,
) -> anyhow::Result<Report> {
    let (keyring, log) = open_stopped(data_dir, backends).await?;
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page = log
            .read_stream(stream, ReadFrom::Version(from), Direction::Forward, 1024)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let done = page.len() < 1024;
        from = page.last().map_or(from, |r| r.version + 1);
        events.extend(page.into_iter().filter(|r| r.recorded_at_micros <= as_of_micros));
        if done {
            break;
        }
    }
    let mut out = format!("stream {stream} as of {}: {} events\n", time_text(as_of_micros), events.len());
    let kind = stream.split('-').next().unwrap_or_default();
    let mut rows = Vec::new();
    match kind {
        "session" => {
            let s: Session = fold(&events, &keyring, describe_session, &mut out, &mut rows).await?;
            let participants: Vec<String> = s.participants.keys().map(ToString::to_string).collect();
            let _ = write!(
                out,
                "state: {}, {} messages, participants: {}",
                state_text(&s.status),
                s.last_seq,
                if participants.is_empty() { "none".into() } else { participants.join(", ") }
            );
        }
        "subject" => {
            let s: Subject = fold(&events, &keyring, describe_subject, &mut out, &mut rows).await?;
            let _ = write!(
                out,
                "state: {}, username {}, email {}",
                state_text(&s.status),
                shown(&s.username),
                shown(&s.email)
            );
        }
        "pype" => {
            let p: Pype = fold(&events, &keyring, describe_event, &mut out, &mut rows).await?;
            let _ = write!(out, "state: name {}, archived {}, {} agents", shown(&p.name), p.archived, p.agents.len());
        }
        "tenant" => {
            let t: Tenant = fold(&events, &keyring, describe_event, &mut out, &mut rows).await?;
            let _ =
                write!(out, "state: name {}, cancelled {}, {} API keys", shown(&t.name), t.cancelled, t.api_keys.len());
        }
        other => bail!("stream {stream:?}: unknown kind {other:?} (session-, subject-, pype- or tenant-)"),
    }
    // The state is the last line; in JSON without its "state: ".
    let state = out.rsplit_once('\n').map_or("", |(_, last)| last).trim_start_matches("state: ").to_string();
    out.push('\n');
    let json = serde_json::json!({
        "stream": stream,
        "as_of": time_text(as_of_micros),
        "events": rows,
        "state": state,
    });
    Ok(Report { text: out, json, entries: Vec::new() })
}

/// What a report shows of a sealed field: never its content.
fn sealed_state(f: &projections::OpenedField) -> &'static str {
    match f {
        projections::OpenedField::Text(_) => "[sealed]",
        projections::OpenedField::Erased => "[erased]",
    }
}

/// A progress bar on stderr, redrawn at most ten times a second.
pub struct Progress {
    label: String,
    last: std::time::Instant,
    started: std::time::Instant,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Self {
        let now = std::time::Instant::now();
        Self { label: label.into(), last: now - std::time::Duration::from_secs(1), started: now }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        use std::io::Write as _;
        let finished = done >= total;
        if !finished && self.last.elapsed() < std::time::Duration::from_millis(100) {
            return;
        }
        self.last = std::time::Instant::now();
        let frac = if total == 0 { 1.0 } else { (done as f64 / total as f64).min(1.0) };
        let filled = (frac * 30.0) as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{:<10} [{}{}] {:>5.1}% {done}/{total} positions, {:.0}/s",
            self.label,
            "#".repeat(filled),
            ".".repeat(30 - filled),
            frac * 100.0,
            rate
        );
        if finished {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// Rebuilds every read model as of `as_of_micros` into `into` (one redb
/// file per projection, the same format the server serves from) and writes
/// `report.txt` beside them: each Session with its messages and the
/// end-user directory, every sealed field checked against the key store and
/// shown as `[sealed]` (its key is live; the report never writes personal
/// data or content in clear to disk) or `[erased]`. Needs the server
/// stopped (the log and key store are opened for reading).
pub async fn replay_into(
    data_dir: &Path,
    backends: &(LogBackend, KeysBackend),
    into: &Path,
    as_of_micros: i64,
) -> anyhow::Result<String> {
    use projections::{ViewStore, directory, rebuild_all, sessions};
    if into.exists() && std::fs::read_dir(into)?.next().is_some() {
        bail!("{} is not empty: replay into a new directory", into.display());
    }
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let (keyring, log) = open_stopped(data_dir, backends).await?;
    let mut out = format!("read models as of {} into {}\n", time_text(as_of_micros), into.display());
    let rt = tokio::runtime::Handle::current();
    let built = projections::all();
    let mut stores = Vec::new();
    for p in &built {
        stores.push((p.name(), ViewStore::open(&into.join(format!("{}.redb", p.name())))?));
    }
    // Every view from one read of the log, one thread applying each.
    let (log_reader, built_for) = (log.clone(), built.clone());
    let (stores, skipped) = tokio::task::spawn_blocking(move || {
        let mut bar = Progress::new("views");
        let targets: Vec<(&dyn projections::Projection, &ViewStore)> =
            built_for.iter().zip(&stores).map(|(p, (_, s))| (p.as_ref(), s)).collect();
        let skipped = rebuild_all(&targets, &log_reader, &rt, Some(as_of_micros), 4096, &mut |d, t| bar.update(d, t));
        skipped.map(|s| (stores, s))
    })
    .await??;
    for ((name, store), skipped) in stores.iter().zip(&skipped) {
        let meta = store.generations()?.0.unwrap_or_default();
        let _ = writeln!(
            out,
            "  {name:<10} {} events applied, {} poison events skipped",
            meta.events_applied,
            skipped.len()
        );
        for s in skipped {
            let _ =
                writeln!(out, "    skipped position {} ({} in {}): {}", s.position, s.event_type, s.stream, s.error);
        }
    }
    // A readable report, with sealed fields opened now.
    let mut report = format!("pypes read models as of {}\n\n", time_text(as_of_micros));
    if let Some((_, store)) = stores.iter().find(|(n, _)| *n == sessions::NAME)
        && let Some(view) = store.read()?
    {
        for (_, v) in view.dump("sessions")? {
            let row = <proto::views::SessionRow as proto::Message>::decode(v.as_slice())?;
            let (Ok(tenant), Ok(session)) = (Uuid::from_slice(&row.tenant_id), Uuid::from_slice(&row.session_id))
            else {
                continue;
            };
            let state = proto::views::SessionState::try_from(row.state).map(|s| s.as_str_name()).unwrap_or("?");
            let _ = writeln!(
                report,
                "session {session} tenant {tenant} pype {} started {} state {state}{} messages {}",
                Uuid::from_slice(&row.pype_id).unwrap_or_default(),
                time_text(row.started_micros),
                if row.erased { " (end user erased)" } else { "" },
                row.messages
            );
            let stream = actors::stream_name(events::Kind::Session, tenant, session);
            let cursor = sessions::message_cursor(&view, &row, 0)?;
            for m in sessions::list_messages(log.as_ref(), &cursor, usize::MAX).await? {
                let body = projections::open_sealed(&keyring, tenant, &stream, "body", m.body.as_ref()).await?;
                let _ = writeln!(
                    report,
                    "  #{:<4} {} {}: {}",
                    m.seq,
                    time_text(m.sent_at_micros),
                    Uuid::from_slice(&m.sender_id).map(|u| u.to_string()).unwrap_or_else(|_| "[erased]".into()),
                    sealed_state(&body)
                );
            }
        }
    }
    if let Some((_, store)) = stores.iter().find(|(n, _)| *n == directory::NAME)
        && let Some(view) = store.read()?
    {
        report.push_str("\nend users\n");
        for (_, v) in view.dump("subjects")? {
            let row = <proto::views::SubjectRow as proto::Message>::decode(v.as_slice())?;
            let (Ok(tenant), Ok(subject)) = (Uuid::from_slice(&row.tenant_id), Uuid::from_slice(&row.subject_id))
            else {
                continue;
            };
            let stream = actors::stream_name(events::Kind::Subject, tenant, subject);
            let mut line = format!("  {subject} tenant {tenant}");
            for name in directory::FIELDS {
                if let Some(r) = row.fields.get(name) {
                    let v = projections::open_sealed(&keyring, tenant, &stream, name, Some(r)).await?;
                    let _ = write!(line, " {name}={}", sealed_state(&v));
                }
            }
            let _ = writeln!(report, "{line}");
        }
    }
    std::fs::write(into.join("report.txt"), &report)?;
    let _ = writeln!(
        out,
        "  report.txt: Sessions with their messages and the directory; sealed fields as [sealed] (key live) or [erased]"
    );
    Ok(out)
}
