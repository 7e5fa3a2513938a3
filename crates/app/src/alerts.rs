//! Watching privileged access: a follower of every node's audit stream
//! evaluates the rules of [`crate::alert_rules`] and appends what they
//! raise to the `alerts` stream; each alert webhook of the config (an
//! operator's SIEM or pager) gets every alert, in order, signed like a
//! tenant's webhook and retried with back-off by the same webhook
//! component (`webhooks`: client, destination policy, signature, back-off).
//! Neither waits on the other or on the API: a dead receiver only grows
//! its own backlog.
//!
//! Exactly once into the stream: each alert names the audit entry that
//! raised it (its global position), and the follower's checkpoint
//! (`process-alerts`) is the oldest position its windows still hold. After
//! a restart it replays from there, rebuilding the windows, and writes
//! only what comes after the last alert's entry. Appends expect the
//! stream's version, so two nodes following at once write each alert once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use eventlog::{
    Clock, Direction, EventFilter, EventLog, ExpectedVersion, LogError, ReadFrom, SubscribeFrom, SubscriptionMessage,
    SubscriptionOptions, subscribe_all,
};
use uuid::Uuid;
use webhooks::{backoff, deliver::Client, sign};

use crate::alert_rules::{AlertRules, RULES, Watch};
use crate::delivery::append_kept;

/// How often the follower's checkpoint is written, at most.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Alerts read per page by a hook.
const HOOK_PAGE: usize = 64;
/// An idle hook looks at the alerts stream at least this often (a commit
/// wakes it sooner).
const IDLE_LOOK: Duration = Duration::from_secs(5);
/// The first wait after the log failed a read or write (doubling, with
/// jitter, up to [`HOOK_LONGEST_WAIT`]).
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two attempts to a failing alert hook.
const HOOK_LONGEST_WAIT: Duration = Duration::from_secs(300);

/// An alert webhook from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertHook {
    /// A short name (letters, digits, `-`, `_`): its checkpoint's stream.
    pub name: String,
    pub url: String,
    /// The signing secrets: the first signs; during a rotation both do.
    pub secrets: Vec<Vec<u8>>,
}

/// `[alerts]`.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// Whether this node follows the audit trail (default true; in a
    /// cluster several may: each alert is still written once).
    pub enabled: bool,
    pub rules: AlertRules,
    pub hooks: Vec<AlertHook>,
    /// The first retry's delay (doubles with jitter up to 5 minutes).
    pub first_retry: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self { enabled: true, rules: AlertRules::default(), hooks: Vec::new(), first_retry: backoff::FIRST }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    /// Alerts written, by rule (in [`RULES`] order).
    pub raised: [AtomicU64; RULES.len()],
    pub hook_delivered: AtomicU64,
    pub hook_failed_attempts: AtomicU64,
    /// Alerts not yet delivered to some hook (sum over hooks).
    pub hook_backlog: AtomicU64,
    /// The next audit position the follower reads.
    pub next_position: AtomicU64,
}

/// The running watch: its counters.
pub struct Alerts {
    pub metrics: Arc<AlertMetrics>,
}

