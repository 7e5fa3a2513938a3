//! Power cuts at every write and sync point of a shred, a tenant shred, a
//! rotation and a key creation (through the simulated filesystem): after a
//! reboot each key is either fully there or fully gone, an acknowledged
//! change is never lost, an acknowledged shred leaves no residue, and an
//! interrupted rotation either completed or resumes.

mod common;

use common::{files_containing, open, wrapped_bytes_of};
use eventlog::file::sim::{CrashMode, SimVfs};
use keystore::crypto::SecretKey;
use keystore::{DataKey, Group, KeyLookup, KeyPurpose, KeyStore, LocalKeyStore, ShredTarget};
use uuid::Uuid;

const MODES: [CrashMode; 4] =
    [CrashMode::DropUnsynced, CrashMode::KeepUnsynced, CrashMode::Torn { seed: 7 }, CrashMode::Torn { seed: 99 }];

struct World {
    vfs: SimVfs,
    root: SecretKey,
    tenant: Uuid,
    other_tenant: Uuid,
    subject: Uuid,
    subject_keys: Vec<DataKey>,
    others: Vec<DataKey>,
}

/// A key store with two tenants, a subject with all three groups, Sessions
/// and one already-shredded key.
fn world() -> World {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let store = open(&vfs, &root).unwrap();
    let (tenant, other_tenant, subject) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let subject_keys = Group::ALL
        .iter()
        .map(|g| store.active_key(tenant, &KeyPurpose::Subject { subject, group: *g }).unwrap())
        .collect();
    let mut others = Vec::new();
    for t in [tenant, other_tenant] {
        for _ in 0..4 {
            others.push(store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap());
        }
    }
    let doomed = store.active_key(tenant, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    store.shred(tenant, &ShredTarget::Key(doomed.id)).unwrap();
    drop(store);
    World { vfs, root, tenant, other_tenant, subject, subject_keys, others }
}

/// The key's state after a reboot: `Some(true)` live with its material,
/// `Some(false)` shredded; a live key with other material fails the test.
fn state(store: &LocalKeyStore, key: &DataKey) -> bool {
    match store.key(key.tenant, key.id).unwrap() {
        KeyLookup::Live(k) => {
            assert_eq!(k.material, key.material, "key {} came back with other material", key.id);
            true
        }
        KeyLookup::Shredded => false,
    }
}

/// Runs `op` with power cut at its n-th mutating step, for every n until
/// it completes, and checks the rebooted store each time with `check`
/// (given whether `op` returned Ok).
fn at_every_cut(
    mut op: impl FnMut(&LocalKeyStore, &World) -> bool,
    mut check: impl FnMut(&LocalKeyStore, &World, &SimVfs, bool),
) -> u64 {
    for n in 1.. {
        let w = world();
        let store = open(&w.vfs, &w.root).unwrap();
        w.vfs.cut_power_after(n);
        let acked = op(&store, &w);
        let finished = !w.vfs.powered_off();
        drop(store);
        for mode in MODES {
            let rebooted = w.vfs.crash(mode);
            let store = open(&rebooted, &w.root).unwrap_or_else(|e| panic!("reopen after cut {n} ({mode:?}): {e}"));
            check(&store, &w, &rebooted, acked);
        }
        if finished {
            eprintln!("completed after {n} cut points");
            return n;
        }
    }
    unreachable!()
}

#[test]
fn shredding_one_group_is_all_or_nothing_at_every_cut() {
    let cuts = at_every_cut(
        |store, w| store.shred(w.tenant, &ShredTarget::Subject { subject: w.subject, group: Some(Group::Geo) }).is_ok(),
        |store, w, rebooted, acked| {
            let geo = &w.subject_keys[2];
            let live = state(store, geo);
            assert!(!(acked && live), "an acknowledged shred came back");
            if !live {
                for bytes in wrapped_bytes_of(&w.vfs, geo.id.as_bytes()) {
                    assert!(files_containing(rebooted, &bytes).is_empty(), "residue of a shredded key");
                }
            }
            for k in w.subject_keys[..2].iter().chain(&w.others) {
                assert!(state(store, k), "a key that was not shredded is gone");
            }
        },
    );
    assert!(cuts > 3, "the shred took {cuts} steps");
}

#[test]
fn shredding_a_tenant_is_all_or_nothing_at_every_cut() {
    at_every_cut(
        |store, w| store.shred(w.tenant, &ShredTarget::Tenant).is_ok(),
        |store, w, rebooted, acked| {
            let gone: Vec<bool> = w
                .subject_keys
                .iter()
                .chain(w.others.iter().filter(|k| k.tenant == w.tenant))
                .map(|k| !state(store, k))
                .collect();
            assert!(gone.iter().all(|g| *g) || gone.iter().all(|g| !*g), "a tenant half shredded: {gone:?}");
            if acked {
                assert!(gone[0], "an acknowledged tenant shred came back");
            }
            if gone[0] {
                let tenant_dir = format!("{}/tenants/{}", common::KEYS, w.tenant);
                let left: Vec<_> = rebooted
                    .all_file_bytes()
                    .into_iter()
                    .filter(|(p, _)| p.starts_with(&tenant_dir) && !p.ends_with("SHREDDED"))
                    .map(|(p, _)| p)
                    .collect();
                assert!(left.is_empty(), "files of a shredded tenant: {left:?}");
            }
            for k in w.others.iter().filter(|k| k.tenant == w.other_tenant) {
                assert!(state(store, k));
            }
        },
    );
}

#[test]
fn a_rotation_cut_anywhere_completes_or_resumes() {
    at_every_cut(
        |store, _| store.rotate_epoch().is_ok(),
        |store, w, rebooted, acked| {
            for k in w.subject_keys.iter().chain(&w.others) {
                assert!(state(store, k), "rotation lost key {}", k.id);
            }
            let epochs = store.status().unwrap().epochs;
            if acked {
                assert_eq!(epochs.len(), 1, "an acknowledged rotation left {epochs:?}");
                assert!(epochs[0].epoch > 1);
            }
            // Whatever state the cut left, a rotation finishes it.
            let report = store.rotate_epoch().unwrap();
            assert_eq!(store.status().unwrap().epochs.len(), 1);
            assert!(report.destroyed_epochs.contains(&1) || acked);
            for k in w.subject_keys.iter().chain(&w.others) {
                assert!(state(store, k));
            }
            let old_keks: Vec<_> = rebooted
                .all_file_bytes()
                .into_iter()
                .filter(|(p, _)| p.to_string_lossy().contains("kek-00000001"))
                .map(|(p, _)| p)
                .collect();
            assert!(old_keks.is_empty(), "KEKs of the destroyed epoch left: {old_keks:?}");
        },
    );
}

#[test]
fn a_key_acknowledged_before_a_cut_is_never_lost() {
    let made: std::cell::RefCell<Vec<(Uuid, KeyPurpose)>> = Default::default();
    at_every_cut(
        |store, w| {
            made.borrow_mut().clear();
            for i in 0..6 {
                let purpose = if i % 2 == 0 {
                    KeyPurpose::SessionContent { session: Uuid::now_v7() }
                } else {
                    KeyPurpose::Subject { subject: Uuid::now_v7(), group: Group::Device }
                };
                let tenant = if i < 3 { w.tenant } else { Uuid::now_v7() };
                if store.active_key(tenant, &purpose).is_err() {
                    return false;
                }
                made.borrow_mut().push((tenant, purpose));
            }
            true
        },
        |store, w, _, _| {
            for k in w.subject_keys.iter().chain(&w.others) {
                assert!(state(store, k));
            }
            for (tenant, purpose) in made.borrow().iter() {
                // The acknowledged key is still the active one for its purpose.
                let again = store.active_key(*tenant, purpose).unwrap();
                assert!(matches!(store.key(*tenant, again.id), Ok(KeyLookup::Live(_))));
            }
        },
    );
}
