//! The embedded file backend, pypes' default log: segment files of framed
//! records, one writer thread doing group commit with fdatasync, an
//! in-memory stream index rebuilt at open, torn-tail repair, a SHA-256 hash
//! chain with Ed25519-signed checkpoints, and scavenging. The byte layout
//! and the commit protocol are in docs/event-log-format.md.
//!
//! Architecture Invariant: an append is acknowledged only after the frame
//! holding it, and every frame before it, is fdatasync'd; readers see an
//! event only after that, because the index is updated after the sync.

pub mod format;
pub mod sim;
mod verify;
pub mod vfs;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey, Verifier};
use prost::Message;
use proto::log::{
    Batch, Checkpoint, DeleteKind, Entry, Frame, Redacted, StreamMetadataChange, entry, frame,
};
use proto::storage::StoredEvent;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};
use uuid::Uuid;

use self::format::{FrameParse, SEGMENT_HEADER_LEN};
pub use self::verify::{VerifyReport, verify_log};
use self::vfs::{StorageFile, Vfs};
use crate::model::{Deletion, StreamRules, validate_appends};
use crate::{
    AllPage, AppendResult, BoxFuture, Clock, DeleteMode, Direction, EventFilter, EventLog,
    ExpectedVersion, LogError, NewEvent, ReadFrom, RecordedEvent, Result, ScavengeReport,
    StreamAppend, StreamMetadata, SystemClock, validate_stream_name,
};

/// A sparse `$all` index entry is kept every this many batch frames.
const SPARSE_EVERY: u64 = 32;
/// Read size while scanning segments at open.
const SCAN_CHUNK: usize = 4 << 20;
/// Name of the file holding the latest signed checkpoint.
pub const HEAD_FILE: &str = "head.sig";
/// Name of the (informational) public key file; auditors pin their own copy.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

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
            max_group_bytes: 32 << 20,
            signing_key,
            clock: Arc::new(SystemClock),
            vfs: Arc::new(vfs::OsVfs),
        }
    }
}

/// Where a frame is: segment number, offset and length (header included).
#[derive(Debug, Clone, Copy)]
struct FrameLoc {
    segment: u32,
    offset: u32,
    len: u32,
}

#[derive(Default)]
struct FileStream {
    rules: StreamRules,
    /// Frame ordinal of every version from `base_version` on.
    frames: VecDeque<u64>,
    base_version: u64,
}

impl FileStream {
    fn frame_of(&self, version: u64) -> Option<u64> {
        version
            .checked_sub(self.base_version)
            .and_then(|i| self.frames.get(i as usize).copied())
    }
}

/// Recent event ids for idempotent retries, bounded to `cap` entries.
#[derive(Default)]
struct IdWindow {
    cap: usize,
    seq: u64,
    map: HashMap<Uuid, (Arc<str>, u64, u64)>,
    order: VecDeque<(Uuid, u64)>,
}

impl IdWindow {
    fn insert(&mut self, id: Uuid, stream: Arc<str>, version: u64) {
        if self.cap == 0 {
            return;
        }
        self.seq += 1;
        self.map.insert(id, (stream, version, self.seq));
        self.order.push_back((id, self.seq));
        while self.order.len() > self.cap {
            let (old, seq) = self.order.pop_front().expect("non-empty");
            if self.map.get(&old).is_some_and(|e| e.2 == seq) {
                self.map.remove(&old);
            }
        }
    }

    fn get(&self, id: &Uuid) -> Option<(Arc<str>, u64)> {
        self.map.get(id).map(|(s, v, _)| (s.clone(), *v))
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
    ids: IdWindow,
    next_position: u64,
}

impl Index {
    fn intern(&self, stream: &str) -> Arc<str> {
        self.streams
            .get_key_value(stream)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(stream))
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

