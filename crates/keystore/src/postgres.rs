//! The key store on PostgreSQL: the same records as the file store
//! (`proto/pypes/keystore/v1`), in four tables, each change one
//! transaction committed with `synchronous_commit` (durable when the call
//! returns). Several pypes nodes may share it only through one writer at a
//! time per tenant: the in-process state is loaded at open (see
//! docs/backends.md for what that means for multi-node use).
//!
//! ```sql
//! pypes_key_store_meta (format_version)
//! pypes_key_tenants    (tenant bytea PK, shredded bool)
//! pypes_key_keks       (tenant, epoch, nonce, wrapped)        PK (tenant, epoch)
//! pypes_key_records    (tenant, shard, seq bigserial, record) PK (tenant, shard, seq)
//! ```
//!
//! What a DELETE leaves behind (dead tuples until VACUUM reuses their
//! space, the WAL until it is recycled, base backups and archived WAL for
//! their retention) is ciphertext: every data key is wrapped under its
//! tenant's KEK, and every KEK under a root-provider epoch that lives
//! outside PostgreSQL. Rotating the epoch destroys the old epoch key, so
//! those copies become unreadable within one rotation period, as with the
//! file store (docs/keys.md, docs/backends.md).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use eventlog::Clock;
use postgres::{Client, NoTls};
use prost::Message;
use uuid::Uuid;

use crate::crypto::WrappedKey;
use crate::error::KeyError;
use crate::file::{FORMAT_VERSION, decode_record, encode_record};
use crate::provider::RootKeyProvider;
use crate::store::{LocalKeyStore, Persist, Record, SHARDS, TenantState};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pypes_key_store_meta (format_version integer NOT NULL);
CREATE TABLE IF NOT EXISTS pypes_key_tenants (
    tenant bytea PRIMARY KEY,
    shredded boolean NOT NULL DEFAULT false
);
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
";

/// Opens (creating the tables on first use) the key store in the database
/// at `url` (a libpq connection string or URL).
pub fn open_postgres_store(
    url: &str,
    provider: Arc<dyn RootKeyProvider>,
    clock: Arc<dyn Clock>,
) -> Result<LocalKeyStore, KeyError> {
    let (persist, tenants) = PgPersist::open(url)?;
    LocalKeyStore::from_loaded(tenants, provider, Box::new(persist), clock)
}

struct PgPersist {
    url: String,
    /// Where errors say they come from (the URL without a password).
    name: String,
    client: Mutex<Option<Client>>,
}

fn id(bytes: &[u8], what: &str, store: &str) -> Result<Uuid, KeyError> {
    Uuid::from_slice(bytes).map_err(|_| KeyError::Database {
        store: store.to_string(),
        detail: format!("{what} is {} bytes, not a UUID", bytes.len()),
    })
}

impl PgPersist {
    fn open(url: &str) -> Result<(Self, HashMap<Uuid, TenantState>), KeyError> {
        let persist =
            Self { url: url.to_string(), name: eventlog::postgres::redact_url(url), client: Mutex::new(None) };
        let tenants = persist.with(|c, name| {
            c.batch_execute(SCHEMA)?;
            let versions: Vec<i32> =
                c.query("SELECT format_version FROM pypes_key_store_meta", &[])?.iter().map(|r| r.get(0)).collect();
            match versions.as_slice() {
                [] => {
                    c.execute(
                        "INSERT INTO pypes_key_store_meta (format_version) VALUES ($1)",
                        &[&(FORMAT_VERSION as i32)],
                    )?;
                }
                [v] if *v == FORMAT_VERSION as i32 => {}
                other => {
                    return Ok(Err(KeyError::Database {
                        store: name.to_string(),
                        detail: format!("format version {other:?}; this build reads {FORMAT_VERSION}"),
                    }));
                }
            }
            Ok(Self::load(c, name))
        })??;
        Ok((persist, tenants))
    }

