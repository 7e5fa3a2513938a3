//! The file key store beyond the conformance suite: what survives a reopen,
//! how bad input and damage are refused, that a shred leaves no residue in
//! any file, and that a backup of the key store is useless for shredded
//! data once the epoch has rotated.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{KEYS, PROVIDER, files_containing, open, wrapped_bytes_of};
use eventlog::SystemClock;
use eventlog::file::sim::SimVfs;
use eventlog::file::vfs::{OsVfs, Vfs};
use keystore::crypto::SecretKey;
use keystore::embedded::{OpenMode, RootKeyOrigin, open_embedded};
use keystore::file::open_file_store;
use keystore::{
    Aad, EmbeddedRootProvider, Group, KeyError, KeyLookup, KeyPolicy, KeyPurpose, KeyStore, Keyring, Opened,
    RootKeyProvider, ShredTarget,
};
use uuid::Uuid;

fn subject(s: Uuid, group: Group) -> KeyPurpose {
    KeyPurpose::Subject { subject: s, group }
}

fn material(store: &dyn KeyStore, tenant: Uuid, id: keystore::KeyId) -> Option<SecretKey> {
    match store.key(tenant, id).unwrap() {
        KeyLookup::Live(k) => Some(k.material),
        KeyLookup::Shredded => None,
    }
}

#[test]
fn everything_survives_a_reopen() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let (t, gone_tenant, s) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (profile, geo, session, retired, gone) = {
        let store = open(&vfs, &root).unwrap();
        let profile = store.active_key(t, &subject(s, Group::Profile)).unwrap();
        let geo = store.active_key(t, &subject(s, Group::Geo)).unwrap();
        let session = store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
        store.reserve_uses(t, session.id, keystore::INITIAL_RESERVATION + 4096).unwrap();
        let retired = store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
        store.retire(t, retired.id).unwrap();
        store.shred(t, &ShredTarget::Subject { subject: s, group: Some(Group::Geo) }).unwrap();
        let gone = store.active_key(gone_tenant, &subject(s, Group::Profile)).unwrap();
        store.shred(gone_tenant, &ShredTarget::Tenant).unwrap();
        (profile, geo, session, retired, gone)
    };
    let store = open(&vfs, &root).unwrap();
    assert_eq!(material(&store, t, profile.id), Some(profile.material.clone()));
    assert_eq!(store.active_key(t, &subject(s, Group::Profile)).unwrap().id, profile.id);
    assert_eq!(material(&store, t, geo.id), None);
    let again = store.active_key(t, &KeyPurpose::SessionContent { session: session.purpose.anchor() }).unwrap();
    assert_eq!((again.id, again.uses_reserved), (session.id, keystore::INITIAL_RESERVATION + 4096));
    let KeyLookup::Live(r) = store.key(t, retired.id).unwrap() else { panic!("retired key lost") };
    assert!(r.retired);
    assert_ne!(store.active_key(t, &retired.purpose).unwrap().id, retired.id);
    assert_eq!(material(&store, gone_tenant, gone.id), None);
    assert!(matches!(store.active_key(gone_tenant, &subject(s, Group::Device)), Err(KeyError::TenantShredded { .. })));
    let status = store.status().unwrap();
    assert_eq!((status.tenants, status.shredded_tenants, status.retired_keys, status.shredded_keys), (1, 1, 1, 1));
}

#[test]
fn a_wrong_root_key_stops_the_start() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    open(&vfs, &root).unwrap().active_key(Uuid::now_v7(), &subject(Uuid::now_v7(), Group::Geo)).unwrap();
    let err = open(&vfs, &SecretKey::random().unwrap()).unwrap_err();
    assert!(matches!(&err, KeyError::RootKeyMismatch { path } if path.ends_with("provider/epochs")), "{err}");
    assert!(err.to_string().contains("refusing to start"), "{err}");
    // The provider state is untouched: the right root still opens it.
    open(&vfs, &root).unwrap();
}

