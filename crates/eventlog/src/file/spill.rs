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

/// A segment's tables, encoded from the index in memory, to be written.
pub(super) struct Spill {
    segment: u64,
    frames: u64,
    events: u64,
    versions: u64,
    buf: Vec<u8>,
    /// (stream, first version, count, first record).
    runs: Vec<(Arc<str>, u64, u32, u32)>,
}

impl Index {
    /// The next segment to spill, if the writer has moved past it.
    pub(super) fn spillable(&self) -> Option<u64> {
        let next = self.sealed.len() as u64;
        (next < self.end_segment).then_some(next)
    }

    /// Encodes the tables of `segment`, the oldest segment in memory. An
    /// index that does not hold together (a stream version pointing at no
    /// frame in memory) is refused by name: the segment stays in memory.
    pub(super) fn encode_spill(&self, segment: u64) -> std::io::Result<Spill> {
        let m = self.hot_frames.partition_point(|f| f.segment as u64 <= segment);
        let end_ordinal = self.hot_base + m as u64;
        let mut buf = Vec::with_capacity(m * 2 * RECORD_LEN as usize);
        let mut delta = 0u64;
        for f in &self.hot_frames[..m] {
            put_record(&mut buf, [f.offset, f.len, f.events, delta as u32]);
            delta += f.events as u64;
        }
        let mut runs = Vec::new();
        let mut versions = 0u64;
        for name in self.touched.get(&segment).into_iter().flatten() {
            let Some(s) = self.streams.get(name) else { continue };
            let count = s.locs.iter().take_while(|&&p| unpack_loc(p).0 < end_ordinal).count();
            if count == 0 {
                continue;
            }
            runs.push((name.clone(), s.base_version, count as u32, versions as u32));
            for &packed in s.locs.iter().take(count) {
                let (ordinal, entry) = unpack_loc(packed);
                let f = self.hot_frame(ordinal).filter(|f| f.segment as u64 == segment).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "stream {name:?} has a version in frame {ordinal}, which is not a frame of segment {segment} in memory"
                    ))
                })?;
                put_record(&mut buf, [f.offset, f.len, entry, f.events]);
            }
            versions += count as u64;
        }
        Ok(Spill { segment, frames: m as u64, events: delta, versions, buf, runs })
    }

    /// Takes a written spill (its tables at scratch offset `at`): the
    /// segment's frames and versions leave memory.
    pub(super) fn install_spill(&mut self, spill: Spill, at: u64) -> std::io::Result<()> {
        // Only the spiller installs, oldest segment first; anything else
        // is refused before the index is touched.
        let m = spill.frames as usize;
        if self.sealed.len() as u64 != spill.segment || m > self.hot_frames.len() {
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
                let spill = self.encode_spill(segment)?;
                let at = scratch.append(&spill.buf)?;
                self.install_spill(spill, at)
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

/// Spills every sealed segment still in memory; one at a time, each
/// encoded under the read lock, written without a lock, installed under
/// the write lock.
pub(super) fn spill_sealed(shared: &Shared) -> Result<()> {
    let _guard = shared.scavenging.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (spill, scratch) = {
            let idx = shared.read();
            let Some(segment) = idx.spillable() else { return Ok(()) };
            let spill = idx
                .encode_spill(segment)
                .map_err(|e| LogError::io(format!("spilling the index of segment {segment}"), e))?;
            (spill, idx.scratch.clone())
        };
        let segment = spill.segment;
        let failed = |e| LogError::io(format!("spilling the index of segment {segment}"), e);
        let scratch = match scratch {
            Some(s) => s,
            // Made once, the first time a segment is sealed.
            None => shared.write().scratch_or_create(&*shared.vfs, &shared.dir).map_err(failed)?,
        };
        let at = scratch.append(&spill.buf).map_err(failed)?;
        let bytes = spill.buf.len();
        shared.write().install_spill(spill, at).map_err(failed)?;
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
