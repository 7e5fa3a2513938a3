//! The audit log: every authentication attempt, authorisation refusal,
//! privileged access and privacy request, appended to this node's audit
//! stream `audit-<node id>` in the event log. Entries carry pseudonymous
//! ids only. They are hash-linked (each holds the SHA-256 of the one
//! before) and every so often a checkpoint entry signs the link with the
//! log's Ed25519 key; the latest checkpoint is kept beside the log in
//! `audit.head`, so [`AuditChecker`] finds an altered byte, a removed or
//! reordered entry and a cut tail on any backend, even one without the
//! file log's own hash chain.
//!
//! One writer task per node owns the stream: it drains what is queued,
//! folds identical records into one entry with a count (a busy API key is
//! not one entry per call), appends the batch with the expected version
//! and only then answers the callers that wait ([`AuditLog::record`]: a
//! privileged action is not done before its record is durable).

pub mod scope;
pub mod time;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use eventlog::{Clock, Direction, EventLog, ExpectedVersion, LogError, ReadFrom, RecordedEvent};
use proto::Message;
use proto::events::AuditEntry;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub const STREAM_PREFIX: &str = events::stream::AUDIT_PREFIX;
pub const EVENT_TYPE: &str = events::types::AUDIT_ENTRY;
pub const CHECKPOINT: &str = "audit.checkpoint";
pub const HEAD_FILE: &str = "audit.head";
pub const NODE_FILE: &str = "node.id";
const SIGNATURE_LABEL: &[u8] = b"pypes-audit-checkpoint-v1\0";
/// A checkpoint after this many entries or this long, whichever is first.
const CHECKPOINT_EVERY: u64 = 256;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Counted successes are written at least this often.
const COUNT_FLUSH: Duration = Duration::from_secs(1);
/// Entries in one append at most.
const MAX_BATCH: usize = 1024;

/// Why an audit record could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The writer has stopped (the server is shutting down).
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// The log refused or failed the append.
    #[error("{0}")]
    Write(String),
    /// The log's disk is full: nothing can be audited, so nothing that
    /// must be audited first can be done, until space is freed.
    #[error("{0}")]
    StorageFull(String),
    /// The log's database cannot be reached for now (a failover, a cut
    /// network): nothing that must be audited first can be done; retry.
    #[error("{0}")]
    Unreachable(String),
}

/// One thing to audit. Every field is a fixed code or an opaque id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    pub action: &'static str,
    pub actor: String,
    pub tenant: Option<Uuid>,
    pub target: String,
    pub outcome: &'static str,
    pub detail: String,
}

impl Record {
    pub fn new(action: &'static str, actor: impl Into<String>, outcome: &'static str) -> Self {
        Self { action, actor: actor.into(), tenant: None, target: String::new(), outcome, detail: String::new() }
    }
    pub fn tenant(mut self, tenant: Uuid) -> Self {
        self.tenant = Some(tenant);
        self
    }
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

type Waiter = oneshot::Sender<Result<(), WriteFailure>>;

/// Why a write of the trail failed, as its waiters hear it.
#[derive(Debug, Clone)]
struct WriteFailure {
    /// The log's disk is full (the append resumes once space is freed).
    full: bool,
    /// The log's database is unreachable for now.
    unreachable: bool,
    text: String,
}

impl WriteFailure {
    fn new(text: String) -> Self {
        Self { full: false, unreachable: false, text }
    }

    /// The caller's error, prefixed with what was being written.
    fn error(self, what: &str) -> AuditError {
        let text = format!("{what}: {}", self.text);
        if self.full {
            AuditError::StorageFull(text)
        } else if self.unreachable {
            AuditError::Unreachable(text)
        } else {
            AuditError::Write(text)
        }
    }
}

enum Msg {
    Record(Record, Option<Waiter>),
    /// `Record` stands for this many identical attempts.
    Counted(Record, u64),
    /// Writes a checkpoint now (at shutdown) and answers when it is durable.
    Checkpoint(Waiter),
}

/// The handle the API uses. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    stream: Arc<str>,
    /// Successful API-key authentications not written yet: (tenant, key
    /// id) → count. The hot path of every tenant call only bumps a counter;
    /// the writer turns the counts into entries at least once a second.
    api_key_ok: Arc<std::sync::Mutex<HashMap<(Uuid, Uuid), u64>>>,
    /// The public half of the checkpoint key, and this node's signed head
    /// file: what [`check_trail`] needs to verify the trail while it runs.
    verifying: VerifyingKey,
    head_path: Arc<Path>,
}