    /// Applies one frame read at open. Checks numbering, never trusts it.
    fn apply_recovered(&mut self, frame: &Frame, loc: FrameLoc, path: &Path) -> Result<()> {
        let corrupt = |reason: String| LogError::Corrupt {
            file: path.to_path_buf(),
            offset: loc.offset as u64,
            reason,
        };
        let ordinal = self.frames.len() as u64;
        match &frame.body {
            Some(frame::Body::Batch(batch)) => {
                let mut first = None;
                for entry in &batch.entries {
                    let (id, stream, version, position) = match &entry.kind {
                        Some(entry::Kind::Event(bytes)) => {
                            let e = StoredEvent::decode(bytes.clone())
                                .map_err(|e| corrupt(format!("event does not decode: {e}")))?;
                            let id = Uuid::from_slice(&e.event_id)
                                .map_err(|_| corrupt("event id is not 16 bytes".into()))?;
                            (Some(id), e.stream, e.version, e.global_position)
                        }
                        Some(entry::Kind::Redacted(r)) => {
                            (None, r.stream.clone(), r.version, r.global_position)
                        }
                        None => return Err(corrupt("batch entry has no content".into())),
                    };
                    if position != self.next_position {
                        return Err(corrupt(format!(
                            "event at position {position}, expected {}",
                            self.next_position
                        )));
                    }
                    let name = self.intern(&stream);
                    let s = self.streams.entry(name.clone()).or_default();
                    if version != s.rules.next_version {
                        return Err(corrupt(format!(
                            "event of stream {stream:?} has version {version}, expected {}",
                            s.rules.next_version
                        )));
                    }
                    s.frames.push_back(ordinal);
                    s.rules.apply_append(1);
                    if let Some(id) = id {
                        self.ids.insert(id, name, version);
                    }
                    first.get_or_insert(position);
                    self.next_position += 1;
                }
                self.push_frame(loc, first);
            }
            Some(frame::Body::Metadata(bytes)) => {
                let change = StreamMetadataChange::decode(bytes.clone())
                    .map_err(|e| corrupt(format!("metadata change does not decode: {e}")))?;
                let name = self.intern(&change.stream);
                apply_metadata_change(&mut self.streams.entry(name).or_default().rules, &change);
                self.push_frame(loc, None);
            }
            Some(frame::Body::Checkpoint(_)) => {
                self.push_frame(loc, None);
            }
            None => return Err(corrupt("frame has no body".into())),
        }
        Ok(())
    }
}

fn metadata_change(
    stream: &str,
    rules: &StreamRules,
    delete: Option<DeleteMode>,
    now: i64,
) -> StreamMetadataChange {
    let m = rules.metadata;
    StreamMetadataChange {
        stream: stream.to_owned(),
        has_max_age: m.max_age_secs.is_some(),
        max_age_secs: m.max_age_secs.unwrap_or(0),
        has_max_count: m.max_count.is_some(),
        max_count: m.max_count.unwrap_or(0),
        has_truncate_before: m.truncate_before.is_some(),
        truncate_before: m.truncate_before.unwrap_or(0),
        delete: match delete {
            None => DeleteKind::None,
            Some(DeleteMode::Soft) => DeleteKind::Soft,
            Some(DeleteMode::Hard) => DeleteKind::Hard,
        } as i32,
        recorded_at_micros: now,
    }
}

fn apply_metadata_change(rules: &mut StreamRules, change: &StreamMetadataChange) {
    rules.metadata = StreamMetadata {
        max_age_secs: change.has_max_age.then_some(change.max_age_secs),
        max_count: change.has_max_count.then_some(change.max_count),
        truncate_before: change.has_truncate_before.then_some(change.truncate_before),
    };
    match DeleteKind::try_from(change.delete) {
        Ok(DeleteKind::Soft) => rules.apply_delete(DeleteMode::Soft),
        Ok(DeleteKind::Hard) => rules.apply_delete(DeleteMode::Hard),
        _ => {}
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

    fn read_frame(&self, file: &dyn StorageFile, loc: FrameLoc) -> Result<Frame> {
        let mut buf = vec![0u8; loc.len as usize];
        let path = || self.segment_path(loc.segment as u64);
        file.read_at(loc.offset as u64, &mut buf).map_err(|e| {
            LogError::io(
                format!("reading {} at offset {}", path().display(), loc.offset),
                e,
            )
        })?;
        match format::parse_frame_shared(&Bytes::from(buf)) {
            FrameParse::Frame { frame, .. } => Ok(frame),
            FrameParse::Incomplete => Err(LogError::Corrupt {
                file: path(),
                offset: loc.offset as u64,
                reason: "frame shorter than indexed".into(),
            }),
            FrameParse::Invalid(reason) => Err(LogError::Corrupt {
                file: path(),
                offset: loc.offset as u64,
                reason,
            }),
        }
    }

    /// The stored event of `stream` at `version` in a frame, if not redacted.
    fn event_in_frame(
        &self,
        frame: &Frame,
        stream: &str,
        version: u64,
        loc: FrameLoc,
    ) -> Result<Option<StoredEvent>> {
        let Some(frame::Body::Batch(batch)) = &frame.body else {
            return Ok(None);
        };
        for e in &batch.entries {
            if let Some(entry::Kind::Event(bytes)) = &e.kind {
                let stored =
                    StoredEvent::decode(bytes.clone()).map_err(|err| LogError::Corrupt {
                        file: self.segment_path(loc.segment as u64),
                        offset: loc.offset as u64,
                        reason: format!("event does not decode: {err}"),
                    })?;
                if stored.stream == stream && stored.version == version {
                    return Ok(Some(stored));
                }
            }
        }
        Ok(None)
    }

    fn to_recorded(&self, stored: StoredEvent, loc: FrameLoc) -> Result<RecordedEvent> {
        let stream: Arc<str> = Arc::from(stored.stream.as_str());
        RecordedEvent::from_stored(stored, stream).map_err(|reason| LogError::Corrupt {
            file: self.segment_path(loc.segment as u64),
            offset: loc.offset as u64,
            reason,
        })
    }

    fn read_stream_blocking(
        &self,
        stream: &str,
        from: ReadFrom,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        validate_stream_name(stream)?;
        let mut out = Vec::new();
        let (rules, mut versions) = {
            let idx = self.read();
            let s = idx
                .streams
                .get(stream)
                .ok_or_else(|| LogError::StreamNotFound {
                    stream: stream.to_owned(),
                })?;
            s.rules.check_readable(stream)?;
            (s.rules.clone(), s.rules.read_range(from, direction))
        };
        let now = self.clock.now_micros();
        let mut cached: Option<(u64, Frame)> = None;
        while out.len() < max {
            let want = (max - out.len()).min(1024);
            let batch: Vec<(u64, u64, FrameLoc, Arc<dyn StorageFile>)> = {
                let idx = self.read();
                let Some(s) = idx.streams.get(stream) else {
                    break;
                };
                versions
                    .by_ref()
                    .take(want)
                    .filter_map(|v| {
                        let ordinal = s.frame_of(v)?;
                        let loc = idx.frames[ordinal as usize];
                        Some((v, ordinal, loc, idx.segments[&(loc.segment as u64)].clone()))
                    })
                    .collect()
            };
            if batch.is_empty() {
                break;
            }
            for (version, ordinal, loc, file) in batch {
                if cached.as_ref().is_none_or(|(o, _)| *o != ordinal) {
                    cached = Some((ordinal, self.read_frame(&*file, loc)?));
                }
                let frame = &cached.as_ref().expect("just set").1;
                if let Some(stored) = self.event_in_frame(frame, stream, version, loc)?
                    && rules.is_visible(version, stored.recorded_at_micros, now)
                {
                    out.push(self.to_recorded(stored, loc)?);
                }
            }
        }
        Ok(out)
    }

    fn read_all_blocking(&self, from: u64, max: usize, filter: &EventFilter) -> Result<AllPage> {
        let (head, end_ordinal, mut ordinal) = {
            let idx = self.read();
            let k = idx.sparse.partition_point(|&(p, _)| p <= from);
            let start = if k == 0 { 0 } else { idx.sparse[k - 1].1 };
            (idx.next_position, idx.frames.len() as u64, start)
        };
        let mut page = AllPage {
            events: Vec::new(),
            next_position: from,
            head,
        };
        if from >= head || max == 0 {
            return Ok(page);
        }
        let now = self.clock.now_micros();
        while ordinal < end_ordinal {
            let chunk: Vec<(FrameLoc, Arc<dyn StorageFile>)> = {
                let idx = self.read();
                (ordinal..end_ordinal.min(ordinal + 64))
                    .map(|o| {
                        let loc = idx.frames[o as usize];
                        (loc, idx.segments[&(loc.segment as u64)].clone())
                    })
                    .collect()
            };
            ordinal += chunk.len() as u64;
            let mut candidates = Vec::new();
            for (loc, file) in chunk {
                let frame = self.read_frame(&*file, loc)?;
                let Some(frame::Body::Batch(batch)) = frame.body else {
                    continue;
                };
                for e in batch.entries {
                    let Some(entry::Kind::Event(bytes)) = e.kind else {
                        continue;
                    };
                    let stored = StoredEvent::decode(bytes).map_err(|err| LogError::Corrupt {
                        file: self.segment_path(loc.segment as u64),
                        offset: loc.offset as u64,
                        reason: format!("event does not decode: {err}"),
                    })?;
                    if stored.global_position < from || stored.global_position >= head {
                        continue;
                    }
                    if filter.matches(&stored.stream, &stored.event_type) {
                        candidates.push((stored, loc));
                    }
                }
            }
            let idx = self.read();
            for (stored, loc) in candidates {
                let visible = idx.streams.get(stored.stream.as_str()).is_some_and(|s| {
                    s.rules
                        .is_visible(stored.version, stored.recorded_at_micros, now)
                });
                if visible {
                    let position = stored.global_position;
                    page.events.push(self.to_recorded(stored, loc)?);
                    if page.events.len() >= max {
                        page.next_position = position + 1;
                        return Ok(page);
                    }
                }
            }
        }
        page.next_position = head;
        Ok(page)
    }
}

enum MetaOp {
    Set(StreamMetadata),
    Delete(ExpectedVersion, DeleteMode),
}

enum Request {
    Append {
        appends: Vec<StreamAppend>,
        reply: oneshot::Sender<Result<Vec<AppendResult>>>,
    },
    Meta {
        stream: String,
        op: MetaOp,
        reply: oneshot::Sender<Result<()>>,
    },
    Roll {
        reply: oneshot::Sender<Result<u64>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown,
}

impl Request {
    fn approx_bytes(&self) -> usize {
        match self {
            Request::Append { appends, .. } => appends
                .iter()
                .flat_map(|a| &a.events)
                .map(|e| {
                    e.payload.len()
                        + 128
                        + e.sealed_fields
                            .iter()
                            .map(|f| f.ciphertext.len() + 64)
                            .sum::<usize>()
                })
                .sum(),
            _ => 64,
        }
    }
}

/// The embedded, crash-safe, tamper-evident event log.
pub struct FileLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl FileLog {
    /// Opens (or creates) the log in `dir`: scans every segment, rebuilds the
    /// index, repairs a torn tail and refuses any other corruption.
    pub fn open(dir: impl AsRef<Path>, config: FileLogConfig) -> Result<FileLog> {
        let dir = dir.as_ref().to_path_buf();
        if config.segment_size > u32::MAX as u64 || config.segment_size < 4096 {
            return Err(LogError::InvalidBatch {
                reason: "segment_size must be between 4 KiB and 4 GiB".into(),
            });
        }
        let vfs = config.vfs.clone();
        let segments_dir = dir.join("segments");
        vfs.create_dir_all(&segments_dir)
            .map_err(|e| LogError::io(format!("creating {}", segments_dir.display()), e))?;
        let started = Instant::now();
        let recovered = recover(&dir, &segments_dir, &config)?;
        let (head_tx, _) = watch::channel(recovered.index.next_position);
        info!(
            dir = %dir.display(),
            events = recovered.index.next_position,
            frames = recovered.frame_count,
            streams = recovered.index.streams.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "event log opened"
        );
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            segments_dir,
            vfs: vfs.clone(),
            clock: config.clock.clone(),
            index: RwLock::new(recovered.index),
            head: head_tx,
            scavenging: Mutex::new(()),
        });
        let pub_path = dir.join(PUBLIC_KEY_FILE);
        if !vfs.exists(&pub_path) {
            let hex: String = config
                .signing_key
                .verifying_key()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let written = vfs.open(&pub_path, true).and_then(|f| {
                f.write_at(0, format!("{hex}\n").as_bytes())
                    .and_then(|_| f.sync_data())
            });
            if let Err(e) = written {
                warn!(error = %e, "could not write the public key file");
            }
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            active_no: recovered.active_no,
            active: recovered.active,
            active_len: recovered.active_len,
            chain: recovered.chain,
            frame_count: recovered.frame_count,
            next_position: shared.read().next_position,
            frames_since_checkpoint: recovered.frames_since_checkpoint,
            last_checkpoint: Instant::now(),
            config: config.clone(),
            poisoned: None,
        };
        let handle = std::thread::Builder::new()
            .name("pypes-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::io("starting the writer thread", e))?;
        Ok(FileLog {
            shared,
            tx,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Writes a signed checkpoint now (if anything was written since the
    /// last one) and waits until it is durable.
    pub async fn checkpoint(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Checkpoint { reply })
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// Stops the writer after a final checkpoint. Idempotent; also done on drop.
    pub fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = self.tx.send(Request::Shutdown);
            let _ = handle.join();
        }
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    async fn meta(&self, stream: &str, op: MetaOp) -> Result<()> {
        validate_stream_name(stream)?;
        if let MetaOp::Set(m) = &op {
            m.validate(stream)?;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Meta {
                stream: stream.to_owned(),
                op,
                reply,
            })
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.close();
    }
}

impl EventLog for FileLog {
    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<AppendResult>>> {
        Box::pin(async move {
            validate_appends(&appends)?;
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Request::Append { appends, reply })
                .map_err(|_| LogError::Closed)?;
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
            tokio::task::spawn_blocking(move || {
                shared.read_stream_blocking(&stream, from, direction, max_count)
            })
            .await
            .map_err(|_| LogError::Closed)?
        })
    }

    fn read_all<'a>(
        &'a self,
        from: u64,
        max_count: usize,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<AllPage>> {
        let shared = self.shared.clone();
        let filter = filter.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || shared.read_all_blocking(from, max_count, &filter))
                .await
                .map_err(|_| LogError::Closed)?
        })
    }

    fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    fn set_stream_metadata<'a>(
        &'a self,
        stream: &'a str,
        metadata: StreamMetadata,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.meta(stream, MetaOp::Set(metadata)))
    }

    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamMetadata>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            let idx = self.shared.read();
            match idx.streams.get(stream) {
                Some(s) if s.rules.deletion == Deletion::Hard => Err(LogError::StreamDeleted {
                    stream: stream.to_owned(),
                }),
                Some(s) => Ok(s.rules.metadata),
                None => Ok(StreamMetadata::default()),
            }
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
            self.tx
                .send(Request::Roll { reply })
                .map_err(|_| LogError::Closed)?;
            let active = rx.await.map_err(|_| LogError::Closed)??;
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || scavenge_blocking(&shared, active))
                .await
                .map_err(|_| LogError::Closed)?
        })
    }
}

