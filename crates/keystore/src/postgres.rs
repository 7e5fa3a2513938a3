//! The key store on PostgreSQL: the same records as the file store
//! (`proto/pypes/keystore/v1`), in four tables. Several pypes nodes share
//! one database: every change to a tenant's keys runs in one transaction
//! under a transaction-scoped advisory lock on the tenant, after taking in
//! what other nodes wrote since this one last looked (each write bumps the
//! tenant's `version`; records carry a sequence number, so a node reads
//! only what is new). A read that misses (a key made by another node)
//! looks again before it answers "unknown". [`crate::Keyring::sync`] takes
//! in other nodes' shreds and drops the unwrapped copies; the server runs
//! it every second. Commits are durable (`synchronous_commit`) before a
//! call returns.
//!
//! The embedded root-key provider's state (epoch KEKs wrapped under the
//! root key, which itself never enters the database) can live here too
//! ([`PgProviderStorage`]), so every node sees the same epochs; a change
//! to it is a compare-and-swap on its version.
//!
//! ```sql
//! pypes_key_store_meta (format_version)
//! pypes_key_tenants    (tenant bytea PK, shredded bool, version bigint)
//! pypes_key_keks       (tenant, epoch, nonce, wrapped)        PK (tenant, epoch)
//! pypes_key_records    (tenant, shard, seq bigserial, record) PK (tenant, shard, seq)
//! pypes_key_provider   (id = 1, version bigint, state bytea)
//! ```
//!
//! What a DELETE leaves behind (dead tuples until VACUUM reuses their
//! space, the WAL until it is recycled, base backups and archived WAL for
//! their retention) is ciphertext: every data key is wrapped under its
//! tenant's KEK, and every KEK under a root-provider epoch whose key is
//! wrapped under the root key, which lives outside PostgreSQL. Rotating the
//! epoch destroys the old epoch key, so those copies become unreadable
//! within one rotation period, as with the file store (docs/keys.md,
//! docs/backends.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use eventlog::Clock;
use postgres::Client;
use prost::Message;
use uuid::Uuid;

use crate::crypto::WrappedKey;
use crate::error::KeyError;
use crate::file::{FORMAT_VERSION, decode_record, encode_record};
use crate::provider::{ProviderStorage, RootKeyProvider};
use crate::store::{Delta, LocalKeyStore, Persist, Record, SHARDS, TenantState};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pypes_key_store_meta (format_version integer NOT NULL);
CREATE TABLE IF NOT EXISTS pypes_key_tenants (
    tenant bytea PRIMARY KEY,
    shredded boolean NOT NULL DEFAULT false
);
ALTER TABLE pypes_key_tenants ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS pypes_key_keks (
    tenant bytea NOT NULL,
    epoch integer NOT NULL,
    nonce bytea NOT NULL,
    wrapped bytea NOT NULL,
    PRIMARY KEY (tenant, epoch)
);
CREATE TABLE IF NOT EXISTS pypes_key_records (
    tenant bytea NOT NULL,
    shard smallint NOT NULL,
    seq bigserial,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, shard, seq)
);
CREATE INDEX IF NOT EXISTS pypes_key_records_by_seq ON pypes_key_records (tenant, seq);
CREATE TABLE IF NOT EXISTS pypes_key_provider (
    id integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL,
    state bytea NOT NULL
);
";

/// Serialises schema creation between nodes starting at once.
const SCHEMA_LOCK: i64 = 0x7079_7065_735f_6b73; // "pypes_ks"

/// Opens (creating the tables on first use) the key store in the database
/// at `url` (a libpq connection string or URL).
pub fn open_postgres_store(
    url: &str,
    provider: Arc<dyn RootKeyProvider>,
    clock: Arc<dyn Clock>,
) -> Result<LocalKeyStore, KeyError> {
    let persist = PgPersist::open(url)?;
    let tenants = persist.changes(None)?.into_iter().map(|d| (d.tenant, d)).collect::<Vec<_>>();
    let mut loaded = HashMap::new();
    for (tenant, delta) in tenants {
        let mut state = TenantState { shredded: delta.shredded, keks: delta.keks, ..TenantState::default() };
        for (shard, record) in delta.records {
            state.apply(shard, record);
        }
        if !state.shredded && state.keks.is_empty() && !state.shards.is_empty() {
            return Err(KeyError::corrupt(
                Path::new("postgres:pypes_key_records"),
                format!("tenant {tenant} has data keys but no KEK"),
            ));
        }
        if state.shredded || !state.keks.is_empty() {
            loaded.insert(tenant, state);
        }
    }
    LocalKeyStore::from_loaded(loaded, provider, Box::new(persist), clock)
}

