//! The `EventLog` port on PostgreSQL (docs/backends.md).
//!
//! ```sql
//! pypes_log_meta    (format_version)
//! pypes_log_head    (next_position)                       -- one row
//! pypes_log_streams (stream PK, next_version, deletion, deleted_before,
//!                    max_age_secs, max_count, truncate_before)
//! pypes_log_events  (position PK, stream, version, event_id UNIQUE,
//!                    event_type, recorded_at_micros, stored)  UNIQUE (stream, version)
//! ```
//!
//! `stored` is the `pypes.storage.v1.StoredEvent` envelope, exactly as the
//! file log frames it. Every append is one transaction that first takes a
//! transaction-level advisory lock: appends (from any number of nodes) are
//! serialised, so global positions are assigned in commit order with no
//! gaps, and a reader that sees position `p` has every position below it
//! (PostgreSQL makes a transaction visible before it releases its locks).
//! The expected-version check runs inside that transaction, so two nodes
//! writing one stream cannot both win. On one node, appends that wait
//! while a transaction runs go together into the next one (group commit:
//! one WAL flush for the group). The group is decided in memory, append
//! by append, against the stream rows and event ids read once for the
//! whole group, so a refused append fails alone and the group's events go
//! in one multi-row INSERT. Each commit `NOTIFY`s the new head;
//! every node `LISTEN`s, so subscriptions go live on appends made anywhere.
//!
//! The stream rules (versions, soft and hard deletes, metadata limits,
//! visibility, idempotency by event id) are the file and memory backends'
//! own (`model::StreamRules`, `check_repeat`), so the three cannot drift.
//! What this backend does not do: the file log's hash chain and signed
//! checkpoints (PostgreSQL's own integrity and access control stand in
//! for them; `pypes audit verify` checks the audit trail's own links and
//! signatures on this backend).

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client};
use uuid::Uuid;

pub use eventlog::redact_url;
use eventlog::rules::{Deletion, Earlier, StreamRules, check_repeat, readable_metadata, whole_repeat};
use eventlog::{
    AllPage, AppendResult, BoxFuture, Clock, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError,
    ReadFrom, RecordedEvent, Result, ScavengeReport, StreamAppend, StreamMetadata, validate_appends,
    validate_stream_name,
};

pub const FORMAT_VERSION: i32 = 1;
/// The advisory lock every append and delete takes (any constant works:
/// it only has to be the same on every node).
const APPEND_LOCK: i64 = 0x7079_7065_735f_6c67; // "pypes_lg"
const CHANNEL: &str = "pypes_log";
/// Rows fetched per query while scanning `$all`.
const SCAN: i64 = 1024;
/// Appends committed together at most (one transaction, one WAL flush).
const GROUP: usize = 256;