/// Rewrites every segment before `active` without the bytes of events that
/// are hidden now: each becomes a `Redacted` stub (digest, stream, version,
/// position), so numbering and the hash chain survive.
fn scavenge_blocking(shared: &Shared, active: u64) -> Result<ScavengeReport> {
    let _guard = shared.scavenging.lock().unwrap_or_else(|e| e.into_inner());
    let now = shared.clock.now_micros();
    let mut report = ScavengeReport::default();
    let numbers: Vec<u64> = shared
        .read()
        .segments
        .range(..active)
        .map(|(n, _)| *n)
        .collect();
    for number in numbers {
        let (file, ordinals) = {
            let idx = shared.read();
            let start = idx.frames.partition_point(|l| (l.segment as u64) < number);
            let end = idx.frames.partition_point(|l| (l.segment as u64) <= number);
            (idx.segments[&number].clone(), start..end)
        };
        let mut frames = Vec::with_capacity(ordinals.len());
        let mut changed = 0u64;
        let mut reclaimed = 0u64;
        for ordinal in ordinals.clone() {
            let loc = shared.read().frames[ordinal];
            let mut frame = shared.read_frame(&*file, loc)?;
            if let Some(frame::Body::Batch(batch)) = &mut frame.body {
                let idx = shared.read();
                for e in &mut batch.entries {
                    let Some(entry::Kind::Event(bytes)) = &e.kind else {
                        continue;
                    };
                    let stored =
                        StoredEvent::decode(bytes.clone()).map_err(|err| LogError::Corrupt {
                            file: shared.segment_path(number),
                            offset: loc.offset as u64,
                            reason: format!("event does not decode: {err}"),
                        })?;
                    let dead = idx.streams.get(stored.stream.as_str()).is_some_and(|s| {
                        s.rules
                            .is_reclaimable(stored.version, stored.recorded_at_micros, now)
                    });
                    if dead {
                        reclaimed += bytes.len() as u64;
                        changed += 1;
                        e.kind = Some(entry::Kind::Redacted(Redacted {
                            digest: Bytes::copy_from_slice(&format::sha256(bytes)),
                            stream: stored.stream,
                            version: stored.version,
                            global_position: stored.global_position,
                        }));
                    }
                }
            }
            frames.push(frame);
        }
        if changed == 0 {
            continue;
        }
        let final_path = shared.segment_path(number);
        let tmp_path = shared
            .segments_dir
            .join(format!("{}.tmp", format::segment_file_name(number)));
        let io = |what: &str, e| LogError::io(format!("{what} {}", tmp_path.display()), e);
        let mut buf = format::encode_segment_header(number).to_vec();
        let mut locs = Vec::with_capacity(frames.len());
        for frame in &frames {
            let offset = buf.len();
            let len = format::encode_frame(frame, &mut buf);
            locs.push(FrameLoc {
                segment: number as u32,
                offset: offset as u32,
                len: len as u32,
            });
        }
        let new_file = shared
            .vfs
            .open(&tmp_path, true)
            .map_err(|e| io("creating", e))?;
        new_file.set_len(0).map_err(|e| io("truncating", e))?;
        new_file.write_at(0, &buf).map_err(|e| io("writing", e))?;
        new_file.sync_data().map_err(|e| io("syncing", e))?;
        shared
            .vfs
            .rename(&tmp_path, &final_path)
            .map_err(|e| io("renaming", e))?;
        shared
            .vfs
            .sync_dir(&shared.segments_dir)
            .map_err(|e| io("syncing the directory of", e))?;
        let mut idx = shared.write();
        idx.segments.insert(number, new_file);
        for (ordinal, loc) in ordinals.zip(locs) {
            idx.frames[ordinal] = loc;
        }
        drop(idx);
        report.events_removed += changed;
        report.bytes_reclaimed += reclaimed;
        report.segments_rewritten += 1;
        info!(
            segment = number,
            events = changed,
            bytes = reclaimed,
            "segment scavenged"
        );
    }
    Ok(report)
}

