//! Reads of the file log: stream reads by version and `$all` by position,
//! both from the published index. Readers copy what they need out of the
//! index under a short read lock and do their I/O without it.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use proto::log::{Frame, entry, frame};
use proto::storage::StoredEvent;

use super::format::{self, FrameParse};
use super::scratch::{RECORD_LEN, Scratch};
use super::spill::{frame_record, version_record};
use super::state::{FrameLoc, Place, Shared};
use super::vfs::StorageFile;
use crate::model::StreamRules;
use crate::{AllPage, Direction, EventFilter, LogError, ReadFrom, RecordedEvent, Result, validate_stream_name};

/// A stream version to read: version, entry, frame, file.
pub(super) type VersionAt = (u64, u32, FrameLoc, Arc<dyn StorageFile>);

impl Shared {
    pub(super) fn corrupt(&self, loc: FrameLoc, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            file: self.segment_path(loc.segment as u64),
            offset: loc.offset as u64,
            reason: reason.into(),
        }
    }

    pub(super) fn read_frame(&self, file: &dyn StorageFile, loc: FrameLoc) -> Result<Frame> {
        let buf = self.read_span(file, loc.segment, loc.offset, loc.len as usize)?;
        self.parse_frame(&buf, loc)
    }

    /// `len` bytes of a segment from `offset`, in one read.
    fn read_span(&self, file: &dyn StorageFile, segment: u32, offset: u32, len: usize) -> Result<Bytes> {
        let mut buf = vec![0u8; len];
        file.read_at(offset as u64, &mut buf).map_err(|e| {
            LogError::io(format!("reading {} at offset {offset}", self.segment_path(segment as u64).display()), e)
        })?;
        Ok(Bytes::from(buf))
    }

    /// The frame `loc` names, from a buffer holding exactly its bytes.
    fn parse_frame(&self, buf: &Bytes, loc: FrameLoc) -> Result<Frame> {
        if buf.len() != loc.len as usize {
            return Err(self.corrupt(loc, "frame shorter than indexed"));
        }
        match format::parse_frame_shared(buf) {
            FrameParse::Frame { frame, .. } => Ok(frame),
            FrameParse::Incomplete => Err(self.corrupt(loc, "frame shorter than indexed")),
            FrameParse::Invalid(reason) => Err(self.corrupt(loc, reason)),
        }
    }

    /// The stored event at entry `entry` of a frame; `None` if redacted.
    pub(super) fn entry_event(&self, frame: &Frame, entry: u32, loc: FrameLoc) -> Result<Option<StoredEvent>> {
        let Some(frame::Body::Batch(batch)) = &frame.body else {
            return Err(self.corrupt(loc, "indexed event is not in a batch frame"));
        };
        match batch.entries.get(entry as usize).and_then(|e| e.kind.as_ref()) {
            Some(entry::Kind::Event(bytes)) => StoredEvent::decode(bytes.clone())
                .map(Some)
                .map_err(|e| self.corrupt(loc, format!("event does not decode: {e}"))),
            Some(entry::Kind::Redacted(_)) => Ok(None),
            None => Err(self.corrupt(loc, format!("batch has no entry {entry}"))),
        }
    }

    pub(super) fn to_recorded(&self, stored: StoredEvent, loc: FrameLoc) -> Result<RecordedEvent> {
        let stream: Arc<str> = Arc::from(stored.stream.as_str());
        RecordedEvent::from_stored(stored, stream).map_err(|reason| self.corrupt(loc, reason))
    }

    pub(super) fn read_stream_blocking(
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
            let s = idx.streams.get(stream).ok_or_else(|| LogError::StreamNotFound { stream: stream.to_owned() })?;
            s.rules.check_readable(stream)?;
            (s.rules.clone(), s.rules.read_range(from, direction))
        };
        let now = self.clock.now_micros();
        let mut cached: Option<((u32, u32), Frame)> = None;
        while out.len() < max {
            let want = (max - out.len()).min(1024);
            let Some(batch) = self.versions_at(stream, &mut versions, want)? else { break };
            if batch.is_empty() {
                break;
            }
            for (version, entry, loc, file) in batch {
                let key = (loc.segment, loc.offset);
                let frame = match cached.take() {
                    Some((k, frame)) if k == key => frame,
                    _ => self.read_frame(&*file, loc)?,
                };
                let stored = self.entry_event(&frame, entry, loc)?;
                cached = Some((key, frame));
                if let Some(stored) = stored {
                    if stored.stream != stream || stored.version != version {
                        return Err(
                            self.corrupt(loc, format!("index points at the wrong event for {stream}@{version}"))
                        );
                    }
                    if rules.is_visible(version, stored.recorded_at_micros, now) {
                        out.push(self.to_recorded(stored, loc)?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Where `version` of `stream` is; `None` if it has no such version.
    pub(super) fn version_at(&self, stream: &str, version: u64) -> Result<Option<VersionAt>> {
        Ok(self.versions_at(stream, &mut std::iter::once(version), 1)?.and_then(|mut v| v.pop()))
    }

    /// Where the next `want` of `versions` of `stream` are (those it has),
    /// in order; `None` if the stream is gone. The places come from the
    /// index under its lock, and spilled ones from the scratch file
    /// without it, a run of neighbouring records in one read.
    fn versions_at(
        &self,
        stream: &str,
        versions: &mut dyn Iterator<Item = u64>,
        want: usize,
    ) -> Result<Option<Vec<VersionAt>>> {
        let (places, files, scratch) = {
            let idx = self.read();
            let Some(s) = idx.streams.get(stream) else { return Ok(None) };
            let places: Vec<(u64, Place)> = versions.take(want).filter_map(|v| Some((v, idx.place(s, v)?))).collect();
            let mut files: Vec<(u32, Arc<dyn StorageFile>)> = Vec::new();
            for (_, p) in &places {
                let segment = match p {
                    Place::Hot { loc, .. } => loc.segment,
                    Place::Spilled { segment, .. } => *segment,
                };
                if !files.iter().any(|(n, _)| *n == segment) {
                    let Some(file) = idx.segments.get(&(segment as u64)) else { continue };
                    files.push((segment, file.clone()));
                }
            }
            (places, files, idx.scratch.clone())
        };
        let file_of = |segment: u32| -> Result<Arc<dyn StorageFile>> {
            files.iter().find(|(n, _)| *n == segment).map(|(_, f)| f.clone()).ok_or_else(|| LogError::Corrupt {
                file: self.segment_path(segment as u64),
                offset: 0,
                reason: "indexed segment is not open".into(),
            })
        };
        let mut out = Vec::with_capacity(places.len());
        let mut i = 0;
        while i < places.len() {
            match places[i].1 {
                Place::Hot { loc, entry } => {
                    out.push((places[i].0, entry, loc, file_of(loc.segment)?));
                    i += 1;
                }
                Place::Spilled { segment, record_at } => {
                    // The run of places whose records follow each other
                    // (forwards or backwards) in the scratch file.
                    let step = match places.get(i + 1) {
                        Some((_, Place::Spilled { record_at: next, segment: s })) if *s == segment => {
                            if *next == record_at + RECORD_LEN {
                                1i64
                            } else if *next + RECORD_LEN == record_at {
                                -1
                            } else {
                                0
                            }
                        }
                        _ => 0,
                    };
                    let mut n = 1usize;
                    while step != 0
                        && matches!(places.get(i + n), Some((_, Place::Spilled { record_at: r, segment: s }))
                            if *s == segment && *r as i64 == record_at as i64 + step * (n as i64) * RECORD_LEN as i64)
                    {
                        n += 1;
                    }
                    let start = if step < 0 { record_at - (n as u64 - 1) * RECORD_LEN } else { record_at };
                    let scratch = scratch_of(&scratch)?;
                    let bytes = scratch.read(start, n as u64)?;
                    let file = file_of(segment)?;
                    for k in 0..n {
                        let at = places[i + k].1;
                        let Place::Spilled { record_at: r, .. } = at else { continue };
                        let o = (r - start) as usize;
                        let (loc, entry) = version_record(segment, &bytes[o..o + RECORD_LEN as usize], r)?;
                        out.push((places[i + k].0, entry, loc, file.clone()));
                    }
                    i += n;
                }
            }
        }
        Ok(Some(out))
    }

    /// The frame holding position `from` (or the first after it): its
    /// ordinal and the position of its first event. From the sparse index
    /// of the frames in memory, or by a binary search of a spilled
    /// segment's frame records.
    fn locate(&self, from: u64) -> Result<(u64, u64)> {
        let (sealed, scratch) = {
            let idx = self.read();
            if from >= idx.hot_first_position || idx.sealed.is_empty() {
                let k = idx.sparse.partition_point(|&(p, _)| p <= from);
                let (mut o, mut p) = if k == 0 {
                    (idx.hot_base, idx.hot_first_position)
                } else {
                    (idx.sparse[k - 1].1, idx.sparse[k - 1].0)
                };
                while let Some(f) = idx.hot_frame(o)
                    && p + f.events as u64 <= from
                {
                    p += f.events as u64;
                    o += 1;
                }
                return Ok((o, p));
            }
            let k = idx.sealed.partition_point(|s| s.first_position + s.events <= from);
            let Some(sealed) = idx.sealed.get(k).copied() else {
                return Ok((idx.hot_base, idx.hot_first_position));
            };
            (sealed, idx.scratch.clone())
        };
        let scratch = scratch_of(&scratch)?;
        let target = from - sealed.first_position;
        let delta_of =
            |i: u64, bytes: &[u8]| -> Result<u64> { Ok(frame_record(0, bytes, sealed.frames_at + i * RECORD_LEN)?.1) };
        // The last frame whose first position is at most `from`.
        let (mut lo, mut hi) = (0u64, sealed.frames);
        while hi - lo > 256 {
            let mid = lo + (hi - lo) / 2;
            let at = sealed.frames_at + mid * RECORD_LEN;
            if delta_of(mid, &scratch.read(at, 1)?)? <= target { lo = mid } else { hi = mid }
        }
        let block = scratch.read(sealed.frames_at + lo * RECORD_LEN, hi - lo)?;
        let mut found = (lo, 0u64);
        for i in lo..hi {
            let o = ((i - lo) * RECORD_LEN) as usize;
            let d = delta_of(i, &block[o..o + RECORD_LEN as usize])?;
            if d > target {
                break;
            }
            found = (i, d);
        }
        Ok((sealed.first_ordinal + found.0, sealed.first_position + found.1))
    }

    /// The frames from ordinal `from`, at most `n` and none past `end` or
    /// past the end of `from`'s segment, with their files.
    fn frames_from(&self, from: u64, n: u64, end: u64) -> Result<Vec<(FrameLoc, Arc<dyn StorageFile>)>> {
        let idx = self.read();
        let n = n.min(end.saturating_sub(from));
        if from >= idx.hot_base {
            let mut out = Vec::with_capacity(n as usize);
            for o in from..from + n {
                let Some(loc) = idx.hot_frame(o) else { break };
                let file = idx
                    .segments
                    .get(&(loc.segment as u64))
                    .ok_or_else(|| self.corrupt(loc, "indexed segment is not open"))?;
                out.push((loc, file.clone()));
            }
            return Ok(out);
        }
        let k = idx.sealed.partition_point(|s| s.first_ordinal + s.frames <= from);
        let Some(sealed) = idx.sealed.get(k).copied() else { return Ok(Vec::new()) };
        let first = from - sealed.first_ordinal;
        // Records are small: take a page of them per read of the scratch
        // file (the frames themselves are still read 16 at most at a time).
        let count = n.max(SPILLED_READ_AHEAD).min(end.saturating_sub(from)).min(sealed.frames - first);
        let scratch = idx.scratch.clone();
        let file = idx.segments.get(&(k as u64)).cloned().ok_or_else(|| LogError::Corrupt {
            file: self.segment_path(k as u64),
            offset: 0,
            reason: "indexed segment is not open".into(),
        })?;
        drop(idx);
        let at = sealed.frames_at + first * RECORD_LEN;
        let bytes = scratch_of(&scratch)?.read(at, count)?;
        bytes
            .chunks_exact(RECORD_LEN as usize)
            .enumerate()
            .map(|(i, r)| Ok((frame_record(k as u32, r, at + i as u64 * RECORD_LEN)?.0, file.clone())))
            .collect()
    }

    pub(super) fn read_all_blocking(&self, from: u64, max: usize, filter: &EventFilter) -> Result<AllPage> {
        // Find the frame holding `from`: the sparse index (or a spilled
        // segment's frame records), then at most SPARSE_EVERY frames.
        let (head, end_ordinal) = {
            let idx = self.read();
            (idx.next_position, idx.frame_count())
        };
        let (mut ordinal, mut position) = if from >= head { (end_ordinal, head) } else { self.locate(from)? };
        let mut page = AllPage { events: Vec::new(), next_position: from, head };
        if from >= head || max == 0 {
            return Ok(page);
        }
        let now = self.clock.now_micros();
        let mut candidates = Vec::new();
        while ordinal < end_ordinal {
            let chunk = self.frames_from(ordinal, READ_AHEAD_FRAMES, end_ordinal)?;
            if chunk.is_empty() {
                break;
            }
            ordinal += chunk.len() as u64;
            // Frames that follow each other in one segment are read with
            // one pread (one syscall and one buffer for the run).
            let mut span: Option<(usize, Bytes)> = None;
            for (n, (loc, file)) in chunk.iter().enumerate() {
                let loc = *loc;
                if loc.events == 0 {
                    continue;
                }
                let first = position;
                position += loc.events as u64;
                if position <= from {
                    continue;
                }
                let in_span = span.as_ref().and_then(|(start, buf)| {
                    let start = chunk[*start].0;
                    let at = loc.offset.checked_sub(start.offset).filter(|_| loc.segment == start.segment)? as usize;
                    let end = at + loc.len as usize;
                    (end <= buf.len()).then(|| buf.slice(at..end))
                });
                let bytes = match in_span {
                    Some(bytes) => bytes,
                    None => {
                        let run = contiguous_run(&chunk[n..(n + READ_AHEAD_FRAMES as usize).min(chunk.len())]);
                        let buf = self.read_span(&**file, loc.segment, loc.offset, run)?;
                        let bytes = buf.slice(..loc.len as usize);
                        span = Some((n, buf));
                        bytes
                    }
                };
                let frame = self.parse_frame(&bytes, loc)?;
                let Some(frame::Body::Batch(batch)) = frame.body else {
                    return Err(self.corrupt(loc, "indexed batch frame holds no batch"));
                };
                candidates.clear();
                let mut last_stream = None;
                for (i, e) in batch.entries.into_iter().enumerate() {
                    let p = first + i as u64;
                    if p < from || p >= head {
                        continue;
                    }
                    let Some(entry::Kind::Event(bytes)) = e.kind else {
                        continue;
                    };
                    let event = format::decode_recorded(&bytes, &mut last_stream)
                        .map_err(|err| self.corrupt(loc, format!("event does not decode: {err}")))?;
                    if event.position != p {
                        return Err(self.corrupt(loc, format!("event has position {}, expected {p}", event.position)));
                    }
                    if filter.matches(&event.stream, event.event_type()) {
                        candidates.push(event);
                    }
                }
                // A batch is mostly one stream: look its rules up once per
                // run of events of one stream.
                let idx = self.read();
                let mut last: Option<(Arc<str>, Option<&StreamRules>)> = None;
                for event in candidates.drain(..) {
                    let rules = match &last {
                        Some((name, rules)) if Arc::ptr_eq(name, &event.stream) => *rules,
                        _ => {
                            let rules = idx.streams.get(&*event.stream).map(|st| &st.rules);
                            last = Some((event.stream.clone(), rules));
                            rules
                        }
                    };
                    if !rules.is_some_and(|r| r.is_visible(event.version, event.recorded_at_micros, now)) {
                        continue;
                    }
                    let p = event.position;
                    page.events.push(event);
                    if page.events.len() >= max {
                        page.next_position = p + 1;
                        return Ok(page);
                    }
                }
            }
        }
        page.next_position = head;
        Ok(page)
    }
}

fn scratch_of(scratch: &Option<Arc<Scratch>>) -> Result<&Scratch> {
    scratch.as_deref().ok_or_else(|| {
        LogError::io("reading the log's index", std::io::Error::other("a spilled segment but no scratch file"))
    })
}

/// Frames a `$all` read looks up in the index at a time, and reads with
/// one pread at most.
const READ_AHEAD_FRAMES: u64 = 16;
/// Frame records of a spilled segment read from the scratch file at a
/// time (4 KiB).
const SPILLED_READ_AHEAD: u64 = 256;
/// Largest single read of a run of frames.
const MAX_SPAN: usize = 1 << 20;

/// Bytes of the run of frames at the start of `chunk` that lie back to back
/// in one segment (at least the first frame, at most [`MAX_SPAN`] beyond it).
fn contiguous_run(chunk: &[(FrameLoc, Arc<dyn StorageFile>)]) -> usize {
    let first = chunk[0].0;
    let mut end = first.offset as usize + first.len as usize;
    for (loc, _) in &chunk[1..] {
        if loc.segment != first.segment || loc.offset as usize != end || end - first.offset as usize > MAX_SPAN {
            break;
        }
        end += loc.len as usize;
    }
    end - first.offset as usize
}