/// One append waiting for its group's commit.
struct Job {
    appends: Vec<StreamAppend>,
    reply: oneshot::Sender<Result<Vec<AppendResult>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pypes_log_meta (format_version integer NOT NULL);
CREATE TABLE IF NOT EXISTS pypes_log_head (one boolean PRIMARY KEY DEFAULT true CHECK (one), next_position bigint NOT NULL);
INSERT INTO pypes_log_head (next_position) VALUES (0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS pypes_log_streams (
    stream text PRIMARY KEY,
    next_version bigint NOT NULL,
    deletion smallint NOT NULL,
    deleted_before bigint NOT NULL,
    max_age_secs bigint,
    max_count bigint,
    truncate_before bigint
);
CREATE TABLE IF NOT EXISTS pypes_log_events (
    position bigint PRIMARY KEY,
    stream text NOT NULL,
    version bigint NOT NULL,
    event_id bytea NOT NULL UNIQUE,
    event_type text NOT NULL,
    recorded_at_micros bigint NOT NULL,
    stored bytea NOT NULL,
    UNIQUE (stream, version)
);
";

/// The PostgreSQL event log.
pub struct PgLog {
    /// Appends go to the group-commit task ([`commit_groups`]).
    appends: mpsc::Sender<Job>,
    /// Deletes, metadata and scavenges (serialised with appends anyway by
    /// the advisory lock); made again after it broke.
    writer: Mutex<Option<Client>>,
    /// Reads (tokio-postgres pipelines concurrent queries on one
    /// connection); made again after it broke.
    reader: std::sync::Mutex<Option<Arc<Client>>>,
    /// One reconnection of the reader at a time.
    redial: Mutex<()>,
    dial: Arc<Dialer>,
    head: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    /// Dropped with the log: stops the listener task.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog").field("db", &self.dial.name).field("head", &*self.head.borrow()).finish()
    }
}

/// How the log reaches its database, and whether it can now.
///
/// Every connection (appends, other writes, reads, the listener) is made
/// again when it broke, with the URL's settings: with several hosts and
/// `target_session_attrs=read-write`, to whichever takes writes (a
/// promoted standby after a failover). While the database cannot be
/// reached, operations fail at once with [`LogError::Unreachable`] and
/// [`EventLog::write_trouble`] says why (readiness, docs/backends.md).
struct Dialer {
    target: pgconn::Target,
    /// The database's name for messages (never the password).
    name: String,
    /// Why the database is unreachable, while it is.
    trouble: std::sync::Mutex<Option<String>>,
    /// When a connection attempt last failed: for [`REDIAL`] after it,
    /// calls fail at once instead of each waiting out a connect timeout
    /// on a cut network.
    failed_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long after a failed connection attempt the next one is made.
const REDIAL: std::time::Duration = std::time::Duration::from_millis(500);

impl Dialer {
    async fn connect(&self, role: &'static str) -> Result<Client> {
        let recent = *self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        if recent.is_some_and(|at| at.elapsed() < REDIAL) {
            let trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(LogError::Unreachable {
                detail: trouble.unwrap_or_else(|| format!("{}: the last connection attempt failed", self.name)),
            });
        }
        let (client, connection) = self.target.config.connect(self.target.tls.clone()).await.map_err(|e| {
            *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            self.failed(&e)
        })?;
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %pgconn::describe(&e), role, "event log database connection ended");
            }
        });
        self.reached();
        Ok(client)
    }

    /// The connection in `slot`, made again if there is none or it broke.
    async fn ready<'a>(&self, slot: &'a mut Option<Client>, role: &'static str) -> Result<&'a mut Client> {
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            *slot = Some(self.connect(role).await?);
        }
        slot.as_mut().ok_or(LogError::Closed)
    }

    /// The error of a failed database call, named; an unreachable database
    /// is noted for readiness.
    fn failed(&self, e: &tokio_postgres::Error) -> LogError {
        let detail = format!("{}: {}", self.name, pgconn::describe(e));
        if pgconn::is_unreachable(e) {
            self.note(&detail);
            LogError::Unreachable { detail }
        } else {
            LogError::Database { detail }
        }
    }

    fn note(&self, detail: &str) {
        let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        if trouble.is_none() {
            tracing::error!(db = %self.name, error = detail, "the event log's database is unreachable; writes fail until it is back");
        }
        *trouble = Some(detail.to_string());
    }

    fn reached(&self) {
        let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        if trouble.take().is_some() {
            tracing::info!(db = %self.name, "the event log's database is reachable again");
        }
    }

    /// Passes `result` on, noting an unreachable database.
    fn noted<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(LogError::Unreachable { detail }) = &result {
            self.note(detail);
        }
        result
    }
}

fn db(e: tokio_postgres::Error) -> LogError {
    if pgconn::is_unreachable(&e) {
        LogError::Unreachable { detail: pgconn::describe(&e) }
    } else {
        LogError::Database { detail: pgconn::describe(&e) }
    }
}

fn corrupt(reason: impl Into<String>) -> LogError {
    LogError::Database { detail: format!("corrupt row: {}", reason.into()) }
}

/// Moves the head forward (never back: commits of this node and other
/// nodes' notifications may arrive in any order).
fn raise(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|cur| {
        let grew = to > *cur;
        if grew {
            *cur = to;
        }
        grew
    });
}

fn deletion_code(d: Deletion) -> i16 {
    match d {
        Deletion::None => 0,
        Deletion::Soft => 1,
        Deletion::Hard => 2,
    }
}

