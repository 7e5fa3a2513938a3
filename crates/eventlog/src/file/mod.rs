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
mod scratch;
pub mod sim;
mod spill;
mod state;
mod verify;
pub mod vfs;
mod writer;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

pub use self::verify::{VerifyOptions, VerifyReport, verify_log, verify_log_visiting, verify_log_with};
use self::vfs::Vfs;
use self::writer::{MetaOp, Request};
use crate::validate::validate_appends;
use crate::{
    AllPage, AppendResult, BoxFuture, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError,
    ReadFrom, RecordedEvent, Result, ScavengeReport, StreamAppend, StreamMetadata, validate_stream_name,
};

use self::state::Shared;
pub use self::state::{
    FileLogConfig, HEAD_FILE, LOCK_FILE, MAX_SEGMENT_SIZE, PUBLIC_KEY_FILE, public_key_hex, witness_file_name,
};

/// The embedded, crash-safe, tamper-evident event log.
pub struct FileLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Spills the index of sealed segments to the scratch file.
    spiller: Mutex<Option<JoinHandle<()>>>,
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
            frames = recovered.index.frame_count(),
            frames_in_memory = recovered.index.hot_frames.len(),
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
            spill: Default::default(),
            poisoned: Mutex::new(None),
            storage_full: Mutex::new(None),
            storage_full_flag: Default::default(),
            witness: config.witness_path(),
            fsync: crate::stats::Histogram::new(crate::stats::FSYNC_BOUNDS),
        });
        write_public_key(&*vfs, &dir, &config.signing_key);
        let (tx, rx) = mpsc::channel();
        let spiller = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pypes-log-spill".into())
                .spawn(move || spill::run_spiller(shared))
                .map_err(|e| LogError::io("starting the index spiller thread", e))?
        };
        let handle = match writer::start(shared.clone(), config, state, rules, recovered.ids, rx) {
            Ok(h) => h,
            Err(e) => {
                shared.spill.stop();
                let _ = spiller.join();
                return Err(e);
            }
        };
        Ok(FileLog {
            shared,
            tx,
            writer: Mutex::new(Some(handle)),
            spiller: Mutex::new(Some(spiller)),
            dir_lock: Mutex::new(Some(dir_lock)),
        })
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
        let spiller = self.spiller.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(spiller) = spiller {
            self.shared.spill.stop();
            let _ = spiller.join();
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
    fn fsync_latency(&self) -> Option<crate::stats::HistogramSnapshot> {
        Some(self.shared.fsync.snapshot())
    }

    fn index_stats(&self) -> Option<crate::IndexStats> {
        Some(self.shared.read().stats())
    }

    fn write_trouble(&self) -> Option<crate::WriteTrouble> {
        self.shared.storage_full().map(crate::WriteTrouble::StorageFull)
    }

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
            // The caller's span (an exported trace's append), for the
            // commit's span on the syncer thread.
            let span = tracing::Span::current();
            self.tx.send(Request::Append { appends, bytes, reply, span }).map_err(|_| LogError::Closed)?;
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
