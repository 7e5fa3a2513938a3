//! The write path: a two-stage group-commit pipeline.
//!
//! The *stager* thread takes every request queued, checks it against its own
//! view of the tail (which includes groups not yet synced), and encodes the
//! accepted ones into one buffer: one batch frame for all the appends of the
//! group, plus metadata and checkpoint frames. It hands the group to the
//! *syncer* thread and goes on with the next group while the syncer writes,
//! fdatasyncs (once for every group queued behind it), publishes to the
//! index and only then acknowledges.
//!
//! If a write or a sync fails, the syncer cuts the file back to where the
//! failed groups started and fails them and every group staged after them;
//! the stager then resets its view to the published state. Nothing that
//! was acknowledged is touched, nothing unacknowledged becomes visible.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use ed25519_dalek::Signer;
use prost::Message;
use proto::log::{Checkpoint, DeleteKind, Frame, StreamMetadataChange, frame};
use sha2::Digest;
use tokio::sync::oneshot;
use tracing::warn;
use uuid::Uuid;

use super::format::{self, SEGMENT_HEADER_LEN};
use super::state::create_segment;
use super::state::{FileLogConfig, FrameLoc, HEAD_FILE, IdWindow, Index, Shared, pack_loc};
use super::vfs::StorageFile;
use crate::model::{Deletion, Earlier, StreamRules, check_repeat, whole_repeat};
use crate::{
    AppendResult, DeleteMode, ExpectedVersion, LogError, NewEvent, RecordedEvent, Result, StreamAppend, StreamMetadata,
};

pub(super) enum MetaOp {
    Set(StreamMetadata),
    Delete(ExpectedVersion, DeleteMode),
}

pub(super) enum Request {
    Append {
        appends: Vec<StreamAppend>,
        /// Upper bound of the bytes the events take in a frame (validation's).
        bytes: usize,
        reply: oneshot::Sender<Result<Vec<AppendResult>>>,
        /// The appender's span (disabled unless traces are exported).
        span: tracing::Span,
    },
    Meta {
        stream: String,
        op: MetaOp,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Seal the active segment (for scavenging); replies with the new one.
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
            Request::Append { bytes, .. } => *bytes,
            _ => 64,
        }
    }
}