/// Drops a connection on a thread of its own: closing a blocking client
/// blocks on a runtime of its own, which panics inside an async runtime
/// (a server shutting down, a tool's `main`).
fn close_off_runtime(client: Option<Client>) {
    if let Some(c) = client {
        let _ = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop(c));
    }
}

impl Drop for PgPersist {
    fn drop(&mut self) {
        close_off_runtime(self.lock().client.take());
    }
}

impl Drop for PgProviderStorage {
    fn drop(&mut self) {
        close_off_runtime(self.state.lock().unwrap_or_else(|e| e.into_inner()).0.take());
    }
}

/// What this process last saw of a tenant.
#[derive(Clone, Copy, Debug)]
struct Seen {
    version: i64,
    seq: i64,
}

struct Conn {
    client: Option<Client>,
    /// The tenant held (a transaction with its advisory lock is open).
    held: Option<Uuid>,
    seen: HashMap<Uuid, Seen>,
}

struct PgPersist {
    url: String,
    /// Where errors say they come from (the URL without a password).
    name: String,
    conn: Mutex<Conn>,
}

fn id(bytes: &[u8], what: &str, store: &str) -> Result<Uuid, KeyError> {
    Uuid::from_slice(bytes).map_err(|_| KeyError::Database {
        store: store.to_string(),
        detail: format!("{what} is {} bytes, not a UUID", bytes.len()),
    })
}

/// The advisory lock of a tenant's keys.
fn tenant_lock(tenant: Uuid) -> i64 {
    let b = tenant.as_bytes();
    i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) ^ SCHEMA_LOCK
}

/// A failed database call as the key store's error: unreachable (retry)
/// or the database's answer.
fn pg_error(store: &str, e: &postgres::Error) -> KeyError {
    let detail = pgconn::describe(e);
    if pgconn::is_unreachable(e) {
        KeyError::Unreachable { store: store.to_string(), detail }
    } else {
        KeyError::Database { store: store.to_string(), detail }
    }
}

/// Connects (or reconnects after a broken connection) and creates the
/// tables under a lock, so nodes starting together do not race.
fn connect(url: &str, name: &str) -> Result<Client, KeyError> {
    let db = |e: postgres::Error| pg_error(name, &e);
    let target = pgconn::target(url).map_err(|detail| KeyError::Database { store: name.to_string(), detail })?;
    let mut c = postgres::Config::from(target.config).connect(target.tls).map_err(db)?;
    // "already exists, skipping" notices are not news.
    c.batch_execute("SET client_min_messages TO warning").map_err(db)?;
    let mut tx = c.transaction().map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map_err(db)?;
    tx.batch_execute(SCHEMA).map_err(db)?;
    let versions: Vec<i32> = tx
        .query("SELECT format_version FROM pypes_key_store_meta", &[])
        .map_err(db)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    match versions.as_slice() {
        [] => {
            tx.execute("INSERT INTO pypes_key_store_meta (format_version) VALUES ($1)", &[&(FORMAT_VERSION as i32)])
                .map_err(db)?;
        }
        [v] if *v == FORMAT_VERSION as i32 => {}
        other => {
            return Err(KeyError::Database {
                store: name.to_string(),
                detail: format!("format version {other:?}; this build reads {FORMAT_VERSION}"),
            });
        }
    }
    tx.commit().map_err(db)?;
    Ok(c)
}

