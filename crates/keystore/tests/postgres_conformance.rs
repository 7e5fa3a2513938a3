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

/// Two nodes (two stores, one database, one provider state in the
/// database): what one makes the other finds, a shred by one reaches the
/// other's sync, reservations never overlap, and a rotation by one is
/// seen by the other.
#[test]
fn two_nodes_share_one_key_store() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let root = SecretKey::random().unwrap();
    let node = |create: bool| {
        let storage = keystore::postgres::PgProviderStorage::open(&url).unwrap();
        let provider =
            Arc::new(EmbeddedRootProvider::open_in(Box::new(storage), root.clone(), create, 1_700_000_000).unwrap());
        Arc::new(open_postgres_store(&url, provider, Arc::new(SystemClock)).unwrap())
    };
    let a = node(true);
    let b = node(false);
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let purpose = KeyPurpose::SessionContent { session: s };
    let ka = a.active_key(t, &purpose).unwrap();
    let kb = b.active_key(t, &purpose).unwrap();
    assert_eq!((ka.id, &ka.material), (kb.id, &kb.material), "one active key per purpose across nodes");
    let media = b.active_key(t, &KeyPurpose::Media { session: s, media: Uuid::now_v7() }).unwrap();
    match a.key(t, media.id).unwrap() {
        keystore::KeyLookup::Live(k) => assert_eq!(k.material, media.material, "a key made by the other node opens"),
        other => panic!("{other:?}"),
    }
    // Reservations from both nodes, interleaved, never overlap.
    let mut ranges = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { &a } else { &b };
        ranges.push(store.reserve_block(t, ka.id, 1000).unwrap().unwrap());
    }
    ranges.sort_by_key(|r| r.start);
    for pair in ranges.windows(2) {
        assert!(pair[0].end <= pair[1].start, "overlapping reservations {pair:?}");
    }
    // Racing key creation on many purposes from two threads.
    let purposes: Vec<KeyPurpose> = (0..30).map(|_| KeyPurpose::SessionContent { session: Uuid::now_v7() }).collect();
    let (pa, pb) = (purposes.clone(), purposes.clone());
    let (a2, b2) = (a.clone(), b.clone());
    let ta = std::thread::spawn(move || pa.iter().map(|p| a2.active_key(t, p).unwrap().id).collect::<Vec<_>>());
    let tb = std::thread::spawn(move || pb.iter().map(|p| b2.active_key(t, p).unwrap().id).collect::<Vec<_>>());
    assert_eq!(ta.join().unwrap(), tb.join().unwrap(), "both nodes got the same key for each purpose");
    // A shred on one node reaches the other's sync.
    assert_eq!(b.sync().unwrap(), vec![], "nothing shredded yet");
    let shred = a.shred(t, &ShredTarget::Session { session: s }).unwrap();
    assert_eq!(shred.keys.len(), 2);
    let seen = b.sync().unwrap();
    assert_eq!(seen.len(), 1);
    let mut expected = shred.keys.clone();
    expected.sort();
    assert_eq!(seen[0].keys, expected, "the other node learns which keys went");
    assert!(matches!(b.key(t, ka.id), Ok(keystore::KeyLookup::Shredded)));
    assert_eq!(b.keys_of(t, &ShredTarget::Session { session: s }).unwrap(), vec![]);
    // A rotation on one node: the other opens keys under the new epoch.
    let other = b.active_key(t, &purposes[0]).unwrap();
    let report = a.rotate_epoch().unwrap();
    assert_eq!(report.destroyed_epochs, vec![1]);
    let fresh = node(false);
    match fresh.key(t, other.id).unwrap() {
        keystore::KeyLookup::Live(k) => assert_eq!(k.material, other.material),
        other => panic!("{other:?}"),
    }
    let made_by_b = b.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    match a.key(t, made_by_b.id).unwrap() {
        keystore::KeyLookup::Live(k) => assert_eq!(k.material, made_by_b.material, "a key made after the rotation"),
        other => panic!("{other:?}"),
    }
    // A tenant shred on one node: the other refuses new keys.
    b.shred(t, &ShredTarget::Tenant).unwrap();
    let seen = a.sync().unwrap();
    assert!(seen.iter().any(|r| r.tenant == t && r.tenant_shredded));
    assert!(matches!(a.active_key(t, &purpose), Err(keystore::KeyError::TenantShredded { .. })));
}
