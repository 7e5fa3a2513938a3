//! The embedded file backend, pypes' default log: segment files of framed
//! records, group commit with fdatasync in a two-stage pipeline (a stager
//! thread encodes the next group while a syncer thread writes and syncs the
//! previous ones), an in-memory index rebuilt at open, torn-tail repair, a
//! SHA-256 hash chain with Ed25519-signed checkpoints, and scavenging. The
//! byte layout and the commit protocol are in docs/event-log-format.md.
//!
//! Architecture Invariant: an append is acknowledged only after the frame
//! holding it, and every frame before it, is fdatasync'd; readers see an
//! event only after that, because the index is published after the sync.

pub mod format;
pub mod note;
mod read;
mod recover;
mod scavenge;
pub mod sim;
mod verify;
pub mod vfs;
mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

pub use self::verify::{VerifyOptions, VerifyReport, verify_log, verify_log_visiting, verify_log_with};
use self::vfs::{StorageFile, Vfs};
use self::writer::{MetaOp, Request};
use crate::model::{StreamRules, validate_appends};
use crate::{
    AllPage, AppendResult, BoxFuture, Clock, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError,
    ReadFrom, RecordedEvent, Result, ScavengeReport, StreamAppend, StreamMetadata, SystemClock, validate_stream_name,
};

/// A sparse `$all` index entry is kept every this many batch frames.
const SPARSE_EVERY: u64 = 32;
/// Name of the file holding the latest signed checkpoint.
pub const HEAD_FILE: &str = "head.sig";

/// The name of a log's signed head in a witness directory (a C2SP signed
/// note, see [`note`]).
pub fn witness_file_name(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("pypes-log-head-{}.note", &hex_lower(key.as_bytes())[..16])
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
/// Name of the (informational) public key file; auditors pin their own copy.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
/// Largest segment size: frame offsets are u32 and a segment may overrun
/// its size by one write group.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Lock file: one process at a time owns a log directory.
pub const LOCK_FILE: &str = "LOCK";

/// Settings of a file log.
#[derive(Clone)]
pub struct FileLogConfig {
    /// A new segment is started once the active one reaches this size.
    pub segment_size: u64,
    /// A signed checkpoint is written after this many frames...
    pub checkpoint_every_frames: u64,
    /// ...or when this much time has passed since the last one.
    pub checkpoint_interval: Duration,
    /// How many recent event ids are remembered for idempotent retries.
    pub idempotency_window: usize,
    /// A write group stops taking requests at about this many bytes.
    pub max_group_bytes: usize,
    /// Signs checkpoints. Keep it outside the log's directory.
    pub signing_key: SigningKey,
    pub clock: Arc<dyn Clock>,
    pub vfs: Arc<dyn Vfs>,
    /// A directory outside the log's (another volume, say) that keeps a
    /// second copy of the signed head: open refuses a log shorter than
    /// either copy, so deleting or rolling back `head.sig` with the log
    /// is seen. `None`: `head.sig` only.
    pub witness_dir: Option<PathBuf>,
}

impl std::fmt::Debug for FileLogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLogConfig")
            .field("segment_size", &self.segment_size)
            .field("checkpoint_every_frames", &self.checkpoint_every_frames)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("idempotency_window", &self.idempotency_window)
            .finish_non_exhaustive()
    }
}

impl FileLogConfig {
    pub fn new(signing_key: SigningKey) -> Self {
        Self {
            segment_size: 256 << 20,
            checkpoint_every_frames: 1024,
            checkpoint_interval: Duration::from_secs(1),
            idempotency_window: 262_144,
            max_group_bytes: 256 << 10,
            signing_key,
            clock: Arc::new(SystemClock),
            vfs: Arc::new(vfs::OsVfs),
            witness_dir: None,
        }
    }

    /// The witness's copy of this log's signed head: a file named by the
    /// log's public key, so one witness directory can serve several logs.
    pub fn witness_path(&self) -> Option<PathBuf> {
        self.witness_dir.as_ref().map(|d| d.join(witness_file_name(&self.signing_key.verifying_key())))
    }
}

/// Where a frame is: segment number, offset, length (header included) and
/// how many events (entries) it holds.
#[derive(Debug, Clone, Copy)]
struct FrameLoc {
    segment: u32,
    offset: u32,
    len: u32,
    events: u32,
}

