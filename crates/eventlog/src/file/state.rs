//! The state the file log's parts share: its configuration, the
//! published index (frames, the sparse `$all` index, per-stream
//! locations), the idempotency window, and what the writer, the readers,
//! recovery and scavenging hold in common.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::watch;

use proto::log::{DeleteKind, StreamMetadataChange};

use super::format;
use super::vfs::{self, StorageFile, Vfs};
use crate::model::StreamRules;
use crate::{Clock, DeleteMode, LogError, Result, StreamMetadata, SystemClock};

/// A sparse `$all` index entry is kept every this many batch frames.
pub(super) const SPARSE_EVERY: u64 = 32;
/// Name of the file holding the latest signed checkpoint.
pub const HEAD_FILE: &str = "head.sig";

/// The name of a log's signed head in a witness directory (a C2SP signed
/// note, see [`note`]).
pub fn witness_file_name(key: &ed25519_dalek::VerifyingKey) -> String {
    format!("pypes-log-head-{}.note", &hex_lower(key.as_bytes())[..16])
}

pub(super) fn hex_lower(bytes: &[u8]) -> String {
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
pub(super) struct FrameLoc {
    pub(super) segment: u32,
    pub(super) offset: u32,
    pub(super) len: u32,
    pub(super) events: u32,
}

/// A stream version's place: frame ordinal (high 40 bits) and entry index
/// inside the frame (low 24 bits).
pub(super) fn pack_loc(ordinal: u64, entry: u32) -> u64 {
    debug_assert!(ordinal < 1 << 40 && entry < 1 << 24);
    (ordinal << 24) | entry as u64
}

pub(super) fn unpack_loc(loc: u64) -> (u64, u32) {
    (loc >> 24, (loc & 0xFF_FFFF) as u32)
}

pub(super) struct FileStream {
    pub(super) rules: StreamRules,
    /// The versions before `base_version`, one run per sealed segment that
    /// holds some, their places in the scratch file (see `spill.rs`).
    pub(super) runs: Vec<Run>,
    /// Packed location of every version from `base_version` on (the
    /// versions in segments not yet spilled).
    pub(super) locs: VecDeque<u64>,
    pub(super) base_version: u64,
    /// The last segment this stream has a version in (`u64::MAX`: none
    /// yet): a stream is listed in a segment's `touched` once.
    pub(super) last_segment: u64,
    /// Number of the stream in the order `open` met it (u32::MAX for
    /// streams created later); lets recovery refer to a stream without
    /// touching its name.
    pub(super) recovered_no: u32,
}

impl Default for FileStream {
    fn default() -> Self {
        Self {
            rules: StreamRules::default(),
            runs: Vec::new(),
            locs: VecDeque::new(),
            base_version: 0,
            last_segment: u64::MAX,
            recovered_no: u32::MAX,
        }
    }
}

/// A stream's versions in one spilled segment: `count` versions from
/// `first_version`, whose places are version records `record..record +
/// count` of that segment's table in the scratch file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub(super) segment: u32,
    pub(super) count: u32,
    pub(super) record: u32,
    pub(super) first_version: u64,
}

/// Where a stream version is, as the index knows it under its lock: in
/// memory (a segment not yet spilled) or as a record in the scratch file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Place {
    Hot {
        loc: FrameLoc,
        entry: u32,
    },
    /// The absolute offset of its version record in the scratch file.
    Spilled {
        segment: u32,
        record_at: u64,
    },
}

impl FileStream {
    /// Notes that versions were appended to this stream in `segment`;
    /// true the first time for that segment.
    pub(super) fn touch(&mut self, segment: u64) -> bool {
        let first = self.last_segment != segment;
        self.last_segment = segment;
        first
    }
}

/// Maps keyed by event id.
pub(super) type IdMap<V> = HashMap<uuid::Uuid, V, crate::hash::KeyedHash>;

/// Recent event ids for idempotent retries, bounded to `cap` entries.
#[derive(Default)]
pub(super) struct IdWindow {
    pub(super) cap: usize,
    pub(super) map: IdMap<(Arc<str>, u64, u64)>,
    /// (id, position) in append order.
    pub(super) order: VecDeque<(uuid::Uuid, u64)>,
}