pub(super) fn metadata_change(
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

/// The tail as the stager sees it: published state plus staged groups.
pub(super) struct TailState {
    active_no: u64,
    active: Arc<dyn StorageFile>,
    active_len: u64,
    frame_count: u64,
    next_position: u64,
    frames_since_checkpoint: u64,
}

impl TailState {
    pub(super) fn from_index(idx: &Index, active: Arc<dyn StorageFile>) -> Self {
        Self {
            active_no: idx.end_segment,
            active,
            active_len: idx.end_offset,
            frame_count: idx.frame_count(),
            next_position: idx.next_position,
            frames_since_checkpoint: idx.frames_since_checkpoint,
        }
    }
}

enum Reply {
    Append(oneshot::Sender<Result<Vec<AppendResult>>>, Result<Vec<AppendResult>>),
    Unit(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn fail(self, error: &LogError) -> Reply {
        match self {
            Reply::Append(tx, Ok(_)) => Reply::Append(tx, Err(clone_error(error))),
            Reply::Unit(tx, Ok(())) => Reply::Unit(tx, Err(clone_error(error))),
            other => other,
        }
    }

    fn send(self) {
        match self {
            Reply::Append(tx, r) => {
                let _ = tx.send(r);
            }
            Reply::Unit(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One write group on its way to the syncer.
struct Group {
    generation: u64,
    segment: u64,
    file: Arc<dyn StorageFile>,
    start: u64,
    buf: Vec<u8>,
    frames: Vec<(FrameLoc, Option<u64>)>,
    /// Streams changed: their rules after the group and new event locations.
    streams: Vec<(Arc<str>, StreamRules, Vec<u64>)>,
    next_position: u64,
    /// Chain value after the group: set by the syncer when it seals.
    chain: [u8; 32],
    frames_since_checkpoint: u64,
    /// The group's checkpoint, completed (chain, signature) when sealed.
    checkpoint: Option<Checkpoint>,
    durable_floor: u64,
    /// What the syncer finishes in `buf`: chain values, CRCs, signatures.
    seals: Vec<Seal>,
    /// Byte ranges of the events in `buf`, for the batch digests.
    event_ranges: Vec<(u32, u32)>,
    replies: Vec<Reply>,
    /// The spans of the appends in the group that are being traced.
    spans: Vec<tracing::Span>,
}

/// A frame the stager encoded with a zero chain and CRC, for the syncer to
/// finish in order: hashing moves off the stager, the busier thread.
enum Seal {
    /// A batch: its digest covers each event's bytes (`event_ranges`).
    Batch { at: usize, len: usize, events: std::ops::Range<usize> },
    /// A metadata frame; the stager computed its digest.
    Digest { at: usize, len: usize, digest: [u8; 32] },
    /// A checkpoint: the syncer fills in the chain so far and signs it.
    Checkpoint { at: usize, len: usize, message_at: usize, message_len: usize, checkpoint: Checkpoint },
}

enum ToSyncer {
    Group(Box<Group>),
    /// Runs once every message before it has been handled.
    Barrier(Box<dyn FnOnce() + Send>),
    Shutdown,
}

/// Starts the stager (which starts the syncer). The returned handle ends
/// after a `Shutdown` request, with both threads stopped.
pub(super) fn start(
    shared: Arc<Shared>,
    config: FileLogConfig,
    tail: TailState,
    rules: HashMap<Arc<str>, StreamRules>,
    ids: IdWindow,
    rx: mpsc::Receiver<Request>,
) -> Result<JoinHandle<()>> {
    let (to_syncer, syncer_rx) = mpsc::channel();
    let (recycle, recycled) = mpsc::channel();
    let broken = Arc::new(AtomicU64::new(u64::MAX));
    let syncer = Arc::new(Syncer {
        shared: shared.clone(),
        broken: broken.clone(),
        recycle,
        commit_lock: std::sync::Mutex::new(shared.read().chain),
        signing_key: config.signing_key.clone(),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
    });
    let committer = syncer.clone();
    let syncer_handle = std::thread::Builder::new()
        .name("pypes-log-sync".into())
        .spawn(move || syncer.run(syncer_rx))
        .map_err(|e| LogError::io("starting the syncer thread", e))?;
    let stager = Stager {
        shared,
        config,
        tail,
        rules,
        ids,
        last_checkpoint: Instant::now(),
        generation: 0,
        broken,
        to_syncer,
        syncer: Some(syncer_handle),
        committer,
        recycled,
        spare_body: Vec::new(),
    };
    std::thread::Builder::new()
        .name("pypes-log-stage".into())
        .spawn(move || stager.run(rx))
        .map_err(|e| LogError::io("starting the stager thread", e))
}

struct Stager {
    shared: Arc<Shared>,
    config: FileLogConfig,
    tail: TailState,
    /// Stream rules including staged groups (the index has published ones).
    rules: HashMap<Arc<str>, StreamRules>,
    ids: IdWindow,
    last_checkpoint: Instant,
    generation: u64,
    broken: Arc<AtomicU64>,
    to_syncer: mpsc::Sender<ToSyncer>,
    syncer: Option<JoinHandle<()>>,
    /// The syncer's commit, also run inline for a small group when nothing
    /// is in flight: at low load the hand-off would only add latency.
    committer: Arc<Syncer>,
    /// Group buffers the syncer is done with: reusing them avoids a fresh
    /// (page-faulting) allocation per group.
    recycled: mpsc::Receiver<Vec<u8>>,
    spare_body: Vec<u8>,
}

/// The batch frame being built for the current group; empty (no entries)
/// when none is open.
struct OpenBatch {
    body: Vec<u8>,
    /// Index of this batch's first range in `Txn::event_ranges` (ranges are
    /// relative to `body` until the batch is closed).
    ranges_start: usize,
    first_position: u64,
    entries: u32,
    ordinal: u64,
}

/// One group being staged.
struct Txn {
    start: u64,
    /// Offset in this segment below which everything was durable when the
    /// group was staged: written into every frame (`group_start`) so that
    /// recovery can tell a torn tail from corruption of synced data.
    durable_floor: u64,
    buf: Vec<u8>,
    seals: Vec<Seal>,
    event_ranges: Vec<(u32, u32)>,
    frame_count: u64,
    next_position: u64,
    now: i64,
    segment: u32,
    frames: Vec<(FrameLoc, Option<u64>)>,
    batch: OpenBatch,
    streams: HashMap<Arc<str>, Vec<u64>>,
    /// Position of the first event this group may hold.
    first_position: u64,
    /// Whether the group ends with a checkpoint frame.
    checkpoint: bool,
}

impl Txn {
    fn frame_loc(&self, offset: usize, len: usize, events: u32) -> FrameLoc {
        FrameLoc { segment: self.segment, offset: (self.start + offset as u64) as u32, len: len as u32, events }
    }

    fn close_batch(&mut self) {
        let (entries, first_position, ranges_start) =
            (self.batch.entries, self.batch.first_position, self.batch.ranges_start);
        if entries == 0 {
            return;
        }
        let at = self.buf.len();
        let len = format::encode_batch_frame(&mut self.buf, self.durable_floor, &[0; 32], &self.batch.body);
        let body_at = (at + len - self.batch.body.len()) as u32;
        for r in &mut self.event_ranges[ranges_start..] {
            *r = (r.0 + body_at, r.1 + body_at);
        }
        self.seals.push(Seal::Batch { at, len, events: ranges_start..self.event_ranges.len() });
        let loc = self.frame_loc(at, len, entries);
        self.frames.push((loc, Some(first_position)));
        self.frame_count += 1;
        self.batch.body.clear();
        self.batch.entries = 0;
    }

    /// Adds a metadata or checkpoint frame (closing the open batch first),
    /// encoded with a zero chain; returns where it is and how long.
    fn add_frame(&mut self, body: frame::Body) -> (usize, usize) {
        self.close_batch();
        let frame = Frame { group_start: self.durable_floor, chain: vec![0; 32].into(), body: Some(body) };
        let at = self.buf.len();
        let len = format::encode_frame(&frame, &mut self.buf);
        let loc = self.frame_loc(at, len, 0);
        self.frames.push((loc, None));
        self.frame_count += 1;
        (at, len)
    }

    fn add_metadata_frame(&mut self, change: &StreamMetadataChange) {
        let bytes = Bytes::from(change.encode_to_vec());
        let digest = format::metadata_digest(&bytes);
        let (at, len) = self.add_frame(frame::Body::Metadata(bytes));
        self.seals.push(Seal::Digest { at, len, digest });
    }

    /// The event at `position` staged in this group (a rare path: a retry
    /// of an event appended in the same group).
    fn find_event(&self, position: u64) -> Option<NewEvent> {
        let pick = |batch: &proto::log::Batch, index: u64| -> Option<NewEvent> {
            let Some(proto::log::entry::Kind::Event(bytes)) = batch.entries.get(index as usize)?.kind.clone() else {
                return None;
            };
            let stored = proto::storage::StoredEvent::decode(bytes).ok()?;
            let stream: Arc<str> = Arc::from(stored.stream.as_str());
            RecordedEvent::from_stored(stored, stream).ok().map(|r| r.event)
        };
        let b = &self.batch;
        if b.entries > 0 && position >= b.first_position {
            let batch = proto::log::Batch::decode(&b.body[..]).ok()?;
            return pick(&batch, position - b.first_position);
        }
        for (loc, first) in &self.frames {
            let Some(first) = *first else { continue };
            if position < first || position >= first + loc.events as u64 {
                continue;
            }
            let at = (loc.offset as u64 - self.start) as usize;
            let frame = format::decode_frame_unchecked(&self.buf[at..at + loc.len as usize])?;
            let Some(frame::Body::Batch(batch)) = frame.body else {
                return None;
            };
            return pick(&batch, position - first);
        }
        None
    }

    /// Makes sure the open batch can take `size` more bytes (closing a full
    /// one first) and, if it is empty, starts it at the current position.
    fn open_batch(&mut self, size: usize) {
        if self.batch.entries > 0 && self.batch.body.len() + size > format::MAX_FRAME_BODY - 64 {
            self.close_batch();
        }
        if self.batch.entries == 0 {
            self.batch.ranges_start = self.event_ranges.len();
            self.batch.first_position = self.next_position;
            self.batch.ordinal = self.frame_count;
        }
    }
}

impl Stager {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let first = rx.recv().unwrap_or(Request::Shutdown);
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
            if self.handle(group) {
                let _ = self.to_syncer.send(ToSyncer::Shutdown);
                if let Some(h) = self.syncer.take() {
                    let _ = h.join();
                }
                return;
            }
        }
    }

    /// Stages one group; returns true on shutdown.
    fn handle(&mut self, group: Vec<Request>) -> bool {
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
        if let Some(reason) = self.shared.poisoned() {
            let e = LogError::Poisoned { reason };
            data.into_iter().for_each(|r| reply_err(r, clone_error(&e)));
            checkpoints.into_iter().for_each(|r| drop(r.send(Err(clone_error(&e)))));
            rolls.into_iter().for_each(|r| drop(r.send(Err(clone_error(&e)))));
            return shutdown;
        }
        if self.broken.load(Ordering::SeqCst) == self.generation {
            self.reset();
        }
        let mut replies = Vec::with_capacity(data.len() + checkpoints.len());
        if self.tail.active_len >= self.config.segment_size
            && let Err(e) = self.roll()
        {
            data.into_iter().for_each(|r| reply_err(r, clone_error(&e)));
            checkpoints.into_iter().for_each(|r| drop(r.send(Err(clone_error(&e)))));
            rolls.into_iter().for_each(|r| drop(r.send(Err(clone_error(&e)))));
            return shutdown;
        }
        // A group is at most `max_group_bytes` plus one request and its
        // frames: a buffer sized for that once never grows while encoding
        // (growing reallocates into fresh, page-faulting memory).
        let mut buf = self.recycled.try_recv().unwrap_or_default();
        buf.clear();
        buf.reserve(self.config.max_group_bytes + (64 << 10));
        let mut txn = Txn {
            start: self.tail.active_len,
            durable_floor: self.durable_floor(),
            buf,
            seals: Vec::new(),
            event_ranges: Vec::new(),
            frame_count: self.tail.frame_count,
            next_position: self.tail.next_position,
            now: self.config.clock.now_micros(),
            segment: self.tail.active_no as u32,
            frames: Vec::new(),
            batch: OpenBatch {
                body: std::mem::take(&mut self.spare_body),
                ranges_start: 0,
                first_position: 0,
                entries: 0,
                ordinal: 0,
            },
            streams: HashMap::new(),
            first_position: self.tail.next_position,
            checkpoint: false,
        };
        let mut spans = Vec::new();
        for r in data {
            match r {
                Request::Append { appends, bytes, reply, span } => {
                    let result = self.stage_append(&mut txn, appends, bytes);
                    replies.push(Reply::Append(reply, result));
                    if !span.is_disabled() {
                        spans.push(span);
                    }
                }
                Request::Meta { stream, op, reply } => {
                    let result = self.stage_meta(&mut txn, &stream, op);
                    replies.push(Reply::Unit(reply, result));
                }
                _ => unreachable!("only data requests are staged"),
            }
        }
        txn.close_batch();
        let new_frames = txn.frame_count - self.tail.frame_count;
        let since = self.tail.frames_since_checkpoint + new_frames;
        let due = since >= self.config.checkpoint_every_frames
            || (new_frames > 0 && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval);
        let forced = !checkpoints.is_empty() || shutdown;
        if (due || forced) && since > 0 {
            self.stage_checkpoint(&mut txn);
        }
        replies.extend(checkpoints.into_iter().map(|r| Reply::Unit(r, Ok(()))));
        self.send_group(txn, replies, spans);
        for reply in rolls {
            let rolled = if self.tail.active_len > SEGMENT_HEADER_LEN { self.roll() } else { Ok(()) };
            match rolled {
                Ok(()) => {
                    let active = self.tail.active_no;
                    // Replied once every group before the roll is published,
                    // so the sealed segments receive no more writes.
                    let barrier = Box::new(move || drop(reply.send(Ok(active))));
                    let _ = self.to_syncer.send(ToSyncer::Barrier(barrier));
                }
                Err(e) => drop(reply.send(Err(e))),
            }
        }
        shutdown
    }

    fn send_group(&mut self, mut txn: Txn, replies: Vec<Reply>, spans: Vec<tracing::Span>) {
        self.spare_body = std::mem::take(&mut txn.batch.body);
        let written = txn.buf.len() as u64;
        let streams = txn
            .streams
            .into_iter()
            .map(|(name, locs)| {
                let rules = self.rules.get(&name).cloned().unwrap_or_default();
                (name, rules, locs)
            })
            .collect();
        if txn.checkpoint {
            self.last_checkpoint = Instant::now();
            self.tail.frames_since_checkpoint = 0;
        } else {
            self.tail.frames_since_checkpoint += txn.frame_count - self.tail.frame_count;
        }
        let group = Group {
            generation: self.generation,
            segment: self.tail.active_no,
            file: self.tail.active.clone(),
            start: txn.start,
            buf: txn.buf,
            frames: txn.frames,
            streams,
            next_position: txn.next_position,
            chain: [0; 32],
            durable_floor: txn.durable_floor,
            seals: txn.seals,
            event_ranges: txn.event_ranges,
            frames_since_checkpoint: self.tail.frames_since_checkpoint,
            checkpoint: None,
            replies,
            spans,
        };
        self.tail.active_len += written;
        self.tail.frame_count = txn.frame_count;
        self.tail.next_position = txn.next_position;
        if group.replies.len() <= 2 && self.committer.in_flight.load(Ordering::SeqCst) == 0 {
            self.committer.commit(vec![group]);
            return;
        }
        self.committer.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::SendError(ToSyncer::Group(g))) = self.to_syncer.send(ToSyncer::Group(Box::new(group))) {
            for r in g.replies {
                r.fail(&LogError::Closed).send();
            }
        }
    }

    /// Waits until the syncer has handled every group sent so far.
    fn wait_for_syncer(&self) {
        let (tx, rx) = mpsc::channel();
        let barrier = Box::new(move || {
            let _ = tx.send(());
        });
        if self.to_syncer.send(ToSyncer::Barrier(barrier)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// After a failed write: waits until the syncer has failed every staged
    /// group, then takes the published state as the tail again.
    fn reset(&mut self) {
        self.wait_for_syncer();
        let idx = self.shared.read();
        self.rules = idx.streams.iter().map(|(k, s)| (k.clone(), s.rules.clone())).collect();
        self.ids.forget_from(idx.next_position);
        self.tail.frame_count = idx.frame_count();
        self.tail.next_position = idx.next_position;
        self.tail.frames_since_checkpoint = idx.frames_since_checkpoint;
        self.tail.active_len = if idx.end_segment == self.tail.active_no { idx.end_offset } else { SEGMENT_HEADER_LEN };
        drop(idx);
        let cut = self.tail.active.set_len(self.tail.active_len).and_then(|_| self.tail.active.sync_data());
        if let Err(e) = cut {
            self.poison(format!("cutting the active segment back after a failed write: {e}"));
        }
        self.generation += 1;
    }

    /// End of the durable (published) part of the active segment.
    fn durable_floor(&self) -> u64 {
        let idx = self.shared.read();
        if idx.end_segment == self.tail.active_no { idx.end_offset } else { SEGMENT_HEADER_LEN }
    }

    fn poison(&self, reason: String) {
        warn!(%reason, "event log poisoned");
        *self.shared.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    fn roll(&mut self) -> Result<()> {
        // Every frame of the old segment must be durable before any frame
        // goes to the new one: recovery treats only the last segment's tail
        // as possibly torn.
        self.wait_for_syncer();
        let number = self.tail.active_no + 1;
        let file = create_segment(&*self.shared.vfs, &self.shared.segments_dir, number)?;
        self.shared.write().segments.insert(number, file.clone());
        self.tail.active = file;
        self.tail.active_no = number;
        self.tail.active_len = SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// Stages a checkpoint frame with a zero chain and signature of fixed
    /// size; the syncer, which knows the chain, completes and signs it.
    fn stage_checkpoint(&mut self, txn: &mut Txn) {
        txn.close_batch();
        let cp = Checkpoint {
            chain: vec![0; 32].into(),
            frame_count: txn.frame_count,
            next_position: txn.next_position,
            signed_at_micros: txn.now,
            signature: vec![0; 64].into(),
        };
        let message = cp.encode_to_vec();
        let message_len = message.len();
        let (at, len) = txn.add_frame(frame::Body::Checkpoint(message.into()));
        txn.seals.push(Seal::Checkpoint { at, len, message_at: at + len - message_len, message_len, checkpoint: cp });
        txn.checkpoint = true;
    }

    /// The stager's rules of `stream` (created empty) and its shared name.
    fn stream_rules(&mut self, stream: &str) -> (Arc<str>, &mut StreamRules) {
        let name = match self.rules.get_key_value(stream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(stream),
        };
        let rules = self.rules.entry(name.clone()).or_default();
        (name, rules)
    }

    fn stage_meta(&mut self, txn: &mut Txn, stream: &str, op: MetaOp) -> Result<()> {
        let (name, rules) = self.stream_rules(stream);
        if rules.deletion == Deletion::Hard {
            return Err(LogError::StreamDeleted { stream: stream.to_owned() });
        }
        let delete = match op {
            MetaOp::Set(m) => {
                rules.metadata = m;
                None
            }
            MetaOp::Delete(expected, mode) => {
                rules.check_expected(stream, expected)?;
                rules.apply_delete(mode);
                Some(mode)
            }
        };
        let change = metadata_change(stream, rules, delete, txn.now);
        txn.add_metadata_frame(&change);
        txn.streams.entry(name).or_default();
        Ok(())
    }

    /// `bytes` bounds what the events take in the batch (from validation).
    fn stage_append(&mut self, txn: &mut Txn, appends: Vec<StreamAppend>, bytes: usize) -> Result<Vec<AppendResult>> {
        let mut repeats = Vec::new();
        for a in &appends {
            if let Some(r) = check_repeat(a, |id| self.earlier(txn, id))? {
                repeats.push(r);
            }
        }
        if let Some(results) = whole_repeat(&appends, repeats)? {
            return Ok(results);
        }
        for a in &appends {
            match self.rules.get(a.stream.as_str()) {
                Some(rules) => rules.check_expected(&a.stream, a.expected)?,
                None => StreamRules::default().check_expected(&a.stream, a.expected)?,
            }
        }
        let now = txn.now;
        txn.open_batch(bytes);
        let mut results = Vec::with_capacity(appends.len());
        for a in appends {
            let (name, rules) = self.stream_rules(&a.stream);
            let first_version = rules.next_version;
            let count = a.events.len() as u64;
            rules.apply_append(count);
            let first_position = txn.next_position;
            let locs = txn.streams.entry(name.clone()).or_default();
            let batch = &mut txn.batch;
            for (i, event) in a.events.into_iter().enumerate() {
                let version = first_version + i as u64;
                let position = txn.next_position;
                let range = format::encode_batch_entry(&mut batch.body, &event, &a.stream, version, position, now);
                txn.event_ranges.push((range.start as u32, range.end as u32));
                locs.push(pack_loc(batch.ordinal, batch.entries));
                batch.entries += 1;
                self.ids.insert(event.id, name.clone(), version, position);
                txn.next_position += 1;
            }
            results.push(AppendResult {
                next_expected_version: first_version + count - 1,
                first_position,
                last_position: txn.next_position - 1,
            });
        }
        Ok(results)
    }

    /// The earlier event with this id, if it is in the window and still
    /// stored (not scavenged).
    fn earlier(&self, txn: &Txn, id: &Uuid) -> Result<Option<Earlier>> {
        let Some((stream, version, position)) = self.ids.get(id) else {
            return Ok(None);
        };
        if position >= txn.first_position {
            return Ok(txn.find_event(position).map(|event| Earlier { stream, version, position, event }));
        }
        if position >= *self.shared.head.borrow() {
            // On its way to disk: wait until it is published (or failed).
            self.wait_for_syncer();
            if self.broken.load(Ordering::SeqCst) == self.generation {
                return Err(LogError::io(
                    "appending",
                    std::io::Error::other("an earlier append of the pipeline failed; retry"),
                ));
            }
        }
        let Some((_, entry, loc, file)) = self.shared.version_at(&stream, version)? else {
            return Ok(None);
        };
        let frame = self.shared.read_frame(&*file, loc)?;
        let Some(stored) = self.shared.entry_event(&frame, entry, loc)? else {
            return Ok(None);
        };
        let recorded: RecordedEvent = self.shared.to_recorded(stored, loc)?;
        Ok(Some(Earlier { stream, version, position, event: recorded.event }))
    }
}

/// The syncer thread: writes, fdatasyncs, publishes, acknowledges.
struct Syncer {
    shared: Arc<Shared>,
    broken: Arc<AtomicU64>,
    recycle: mpsc::Sender<Vec<u8>>,
    /// Serialises commits of the syncer thread and inline ones, and holds
    /// the hash chain after the last sealed frame.
    commit_lock: std::sync::Mutex<[u8; 32]>,
    /// Signs checkpoints as they are sealed.
    signing_key: ed25519_dalek::SigningKey,
    /// Groups sent to the syncer thread and not yet committed.
    in_flight: std::sync::atomic::AtomicUsize,
}

impl Syncer {
    fn run(&self, rx: mpsc::Receiver<ToSyncer>) {
        while let Ok(first) = rx.recv() {
            let mut messages = vec![first];
            while let Ok(m) = rx.try_recv() {
                messages.push(m);
            }
            let mut run = Vec::new();
            for m in messages {
                match m {
                    ToSyncer::Group(g) => run.push(*g),
                    ToSyncer::Barrier(f) => {
                        self.commit_counted(std::mem::take(&mut run));
                        f();
                    }
                    ToSyncer::Shutdown => {
                        self.commit_counted(run);
                        return;
                    }
                }
            }
            self.commit_counted(run);
        }
    }

    fn commit_counted(&self, run: Vec<Group>) {
        let n = run.len();
        self.commit(run);
        self.in_flight.fetch_sub(n, Ordering::SeqCst);
    }

    fn commit(&self, run: Vec<Group>) {
        if run.is_empty() {
            return;
        }
        let mut chain = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = self.shared.poisoned() {
            let e = LogError::Poisoned { reason };
            run.into_iter().flat_map(|g| g.replies).for_each(|r| r.fail(&e).send());
            return;
        }
        let broken = self.broken.load(Ordering::SeqCst);
        let (live, dead): (Vec<Group>, Vec<Group>) = run.into_iter().partition(|g| g.generation != broken);
        if !dead.is_empty() {
            // Cut off behind a failed write: a full disk is still named as one.
            let cause = match self.shared.storage_full() {
                Some(_) => std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "an earlier write of the pipeline found the disk full",
                ),
                None => std::io::Error::other("an earlier write of the pipeline failed"),
            };
            let e = LogError::io("appending", cause);
            dead.into_iter().flat_map(|g| g.replies).for_each(|r| r.fail(&e).send());
        }
        if live.is_empty() {
            return;
        }
        let mut live = live;
        // One span for the commit (sealing the frames, the write and its
        // fsync), a child of the first traced append in it and linked to
        // the others: a group commit serves many requests.
        let mut traced = live.iter().flat_map(|g| g.spans.iter());
        let _commit = traced.next().map(|first| {
            let span =
                tracing::debug_span!(target: crate::SPAN_TARGET, parent: first, "eventlog.commit", groups = live.len());
            for other in traced {
                span.follows_from(other);
            }
            span.entered()
        });
        for g in &mut live {
            self.seal(&mut chain, g);
        }
        let written = self.write_and_sync(&live);
        if let Err(e) = written {
            self.roll_back(&live);
            // Nothing of this run is published: the chain goes on from the
            // last published frame.
            *chain = self.shared.read().chain;
            let generation = live.iter().fold(0, |m, g| m.max(g.generation));
            self.broken.store(generation, Ordering::SeqCst);
            warn!(error = %e, "append failed; its write group was cut off");
            if e.is_storage_full() && self.shared.storage_full().is_none() {
                self.shared.set_storage_full(Some(format!("the event log's disk is full: {e}")));
            }
            live.into_iter().flat_map(|g| g.replies).for_each(|r| r.fail(&e).send());
            return;
        }
        self.publish(live);
    }

    /// Finishes the frames of a group in order: frame digests, chain
    /// values, checkpoint signatures, CRCs.
    fn seal(&self, chain: &mut [u8; 32], g: &mut Group) {
        for seal in &mut g.seals {
            let (at, len) = match *seal {
                Seal::Batch { at, len, ref events } => {
                    let mut h = format::batch_digest_start();
                    for &(start, end) in &g.event_ranges[events.clone()] {
                        h.update(format::sha256(&g.buf[start as usize..end as usize]));
                    }
                    *chain = format::chain_next(chain, &h.finalize().into());
                    (at, len)
                }
                Seal::Digest { at, len, digest } => {
                    *chain = format::chain_next(chain, &digest);
                    (at, len)
                }
                Seal::Checkpoint { at, len, message_at, message_len, checkpoint: ref mut cp } => {
                    let message =
                        format::checkpoint_message(chain, cp.frame_count, cp.next_position, cp.signed_at_micros);
                    let signature = self.signing_key.sign(&message).to_bytes();
                    cp.chain = Bytes::copy_from_slice(chain);
                    cp.signature = Bytes::copy_from_slice(&signature);
                    // The encoded Checkpoint starts with the chain (field 1)
                    // and ends with the signature (field 5), both fixed size.
                    let m = &mut g.buf[message_at..message_at + message_len];
                    m[2..34].copy_from_slice(chain);
                    m[message_len - 64..].copy_from_slice(&signature);
                    debug_assert_eq!(&*m, &cp.encode_to_vec()[..]);
                    *chain = format::chain_next(chain, &format::checkpoint_digest(m));
                    g.checkpoint = Some(cp.clone());
                    (at, len)
                }
            };
            format::seal_frame(&mut g.buf[at..at + len], g.durable_floor, chain);
        }
        g.chain = *chain;
    }

    fn write_and_sync(&self, run: &[Group]) -> Result<()> {
        let mut files: Vec<(u64, &Arc<dyn StorageFile>)> = Vec::new();
        for g in run {
            if g.buf.is_empty() {
                continue;
            }
            g.file
                .write_at(g.start, &g.buf)
                .map_err(|e| LogError::io(format!("appending to segment {}", g.segment), e))?;
            if files.last().is_none_or(|(s, _)| *s != g.segment) {
                files.push((g.segment, &g.file));
            }
        }
        for (segment, file) in files {
            let _span = tracing::debug_span!(target: crate::SPAN_TARGET, "fsync", segment).entered();
            let started = Instant::now();
            file.sync_data().map_err(|e| LogError::io(format!("syncing segment {segment}"), e))?;
            self.shared.fsync.observe(started.elapsed());
        }
        Ok(())
    }

    /// Cuts every file this run wrote back to where the run started in it.
    fn roll_back(&self, run: &[Group]) {
        let mut cuts: Vec<(u64, &Arc<dyn StorageFile>, u64)> = Vec::new();
        for g in run.iter().filter(|g| !g.buf.is_empty()) {
            if !cuts.iter().any(|(s, _, _)| *s == g.segment) {
                cuts.push((g.segment, &g.file, g.start));
            }
        }
        for (segment, file, at) in cuts {
            if let Err(e) = file.set_len(at).and_then(|_| file.sync_data()) {
                let reason = format!("cutting segment {segment} back to {at} after a failed write: {e}");
                warn!(%reason, "event log poisoned");
                *self.shared.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
            }
        }
    }

    fn publish(&self, run: Vec<Group>) {
        // A commit went through: whatever filled the disk was freed (one
        // atomic load while the disk is fine).
        if self.shared.storage_full().is_some() {
            self.shared.set_storage_full(None);
        }
        let mut head = None;
        let mut checkpoint = None;
        let mut rolled = false;
        {
            let mut guard = self.shared.write();
            let idx = &mut *guard;
            for g in &run {
                for (loc, first) in &g.frames {
                    idx.push_frame(*loc, *first);
                }
                for (name, rules, locs) in &g.streams {
                    let s = idx.streams.entry(name.clone()).or_default();
                    s.rules = rules.clone();
                    s.locs.extend(locs.iter().copied());
                    idx.hot_versions += locs.len() as u64;
                    if !locs.is_empty() && s.touch(g.segment) {
                        idx.touched.entry(g.segment).or_default().push(name.clone());
                    }
                }
                rolled |= g.segment != idx.end_segment;
                idx.next_position = g.next_position;
                idx.chain = g.chain;
                idx.end_segment = g.segment;
                idx.end_offset = g.start + g.buf.len() as u64;
                idx.frames_since_checkpoint = g.frames_since_checkpoint;
                head = Some(g.next_position);
            }
        }
        if let Some(h) = head {
            self.shared.head.send_replace(h);
        }
        if rolled {
            self.shared.spill.wake();
        }
        for g in run {
            if g.checkpoint.is_some() {
                checkpoint = g.checkpoint;
            }
            g.replies.into_iter().for_each(Reply::send);
            if g.buf.capacity() <= 64 << 20 {
                let _ = self.recycle.send(g.buf);
            }
        }
        if let Some(cp) = checkpoint {
            self.write_head(&cp);
        }
    }

    /// Replaces `head.sig` atomically (write temp, sync, rename, sync dir),
    /// then the witness's copy (a signed note) the same way.
    fn write_head(&self, cp: &Checkpoint) {
        let vfs = &self.shared.vfs;
        let replace = |path: &std::path::Path, bytes: &[u8]| -> std::io::Result<()> {
            let dir = super::vfs::parent(path);
            let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            tmp_name.push(".tmp");
            let tmp = path.with_file_name(tmp_name);
            let f = vfs.open(&tmp, true)?;
            f.set_len(0)?;
            f.write_at(0, bytes)?;
            f.sync_data()?;
            drop(f);
            vfs.rename(&tmp, path)?;
            vfs.sync_dir(&dir)
        };
        if let Err(e) = replace(&self.shared.dir.join(HEAD_FILE), &format::encode_head(cp)) {
            warn!(error = %e, "could not update the signed head; the checkpoint frame in the log still stands");
            return;
        }
        if let Some(witness) = &self.shared.witness
            && let Err(e) = replace(witness, &super::note::encode(cp, &self.signing_key))
        {
            warn!(error = %e, witness = %witness.display(), "could not update the witness's copy of the signed head");
        }
    }
}

fn reply_err(r: Request, e: LogError) {
    match r {
        Request::Append { reply, .. } => drop(reply.send(Err(e))),
        Request::Meta { reply, .. } => drop(reply.send(Err(e))),
        Request::Roll { reply } => drop(reply.send(Err(e))),
        Request::Checkpoint { reply } => drop(reply.send(Err(e))),
        Request::Shutdown => {}
    }
}

/// I/O errors are not `Clone`; a group's failure is reported to each member.
fn clone_error(e: &LogError) -> LogError {
    match e {
        LogError::Io { context, source } => {
            LogError::Io { context: context.clone(), source: std::io::Error::new(source.kind(), source.to_string()) }
        }
        LogError::Poisoned { reason } => LogError::Poisoned { reason: reason.clone() },
        LogError::Closed => LogError::Closed,
        other => LogError::Poisoned { reason: other.to_string() },
    }
}