#[test]
fn a_key_store_of_another_provider_is_refused() {
    let vfs = SimVfs::new();
    open(&vfs, &SecretKey::random().unwrap())
        .unwrap()
        .active_key(Uuid::now_v7(), &subject(Uuid::now_v7(), Group::Geo))
        .unwrap();
    // Same key store, a different provider (another root and epochs).
    let other: Arc<dyn Vfs> = Arc::new(vfs.clone());
    let provider =
        EmbeddedRootProvider::open(other.clone(), Path::new("/other/provider"), SecretKey::random().unwrap(), true, 1)
            .unwrap();
    let err = open_file_store(other, Path::new(KEYS), Arc::new(provider), common::clock()).unwrap_err();
    assert!(matches!(err, KeyError::RootKeyMismatch { .. }), "{err}");
}

#[test]
fn damage_to_both_copies_is_refused_by_name() {
    let root = SecretKey::random().unwrap();
    let setup = || {
        let vfs = SimVfs::new();
        let store = open(&vfs, &root).unwrap();
        let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
        for g in Group::ALL {
            store.active_key(t, &subject(s, g)).unwrap();
        }
        drop(store);
        let shard = vfs.all_file_bytes().into_iter().find(|(p, _)| p.to_string_lossy().contains("shard-")).unwrap();
        let kek = vfs.all_file_bytes().into_iter().find(|(p, _)| p.to_string_lossy().contains("kek-")).unwrap();
        (vfs, shard, kek)
    };
    // The same byte of both copies of a record (the copies of a record are
    // back to back: the twin starts one frame length later).
    let flip_both = |vfs: &SimVfs, path: &Path, bytes: &[u8], record_at: usize, within: usize| {
        let len = u32::from_le_bytes(bytes[record_at..record_at + 4].try_into().unwrap()) as usize;
        vfs.flip_bit(path, 8 * (record_at + within) as u64).unwrap();
        vfs.flip_bit(path, 8 * (record_at + 8 + len + within) as u64).unwrap();
    };
    // The first data-key record (after the magic and the header's twin):
    // later records are whole, so this is damage, not a torn append.
    let (vfs, (shard, bytes), _) = setup();
    let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    flip_both(&vfs, &shard, &bytes, 8 + 2 * (8 + header_len), 20);
    let before = vfs.all_file_bytes();
    let err = open(&vfs, &root).unwrap_err();
    assert!(matches!(&err, KeyError::Corrupt { path, .. } if *path == shard), "{err}");
    assert!(err.to_string().contains("both copies"), "{err}");
    assert_eq!(vfs.all_file_bytes(), before, "a refused open wrote");
    // The shard header.
    let (vfs, (shard, bytes), _) = setup();
    flip_both(&vfs, &shard, &bytes, 8, 9);
    assert!(matches!(open(&vfs, &root), Err(KeyError::Corrupt { path, .. }) if path == shard));
    // A tenant KEK file.
    let (vfs, _, (kek, bytes)) = setup();
    flip_both(&vfs, &kek, &bytes, 8, 30);
    assert!(matches!(open(&vfs, &root), Err(KeyError::Corrupt { path, .. }) if path == kek));
    // The provider's state and the key store's identity file.
    for file in [format!("{PROVIDER}/epochs"), format!("{KEYS}/keystore.meta")] {
        let (vfs, _, _) = setup();
        let bytes = vfs.all_file_bytes().into_iter().find(|(p, _)| p == Path::new(&file)).unwrap().1;
        flip_both(&vfs, Path::new(&file), &bytes, 8, 9);
        let err = open(&vfs, &root).unwrap_err();
        assert!(matches!(&err, KeyError::Corrupt { path, .. } if path == Path::new(&file)), "{file}: {err}");
    }
    // An unexpected file in a tenant directory.
    let (vfs, (shard, _), _) = setup();
    vfs.open(&shard.with_file_name("notes.txt"), true).unwrap().write_at(0, b"hello").unwrap();
    assert!(matches!(open(&vfs, &root), Err(KeyError::Corrupt { .. })));
}