impl PgPersist {
    fn open(url: &str) -> Result<Self, KeyError> {
        let name = eventlog::redact_url(url);
        let client = connect(url, &name)?;
        Ok(Self {
            url: url.to_string(),
            name,
            conn: Mutex::new(Conn { client: Some(client), held: None, seen: HashMap::new() }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db(&self) -> impl Fn(postgres::Error) -> KeyError + '_ {
        |e| pg_error(&self.name, &e)
    }

    /// The connection, (re)connected if there is none or it broke. A
    /// connection that broke under a hold loses the hold (its transaction
    /// is gone); the hold's writes then fail and are reported.
    fn client<'a>(&self, conn: &'a mut Conn) -> Result<&'a mut Client, KeyError> {
        if conn.client.as_ref().is_none_or(Client::is_closed) {
            if let Some(tenant) = conn.held {
                conn.seen.remove(&tenant);
                return Err(KeyError::Unreachable {
                    store: self.name.clone(),
                    detail: "the connection broke during a change; it was rolled back".into(),
                });
            }
            conn.client = Some(connect(&self.url, &self.name)?);
        }
        conn.client.as_mut().ok_or_else(|| KeyError::Task("no database connection".into()))
    }

    /// Runs the writes of one change to `tenant`: inside the hold when
    /// there is one, else in a transaction of their own. Each change bumps
    /// the tenant's version; what this process wrote itself is noted as
    /// seen, so it is not read back.
    fn write(
        &self,
        tenant: Uuid,
        f: impl FnOnce(&mut Client) -> Result<Option<i64>, postgres::Error>,
    ) -> Result<(), KeyError> {
        let db = self.db();
        let mut conn = self.lock();
        let held = conn.held == Some(tenant);
        let client = self.client(&mut conn)?;
        let t = tenant.as_bytes().as_slice();
        // Under a hold the statements join its open transaction (a failure
        // aborts it, and `release` rolls it back); else they get their own.
        if !held {
            client.batch_execute("BEGIN").map_err(&db)?;
        }
        let wrote = f(client).and_then(|seq| Ok((seq, bump(client, t)?)));
        let wrote = match (held, wrote) {
            (true, w) => w,
            (false, Ok(w)) => client.batch_execute("COMMIT").map(|()| w),
            (false, Err(e)) => {
                let _ = client.batch_execute("ROLLBACK");
                Err(e)
            }
        };
        let (seq, version) = wrote.map_err(&db)?;
        if held {
            let seen = conn.seen.entry(tenant).or_insert(Seen { version: 0, seq: 0 });
            seen.version = version;
            seen.seq = seen.seq.max(seq.unwrap_or(0));
        } else {
            // Outside a hold another node may have written in between:
            // look again next time.
            conn.seen.remove(&tenant);
        }
        Ok(())
    }

    /// What changed in `tenant` since `seen` (everything when `None`).
    fn delta(
        client: &mut Client,
        tenant: Uuid,
        shredded: bool,
        version: i64,
        seen: Option<Seen>,
        name: &str,
    ) -> Result<(Delta, Seen), KeyError> {
        let db = |e: postgres::Error| pg_error(name, &e);
        let t = tenant.as_bytes().as_slice();
        let mut delta = Delta { tenant, full: seen.is_none(), shredded, ..Delta::default() };
        let mut now = Seen { version, seq: seen.map_or(0, |s| s.seq) };
        if shredded {
            return Ok((delta, now));
        }
        for row in
            c_query(client, "SELECT epoch, nonce, wrapped FROM pypes_key_keks WHERE tenant = $1", &[&t]).map_err(db)?
        {
            let epoch: i32 = row.get(0);
            let wrapped = WrappedKey::from_parts(row.get(1), row.get(2)).ok_or_else(|| KeyError::Database {
                store: name.to_string(),
                detail: format!("tenant {tenant}'s KEK of epoch {epoch} has the wrong size"),
            })?;
            delta.keks.insert(epoch as u32, wrapped);
        }
        let where_ = Path::new("postgres:pypes_key_records");
        let rows = c_query(
            client,
            "SELECT shard, seq, record FROM pypes_key_records WHERE tenant = $1 AND seq > $2 ORDER BY seq",
            &[&t, &seen.map_or(0, |s| s.seq)],
        )
        .map_err(db)?;
        for row in rows {
            let shard: i16 = row.get(0);
            if !(0..SHARDS as i16).contains(&shard) {
                return Err(KeyError::corrupt(where_, format!("shard number {shard} is out of range")));
            }
            now.seq = now.seq.max(row.get(1));
            delta.records.push((shard as u16, decode_record(where_, row.get(2))?));
        }
        Ok((delta, now))
    }
}

fn c_query(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<postgres::Row>, postgres::Error> {
    client.query(sql, params)
}

/// Bumps the tenant's version (its row exists once it has a KEK).
fn bump(tx: &mut Client, tenant: &[u8]) -> Result<i64, postgres::Error> {
    let row = tx.query_opt(
        "UPDATE pypes_key_tenants SET version = version + 1 WHERE tenant = $1 RETURNING version",
        &[&tenant],
    )?;
    Ok(row.map_or(0, |r| r.get(0)))
}

impl Persist for PgPersist {
    fn describe(&self) -> String {
        format!("PostgreSQL key store ({})", self.name)
    }

    fn shared(&self) -> bool {
        true
    }

    fn hold(&self, tenant: Uuid) -> Result<Option<Delta>, KeyError> {
        let db = self.db();
        let mut conn = self.lock();
        if conn.held.is_some() {
            return Err(KeyError::Task("a key-store change is already in progress on this connection".into()));
        }
        let seen = conn.seen.get(&tenant).copied();
        let client = self.client(&mut conn)?;
        client.batch_execute("BEGIN").map_err(&db)?;
        let looked = (|| {
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&tenant_lock(tenant)]).map_err(&db)?;
            let row = client
                .query_opt(
                    "SELECT shredded, version FROM pypes_key_tenants WHERE tenant = $1",
                    &[&tenant.as_bytes().as_slice()],
                )
                .map_err(&db)?;
            let Some(row) = row else { return Ok(None) };
            let (shredded, version): (bool, i64) = (row.get(0), row.get(1));
            if seen.is_some_and(|s| s.version == version) {
                return Ok(None);
            }
            Self::delta(client, tenant, shredded, version, seen, &self.name).map(Some)
        })();
        match looked {
            Ok(found) => {
                conn.held = Some(tenant);
                Ok(found.map(|(delta, now)| {
                    conn.seen.insert(tenant, now);
                    delta
                }))
            }
            Err(e) => {
                if let Some(c) = conn.client.as_mut() {
                    let _ = c.batch_execute("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    fn release(&self, commit: bool) -> Result<(), KeyError> {
        let db = self.db();
        let mut conn = self.lock();
        let Some(tenant) = conn.held.take() else { return Ok(()) };
        let result = match conn.client.as_mut().filter(|c| !c.is_closed()) {
            Some(c) => c.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" }).map_err(db),
            None => Err(KeyError::Unreachable {
                store: self.name.clone(),
                detail: "the connection broke during a change; it was rolled back".into(),
            }),
        };
        if result.is_err() || !commit {
            conn.seen.remove(&tenant);
        }
        result
    }

    fn forget(&self, tenant: Uuid) {
        self.lock().seen.remove(&tenant);
    }

    fn changes(&self, tenant: Option<Uuid>) -> Result<Vec<Delta>, KeyError> {
        let db = self.db();
        let mut conn = self.lock();
        let client = self.client(&mut conn)?;
        let rows = match tenant {
            Some(t) => client.query(
                "SELECT tenant, shredded, version FROM pypes_key_tenants WHERE tenant = $1",
                &[&t.as_bytes().as_slice()],
            ),
            None => client.query("SELECT tenant, shredded, version FROM pypes_key_tenants", &[]),
        }
        .map_err(&db)?;
        let mut heads = Vec::with_capacity(rows.len());
        for row in rows {
            heads.push((id(row.get(0), "tenant", &self.name)?, row.get::<_, bool>(1), row.get::<_, i64>(2)));
        }
        let mut out = Vec::new();
        for (tenant, shredded, version) in heads {
            let seen = conn.seen.get(&tenant).copied();
            if seen.is_some_and(|s| s.version == version) {
                continue;
            }
            let client = self.client(&mut conn)?;
            let (delta, now) = Self::delta(client, tenant, shredded, version, seen, &self.name)?;
            conn.seen.insert(tenant, now);
            out.push(delta);
        }
        Ok(out)
    }

    fn write_kek(&self, tenant: Uuid, epoch: u32, kek: &WrappedKey) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        self.write(tenant, |tx: &mut Client| {
            tx.execute("INSERT INTO pypes_key_tenants (tenant) VALUES ($1) ON CONFLICT DO NOTHING", &[&t])?;
            tx.execute(
                "INSERT INTO pypes_key_keks (tenant, epoch, nonce, wrapped) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, epoch) DO UPDATE SET nonce = EXCLUDED.nonce, wrapped = EXCLUDED.wrapped",
                &[&t, &(epoch as i32), &kek.nonce.as_slice(), &kek.ciphertext.as_slice()],
            )?;
            Ok(None)
        })
    }

    fn remove_kek(&self, tenant: Uuid, epoch: u32) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        self.write(tenant, |tx: &mut Client| {
            tx.execute("DELETE FROM pypes_key_keks WHERE tenant = $1 AND epoch = $2", &[&t, &(epoch as i32)])?;
            Ok(None)
        })
    }

    fn append(&self, tenant: Uuid, shard: u16, record: &Record) -> Result<(), KeyError> {
        let bytes = encode_record(record).encode_to_vec();
        let t = tenant.as_bytes().as_slice();
        self.write(tenant, |tx: &mut Client| {
            let row = tx.query_one(
                "INSERT INTO pypes_key_records (tenant, shard, record) VALUES ($1, $2, $3) RETURNING seq",
                &[&t, &(shard as i16), &bytes],
            )?;
            Ok(Some(row.get(0)))
        })
    }

    fn rewrite_shard(&self, tenant: Uuid, shard: u16, records: &[Record]) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        let encoded: Vec<Vec<u8>> = records.iter().map(|r| encode_record(r).encode_to_vec()).collect();
        self.write(tenant, |tx: &mut Client| {
            tx.execute("DELETE FROM pypes_key_records WHERE tenant = $1 AND shard = $2", &[&t, &(shard as i16)])?;
            let insert =
                tx.prepare("INSERT INTO pypes_key_records (tenant, shard, record) VALUES ($1, $2, $3) RETURNING seq")?;
            let mut last = None;
            for bytes in &encoded {
                last = Some(tx.query_one(&insert, &[&t, &(shard as i16), bytes])?.get(0));
            }
            Ok(last)
        })
    }

    fn shred_tenant(&self, tenant: Uuid) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        self.write(tenant, |tx: &mut Client| {
            tx.execute(
                "INSERT INTO pypes_key_tenants (tenant, shredded) VALUES ($1, true)
                 ON CONFLICT (tenant) DO UPDATE SET shredded = true",
                &[&t],
            )?;
            tx.execute("DELETE FROM pypes_key_keks WHERE tenant = $1", &[&t])?;
            tx.execute("DELETE FROM pypes_key_records WHERE tenant = $1", &[&t])?;
            Ok(None)
        })
    }
}

