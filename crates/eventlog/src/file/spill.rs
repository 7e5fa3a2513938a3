//! Spilling the index of sealed segments: once the writer has moved past a
//! segment, its frames' places and its streams' version places move from
//! memory to a scratch file, so the index in memory covers the active
//! segment only and a node's memory no longer grows with its log.
//!
//! The scratch file is an unlinked file in the log's directory (gone when
//! the log closes or the process dies), append-only while the log is open.
//! It is derived data: open rebuilds it from the segments it scans, and it
//! is never read across opens, so it needs no fdatasync and no format
//! compatibility. Each spilled segment is two tables of 16-byte records
//! (docs/event-log-format.md, "The index of sealed segments"):
//!
//! - a frame record per frame: offset, length, entry count, and the
//!   position of its first event less the segment's first position;
//! - a version record per event, stream by stream: offset and length of its
//!   frame, its entry in the frame, the frame's entry count.
//!
//! A stream keeps one [`Run`] per spilled segment it has versions in. A
//! spill that fails (a full disk, say) leaves the segment in memory and is
//! tried again later; nothing else depends on it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::format;
use super::scratch::{RECORD_LEN, Scratch, Sealed};
use super::state::{FrameLoc, Index, Run, Shared, unpack_loc};
use super::vfs::Vfs;
use crate::{LogError, Result};

pub(super) fn put_record(buf: &mut Vec<u8>, fields: [u32; 4]) {
    for f in fields {
        buf.extend_from_slice(&f.to_le_bytes());
    }
}

fn record_fields(bytes: &[u8]) -> [u32; 4] {
    let f = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [f(0), f(4), f(8), f(12)]
}

/// A record's frame place, checked for sanity: the scratch file is not
/// checksummed, and a length read from it sizes a buffer. (A wrong but sane
/// place is caught by the frame's own checksum and numbering.)
fn record_loc(segment: u32, fields: [u32; 4], at: u64) -> Result<FrameLoc> {
    let [offset, len, _, events] = fields;
    let max = (format::FRAME_HEADER_LEN + format::MAX_FRAME_BODY) as u32;
    if len < format::FRAME_HEADER_LEN as u32 || len > max || (offset as u64) < format::SEGMENT_HEADER_LEN {
        return Err(LogError::io(
            "reading the log's index scratch file",
            std::io::Error::other(format!("record at offset {at} names a frame of {len} bytes at {offset}")),
        ));
    }
    Ok(FrameLoc { segment, offset, len, events })
}

/// A frame record: the frame's place and its first event's position
/// relative to the segment's first.
pub(super) fn frame_record(segment: u32, bytes: &[u8], at: u64) -> Result<(FrameLoc, u64)> {
    let [offset, len, events, delta] = record_fields(bytes);
    let loc = record_loc(segment, [offset, len, 0, events], at)?;
    Ok((loc, delta as u64))
}

/// A version record: its frame's place and its entry in the frame.
pub(super) fn version_record(segment: u32, bytes: &[u8], at: u64) -> Result<(FrameLoc, u32)> {
    let fields = record_fields(bytes);
    Ok((record_loc(segment, fields, at)?, fields[2]))
}

/// A segment's tables, written to the scratch file, to be installed.
pub(super) struct Spill {
    segment: u64,
    frames: u64,
    events: u64,
    versions: u64,
    /// Scratch offset of the frame table (the version table follows).
    at: u64,
    /// (stream, first version, count, first record).
    runs: Vec<(Arc<str>, u64, u32, u32)>,
}

/// Records encoded per piece: per hold of the read lock while the log
/// runs, so the writer's publish (which takes the write lock) waits for at
/// most this many, not for a whole segment's (a 256 MiB segment of small
/// events has about a million frames and as many versions); and per write
/// to the scratch file, so a spill needs 256 KiB of memory, not 32 MiB.
const ENCODE_PIECE: usize = 16 * 1024;