impl IdWindow {
    pub(super) fn insert(&mut self, id: uuid::Uuid, stream: Arc<str>, version: u64, position: u64) {
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
    pub(super) fn from_recent(cap: usize, recent: VecDeque<(uuid::Uuid, Arc<str>, u64, u64)>) -> Self {
        let mut w = IdWindow {
            cap,
            // Sized for twice a full window at once, so it never grows:
            // the window removes an id for each it adds, and the table's
            // tombstones use up its spare room, so a table sized for the
            // window alone (more than half full) doubles once, millions of
            // appends in (a rehash of every id on the stager thread, and
            // +25 MB of memory in the middle of a run: minute 13 of the
            // soak). At most half full, it cleans tombstones in place.
            // Untouched capacity is only address space.
            map: IdMap::with_capacity_and_hasher(2 * cap.max(recent.len()), crate::hash::KeyedHash::default()),
            order: VecDeque::with_capacity(cap.max(recent.len()) + 1),
        };
        for (id, stream, version, position) in recent {
            w.insert(id, stream, version, position);
        }
        w
    }

    /// (stream, version, position) of an id in the window.
    pub(super) fn get(&self, id: &uuid::Uuid) -> Option<(Arc<str>, u64, u64)> {
        self.map.get(id).cloned()
    }

    /// Forgets ids at `position` or later (after a failed write).
    pub(super) fn forget_from(&mut self, position: u64) {
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
///
/// Frames are numbered (ordinals) from the start of the log. Those of
/// sealed segments that were spilled live in the scratch file
/// (`sealed`, see `spill.rs`); the rest (`hot_frames`, from ordinal
/// `hot_base`) in memory, so memory holds the active segment's index only.
#[derive(Default)]
pub(super) struct Index {
    pub(super) segments: BTreeMap<u64, Arc<dyn StorageFile>>,
    /// Spilled segments 0..sealed.len(), by number.
    pub(super) sealed: Vec<super::scratch::Sealed>,
    /// Where spilled index records are; `None` until one could be made.
    pub(super) scratch: Option<Arc<super::scratch::Scratch>>,
    pub(super) hot_frames: Vec<FrameLoc>,
    /// Ordinal of `hot_frames[0]`, and the position of its first event.
    pub(super) hot_base: u64,
    pub(super) hot_first_position: u64,
    /// Stream versions whose place is in memory (in streams' `locs`).
    pub(super) hot_versions: u64,
    /// Streams with versions in each segment not yet spilled.
    pub(super) touched: BTreeMap<u64, Vec<Arc<str>>>,
    /// (position of the first event, frame ordinal) every SPARSE_EVERY batch
    /// frames, for the hot frames only.
    pub(super) sparse: Vec<(u64, u64)>,
    pub(super) batch_frames: u64,
    pub(super) streams: HashMap<Arc<str>, FileStream>,
    pub(super) next_position: u64,
    /// The published tail, where the writer restarts after a failed sync.
    pub(super) chain: [u8; 32],
    pub(super) end_segment: u64,
    pub(super) end_offset: u64,
    pub(super) frames_since_checkpoint: u64,
}

impl Index {
    pub(super) fn intern(&self, stream: &str) -> Arc<str> {
        self.streams.get_key_value(stream).map(|(k, _)| k.clone()).unwrap_or_else(|| Arc::from(stream))
    }

    /// Frames in the log (spilled and in memory).
    pub(super) fn frame_count(&self) -> u64 {
        self.hot_base + self.hot_frames.len() as u64
    }

    pub(super) fn stats(&self) -> crate::IndexStats {
        crate::IndexStats {
            segments: self.segments.len() as u64,
            sealed_segments: self.end_segment,
            spilled_segments: self.sealed.len() as u64,
            frames: self.frame_count(),
            frames_in_memory: self.hot_frames.len() as u64,
            versions_in_memory: self.hot_versions,
            scratch_bytes: self.scratch.as_ref().map_or(0, |s| s.len()),
        }
    }

    /// A frame in memory by ordinal.
    pub(super) fn hot_frame(&self, ordinal: u64) -> Option<FrameLoc> {
        ordinal.checked_sub(self.hot_base).and_then(|i| self.hot_frames.get(i as usize).copied())
    }

    /// Where `version` of `s` is; `None` if the stream has no such version.
    pub(super) fn place(&self, s: &FileStream, version: u64) -> Option<Place> {
        if version >= s.base_version {
            let (ordinal, entry) = unpack_loc(*s.locs.get((version - s.base_version) as usize)?);
            return Some(Place::Hot { loc: self.hot_frame(ordinal)?, entry });
        }
        let k = s.runs.partition_point(|r| r.first_version + r.count as u64 <= version);
        let run = s.runs.get(k).filter(|r| r.first_version <= version)?;
        let sealed = self.sealed.get(run.segment as usize)?;
        let record = run.record as u64 + (version - run.first_version);
        Some(Place::Spilled {
            segment: run.segment,
            record_at: sealed.versions_at + record * super::scratch::RECORD_LEN,
        })
    }

    pub(super) fn push_frame(&mut self, loc: FrameLoc, first_position: Option<u64>) -> u64 {
        let ordinal = self.frame_count();
        self.hot_frames.push(loc);
        if let Some(p) = first_position {
            if self.batch_frames.is_multiple_of(SPARSE_EVERY) {
                self.sparse.push((p, ordinal));
            }
            self.batch_frames += 1;
        }
        ordinal
    }
}

pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) segments_dir: PathBuf,
    pub(super) vfs: Arc<dyn Vfs>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) index: RwLock<Index>,
    pub(super) head: watch::Sender<u64>,
    /// Held by a scavenge or a spill: each rewrites the index of sealed
    /// segments.
    pub(super) scavenging: Mutex<()>,
    /// Wakes the spiller thread when the writer rolls to a new segment.
    pub(super) spill: super::scratch::SpillSignal,
    /// Set when the log cannot roll back a failed write; refuses writes.
    pub(super) poisoned: Mutex<Option<String>>,
    /// The witness's copy of `head.sig`, written after it.
    pub(super) witness: Option<PathBuf>,
    /// The commits' fdatasyncs.
    pub(super) fsync: crate::stats::Histogram,
    /// Set while commits fail because the disk is full (what failed);
    /// cleared by the next commit that succeeds.
    pub(super) storage_full: Mutex<Option<String>>,
    /// Whether `storage_full` is set: what a commit checks (no lock on the
    /// commit path while the disk is fine).
    pub(super) storage_full_flag: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn segment_path(&self, number: u64) -> PathBuf {
        self.segments_dir.join(format::segment_file_name(number))
    }