/// The embedded root-key provider's state in the shared database, so that
/// every node sees the same epochs. Only the epoch KEKs wrapped under the
/// root key are stored; the root key comes from each node's environment.
pub struct PgProviderStorage {
    url: String,
    name: String,
    state: Mutex<(Option<Client>, i64)>,
}

impl PgProviderStorage {
    pub fn open(url: &str) -> Result<Self, KeyError> {
        let name = eventlog::redact_url(url);
        let client = connect(url, &name)?;
        Ok(Self { url: url.to_string(), name, state: Mutex::new((Some(client), 0)) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client, &mut i64) -> Result<T, KeyError>) -> Result<T, KeyError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (client, version) = &mut *guard;
        if client.as_ref().is_none_or(Client::is_closed) {
            *client = Some(connect(&self.url, &self.name)?);
        }
        let c = client.as_mut().ok_or_else(|| KeyError::Task("no database connection".into()))?;
        f(c, version)
    }
}

impl ProviderStorage for PgProviderStorage {
    fn describe(&self) -> String {
        format!("embedded root-key provider in PostgreSQL ({})", self.name)
    }

    fn location(&self) -> PathBuf {
        PathBuf::from(format!("postgres:pypes_key_provider ({})", self.name))
    }

    fn shared(&self) -> bool {
        true
    }