impl AuditLog {
    /// Starts the writer of this node's audit stream (node id from
    /// `<data>/node.id`, made once), continuing the chain where the log has
    /// it.
    pub async fn start(
        data_dir: &Path,
        log: Arc<dyn EventLog>,
        signing: SigningKey,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let node = node_id(data_dir)?;
        let stream: Arc<str> = events::stream::audit_stream(&node.to_string()).into();
        let (next_seq, prev_hash) = tail_of(&*log, &stream).await?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let api_key_ok = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let verifying = signing.verifying_key();
        let head_path: Arc<Path> = data_dir.join(HEAD_FILE).into();
        let writer = Writer {
            api_key_ok: api_key_ok.clone(),
            log,
            signing,
            clock,
            stream: stream.clone(),
            head_path: data_dir.join(HEAD_FILE),
            next_seq,
            prev_hash,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        };
        tokio::spawn(writer.run(rx));
        Ok(Self { tx, stream, api_key_ok, verifying, head_path })
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Verifies the whole trail in `log` as it is now (hash links, signed
    /// checkpoints, this node's signed head) and returns the entries
    /// `keep` wants; an error names the first break.
    pub async fn verified_entries(
        &self,
        log: &dyn EventLog,
        keep: impl FnMut(&TrailEntry) -> bool,
    ) -> Result<(AuditReport, Vec<TrailEntry>), String> {
        // The head first: every entry it signs is in the log by then.
        let head = match std::fs::read_to_string(&self.head_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading {}: {e}", self.head_path.display())),
        };
        check_trail(log, self.verifying, head.as_deref(), keep).await
    }

    /// Appends `record` and waits until it is durable.
    pub async fn record(&self, record: Record) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(record, Some(tx)))
            .await
            .map_err(|_| AuditError::Unavailable("the audit log is shutting down"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(f.error("the audit log could not be written")),
            Err(_) => Err(AuditError::Unavailable("the audit log is shutting down")),
        }
    }

    /// Queues `record` without waiting for it (routine successes). Waits
    /// only when the queue is full, so nothing is dropped.
    pub async fn note(&self, record: Record) {
        if self.tx.send(Msg::Record(record, None)).await.is_err() {
            tracing::error!("audit record after the audit writer stopped");
        }
    }

    /// Counts one successful authentication with tenant `tenant`'s key
    /// `key_id` (written, with its count, within a second).
    pub fn count_api_key_ok(&self, tenant: Uuid, key_id: Uuid) {
        *self.api_key_ok.lock().unwrap_or_else(|e| e.into_inner()).entry((tenant, key_id)).or_insert(0) += 1;
    }

    /// Writes a signed checkpoint of everything so far (at shutdown).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Checkpoint(tx)).await.map_err(|_| AuditError::Unavailable("audit writer stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(f.error("audit checkpoint")),
            Err(_) => Err(AuditError::Unavailable("audit writer stopped")),
        }
    }
}