fn rules_of(row: &tokio_postgres::Row, at: usize) -> Result<StreamRules> {
    let u = |i: usize| -> Result<u64> {
        let v: i64 = row.try_get(at + i).map_err(db)?;
        u64::try_from(v).map_err(|_| corrupt(format!("negative count {v}")))
    };
    let opt = |i: usize| -> Result<Option<u64>> {
        let v: Option<i64> = row.try_get(at + i).map_err(db)?;
        v.map(|v| u64::try_from(v).map_err(|_| corrupt(format!("negative limit {v}")))).transpose()
    };
    let deletion = match row.try_get::<_, i16>(at + 1).map_err(db)? {
        0 => Deletion::None,
        1 => Deletion::Soft,
        2 => Deletion::Hard,
        other => return Err(corrupt(format!("deletion code {other}"))),
    };
    Ok(StreamRules {
        next_version: u(0)?,
        deletion,
        deleted_before: u(2)?,
        metadata: StreamMetadata { max_age_secs: opt(3)?, max_count: opt(4)?, truncate_before: opt(5)? },
    })
}

const RULES: &str = "next_version, deletion, deleted_before, max_age_secs, max_count, truncate_before";

fn event_of(row: &tokio_postgres::Row, stream: Arc<str>) -> Result<RecordedEvent> {
    let bytes: &[u8] = row.try_get("stored").map_err(db)?;
    let stored = proto::storage::StoredEvent::decode(bytes).map_err(|e| corrupt(format!("stored event: {e}")))?;
    RecordedEvent::from_stored(stored, stream).map_err(corrupt)
}

fn i64_of(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| LogError::InvalidBatch { reason: format!("{v} is out of range") })
}

async fn load_rules(c: &impl tokio_postgres::GenericClient, streams: &[&str]) -> Result<HashMap<String, StreamRules>> {
    let rows = c
        .query(&format!("SELECT stream, {RULES} FROM pypes_log_streams WHERE stream = ANY($1)"), &[&streams])
        .await
        .map_err(db)?;
    rows.iter().map(|r| Ok((r.try_get::<_, String>(0).map_err(db)?, rules_of(r, 1)?))).collect()
}