struct Recovered {
    index: Index,
    active_no: u64,
    active: Arc<dyn StorageFile>,
    active_len: u64,
    chain: [u8; 32],
    frame_count: u64,
    frames_since_checkpoint: u64,
}

fn create_segment(vfs: &dyn Vfs, segments_dir: &Path, number: u64) -> Result<Arc<dyn StorageFile>> {
    let path = segments_dir.join(format::segment_file_name(number));
    let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
    let attempt = || -> Result<Arc<dyn StorageFile>> {
        let file = vfs.open(&path, true).map_err(|e| io("creating", e))?;
        file.set_len(0).map_err(|e| io("truncating", e))?;
        file.write_at(0, &format::encode_segment_header(number))
            .map_err(|e| io("writing the header of", e))?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        vfs.sync_dir(segments_dir)
            .map_err(|e| io("syncing the directory of", e))?;
        Ok(file)
    };
    attempt().inspect_err(|_| {
        let _ = vfs.remove(&path);
    })
}

/// Sequential reader over one segment file, in large chunks.
struct Scanner<'a> {
    file: &'a dyn StorageFile,
    len: u64,
    buf: Bytes,
    buf_start: u64,
}

impl<'a> Scanner<'a> {
    /// The bytes from `offset` to at least `offset + need` (fewer at EOF).
    fn at(&mut self, offset: u64, need: usize) -> std::io::Result<Bytes> {
        let have_end = self.buf_start + self.buf.len() as u64;
        if offset < self.buf_start || offset + need as u64 > have_end {
            let size = (need.max(SCAN_CHUNK) as u64).min(self.len.saturating_sub(offset)) as usize;
            let mut v = vec![0u8; size];
            self.file.read_at(offset, &mut v)?;
            self.buf = Bytes::from(v);
            self.buf_start = offset;
        }
        let start = (offset - self.buf_start) as usize;
        Ok(self.buf.slice(start..))
    }
}

