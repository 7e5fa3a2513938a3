//! The checks every backend runs on an append before it is queued.

use crate::error::LogError;
use crate::model::{MAX_BATCH_BYTES, MAX_EVENT_BYTES, MAX_EVENT_TYPE_LEN, StreamAppend, validate_stream_name};

/// Checks a whole append before it is queued: names, event shapes, sizes,
/// ids unique within the append. Returns an upper bound of the bytes the
/// events take in a batch frame (encoded envelopes plus entry framing).
pub fn validate_appends(appends: &[StreamAppend]) -> Result<usize, LogError> {
    if appends.is_empty() {
        return Err(LogError::InvalidBatch { reason: "no streams to append to".into() });
    }
    let mut total = 0usize;
    let mut ids = Vec::new();
    let mut streams: Vec<&str> = Vec::new();
    for append in appends {
        validate_stream_name(&append.stream)?;
        if streams.contains(&append.stream.as_str()) {
            return Err(LogError::InvalidBatch {
                reason: format!("stream {:?} appears twice in one multi-stream append", append.stream),
            });
        }
        streams.push(&append.stream);
        if append.events.is_empty() {
            return Err(LogError::InvalidBatch {
                reason: format!("append to stream {:?} has no events", append.stream),
            });
        }
        for (index, event) in append.events.iter().enumerate() {
            let invalid = |reason: String| LogError::InvalidEvent { stream: append.stream.clone(), index, reason };
            if event.id.is_nil() {
                return Err(invalid("event id is the nil uuid".into()));
            }
            if ids.contains(&event.id) {
                return Err(invalid(format!("event id {} appears twice in one append", event.id)));
            }
            if ids.len() < 64 {
                ids.push(event.id);
            } else if ids.len() == 64 {
                // Large batches: check the rest with a set, built once.
                let all: std::collections::HashSet<_> =
                    appends.iter().flat_map(|a| a.events.iter().map(|e| e.id)).collect();
                let total: usize = appends.iter().map(|a| a.events.len()).sum();
                if all.len() != total {
                    return Err(LogError::InvalidBatch { reason: "an event id appears twice in one append".into() });
                }
                ids.push(event.id);
            }
            if event.event_type.is_empty() {
                return Err(invalid("event type must not be empty".into()));
            }
            if event.event_type.len() > MAX_EVENT_TYPE_LEN {
                return Err(invalid(format!(
                    "event type is {} bytes; the limit is {MAX_EVENT_TYPE_LEN}",
                    event.event_type.len()
                )));
            }
            if event.event_type.chars().any(|c| c.is_control()) {
                return Err(invalid("event type must not contain control characters".into()));
            }
            if event.schema_version == 0 {
                return Err(invalid("schema version must be at least 1".into()));
            }
            let size = crate::file::format::stored_event_len(event, &append.stream, u64::MAX, u64::MAX, i64::MAX);
            if size > MAX_EVENT_BYTES {
                return Err(LogError::EventTooLarge {
                    stream: append.stream.clone(),
                    index,
                    size,
                    limit: MAX_EVENT_BYTES,
                });
            }
            total += size + crate::file::format::entry_overhead(size);
        }
    }
    if total > MAX_BATCH_BYTES {
        return Err(LogError::InvalidBatch {
            reason: format!("append is {total} bytes encoded; the limit is {MAX_BATCH_BYTES}"),
        });
    }
    Ok(total)
}