async fn save_rules(c: &impl tokio_postgres::GenericClient, stream: &str, r: &StreamRules) -> Result<()> {
    let opt = |v: Option<u64>| v.map(i64_of).transpose();
    c.execute(
        &format!(
            "INSERT INTO pypes_log_streams (stream, {RULES}) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (stream) DO UPDATE SET next_version = $2, deletion = $3, deleted_before = $4,
             max_age_secs = $5, max_count = $6, truncate_before = $7"
        ),
        &[
            &stream,
            &i64_of(r.next_version)?,
            &deletion_code(r.deletion),
            &i64_of(r.deleted_before)?,
            &opt(r.metadata.max_age_secs)?,
            &opt(r.metadata.max_count)?,
            &opt(r.metadata.truncate_before)?,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

async fn head_in(c: &impl tokio_postgres::GenericClient) -> Result<u64> {
    let row = c.query_one("SELECT next_position FROM pypes_log_head", &[]).await.map_err(db)?;
    let v: i64 = row.try_get(0).map_err(db)?;
    u64::try_from(v).map_err(|_| corrupt("negative head"))
}

impl PgLog {
    /// Connects to the database at `url` (a libpq connection string or
    /// URL), creates the tables on first use, and starts listening for
    /// other nodes' commits.
    pub async fn open(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        let name = redact_url(url);
        let target = pgconn::target(url).map_err(|e| LogError::Database { detail: format!("{name}: {e}") })?;
        let dial = Arc::new(Dialer {
            target,
            name,
            trouble: std::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
        });
        let named = |e: tokio_postgres::Error| dial.failed(&e);
        let writer = dial.connect("writer").await?;
        // Several nodes may start at once: one creates the tables.
        writer
            .batch_execute(&format!(
                "SET client_min_messages TO warning; SELECT pg_advisory_lock({APPEND_LOCK}); {SCHEMA} \
                 SELECT pg_advisory_unlock({APPEND_LOCK});"
            ))
            .await
            .map_err(named)?;
        let versions: Vec<i32> = writer
            .query("SELECT format_version FROM pypes_log_meta", &[])
            .await
            .map_err(named)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        match versions.as_slice() {
            [] => {
                writer
                    .execute("INSERT INTO pypes_log_meta (format_version) VALUES ($1)", &[&FORMAT_VERSION])
                    .await
                    .map_err(named)?;
            }
            [v] if *v == FORMAT_VERSION => {}
            other => {
                return Err(LogError::Database {
                    detail: format!("{}: log format version {other:?}; this build reads {FORMAT_VERSION}", dial.name),
                });
            }
        }
        let reader = dial.connect("reader").await?;
        let head = watch::channel(head_in(&reader).await?).0;
        // Other nodes' commits arrive as notifications carrying their head.
        let (first, at) = listening(&dial).await?;
        raise(&head, at);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(listen(dial.clone(), first, head.clone(), stopped));
        let appender = dial.connect("appender").await?;
        let (tx, rx) = mpsc::channel(4 * GROUP);
        tokio::spawn(commit_groups(dial.clone(), Some(appender), rx, head.clone(), clock.clone()));
        Ok(Self {
            appends: tx,
            writer: Mutex::new(Some(writer)),
            reader: std::sync::Mutex::new(Some(Arc::new(reader))),
            redial: Mutex::new(()),
            dial,
            head,
            clock,
            _stop: stop,
        })
    }

    /// The read connection, made again if it broke.
    async fn reader(&self) -> Result<Arc<Client>> {
        let current = || self.reader.lock().unwrap_or_else(|e| e.into_inner()).clone().filter(|c| !c.is_closed());
        if let Some(c) = current() {
            return Ok(c);
        }
        let _one = self.redial.lock().await;
        if let Some(c) = current() {
            return Ok(c);
        }
        let c = Arc::new(self.dial.connect("reader").await?);
        *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }
}

/// The listener's connection, driven by hand (its notifications are read
/// from it).
type Listening =
    (Client, tokio_postgres::Connection<tokio_postgres::Socket, pgconn::PgTlsStream<tokio_postgres::Socket>>);

/// Connects, `LISTEN`s, then reads the head: commits notified before the
/// LISTEN took effect are in it.
async fn listening(dial: &Dialer) -> Result<(Listening, u64)> {
    let (client, mut connection) =
        dial.target.config.connect(dial.target.tls.clone()).await.map_err(|e| dial.failed(&e))?;
    let row = {
        let on = async {
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            client.query_one("SELECT next_position FROM pypes_log_head", &[]).await
        };
        tokio::pin!(on);
        loop {
            tokio::select! {
                r = &mut on => break r.map_err(|e| dial.failed(&e))?,
                m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(dial.failed(&e)),
                    None => return Err(LogError::Unreachable { detail: format!("{}: connection closed", dial.name) }),
                },
            }
        }
    };
    let at: i64 = row.try_get(0).map_err(db)?;
    Ok(((client, connection), u64::try_from(at).map_err(|_| corrupt("negative head"))?))
}

/// Follows other nodes' commits (each `NOTIFY` carries their head) until
/// the log is dropped, connecting again after the connection broke.
async fn listen(dial: Arc<Dialer>, first: Listening, head: watch::Sender<u64>, mut stop: oneshot::Receiver<()>) {
    let mut live = Some(first);
    loop {
        let (client, mut connection) = match live.take() {
            Some(l) => l,
            None => match listening(&dial).await {
                Ok((l, at)) => {
                    dial.reached();
                    raise(&head, at);
                    l
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event log listener: connecting again in a second");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = &mut stop => return,
                    }
                }
            },
        };
        loop {
            tokio::select! {
                m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if let Ok(h) = n.payload().parse::<u64>() {
                            raise(&head, h);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = dial.failed(&e);
                        break;
                    }
                    None => {
                        dial.note(&format!("{}: the listening connection closed", dial.name));
                        break;
                    }
                },
                _ = &mut stop => return,
            }
        }
        drop(client);
    }
}

/// The appends of every node are serialised by the advisory lock; on this
/// node they are also grouped: every append waiting when a transaction
/// starts goes into it, decided one after the other in memory (so one
/// append's wrong expected version fails that append alone), and one
/// COMMIT (one WAL flush) acknowledges them all.
async fn commit_groups(
    dial: Arc<Dialer>,
    mut client: Option<Client>,
    mut jobs: mpsc::Receiver<Job>,
    head: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
) {
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut answers: Vec<Option<Result<Vec<AppendResult>>>> = Vec::with_capacity(group.len());
        let seen = *head.borrow();
        let committed = match dial.ready(&mut client, "appender").await {
            Ok(c) => commit_group(c, &group, &mut answers, seen, clock.now_micros()).await,
            Err(e) => Err(e),
        };
        match dial.noted(committed) {
            Ok(new_head) => {
                dial.reached();
                raise(&head, new_head);
                for (job, answer) in group.into_iter().zip(answers) {
                    let _ = job.reply.send(answer.unwrap_or(Err(LogError::Closed)));
                }
            }
            Err(e) => {
                // Nothing of the group was acknowledged (if the connection
                // broke during COMMIT, the group may have been written:
                // its appenders hear "unreachable", never "ok").
                if e.is_unreachable() {
                    client = None;
                }
                let detail = e.to_string();
                for job in group {
                    let _ = job.reply.send(Err(match &e {
                        LogError::Unreachable { detail } => LogError::Unreachable { detail: detail.clone() },
                        _ => LogError::Database { detail: detail.clone() },
                    }));
                }
            }
        }
    }
}

