//! The conformance suite every `KeyStore` backend runs: one function per
//! contract point, each given a factory of fresh, empty stores. Backends
//! call [`keystore_conformance_tests!`] from a test file.

use std::sync::Arc;

use uuid::Uuid;

use crate::{Aad, Group, KeyError, KeyLookup, KeyPolicy, KeyPurpose, KeyStore, Keyring, Opened, ShredTarget};

pub type Factory<'a> = &'a dyn Fn() -> Arc<dyn KeyStore>;

fn subject(s: Uuid, group: Group) -> KeyPurpose {
    KeyPurpose::Subject { subject: s, group }
}

fn live(store: &dyn KeyStore, tenant: Uuid, id: crate::KeyId) -> crate::DataKey {
    match store.key(tenant, id) {
        Ok(KeyLookup::Live(k)) => k,
        other => panic!("expected key {id} live, got {other:?}"),
    }
}

fn is_shredded(store: &dyn KeyStore, tenant: Uuid, id: crate::KeyId) -> bool {
    matches!(store.key(tenant, id), Ok(KeyLookup::Shredded))
}

pub fn active_key_is_stable_per_purpose(new: Factory<'_>) {
    let store = new();
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let a = store.active_key(t, &subject(s, Group::Profile)).unwrap();
    let b = store.active_key(t, &subject(s, Group::Profile)).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(a.material, b.material);
    let geo = store.active_key(t, &subject(s, Group::Geo)).unwrap();
    assert_ne!(geo.id, a.id);
    assert_ne!(geo.material, a.material);
    let other = store.active_key(t, &subject(Uuid::now_v7(), Group::Profile)).unwrap();
    assert_ne!(other.id, a.id);
    let session = store.active_key(t, &KeyPurpose::SessionContent { session: s }).unwrap();
    assert_ne!(session.id, a.id, "a Session and a subject with the same id get different keys");
    // Key ids are random v4 UUIDs: nothing (not even a time) derives from a person.
    assert_eq!(a.id.0.get_version_num(), 4);
    assert_eq!(a.purpose, subject(s, Group::Profile));
    assert_eq!(a.tenant, t);
}

