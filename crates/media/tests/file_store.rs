//! The embedded blob store: a blob is readable only after commit, deletes
//! remove files, and the sweeps find what a crash left.

use std::collections::HashSet;
use std::time::Duration;

use media::{BlobError, BlobId, BlobStore, FileBlobStore};
use uuid::Uuid;

fn files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walk(root) {
        out.push(entry.strip_prefix(root).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn id(tenant: Uuid, session: Uuid) -> BlobId {
    BlobId { tenant, session, media: Uuid::new_v4() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    media::conformance::run_all(&FileBlobStore::open(dir.path()).unwrap()).await;
    let left = files(dir.path());
    assert!(left.is_empty(), "the checks clean up after themselves: {left:?}");
}

#[tokio::test]
async fn commit_confirm_read_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileBlobStore::open(dir.path()).unwrap();
    let (t, s) = (Uuid::new_v4(), Uuid::new_v4());
    let a = id(t, s);
    let mut w = store.create(a).await.unwrap();
    w.write(b"hello ".to_vec()).await.unwrap();
    w.write(b"world".to_vec()).await.unwrap();
    assert!(matches!(store.open(a).await, Err(BlobError::NotFound(_))), "readable before commit");
    w.commit().await.unwrap();
    assert_eq!(store.unconfirmed(Duration::ZERO).await.unwrap(), vec![a]);
    store.confirm(a).await.unwrap();
    assert!(store.unconfirmed(Duration::ZERO).await.unwrap().is_empty());
    let r = store.open(a).await.unwrap();
    assert_eq!(r.len(), 11);
    assert_eq!(r.read_at(6, 5).await.unwrap(), b"world");
    assert!(matches!(r.read_at(8, 5).await, Err(BlobError::OutOfRange { .. })));
    assert!(store.delete(a).await.unwrap());
    assert!(!store.delete(a).await.unwrap(), "a second delete finds nothing");
    assert!(matches!(store.open(a).await, Err(BlobError::NotFound(_))));
}

#[tokio::test]
async fn session_and_tenant_deletes_take_everything_of_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileBlobStore::open(dir.path()).unwrap();
    let (t, s1, s2, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (tenant, session) in [(t, s1), (t, s1), (t, s2), (other, s1)] {
        let mut w = store.create(id(tenant, session)).await.unwrap();
        w.write(vec![1; 10]).await.unwrap();
        w.commit().await.unwrap();
    }
    // An upload in flight in s1 goes too.
    let mut inflight = store.create(id(t, s1)).await.unwrap();
    inflight.write(vec![2; 3]).await.unwrap();
    assert_eq!(store.delete_session(t, s1).await.unwrap(), 2);
    assert_eq!(store.delete_session(t, s1).await.unwrap(), 0);
    assert!(inflight.commit().await.is_err(), "a deleted upload cannot be committed");
    assert_eq!(store.delete_tenant(t).await.unwrap(), 1);
    // Deleting what never had blobs finds nothing, without error.
    assert_eq!(store.delete_session(Uuid::new_v4(), Uuid::new_v4()).await.unwrap(), 0);
    assert_eq!(store.delete_tenant(Uuid::new_v4()).await.unwrap(), 0);
    assert!(!store.delete(id(Uuid::new_v4(), Uuid::new_v4())).await.unwrap());
    let left = files(dir.path());
    assert!(left.iter().all(|f| f.contains(&other.to_string())), "{left:?}");
    assert_eq!(left.iter().filter(|f| f.ends_with(".blob")).count(), 1, "{left:?}");
}

#[tokio::test]
async fn abort_and_sweep_remove_incomplete_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileBlobStore::open(dir.path()).unwrap();
    let (t, s) = (Uuid::new_v4(), Uuid::new_v4());
    let mut w = store.create(id(t, s)).await.unwrap();
    w.write(vec![1; 10]).await.unwrap();
    w.abort().await.unwrap();
    let (live, dead) = (id(t, s), id(t, s));
    for b in [live, dead] {
        let mut w = store.create(b).await.unwrap();
        w.write(vec![1; 10]).await.unwrap();
        drop(w); // as a crash would leave it
    }
    // Not idle long enough yet.
    assert!(store.sweep_incomplete(Duration::from_secs(3600), &HashSet::new()).await.unwrap().is_empty());
    let removed = store.sweep_incomplete(Duration::ZERO, &HashSet::from([live])).await.unwrap();
    assert_eq!(removed, vec![dead]);
    assert_eq!(files(dir.path()).len(), 1, "only the live upload is left: {:?}", files(dir.path()));
}
