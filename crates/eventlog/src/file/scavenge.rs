//! Scavenging: rewrites sealed segments without the bytes of events that
//! are hidden now. Each such event becomes a `Redacted` stub (digest,
//! stream, version, position), so numbering and the hash chain survive.

use bytes::Bytes;
use prost::Message;
use proto::log::{Redacted, entry, frame};
use proto::storage::StoredEvent;
use tracing::info;

use super::format;
use super::scratch::{RECORD_LEN, Scratch, Sealed};
use super::spill::{frame_record, version_record};
use super::state::{FrameLoc, Shared};
use crate::{LogError, Result, ScavengeReport};

/// Scavenges every segment before `active`. The writer has rolled to
/// `active` and everything before it is published, so these segments are
/// sealed: nothing writes to them any more.
pub(super) fn scavenge_blocking(shared: &Shared, active: u64) -> Result<ScavengeReport> {
    let _guard = shared.scavenging.lock().unwrap_or_else(|e| e.into_inner());
    let now = shared.clock.now_micros();
    let mut report = ScavengeReport::default();
    let numbers: Vec<u64> = shared.read().segments.range(..active).map(|(n, _)| *n).collect();
    for number in numbers {
        // The segment's frames: in memory, or spilled (their records).
        let (file, locs_before, spilled) = {
            let idx = shared.read();
            let file = idx.segments[&number].clone();
            match idx.sealed.get(number as usize).copied() {
                Some(sealed) => (file, None, Some((sealed, idx.scratch.clone()))),
                None => {
                    let start = idx.hot_frames.partition_point(|l| (l.segment as u64) < number);
                    let end = idx.hot_frames.partition_point(|l| (l.segment as u64) <= number);
                    (file, Some((idx.hot_base + start as u64, idx.hot_frames[start..end].to_vec())), None)
                }
            }
        };
        let (first_ordinal, old_locs, deltas) = match (locs_before, &spilled) {
            (Some((first, locs)), _) => (first, locs, Vec::new()),
            (None, Some((sealed, scratch))) => {
                let scratch = scratch.as_deref().ok_or_else(|| {
                    LogError::io(
                        "reading the log's index",
                        std::io::Error::other("a spilled segment but no scratch file"),
                    )
                })?;
                let bytes = scratch.read(sealed.frames_at, sealed.frames)?;
                let mut locs = Vec::with_capacity(sealed.frames as usize);
                let mut deltas = Vec::with_capacity(sealed.frames as usize);
                for (i, r) in bytes.chunks_exact(RECORD_LEN as usize).enumerate() {
                    let (loc, delta) = frame_record(number as u32, r, sealed.frames_at + i as u64 * RECORD_LEN)?;
                    locs.push(loc);
                    deltas.push(delta);
                }
                (sealed.first_ordinal, locs, deltas)
            }
            (None, None) => continue,
        };
        let ordinals = first_ordinal as usize..first_ordinal as usize + old_locs.len();
        let mut frames = Vec::with_capacity(ordinals.len());
        let mut events_per_frame = Vec::with_capacity(ordinals.len());
        let mut changed = 0u64;
        let mut reclaimed = 0u64;
        for &loc in &old_locs {
            let mut frame = shared.read_frame(&*file, loc)?;
            if let Some(frame::Body::Batch(batch)) = &mut frame.body {
                let idx = shared.read();
                for e in &mut batch.entries {
                    let Some(entry::Kind::Event(bytes)) = &e.kind else {
                        continue;
                    };
                    let stored = StoredEvent::decode(bytes.clone())
                        .map_err(|err| shared.corrupt(loc, format!("event does not decode: {err}")))?;
                    let dead = idx
                        .streams
                        .get(stored.stream.as_str())
                        .is_some_and(|s| s.rules.is_reclaimable(stored.version, stored.recorded_at_micros, now));
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
            events_per_frame.push(loc.events);
            frames.push(frame);
        }
        if changed == 0 {
            continue;
        }
        let final_path = shared.segment_path(number);
        let tmp_path = shared.segments_dir.join(format!("{}.tmp", format::segment_file_name(number)));
        let io = |what: &str, e| LogError::io(format!("{what} {}", tmp_path.display()), e);
        let mut buf = format::encode_segment_header(number).to_vec();
        let mut locs = Vec::with_capacity(frames.len());
        for (frame, events) in frames.iter().zip(events_per_frame) {
            let offset = buf.len();
            let len = format::encode_frame(frame, &mut buf);
            locs.push(FrameLoc { segment: number as u32, offset: offset as u32, len: len as u32, events });
        }
        // A spilled segment's records for the new file, written before the
        // new file replaces the old (until then readers keep the old file
        // and its records, both still there).
        let respilled = match &spilled {
            Some((sealed, Some(scratch))) => Some(
                respill(scratch, number as u32, sealed, &old_locs, &locs, &deltas)
                    .map_err(|e| LogError::io(format!("writing the index of segment {number} after its rewrite"), e))?,
            ),
            _ => None,
        };
        let new_file = shared.vfs.open(&tmp_path, true).map_err(|e| io("creating", e))?;
        new_file.set_len(0).map_err(|e| io("truncating", e))?;
        new_file.write_at(0, &buf).map_err(|e| io("writing", e))?;
        new_file.sync_data().map_err(|e| io("syncing", e))?;
        shared.vfs.rename(&tmp_path, &final_path).map_err(|e| io("renaming", e))?;
        shared.vfs.sync_dir(&shared.segments_dir).map_err(|e| io("syncing the directory of", e))?;
        let mut idx = shared.write();
        idx.segments.insert(number, new_file);
        match respilled {
            Some((frames_at, versions_at)) => {
                if let Some(sealed) = idx.sealed.get_mut(number as usize) {
                    sealed.frames_at = frames_at;
                    sealed.versions_at = versions_at;
                }
            }
            None => {
                let base = idx.hot_base as usize;
                for (ordinal, loc) in ordinals.zip(locs) {
                    if let Some(slot) = idx.hot_frames.get_mut(ordinal - base) {
                        *slot = loc;
                    }
                }
            }
        }
        drop(idx);
        report.events_removed += changed;
        report.bytes_reclaimed += reclaimed;
        report.segments_rewritten += 1;
        info!(segment = number, events = changed, bytes = reclaimed, "segment scavenged");
    }
    Ok(report)
}

/// Writes a spilled segment's records again for its rewritten file (frames
/// at `new` instead of `old`, same order) and returns where its frame and
/// version tables now are. The old records stay for readers that hold them.
fn respill(
    scratch: &Scratch,
    segment: u32,
    sealed: &Sealed,
    old: &[FrameLoc],
    new: &[FrameLoc],
    deltas: &[u64],
) -> std::io::Result<(u64, u64)> {
    let moved: std::collections::HashMap<u32, FrameLoc> = old.iter().zip(new).map(|(o, n)| (o.offset, *n)).collect();
    let mut buf = Vec::with_capacity(((sealed.frames + sealed.versions) * RECORD_LEN) as usize);
    for (loc, delta) in new.iter().zip(deltas) {
        super::spill::put_record(&mut buf, [loc.offset, loc.len, loc.events, *delta as u32]);
    }
    let bad = |e: LogError| std::io::Error::other(e.to_string());
    let versions = scratch.read(sealed.versions_at, sealed.versions).map_err(bad)?;
    for (i, r) in versions.chunks_exact(RECORD_LEN as usize).enumerate() {
        let (loc, entry) = version_record(segment, r, sealed.versions_at + i as u64 * RECORD_LEN).map_err(bad)?;
        let to = moved.get(&loc.offset).ok_or_else(|| {
            std::io::Error::other(format!(
                "version record {i} names no frame of segment {segment} (offset {})",
                loc.offset
            ))
        })?;
        super::spill::put_record(&mut buf, [to.offset, to.len, entry, to.events]);
    }
    let at = scratch.append(&buf)?;
    Ok((at, at + sealed.frames * RECORD_LEN))
}