    fn read(&self) -> Result<Option<Vec<u8>>, KeyError> {
        let db = |e: postgres::Error| pg_error(&self.name, &e);
        self.with(|c, version| {
            let row = c.query_opt("SELECT version, state FROM pypes_key_provider WHERE id = 1", &[]).map_err(db)?;
            Ok(row.map(|r| {
                *version = r.get(0);
                r.get::<_, Vec<u8>>(1)
            }))
        })
    }

    fn write(&self, bytes: &[u8]) -> Result<(), KeyError> {
        let db = |e: postgres::Error| pg_error(&self.name, &e);
        self.with(|c, version| {
            let changed = if *version == 0 {
                c.execute(
                    "INSERT INTO pypes_key_provider (id, version, state) VALUES (1, 1, $1) ON CONFLICT DO NOTHING",
                    &[&bytes],
                )
            } else {
                c.execute(
                    "UPDATE pypes_key_provider SET state = $1, version = version + 1 WHERE id = 1 AND version = $2",
                    &[&bytes, &*version],
                )
            }
            .map_err(db)?;
            if changed != 1 {
                return Err(KeyError::Database {
                    store: self.name.clone(),
                    detail: "another node changed the root-key provider's epochs at the same time; \
                             this change was not made (it is tried again at the next check)"
                        .into(),
                });
            }
            *version += 1;
            Ok(())
        })
    }
}