/// A spill being encoded and written piece by piece. A sealed segment's
/// part of the index does not change while the spill lock is held:
/// publishes only append frames and versions past it, and only a spill or
/// a scavenge (both under that lock) touch what is already there. So pieces
/// encoded under separate holds of the read lock make one consistent table,
/// and pieces appended to the scratch file one after another (nothing else
/// appends while the lock is held) make it contiguous.
pub(super) struct SpillEncoder {
    segment: u64,
    /// The segment's frames: `hot_frames[..frames]`.
    frames: usize,
    /// The ordinal of the first frame past the segment.
    end_ordinal: u64,
    next_frame: usize,
    /// Events in the frames encoded so far.
    events: u64,
    /// The streams with versions in the segment, and how far into them.
    streams: Vec<Arc<str>>,
    next_stream: usize,
    /// Versions of `streams[next_stream]` encoded so far.
    in_stream: usize,
    versions: u64,
    /// The piece being encoded.
    buf: Vec<u8>,
    /// Where the first piece went in the scratch file, and bytes written.
    at: Option<u64>,
    written: u64,
    runs: Vec<(Arc<str>, u64, u32, u32)>,
}

impl SpillEncoder {
    /// Starts on `segment`, the oldest segment in memory.
    pub(super) fn new(idx: &Index, segment: u64) -> Self {
        let frames = idx.hot_frames.partition_point(|f| f.segment as u64 <= segment);
        let streams = idx.touched.get(&segment).cloned().unwrap_or_default();
        Self {
            segment,
            frames,
            end_ordinal: idx.hot_base + frames as u64,
            next_frame: 0,
            events: 0,
            streams,
            next_stream: 0,
            in_stream: 0,
            versions: 0,
            buf: Vec::new(),
            at: None,
            written: 0,
            runs: Vec::new(),
        }
    }