/// One group's transaction; each job's answer goes into `answers`. The
/// new head on commit. The whole group costs a fixed number of round
/// trips: the ids it names and the streams it touches are read once, each
/// append is decided in memory in order (so a later append sees what an
/// earlier one of the group wrote), and the events and stream rows go in
/// one multi-row statement each.
async fn commit_group(
    client: &mut Client,
    group: &[Job],
    answers: &mut Vec<Option<Result<Vec<AppendResult>>>>,
    seen: u64,
    now: i64,
) -> Result<u64> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK]).await.map_err(db)?;
    let mut position = head_in(&tx).await?;
    if position < seen {
        // A failover to a standby that had not received every commit
        // (asynchronous replication): positions this node (and its
        // subscribers) already saw would be given to other events.
        return Err(LogError::Database {
            detail: format!(
                "the database's log ends at position {position}, but this node saw it reach {seen}: \
                 committed events are missing (a failover to a standby without synchronous replication?); \
                 appends are refused rather than reuse those positions (docs/backends.md)"
            ),
        });
    }
    // Idempotency: the events of the group whose ids were appended before.
    let ids: Vec<&[u8]> = group
        .iter()
        .flat_map(|j| j.appends.iter().flat_map(|a| a.events.iter().map(|e| e.id.as_bytes().as_slice())))
        .collect();
    let mut earlier: HashMap<Uuid, Earlier> = HashMap::new();
    for row in tx
        .query("SELECT stream, version, position, stored FROM pypes_log_events WHERE event_id = ANY($1)", &[&ids])
        .await
        .map_err(db)?
    {
        let stream: Arc<str> = Arc::from(row.try_get::<_, &str>(0).map_err(db)?);
        let e = event_of(&row, stream.clone())?;
        earlier.insert(e.id(), Earlier { stream, version: e.version, position: e.position, event: e.event });
    }
    let mut names: Vec<&str> = group.iter().flat_map(|j| j.appends.iter().map(|a| a.stream.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    let mut rules = load_rules(&tx, &names).await?;
    let mut staged = Staged::default();
    let mut changed: Vec<String> = Vec::new();
    for job in group {
        let answer = decide(&job.appends, &mut earlier, &mut rules, &mut staged, &mut changed, position, now);
        if let Ok((_, next)) = &answer {
            position = *next;
        }
        answers.push(Some(answer.map(|(results, _)| results)));
    }
    staged.insert(&tx).await?;
    changed.sort_unstable();
    changed.dedup();
    save_all_rules(&tx, &changed, &rules).await?;
    tx.execute("UPDATE pypes_log_head SET next_position = $1", &[&i64_of(position)?]).await.map_err(db)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &position.to_string()]).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(position)
}

/// The rows a group writes, column by column (for `unnest`).
#[derive(Default)]
struct Staged {
    positions: Vec<i64>,
    streams: Vec<String>,
    versions: Vec<i64>,
    ids: Vec<Vec<u8>>,
    types: Vec<String>,
    times: Vec<i64>,
    stored: Vec<Vec<u8>>,
}

/// Rows per INSERT at most, and bytes: a statement stays well below
/// PostgreSQL's 1 GB message limit.
const ROWS_PER_INSERT: usize = 4096;
const BYTES_PER_INSERT: usize = 64 << 20;

