//! The embedded blob store: files under the data directory.
//!
//! ```text
//! blobs/incoming/<tenant>_<session>_<media>.part    uploads in flight
//! blobs/unconfirmed/<tenant>_<session>_<media>      committed, not yet recorded
//! blobs/<tenant>/<session>/<media>.blob             committed blobs
//! ```
//!
//! A commit fdatasyncs the `.part`, creates the unconfirmed mark (and syncs
//! its directory), renames the file into its Session's directory and syncs
//! that directory: after a power cut a blob is either complete under its
//! final name or not there. Deleting a Session's blobs is one directory.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::store::{BlobError, BlobId, BlobReader, BlobStore, BlobWriter};

#[derive(Debug, Clone)]
pub struct FileBlobStore {
    root: Arc<PathBuf>,
}

const INCOMING: &str = "incoming";
const UNCONFIRMED: &str = "unconfirmed";

fn flat_name(id: &BlobId) -> String {
    format!("{}_{}_{}", id.tenant, id.session, id.media)
}

fn parse_flat(name: &str) -> Option<BlobId> {
    let mut parts = name.split('_');
    let id = BlobId {
        tenant: Uuid::parse_str(parts.next()?).ok()?,
        session: Uuid::parse_str(parts.next()?).ok()?,
        media: Uuid::parse_str(parts.next()?).ok()?,
    };
    parts.next().is_none().then_some(id)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn gone_ok(r: std::io::Result<()>) -> std::io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Backend(format!("blob I/O task: {e}")))?
}

impl FileBlobStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for dir in [root.to_path_buf(), root.join(INCOMING), root.join(UNCONFIRMED)] {
            fs::create_dir_all(&dir).map_err(|e| BlobError::io(dir.display(), "create directory", e))?;
        }
        sync_dir(root).map_err(|e| BlobError::io(root.display(), "sync directory", e))?;
        Ok(Self { root: Arc::new(root.to_path_buf()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn part_path(&self, id: &BlobId) -> PathBuf {
        self.root.join(INCOMING).join(format!("{}.part", flat_name(id)))
    }

    fn mark_path(&self, id: &BlobId) -> PathBuf {
        self.root.join(UNCONFIRMED).join(flat_name(id))
    }

    fn session_dir(&self, tenant: Uuid, session: Uuid) -> PathBuf {
        self.root.join(tenant.to_string()).join(session.to_string())
    }

    fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.session_dir(id.tenant, id.session).join(format!("{}.blob", id.media))
    }

    /// Removes the incoming parts and unconfirmed marks whose names start
    /// with `prefix`.
    fn remove_flat(&self, prefix: &str) -> std::io::Result<()> {
        for dir in [INCOMING, UNCONFIRMED] {
            let dir = self.root.join(dir);
            let mut removed = false;
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    removed |= gone_ok(fs::remove_file(entry.path()))?;
                }
            }
            if removed {
                sync_dir(&dir)?;
            }
        }
        Ok(())
    }
}