impl Alerts {
    /// Starts the follower and one sender per hook on the current runtime.
    pub fn start(
        log: Arc<dyn EventLog>,
        clock: Arc<dyn Clock>,
        settings: AlertSettings,
        client: Option<Client>,
    ) -> Arc<Self> {
        let metrics = Arc::new(AlertMetrics::default());
        if settings.enabled {
            let (log, rules, m) = (log.clone(), settings.rules.clone(), metrics.clone());
            tokio::spawn(async move {
                let mut failures = 0u32;
                loop {
                    match follow(log.clone(), rules.clone(), &m).await {
                        // Another node wrote an alert: on from the checkpoint.
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let wait = retry_wait(failures);
                            let ms = wait.as_millis() as u64;
                            tracing::warn!(error = %e, retry_in_ms = ms, "access alerts: following the audit trail failed");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            });
        }
        if let Some(client) = client {
            let backlogs: Arc<Vec<AtomicU64>> = Arc::new(settings.hooks.iter().map(|_| AtomicU64::new(0)).collect());
            for (i, hook) in settings.hooks.into_iter().enumerate() {
                let sender = HookSender {
                    log: log.clone(),
                    clock: clock.clone(),
                    client: client.clone(),
                    hook,
                    first_retry: settings.first_retry,
                    metrics: metrics.clone(),
                    backlogs: backlogs.clone(),
                    index: i,
                };
                tokio::spawn(sender.run());
            }
        }
        Arc::new(Self { metrics })
    }
}

/// Follows the audit streams until an error (or another node's alert
/// moved the stream: then the caller starts again from the checkpoint).
async fn follow(log: Arc<dyn EventLog>, rules: AlertRules, metrics: &AlertMetrics) -> Result<(), String> {
    let checkpoint_stream = events::stream::alerts_process_stream();
    let text = |e: LogError| e.to_string();
    let checkpoint = match actors::write::last_event(log.as_ref(), &checkpoint_stream).await.map_err(text)? {
        Some(r) => Some(events::codec::decode_process_checkpoint(&r).map_err(|e| e.to_string())?),
        None => None,
    };
    let (mut version, emitted_through) =
        match actors::write::last_event(log.as_ref(), events::stream::ALERTS).await.map_err(text)? {
            Some(r) => {
                let a = events::codec::decode_access_alert(&r).map_err(|e| e.to_string())?;
                (ExpectedVersion::Exact(r.version), Some(a.audit_position))
            }
            None => (ExpectedVersion::NoStream, None),
        };
    // The alerts written from the checkpoint on (rule, entry position): a
    // replay skips those, and forgets what it raises that is not among
    // them (the rules changed since; alerts are not raised retroactively).
    let mut written = std::collections::HashSet::new();
    if let (Some(from), Some(_)) = (checkpoint, emitted_through) {
        written = written_since(log.as_ref(), from).await?;
    }
    // The first start watches from now on, and says so in its checkpoint
    // at once (a crash before the next one must not skip entries).
    let start = match checkpoint {
        Some(p) => p,
        None => {
            let head = log.head();
            save_checkpoint(log.as_ref(), &checkpoint_stream, head).await?;
            head
        }
    };
    let from = match start {
        0 => SubscribeFrom::Start,
        p => SubscribeFrom::After(p - 1),
    };
    let filter = EventFilter {
        stream_prefixes: vec![events::stream::AUDIT_PREFIX.to_string()],
        event_types: vec![events::types::AUDIT_ENTRY.to_string()],
    };
    let mut sub = subscribe_all(log.clone(), from, filter, SubscriptionOptions::default());
    let mut watch = Watch::new(rules);
    let (mut saved, mut saved_at) = (start, Instant::now());
    let mut next = start;
    metrics.next_position.store(next, Relaxed);
    loop {
        let message = sub.next().await.map_err(text)?;
        if let SubscriptionMessage::Event(r) = &message {
            next = r.position + 1;
            let Some(entry) = audit::TrailEntry::read(r) else {
                tracing::warn!(stream = %r.stream, version = r.version, "access alerts: an audit entry does not decode; skipped");
                continue;
            };
            for raised in watch.observe(&entry, r.position) {
                if emitted_through.is_some_and(|p| r.position <= p) {
                    if !written.contains(&(raised.rule, r.position)) {
                        watch.forget(&raised);
                    }
                    continue; // written before the restart (or never: see above)
                }
                let alert = events::codec::AccessAlertState {
                    rule: raised.rule.into(),
                    actor: raised.actor,
                    tenant: raised.tenant,
                    at_micros: entry.at_micros,
                    audit_position: r.position,
                    audit_stream: r.stream.to_string(),
                    audit_seq: entry.seq,
                    count: raised.count,
                    threshold: raised.threshold,
                    detail: raised.detail,
                };
                let event = events::codec::access_alert(&alert);
                match actors::write::append(log.as_ref(), events::stream::ALERTS, version, vec![event]).await {
                    Ok(done) => {
                        version = ExpectedVersion::Exact(done.next_expected_version);
                        if let Some(i) = RULES.iter().position(|r| *r == raised.rule) {
                            metrics.raised[i].fetch_add(1, Relaxed);
                        }
                        tracing::warn!(rule = raised.rule, actor = %alert.actor, tenant = ?alert.tenant, "access alert");
                    }
                    // Another node wrote alerts: start again from the
                    // checkpoint, after its last one.
                    Err(LogError::WrongExpectedVersion { .. }) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        metrics.next_position.store(next, Relaxed);
        let keep = watch.oldest_needed().unwrap_or(next);
        if keep != saved
            && (saved_at.elapsed() >= CHECKPOINT_EVERY
                || matches!(message, SubscriptionMessage::CaughtUp { .. })
                    && saved_at.elapsed() >= Duration::from_secs(1))
        {
            save_checkpoint(log.as_ref(), &checkpoint_stream, keep).await?;
            (saved, saved_at) = (keep, Instant::now());
        }
    }
}

/// The (rule, entry position) of every alert whose entry is at or after
/// `from`, reading the alerts stream from its end.
async fn written_since(
    log: &dyn EventLog,
    from: u64,
) -> Result<std::collections::HashSet<(&'static str, u64)>, String> {
    let mut out = std::collections::HashSet::new();
    let mut at = ReadFrom::End;
    loop {
        let page = match log.read_stream(events::stream::ALERTS, at, Direction::Backward, 256).await {
            Ok(p) => p,
            Err(LogError::StreamNotFound { .. }) => return Ok(out),
            Err(e) => return Err(e.to_string()),
        };
        let Some(oldest) = page.last().map(|r| r.version) else { return Ok(out) };
        for r in &page {
            let a = events::codec::decode_access_alert(r).map_err(|e| e.to_string())?;
            if a.audit_position < from {
                return Ok(out);
            }
            if let Some(rule) = RULES.iter().find(|x| **x == a.rule) {
                out.insert((*rule, a.audit_position));
            }
        }
        if oldest == 0 {
            return Ok(out);
        }
        at = ReadFrom::Version(oldest - 1);
    }
}

async fn save_checkpoint(log: &dyn EventLog, stream: &str, position: u64) -> Result<(), String> {
    append_kept(log, stream, ExpectedVersion::Any, events::codec::process_checkpoint(position))
        .await
        .map(|_| ())
        .map_err(|e| format!("writing the alerts' checkpoint: {e}"))
}

/// Sends every alert to one hook, in order, each until it is accepted.
struct HookSender {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    client: Client,
    hook: AlertHook,
    first_retry: Duration,
    metrics: Arc<AlertMetrics>,
    backlogs: Arc<Vec<AtomicU64>>,
    index: usize,
}

impl HookSender {
    async fn run(self) {
        let mut failures = 0u32;
        loop {
            if let Err(e) = self.send_all().await {
                failures = failures.saturating_add(1);
                let wait = retry_wait(failures);
                tracing::warn!(hook = %self.hook.name, error = %e, retry_in_ms = wait.as_millis() as u64, "alert webhook: reading the alerts failed");
                tokio::time::sleep(wait).await;
            }
        }
    }

    fn set_backlog(&self, n: u64) {
        self.backlogs[self.index].store(n, Relaxed);
        self.metrics.hook_backlog.store(self.backlogs.iter().map(|b| b.load(Relaxed)).sum(), Relaxed);
    }

    async fn send_all(&self) -> Result<(), String> {
        let stream = events::stream::alert_hook_stream(&self.hook.name);
        let text = |e: LogError| e.to_string();
        // The checkpoint is the version of the next alert to send.
        let mut next = match actors::write::last_event(self.log.as_ref(), &stream).await.map_err(text)? {
            Some(r) => events::codec::decode_process_checkpoint(&r).map_err(|e| e.to_string())?,
            None => 0,
        };
        let mut head = self.log.watch_head();
        loop {
            head.borrow_and_update();
            let page = match self
                .log
                .read_stream(events::stream::ALERTS, ReadFrom::Version(next), Direction::Forward, HOOK_PAGE)
                .await
            {
                Ok(p) => p,
                Err(LogError::StreamNotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.to_string()),
            };
            if page.is_empty() {
                self.set_backlog(0);
                // Any commit may be an alert; the stream is small.
                tokio::select! {
                    _ = head.changed() => {}
                    _ = tokio::time::sleep(IDLE_LOOK) => {}
                }
                continue;
            }
            let last = page.last().map_or(next, |r| r.version);
            for r in &page {
                self.set_backlog(last + 1 - r.version);
                let alert = events::codec::decode_access_alert(r).map_err(|e| e.to_string())?;
                self.send(r.id(), r.version, &alert).await;
                next = r.version + 1;
                append_kept(self.log.as_ref(), &stream, ExpectedVersion::Any, events::codec::process_checkpoint(next))
                    .await
                    .map_err(|e| format!("writing the hook's checkpoint: {e}"))?;
            }
        }
    }

    /// Posts one alert until the hook answers 2xx (never gives up: an
    /// alert is not dropped; the backlog and failures are on /metrics).
    async fn send(&self, id: Uuid, version: u64, alert: &events::codec::AccessAlertState) {
        let body = alert_json(id, alert);
        let mut failures = 0u32;
        loop {
            let now = self.clock.now_micros();
            let secrets: Vec<&[u8]> = self.hook.secrets.iter().map(Vec::as_slice).collect();
            let headers = [
                (sign::HEADER, sign::header(&secrets, now.div_euclid(1_000_000), &body)),
                ("pypes-event-id", id.to_string()),
                ("pypes-event-type", "access_alert".to_string()),
                ("pypes-alert-rule", alert.rule.clone()),
                ("pypes-delivery-attempt", (failures + 1).to_string()),
            ];
            let attempt = self.client.post(&self.hook.url, &headers, &body).await;
            if attempt.delivered() {
                self.metrics.hook_delivered.fetch_add(1, Relaxed);
                return;
            }
            failures = failures.saturating_add(1);
            self.metrics.hook_failed_attempts.fetch_add(1, Relaxed);
            // While it fails, the backlog is every alert from this one to
            // the stream's last (more may have come since the page).
            if let Ok(Some(last)) = actors::write::last_event(self.log.as_ref(), events::stream::ALERTS).await {
                self.set_backlog(last.version + 1 - version);
            }
            let wait = backoff::delay_from(self.first_retry, failures, backoff::random_unit()).min(HOOK_LONGEST_WAIT);
            let reason = attempt.outcome.err().unwrap_or_default();
            tracing::warn!(hook = %self.hook.name, failures, error = %reason, retry_in_ms = wait.as_millis() as u64, "alert webhook: attempt failed");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The wait after `failures` failed rounds of reading the log.
fn retry_wait(failures: u32) -> Duration {
    backoff::delay_from(FIRST_RETRY, failures, backoff::random_unit()).min(HOOK_LONGEST_WAIT)
}

/// The JSON body of an alert (docs/incident-response.md).
pub fn alert_json(id: Uuid, a: &events::codec::AccessAlertState) -> Vec<u8> {
    let value = serde_json::json!({
        "id": id.to_string(),
        "type": "access_alert",
        "rule": a.rule,
        "actor": a.actor,
        "tenant_id": a.tenant.map(|t| t.to_string()),
        "at": audit::time::time_text(a.at_micros),
        "count": a.count,
        "threshold": a.threshold,
        "detail": a.detail,
        "audit": { "stream": a.audit_stream, "seq": a.audit_seq, "position": a.audit_position },
    });
    serde_json::to_vec(&value).unwrap_or_default()
}