    pub(super) fn storage_full(&self) -> Option<String> {
        if !self.storage_full_flag.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.storage_full.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes (or, with `None`, clears) why commits fail for want of space.
    pub(super) fn set_storage_full(&self, why: Option<String>) {
        let mut full = self.storage_full.lock().unwrap_or_else(|e| e.into_inner());
        self.storage_full_flag.store(why.is_some(), std::sync::atomic::Ordering::Release);
        *full = why;
    }

    pub(super) fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The public half of a checkpoint signing key, as hex.
pub fn public_key_hex(key: &SigningKey) -> String {
    key.verifying_key().as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a segment: header written and synced, directory synced.
pub(super) fn create_segment(vfs: &dyn Vfs, segments_dir: &Path, number: u64) -> Result<Arc<dyn StorageFile>> {
    let path = segments_dir.join(format::segment_file_name(number));
    let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
    let attempt = || -> Result<Arc<dyn StorageFile>> {
        let file = vfs.open(&path, true).map_err(|e| io("creating", e))?;
        file.set_len(0).map_err(|e| io("truncating", e))?;
        file.write_at(0, &format::encode_segment_header(number)).map_err(|e| io("writing the header of", e))?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        vfs.sync_dir(segments_dir).map_err(|e| io("syncing the directory of", e))?;
        Ok(file)
    };
    attempt().inspect_err(|_| {
        let _ = vfs.remove(&path);
    })
}

pub(super) fn apply_metadata_change(rules: &mut StreamRules, change: &StreamMetadataChange) {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::IdWindow;

    /// The window's table never grows: a window sized for its ids alone
    /// filled with tombstones and doubled after enough appends (the soak's
    /// RSS step at minute 13).
    #[test]
    fn the_id_window_keeps_its_table_through_churn() {
        let mut w = IdWindow::from_recent(1000, VecDeque::new());
        let capacity = w.map.capacity();
        let stream: Arc<str> = Arc::from("s");
        for i in 0..200_000u64 {
            w.insert(uuid::Uuid::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)), stream.clone(), i, i);
            assert!(w.map.len() <= 1000);
        }
        // (Tombstones lower what `capacity` reports until a rehash in
        // place; only growing raises it.)
        assert!(w.map.capacity() <= capacity, "the table grew from {capacity} to {}", w.map.capacity());
        assert_eq!(w.order.len(), 1000);
        assert!(w.get(&uuid::Uuid::from_u128(199_999u128.wrapping_mul(0x9e37_79b9_7f4a_7c15))).is_some());
        assert!(w.get(&uuid::Uuid::from_u128(0)).is_none(), "the oldest id left the window");
    }
}
