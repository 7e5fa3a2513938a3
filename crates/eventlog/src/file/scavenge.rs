//! Scavenging: rewrites sealed segments without the bytes of events that
//! are hidden now. Each such event becomes a `Redacted` stub (digest,
//! stream, version, position), so numbering and the hash chain survive.

use bytes::Bytes;
use prost::Message;
use proto::log::{Redacted, entry, frame};
use proto::storage::StoredEvent;
use tracing::info;

use super::format;
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
        let (file, ordinals) = {
            let idx = shared.read();
            let start = idx.frames.partition_point(|l| (l.segment as u64) < number);
            let end = idx.frames.partition_point(|l| (l.segment as u64) <= number);
            (idx.segments[&number].clone(), start..end)
        };
        let mut frames = Vec::with_capacity(ordinals.len());
        let mut events_per_frame = Vec::with_capacity(ordinals.len());
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
        let new_file = shared.vfs.open(&tmp_path, true).map_err(|e| io("creating", e))?;
        new_file.set_len(0).map_err(|e| io("truncating", e))?;
        new_file.write_at(0, &buf).map_err(|e| io("writing", e))?;
        new_file.sync_data().map_err(|e| io("syncing", e))?;
        shared.vfs.rename(&tmp_path, &final_path).map_err(|e| io("renaming", e))?;
        shared.vfs.sync_dir(&shared.segments_dir).map_err(|e| io("syncing the directory of", e))?;
        let mut idx = shared.write();
        idx.segments.insert(number, new_file);
        for (ordinal, loc) in ordinals.zip(locs) {
            idx.frames[ordinal] = loc;
        }
        drop(idx);
        report.events_removed += changed;
        report.bytes_reclaimed += reclaimed;
        report.segments_rewritten += 1;
        info!(segment = number, events = changed, bytes = reclaimed, "segment scavenged");
    }
    Ok(report)
}