fn recover(dir: &Path, segments_dir: &Path, config: &FileLogConfig) -> Result<Recovered> {
    let vfs = &*config.vfs;
    let names = vfs
        .list(segments_dir)
        .map_err(|e| LogError::io(format!("listing {}", segments_dir.display()), e))?;
    let mut numbers = Vec::new();
    for name in &names {
        if name.ends_with(".tmp") {
            // An interrupted scavenge; the original segment is intact.
            let _ = vfs.remove(&segments_dir.join(name));
        } else if let Some(n) = format::parse_segment_file_name(name) {
            numbers.push(n);
        } else {
            warn!(file = %name, "ignoring unexpected file in the segments directory");
        }
    }
    numbers.sort_unstable();
    if numbers.is_empty() {
        create_segment(vfs, segments_dir, 0)?;
        numbers.push(0);
    }
    for (i, n) in numbers.iter().enumerate() {
        if *n != numbers[0] + i as u64 || numbers[0] != 0 {
            return Err(LogError::Corrupt {
                file: segments_dir.join(format::segment_file_name(numbers[0] + i as u64)),
                offset: 0,
                reason: "segment file is missing".into(),
            });
        }
    }
    let mut index = Index {
        ids: IdWindow {
            cap: config.idempotency_window,
            ..IdWindow::default()
        },
        ..Index::default()
    };
    let mut chain = format::GENESIS_CHAIN;
    let mut frame_count = 0u64;
    let mut frames_since_checkpoint = 0u64;
    let last = *numbers.last().expect("at least one segment");
    let mut active_len = SEGMENT_HEADER_LEN;
    for &number in &numbers {
        let path = segments_dir.join(format::segment_file_name(number));
        let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
        let file = vfs.open(&path, false).map_err(|e| io("opening", e))?;
        let len = file.len().map_err(|e| io("reading the length of", e))?;
        let is_last = number == last;
        let mut header = vec![0u8; (SEGMENT_HEADER_LEN.min(len)) as usize];
        file.read_at(0, &mut header)
            .map_err(|e| io("reading the header of", e))?;
        if let Err(reason) = format::check_segment_header(&header, number) {
            if is_last && len <= SEGMENT_HEADER_LEN {
                // Created but never used (a crash while rolling): rewrite it.
                warn!(file = %path.display(), %reason, "rewriting the header of an unused last segment");
                file.set_len(0).map_err(|e| io("truncating", e))?;
                file.write_at(0, &format::encode_segment_header(number))
                    .map_err(|e| io("writing", e))?;
                file.sync_data().map_err(|e| io("syncing", e))?;
            } else {
                return Err(LogError::Corrupt {
                    file: path,
                    offset: 0,
                    reason,
                });
            }
        }
        if number > u32::MAX as u64 {
            return Err(LogError::Corrupt {
                file: path,
                offset: 0,
                reason: "too many segments".into(),
            });
        }
        let mut scanner = Scanner {
            file: &*file,
            len: len.max(SEGMENT_HEADER_LEN),
            buf: Bytes::new(),
            buf_start: 0,
        };
        let mut offset = SEGMENT_HEADER_LEN;
        while offset < len {
            let bytes = scanner
                .at(offset, format::FRAME_HEADER_LEN)
                .map_err(|e| io("reading", e))?;
            let need = format::peek_frame_len(&bytes).unwrap_or(format::FRAME_HEADER_LEN);
            let bytes = scanner.at(offset, need).map_err(|e| io("reading", e))?;
            let failure = match format::parse_frame_shared(&bytes) {
                FrameParse::Frame {
                    frame,
                    len: frame_len,
                } => {
                    let loc = FrameLoc {
                        segment: number as u32,
                        offset: offset as u32,
                        len: frame_len as u32,
                    };
                    index.apply_recovered(&frame, loc, &path)?;
                    chain.copy_from_slice(&frame.chain);
                    frame_count += 1;
                    frames_since_checkpoint =
                        if matches!(frame.body, Some(frame::Body::Checkpoint(_))) {
                            0
                        } else {
                            frames_since_checkpoint + 1
                        };
                    offset += frame_len as u64;
                    continue;
                }
                FrameParse::Incomplete => "frame extends past the end of the file".to_owned(),
                FrameParse::Invalid(reason) => reason,
            };
            if !is_last {
                return Err(LogError::Corrupt {
                    file: path,
                    offset,
                    reason: failure,
                });
            }
            repair_tail(&*file, &path, offset, len, &failure)?;
            break;
        }
        if is_last {
            active_len = offset.max(SEGMENT_HEADER_LEN);
        }
        index.segments.insert(number, file);
    }
    check_signed_head(dir, config, frame_count)?;
    let active = index.segments[&last].clone();
    Ok(Recovered {
        index,
        active_no: last,
        active,
        active_len,
        chain,
        frame_count,
        frames_since_checkpoint,
    })
}

/// Decides whether the bad bytes at `offset` of the last segment are a torn
/// final write group (truncate) or corruption of acknowledged data (refuse).
/// A valid frame after `offset` that belongs to a later write group proves
/// that the bad frame was synced before, so it is corruption.
fn repair_tail(
    file: &dyn StorageFile,
    path: &Path,
    offset: u64,
    len: u64,
    failure: &str,
) -> Result<()> {
    let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
    let mut rest = vec![0u8; (len - offset) as usize];
    file.read_at(offset, &mut rest)
        .map_err(|e| io("reading the tail of", e))?;
    let magic = format::FRAME_MAGIC.to_le_bytes();
    let mut at = 1;
    while at + format::FRAME_HEADER_LEN <= rest.len() {
        if rest[at..at + 4] == magic
            && let FrameParse::Frame { frame, .. } = format::parse_frame(&rest[at..])
            && frame.group_start > offset
        {
            return Err(LogError::Corrupt {
                file: path.to_path_buf(),
                offset,
                reason: format!(
                    "{failure}; a valid frame of a later write group follows at offset {}, so this is not a torn tail",
                    offset + at as u64
                ),
            });
        }
        at += 1;
    }
    warn!(file = %path.display(), offset, dropped_bytes = len - offset, reason = failure, "repairing torn tail");
    file.set_len(offset).map_err(|e| io("truncating", e))?;
    file.sync_data().map_err(|e| io("syncing", e))?;
    Ok(())
}