#[test]
fn a_torn_last_append_is_cut_off_and_the_store_goes_on() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let first = open(&vfs, &root).unwrap().active_key(t, &subject(s, Group::Profile)).unwrap();
    let shard = vfs.all_file_bytes().into_iter().find(|(p, _)| p.to_string_lossy().contains("shard-")).unwrap();
    // Half a record at the end, as a power cut during an append leaves it.
    let file = vfs.open(&shard.0, false).unwrap();
    file.write_at(shard.1.len() as u64, &[90, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap();
    file.sync_data().unwrap();
    let store = open(&vfs, &root).unwrap();
    assert_eq!(material(&store, t, first.id), Some(first.material));
    let second = store.active_key(t, &subject(s, Group::Device)).unwrap();
    drop(store);
    let store = open(&vfs, &root).unwrap();
    assert_eq!(material(&store, t, second.id), Some(second.material));
}

#[test]
fn a_full_disk_refuses_key_writes_by_name_and_they_resume_by_themselves_when_space_returns() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let t = Uuid::now_v7();
    let store = open(&vfs, &root).unwrap();
    let session = || KeyPurpose::SessionContent { session: Uuid::now_v7() };
    let mut made: Vec<_> = (0..20).map(|_| store.active_key(t, &session()).unwrap()).collect();
    // Room for a part of one more record: the next append is torn by ENOSPC.
    let used: u64 = vfs.all_file_bytes().iter().map(|(_, b)| b.len() as u64).sum();
    vfs.set_space_limit(Some(used + 150));
    let full = loop {
        match store.active_key(t, &session()) {
            Ok(k) => made.push(k),
            Err(e) => break e,
        }
        assert!(made.len() < 100, "the limited disk never filled");
    };
    assert!(full.is_storage_full(), "{full}");
    // Until space returns, writes are refused as a full disk (the first
    // retry reads the store back at once, the next ones wait a second).
    for _ in 0..3 {
        let again = store.active_key(t, &session()).unwrap_err();
        assert!(again.is_storage_full(), "{again}");
    }
    let refused = store.active_key(t, &session()).unwrap_err();
    assert!(refused.to_string().contains("refuses writes after a failed write"), "{refused}");
    assert!(store.write_trouble().is_some());
    // What was made before still opens.
    for k in &made {
        assert_eq!(material(&store, t, k.id), Some(k.material.clone()));
    }
    // Space returns: the next write (a second later at most) reads the
    // files back, cuts the torn append off, and goes on.
    vfs.set_space_limit(None);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    made.push(store.active_key(t, &session()).unwrap());
    assert_eq!(store.write_trouble(), None);
    made.push(store.active_key(t, &session()).unwrap());
    drop(store);
    // A reopen finds nothing left to repair, and every key made is there.
    let store = open(&vfs, &root).unwrap();
    assert_eq!(store.findings(), Vec::new(), "the recovery left nothing for the next open");
    for k in &made {
        assert_eq!(material(&store, t, k.id), Some(k.material.clone()));
    }
}

#[test]
fn the_key_store_wants_a_directory_of_its_own() {
    let vfs = SimVfs::new();
    vfs.create_dir_all(Path::new(KEYS)).unwrap();
    vfs.open(&Path::new(KEYS).join("00000000000000000000.seg"), true).unwrap();
    let err = open(&vfs, &SecretKey::random().unwrap()).unwrap_err();
    assert!(matches!(err, KeyError::NotAKeyStore { .. }), "{err}");
    assert!(err.to_string().contains("never the event log's"), "{err}");
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_store() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let first = open(&vfs, &root).unwrap();
    assert!(matches!(open(&vfs, &root), Err(KeyError::Locked { .. })));
    drop(first);
    open(&vfs, &root).unwrap();
}