fn node_id(data_dir: &Path) -> anyhow::Result<Uuid> {
    let path = data_dir.join(NODE_FILE);
    if !path.exists() {
        write_atomically(&path, format!("{}\n", Uuid::now_v7()).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Uuid::parse_str(text.trim()).with_context(|| format!("{} does not hold a UUID", path.display()))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The stream's next sequence number and the hash of its last entry.
async fn tail_of(log: &dyn EventLog, stream: &str) -> anyhow::Result<(u64, [u8; 32])> {
    match log.read_stream(stream, ReadFrom::End, Direction::Backward, 1).await {
        Ok(events) => match events.first() {
            Some(last) => Ok((last.version + 1, sha256(&last.event.payload))),
            None => Ok((0, [0; 32])),
        },
        Err(LogError::StreamNotFound { .. }) => Ok((0, [0; 32])),
        Err(e) => Err(anyhow::anyhow!("reading the audit stream {stream}: {e}")),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn signed_message(stream: &str, seq: u64, prev_hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_LABEL.len() + stream.len() + 41);
    m.extend_from_slice(SIGNATURE_LABEL);
    m.extend_from_slice(stream.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(prev_hash);
    m
}

struct Writer {
    api_key_ok: Arc<std::sync::Mutex<HashMap<(Uuid, Uuid), u64>>>,
    log: Arc<dyn EventLog>,
    signing: SigningKey,
    clock: Arc<dyn Clock>,
    stream: Arc<str>,
    head_path: PathBuf,
    next_seq: u64,
    prev_hash: [u8; 32],
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            // Wake at least once a second: counted successes and due
            // checkpoints are written even when nothing else comes.
            let wait = if self.since_checkpoint > 0 {
                CHECKPOINT_INTERVAL.saturating_sub(self.last_checkpoint.elapsed())
            } else {
                COUNT_FLUSH
            };
            let first = match tokio::time::timeout(wait.min(COUNT_FLUSH), rx.recv()).await {
                Ok(Some(m)) => Some(m),
                Ok(None) => break,
                Err(_) => None,
            };
            let mut msgs: Vec<Msg> = first.into_iter().collect();
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            self.take_counts(&mut msgs);
            self.write(msgs).await;
        }
        // Every handle is gone: write the counts and sign what was written.
        let mut msgs = Vec::new();
        self.take_counts(&mut msgs);
        if self.since_checkpoint > 0 || !msgs.is_empty() {
            self.write(msgs).await;
        }
    }

    fn take_counts(&self, msgs: &mut Vec<Msg>) {
        let counts = std::mem::take(&mut *self.api_key_ok.lock().unwrap_or_else(|e| e.into_inner()));
        for ((tenant, key), n) in counts {
            msgs.push(Msg::Counted(Record::new("auth.api_key", format!("tenant-key:{key}"), "ok").tenant(tenant), n));
        }
    }

    /// Folds identical records, appends them (and a checkpoint when one is
    /// due or asked for), then answers the waiters.
    async fn write(&mut self, msgs: Vec<Msg>) {
        let mut order: Vec<Record> = Vec::new();
        let mut counts: HashMap<Record, u64> = HashMap::new();
        let mut waiters = Vec::new();
        let mut checkpoint_asked = false;
        for m in msgs {
            match m {
                Msg::Record(r, w) => {
                    waiters.extend(w);
                    match counts.get_mut(&r) {
                        Some(n) => *n += 1,
                        None => {
                            counts.insert(r.clone(), 1);
                            order.push(r);
                        }
                    }
                }
                Msg::Counted(r, n) => match counts.get_mut(&r) {
                    Some(c) => *c += n,
                    None => {
                        counts.insert(r.clone(), n);
                        order.push(r);
                    }
                },
                Msg::Checkpoint(w) => {
                    checkpoint_asked = true;
                    waiters.push(w);
                }
            }
        }
        let now = self.clock.now_micros();
        let (mut seq, mut prev) = (self.next_seq, self.prev_hash);
        let mut events = Vec::with_capacity(order.len() + 1);
        for r in order {
            let count = counts.get(&r).copied().unwrap_or(1);
            let entry = AuditEntry {
                seq,
                at_micros: now,
                action: r.action.to_string(),
                actor: r.actor,
                tenant_id: r.tenant.map(|t| bytes::Bytes::copy_from_slice(t.as_bytes())).unwrap_or_default(),
                target: r.target,
                outcome: r.outcome.to_string(),
                detail: r.detail,
                prev_hash: bytes::Bytes::copy_from_slice(&prev),
                count: if count > 1 { count } else { 0 },
                signature: bytes::Bytes::new(),
            };
            let payload = entry.encode_to_vec();
            prev = sha256(&payload);
            seq += 1;
            events.push(events::codec::audit_entry(payload));
        }
        let since = self.since_checkpoint + events.len() as u64;
        let due = since >= CHECKPOINT_EVERY || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
        let mut head = None;
        if (checkpoint_asked || due) && since > 0 {
            let signature = self.signing.sign(&signed_message(&self.stream, seq, &prev));
            let entry = AuditEntry {
                seq,
                at_micros: now,
                action: CHECKPOINT.to_string(),
                actor: "pypes".to_string(),
                outcome: "ok".to_string(),
                prev_hash: bytes::Bytes::copy_from_slice(&prev),
                signature: bytes::Bytes::copy_from_slice(&signature.to_bytes()),
                ..AuditEntry::default()
            };
            let payload = entry.encode_to_vec();
            prev = sha256(&payload);
            seq += 1;
            head = Some(payload.clone());
            events.push(events::codec::audit_entry(payload));
        }
        if events.is_empty() {
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            return;
        }
        let expected =
            if self.next_seq == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(self.next_seq - 1) };
        let n = events.len() as u64;
        let result = match actors::write::append(self.log.as_ref(), &self.stream, expected, events).await {
            Ok(_) => {
                self.next_seq = seq;
                self.prev_hash = prev;
                self.since_checkpoint = if head.is_some() { 0 } else { self.since_checkpoint + n };
                match &head {
                    Some(payload) => {
                        self.last_checkpoint = Instant::now();
                        let text = format!("{}\n{}\n", self.stream, hex::encode(payload));
                        let path = self.head_path.clone();
                        match tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes())).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(WriteFailure::new(format!("writing {HEAD_FILE}: {e:#}"))),
                            Err(e) => Err(WriteFailure::new(format!("writing {HEAD_FILE}: {e}"))),
                        }
                    }
                    None => Ok(()),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, stream = %self.stream, "audit append failed");
                // Another writer (or a failed write) moved the stream: go on
                // from what the log holds.
                if let Ok((next, hash)) = tail_of(&*self.log, &self.stream).await {
                    self.next_seq = next;
                    self.prev_hash = hash;
                }
                Err(WriteFailure { full: e.is_storage_full(), unreachable: e.is_unreachable(), text: e.to_string() })
            }
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// What [`AuditChecker`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub streams: u64,
    pub entries: u64,
    /// Attempts the entries stand for (counted entries add their count).
    pub attempts: u64,
    pub checkpoints: u64,
    /// Entries after each stream's last checkpoint (linked, not yet signed).
    pub unsigned_tail: u64,
    pub heads_checked: u64,
}

#[derive(Default)]
struct StreamState {
    next_seq: u64,
    prev_hash: [u8; 32],
    /// seq → hash of each checkpoint entry's payload.
    checkpoints: HashMap<u64, [u8; 32]>,
    since_checkpoint: u64,
}

/// Checks audit streams event by event, in log order, on any backend.
pub struct AuditChecker {
    key: VerifyingKey,
    streams: HashMap<String, StreamState>,
    report: AuditReport,
}

impl AuditChecker {
    pub fn new(key: VerifyingKey) -> Self {
        Self { key, streams: HashMap::new(), report: AuditReport::default() }
    }

    /// Checks one event (events of other streams are ignored).
    pub fn visit(&mut self, r: &RecordedEvent) -> Result<(), String> {
        if !r.stream.starts_with(STREAM_PREFIX) {
            return Ok(());
        }
        let at = |what: String| format!("audit stream {} entry {}: {what}", r.stream, r.version);
        if r.event_type() != EVENT_TYPE {
            return Err(at(format!("unexpected event type {}", r.event_type())));
        }
        let entry = AuditEntry::decode(r.event.payload.clone()).map_err(|e| at(format!("does not decode: {e}")))?;
        let state = self.streams.entry(r.stream.to_string()).or_default();
        if entry.seq != r.version || entry.seq != state.next_seq {
            return Err(at(format!(
                "sequence {} where {} was expected: an entry was removed or reordered",
                entry.seq, state.next_seq
            )));
        }
        if entry.prev_hash[..] != state.prev_hash {
            return Err(at("hash link broken: this entry or the one before it was altered or removed".into()));
        }
        let hash = sha256(&r.event.payload);
        if entry.action == CHECKPOINT {
            let signature = ed25519_dalek::Signature::from_slice(&entry.signature)
                .map_err(|e| at(format!("malformed checkpoint signature: {e}")))?;
            self.key
                .verify(&signed_message(&r.stream, entry.seq, &entry.prev_hash), &signature)
                .map_err(|_| at("checkpoint signature does not verify with the given public key".into()))?;
            state.checkpoints.insert(entry.seq, hash);
            state.since_checkpoint = 0;
            self.report.checkpoints += 1;
        } else {
            state.since_checkpoint += 1;
            self.report.attempts += entry.count.max(1);
        }
        state.next_seq += 1;
        state.prev_hash = hash;
        self.report.entries += 1;
        Ok(())
    }

    /// Checks the signed head kept beside the log (`audit.head` text:
    /// stream, then the hex of the checkpoint entry) against what was
    /// visited, and returns the report.
    pub fn finish(mut self, head: Option<&str>) -> Result<AuditReport, String> {
        if let Some(text) = head {
            let mut lines = text.lines();
            let (Some(stream), Some(hex_entry)) = (lines.next(), lines.next()) else {
                return Err(format!("{HEAD_FILE} is not two lines (stream, entry)"));
            };
            let payload = hex::decode(hex_entry.trim()).map_err(|_| format!("{HEAD_FILE}: the entry is not hex"))?;
            // Exactly the bytes the writer writes: any other spelling of the
            // same value (upper-case hex, other white space) is a changed file.
            if text != format!("{stream}\n{}\n", hex::encode(&payload)) {
                return Err(format!("{HEAD_FILE} is not as the audit writer writes it (altered or damaged)"));
            }
            let entry =
                AuditEntry::decode(payload.as_slice()).map_err(|e| format!("{HEAD_FILE}: does not decode: {e}"))?;
            let signature = ed25519_dalek::Signature::from_slice(&entry.signature)
                .map_err(|e| format!("{HEAD_FILE}: malformed signature: {e}"))?;
            self.key
                .verify(&signed_message(stream, entry.seq, &entry.prev_hash), &signature)
                .map_err(|_| format!("{HEAD_FILE}: signature does not verify with the given public key"))?;
            let state = self.streams.get(stream);
            match state.and_then(|s| s.checkpoints.get(&entry.seq)) {
                Some(h) if *h == sha256(&payload) => {}
                Some(_) => return Err(format!("{HEAD_FILE} does not match checkpoint {} of {stream}", entry.seq)),
                None => {
                    return Err(format!(
                        "audit stream {stream} ends at entry {} but its signed head is checkpoint {}: the tail was cut",
                        state.map_or(0, |s| s.next_seq),
                        entry.seq
                    ));
                }
            }
            self.report.heads_checked += 1;
        }
        self.report.streams = self.streams.len() as u64;
        self.report.unsigned_tail = self.streams.values().map(|s| s.since_checkpoint).sum();
        Ok(self.report)
    }
}

/// Calls `visit` with every event of every audit stream of `log`, in log
/// order, a page at a time; stops at the first error `visit` returns.
async fn each_audit_event(
    log: &dyn EventLog,
    mut visit: impl FnMut(&RecordedEvent) -> Result<(), String>,
) -> Result<(), String> {
    let filter = eventlog::EventFilter::stream_prefix(STREAM_PREFIX);
    let mut from = 0;
    loop {
        let page = log.read_all(from, 4096, &filter).await.map_err(|e| e.to_string())?;
        for e in &page.events {
            visit(e)?;
        }
        if page.next_position == from || page.next_position >= page.head {
            return Ok(());
        }
        from = page.next_position;
    }
}

/// Reads every audit stream of `log`, checks it with `key` and `head`
/// (the signed head's text, when there is one) and returns the report
/// and the entries `keep` wants.
pub async fn check_trail(
    log: &dyn EventLog,
    key: VerifyingKey,
    head: Option<&str>,
    mut keep: impl FnMut(&TrailEntry) -> bool,
) -> Result<(AuditReport, Vec<TrailEntry>), String> {
    let mut checker = AuditChecker::new(key);
    let mut entries = Vec::new();
    each_audit_event(log, |e| {
        checker.visit(e)?;
        entries.extend(TrailEntry::read(e).filter(&mut keep));
        Ok(())
    })
    .await?;
    Ok((checker.finish(head)?, entries))
}

/// The entries `keep` wants, read **without** checking the chain (a list
/// that only shows entries; `check_trail` is the verification).
pub async fn read_trail(
    log: &dyn EventLog,
    mut keep: impl FnMut(&TrailEntry) -> bool,
) -> Result<Vec<TrailEntry>, String> {
    let mut entries = Vec::new();
    each_audit_event(log, |e| {
        entries.extend(TrailEntry::read(e).filter(&mut keep));
        Ok(())
    })
    .await?;
    Ok(entries)
}

/// One audit entry as `pypes audit trail` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailEntry {
    pub at_micros: i64,
    /// The audit stream without its prefix.
    pub stream: String,
    pub seq: u64,
    pub action: String,
    pub actor: String,
    pub tenant: Option<Uuid>,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    /// Attempts this entry stands for (1 unless counted).
    pub count: u64,
}

