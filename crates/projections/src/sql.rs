//! The PostgreSQL read-model sink: Sessions, messages and media as SQL
//! tables that analysts query, kept by one projection that reads `$all`
//! and writes each page of events and its checkpoint in one transaction
//! (so each event takes effect exactly once, whatever crashes). The schema
//! is in docs/sql.md.
//!
//! Only Clear fields reach these tables: no message body, no device, no
//! file name, no username: what is personal stays sealed in the log. The
//! one personal datum is the end user's pseudonymous id on a Session row,
//! which an erasure clears (`SubjectErasureKeysShredded`), and a tenant's
//! offboarding (`TenantKeysShredded`) deletes every row of the tenant.
//! Analysts get the `pypes_sql_*_anon` views, which leave that id out.

use std::sync::Arc;
use std::time::Duration;

use eventlog::{EventFilter, EventLog, RecordedEvent};
use proto::Message;
use proto::events as pb;
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use crate::sessions::parse_stream;

/// Bump when the tables change meaning: the sink then rebuilds them from
/// the start of the log.
pub const SCHEMA_VERSION: i32 = 2;
const NAME: &str = "sql";
const PAGE: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pypes_sql_checkpoint (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    schema_version integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pypes_sql_sessions (
    session_id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    pype_id uuid NOT NULL,
    end_user_id uuid,
    state text NOT NULL,
    started_at timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL,
    closed_at timestamptz,
    close_reason text,
    messages bigint NOT NULL DEFAULT 0,
    end_user_messages bigint NOT NULL DEFAULT 0,
    agent_messages bigint NOT NULL DEFAULT 0,
    bot_messages bigint NOT NULL DEFAULT 0,
    attachments bigint NOT NULL DEFAULT 0,
    media_uploads bigint NOT NULL DEFAULT 0,
    media_bytes bigint NOT NULL DEFAULT 0,
    first_reply_at timestamptz,
    restricted boolean NOT NULL DEFAULT false,
    content_expired boolean NOT NULL DEFAULT false,
    subject_erased boolean NOT NULL DEFAULT false,
    do_not_track boolean NOT NULL DEFAULT false
);
-- Schema 2: tables made by schema 1 gain the column (then rebuilt).
ALTER TABLE pypes_sql_sessions ADD COLUMN IF NOT EXISTS do_not_track boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS pypes_sql_sessions_by_pype ON pypes_sql_sessions (tenant_id, pype_id, started_at);
CREATE INDEX IF NOT EXISTS pypes_sql_sessions_by_end_user ON pypes_sql_sessions (tenant_id, end_user_id);
CREATE TABLE IF NOT EXISTS pypes_sql_messages (
    session_id uuid NOT NULL,
    seq bigint NOT NULL,
    tenant_id uuid NOT NULL,
    sent_at timestamptz NOT NULL,
    sender_kind text NOT NULL,
    attachments integer NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX IF NOT EXISTS pypes_sql_messages_by_time ON pypes_sql_messages (tenant_id, sent_at);
CREATE TABLE IF NOT EXISTS pypes_sql_skipped (
    position bigint PRIMARY KEY,
    stream text NOT NULL,
    event_type text NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE VIEW pypes_sql_sessions_anon AS
    SELECT session_id, tenant_id, pype_id, state, started_at, last_activity_at, closed_at, close_reason,
           messages, end_user_messages, agent_messages, bot_messages, attachments, media_uploads, media_bytes,
           first_reply_at, restricted, content_expired, subject_erased
    FROM pypes_sql_sessions WHERE NOT do_not_track;
CREATE OR REPLACE VIEW pypes_sql_pype_daily_anon AS
    SELECT tenant_id, pype_id, date_trunc('day', started_at) AS day,
           count(*) AS sessions,
           sum(messages) AS messages,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM first_reply_at - started_at))
               AS median_first_reply_secs
    FROM pypes_sql_sessions WHERE NOT do_not_track GROUP BY 1, 2, 3;
";

/// What the sink can fail with (the message names the database, never its
/// password).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("read-model database {db}: {detail}")]
    Database { db: String, detail: String },
    #[error("reading the event log: {0}")]
    Log(#[from] eventlog::LogError),
}

/// The sink: one connection, its checkpoint in the same database.
pub struct SqlSink {
    client: Client,
    /// To connect again after the connection broke (a failover).
    url: String,
    db: String,
    position: u64,
}

fn kind(k: i32) -> &'static str {
    match pb::ParticipantKind::try_from(k).unwrap_or(pb::ParticipantKind::Unspecified) {
        pb::ParticipantKind::EndUser => "end_user",
        pb::ParticipantKind::Agent => "agent",
        pb::ParticipantKind::Bot => "bot",
        pb::ParticipantKind::Unspecified => "unknown",
    }
}