/// A stream version's place: frame ordinal (high 40 bits) and entry index
/// inside the frame (low 24 bits).
fn pack_loc(ordinal: u64, entry: u32) -> u64 {
    debug_assert!(ordinal < 1 << 40 && entry < 1 << 24);
    (ordinal << 24) | entry as u64
}

fn unpack_loc(loc: u64) -> (u64, u32) {
    (loc >> 24, (loc & 0xFF_FFFF) as u32)
}

struct FileStream {
    rules: StreamRules,
    /// Packed location of every version from `base_version` on.
    locs: VecDeque<u64>,
    base_version: u64,
    /// Number of the stream in the order `open` met it (u32::MAX for
    /// streams created later); lets recovery refer to a stream without
    /// touching its name.
    recovered_no: u32,
}

impl Default for FileStream {
    fn default() -> Self {
        Self { rules: StreamRules::default(), locs: VecDeque::new(), base_version: 0, recovered_no: u32::MAX }
    }
}

impl FileStream {
    fn loc_of(&self, version: u64) -> Option<u64> {
        version.checked_sub(self.base_version).and_then(|i| self.locs.get(i as usize).copied())
    }
}

/// Maps keyed by event id.
type IdMap<V> = HashMap<uuid::Uuid, V, crate::hash::KeyedHash>;

/// Recent event ids for idempotent retries, bounded to `cap` entries.
#[derive(Default)]
struct IdWindow {
    cap: usize,
    map: IdMap<(Arc<str>, u64, u64)>,
    /// (id, position) in append order.
    order: VecDeque<(uuid::Uuid, u64)>,
}

impl IdWindow {
    fn insert(&mut self, id: uuid::Uuid, stream: Arc<str>, version: u64, position: u64) {
        if self.cap == 0 {
            return;
        }
        self.map.insert(id, (stream, version, position));
        self.order.push_back((id, position));
        while self.order.len() > self.cap {
            let Some((old, pos)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|e| e.2 == pos) {
                self.map.remove(&old);
            }
        }
    }

    /// Builds the window from the last `cap` events of `recent` (oldest
    /// first), hashing only those: at open the log may hold millions.
    fn from_recent(cap: usize, recent: VecDeque<(uuid::Uuid, Arc<str>, u64, u64)>) -> Self {
        let mut w = IdWindow {
            cap,
            // Sized for a full window at once: growing rehashes every id
            // on the stager thread (a pause of milliseconds at 100k ids),
            // and untouched capacity is only address space.
            map: IdMap::with_capacity_and_hasher(cap.max(recent.len()), crate::hash::KeyedHash::default()),
            order: VecDeque::with_capacity(cap.max(recent.len()) + 1),
        };
        for (id, stream, version, position) in recent {
            w.insert(id, stream, version, position);
        }
        w
    }

    /// (stream, version, position) of an id in the window.
    fn get(&self, id: &uuid::Uuid) -> Option<(Arc<str>, u64, u64)> {
        self.map.get(id).cloned()
    }

    /// Forgets ids at `position` or later (after a failed write).
    fn forget_from(&mut self, position: u64) {
        while let Some(&(id, pos)) = self.order.back() {
            if pos < position {
                break;
            }
            self.order.pop_back();
            if self.map.get(&id).is_some_and(|e| e.2 == pos) {
                self.map.remove(&id);
            }
        }
    }
}

/// The committed state readers see. Updated only after an fdatasync.
#[derive(Default)]
struct Index {
    segments: BTreeMap<u64, Arc<dyn StorageFile>>,
    frames: Vec<FrameLoc>,
    /// (position of the first event, frame ordinal) every SPARSE_EVERY batch frames.
    sparse: Vec<(u64, u64)>,
    batch_frames: u64,
    streams: HashMap<Arc<str>, FileStream>,
    next_position: u64,
    /// The published tail, where the writer restarts after a failed sync.
    chain: [u8; 32],
    end_segment: u64,
    end_offset: u64,
    frames_since_checkpoint: u64,
}