    /// Encodes up to `budget` more records into the piece (see
    /// [`Self::write_piece`]); true once the tables are complete. An index
    /// that does not hold together (a stream version pointing at no frame
    /// of the segment in memory, or a run that shrank between pieces) is
    /// refused by name: the segment stays in memory.
    pub(super) fn step(&mut self, idx: &Index, budget: usize) -> std::io::Result<bool> {
        let mut left = budget;
        let end = self.next_frame.saturating_add(left).min(self.frames);
        for f in idx.hot_frames.get(self.next_frame..end).ok_or_else(|| self.broken("frames"))? {
            put_record(&mut self.buf, [f.offset, f.len, f.events, self.events as u32]);
            self.events += f.events as u64;
        }
        left -= end - self.next_frame;
        self.next_frame = end;
        while self.next_frame == self.frames && self.next_stream < self.streams.len() {
            if left == 0 {
                return Ok(false);
            }
            let name = &self.streams[self.next_stream];
            let Some(s) = idx.streams.get(name) else {
                if self.in_stream > 0 {
                    return Err(self.broken("a stream's versions"));
                }
                self.next_stream += 1;
                continue;
            };
            // Versions are in log order: those of this segment and older
            // ones (already spilled) lead.
            let count = s.locs.partition_point(|&p| unpack_loc(p).0 < self.end_ordinal);
            if count < self.in_stream {
                return Err(self.broken("a stream's versions"));
            }
            if self.in_stream == 0 && count > 0 {
                self.runs.push((name.clone(), s.base_version, count as u32, self.versions as u32));
            }
            let end = self.in_stream.saturating_add(left).min(count);
            for &packed in s.locs.range(self.in_stream..end) {
                let (ordinal, entry) = unpack_loc(packed);
                let f = idx.hot_frame(ordinal).filter(|f| f.segment as u64 == self.segment).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "stream {name:?} has a version in frame {ordinal}, which is not a frame of segment {} in memory",
                        self.segment
                    ))
                })?;
                put_record(&mut self.buf, [f.offset, f.len, entry, f.events]);
            }
            left -= end - self.in_stream;
            self.versions += (end - self.in_stream) as u64;
            if end == count {
                self.next_stream += 1;
                self.in_stream = 0;
            } else {
                self.in_stream = end;
            }
        }
        Ok(self.next_frame == self.frames && self.next_stream == self.streams.len())
    }

    fn broken(&self, what: &str) -> std::io::Error {
        std::io::Error::other(format!("{what} of segment {} changed while its index was being spilled", self.segment))
    }

    /// Appends the piece encoded so far to the scratch file.
    pub(super) fn write_piece(&mut self, scratch: &Scratch) -> std::io::Result<()> {
        let at = scratch.append(&self.buf)?;
        let first = *self.at.get_or_insert(at);
        if at != first + self.written {
            return Err(std::io::Error::other(format!(
                "the scratch file grew by another writer while segment {} was being spilled",
                self.segment
            )));
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Gives back the scratch space of a spill that failed part-way.
    pub(super) fn abandon(&self, scratch: &Scratch) {
        if let Some(at) = self.at {
            scratch.rewind(at);
        }
    }

    /// The spill, once every piece is written.
    fn finish(&mut self) -> std::io::Result<Spill> {
        let expected = (self.frames as u64 + self.versions) * RECORD_LEN;
        if !self.buf.is_empty() || self.written != expected {
            return Err(std::io::Error::other(format!(
                "the spill of segment {} wrote {} bytes of its {expected}",
                self.segment, self.written
            )));
        }
        Ok(Spill {
            segment: self.segment,
            frames: self.frames as u64,
            events: self.events,
            versions: self.versions,
            at: self.at.unwrap_or(0),
            runs: std::mem::take(&mut self.runs),
        })
    }
}

impl Index {
    /// The next segment to spill, if the writer has moved past it.
    pub(super) fn spillable(&self) -> Option<u64> {
        let next = self.sealed.len() as u64;
        (next < self.end_segment).then_some(next)
    }

    /// Takes a written spill: the segment's frames and versions leave
    /// memory. A spill refused gives its scratch space back, as a failed
    /// write does (the caller holds the same lock as for the writing).
    pub(super) fn install_spill(&mut self, spill: Spill) -> std::io::Result<()> {
        let at = spill.at;
        // Only the spiller installs, oldest segment first; anything else
        // is refused before the index is touched.
        let m = spill.frames as usize;
        if self.sealed.len() as u64 != spill.segment || m > self.hot_frames.len() {
            if let Some(scratch) = &self.scratch {
                scratch.rewind(at);
            }
            return Err(std::io::Error::other(format!(
                "segment {} is not the oldest in memory (segment {} is), or has fewer frames there than spilled",
                spill.segment,
                self.sealed.len()
            )));
        }
        self.sealed.push(Sealed {
            first_ordinal: self.hot_base,
            frames: spill.frames,
            first_position: self.hot_first_position,
            events: spill.events,
            frames_at: at,
            versions_at: at + spill.frames * RECORD_LEN,
            versions: spill.versions,
        });
        self.hot_frames.drain(..m);
        self.hot_base += spill.frames;
        self.hot_first_position += spill.events;
        let hot_base = self.hot_base;
        let cut = self.sparse.partition_point(|&(_, o)| o < hot_base);
        self.sparse.drain(..cut);
        let segment = spill.segment as u32;
        for (name, first_version, count, record) in spill.runs {
            let Some(s) = self.streams.get_mut(&name) else { continue };
            // Nothing but this spill removes versions from memory, and it
            // holds the spill lock from encoding to here.
            let count = (count as usize).min(s.locs.len());
            s.runs.push(Run { segment, count: count as u32, record, first_version });
            s.locs.drain(..count);
            s.base_version = first_version + count as u64;
            self.hot_versions = self.hot_versions.saturating_sub(count as u64);
        }
        self.touched.remove(&spill.segment);
        Ok(())
    }

    /// Spills every segment up to `last` of an index nobody else holds yet
    /// (at open), oldest first. A failure leaves them in memory.
    pub(super) fn spill_owned(&mut self, last: u64, vfs: &dyn Vfs, dir: &Path) {
        while (self.sealed.len() as u64) <= last {
            let segment = self.sealed.len() as u64;
            let written = self.scratch_or_create(vfs, dir).and_then(|scratch| {
                let mut encoder = SpillEncoder::new(self, segment);
                let spill = write_all(&mut encoder, &scratch, |e| e.step(self, ENCODE_PIECE));
                self.install_spill(spill?)
            });
            if let Err(e) = written {
                warn!(segment, error = %e, "could not spill the index of a sealed segment; it stays in memory");
                return;
            }
        }
    }

    fn scratch_or_create(&mut self, vfs: &dyn Vfs, dir: &Path) -> std::io::Result<Arc<Scratch>> {
        if let Some(s) = &self.scratch {
            return Ok(s.clone());
        }
        let s = Arc::new(Scratch::create(vfs, dir)?);
        self.scratch = Some(s.clone());
        Ok(s)
    }
}

/// Encodes (with `step`) and writes a spill piece by piece; on a failure
/// gives back the scratch space written so far.
fn write_all(
    encoder: &mut SpillEncoder,
    scratch: &Scratch,
    mut step: impl FnMut(&mut SpillEncoder) -> std::io::Result<bool>,
) -> std::io::Result<Spill> {
    let written = loop {
        match step(encoder).and_then(|done| encoder.write_piece(scratch).map(|()| done)) {
            Ok(false) => continue,
            Ok(true) => break encoder.finish(),
            Err(e) => break Err(e),
        }
    };
    if written.is_err() {
        encoder.abandon(scratch);
    }
    written
}

/// Spills every sealed segment still in memory; one at a time, each
/// encoded in pieces under the read lock, each piece written without a
/// lock, the whole installed under the write lock.
pub(super) fn spill_sealed(shared: &Shared) -> Result<()> {
    let _guard = shared.scavenging.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (mut encoder, scratch) = {
            let idx = shared.read();
            let Some(segment) = idx.spillable() else { return Ok(()) };
            (SpillEncoder::new(&idx, segment), idx.scratch.clone())
        };
        let segment = encoder.segment;
        let failed = |e| LogError::io(format!("spilling the index of segment {segment}"), e);
        let scratch = match scratch {
            Some(s) => s,
            // Made once, the first time a segment is sealed.
            None => shared.write().scratch_or_create(&*shared.vfs, &shared.dir).map_err(failed)?,
        };
        // The read lock is let go after each piece (a publish waiting for
        // the write lock gets it), and the piece written with no lock held.
        let spill = write_all(&mut encoder, &scratch, |e| e.step(&shared.read(), ENCODE_PIECE)).map_err(failed)?;
        let bytes = (spill.frames + spill.versions) * RECORD_LEN;
        shared.write().install_spill(spill).map_err(failed)?;
        debug!(segment, bytes, "index of a sealed segment spilled");
    }
}