fn count_blobs(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            n += count_blobs(&entry.path())?;
        } else if entry.file_name().to_string_lossy().ends_with(".blob") {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes `dir` and all under it (nothing to do when it is not there);
/// returns how many blobs it held.
fn remove_tree(dir: &Path) -> std::io::Result<usize> {
    let n = count_blobs(dir)?;
    if gone_ok(fs::remove_dir_all(dir))?
        && let Some(parent) = dir.parent()
    {
        sync_dir(parent)?;
    }
    Ok(n)
}

fn idle_for(meta: &fs::Metadata) -> Duration {
    meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default()
}

#[async_trait::async_trait]
impl BlobStore for FileBlobStore {
    fn describe(&self) -> String {
        format!("file:{}", self.root.display())
    }

    async fn create(&self, id: BlobId) -> Result<Box<dyn BlobWriter>, BlobError> {
        let path = self.part_path(&id);
        let store = self.clone();
        blocking(move || {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| BlobError::io(id, "create upload file", e))?;
            Ok(Box::new(FileWriter { id, store, file: Arc::new(file), written: 0 }) as Box<dyn BlobWriter>)
        })
        .await
    }

    async fn open(&self, id: BlobId) -> Result<Box<dyn BlobReader>, BlobError> {
        let path = self.blob_path(&id);
        blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound(id)),
                Err(e) => return Err(BlobError::io(id, "open", e)),
            };
            let len = file.metadata().map_err(|e| BlobError::io(id, "stat", e))?.len();
            Ok(Box::new(FileReader { id, file: Arc::new(file), len }) as Box<dyn BlobReader>)
        })
        .await
    }

    async fn confirm(&self, id: BlobId) -> Result<(), BlobError> {
        let mark = self.mark_path(&id);
        // Not synced: a mark that comes back after a crash is checked
        // against the log again, and confirmed again.
        blocking(move || gone_ok(fs::remove_file(&mark)).map(drop).map_err(|e| BlobError::io(id, "confirm", e))).await
    }

    async fn delete(&self, id: BlobId) -> Result<bool, BlobError> {
        let store = self.clone();
        blocking(move || {
            let io = |e| BlobError::io(id, "delete", e);
            let existed = gone_ok(fs::remove_file(store.blob_path(&id))).map_err(io)?;
            if existed {
                sync_dir(&store.session_dir(id.tenant, id.session)).map_err(io)?;
            }
            store.remove_flat(&flat_name(&id)).map_err(io)?;
            Ok(existed)
        })
        .await
    }

    async fn delete_session(&self, tenant: Uuid, session: Uuid) -> Result<usize, BlobError> {
        let store = self.clone();
        blocking(move || {
            let io = |e| BlobError::io(format!("{tenant}/{session}"), "delete the session's blobs", e);
            let n = remove_tree(&store.session_dir(tenant, session)).map_err(io)?;
            store.remove_flat(&format!("{tenant}_{session}_")).map_err(io)?;
            Ok(n)
        })
        .await
    }

    async fn delete_tenant(&self, tenant: Uuid) -> Result<usize, BlobError> {
        let store = self.clone();
        blocking(move || {
            let io = |e| BlobError::io(tenant, "delete the tenant's blobs", e);
            let n = remove_tree(&store.root.join(tenant.to_string())).map_err(io)?;
            store.remove_flat(&format!("{tenant}_")).map_err(io)?;
            Ok(n)
        })
        .await
    }

    async fn committed_of(&self, tenant: Uuid) -> Result<Vec<BlobId>, BlobError> {
        let root = self.root.join(tenant.to_string());
        blocking(move || {
            let io = |e| BlobError::io(tenant, "list the tenant's blobs", e);
            let mut ids = Vec::new();
            let sessions = match fs::read_dir(&root) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
                Err(e) => return Err(io(e)),
            };
            for session in sessions {
                let session = session.map_err(io)?;
                let Some(sid) = session.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()) else { continue };
                for blob in fs::read_dir(session.path()).map_err(io)? {
                    let name = blob.map_err(io)?.file_name();
                    let media =
                        name.to_str().and_then(|n| n.strip_suffix(".blob")).and_then(|n| Uuid::parse_str(n).ok());
                    if let Some(media) = media {
                        ids.push(BlobId { tenant, session: sid, media });
                    }
                }
            }
            ids.sort();
            Ok(ids)
        })
        .await
    }

    async fn sweep_incomplete(&self, idle: Duration, live: &HashSet<BlobId>) -> Result<Vec<BlobId>, BlobError> {
        let dir = self.root.join(INCOMING);
        let listed = {
            let dir = dir.clone();
            blocking(move || {
                let io = |e| BlobError::io(dir.display(), "sweep incomplete uploads", e);
                let mut listed = Vec::new();
                for entry in fs::read_dir(&dir).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let id = entry.file_name().to_string_lossy().strip_suffix(".part").and_then(parse_flat);
                    listed.push((entry.path(), id, idle_for(&entry.metadata().map_err(io)?)));
                }
                Ok(listed)
            })
            .await?
        };
        let doomed: Vec<(PathBuf, Option<BlobId>)> = listed
            .into_iter()
            .filter(|(_, id, quiet)| {
                !id.as_ref().is_some_and(|id| live.contains(id)) && (idle.is_zero() || *quiet >= idle)
            })
            .map(|(path, id, _)| (path, id))
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        blocking(move || {
            let io = |e| BlobError::io(dir.display(), "sweep incomplete uploads", e);
            let mut removed = Vec::new();
            for (path, id) in &doomed {
                if gone_ok(fs::remove_file(path)).map_err(io)? {
                    tracing::info!(file = %path.display(), "removed an incomplete upload");
                    removed.extend(*id);
                }
            }
            sync_dir(&dir).map_err(io)?;
            Ok(removed)
        })
        .await
    }

    async fn unconfirmed(&self, older_than: Duration) -> Result<Vec<BlobId>, BlobError> {
        let dir = self.root.join(UNCONFIRMED);
        blocking(move || {
            let io = |e| BlobError::io(dir.display(), "list unconfirmed blobs", e);
            let mut out = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let Some(id) = parse_flat(&entry.file_name().to_string_lossy()) else { continue };
                if older_than.is_zero() || idle_for(&entry.metadata().map_err(io)?) >= older_than {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await
    }
}
struct FileWriter {
    id: BlobId,
    store: FileBlobStore,
    file: Arc<File>,
    written: u64,
}

#[async_trait::async_trait]
impl BlobWriter for FileWriter {
    async fn write(&mut self, data: Vec<u8>) -> Result<(), BlobError> {
        let (file, at, id) = (self.file.clone(), self.written, self.id);
        let n = data.len() as u64;
        blocking(move || file.write_all_at(&data, at).map_err(|e| BlobError::io(id, "write", e))).await?;
        self.written += n;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), BlobError> {
        blocking(move || {
            let id = self.id;
            let store = &self.store;
            self.file.sync_data().map_err(|e| BlobError::io(id, "fdatasync", e))?;
            let mark = store.mark_path(&id);
            File::create(&mark).map_err(|e| BlobError::io(id, "mark unconfirmed", e))?;
            sync_dir(&store.root.join(UNCONFIRMED)).map_err(|e| BlobError::io(id, "sync the marks", e))?;
            let tenant_dir = store.root.join(id.tenant.to_string());
            let session_dir = store.session_dir(id.tenant, id.session);
            if !session_dir.exists() {
                fs::create_dir_all(&session_dir).map_err(|e| BlobError::io(id, "create the session's directory", e))?;
                sync_dir(&tenant_dir).and_then(|()| sync_dir(&store.root)).map_err(|e| BlobError::io(id, "sync", e))?;
            }
            fs::rename(store.part_path(&id), store.blob_path(&id)).map_err(|e| BlobError::io(id, "rename", e))?;
            sync_dir(&session_dir)
                .and_then(|()| sync_dir(&store.root.join(INCOMING)))
                .map_err(|e| BlobError::io(id, "sync", e))?;
            Ok(())
        })
        .await
    }

    async fn abort(self: Box<Self>) -> Result<(), BlobError> {
        let path = self.store.part_path(&self.id);
        let id = self.id;
        blocking(move || gone_ok(fs::remove_file(&path)).map(drop).map_err(|e| BlobError::io(id, "remove", e))).await
    }
}

struct FileReader {
    id: BlobId,
    file: Arc<File>,
    len: u64,
}

#[async_trait::async_trait]
impl BlobReader for FileReader {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        if offset.checked_add(len as u64).is_none_or(|end| end > self.len) {
            return Err(BlobError::OutOfRange { id: self.id, offset, len, size: self.len });
        }
        let (file, id) = (self.file.clone(), self.id);
        blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(|e| BlobError::io(id, "read", e))?;
            Ok(buf)
        })
        .await
    }
}