impl Index {
    fn intern(&self, stream: &str) -> Arc<str> {
        self.streams.get_key_value(stream).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(stream))
    }

    fn push_frame(&mut self, loc: FrameLoc, first_position: Option<u64>) -> u64 {
        let ordinal = self.frames.len() as u64;
        self.frames.push(loc);
        if let Some(p) = first_position {
            if self.batch_frames.is_multiple_of(SPARSE_EVERY) {
                self.sparse.push((p, ordinal));
            }
            self.batch_frames += 1;
        }
        ordinal
    }
}

struct Shared {
    dir: PathBuf,
    segments_dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    clock: Arc<dyn Clock>,
    index: RwLock<Index>,
    head: watch::Sender<u64>,
    scavenging: Mutex<()>,
    /// Set when the log cannot roll back a failed write; refuses writes.
    poisoned: Mutex<Option<String>>,
    /// The witness's copy of `head.sig`, written after it.
    witness: Option<PathBuf>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.segments_dir.join(format::segment_file_name(number))
    }

    fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The embedded, crash-safe, tamper-evident event log.
pub struct FileLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held while the log is open; released by `close` once the writer has stopped.
    dir_lock: Mutex<Option<Box<dyn std::any::Any + Send + Sync>>>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

impl FileLog {
    /// Opens (or creates) the log in `dir`: scans every segment, rebuilds the
    /// index, repairs a torn tail and refuses any other corruption.
    pub fn open(dir: impl AsRef<Path>, config: FileLogConfig) -> Result<FileLog> {
        let dir = dir.as_ref().to_path_buf();
        // Frame offsets are u32: a segment may overrun its size by one group
        // (at most max_group_bytes plus one frame), so cap both well below.
        if !(4096..=MAX_SEGMENT_SIZE).contains(&config.segment_size) {
            return Err(LogError::InvalidBatch { reason: "segment_size must be between 4 KiB and 1 GiB".into() });
        }
        if config.max_group_bytes > 256 << 20 {
            return Err(LogError::InvalidBatch { reason: "max_group_bytes must be at most 256 MiB".into() });
        }
        let vfs = config.vfs.clone();
        let segments_dir = dir.join("segments");
        let fresh = !vfs.exists(&segments_dir);
        vfs.create_dir_all(&segments_dir)
            .map_err(|e| LogError::io(format!("creating {}", segments_dir.display()), e))?;
        if fresh {
            // Make the new directories' own entries durable, so the first
            // acknowledged append cannot vanish with its directory.
            for d in [dir.as_path(), vfs::parent(&dir).as_path()] {
                vfs.sync_dir(d).map_err(|e| LogError::io(format!("syncing directory {}", d.display()), e))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let dir_lock = vfs.lock(&lock_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => LogError::Locked { dir: dir.clone() },
            _ => LogError::io(format!("locking {}", lock_path.display()), e),
        })?;
        if let Some(w) = &config.witness_dir {
            vfs.create_dir_all(w)
                .map_err(|e| LogError::io(format!("creating the witness directory {}", w.display()), e))?;
        }
        let started = Instant::now();
        let recovered = recover::recover(&dir, &segments_dir, &config)?;
        info!(
            dir = %dir.display(),
            events = recovered.index.next_position,
            frames = recovered.index.frames.len(),
            streams = recovered.index.streams.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event log opened"
        );
        let (head_tx, _) = watch::channel(recovered.index.next_position);
        let rules = recovered.index.streams.iter().map(|(k, s)| (k.clone(), s.rules.clone())).collect();
        let state = writer::TailState::from_index(&recovered.index, recovered.active.clone());
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            segments_dir,
            vfs: vfs.clone(),
            clock: config.clock.clone(),
            index: RwLock::new(recovered.index),
            head: head_tx,
            scavenging: Mutex::new(()),
            poisoned: Mutex::new(None),
            witness: config.witness_path(),
        });
        write_public_key(&*vfs, &dir, &config.signing_key);
        let (tx, rx) = mpsc::channel();
        let handle = writer::start(shared.clone(), config, state, rules, recovered.ids, rx)?;
        Ok(FileLog { shared, tx, writer: Mutex::new(Some(handle)), dir_lock: Mutex::new(Some(dir_lock)) })
    }

    /// Writes a signed checkpoint now (if anything was written since the
    /// last one) and waits until it is durable.
    pub async fn checkpoint(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Checkpoint { reply }).map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Stops the writer after a final checkpoint and releases the
    /// directory. Reads keep working; writes fail with `Closed`. Idempotent;
    /// also done on drop.
    pub fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = self.tx.send(Request::Shutdown);
            let _ = handle.join();
        }
        self.dir_lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    async fn meta(&self, stream: &str, op: MetaOp) -> Result<()> {
        validate_stream_name(stream)?;
        if let MetaOp::Set(m) = &op {
            m.validate(stream)?;
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Meta { stream: stream.to_owned(), op, reply }).map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

/// The public half of a checkpoint signing key, as hex.
pub fn public_key_hex(key: &SigningKey) -> String {
    key.verifying_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn write_public_key(vfs: &dyn Vfs, dir: &Path, key: &SigningKey) {
    let path = dir.join(PUBLIC_KEY_FILE);
    if vfs.exists(&path) {
        return;
    }
    let hex = public_key_hex(key);
    let written =
        vfs.open(&path, true).and_then(|f| f.write_at(0, format!("{hex}\n").as_bytes()).and_then(|_| f.sync_data()));
    if let Err(e) = written {
        warn!(error = %e, "could not write the public key file");
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventLog for FileLog {
    fn exclusive(&self) -> bool {
        true
    }

    fn close_for_shutdown(&self) {
        self.close();
    }

    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<AppendResult>>> {
        Box::pin(async move {
            let bytes = validate_appends(&appends)?;
            let (reply, rx) = oneshot::channel();
            self.tx.send(Request::Append { appends, bytes, reply }).map_err(|_| LogError::Closed)?;
            rx.await.map_err(|_| LogError::Closed)?
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from: ReadFrom,
        direction: Direction,
        max_count: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        let shared = self.shared.clone();
        let stream = stream.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || shared.read_stream_blocking(&stream, from, direction, max_count))
                .await
                .map_err(|_| LogError::Closed)?
        })
    }

    fn read_all<'a>(&'a self, from: u64, max_count: usize, filter: &'a EventFilter) -> BoxFuture<'a, Result<AllPage>> {
        let shared = self.shared.clone();
        let filter = filter.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || shared.read_all_blocking(from, max_count, &filter))
                .await
                .map_err(|_| LogError::Closed)?
        })
    }

    fn read_all_on_thread(
        &self,
        _rt: &tokio::runtime::Handle,
        from: u64,
        max_count: usize,
        filter: &EventFilter,
    ) -> Result<AllPage> {
        self.shared.read_all_blocking(from, max_count, filter)
    }

    fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    fn set_stream_metadata<'a>(&'a self, stream: &'a str, metadata: StreamMetadata) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.meta(stream, MetaOp::Set(metadata)))
    }

    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamMetadata>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            let idx = self.shared.read();
            crate::model::readable_metadata(stream, idx.streams.get(stream).map(|s| &s.rules))
        })
    }

    fn delete_stream<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.meta(stream, MetaOp::Delete(expected, mode)))
    }

    fn scavenge(&self) -> BoxFuture<'_, Result<ScavengeReport>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.tx.send(Request::Roll { reply }).map_err(|_| LogError::Closed)?;
            let active = rx.await.map_err(|_| LogError::Closed)??;
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || scavenge::scavenge_blocking(&shared, active))
                .await
                .map_err(|_| LogError::Closed)?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use crate::hash::KeyedHash;

    /// Ids from a counter (as a client might make them) must spread over
    /// the table's buckets: an earlier fold hash put them all in one.
    #[test]
    fn sequential_ids_spread_over_buckets() {
        let b = KeyedHash::default();
        for base in [0u128, 1 << 64, u128::from(u64::MAX) << 64, 0x0190_0000_0000_7000_8000_0000_0000_0000] {
            let buckets: std::collections::HashSet<u64> =
                (0..10_000u128).map(|i| b.hash_one(uuid::Uuid::from_u128(base.wrapping_add(i))) & 1023).collect();
            assert!(buckets.len() > 950, "only {} of 1024 buckets used for base {base:#x}", buckets.len());
            let big_endian_counter: std::collections::HashSet<u64> = (0..10_000u128)
                .map(|i| b.hash_one(uuid::Uuid::from_u128(base.wrapping_add(i << 120))) & 1023)
                .collect();
            assert!(big_endian_counter.len() > 200, "high-byte counters collapse ({})", big_endian_counter.len());
        }
    }
}
