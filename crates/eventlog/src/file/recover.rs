//! Opening a file log: scan every segment, rebuild the index, repair a torn
//! tail, refuse every other corruption, and check the signed head.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use proto::log::{Frame, StreamMetadataChange, entry, frame};
use tracing::warn;
use uuid::Uuid;

use super::format::{self, FrameParse, SEGMENT_HEADER_LEN};
use super::state::{FileLogConfig, FileStream, FrameLoc, HEAD_FILE, IdWindow, Index, pack_loc};
use super::state::{apply_metadata_change, create_segment};
use super::verify::{HeadForm, read_signed_head};
use super::vfs::{StorageFile, Vfs};
use crate::{LogError, Result};

/// Read size while scanning segments.
const SCAN_CHUNK: usize = 4 << 20;

pub(super) struct Recovered {
    pub index: Index,
    pub ids: IdWindow,
    pub active: Arc<dyn StorageFile>,
}

/// Sequential reader over one segment file, in large chunks.
struct Scanner<'a> {
    file: &'a dyn StorageFile,
    len: u64,
    buf: Bytes,
    buf_start: u64,
}

impl Scanner<'_> {
    /// The bytes from `offset` on, at least `need` of them unless at EOF.
    fn at(&mut self, offset: u64, need: usize) -> std::io::Result<Bytes> {
        let have_end = self.buf_start + self.buf.len() as u64;
        if offset < self.buf_start || offset + need as u64 > have_end {
            let size = (need.max(SCAN_CHUNK) as u64).min(self.len.saturating_sub(offset)) as usize;
            let mut v = vec![0u8; size];
            self.file.read_at(offset, &mut v)?;
            self.buf = Bytes::from(v);
            self.buf_start = offset;
        }
        Ok(self.buf.slice((offset - self.buf_start) as usize..))
    }
}

/// Applies one frame read at open to the index. Checks numbering, never trusts it.
/// The most recent event ids seen while scanning, at most `cap` of them,
/// with streams by number so the scan touches no name per event.
struct RecentIds {
    cap: usize,
    ring: VecDeque<(Uuid, u32, u64, u64)>,
    names: Vec<Arc<str>>,
}