/// How long a failed spill waits before it is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// The spiller thread: spills sealed segments when the writer rolls.
pub(super) fn run_spiller(shared: Arc<Shared>) {
    let mut failing = false;
    // First whatever open could not spill, then after each roll.
    let mut go = true;
    while go {
        match spill_sealed(&shared) {
            Ok(()) => {
                if failing {
                    warn!("the index of sealed segments spills again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "could not spill the index of a sealed segment; it stays in memory and is tried again every 10 s");
                }
                failing = true;
            }
        }
        go = shared.spill.wait(RETRY);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::{Index, Scratch, Spill, Vfs};
    use crate::file::sim::SimVfs;

    /// A spill the index refuses (not the oldest segment in memory) leaves
    /// no dead records in the scratch file.
    #[test]
    fn a_refused_spill_gives_its_scratch_space_back() {
        let vfs = SimVfs::new();
        vfs.create_dir_all(Path::new("/log")).expect("the log's directory");
        let scratch = Arc::new(Scratch::create(&vfs, Path::new("/log")).expect("scratch"));
        scratch.append(&[1u8; 32]).expect("an earlier spill");
        let at = scratch.append(&[2u8; 48]).expect("this spill's pieces");
        let mut idx = Index { scratch: Some(scratch.clone()), ..Index::default() };
        let spill = Spill { segment: 3, frames: 1, events: 1, versions: 2, at, runs: Vec::new() };
        let refused = idx.install_spill(spill).expect_err("segment 3 is not the oldest in memory");
        assert!(refused.to_string().contains("segment 3 is not the oldest"), "{refused}");
        assert_eq!(scratch.len(), 32, "the refused spill's 48 bytes are given back, the earlier 32 kept");
        assert!(idx.sealed.is_empty());
    }
}