pub fn lookup_by_id_checks_tenant(new: Factory<'_>) {
    let store = new();
    let (t, other_tenant) = (Uuid::now_v7(), Uuid::now_v7());
    let k = store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    assert_eq!(live(store.as_ref(), t, k.id).material, k.material);
    store.active_key(other_tenant, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    assert!(matches!(store.key(other_tenant, k.id), Err(KeyError::WrongTenant { .. })));
    let never = crate::KeyId::random();
    assert!(matches!(store.key(t, never), Err(KeyError::UnknownKey { .. })));
    assert!(matches!(store.key(Uuid::now_v7(), never), Err(KeyError::UnknownKey { .. })));
}

pub fn shred_subject_all_groups(new: Factory<'_>) {
    let store = new();
    let (t, s, bystander) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let ids: Vec<_> = Group::ALL.iter().map(|g| store.active_key(t, &subject(s, *g)).unwrap().id).collect();
    let kept = store.active_key(t, &subject(bystander, Group::Profile)).unwrap();
    let mut expected = ids.clone();
    expected.sort();
    // `keys_of` names exactly what the shred then destroys.
    assert_eq!(store.keys_of(t, &ShredTarget::Subject { subject: s, group: None }).unwrap(), expected);
    let report = store.shred(t, &ShredTarget::Subject { subject: s, group: None }).unwrap();
    assert_eq!(report.keys, expected);
    assert!(store.keys_of(t, &ShredTarget::Subject { subject: s, group: None }).unwrap().is_empty());
    for id in &ids {
        assert!(is_shredded(store.as_ref(), t, *id));
    }
    assert_eq!(live(store.as_ref(), t, kept.id).material, kept.material);
    // Idempotent: nothing left to shred.
    assert!(store.shred(t, &ShredTarget::Subject { subject: s, group: None }).unwrap().keys.is_empty());
    // A later key for the same purpose is a new key.
    let again = store.active_key(t, &subject(s, Group::Profile)).unwrap();
    assert!(!ids.contains(&again.id));
}

pub fn shred_one_group(new: Factory<'_>) {
    let store = new();
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let profile = store.active_key(t, &subject(s, Group::Profile)).unwrap();
    let geo = store.active_key(t, &subject(s, Group::Geo)).unwrap();
    let report = store.shred(t, &ShredTarget::Subject { subject: s, group: Some(Group::Geo) }).unwrap();
    assert_eq!(report.keys, vec![geo.id]);
    assert!(is_shredded(store.as_ref(), t, geo.id));
    assert_eq!(live(store.as_ref(), t, profile.id).material, profile.material);
}

pub fn shred_session_takes_its_media(new: Factory<'_>) {
    let store = new();
    let (t, session, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let content = store.active_key(t, &KeyPurpose::SessionContent { session }).unwrap();
    let m1 = store.active_key(t, &KeyPurpose::Media { session, media: Uuid::now_v7() }).unwrap();
    let m2_id = Uuid::now_v7();
    let m2 = store.active_key(t, &KeyPurpose::Media { session, media: m2_id }).unwrap();
    let other_content = store.active_key(t, &KeyPurpose::SessionContent { session: other }).unwrap();
    // One media key alone.
    assert_eq!(store.shred(t, &ShredTarget::Media { session, media: m2_id }).unwrap().keys, vec![m2.id]);
    assert!(is_shredded(store.as_ref(), t, m2.id));
    assert_eq!(live(store.as_ref(), t, m1.id).material, m1.material);
    // The Session: content and remaining media.
    let mut expected = vec![content.id, m1.id];
    expected.sort();
    assert_eq!(store.shred(t, &ShredTarget::Session { session }).unwrap().keys, expected);
    assert!(is_shredded(store.as_ref(), t, content.id) && is_shredded(store.as_ref(), t, m1.id));
    assert_eq!(live(store.as_ref(), t, other_content.id).material, other_content.material);
}

pub fn shred_key_by_id(new: Factory<'_>) {
    let store = new();
    let t = Uuid::now_v7();
    let k = store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    assert_eq!(store.shred(t, &ShredTarget::Key(k.id)).unwrap().keys, vec![k.id]);
    assert!(store.shred(t, &ShredTarget::Key(k.id)).unwrap().keys.is_empty());
    assert!(is_shredded(store.as_ref(), t, k.id));
    // Unknown tenants and keys shred nothing and do not fail.
    assert_eq!(store.shred(Uuid::now_v7(), &ShredTarget::Key(k.id)).unwrap().keys, vec![]);
}

pub fn shred_tenant_destroys_everything_of_it(new: Factory<'_>) {
    let store = new();
    let (t, other) = (Uuid::now_v7(), Uuid::now_v7());
    let a = store.active_key(t, &subject(Uuid::now_v7(), Group::Profile)).unwrap();
    let b = store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    let kept = store.active_key(other, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    let report = store.shred(t, &ShredTarget::Tenant).unwrap();
    assert!(report.tenant_kek);
    assert_eq!(report.keys.len(), 2);
    assert!(is_shredded(store.as_ref(), t, a.id) && is_shredded(store.as_ref(), t, b.id));
    assert!(matches!(
        store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }),
        Err(KeyError::TenantShredded { .. })
    ));
    assert_eq!(live(store.as_ref(), other, kept.id).material, kept.material);
    let again = store.shred(t, &ShredTarget::Tenant).unwrap();
    assert!(!again.tenant_kek && again.keys.is_empty());
    // Offboarding a tenant that never had keys still bars it from getting any.
    let empty = Uuid::now_v7();
    assert!(store.shred(empty, &ShredTarget::Tenant).unwrap().tenant_kek);
    assert!(matches!(
        store.active_key(empty, &subject(Uuid::now_v7(), Group::Geo)),
        Err(KeyError::TenantShredded { .. })
    ));
    let status = store.status().unwrap();
    assert_eq!((status.tenants, status.shredded_tenants), (1, 2));
}

pub fn reservations_and_retirement(new: Factory<'_>) {
    let store = new();
    let t = Uuid::now_v7();
    let purpose = KeyPurpose::SessionContent { session: Uuid::now_v7() };
    let k = store.active_key(t, &purpose).unwrap();
    let first = crate::INITIAL_RESERVATION;
    assert_eq!(k.uses_reserved, first, "a new key comes with its first block of seals reserved");
    assert_eq!(store.reserve_uses(t, k.id, first + 100).unwrap(), Some(first + 100));
    // Never goes down.
    assert_eq!(store.reserve_uses(t, k.id, 50).unwrap(), Some(first + 100));
    assert_eq!(store.active_key(t, &purpose).unwrap().uses_reserved, first + 100);
    store.retire(t, k.id).unwrap();
    store.retire(t, k.id).unwrap();
    assert_eq!(store.reserve_uses(t, k.id, 200).unwrap(), None);
    let next = store.active_key(t, &purpose).unwrap();
    assert_ne!(next.id, k.id);
    let old = live(store.as_ref(), t, k.id);
    assert!(old.retired);
    assert_eq!(old.material, k.material);
    // Shredding the Session takes retired keys too.
    assert_eq!(store.shred(t, &ShredTarget::Session { session: purpose.anchor() }).unwrap().keys.len(), 2);
    assert_eq!(store.reserve_uses(t, next.id, 10).unwrap(), None);
    assert!(matches!(store.reserve_uses(t, crate::KeyId::random(), 10), Err(KeyError::UnknownKey { .. })));
}

pub fn blocks_follow_every_reservation(new: Factory<'_>) {
    let store = new();
    let t = Uuid::now_v7();
    let k = store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    let first = crate::INITIAL_RESERVATION;
    assert_eq!(store.reserve_block(t, k.id, 100).unwrap(), Some(first..first + 100));
    assert_eq!(store.reserve_block(t, k.id, 10).unwrap(), Some(first + 100..first + 110), "never the same seals twice");
    assert_eq!(store.reserve_uses(t, k.id, first + 500).unwrap(), Some(first + 500));
    assert_eq!(store.reserve_block(t, k.id, 1).unwrap(), Some(first + 500..first + 501));
    store.retire(t, k.id).unwrap();
    assert_eq!(store.reserve_block(t, k.id, 1).unwrap(), None);
    assert!(matches!(store.reserve_block(t, crate::KeyId::random(), 1), Err(KeyError::UnknownKey { .. })));
}

pub fn rotation_rewraps_and_destroys_old_epoch(new: Factory<'_>) {
    let store = new();
    let before = store.status().unwrap().epochs;
    assert_eq!(before.len(), 1);
    let (t1, t2) = (Uuid::now_v7(), Uuid::now_v7());
    let keys: Vec<_> = (0..20)
        .map(|i| {
            let t = if i % 2 == 0 { t1 } else { t2 };
            (t, store.active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap())
        })
        .collect();
    let gone = keys[0].1.id;
    store.shred(t1, &ShredTarget::Key(gone)).unwrap();
    let report = store.rotate_epoch().unwrap();
    assert!(!report.resumed);
    assert_eq!(report.destroyed_epochs, vec![before[0].epoch]);
    assert!(report.epoch > before[0].epoch);
    assert_eq!(report.keys_rewrapped, 19);
    let after = store.status().unwrap();
    assert_eq!(after.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(), vec![report.epoch]);
    for (t, k) in &keys[1..] {
        assert_eq!(live(store.as_ref(), *t, k.id).material, k.material);
    }
    assert!(is_shredded(store.as_ref(), t1, gone));
    // New tenants and keys after a rotation work, and rotating again works.
    let t3 = Uuid::now_v7();
    let k3 = store.active_key(t3, &subject(Uuid::now_v7(), Group::Device)).unwrap();
    let second = store.rotate_epoch().unwrap();
    assert_eq!(second.destroyed_epochs, vec![report.epoch]);
    assert_eq!(live(store.as_ref(), t3, k3.id).material, k3.material);
}

fn keyring(store: Arc<dyn KeyStore>) -> Keyring {
    Keyring::new(store, KeyPolicy::default()).unwrap()
}

pub fn seal_open_round_trip_and_erasure(new: Factory<'_>) {
    let ring = keyring(new());
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let aad = Aad { tenant: t, stream: "subject-1", event_id: Uuid::now_v7() };
    let purpose = subject(s, Group::Profile);
    let sealed = ring.seal_blocking("email", b"ada@example.com", &purpose, &aad).unwrap();
    assert_eq!(sealed.field, "email");
    assert!(!sealed.ciphertext.windows(3).any(|w| w == b"ada"));
    match ring.open_blocking("email", &sealed, &aad).unwrap() {
        Opened::Plaintext(p) => assert_eq!(&p[..], b"ada@example.com"),
        Opened::Erased => panic!("not erased"),
    }
    // Two seals of the same text differ (fresh nonce).
    let again = ring.seal_blocking("email", b"ada@example.com", &purpose, &aad).unwrap();
    assert_ne!(again.nonce, sealed.nonce);
    assert_ne!(again.ciphertext, sealed.ciphertext);
    // A fresh keyring (cold cache) opens it too.
    let cold = keyring(ring.store().clone());
    assert!(matches!(cold.open_blocking("email", &sealed, &aad).unwrap(), Opened::Plaintext(_)));
    ring.shred_blocking(t, &ShredTarget::Subject { subject: s, group: None }).unwrap();
    assert_eq!(ring.open_blocking("email", &sealed, &aad).unwrap(), Opened::Erased);
    // The other keyring's cache still holds the key: shreds reach caches
    // only through the keyring that performed them. Its store says shredded.
    assert!(matches!(ring.store().key(t, crate::KeyId::from_slice(&sealed.key_id).unwrap()), Ok(KeyLookup::Shredded)));
}

pub fn tampered_or_moved_ciphertext_does_not_open(new: Factory<'_>) {
    let ring = keyring(new());
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let event = Uuid::now_v7();
    let aad = Aad { tenant: t, stream: "session-1", event_id: event };
    let purpose = KeyPurpose::SessionContent { session: s };
    let sealed = ring.seal_blocking("body", b"hello there", &purpose, &aad).unwrap();
    let integrity = |r: Result<Opened, KeyError>| matches!(r, Err(KeyError::Integrity { .. }));
    // Another event, another stream.
    assert!(integrity(ring.open_blocking("body", &sealed, &Aad { event_id: Uuid::now_v7(), ..aad })));
    assert!(integrity(ring.open_blocking("body", &sealed, &Aad { stream: "session-2", ..aad })));
    // Another field: renaming the field in the record does not help.
    let mut renamed = sealed.clone();
    renamed.field = "subject".into();
    assert!(integrity(ring.open_blocking("subject", &renamed, &aad)));
    assert!(matches!(ring.open_blocking("subject", &sealed, &aad), Err(KeyError::FieldMismatch { .. })));
    // Another tenant.
    let other = Uuid::now_v7();
    ring.seal_blocking("body", b"x", &KeyPurpose::SessionContent { session: s }, &Aad { tenant: other, ..aad })
        .unwrap();
    assert!(matches!(
        ring.open_blocking("body", &sealed, &Aad { tenant: other, ..aad }),
        Err(KeyError::WrongTenant { .. })
    ));
    let cold = keyring(ring.store().clone());
    assert!(matches!(
        cold.open_blocking("body", &sealed, &Aad { tenant: other, ..aad }),
        Err(KeyError::WrongTenant { .. })
    ));
    // Every single flipped bit of nonce or ciphertext.
    for i in 0..(sealed.nonce.len() + sealed.ciphertext.len()) * 8 {
        let mut bad = sealed.clone();
        let (mut nonce, mut ct) = (bad.nonce.to_vec(), bad.ciphertext.to_vec());
        let byte = i / 8;
        if byte < nonce.len() {
            nonce[byte] ^= 1 << (i % 8);
        } else {
            ct[byte - nonce.len()] ^= 1 << (i % 8);
        }
        bad.nonce = nonce.into();
        bad.ciphertext = ct.into();
        assert!(integrity(ring.open_blocking("body", &bad, &aad)), "bit {i}");
    }
    // Another key id: a sealed field pointed at another live key.
    let mut moved = sealed.clone();
    let other_key = ring.store().active_key(t, &KeyPurpose::SessionContent { session: Uuid::now_v7() }).unwrap();
    moved.key_id = other_key.id.as_bytes().to_vec().into();
    assert!(integrity(ring.open_blocking("body", &moved, &aad)));
    // Malformed fields are named errors, not panics.
    let mut short = sealed.clone();
    short.nonce = vec![0u8; 3].into();
    assert!(matches!(ring.open_blocking("body", &short, &aad), Err(KeyError::Invalid { .. })));
    let mut short = sealed.clone();
    short.ciphertext = vec![0u8; 5].into();
    assert!(matches!(ring.open_blocking("body", &short, &aad), Err(KeyError::Invalid { .. })));
    let mut short = sealed;
    short.key_id = vec![1u8; 7].into();
    assert!(matches!(ring.open_blocking("body", &short, &aad), Err(KeyError::Invalid { .. })));
}

pub fn keys_retire_before_their_use_limit(new: Factory<'_>) {
    let store = new();
    let policy = KeyPolicy { retire_after_uses: 10, reserve_block: 4, cache_capacity: 100 };
    let ring = Keyring::new(store.clone(), policy).unwrap();
    let (t, s) = (Uuid::now_v7(), Uuid::now_v7());
    let purpose = KeyPurpose::SessionContent { session: s };
    let aad = Aad { tenant: t, stream: "session", event_id: Uuid::now_v7() };
    let sealed: Vec<_> =
        (0..35).map(|i| ring.seal_blocking("body", format!("m{i}").as_bytes(), &purpose, &aad).unwrap()).collect();
    let mut per_key = std::collections::BTreeMap::<Vec<u8>, usize>::new();
    for s in &sealed {
        *per_key.entry(s.key_id.to_vec()).or_default() += 1;
    }
    assert!(per_key.len() >= 4, "35 seals at 10 per key need at least 4 keys, got {}", per_key.len());
    assert!(per_key.values().all(|n| *n <= 10), "{per_key:?}");
    for (i, s) in sealed.iter().enumerate() {
        assert_eq!(
            ring.open_blocking("body", s, &aad).unwrap(),
            Opened::Plaintext(format!("m{i}").into_bytes().into())
        );
    }
    assert!(store.status().unwrap().retired_keys >= 3);
    assert!(Keyring::new(store, KeyPolicy { retire_after_uses: 1 << 33, ..policy }).is_err());
}

/// Generates one `#[test]` per conformance function for a backend.
/// `$new` is an expression of type `impl Fn() -> Arc<dyn KeyStore>`.
pub fn a_tenants_keys_move_to_another_store(new: Factory<'_>) {
    let (from, to) = (keyring(new()), keyring(new()));
    let (t, s, gone) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let aad = Aad { tenant: t, stream: "subject-1", event_id: Uuid::now_v7() };
    let profile = from.seal_blocking("email", b"ada@example.com", &subject(s, Group::Profile), &aad).unwrap();
    let erased = from.seal_blocking("email", b"bob@example.com", &subject(gone, Group::Profile), &aad).unwrap();
    let content = from.seal_blocking("body", b"hello", &KeyPurpose::SessionContent { session: s }, &aad).unwrap();
    from.shred_blocking(t, &ShredTarget::Subject { subject: gone, group: None }).unwrap();
    let keys = from.store().export_tenant(t).unwrap();
    assert_eq!(keys.live.len(), 2);
    assert_eq!(keys.shredded.len(), 1);
    let report = to.store().import_tenant(t, &keys).unwrap();
    assert_eq!((report.added, report.present, report.shredded_recorded), (2, 0, 1));
    // What the old store sealed opens in the new one; what it had erased stays erased.
    assert!(
        matches!(to.open_blocking("email", &profile, &aad).unwrap(), Opened::Plaintext(p) if &p[..] == b"ada@example.com")
    );
    assert!(matches!(to.open_blocking("body", &content, &aad).unwrap(), Opened::Plaintext(_)));
    assert_eq!(to.open_blocking("email", &erased, &aad).unwrap(), Opened::Erased);
    // A seal there does not start the key's count again.
    let id = crate::KeyId::from_slice(&profile.key_id).unwrap();
    let moved = live(to.store().as_ref(), t, id);
    assert!(moved.uses_reserved >= live(from.store().as_ref(), t, id).uses_reserved);
    assert!(!moved.fresh);
    // Again (a resumed move): nothing new; a key shredded since in the old store is named.
    from.shred_blocking(t, &ShredTarget::Session { session: s }).unwrap();
    let again = to.store().import_tenant(t, &from.store().export_tenant(t).unwrap()).unwrap();
    assert_eq!((again.added, again.present, again.shredded_recorded), (0, 1, 0));
    assert_eq!(again.to_shred, vec![crate::KeyId::from_slice(&content.key_id).unwrap()]);
    // Keys of another tenant are refused by name.
    let mut other = from.store().export_tenant(t).unwrap();
    other.live[0].tenant = Uuid::now_v7();
    assert!(matches!(to.store().import_tenant(t, &other), Err(KeyError::WrongTenant { .. })));
    // A tenant whose KEK is destroyed has nothing to hand over, and takes nothing in.
    from.shred_blocking(t, &ShredTarget::Tenant).unwrap();
    assert!(matches!(from.store().export_tenant(t), Err(KeyError::TenantShredded { .. })));
    assert!(matches!(from.store().import_tenant(t, &keys), Err(KeyError::TenantShredded { .. })));
}

#[macro_export]
macro_rules! keystore_conformance_tests {
    ($new:expr) => {
        $crate::keystore_conformance_tests!(@tests $new;
            active_key_is_stable_per_purpose,
            lookup_by_id_checks_tenant,
            shred_subject_all_groups,
            shred_one_group,
            shred_session_takes_its_media,
            shred_key_by_id,
            shred_tenant_destroys_everything_of_it,
            reservations_and_retirement,
            blocks_follow_every_reservation,
            rotation_rewraps_and_destroys_old_epoch,
            seal_open_round_trip_and_erasure,
            tampered_or_moved_ciphertext_does_not_open,
            keys_retire_before_their_use_limit,
            a_tenants_keys_move_to_another_store,
        );
    };
    (@tests $new:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let new = $new;
                $crate::conformance::$name(&new);
            }
        )*
    };
}