/// Refuses to open a log shorter than its latest signed head: the head is
/// written only after its checkpoint frame is durable, so a shorter log was
/// truncated, not torn.
fn check_signed_head(dir: &Path, config: &FileLogConfig, frame_count: u64) -> Result<()> {
    let path = dir.join(HEAD_FILE);
    if !config.vfs.exists(&path) {
        return Ok(());
    }
    let corrupt = |reason: String| LogError::Corrupt {
        file: path.clone(),
        offset: 0,
        reason,
    };
    let file = config
        .vfs
        .open(&path, false)
        .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
    let len = file
        .len()
        .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
    let mut bytes = vec![0u8; len as usize];
    file.read_at(0, &mut bytes)
        .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
    let head = format::decode_head(&bytes).map_err(corrupt)?;
    let message = format::checkpoint_message(
        &head.chain,
        head.frame_count,
        head.next_position,
        head.signed_at_micros,
    );
    let signature = ed25519_dalek::Signature::from_slice(&head.signature)
        .map_err(|e| corrupt(format!("bad signature: {e}")))?;
    config
        .signing_key
        .verifying_key()
        .verify(&message, &signature)
        .map_err(|_| corrupt("signature does not verify with this log's key".into()))?;
    if head.frame_count >= frame_count {
        return Err(corrupt(format!(
            "the signed head covers {} frames but the log holds only {frame_count}: the log was truncated",
            head.frame_count + 1
        )));
    }
    Ok(())
}

/// An event found by id: stream, version, position, content.
type EarlierEvent = (Arc<str>, u64, u64, NewEvent);

/// The writer thread: group commit of everything queued.
struct Writer {
    shared: Arc<Shared>,
    active_no: u64,
    active: Arc<dyn StorageFile>,
    active_len: u64,
    chain: [u8; 32],
    frame_count: u64,
    next_position: u64,
    frames_since_checkpoint: u64,
    last_checkpoint: Instant,
    config: FileLogConfig,
    poisoned: Option<String>,
}

#[derive(Default)]
struct StagedStream {
    rules: StreamRules,
    new_frames: Vec<u64>,
}

/// One write group being built: frames encoded into `buf`, index changes
/// staged until the group is durable.
struct Txn {
    buf: Vec<u8>,
    group_start: u64,
    chain: [u8; 32],
    frame_count: u64,
    next_position: u64,
    now: i64,
    segment: u32,
    frames: Vec<(FrameLoc, Option<u64>)>,
    streams: HashMap<Arc<str>, StagedStream>,
    ids: HashMap<Uuid, (Arc<str>, u64, u64, NewEvent)>,
    new_ids: Vec<(Uuid, Arc<str>, u64)>,
    checkpoint: Option<Checkpoint>,
}

impl Txn {
    fn stream<'a>(&'a mut self, idx: &Index, name: &str) -> (&'a mut StagedStream, Arc<str>) {
        let key = self
            .streams
            .get_key_value(name)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| idx.intern(name));
        let staged = self
            .streams
            .entry(key.clone())
            .or_insert_with(|| StagedStream {
                rules: idx
                    .streams
                    .get(name)
                    .map(|s| s.rules.clone())
                    .unwrap_or_default(),
                new_frames: Vec::new(),
            });
        (staged, key)
    }

    fn rules(&self, idx: &Index, name: &str) -> StreamRules {
        self.streams
            .get(name)
            .map(|s| s.rules.clone())
            .or_else(|| idx.streams.get(name).map(|s| s.rules.clone()))
            .unwrap_or_default()
    }

    /// Encodes a frame at the end of the group; returns its ordinal.
    fn add_frame(&mut self, body: frame::Body, first_position: Option<u64>) -> Result<u64> {
        let mut frame = Frame {
            group_start: self.group_start,
            chain: Bytes::new(),
            body: Some(body),
        };
        let digest =
            format::frame_digest(&frame).map_err(|reason| LogError::InvalidBatch { reason })?;
        let chain = format::chain_next(&self.chain, &digest);
        frame.chain = Bytes::copy_from_slice(&chain);
        if frame.encoded_len() > format::MAX_FRAME_BODY {
            return Err(LogError::InvalidBatch {
                reason: "append is too large for one frame".into(),
            });
        }
        let offset = self.group_start + self.buf.len() as u64;
        let len = format::encode_frame(&frame, &mut self.buf);
        self.chain = chain;
        let ordinal = self.frame_count;
        self.frame_count += 1;
        self.frames.push((
            FrameLoc {
                segment: self.segment,
                offset: offset as u32,
                len: len as u32,
            },
            first_position,
        ));
        Ok(ordinal)
    }
}

