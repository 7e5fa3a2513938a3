//! The behaviour every [`BlobStore`] shares, as async checks the tests of
//! each store run (`tests/file_store.rs`, `tests/s3.rs`). Each check uses
//! fresh random tenant ids, so stores may be shared between checks.

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use crate::store::{BlobError, BlobId, BlobStore};

fn id(tenant: Uuid, session: Uuid) -> BlobId {
    BlobId { tenant, session, media: Uuid::new_v4() }
}

/// Writes `data` (in pieces) and commits.
async fn put(store: &dyn BlobStore, id: BlobId, data: &[u8]) {
    let mut w = store.create(id).await.expect("create");
    for piece in data.chunks(5) {
        w.write(piece.to_vec()).await.expect("write");
    }
    w.commit().await.expect("commit");
}

/// Nothing is readable before commit; committed blobs are unconfirmed
/// until confirmed; reads are exact; deletes are idempotent.
pub async fn life_of_a_blob(store: &dyn BlobStore) {
    let (t, s) = (Uuid::new_v4(), Uuid::new_v4());
    let a = id(t, s);
    let mut w = store.create(a).await.expect("create");
    w.write(b"hello ".to_vec()).await.expect("write");
    w.write(b"world".to_vec()).await.expect("write");
    assert!(matches!(store.open(a).await, Err(BlobError::NotFound(_))), "readable before commit");
    w.commit().await.expect("commit");
    assert!(store.unconfirmed(Duration::ZERO).await.expect("unconfirmed").contains(&a));
    store.confirm(a).await.expect("confirm");
    store.confirm(a).await.expect("a second confirm is harmless");
    assert!(!store.unconfirmed(Duration::ZERO).await.expect("unconfirmed").contains(&a));
    let r = store.open(a).await.expect("open");
    assert_eq!(r.len(), 11);
    assert_eq!(r.read_at(0, 11).await.expect("read"), b"hello world");
    assert_eq!(r.read_at(6, 5).await.expect("read"), b"world");
    assert!(matches!(r.read_at(8, 5).await, Err(BlobError::OutOfRange { .. })));
    assert!(matches!(r.read_at(u64::MAX, 1).await, Err(BlobError::OutOfRange { .. })));
    assert!(store.delete(a).await.expect("delete"));
    assert!(!store.delete(a).await.expect("delete again"), "a second delete finds nothing");
    assert!(matches!(store.open(a).await, Err(BlobError::NotFound(_))));
    // What never existed deletes without error.
    assert_eq!(store.delete_session(Uuid::new_v4(), Uuid::new_v4()).await.expect("delete session"), 0);
    assert_eq!(store.delete_tenant(Uuid::new_v4()).await.expect("delete tenant"), 0);
}

/// An aborted upload leaves nothing to read or sweep.
pub async fn abort_leaves_nothing(store: &dyn BlobStore) {
    let a = id(Uuid::new_v4(), Uuid::new_v4());
    let mut w = store.create(a).await.expect("create");
    w.write(vec![1; 10]).await.expect("write");
    w.abort().await.expect("abort");
    assert!(matches!(store.open(a).await, Err(BlobError::NotFound(_))));
    let swept = store.sweep_incomplete(Duration::ZERO, &HashSet::new()).await.expect("sweep");
    assert!(!swept.contains(&a), "an aborted upload is not left to sweep");
}

/// A Session's delete takes its blobs and no one else's; a tenant's, all
/// of the tenant's.
pub async fn deletes_are_scoped(store: &dyn BlobStore) {
    let (t, s1, s2, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let ids = [id(t, s1), id(t, s1), id(t, s2), id(other, s1)];
    for b in ids {
        put(store, b, b"0123456789").await;
        store.confirm(b).await.expect("confirm");
    }
    let mut mine = ids[..3].to_vec();
    mine.sort();
    assert_eq!(store.committed_of(t).await.expect("list"), mine, "a tenant's blobs are listed, no one else's");
    assert_eq!(store.delete_session(t, s1).await.expect("delete session"), 2);
    assert_eq!(store.delete_session(t, s1).await.expect("again"), 0);
    assert!(matches!(store.open(ids[0]).await, Err(BlobError::NotFound(_))));
    assert!(store.open(ids[2]).await.is_ok(), "another session's blob survives");
    assert_eq!(store.delete_tenant(t).await.expect("delete tenant"), 1);
    assert!(matches!(store.open(ids[2]).await, Err(BlobError::NotFound(_))));
    assert!(store.open(ids[3]).await.is_ok(), "another tenant's blob survives");
    assert!(store.committed_of(t).await.expect("list").is_empty());
    store.delete_tenant(other).await.expect("cleanup");
}

/// Uploads a crash left (writers dropped without commit) are swept, except
/// those in flight; unconfirmed blobs are listed until confirmed or deleted.
pub async fn sweeps_find_what_a_crash_left(store: &dyn BlobStore) {
    let (t, s) = (Uuid::new_v4(), Uuid::new_v4());
    let (live, dead) = (id(t, s), id(t, s));
    for b in [live, dead] {
        let mut w = store.create(b).await.expect("create");
        w.write(vec![1; 10]).await.expect("write");
        drop(w);
    }
    let idle = store.sweep_incomplete(Duration::from_secs(3600), &HashSet::new()).await.expect("sweep");
    assert!(!idle.contains(&live) && !idle.contains(&dead), "nothing has been idle an hour");
    let removed = store.sweep_incomplete(Duration::ZERO, &HashSet::from([live])).await.expect("sweep");
    assert!(removed.contains(&dead) && !removed.contains(&live), "{removed:?}");
    let again = store.sweep_incomplete(Duration::ZERO, &HashSet::from([live])).await.expect("sweep");
    assert!(!again.contains(&dead), "swept once");
    let committed = id(t, s);
    put(store, committed, b"x").await;
    assert!(store.unconfirmed(Duration::ZERO).await.expect("list").contains(&committed));
    assert!(!store.unconfirmed(Duration::from_secs(3600)).await.expect("list").contains(&committed));
    store.delete(committed).await.expect("delete");
    assert!(!store.unconfirmed(Duration::ZERO).await.expect("list").contains(&committed), "delete drops the mark");
    store.delete_tenant(t).await.expect("cleanup");
    store.sweep_incomplete(Duration::ZERO, &HashSet::new()).await.expect("cleanup");
}

/// A blob of several MiB written in uneven pieces reads back exactly.
pub async fn large_blobs_read_back(store: &dyn BlobStore) {
    let b = id(Uuid::new_v4(), Uuid::new_v4());
    let data: Vec<u8> = (0..(11 << 20) + 7).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut w = store.create(b).await.expect("create");
    for piece in data.chunks(1_000_003) {
        w.write(piece.to_vec()).await.expect("write");
    }
    w.commit().await.expect("commit");
    store.confirm(b).await.expect("confirm");
    let r = store.open(b).await.expect("open");
    assert_eq!(r.len(), data.len() as u64);
    for (at, len) in [(0usize, 10usize), ((8 << 20) - 3, 6), (data.len() - 5, 5), (3, 9 << 20)] {
        assert_eq!(r.read_at(at as u64, len).await.expect("read"), data[at..at + len], "read {len} at {at}");
    }
    store.delete(b).await.expect("cleanup");
}

/// Runs every check.
pub async fn run_all(store: &dyn BlobStore) {
    life_of_a_blob(store).await;
    abort_leaves_nothing(store).await;
    deletes_are_scoped(store).await;
    sweeps_find_what_a_crash_left(store).await;
    large_blobs_read_back(store).await;
}
