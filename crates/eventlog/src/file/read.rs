//! Reads of the file log: stream reads by version and `$all` by position,
//! both from the published index. Readers copy what they need out of the
//! index under a short read lock and do their I/O without it.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use proto::log::{Frame, entry, frame};
use proto::storage::StoredEvent;

use super::format::{self, FrameParse};
use super::state::{FrameLoc, Shared, unpack_loc};
use super::vfs::StorageFile;
use crate::model::StreamRules;
use crate::{AllPage, Direction, EventFilter, LogError, ReadFrom, RecordedEvent, Result, validate_stream_name};

/// A stream version to read: version, frame ordinal, entry, frame, file.
type VersionAt = (u64, u64, u32, FrameLoc, Arc<dyn StorageFile>);

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
        let mut cached: Option<(u64, Frame)> = None;
        while out.len() < max {
            let want = (max - out.len()).min(1024);
            let batch: Vec<VersionAt> = {
                let idx = self.read();
                let Some(s) = idx.streams.get(stream) else { break };
                versions
                    .by_ref()
                    .take(want)
                    .filter_map(|v| {
                        let (ordinal, entry) = unpack_loc(s.loc_of(v)?);
                        let loc = idx.frames[ordinal as usize];
                        Some((v, ordinal, entry, loc, idx.segments[&(loc.segment as u64)].clone()))
                    })
                    .collect()
            };
            if batch.is_empty() {
                break;
            }
            for (version, ordinal, entry, loc, file) in batch {
                let frame = match cached.take() {
                    Some((o, frame)) if o == ordinal => frame,
                    _ => self.read_frame(&*file, loc)?,
                };
                let stored = self.entry_event(&frame, entry, loc)?;
                cached = Some((ordinal, frame));
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

    pub(super) fn read_all_blocking(&self, from: u64, max: usize, filter: &EventFilter) -> Result<AllPage> {
        // Find the frame holding `from`: the sparse index, then at most
        // SPARSE_EVERY frames by their event counts, without any I/O.
        let (head, end_ordinal, mut ordinal, mut position) = {
            let idx = self.read();
            let k = idx.sparse.partition_point(|&(p, _)| p <= from);
            let (mut o, mut p) = if k == 0 { (0u64, 0u64) } else { (idx.sparse[k - 1].1, idx.sparse[k - 1].0) };
            while (o as usize) < idx.frames.len() && p + idx.frames[o as usize].events as u64 <= from {
                p += idx.frames[o as usize].events as u64;
                o += 1;
            }
            (idx.next_position, idx.frames.len() as u64, o, p)
        };
        let mut page = AllPage { events: Vec::new(), next_position: from, head };
        if from >= head || max == 0 {
            return Ok(page);
        }
        let now = self.clock.now_micros();
        let mut candidates = Vec::new();
        while ordinal < end_ordinal {
            let chunk: Vec<(FrameLoc, Arc<dyn StorageFile>)> = {
                let idx = self.read();
                (ordinal..end_ordinal.min(ordinal + READ_AHEAD_FRAMES))
                    .map(|o| {
                        let loc = idx.frames[o as usize];
                        (loc, idx.segments[&(loc.segment as u64)].clone())
                    })
                    .collect()
            };
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
                        let run = contiguous_run(&chunk[n..]);
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

/// Frames a `$all` read looks up in the index at a time.
const READ_AHEAD_FRAMES: u64 = 16;
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