enum Reply {
    Append(
        oneshot::Sender<Result<Vec<AppendResult>>>,
        Result<Vec<AppendResult>>,
    ),
    Meta(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn fail(self, error: impl Fn() -> LogError) -> Reply {
        match self {
            Reply::Append(tx, Ok(_)) => Reply::Append(tx, Err(error())),
            Reply::Meta(tx, Ok(())) => Reply::Meta(tx, Err(error())),
            other => other,
        }
    }

    fn send(self) {
        match self {
            Reply::Append(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Meta(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut bytes = first.approx_bytes();
            let mut group = vec![first];
            while bytes < self.config.max_group_bytes {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.approx_bytes();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            if self.process(group) {
                return;
            }
        }
        // Every sender is gone: finish with a checkpoint like a shutdown.
        self.process(vec![Request::Shutdown]);
    }

    /// Handles one group; returns true when the writer should stop.
    fn process(&mut self, group: Vec<Request>) -> bool {
        let mut data = Vec::new();
        let mut rolls = Vec::new();
        let mut checkpoints = Vec::new();
        let mut shutdown = false;
        for r in group {
            match r {
                Request::Append { .. } | Request::Meta { .. } => data.push(r),
                Request::Roll { reply } => rolls.push(reply),
                Request::Checkpoint { reply } => checkpoints.push(reply),
                Request::Shutdown => shutdown = true,
            }
        }
        let force_checkpoint = (!checkpoints.is_empty() || shutdown) && self.poisoned.is_none();
        let result = self.commit(data, force_checkpoint);
        for reply in checkpoints {
            let _ = reply.send(result.as_ref().map(|_| ()).map_err(clone_error));
        }
        for reply in rolls {
            let r = match &self.poisoned {
                Some(reason) => Err(LogError::Poisoned {
                    reason: reason.clone(),
                }),
                None => self.roll().map(|_| self.active_no),
            };
            let _ = reply.send(r);
        }
        shutdown
    }

    /// Stages, writes, syncs and publishes one group. `Err` only when the
    /// group's write failed (every request in it has been answered).
    fn commit(&mut self, data: Vec<Request>, force_checkpoint: bool) -> Result<()> {
        if let Some(reason) = self.poisoned.clone() {
            for r in data {
                reply_err(
                    r,
                    LogError::Poisoned {
                        reason: reason.clone(),
                    },
                );
            }
            return Err(LogError::Poisoned { reason });
        }
        if self.active_len >= self.config.segment_size
            && let Err(e) = self.roll()
        {
            for r in data {
                reply_err(r, clone_error(&e));
            }
            return Err(e);
        }
        let shared = self.shared.clone();
        let mut txn = Txn {
            buf: Vec::new(),
            group_start: self.active_len,
            chain: self.chain,
            frame_count: self.frame_count,
            next_position: self.next_position,
            now: self.config.clock.now_micros(),
            segment: self.active_no as u32,
            frames: Vec::new(),
            streams: HashMap::new(),
            ids: HashMap::new(),
            new_ids: Vec::new(),
            checkpoint: None,
        };
        let mut replies = Vec::with_capacity(data.len());
        {
            let idx = shared.read();
            for r in data {
                match r {
                    Request::Append { appends, reply } => {
                        let result = self.stage_append(&idx, &mut txn, appends);
                        replies.push(Reply::Append(reply, result));
                    }
                    Request::Meta { stream, op, reply } => {
                        let result = stage_meta(&idx, &mut txn, &stream, op);
                        replies.push(Reply::Meta(reply, result));
                    }
                    _ => unreachable!("only data requests are committed"),
                }
            }
        }
        let new_frames = txn.frame_count - self.frame_count;
        let due = self.frames_since_checkpoint + new_frames >= self.config.checkpoint_every_frames
            || self.last_checkpoint.elapsed() >= self.config.checkpoint_interval;
        if (new_frames > 0 && due)
            || (force_checkpoint && self.frames_since_checkpoint + new_frames > 0)
        {
            self.stage_checkpoint(&mut txn);
        }
        if txn.buf.is_empty() {
            replies.into_iter().for_each(Reply::send);
            return Ok(());
        }
        let written = self
            .active
            .write_at(txn.group_start, &txn.buf)
            .and_then(|_| self.active.sync_data())
            .map_err(|e| LogError::io(format!("appending to segment {}", self.active_no), e));
        if let Err(e) = written {
            // Nothing of this group was acknowledged. Cut it off so the next
            // group starts on a clean tail; if that fails too, stop writing.
            let rolled_back = self
                .active
                .set_len(txn.group_start)
                .and_then(|_| self.active.sync_data());
            if let Err(e2) = rolled_back {
                let reason = format!("{e}; rolling back failed: {e2}");
                warn!(%reason, "event log poisoned");
                self.poisoned = Some(reason);
            } else {
                warn!(error = %e, "append failed; group rolled back");
            }
            for r in replies {
                r.fail(|| clone_error(&e)).send();
            }
            return Err(e);
        }
        // Durable: publish to readers, then acknowledge.
        {
            let mut idx = shared.write();
            for (loc, first) in &txn.frames {
                idx.push_frame(*loc, *first);
            }
            for (name, staged) in txn.streams.drain() {
                let s = idx.streams.entry(name).or_default();
                s.rules = staged.rules;
                s.frames.extend(staged.new_frames);
            }
            for (id, stream, version) in txn.new_ids.drain(..) {
                idx.ids.insert(id, stream, version);
            }
            idx.next_position = txn.next_position;
        }
        self.shared.head.send_replace(txn.next_position);
        self.active_len = txn.group_start + txn.buf.len() as u64;
        self.chain = txn.chain;
        self.frames_since_checkpoint += txn.frame_count - self.frame_count;
        self.frame_count = txn.frame_count;
        self.next_position = txn.next_position;
        replies.into_iter().for_each(Reply::send);
        if let Some(cp) = txn.checkpoint {
            self.frames_since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
            self.write_head(&cp);
        }
        Ok(())
    }

    fn stage_checkpoint(&self, txn: &mut Txn) {
        let message =
            format::checkpoint_message(&txn.chain, txn.frame_count, txn.next_position, txn.now);
        let signature = self.config.signing_key.sign(&message);
        let cp = Checkpoint {
            chain: Bytes::copy_from_slice(&txn.chain),
            frame_count: txn.frame_count,
            next_position: txn.next_position,
            signed_at_micros: txn.now,
            signature: Bytes::copy_from_slice(&signature.to_bytes()),
        };
        if txn
            .add_frame(frame::Body::Checkpoint(cp.encode_to_vec().into()), None)
            .is_ok()
        {
            txn.checkpoint = Some(cp);
        }
    }

    /// Replaces `head.sig` atomically (write temp, sync, rename, sync dir).
    fn write_head(&self, cp: &Checkpoint) {
        let vfs = &self.shared.vfs;
        let path = self.shared.dir.join(HEAD_FILE);
        let tmp = self.shared.dir.join(format!("{HEAD_FILE}.tmp"));
        let bytes = format::encode_head(cp);
        let result = vfs.open(&tmp, true).and_then(|f| {
            f.set_len(0)?;
            f.write_at(0, &bytes)?;
            f.sync_data()?;
            vfs.rename(&tmp, &path)?;
            vfs.sync_dir(&self.shared.dir)
        });
        if let Err(e) = result {
            warn!(error = %e, "could not update the signed head; the checkpoint frame in the log still stands");
        }
    }

    fn roll(&mut self) -> Result<()> {
        let number = self.active_no + 1;
        let file = create_segment(&*self.shared.vfs, &self.shared.segments_dir, number)?;
        self.shared.write().segments.insert(number, file.clone());
        self.active = file;
        self.active_no = number;
        self.active_len = SEGMENT_HEADER_LEN;
        Ok(())
    }

    fn stage_append(
        &self,
        idx: &Index,
        txn: &mut Txn,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>> {
        let mut repeats = Vec::new();
        for a in &appends {
            if let Some(r) = self.check_idempotent(idx, txn, a)? {
                repeats.push(r);
            }
        }
        if !repeats.is_empty() {
            if repeats.len() == appends.len() {
                return Ok(repeats);
            }
            return Err(LogError::EventIdReused {
                id: appends[0].events[0].id,
                detail: "a multi-stream append partly repeats an earlier append".into(),
            });
        }
        for a in &appends {
            txn.rules(idx, &a.stream)
                .check_expected(&a.stream, a.expected)?;
        }
        // Build the frame from read-only views first; stage only once the
        // frame is accepted, so a refused append leaves the group untouched.
        let now = txn.now;
        let first_position = txn.next_position;
        let mut position = first_position;
        let mut entries = Vec::new();
        let mut results = Vec::with_capacity(appends.len());
        let mut planned = Vec::with_capacity(appends.len());
        for a in appends {
            let first_version = txn.rules(idx, &a.stream).next_version;
            let start = position;
            for (i, event) in a.events.iter().enumerate() {
                let stored = event.to_stored(&a.stream, first_version + i as u64, position, now);
                entries.push(Entry {
                    kind: Some(entry::Kind::Event(stored.encode_to_vec().into())),
                });
                position += 1;
            }
            let count = a.events.len() as u64;
            results.push(AppendResult {
                next_expected_version: first_version + count - 1,
                first_position: start,
                last_position: position - 1,
            });
            planned.push((a, first_version, start));
        }
        let ordinal = txn.add_frame(frame::Body::Batch(Batch { entries }), Some(first_position))?;
        txn.next_position = position;
        for (a, first_version, start) in planned {
            let count = a.events.len() as u64;
            let (staged, name) = txn.stream(idx, &a.stream);
            staged.rules.apply_append(count);
            staged
                .new_frames
                .extend(std::iter::repeat_n(ordinal, count as usize));
            for (i, event) in a.events.into_iter().enumerate() {
                let version = first_version + i as u64;
                txn.new_ids.push((event.id, name.clone(), version));
                txn.ids
                    .insert(event.id, (name.clone(), version, start + i as u64, event));
            }
        }
        Ok(results)
    }

    /// `Some` when every event of the append was appended before (a retry).
    fn check_idempotent(
        &self,
        idx: &Index,
        txn: &Txn,
        append: &StreamAppend,
    ) -> Result<Option<AppendResult>> {
        let lookup = |id: &Uuid| -> Result<Option<EarlierEvent>> {
            if let Some((s, v, p, e)) = txn.ids.get(id) {
                return Ok(Some((s.clone(), *v, *p, e.clone())));
            }
            let Some((stream, version)) = idx.ids.get(id) else {
                return Ok(None);
            };
            let Some(ordinal) = idx.streams.get(&stream).and_then(|s| s.frame_of(version)) else {
                return Ok(None);
            };
            let loc = idx.frames[ordinal as usize];
            let frame = self
                .shared
                .read_frame(&*idx.segments[&(loc.segment as u64)], loc)?;
            let Some(stored) = self.shared.event_in_frame(&frame, &stream, version, loc)? else {
                return Ok(None);
            };
            let recorded = self.shared.to_recorded(stored, loc)?;
            Ok(Some((stream, version, recorded.position, recorded.event)))
        };
        let Some(first) = lookup(&append.events[0].id)? else {
            for e in &append.events[1..] {
                if lookup(&e.id)?.is_some() {
                    return Err(LogError::EventIdReused {
                        id: e.id,
                        detail: "the batch mixes new events with events appended before".into(),
                    });
                }
            }
            return Ok(None);
        };
        let mut last_position = first.2;
        for (i, event) in append.events.iter().enumerate() {
            let Some((stream, version, position, earlier)) = lookup(&event.id)? else {
                return Err(LogError::EventIdReused {
                    id: append.events[0].id,
                    detail: "the batch mixes new events with events appended before".into(),
                });
            };
            if &*stream != append.stream.as_str()
                || version != first.1 + i as u64
                || &earlier != event
            {
                return Err(LogError::EventIdReused {
                    id: event.id,
                    detail: "content differs".into(),
                });
            }
            last_position = position;
        }
        Ok(Some(AppendResult {
            next_expected_version: first.1 + append.events.len() as u64 - 1,
            first_position: first.2,
            last_position,
        }))
    }
}

fn stage_meta(idx: &Index, txn: &mut Txn, stream: &str, op: MetaOp) -> Result<()> {
    let now = txn.now;
    let (staged, _) = txn.stream(idx, stream);
    let before = staged.rules.clone();
    if staged.rules.deletion == Deletion::Hard {
        return Err(LogError::StreamDeleted {
            stream: stream.to_owned(),
        });
    }
    let delete = match op {
        MetaOp::Set(m) => {
            staged.rules.metadata = m;
            None
        }
        MetaOp::Delete(expected, mode) => {
            staged.rules.check_expected(stream, expected)?;
            staged.rules.apply_delete(mode);
            Some(mode)
        }
    };
    let change = metadata_change(stream, &staged.rules, delete, now);
    if let Err(e) = txn.add_frame(frame::Body::Metadata(change.encode_to_vec().into()), None) {
        txn.streams.get_mut(stream).expect("staged above").rules = before;
        return Err(e);
    }
    Ok(())
}

fn reply_err(r: Request, e: LogError) {
    match r {
        Request::Append { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Request::Meta { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Request::Roll { reply } => {
            let _ = reply.send(Err(e));
        }
        Request::Checkpoint { reply } => {
            let _ = reply.send(Err(e));
        }
        Request::Shutdown => {}
    }
}

/// I/O errors are not `Clone`; a group's failure is reported to each member.
fn clone_error(e: &LogError) -> LogError {
    match e {
        LogError::Io { context, source } => LogError::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        LogError::Poisoned { reason } => LogError::Poisoned {
            reason: reason.clone(),
        },
        other => LogError::Poisoned {
            reason: other.to_string(),
        },
    }
}

/// Generates a fresh Ed25519 signing key from the OS's randomness.
pub fn generate_signing_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        LogError::io(
            "reading os randomness",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}