impl RecentIds {
    fn push(&mut self, id: Uuid, stream_no: u32, version: u64, position: u64) {
        if self.cap == 0 {
            return;
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back((id, stream_no, version, position));
    }

    fn into_window(self) -> IdWindow {
        let names = self.names;
        let recent = self.ring.into_iter().map(|(id, no, v, p)| (id, names[no as usize].clone(), v, p)).collect();
        IdWindow::from_recent(self.cap, recent)
    }
}

fn apply_recovered(index: &mut Index, ids: &mut RecentIds, frame: &Frame, loc: FrameLoc, path: &Path) -> Result<()> {
    let corrupt = |reason: String| LogError::Corrupt { file: path.to_path_buf(), offset: loc.offset as u64, reason };
    let ordinal = index.frame_count();
    match &frame.body {
        Some(frame::Body::Batch(batch)) => {
            let first = index.next_position;
            for (i, entry) in batch.entries.iter().enumerate() {
                let (id, stream, version, position) = match &entry.kind {
                    Some(entry::Kind::Event(bytes)) => {
                        let e =
                            format::event_keys(bytes).map_err(|e| corrupt(format!("event does not decode: {e}")))?;
                        let id =
                            Uuid::from_slice(e.event_id).map_err(|_| corrupt("event id is not 16 bytes".into()))?;
                        (Some(id), e.stream, e.version, e.position)
                    }
                    Some(entry::Kind::Redacted(r)) => (None, r.stream.as_str(), r.version, r.global_position),
                    None => return Err(corrupt("batch entry has no content".into())),
                };
                if position != index.next_position {
                    return Err(corrupt(format!("event at position {position}, expected {}", index.next_position)));
                }
                if !index.streams.contains_key(stream) {
                    index.streams.insert(Arc::from(stream), FileStream::default());
                }
                let s = index
                    .streams
                    .get_mut(stream)
                    .ok_or_else(|| corrupt(format!("stream {stream:?} vanished from the index")))?;
                if s.recovered_no == u32::MAX {
                    s.recovered_no = ids.names.len() as u32;
                    ids.names.push(Arc::from(stream));
                }
                if version != s.rules.next_version {
                    return Err(corrupt(format!(
                        "event of stream {stream:?} has version {version}, expected {}",
                        s.rules.next_version
                    )));
                }
                s.locs.push_back(pack_loc(ordinal, i as u32));
                index.hot_versions += 1;
                s.rules.apply_append(1);
                if s.touch(loc.segment as u64) {
                    index
                        .touched
                        .entry(loc.segment as u64)
                        .or_default()
                        .push(ids.names[s.recovered_no as usize].clone());
                }
                if let Some(id) = id {
                    ids.push(id, s.recovered_no, version, position);
                }
                index.next_position += 1;
            }
            let events = batch.entries.len() as u32;
            index.push_frame(FrameLoc { events, ..loc }, (events > 0).then_some(first));
        }
        Some(frame::Body::Metadata(bytes)) => {
            let change = StreamMetadataChange::decode(bytes.clone())
                .map_err(|e| corrupt(format!("metadata change does not decode: {e}")))?;
            let name = index.intern(&change.stream);
            apply_metadata_change(&mut index.streams.entry(name).or_default().rules, &change);
            index.push_frame(loc, None);
        }
        Some(frame::Body::Checkpoint(_)) => {
            index.push_frame(loc, None);
        }
        None => return Err(corrupt("frame has no body".into())),
    }
    Ok(())
}

/// A write that recovery decided on; made only after every check passed.
enum Fix {
    RemoveLeftover(std::path::PathBuf),
    RewriteHeader { number: u64 },
    CutTornTail { number: u64, offset: u64, len: u64, reason: String },
}

/// Opens the log's files, checks everything, and only then writes: a
/// refused open leaves every file as it found it. The order is: scan every
/// segment (read only) and decide where a torn tail starts; check the
/// signed heads (`head.sig` and the witness's copy) against the frames that
/// would remain; then remove leftovers, rewrite an unused header, cut the
/// torn tail.
pub(super) fn recover(dir: &Path, segments_dir: &Path, config: &FileLogConfig) -> Result<Recovered> {
    let vfs = &*config.vfs;
    let names = vfs.list(segments_dir).map_err(|e| LogError::io(format!("listing {}", segments_dir.display()), e))?;
    let mut fixes = Vec::new();
    let mut numbers = Vec::new();
    for name in &names {
        if name.ends_with(".tmp") {
            // An interrupted scavenge; the original segment is intact.
            fixes.push(Fix::RemoveLeftover(segments_dir.join(name)));
        } else if let Some(n) = format::parse_segment_file_name(name) {
            numbers.push(n);
        } else {
            warn!(file = %name, "ignoring unexpected file in the segments directory");
        }
    }
    numbers.sort_unstable();
    if numbers.is_empty() {
        // A new log, unless a signed head says frames were written.
        check_signed_head(dir, config, 0, None)?;
        for fix in fixes.drain(..) {
            apply_fix(vfs, segments_dir, &mut Default::default(), fix)?;
        }
        create_segment(vfs, segments_dir, 0)?;
        numbers.push(0);
    }
    for (i, n) in numbers.iter().enumerate() {
        if *n != i as u64 {
            return Err(LogError::Corrupt {
                file: segments_dir.join(format::segment_file_name(i as u64)),
                offset: 0,
                reason: "segment file is missing".into(),
            });
        }
    }
    let mut index = Index::default();
    let mut ids = RecentIds { cap: config.idempotency_window, ring: VecDeque::new(), names: Vec::new() };
    let mut chain = format::GENESIS_CHAIN;
    // `numbers` is 0..n without gaps (checked above) and never empty.
    let last = numbers.len() as u64 - 1;
    let mut cut_at = None;
    for &number in &numbers {
        let path = segments_dir.join(format::segment_file_name(number));
        let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
        let file = vfs.open(&path, false).map_err(|e| io("opening", e))?;
        let len = file.len().map_err(|e| io("reading the length of", e))?;
        let is_last = number == last;
        let mut header = vec![0u8; (SEGMENT_HEADER_LEN.min(len)) as usize];
        file.read_at(0, &mut header).map_err(|e| io("reading the header of", e))?;
        if let Err(reason) = format::check_segment_header(&header, number) {
            if is_last && len <= SEGMENT_HEADER_LEN {
                // Created but never used (a crash while rolling): rewrite it.
                warn!(file = %path.display(), %reason, "the header of an unused last segment will be rewritten");
                fixes.push(Fix::RewriteHeader { number });
            } else {
                return Err(LogError::Corrupt { file: path, offset: 0, reason });
            }
        }
        if number > u32::MAX as u64 {
            return Err(LogError::Corrupt { file: path, offset: 0, reason: "too many segments".into() });
        }
        let mut scanner = Scanner { file: &*file, len: len.max(SEGMENT_HEADER_LEN), buf: Bytes::new(), buf_start: 0 };
        let mut offset = SEGMENT_HEADER_LEN;
        while offset < len {
            let bytes = scanner.at(offset, format::FRAME_HEADER_LEN).map_err(|e| io("reading", e))?;
            let need = format::peek_frame_len(&bytes).unwrap_or(format::FRAME_HEADER_LEN);
            let bytes = scanner.at(offset, need).map_err(|e| io("reading", e))?;
            let failure = match format::parse_frame_shared(&bytes) {
                FrameParse::Frame { frame, len: frame_len } => {
                    let loc =
                        FrameLoc { segment: number as u32, offset: offset as u32, len: frame_len as u32, events: 0 };
                    apply_recovered(&mut index, &mut ids, &frame, loc, &path)?;
                    chain.copy_from_slice(&frame.chain);
                    index.frames_since_checkpoint = if matches!(frame.body, Some(frame::Body::Checkpoint(_))) {
                        0
                    } else {
                        index.frames_since_checkpoint + 1
                    };
                    offset += frame_len as u64;
                    continue;
                }
                FrameParse::Incomplete => "frame extends past the end of the file".to_owned(),
                FrameParse::Invalid(reason) => reason,
            };
            if !is_last {
                return Err(LogError::Corrupt { file: path, offset, reason: failure });
            }
            check_torn_tail(&*file, &path, offset, len, &failure)?;
            cut_at = Some((path.clone(), offset, index.frame_count()));
            fixes.push(Fix::CutTornTail { number, offset, len, reason: failure });
            break;
        }
        if is_last {
            index.end_segment = number;
            index.end_offset = offset.max(SEGMENT_HEADER_LEN);
        } else {
            // Sealed: its index leaves memory now, so open needs memory for
            // one segment's index, not the log's (only derived data is
            // written: the unlinked scratch file; spill.rs).
            index.spill_owned(number, vfs, dir);
        }
        index.segments.insert(number, file);
    }
    index.chain = chain;
    check_signed_head(dir, config, index.frame_count(), cut_at.as_ref().map(|(p, o, _)| (p.as_path(), *o)))?;
    for fix in fixes {
        apply_fix(vfs, segments_dir, &mut index.segments, fix)?;
    }
    let active = index.segments[&last].clone();
    let ids = ids.into_window();
    Ok(Recovered { index, ids, active })
}

fn apply_fix(
    vfs: &dyn Vfs,
    segments_dir: &Path,
    segments: &mut std::collections::BTreeMap<u64, Arc<dyn StorageFile>>,
    fix: Fix,
) -> Result<()> {
    match fix {
        Fix::RemoveLeftover(path) => {
            let _ = vfs.remove(&path);
        }
        Fix::RewriteHeader { number } => {
            let path = segments_dir.join(format::segment_file_name(number));
            let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
            warn!(file = %path.display(), "rewriting the header of an unused last segment");
            let file = match segments.get(&number) {
                Some(f) => f.clone(),
                None => vfs.open(&path, false).map_err(|e| io("opening", e))?,
            };
            file.set_len(0).map_err(|e| io("truncating", e))?;
            file.write_at(0, &format::encode_segment_header(number)).map_err(|e| io("writing", e))?;
            file.sync_data().map_err(|e| io("syncing", e))?;
        }
        Fix::CutTornTail { number, offset, len, reason } => {
            let path = segments_dir.join(format::segment_file_name(number));
            let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
            let file = segments.get(&number).cloned().ok_or_else(|| LogError::Corrupt {
                file: path.clone(),
                offset,
                reason: "segment vanished during recovery".into(),
            })?;
            warn!(file = %path.display(), offset, dropped_bytes = len - offset, %reason, "repairing torn tail");
            file.set_len(offset).map_err(|e| io("truncating", e))?;
            file.sync_data().map_err(|e| io("syncing", e))?;
        }
    }
    Ok(())
}

/// Decides whether the bad bytes at `offset` of the last segment are a torn
/// tail (to be cut) or damage to written data (refused); reads only.
///
/// A torn tail is what an interrupted write leaves: the file ends inside
/// the frame, or a sector of the frame was never written (reads as zeros).
/// Refused instead: a valid frame after `offset` whose durable floor
/// (`group_start`) is above `offset` (the bytes were durable before it was
/// staged); a frame whose checksum matches a shorter or longer body than
/// its length field says, or whose header alone is wrong (the frame is
/// whole: its header was damaged); a whole frame with every sector written
/// whose checksum fails (a byte changed after it was written).
fn check_torn_tail(file: &dyn StorageFile, path: &Path, offset: u64, len: u64, failure: &str) -> Result<()> {
    let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
    let mut rest = vec![0u8; (len - offset) as usize];
    file.read_at(offset, &mut rest).map_err(|e| io("reading the tail of", e))?;
    let refuse =
        |reason: String| LogError::Corrupt { file: path.to_path_buf(), offset, reason: format!("{failure}; {reason}") };
    let magic = format::FRAME_MAGIC.to_le_bytes();
    let mut at = 1;
    while at + format::FRAME_HEADER_LEN <= rest.len() {
        if rest[at..at + 4] == magic
            && let FrameParse::Frame { frame, .. } = format::parse_frame(&rest[at..])
            && frame.group_start > offset
        {
            return Err(refuse(format!(
                "a valid frame written after these bytes were durable follows at offset {}, so this is not a torn tail",
                offset + at as u64
            )));
        }
        at += 1;
    }
    torn_shape(&rest, offset).map_err(refuse)
}

/// Whether `rest` (the bytes from a bad frame at `offset` to the end of the
/// file) has the shape an interrupted write leaves; `Err` says why not.
pub(super) fn torn_shape(rest: &[u8], offset: u64) -> std::result::Result<(), String> {
    const SECTOR: u64 = 512;
    let header = format::FRAME_HEADER_LEN;
    if rest.len() < header {
        return Ok(()); // the file ends inside the frame's header
    }
    let body_len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    let body = &rest[header..];
    // The checksum of some prefix of what follows matches: the body is
    // whole, and the magic or length beside it was damaged.
    let mut running = 0u32;
    for (i, byte) in body.iter().enumerate().take(format::MAX_FRAME_BODY) {
        running = crc32c::crc32c_append(running, std::slice::from_ref(byte));
        if running == crc {
            return Err(format!(
                "the checksum matches a body of {} bytes that is all there, so the frame header was damaged after it was written",
                i + 1
            ));
        }
    }
    let sane = (1..=format::MAX_FRAME_BODY).contains(&body_len);
    if sane && header + body_len > rest.len() {
        return Ok(()); // the file ends inside the frame
    }
    // Without a usable length the frame's extent is unknown: its header
    // alone must show the unwritten sector.
    let extent = if sane { header + body_len } else { header };
    // A sector (or the frame's part of one) that holds only zeros was
    // never written.
    let mut start = 0usize;
    while start < extent {
        let sector_end = (((offset + start as u64) / SECTOR + 1) * SECTOR - offset) as usize;
        let end = sector_end.min(extent);
        if rest[start..end].iter().all(|&b| b == 0) {
            return Ok(());
        }
        start = end;
    }
    Err("the frame is whole and every sector of it was written, yet its checksum fails: it was damaged after it was written (an acknowledged frame is never cut)".into())
}

/// Refuses a signing key other than the one the log was created with (as
/// recorded in `signing.pub`): its checkpoints would not verify, and a
/// second key would split the audit trail.
fn check_recorded_key(dir: &Path, config: &FileLogConfig) -> Result<()> {
    let path = dir.join(super::state::PUBLIC_KEY_FILE);
    if !config.vfs.exists(&path) {
        return Ok(());
    }
    let io = |e| LogError::io(format!("reading {}", path.display()), e);
    let file = config.vfs.open(&path, false).map_err(io)?;
    let mut bytes = vec![0u8; file.len().map_err(io)? as usize];
    file.read_at(0, &mut bytes).map_err(io)?;
    let recorded = String::from_utf8_lossy(&bytes).trim().to_owned();
    let configured = super::state::public_key_hex(&config.signing_key);
    if recorded != configured {
        return Err(LogError::WrongSigningKey { dir: dir.to_path_buf(), configured, recorded });
    }
    Ok(())
}

/// Refuses to open a log shorter than its latest signed head (from
/// `head.sig` or the witness, whichever covers more): the head is written
/// only after its checkpoint frame is durable, so a shorter log was
/// truncated or damaged, not torn. `cut` is where recovery would cut a torn
/// tail: a head covering frames there means the bytes are not a torn tail
/// but damage to signed frames, and the error names that place.
fn check_signed_head(dir: &Path, config: &FileLogConfig, frame_count: u64, cut: Option<(&Path, u64)>) -> Result<()> {
    let key = config.signing_key.verifying_key();
    let path = dir.join(HEAD_FILE);
    if config.vfs.exists(&path) {
        check_recorded_key(dir, config)?;
    }
    let local = match read_signed_head(&*config.vfs, &path, &key, HeadForm::HeadSig) {
        Ok(head) => head,
        Err(e) => match config.witness_path() {
            // A damaged head.sig with a witness: the witness's copy stands in.
            Some(w) if matches!(read_signed_head(&*config.vfs, &w, &key, HeadForm::Note), Ok(Some(_))) => {
                warn!(error = %e, witness = %w.display(), "head.sig is damaged; checking against the witness's copy");
                None
            }
            _ => {
                return Err(match e {
                    LogError::Corrupt { file, offset, reason } => LogError::Corrupt {
                        file,
                        offset,
                        reason: format!(
                            "{reason}; the log cannot be checked for truncation without it (configure a witness, or move head.sig aside to open without that check)"
                        ),
                    },
                    other => other,
                });
            }
        },
    };
    let witness = match config.witness_path() {
        Some(w) => read_signed_head(&*config.vfs, &w, &key, HeadForm::Note)?.map(|h| (w, h)),
        None => None,
    };
    let mut heads: Vec<(std::path::PathBuf, proto::log::Checkpoint)> =
        local.map(|h| (path.clone(), h)).into_iter().collect();
    heads.extend(witness);
    for (file, head) in heads {
        if head.frame_count >= frame_count {
            let covered = head.frame_count + 1;
            return Err(match cut {
                Some((segment, offset)) => LogError::Corrupt {
                    file: segment.to_path_buf(),
                    offset,
                    reason: format!(
                        "bad bytes inside signed frames: the signed head in {} covers {covered} frames but only {frame_count} are intact before this offset; nothing was cut",
                        file.display()
                    ),
                },
                None => LogError::Corrupt {
                    file,
                    offset: 0,
                    reason: format!(
                        "the signed head covers {covered} frames but the log holds only {frame_count}: the log was truncated or rolled back"
                    ),
                },
            });
        }
    }
    Ok(())
}
