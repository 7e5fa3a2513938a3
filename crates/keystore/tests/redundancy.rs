//! The key store's redundancy (format 2, twin records): a flipped byte in
//! any file of the key store or the provider is repaired from the other
//! copy at open, with every key as it was and the file restored byte for
//! byte; a read-only check reports it and writes nothing; power cuts during
//! a repair lose nothing; a format 1 store is migrated.
//!
//! Regression: in format 1 a flipped byte in the last record of a shard was
//! taken for a torn append and cut off at open, destroying an acknowledged
//! key (and everything sealed under it) while `pypes keys verify` said
//! `failures: 0`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{KEYS, PROVIDER, clock, open};
use eventlog::file::sim::{CrashMode, SimVfs};
use eventlog::file::vfs::Vfs;
use keystore::crypto::SecretKey;
use keystore::file::check_file_store;
use keystore::{
    DataKey, EmbeddedRootProvider, FindingAction, Group, KeyError, KeyLookup, KeyPurpose, KeyStore, LocalKeyStore,
    ShredTarget,
};
use uuid::Uuid;

struct World {
    vfs: SimVfs,
    root: SecretKey,
    live: Vec<DataKey>,
    shredded: Vec<DataKey>,
}

/// Two tenants (one offboarded later), subjects with every group, Sessions
/// and media, reservations, a retirement, shreds and a rotation.
fn world() -> World {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let store = open(&vfs, &root).unwrap();
    let (t1, t2, gone) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut live = Vec::new();
    let mut shredded = Vec::new();
    for t in [t1, t2] {
        let s = Uuid::now_v7();
        for g in Group::ALL {
            live.push(store.active_key(t, &KeyPurpose::Subject { subject: s, group: g }).unwrap());
        }
        let session = Uuid::now_v7();
        live.push(store.active_key(t, &KeyPurpose::SessionContent { session }).unwrap());
        live.push(store.active_key(t, &KeyPurpose::Media { session, media: Uuid::now_v7() }).unwrap());
    }
    store.reserve_uses(t1, live[0].id, keystore::INITIAL_RESERVATION * 3).unwrap();
    store.retire(t2, live[8].id).unwrap();
    let erased = Uuid::now_v7();
    for g in Group::ALL {
        shredded.push(store.active_key(t1, &KeyPurpose::Subject { subject: erased, group: g }).unwrap());
    }
    store.shred(t1, &ShredTarget::Subject { subject: erased, group: None }).unwrap();
    shredded.push(store.active_key(gone, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap());
    store.shred(gone, &ShredTarget::Tenant).unwrap();
    store.rotate_epoch().unwrap();
    // Appends after the rotation, so shards end in appended records too.
    live.push(store.active_key(t1, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap());
    store.reserve_uses(t1, live[0].id, keystore::INITIAL_RESERVATION * 4).unwrap();
    drop(store);
    World { vfs, root, live, shredded }
}

fn files(vfs: &SimVfs) -> BTreeMap<PathBuf, Vec<u8>> {
    vfs.all_file_bytes().into_iter().collect()
}

/// Every key answers as in the pristine store.
fn assert_keys(store: &LocalKeyStore, w: &World, context: &str) {
    for k in &w.live {
        match store.key(k.tenant, k.id) {
            Ok(KeyLookup::Live(found)) => assert_eq!(found.material, k.material, "{context}: key {} differs", k.id),
            other => panic!("{context}: live key {} answered {other:?}", k.id),
        }
    }
    for k in &w.shredded {
        assert!(
            matches!(store.key(k.tenant, k.id), Ok(KeyLookup::Shredded)),
            "{context}: shredded key {} is back",
            k.id
        );
    }
}

fn check_only(vfs: &SimVfs, root: &SecretKey) -> Result<LocalKeyStore, KeyError> {
    let vfs: Arc<dyn Vfs> = Arc::new(vfs.clone());
    let provider = EmbeddedRootProvider::check(vfs.clone(), Path::new(PROVIDER), root.clone(), 1_700_000_000)?;
    check_file_store(vfs, Path::new(KEYS), Arc::new(provider), clock())
}

#[derive(Default, Debug)]
struct Counts {
    repaired: u64,
    refused: u64,
    unchanged: u64,
}

/// Flips one bit at `byte` of `path` in a copy of the pristine store and
/// classifies what the check and the open make of it.
fn flip_and_open(w: &World, pristine: &BTreeMap<PathBuf, Vec<u8>>, path: &Path, byte: usize, counts: &mut Counts) {
    let vfs = w.vfs.crash(CrashMode::KeepUnsynced);
    vfs.flip_bit(path, (byte * 8 + byte % 8) as u64).unwrap();
    let damaged = files(&vfs);
    let context = format!("{} byte {byte}", path.display());
    // The read-only check: reports the damage and writes nothing.
    let checked = check_only(&vfs, &w.root);
    assert_eq!(files(&vfs), damaged, "{context}: the check wrote");
    let provider_file = path.starts_with(PROVIDER);
    match &checked {
        Ok(store) => {
            // The provider's findings are on the provider; the store's on it.
            if !provider_file && path.file_name().is_some_and(|n| n != "LOCK") {
                let f = store.findings();
                assert!(
                    f.iter().any(|f| f.path == path && f.action == FindingAction::Repaired),
                    "{context}: the check did not report the damage: {f:?}"
                );
            }
        }
        Err(e) => assert!(
            e.to_string().contains(&*path.to_string_lossy()),
            "{context}: check error does not name the file: {e}"
        ),
    }
    drop(checked);
    match open(&vfs, &w.root) {
        Ok(store) => {
            assert_keys(&store, w, &context);
            drop(store);
            if files(&vfs) == *pristine {
                counts.repaired += 1;
            } else {
                // Only a file the store never reads may stay as it was.
                let after = files(&vfs);
                let differing: Vec<_> =
                    after.iter().filter(|(p, b)| pristine.get(*p) != Some(b)).map(|(p, _)| p).collect();
                assert!(
                    differing.iter().all(|p| p.ends_with("LOCK")),
                    "{context}: the open served but left {differing:?} unlike the pristine store"
                );
                counts.unchanged += 1;
            }
        }
        Err(e) => {
            assert!(
                e.to_string().contains(&*path.to_string_lossy()),
                "{context}: the refusal does not name the file: {e}"
            );
            assert_eq!(files(&vfs), damaged, "{context}: a refused open wrote");
            counts.refused += 1;
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_is_repaired_from_its_twin() {
    let w = world();
    let pristine = files(&w.vfs);
    assert!(pristine.keys().any(|p| p.to_string_lossy().contains("shard-")));
    let mut counts = Counts::default();
    let mut flips = 0;
    for (path, bytes) in &pristine {
        for byte in 0..bytes.len() {
            flip_and_open(&w, &pristine, path, byte, &mut counts);
            flips += 1;
        }
    }
    eprintln!("key store: {flips} flips over {} files: {counts:?}", pristine.len());
    assert_eq!(counts.refused, 0, "with twin records no single flip needs a refusal");
    assert_eq!(counts.repaired + counts.unchanged, flips);
}

#[test]
fn the_last_record_of_a_shard_is_not_taken_for_a_torn_append() {
    let w = world();
    let pristine = files(&w.vfs);
    let (shard, bytes) =
        pristine.iter().filter(|(p, _)| p.to_string_lossy().contains("shard-")).max_by_key(|(_, b)| b.len()).unwrap();
    // Each byte of the last record's first copy, and of its second.
    let mut at = 8;
    let mut last = 8;
    while at < bytes.len() {
        last = at;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 2 * (8 + len);
    }
    for byte in last..bytes.len() {
        let vfs = w.vfs.crash(CrashMode::KeepUnsynced);
        vfs.flip_bit(shard, byte as u64 * 8).unwrap();
        let store = open(&vfs, &w.root).unwrap_or_else(|e| panic!("byte {byte}: {e}"));
        assert_keys(&store, &w, &format!("last record byte {byte}"));
        let f = store.findings();
        assert!(f.iter().any(|f| &f.path == shard && f.action == FindingAction::Repaired), "{f:?}");
        drop(store);
        assert_eq!(files(&vfs), pristine, "byte {byte}: the repair did not restore the shard");
    }
}

#[test]
fn power_cuts_during_a_repair_lose_nothing() {
    let w = world();
    let pristine = files(&w.vfs);
    let (shard, bytes) =
        pristine.iter().filter(|(p, _)| p.to_string_lossy().contains("shard-")).max_by_key(|(_, b)| b.len()).unwrap();
    let kek = pristine.keys().find(|p| p.to_string_lossy().contains("kek-")).unwrap();
    for n in 1.. {
        let vfs = w.vfs.crash(CrashMode::KeepUnsynced);
        vfs.flip_bit(shard, (bytes.len() as u64 - 3) * 8).unwrap();
        vfs.flip_bit(kek, 20 * 8).unwrap();
        vfs.flip_bit(Path::new(&format!("{PROVIDER}/epochs")), 30 * 8).unwrap();
        vfs.cut_power_after(n);
        let finished = open(&vfs, &w.root).is_ok() && !vfs.powered_off();
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepUnsynced, CrashMode::Torn { seed: n }] {
            let rebooted = vfs.crash(mode);
            let store = open(&rebooted, &w.root).unwrap_or_else(|e| panic!("reopen after cut {n} ({mode:?}): {e}"));
            assert_keys(&store, &w, &format!("cut {n} {mode:?}"));
            drop(store);
            assert_eq!(files(&rebooted), pristine, "cut {n} {mode:?}: the second open did not finish the repair");
        }
        if finished {
            assert!(n > 3, "the repair took {n} steps");
            break;
        }
    }
}

/// Rewrites a format 2 file as format 1 would have written it: the v1
/// magic and one copy of each record.
fn to_format_1(path: &Path, bytes: &[u8]) -> Vec<u8> {
    let name = path.file_name().unwrap().to_string_lossy();
    let magic: &[u8; 8] = match &*name {
        "keystore.meta" => b"PYKSMETA",
        "epochs" => b"PYPESRK1",
        "SHREDDED" => b"PYKSTSHR",
        n if n.starts_with("kek-") => b"PYKSTKEK",
        n if n.starts_with("shard-") => b"PYKSSHRD",
        _ => return bytes.to_vec(),
    };
    let mut out = magic.to_vec();
    let mut at = 8;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let mut body = bytes[at + 8..at + 8 + len].to_vec();
        if &*name == "keystore.meta" {
            body = <proto::keystore::StoreMeta as prost::Message>::encode_to_vec(&proto::keystore::StoreMeta {
                format_version: 1,
            });
        }
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        at += 2 * (8 + len);
    }
    out
}

#[test]
fn a_format_1_store_is_migrated_with_every_key() {
    let w = world();
    let pristine = files(&w.vfs);
    let vfs = w.vfs.crash(CrashMode::KeepUnsynced);
    for (path, bytes) in &pristine {
        let old = to_format_1(path, bytes);
        let f = vfs.open(path, false).unwrap();
        f.set_len(0).unwrap();
        f.write_at(0, &old).unwrap();
        f.sync_data().unwrap();
    }
    let store = open(&vfs, &w.root).unwrap();
    assert_keys(&store, &w, "migrated");
    assert!(store.findings().iter().any(|f| f.action == FindingAction::Migrated));
    drop(store);
    assert_eq!(files(&vfs), pristine, "the migration writes exactly the format 2 files");
}