fn uuid_of(bytes: &[u8], field: &str) -> Result<Uuid, String> {
    Uuid::from_slice(bytes).map_err(|_| format!("{field} is {} bytes, not a uuid", bytes.len()))
}

fn decode<M: Message + Default>(r: &RecordedEvent) -> Result<M, String> {
    M::decode(r.event.payload.clone()).map_err(|e| format!("undecodable payload: {e}"))
}

/// Micros since the epoch as a SQL timestamp argument.
fn ts(micros: i64) -> f64 {
    micros as f64 / 1e6
}

impl SqlSink {
    /// Connects, creates the tables if needed, and reads the checkpoint
    /// (starting over when the tables are of another schema version).
    pub async fn open(url: &str) -> Result<Self, SinkError> {
        let db = eventlog::redact_url(url);
        let err = |e: tokio_postgres::Error| SinkError::Database { db: db.clone(), detail: pgconn::describe(&e) };
        let target = pgconn::target(url).map_err(|detail| SinkError::Database { db: db.clone(), detail })?;
        let (client, connection) = target.config.connect(target.tls).await.map_err(err)?;
        let conn_db = db.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(db = %conn_db, error = %e, "read-model database connection ended");
            }
        });
        client
            .batch_execute(&format!(
                "SET client_min_messages TO warning; SELECT pg_advisory_lock({}); {SCHEMA}",
                0x7079_7065_735f_7371_i64
            ))
            .await
            .map_err(err)?;
        client
            .batch_execute(&format!("SELECT pg_advisory_unlock({})", 0x7079_7065_735f_7371_i64))
            .await
            .map_err(err)?;
        let row = client
            .query_opt("SELECT position, schema_version FROM pypes_sql_checkpoint WHERE name = $1", &[&NAME])
            .await
            .map_err(err)?;
        let position = match row {
            Some(r) if r.get::<_, i32>(1) == SCHEMA_VERSION => r.get::<_, i64>(0) as u64,
            Some(r) => {
                tracing::warn!(
                    found = r.get::<_, i32>(1),
                    SCHEMA_VERSION,
                    "read-model tables of another version: rebuilding"
                );
                client
                    .batch_execute(&format!(
                        "BEGIN; TRUNCATE pypes_sql_sessions, pypes_sql_messages, pypes_sql_skipped;
                         UPDATE pypes_sql_checkpoint SET position = 0, schema_version = {SCHEMA_VERSION},
                             updated_at = now() WHERE name = '{NAME}'; COMMIT"
                    ))
                    .await
                    .map_err(err)?;
                0
            }
            None => {
                // The row every page locks (so it must exist before the first).
                client
                    .execute(
                        "INSERT INTO pypes_sql_checkpoint (name, position, schema_version) VALUES ($1, 0, $2)
                         ON CONFLICT (name) DO NOTHING",
                        &[&NAME, &SCHEMA_VERSION],
                    )
                    .await
                    .map_err(err)?;
                0
            }
        };
        Ok(Self { client, url: url.to_string(), db, position })
    }

    /// The log position up to which every event is in the tables.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn filter() -> EventFilter {
        EventFilter {
            stream_prefixes: vec![
                events::Kind::Session.prefix().into(),
                events::Kind::Subject.prefix().into(),
                events::Kind::Tenant.prefix().into(),
            ],
            event_types: vec![],
        }
    }

    /// Applies everything the log holds now; returns the new position.
    pub async fn catch_up(&mut self, log: &Arc<dyn EventLog>) -> Result<u64, SinkError> {
        let filter = Self::filter();
        loop {
            let page = log.read_all(self.position, PAGE, &filter).await?;
            if page.next_position == self.position {
                return Ok(self.position);
            }
            self.apply_page(&page.events, page.next_position).await?;
            if self.position >= page.head {
                return Ok(self.position);
            }
        }
    }

    /// Follows the log for the life of the process: catches up whenever
    /// the head moves; a failure is logged and retried.
    pub async fn run(mut self, log: Arc<dyn EventLog>) {
        let mut head = log.watch_head();
        loop {
            match self.catch_up(&log).await {
                Ok(at) => tracing::debug!(position = at, "SQL read models caught up"),
                Err(e) => {
                    tracing::warn!(error = %e, "SQL read models: retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if self.client.is_closed() {
                        // Connect again (to the promoted standby after a
                        // failover, with a multi-host URL); the checkpoint
                        // is read again, so nothing is applied twice.
                        match SqlSink::open(&self.url).await {
                            Ok(fresh) => {
                                tracing::info!(db = %self.db, position = fresh.position, "SQL read models reconnected");
                                self = fresh;
                            }
                            Err(e) => tracing::warn!(error = %e, "SQL read models: reconnecting failed"),
                        }
                    }
                    continue;
                }
            }
            if head.changed().await.is_err() {
                return;
            }
        }
    }

    /// One transaction: the page's events, then the checkpoint. The
    /// checkpoint row is locked first and must still be where this sink
    /// left it: when another feeder (a second node, an overlap during a
    /// rolling update) applied the page already, nothing is applied twice;
    /// this sink moves to where the other one got and reads on from there.
    async fn apply_page(&mut self, events: &[RecordedEvent], next: u64) -> Result<(), SinkError> {
        let db = self.db.clone();
        let err = |e: tokio_postgres::Error| SinkError::Database { db: db.clone(), detail: pgconn::describe(&e) };
        let tx = self.client.transaction().await.map_err(err)?;
        let row = tx
            .query_opt("SELECT position FROM pypes_sql_checkpoint WHERE name = $1 FOR UPDATE", &[&NAME])
            .await
            .map_err(err)?;
        let at = row.map_or(0, |r| r.get::<_, i64>(0) as u64);
        if at != self.position {
            tracing::debug!(mine = self.position, theirs = at, "another feeder moved the SQL read models");
            tx.rollback().await.map_err(err)?;
            self.position = at;
            return Ok(());
        }
        for r in events {
            if let Err(reason) = apply(&tx, r).await.map_err(err)? {
                tracing::error!(position = r.position, stream = %r.stream, %reason, "SQL read models skip an event");
                tx.execute(
                    "INSERT INTO pypes_sql_skipped (position, stream, event_type, reason) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&(r.position as i64), &r.stream.as_ref(), &r.event_type(), &reason],
                )
                .await
                .map_err(err)?;
            }
        }
        tx.execute(
            "INSERT INTO pypes_sql_checkpoint (name, position, schema_version) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position,
                 schema_version = EXCLUDED.schema_version, updated_at = now()",
            &[&NAME, &(next as i64), &SCHEMA_VERSION],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.position = next;
        Ok(())
    }
}