    fn load(c: &mut Client, name: &str) -> Result<HashMap<Uuid, TenantState>, KeyError> {
        let db = |e: postgres::Error| KeyError::Database { store: name.to_string(), detail: e.to_string() };
        let mut tenants = HashMap::new();
        for row in c.query("SELECT tenant, shredded FROM pypes_key_tenants", &[]).map_err(db)? {
            let tenant = id(row.get(0), "tenant", name)?;
            let state = if row.get::<_, bool>(1) {
                TenantState { shredded: true, ..TenantState::default() }
            } else {
                TenantState::default()
            };
            tenants.insert(tenant, state);
        }
        for row in c.query("SELECT tenant, epoch, nonce, wrapped FROM pypes_key_keks", &[]).map_err(db)? {
            let tenant = id(row.get(0), "tenant", name)?;
            let epoch: i32 = row.get(1);
            let wrapped = WrappedKey::from_parts(row.get(2), row.get(3)).ok_or_else(|| KeyError::Database {
                store: name.to_string(),
                detail: format!("tenant {tenant}'s KEK of epoch {epoch} has the wrong size"),
            })?;
            if let Some(state) = tenants.get_mut(&tenant).filter(|s| !s.shredded) {
                state.keks.insert(epoch as u32, wrapped);
            }
        }
        let where_ = Path::new("postgres:pypes_key_records");
        let rows = c.query("SELECT tenant, shard, record FROM pypes_key_records ORDER BY tenant, shard, seq", &[]);
        for row in rows.map_err(db)? {
            let tenant = id(row.get(0), "tenant", name)?;
            let shard: i16 = row.get(1);
            if !(0..SHARDS as i16).contains(&shard) {
                return Err(KeyError::corrupt(where_, format!("shard number {shard} is out of range")));
            }
            let record = decode_record(where_, row.get(2))?;
            match tenants.get_mut(&tenant) {
                Some(state) if !state.shredded => state.apply(shard as u16, record),
                Some(_) => {}
                None => {
                    return Err(KeyError::corrupt(where_, format!("data keys of tenant {tenant}, who has no row")));
                }
            }
        }
        for (tenant, state) in &tenants {
            if !state.shredded && state.keks.is_empty() && !state.shards.is_empty() {
                return Err(KeyError::corrupt(where_, format!("tenant {tenant} has data keys but no KEK")));
            }
        }
        tenants.retain(|_, s| s.shredded || !s.keks.is_empty());
        Ok(tenants)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the connection (connecting first if there is none, or
    /// the last one broke).
    fn with<T>(&self, f: impl FnOnce(&mut Client, &str) -> Result<T, postgres::Error>) -> Result<T, KeyError> {
        let db = |e: postgres::Error| KeyError::Database { store: self.name.clone(), detail: e.to_string() };
        let mut guard = self.lock();
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(Client::connect(&self.url, NoTls).map_err(db)?);
        }
        let client = guard.as_mut().ok_or_else(|| KeyError::Task("no database connection".into()))?;
        f(client, &self.name).map_err(db)
    }

    /// Runs `f` in one transaction.
    fn transaction(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<(), postgres::Error>,
    ) -> Result<(), KeyError> {
        self.with(|c, _| {
            let mut tx = c.transaction()?;
            f(&mut tx)?;
            tx.commit()
        })
    }
}

impl Persist for PgPersist {
    fn describe(&self) -> String {
        format!("PostgreSQL key store ({})", self.name)
    }

    fn write_kek(&self, tenant: Uuid, epoch: u32, kek: &WrappedKey) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        self.transaction(|tx| {
            tx.execute("INSERT INTO pypes_key_tenants (tenant) VALUES ($1) ON CONFLICT DO NOTHING", &[&t])?;
            tx.execute(
                "INSERT INTO pypes_key_keks (tenant, epoch, nonce, wrapped) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant, epoch) DO UPDATE SET nonce = EXCLUDED.nonce, wrapped = EXCLUDED.wrapped",
                &[&t, &(epoch as i32), &kek.nonce.as_slice(), &kek.ciphertext.as_slice()],
            )?;
            Ok(())
        })
    }

    fn remove_kek(&self, tenant: Uuid, epoch: u32) -> Result<(), KeyError> {
        self.with(|c, _| {
            c.execute(
                "DELETE FROM pypes_key_keks WHERE tenant = $1 AND epoch = $2",
                &[&tenant.as_bytes().as_slice(), &(epoch as i32)],
            )
            .map(drop)
        })
    }

    fn append(&self, tenant: Uuid, shard: u16, record: &Record) -> Result<(), KeyError> {
        let bytes = encode_record(record).encode_to_vec();
        self.with(|c, _| {
            c.execute(
                "INSERT INTO pypes_key_records (tenant, shard, record) VALUES ($1, $2, $3)",
                &[&tenant.as_bytes().as_slice(), &(shard as i16), &bytes],
            )
            .map(drop)
        })
    }

    fn rewrite_shard(&self, tenant: Uuid, shard: u16, records: &[Record]) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        let encoded: Vec<Vec<u8>> = records.iter().map(|r| encode_record(r).encode_to_vec()).collect();
        self.transaction(|tx| {
            tx.execute("DELETE FROM pypes_key_records WHERE tenant = $1 AND shard = $2", &[&t, &(shard as i16)])?;
            let insert = tx.prepare("INSERT INTO pypes_key_records (tenant, shard, record) VALUES ($1, $2, $3)")?;
            for bytes in &encoded {
                tx.execute(&insert, &[&t, &(shard as i16), bytes])?;
            }
            Ok(())
        })
    }

    fn shred_tenant(&self, tenant: Uuid) -> Result<(), KeyError> {
        let t = tenant.as_bytes().as_slice();
        self.transaction(|tx| {
            tx.execute(
                "INSERT INTO pypes_key_tenants (tenant, shredded) VALUES ($1, true)
                 ON CONFLICT (tenant) DO UPDATE SET shredded = true",
                &[&t],
            )?;
            tx.execute("DELETE FROM pypes_key_keks WHERE tenant = $1", &[&t])?;
            tx.execute("DELETE FROM pypes_key_records WHERE tenant = $1", &[&t])?;
            Ok(())
        })
    }
}