#[test]
fn after_a_shred_no_file_holds_the_key_in_any_form() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let store = open(&vfs, &root).unwrap();
    let (t, s, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let keys: Vec<_> = Group::ALL.iter().map(|g| store.active_key(t, &subject(s, *g)).unwrap()).collect();
    let kept = store.active_key(t, &subject(other, Group::Profile)).unwrap();
    for k in &keys {
        store.reserve_uses(t, k.id, 1 << 16).unwrap();
    }
    let mut wrapped: Vec<Vec<u8>> = keys.iter().flat_map(|k| wrapped_bytes_of(&vfs, k.id.as_bytes())).collect();
    wrapped.sort();
    wrapped.dedup();
    assert_eq!(wrapped.len(), 6, "the scan finds the wrapped keys (each in two copies) before the shred");
    for w in &wrapped {
        assert!(!files_containing(&vfs, w).is_empty());
    }
    assert!(!files_containing(&vfs, s.as_bytes()).is_empty());
    store.shred(t, &ShredTarget::Subject { subject: s, group: None }).unwrap();
    for w in &wrapped {
        assert_eq!(files_containing(&vfs, w), Vec::<std::path::PathBuf>::new(), "wrapped bytes left behind");
    }
    for k in &keys {
        assert!(files_containing(&vfs, k.material.expose()).is_empty(), "plaintext key material in a file");
    }
    assert!(files_containing(&vfs, s.as_bytes()).is_empty(), "the subject's id is still in a file");
    assert_eq!(material(&store, t, kept.id), Some(kept.material.clone()));
    // A whole tenant: its KEK and every key go.
    let tenant_wrapped = wrapped_bytes_of(&vfs, kept.id.as_bytes());
    let kek_file = vfs.all_file_bytes().into_iter().find(|(p, _)| p.to_string_lossy().contains("kek-")).unwrap();
    let kek_body = kek_file.1[16..].to_vec();
    store.shred(t, &ShredTarget::Tenant).unwrap();
    for w in tenant_wrapped.iter().chain([&kek_body]) {
        assert!(files_containing(&vfs, w).is_empty());
    }
    assert!(files_containing(&vfs, kept.material.expose()).is_empty());
    drop(store);
    // And the crashed-and-rebooted filesystem agrees (nothing lives only in cache).
    let rebooted = vfs.crash(eventlog::file::sim::CrashMode::DropUnsynced);
    for w in wrapped.iter().chain(&tenant_wrapped) {
        assert!(files_containing(&rebooted, w).is_empty());
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_backup_cannot_bring_back_a_shredded_subject_after_rotation() {
    let data = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let keys = open_embedded(data.path(), None, Arc::new(SystemClock), OpenMode::CreateIfEmpty).unwrap();
    let ring = Keyring::new(keys.store.clone(), KeyPolicy::default()).unwrap();
    let (t, erased, kept) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let aad = Aad { tenant: t, stream: "subject", event_id: Uuid::now_v7() };
    let sealed_erased =
        ring.seal_blocking("email", b"erase-me@example.com", &subject(erased, Group::Profile), &aad).unwrap();
    let sealed_kept =
        ring.seal_blocking("email", b"keep-me@example.com", &subject(kept, Group::Profile), &aad).unwrap();
    // The backup: a copy of the key-store directory.
    copy_dir(&data.path().join("keys"), backup.path());
    let os: Arc<dyn Vfs> = Arc::new(OsVfs);
    let provider: Arc<dyn RootKeyProvider> = keys.provider.clone();
    let from_backup = |provider: &Arc<dyn RootKeyProvider>| {
        open_file_store(os.clone(), backup.path(), provider.clone(), Arc::new(SystemClock))
            .and_then(|s| Keyring::new(Arc::new(s), KeyPolicy::default()))
    };
    ring.shred_blocking(t, &ShredTarget::Subject { subject: erased, group: None }).unwrap();
    assert_eq!(ring.open_blocking("email", &sealed_erased, &aad).unwrap(), Opened::Erased);
    // Before the rotation the backup still holds the key: this is the
    // window that epochs bound.
    let restored = from_backup(&provider).unwrap();
    assert!(matches!(restored.open_blocking("email", &sealed_erased, &aad).unwrap(), Opened::Plaintext(_)));
    drop(restored);
    let report = keys.store.rotate_epoch().unwrap();
    assert_eq!(report.destroyed_epochs, vec![1]);
    // After it, the backup with the live provider opens nothing.
    let err = from_backup(&provider).unwrap_err();
    assert!(matches!(err, KeyError::EpochUnavailable { epoch: 1, .. }), "{err}");
    // Not even by hand: the backup's tenant KEK does not unwrap under any live epoch.
    let kek_path = backup.path().join("tenants").join(t.to_string()).join("kek-00000001");
    let kek_file = std::fs::read(&kek_path).unwrap();
    let len = u32::from_le_bytes(kek_file[8..12].try_into().unwrap()) as usize;
    let msg = <proto::keystore::TenantKek as prost::Message>::decode(&kek_file[16..16 + len]).unwrap();
    let wrapped = keystore::crypto::WrappedKey::from_parts(&msg.nonce, &msg.wrapped).unwrap();
    for epoch in 0..=report.epoch + 1 {
        let aad = keystore::crypto::associated_data("pypes/tenant-kek/v1", &[t.as_bytes(), &epoch.to_le_bytes()]);
        assert!(provider.unwrap(epoch, &aad, &wrapped).is_err(), "epoch {epoch}");
    }
    // The live store: the erased subject stays erased, everyone else opens.
    let fresh = Keyring::new(keys.store.clone(), KeyPolicy::default()).unwrap();
    assert_eq!(fresh.open_blocking("email", &sealed_erased, &aad).unwrap(), Opened::Erased);
    assert_eq!(
        fresh.open_blocking("email", &sealed_kept, &aad).unwrap(),
        Opened::Plaintext(b"keep-me@example.com".to_vec().into())
    );
}

#[test]
fn embedded_start_makes_a_root_once_and_never_over_existing_data() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let clock = Arc::new(SystemClock);
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let err = open_embedded(data.path(), None, clock.clone(), OpenMode::MustExist).unwrap_err();
    assert!(matches!(err, KeyError::NotAKeyStore { .. }), "{err}");
    assert!(!data.path().join("root.key").exists(), "looking made a root key");
    let key = {
        let first = open_embedded(data.path(), None, clock.clone(), OpenMode::CreateIfEmpty).unwrap();
        assert_eq!(first.origin, RootKeyOrigin::Created(data.path().join("root.key")));
        first.store.active_key(t, &subject(s, Group::Profile)).unwrap()
    };
    let root_file = data.path().join("root.key");
    assert_eq!(std::fs::metadata(&root_file).unwrap().permissions().mode() & 0o777, 0o600);
    let root_text = std::fs::read_to_string(&root_file).unwrap();
    {
        let second = open_embedded(data.path(), None, clock.clone(), OpenMode::CreateIfEmpty).unwrap();
        assert_eq!(second.origin, RootKeyOrigin::File(root_file.clone()));
        assert_eq!(material(second.store.as_ref(), t, key.id), Some(key.material.clone()));
    }
    std::fs::remove_file(&root_file).unwrap();
    let err = open_embedded(data.path(), None, clock.clone(), OpenMode::CreateIfEmpty).unwrap_err();
    assert!(matches!(err, KeyError::RootKeyMissing { .. }), "{err}");
    assert!(!root_file.exists(), "no new root was made");
    let wrong = hex::encode([7u8; 32]);
    assert!(matches!(
        open_embedded(data.path(), Some(&wrong), clock.clone(), OpenMode::CreateIfEmpty),
        Err(KeyError::RootKeyMismatch { .. })
    ));
    let err = open_embedded(data.path(), Some("not-a-key"), clock.clone(), OpenMode::CreateIfEmpty).unwrap_err();
    assert!(err.to_string().contains("PYPES_ROOT_KEY"), "{err}");
    let from_env = open_embedded(data.path(), Some(root_text.trim()), clock, OpenMode::CreateIfEmpty).unwrap();
    assert_eq!(from_env.origin, RootKeyOrigin::Environment);
    assert_eq!(material(from_env.store.as_ref(), t, key.id), Some(key.material));
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_keyring_keeps_store_work_off_the_runtime() {
    let vfs = SimVfs::new();
    let store = Arc::new(open(&vfs, &SecretKey::random().unwrap()).unwrap());
    let ring = Keyring::new(store, KeyPolicy { reserve_block: 3, ..KeyPolicy::default() }).unwrap();
    let (t, session) = (Uuid::now_v7(), Uuid::now_v7());
    let purpose = KeyPurpose::SessionContent { session };
    let aad = Aad { tenant: t, stream: "session", event_id: Uuid::now_v7() };
    let mut sealed = Vec::new();
    for i in 0..10u8 {
        sealed.push(ring.seal("body", &[i; 40], &purpose, &aad).await.unwrap());
    }
    let cold = Keyring::new(ring.store().clone(), KeyPolicy::default()).unwrap();
    for (i, s) in sealed.iter().enumerate() {
        assert_eq!(cold.open("body", s, &aad).await.unwrap(), Opened::Plaintext(vec![i as u8; 40].into()));
    }
    ring.shred(t, ShredTarget::Session { session }).await.unwrap();
    assert_eq!(ring.open("body", &sealed[0], &aad).await.unwrap(), Opened::Erased);
    let report = ring.rotate_epoch().await.unwrap();
    assert_eq!(report.destroyed_epochs, vec![1]);
}

#[tokio::test(start_paused = true)]
async fn the_schedule_rotates_once_the_period_has_passed() {
    let vfs = SimVfs::new();
    let clock = eventlog::ManualClock::new(1_700_000_000_000_000);
    let store: Arc<dyn KeyStore> =
        Arc::new(common::open_with_clock(&vfs, &SecretKey::random().unwrap(), Arc::new(clock.clone())).unwrap());
    store.active_key(Uuid::now_v7(), &subject(Uuid::now_v7(), Group::Geo)).unwrap();
    let ring = Keyring::new(store.clone(), KeyPolicy::default()).unwrap();
    let task = tokio::spawn(keystore::rotation_schedule(
        ring,
        keystore::DEFAULT_ROTATION_PERIOD_SECS,
        Arc::new(clock.clone()),
        std::time::Duration::from_secs(3600),
    ));
    let epoch = || store.status().unwrap().epochs.iter().map(|e| e.epoch).collect::<Vec<_>>();
    clock.advance_secs(6 * 24 * 3600);
    tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
    assert_eq!(epoch(), vec![1], "not due after 6 days");
    clock.advance_secs(24 * 3600);
    tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
    assert_eq!(epoch(), vec![2], "due after 7 days");
    tokio::time::sleep(std::time::Duration::from_secs(7200)).await;
    assert_eq!(epoch(), vec![2], "the new epoch's clock starts at its rotation");
    task.abort();
    assert!(keystore::validate_rotation_period(29 * 24 * 3600).is_err());
    assert!(keystore::validate_rotation_period(60).is_err());
    assert_eq!(keystore::validate_rotation_period(7 * 24 * 3600).unwrap(), 604_800);
}

#[test]
fn after_a_restart_counting_resumes_at_the_reserved_mark() {
    let vfs = SimVfs::new();
    let root = SecretKey::random().unwrap();
    let policy = KeyPolicy { retire_after_uses: 1 << 20, reserve_block: 16, cache_capacity: 100 };
    let (t, session) = (Uuid::now_v7(), Uuid::now_v7());
    let purpose = KeyPurpose::SessionContent { session };
    let aad = Aad { tenant: t, stream: "s", event_id: Uuid::now_v7() };
    let first = {
        let store: Arc<dyn KeyStore> = Arc::new(open(&vfs, &root).unwrap());
        let ring = Keyring::new(store.clone(), policy).unwrap();
        let sealed = ring.seal_blocking("body", b"x", &purpose, &aad).unwrap();
        let id = keystore::KeyId::from_slice(&sealed.key_id).unwrap();
        // A new key comes with its first block reserved: no second fsync.
        let KeyLookup::Live(k) = store.key(t, id).unwrap() else { panic!() };
        assert_eq!(k.uses_reserved, keystore::INITIAL_RESERVATION);
        id
    };
    let store: Arc<dyn KeyStore> = Arc::new(open(&vfs, &root).unwrap());
    let ring = Keyring::new(store.clone(), policy).unwrap();
    let sealed = ring.seal_blocking("body", b"y", &purpose, &aad).unwrap();
    assert_eq!(keystore::KeyId::from_slice(&sealed.key_id).unwrap(), first);
    // The restarted keyring cannot know how much of the block was used, so it
    // counts from its end and reserves past it before sealing.
    let KeyLookup::Live(k) = store.key(t, first).unwrap() else { panic!() };
    let past = k.uses_reserved - keystore::INITIAL_RESERVATION;
    assert!((16..=17).contains(&past), "reserved {past} past the mark");
}
