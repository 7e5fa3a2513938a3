//! The key-store conformance suite on PostgreSQL (a throw-away cluster
//! per test, started with the machine's initdb and postgres), and what the
//! database holds after a reopen and after a shred.

use std::sync::Arc;

use eventlog::SystemClock;
use keystore::crypto::SecretKey;
use keystore::postgres::open_postgres_store;
use keystore::{EmbeddedRootProvider, KeyPurpose, KeyStore, ShredTarget};
use uuid::Uuid;

fn provider() -> Arc<EmbeddedRootProvider> {
    Arc::new(EmbeddedRootProvider::in_memory(SecretKey::random().unwrap(), 1_700_000_000).unwrap())
}

/// Fresh stores, each in a new database of one cluster that lives as long
/// as the factory. Without PostgreSQL (and without PYPES_REQUIRE_POSTGRES)
/// the factory is an in-memory store and the suite says it did not run.
fn factory() -> impl Fn() -> Arc<dyn KeyStore> {
    let cluster = pgtest::Cluster::start();
    move || -> Arc<dyn KeyStore> {
        match &cluster {
            Some(pg) => Arc::new(open_postgres_store(&pg.fresh_database(), provider(), Arc::new(SystemClock)).unwrap()),
            None => Arc::new(keystore::LocalKeyStore::in_memory(provider(), Arc::new(SystemClock))),
        }
    }
}

keystore::keystore_conformance_tests!(factory());

#[test]
fn keys_survive_a_reopen_and_a_shred_leaves_no_row() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let root = provider();
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let (key, media) = {
        let store = open_postgres_store(&url, root.clone(), Arc::new(SystemClock)).unwrap();
        let key = store.active_key(t, &KeyPurpose::SessionContent { session: s }).unwrap();
        let media = store.active_key(t, &KeyPurpose::Media { session: s, media: Uuid::now_v7() }).unwrap();
        store.reserve_uses(t, key.id, 1 << 20).unwrap();
        (key, media)
    };
    let store = open_postgres_store(&url, root.clone(), Arc::new(SystemClock)).unwrap();
    let again = store.active_key(t, &KeyPurpose::SessionContent { session: s }).unwrap();
    assert_eq!((again.id, &again.material), (key.id, &key.material), "the same key after a reopen");
    assert!(again.uses_reserved >= 1 << 20, "reservations are durable");
    // The rows hold only wrapped material: the key bytes are in no column.
    let dump = pg.psql(&url, "SELECT string_agg(encode(record, 'hex'), '') FROM pypes_key_records");
    assert!(!dump.contains(&hex::encode(key.material.expose())), "a data key in clear in the database");
    let shred = store.shred(t, &ShredTarget::Session { session: s }).unwrap();
    assert_eq!(shred.keys.len(), 2);
    assert!(shred.keys.contains(&media.id));
    drop(store);
    let store = open_postgres_store(&url, root.clone(), Arc::new(SystemClock)).unwrap();
    assert!(matches!(store.key(t, key.id), Ok(keystore::KeyLookup::Shredded)), "a shred is durable");
    store.shred(t, &ShredTarget::Tenant).unwrap();
    let rows = pg.psql(&url, "SELECT (SELECT count(*) FROM pypes_key_keks) + (SELECT count(*) FROM pypes_key_records)");
    assert_eq!(rows, "0", "a tenant shred leaves no KEK and no record");
    drop(store);
    let store = open_postgres_store(&url, root, Arc::new(SystemClock)).unwrap();
    assert!(matches!(
        store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }),
        Err(keystore::KeyError::TenantShredded { .. })
    ));
    // Another root key cannot open this store.
    store.active_key(Uuid::now_v7(), &KeyPurpose::SessionContent { session: s }).unwrap();
    drop(store);
    let e = open_postgres_store(&url, provider(), Arc::new(SystemClock)).unwrap_err();
    assert!(e.to_string().contains("root key"), "{e}");
}

#[test]
fn an_unreachable_database_is_named() {
    let e = open_postgres_store(
        "host=127.0.0.1 port=1 user=pypes password=secret-pw dbname=keys connect_timeout=2",
        provider(),
        Arc::new(SystemClock),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("key store database") && text.contains("port=1"), "{text}");
    assert!(!text.contains("secret-pw"), "the password is not in the error: {text}");
}