/// Applies one event. The outer error is the database's; the inner one a
/// malformed event (recorded in `pypes_sql_skipped`, never applied).
async fn apply(tx: &Transaction<'_>, r: &RecordedEvent) -> Step {
    if events::Kind::Session.owns(&r.stream) {
        session_event(tx, r).await
    } else if events::Kind::Subject.owns(&r.stream) && r.event_type() == crate::PURGE_EVENT {
        purge(tx, r).await
    } else if events::Kind::Tenant.owns(&r.stream) && r.event_type() == events::types::TENANT_KEYS_SHREDDED {
        match r.event.tenant_id {
            Some(t) => offboard(tx, t).await,
            None => Ok(Err("TenantKeysShredded without a tenant id".into())),
        }
    } else {
        Ok(Ok(()))
    }
}

type Step = Result<Result<(), String>, tokio_postgres::Error>;

async fn session_event(tx: &Transaction<'_>, r: &RecordedEvent) -> Step {
    let Some((tenant, session)) = parse_stream(&r.stream, events::Kind::Session) else {
        return Ok(Err("stream name is not session-<tenant>-<id>".into()));
    };
    match r.event_type() {
        events::types::SESSION_STARTED => {
            let p: pb::SessionStarted = match decode(r) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let (pype, end_user) = match (uuid_of(&p.pype_id, "pype_id"), uuid_of(&p.end_user_id, "end_user_id")) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
            };
            tx.execute(
                "INSERT INTO pypes_sql_sessions (session_id, tenant_id, pype_id, end_user_id, state, started_at,
                     last_activity_at, do_not_track)
                 VALUES ($1, $2, $3, $4, 'active', to_timestamp($5), to_timestamp($5), $6)
                 ON CONFLICT (session_id) DO NOTHING",
                &[&session, &tenant, &pype, &end_user, &ts(p.at_micros), &(p.do_not_track || p.global_privacy_control)],
            )
            .await?;
        }
        events::types::MESSAGE_POSTED => {
            let p: pb::MessagePosted = match decode(r) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let k = kind(p.sender_kind);
            let inserted = tx
                .execute(
                    "INSERT INTO pypes_sql_messages (session_id, seq, tenant_id, sent_at, sender_kind, attachments)
                     VALUES ($1, $2, $3, to_timestamp($4), $5, $6) ON CONFLICT DO NOTHING",
                    &[&session, &(p.seq as i64), &tenant, &ts(p.sent_at_micros), &k, &(p.attachment_count as i32)],
                )
                .await?;
            if inserted == 1 {
                tx.execute(
                    "UPDATE pypes_sql_sessions SET messages = messages + 1,
                         end_user_messages = end_user_messages + ($2 = 'end_user')::int,
                         agent_messages = agent_messages + ($2 = 'agent')::int,
                         bot_messages = bot_messages + ($2 = 'bot')::int,
                         attachments = attachments + $3,
                         last_activity_at = greatest(last_activity_at, to_timestamp($4)),
                         first_reply_at = CASE WHEN first_reply_at IS NULL AND $2 IN ('agent', 'bot')
                             THEN to_timestamp($4) ELSE first_reply_at END
                     WHERE session_id = $1",
                    &[&session, &k, &(p.attachment_count as i64), &ts(p.sent_at_micros)],
                )
                .await?;
            }
        }
        events::types::MEDIA_UPLOADED => {
            let p: pb::MediaUploaded = match decode(r) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            tx.execute(
                "UPDATE pypes_sql_sessions SET media_uploads = media_uploads + 1, media_bytes = media_bytes + $2
                 WHERE session_id = $1",
                &[&session, &(p.size as i64)],
            )
            .await?;
        }
        events::types::SESSION_BECAME_INACTIVE | events::types::SESSION_REACTIVATED | events::types::SESSION_CLOSED => {
            let p: pb::SessionStateChanged = match decode(r) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let reason = match pb::ChangeReason::try_from(p.reason).unwrap_or(pb::ChangeReason::Unspecified) {
                pb::ChangeReason::Api => "api",
                pb::ChangeReason::Timer => "timer",
                pb::ChangeReason::Unspecified => "unknown",
            };
            match r.event_type() {
                events::types::SESSION_BECAME_INACTIVE => {
                    tx.execute("UPDATE pypes_sql_sessions SET state = 'inactive' WHERE session_id = $1", &[&session])
                        .await?
                }
                events::types::SESSION_REACTIVATED => {
                    tx.execute(
                        "UPDATE pypes_sql_sessions SET state = 'active',
                             last_activity_at = greatest(last_activity_at, to_timestamp($2))
                         WHERE session_id = $1",
                        &[&session, &ts(p.at_micros)],
                    )
                    .await?
                }
                _ => {
                    tx.execute(
                        "UPDATE pypes_sql_sessions SET state = 'closed', closed_at = to_timestamp($2), close_reason = $3
                         WHERE session_id = $1",
                        &[&session, &ts(p.at_micros), &reason],
                    )
                    .await?
                }
            };
        }
        events::types::SESSION_ERASED => {
            let p: pb::SessionErased = match decode(r) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            tx.execute(
                "UPDATE pypes_sql_sessions SET state = 'closed', end_user_id = NULL, subject_erased = true,
                     closed_at = coalesce(closed_at, to_timestamp($2))
                 WHERE session_id = $1",
                &[&session, &ts(p.at_micros)],
            )
            .await?;
        }
        events::types::SESSION_RESTRICTED | events::types::SESSION_RESTRICTION_LIFTED => {
            tx.execute(
                "UPDATE pypes_sql_sessions SET restricted = $2 WHERE session_id = $1",
                &[&session, &(r.event_type() == events::types::SESSION_RESTRICTED)],
            )
            .await?;
        }
        events::types::SESSION_CONTENT_EXPIRED => {
            tx.execute("UPDATE pypes_sql_sessions SET content_expired = true WHERE session_id = $1", &[&session])
                .await?;
        }
        _ => {}
    }
    Ok(Ok(()))
}

/// An erased subject's Sessions keep their counts and lose the subject.
async fn purge(tx: &Transaction<'_>, r: &RecordedEvent) -> Step {
    let p: pb::SubjectErasureKeysShredded = match decode(r) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let subject = match uuid_of(&p.subject_id, "subject_id") {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut sessions = Vec::with_capacity(p.session_ids.len());
    for s in &p.session_ids {
        match uuid_of(s, "session_ids") {
            Ok(s) => sessions.push(s),
            Err(e) => return Ok(Err(e)),
        }
    }
    tx.execute(
        "UPDATE pypes_sql_sessions SET end_user_id = NULL, subject_erased = true
         WHERE session_id = ANY($1) OR end_user_id = $2",
        &[&sessions, &subject],
    )
    .await?;
    Ok(Ok(()))
}

/// An offboarded tenant: every row goes.
async fn offboard(tx: &Transaction<'_>, tenant: Uuid) -> Step {
    tx.execute("DELETE FROM pypes_sql_messages WHERE tenant_id = $1", &[&tenant]).await?;
    tx.execute("DELETE FROM pypes_sql_sessions WHERE tenant_id = $1", &[&tenant]).await?;
    Ok(Ok(()))
}