impl Staged {
    async fn insert(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
        let sql = "INSERT INTO pypes_log_events (position, stream, version, event_id, event_type, recorded_at_micros, stored)
                   SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::text[], $6::bigint[], $7::bytea[])";
        let (mut from, mut bytes) = (0, 0);
        for i in 0..=self.positions.len() {
            let end = i == self.positions.len();
            if !end {
                bytes += self.stored[i].len();
            }
            if end || i + 1 - from >= ROWS_PER_INSERT || bytes >= BYTES_PER_INSERT {
                let to = if end { i } else { i + 1 };
                if to > from {
                    tx.execute(
                        sql,
                        &[
                            &&self.positions[from..to],
                            &&self.streams[from..to],
                            &&self.versions[from..to],
                            &&self.ids[from..to],
                            &&self.types[from..to],
                            &&self.times[from..to],
                            &&self.stored[from..to],
                        ],
                    )
                    .await
                    .map_err(db)?;
                }
                (from, bytes) = (to, 0);
            }
        }
        Ok(())
    }
}

/// One append of the group, decided in memory from `position`: its results
/// and the next free position (or a refusal, or a repeat's original
/// results without writing). What it writes is staged, and remembered in
/// `earlier` and `rules` for the appends after it.
fn decide(
    appends: &[StreamAppend],
    earlier: &mut HashMap<Uuid, Earlier>,
    rules: &mut HashMap<String, StreamRules>,
    staged: &mut Staged,
    changed: &mut Vec<String>,
    mut position: u64,
    now: i64,
) -> Result<(Vec<AppendResult>, u64)> {
    let mut repeats = Vec::new();
    for append in appends {
        if let Some(r) = check_repeat(append, |id| {
            Ok(earlier.get(id).map(|e| Earlier {
                stream: e.stream.clone(),
                version: e.version,
                position: e.position,
                event: e.event.clone(),
            }))
        })? {
            repeats.push(r);
        }
    }
    if let Some(results) = whole_repeat(appends, repeats)? {
        return Ok((results, position));
    }
    for append in appends {
        rules.get(&append.stream).cloned().unwrap_or_default().check_expected(&append.stream, append.expected)?;
    }
    let mut results = Vec::with_capacity(appends.len());
    for append in appends {
        let r = rules.entry(append.stream.clone()).or_default();
        let first_position = position;
        let mut version = r.next_version;
        let stream: Arc<str> = Arc::from(append.stream.as_str());
        for event in &append.events {
            let stored = event.to_stored(&append.stream, version, position, now).encode_to_vec();
            staged.positions.push(i64_of(position)?);
            staged.streams.push(append.stream.clone());
            staged.versions.push(i64_of(version)?);
            staged.ids.push(event.id.as_bytes().to_vec());
            staged.types.push(event.event_type.clone());
            staged.times.push(now);
            staged.stored.push(stored);
            earlier.insert(event.id, Earlier { stream: stream.clone(), version, position, event: event.clone() });
            position += 1;
            version += 1;
        }
        let count = append.events.len() as u64;
        r.apply_append(count);
        changed.push(append.stream.clone());
        results.push(AppendResult {
            next_expected_version: version - 1,
            first_position,
            last_position: first_position + count - 1,
        });
    }
    Ok((results, position))
}