impl TrailEntry {
    /// The entry of an audit stream's event (`None` when it does not decode).
    pub fn read(r: &RecordedEvent) -> Option<Self> {
        let e = AuditEntry::decode(r.event.payload.clone()).ok()?;
        Some(Self {
            at_micros: e.at_micros,
            stream: r.stream.strip_prefix(STREAM_PREFIX).unwrap_or(&r.stream).to_string(),
            seq: e.seq,
            action: e.action,
            actor: e.actor,
            tenant: Uuid::from_slice(&e.tenant_id).ok(),
            target: e.target,
            outcome: e.outcome,
            detail: e.detail,
            count: e.count.max(1),
        })
    }

    /// The columns for people: time (RFC 3339), stream #seq, action,
    /// actor, tenant, target, outcome, detail; "-" for an empty one.
    pub fn columns(&self) -> [String; 8] {
        let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
        [
            crate::time::time_text(self.at_micros),
            format!("{} #{}", self.stream, self.seq),
            dash(&self.action),
            dash(&self.actor),
            self.tenant.map_or_else(|| "-".to_string(), |t| t.to_string()),
            dash(&self.target),
            dash(&self.outcome),
            dash(&self.detail),
        ]
    }
}

/// Reads `audit.head` of a data directory, if there is one.
pub fn read_head(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(HEAD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventlog::mem::MemLog;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    async fn written(n: usize, dir: &Path) -> (Arc<dyn EventLog>, AuditLog) {
        let log: Arc<dyn EventLog> = Arc::new(MemLog::new());
        let audit = AuditLog::start(dir, log.clone(), key(), Arc::new(eventlog::SystemClock)).await.unwrap();
        for i in 0..n {
            audit
                .record(Record::new("auth.login", format!("subject:{}", Uuid::from_u128(i as u128)), "ok"))
                .await
                .unwrap();
        }
        audit.checkpoint().await.unwrap();
        (log, audit)
    }

    async fn events(log: &dyn EventLog, stream: &str) -> Vec<RecordedEvent> {
        log.read_stream(stream, ReadFrom::Start, Direction::Forward, 10_000).await.unwrap()
    }

    fn check(events: &[RecordedEvent], head: Option<&str>) -> Result<AuditReport, String> {
        let mut c = AuditChecker::new(key().verifying_key());
        for e in events {
            c.visit(e)?;
        }
        c.finish(head)
    }

    #[tokio::test]
    async fn a_written_stream_checks_out_and_restarts_continue_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (log, audit) = written(10, dir.path()).await;
        let stream = audit.stream().to_string();
        drop(audit);
        // A second writer on the same data directory continues the chain.
        let again = AuditLog::start(dir.path(), log.clone(), key(), Arc::new(eventlog::SystemClock)).await.unwrap();
        assert_eq!(again.stream(), stream);
        again.record(Record::new("auth.login", "anonymous", "failed")).await.unwrap();
        again.checkpoint().await.unwrap();
        let all = events(&*log, &stream).await;
        let head = read_head(dir.path()).unwrap();
        let report = check(&all, head.as_deref()).unwrap();
        assert_eq!(report.attempts, 11);
        assert!(report.checkpoints >= 2);
        assert_eq!(report.heads_checked, 1);
        assert_eq!(report.unsigned_tail, 0);
    }

    #[tokio::test]
    async fn identical_routine_records_are_counted_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(MemLog::new());
        let audit = AuditLog::start(dir.path(), log.clone(), key(), Arc::new(eventlog::SystemClock)).await.unwrap();
        for _ in 0..500 {
            audit.note(Record::new("auth.login", "anonymous", "failed")).await;
        }
        let (tenant, key) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for _ in 0..1000 {
            audit.count_api_key_ok(tenant, key);
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        audit.checkpoint().await.unwrap();
        let all = events(&*log, audit.stream()).await;
        let report = check(&all, read_head(dir.path()).unwrap().as_deref()).unwrap();
        assert_eq!(report.attempts, 1500, "every attempt is accounted for");
        assert!(report.entries < 500, "{} entries for 1500 identical attempts", report.entries);
    }

    #[tokio::test]
    async fn an_altered_entry_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (log, audit) = written(5, dir.path()).await;
        let mut all = events(&*log, audit.stream()).await;
        let mut entry = AuditEntry::decode(all[2].event.payload.clone()).unwrap();
        entry.outcome = "failed".into();
        all[2].event.payload = entry.encode_to_vec().into();
        let err = check(&all, None).unwrap_err();
        assert!(err.contains("entry 3") && err.contains("hash link broken"), "{err}");
    }

    #[tokio::test]
    async fn a_removed_entry_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (log, audit) = written(5, dir.path()).await;
        let mut all = events(&*log, audit.stream()).await;
        all.remove(1);
        // Renumbered to hide the gap: the hash link still breaks.
        for (i, e) in all.iter_mut().enumerate() {
            let mut entry = AuditEntry::decode(e.event.payload.clone()).unwrap();
            entry.seq = i as u64;
            e.version = i as u64;
            e.event.payload = entry.encode_to_vec().into();
        }
        let err = check(&all, None).unwrap_err();
        assert!(err.contains("hash link broken"), "{err}");
    }

    #[tokio::test]
    async fn a_cut_tail_is_found_by_the_signed_head() {
        let dir = tempfile::tempdir().unwrap();
        let (log, audit) = written(5, dir.path()).await;
        let mut all = events(&*log, audit.stream()).await;
        let head = read_head(dir.path()).unwrap().unwrap();
        check(&all, Some(&head)).unwrap();
        all.pop();
        let err = check(&all, Some(&head)).unwrap_err();
        assert!(err.contains("the tail was cut"), "{err}");
        // A forged checkpoint does not verify.
        let other = SigningKey::from_bytes(&[1; 32]);
        let mut c = AuditChecker::new(other.verifying_key());
        let err = events(&*log, audit.stream()).await.iter().try_for_each(|e| c.visit(e)).unwrap_err();
        assert!(err.contains("signature does not verify"), "{err}");
    }
}