/// Writes the rules of every stream the group changed, in one statement.
async fn save_all_rules(
    tx: &tokio_postgres::Transaction<'_>,
    streams: &[String],
    rules: &HashMap<String, StreamRules>,
) -> Result<()> {
    if streams.is_empty() {
        return Ok(());
    }
    let opt = |v: Option<u64>| v.map(i64_of).transpose();
    let (mut next, mut deletion, mut before, mut age, mut count, mut truncate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in streams {
        let r = rules.get(s).cloned().unwrap_or_default();
        next.push(i64_of(r.next_version)?);
        deletion.push(deletion_code(r.deletion));
        before.push(i64_of(r.deleted_before)?);
        age.push(opt(r.metadata.max_age_secs)?);
        count.push(opt(r.metadata.max_count)?);
        truncate.push(opt(r.metadata.truncate_before)?);
    }
    tx.execute(
        &format!(
            "INSERT INTO pypes_log_streams (stream, {RULES})
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
             ON CONFLICT (stream) DO UPDATE SET next_version = EXCLUDED.next_version, deletion = EXCLUDED.deletion,
             deleted_before = EXCLUDED.deleted_before, max_age_secs = EXCLUDED.max_age_secs,
             max_count = EXCLUDED.max_count, truncate_before = EXCLUDED.truncate_before"
        ),
        &[&streams, &next, &deletion, &before, &age, &count, &truncate],
    )
    .await
    .map_err(db)?;
    Ok(())
}

impl EventLog for PgLog {
    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<AppendResult>>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    validate_appends(&appends)?;
                    let (reply, answer) = oneshot::channel();
                    self.appends.send(Job { appends, reply }).await.map_err(|_| LogError::Closed)?;
                    answer.await.map_err(|_| LogError::Closed)?
                }
                .await,
            )
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from: ReadFrom,
        direction: Direction,
        max_count: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    validate_stream_name(stream)?;
                    let reader = self.reader().await?;
                    let Some(rules) = load_rules(&*reader, &[stream]).await?.remove(stream) else {
                        return Err(LogError::StreamNotFound { stream: stream.to_owned() });
                    };
                    rules.check_readable(stream)?;
                    let now = self.clock.now_micros();
                    let mut range = rules.read_range(from, direction);
                    let Some(a) = range.next() else { return Ok(Vec::new()) };
                    let b = range.last().unwrap_or(a);
                    let (mut lo, mut hi) = (a.min(b), a.max(b));
                    let forward = matches!(direction, Direction::Forward);
                    let order = if forward { "ASC" } else { "DESC" };
                    let query = format!(
                        "SELECT stored FROM pypes_log_events WHERE stream = $1 AND version BETWEEN $2 AND $3
                 ORDER BY version {order} LIMIT $4"
                    );
                    let name: Arc<str> = Arc::from(stream);
                    let mut out = Vec::new();
                    // Pages of the range until `max_count` visible events (hidden
                    // ones, e.g. past their max age, are skipped, not counted).
                    let page = (max_count as i64).clamp(1, SCAN);
                    while out.len() < max_count && lo <= hi {
                        let rows =
                            reader.query(&query, &[&stream, &i64_of(lo)?, &i64_of(hi)?, &page]).await.map_err(db)?;
                        for row in &rows {
                            let e = event_of(row, name.clone())?;
                            if forward {
                                lo = e.version + 1;
                            } else if e.version == 0 {
                                lo = 1;
                                hi = 0;
                            } else {
                                hi = e.version - 1;
                            }
                            if out.len() < max_count && rules.is_visible(e.version, e.recorded_at_micros, now) {
                                out.push(e);
                            }
                        }
                        if (rows.len() as i64) < page {
                            break;
                        }
                    }
                    Ok(out)
                }
                .await,
            )
        })
    }

    fn read_all<'a>(&'a self, from: u64, max_count: usize, filter: &'a EventFilter) -> BoxFuture<'a, Result<AllPage>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    let reader = self.reader().await?;
                    let head = head_in(&*reader).await?;
                    let now = self.clock.now_micros();
                    let mut page = AllPage { events: Vec::new(), next_position: from, head };
                    let mut position = from;
                    let mut rules: HashMap<String, StreamRules> = HashMap::new();
                    while position < head && page.events.len() < max_count {
                        let rows = reader
                            .query(
                                "SELECT position, stream, event_type, stored FROM pypes_log_events
                         WHERE position >= $1 AND position < $2 ORDER BY position LIMIT $3",
                                &[&i64_of(position)?, &i64_of(head)?, &SCAN],
                            )
                            .await
                            .map_err(db)?;
                        if rows.is_empty() {
                            position = head;
                            break;
                        }
                        let unknown: Vec<&str> = rows
                            .iter()
                            .filter_map(|r| r.try_get::<_, &str>(1).ok())
                            .filter(|s| !rules.contains_key(*s))
                            .collect();
                        if !unknown.is_empty() {
                            rules.extend(load_rules(&*reader, &unknown).await?);
                        }
                        for row in &rows {
                            let at: i64 = row.try_get(0).map_err(db)?;
                            let stream: &str = row.try_get(1).map_err(db)?;
                            let event_type: &str = row.try_get(2).map_err(db)?;
                            position = u64::try_from(at).map_err(|_| corrupt("negative position"))? + 1;
                            if !filter.matches(stream, event_type) {
                                continue;
                            }
                            let e = event_of(row, Arc::from(stream))?;
                            let visible =
                                rules.get(stream).is_some_and(|r| r.is_visible(e.version, e.recorded_at_micros, now));
                            if visible {
                                page.events.push(e);
                                if page.events.len() >= max_count {
                                    break;
                                }
                            }
                        }
                        if rows.len() < SCAN as usize && page.events.len() < max_count {
                            position = head;
                        }
                    }
                    page.next_position = position.max(from);
                    Ok(page)
                }
                .await,
            )
        })
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn write_trouble(&self) -> Option<eventlog::WriteTrouble> {
        self.dial.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone().map(eventlog::WriteTrouble::Unreachable)
    }

    fn set_stream_metadata<'a>(&'a self, stream: &'a str, metadata: StreamMetadata) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    validate_stream_name(stream)?;
                    metadata.validate(stream)?;
                    let mut slot = self.writer.lock().await;
                    let writer = self.dial.ready(&mut slot, "writer").await?;
                    let tx = writer.transaction().await.map_err(db)?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK]).await.map_err(db)?;
                    let mut r = load_rules(&tx, &[stream]).await?.remove(stream).unwrap_or_default();
                    if r.deletion == Deletion::Hard {
                        return Err(LogError::StreamDeleted { stream: stream.to_owned() });
                    }
                    r.metadata = metadata;
                    save_rules(&tx, stream, &r).await?;
                    tx.commit().await.map_err(db)
                }
                .await,
            )
        })
    }

    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamMetadata>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    validate_stream_name(stream)?;
                    let reader = self.reader().await?;
                    let rules = load_rules(&*reader, &[stream]).await?;
                    readable_metadata(stream, rules.get(stream))
                }
                .await,
            )
        })
    }

    fn delete_stream<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    validate_stream_name(stream)?;
                    let mut slot = self.writer.lock().await;
                    let writer = self.dial.ready(&mut slot, "writer").await?;
                    let tx = writer.transaction().await.map_err(db)?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK]).await.map_err(db)?;
                    let mut r = load_rules(&tx, &[stream]).await?.remove(stream).unwrap_or_default();
                    r.check_expected(stream, expected)?;
                    r.apply_delete(mode);
                    save_rules(&tx, stream, &r).await?;
                    tx.commit().await.map_err(db)
                }
                .await,
            )
        })
    }

    fn scavenge(&self) -> BoxFuture<'_, Result<ScavengeReport>> {
        Box::pin(async move {
            self.dial.noted(
                async move {
                    let now = self.clock.now_micros();
                    let mut slot = self.writer.lock().await;
                    let writer = self.dial.ready(&mut slot, "writer").await?;
                    let tx = writer.transaction().await.map_err(db)?;
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK]).await.map_err(db)?;
                    let limited = tx
                        .query(
                            &format!(
                        "SELECT stream, {RULES} FROM pypes_log_streams WHERE deletion <> 0 OR deleted_before > 0
                         OR max_age_secs IS NOT NULL OR max_count IS NOT NULL OR truncate_before IS NOT NULL"
                    ),
                            &[],
                        )
                        .await
                        .map_err(db)?;
                    let mut report = ScavengeReport::default();
                    for row in &limited {
                        let stream: String = row.try_get(0).map_err(db)?;
                        let rules = rules_of(row, 1)?;
                        let events = tx
                    .query(
                        "SELECT position, version, recorded_at_micros, stored FROM pypes_log_events WHERE stream = $1",
                        &[&stream],
                    )
                    .await
                    .map_err(db)?;
                        let mut doomed = Vec::new();
                        for e in &events {
                            let version: i64 = e.try_get(1).map_err(db)?;
                            let at: i64 = e.try_get(2).map_err(db)?;
                            if rules.is_reclaimable(
                                u64::try_from(version).map_err(|_| corrupt("negative version"))?,
                                at,
                                now,
                            ) {
                                doomed.push(e.try_get::<_, i64>(0).map_err(db)?);
                                report.bytes_reclaimed +=
                                    event_of(e, Arc::from(stream.as_str()))?.event.payload.len() as u64;
                            }
                        }
                        if !doomed.is_empty() {
                            tx.execute("DELETE FROM pypes_log_events WHERE position = ANY($1)", &[&doomed])
                                .await
                                .map_err(db)?;
                            report.events_removed += doomed.len() as u64;
                        }
                    }
                    tx.commit().await.map_err(db)?;
                    Ok(report)
                }
                .await,
            )
        })
    }
}
