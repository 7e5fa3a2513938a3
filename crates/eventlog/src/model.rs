//! The values the port speaks (events, expectations, metadata, filters), the
//! input limits, and the stream rules both built-in backends share.

use std::sync::Arc;

use bytes::Bytes;
use proto::storage::{SealedField, StoredEvent};
use uuid::Uuid;

use crate::error::LogError;
use crate::version::{CurrentVersion, ExpectedVersion};

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 255;
/// Longest event type name, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;
/// Largest event, as its encoded `StoredEvent`.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Largest append (all streams of a multi-stream append together).
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// An event to append. The log adds stream, version, position and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub tenant_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// Protobuf of the event's Clear fields.
    pub payload: Bytes,
    /// Personal data and content, sealed by the key store.
    pub sealed_fields: Vec<SealedField>,
}

impl NewEvent {
    /// An event with a fresh UUIDv7 id, schema version 1 and no sealed fields.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            tenant_id: None,
            correlation_id: None,
            causation_id: None,
            payload: payload.into(),
            sealed_fields: Vec::new(),
        }
    }

    /// The envelope as stored, with the log's fields filled in.
    pub fn to_stored(&self, stream: &str, version: u64, position: u64, recorded_at_micros: i64) -> StoredEvent {
        fn opt(id: Option<Uuid>) -> Bytes {
            id.map(|u| Bytes::copy_from_slice(u.as_bytes())).unwrap_or_default()
        }
        StoredEvent {
            event_id: Bytes::copy_from_slice(self.id.as_bytes()),
            stream: stream.to_owned(),
            version,
            global_position: position,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            recorded_at_micros,
            tenant_id: opt(self.tenant_id),
            correlation_id: opt(self.correlation_id),
            causation_id: opt(self.causation_id),
            payload: self.payload.clone(),
            sealed_fields: self.sealed_fields.clone(),
        }
    }
}

/// An event as read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub stream: Arc<str>,
    pub version: u64,
    pub position: u64,
    pub recorded_at_micros: i64,
    pub event: NewEvent,
}

impl RecordedEvent {
    pub fn id(&self) -> Uuid {
        self.event.id
    }

    pub fn event_type(&self) -> &str {
        &self.event.event_type
    }

    /// Decodes a stored envelope; `Err` names the malformed field.
    pub fn from_stored(stored: StoredEvent, stream: Arc<str>) -> Result<Self, String> {
        fn uuid(field: &str, b: &[u8]) -> Result<Uuid, String> {
            Uuid::from_slice(b).map_err(|_| format!("{field} is {} bytes, not a 16-byte uuid", b.len()))
        }
        fn opt(field: &str, b: &[u8]) -> Result<Option<Uuid>, String> {
            if b.is_empty() { Ok(None) } else { uuid(field, b).map(Some) }
        }
        Ok(Self {
            stream,
            version: stored.version,
            position: stored.global_position,
            recorded_at_micros: stored.recorded_at_micros,
            event: NewEvent {
                id: uuid("event_id", &stored.event_id)?,
                event_type: stored.event_type,
                schema_version: stored.schema_version,
                tenant_id: opt("tenant_id", &stored.tenant_id)?,
                correlation_id: opt("correlation_id", &stored.correlation_id)?,
                causation_id: opt("causation_id", &stored.causation_id)?,
                payload: stored.payload,
                sealed_fields: stored.sealed_fields,
            },
        })
    }
}

/// One stream's part of a (multi-stream) append.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the last event written: the `Exact` to expect next.
    pub next_expected_version: u64,
    /// Global positions of the first and last event written.
    pub first_position: u64,
    pub last_position: u64,
}

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first event (forward) or the last (backward).
    Start,
    /// The last event.
    End,
    /// This version (inclusive).
    Version(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// Server-side filter for `$all` reads and subscriptions. Empty lists match
/// everything; when both are set an event must match both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// The stream name starts with one of these.
    pub stream_prefixes: Vec<String>,
    /// The event type is one of these.
    pub event_types: Vec<String>,
}

impl EventFilter {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn stream_prefix(prefix: impl Into<String>) -> Self {
        Self { stream_prefixes: vec![prefix.into()], event_types: Vec::new() }
    }

    pub fn event_type(event_type: impl Into<String>) -> Self {
        Self { stream_prefixes: Vec::new(), event_types: vec![event_type.into()] }
    }

    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        (self.stream_prefixes.is_empty() || self.stream_prefixes.iter().any(|p| stream.starts_with(p.as_str())))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// A page of `$all`.
#[derive(Debug, Clone, Default)]
pub struct AllPage {
    pub events: Vec<RecordedEvent>,
    /// Where to continue reading: past every position this read looked at,
    /// whether or not the filter kept it.
    pub next_position: u64,
    /// The committed head when the page was read.
    pub head: u64,
}

/// Limits that hide old events of a stream (and let scavenging reclaim them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Events older than this many seconds are hidden.
    pub max_age_secs: Option<u64>,
    /// Only the last this many events are visible.
    pub max_count: Option<u64>,
    /// Events with a lower version are hidden.
    pub truncate_before: Option<u64>,
}

impl StreamMetadata {
    /// Refuses limits that make no sense (a max count of 0, ...), naming the stream.
    pub fn validate(&self, stream: &str) -> Result<(), LogError> {
        let bad =
            |reason: &str| Err(LogError::InvalidBatch { reason: format!("metadata for stream {stream:?}: {reason}") });
        if self.max_count == Some(0) {
            return bad("max_count must be at least 1");
        }
        if self.max_age_secs == Some(0) {
            return bad("max_age_secs must be at least 1");
        }
        if self.max_age_secs.is_some_and(|s| s > i64::MAX as u64 / 1_000_000) {
            return bad("max_age_secs is too large");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    Soft,
    Hard,
}

/// What a scavenge reclaimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScavengeReport {
    pub events_removed: u64,
    pub bytes_reclaimed: u64,
    pub segments_rewritten: u64,
}

/// Checks a stream name: 1..=255 bytes, printable, not starting with `$`
/// (reserved for the log's own names such as `$all`).
pub fn validate_stream_name(stream: &str) -> Result<(), LogError> {
    let reason = if stream.is_empty() {
        Some("must not be empty".to_owned())
    } else if stream.len() > MAX_STREAM_NAME_LEN {
        Some(format!("is {} bytes; the limit is {MAX_STREAM_NAME_LEN}", stream.len()))
    } else if stream.starts_with('$') {
        Some("must not start with '$' (reserved)".to_owned())
    } else if stream.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain whitespace or control characters".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LogError::InvalidStreamName { stream: truncate_for_message(stream), reason }),
        None => Ok(()),
    }
}

fn truncate_for_message(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_owned();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// How a stream was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deletion {
    #[default]
    None,
    Soft,
    Hard,
}

/// The rules of one stream, shared by the backends: versions, deletion,
/// metadata and which events are visible.
#[derive(Debug, Clone, Default)]
pub struct StreamRules {
    /// Version the next event gets (= number of events ever written).
    pub next_version: u64,
    pub deletion: Deletion,
    /// Versions below this were soft-deleted.
    pub deleted_before: u64,
    pub metadata: StreamMetadata,
}

impl StreamRules {
    pub fn current(&self) -> CurrentVersion {
        if self.next_version == 0 || self.next_version <= self.deleted_before {
            CurrentVersion::NoStream
        } else {
            CurrentVersion::Version(self.next_version - 1)
        }
    }

    /// Checks `expected` against this stream (which must not be tombstoned).
    pub fn check_expected(&self, stream: &str, expected: ExpectedVersion) -> Result<(), LogError> {
        if self.deletion == Deletion::Hard {
            return Err(LogError::StreamDeleted { stream: stream.to_owned() });
        }
        let current = self.current();
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == CurrentVersion::NoStream,
            ExpectedVersion::StreamExists => current != CurrentVersion::NoStream,
            // The last version also matches after a soft delete: the writer
            // that deleted can continue the stream where it was.
            ExpectedVersion::Exact(v) => self.next_version > 0 && v == self.next_version - 1,
        };
        if ok {
            Ok(())
        } else {
            Err(LogError::WrongExpectedVersion { stream: stream.to_owned(), expected, actual: current })
        }
    }

    /// The lowest version not hidden by deletion, truncate-before or max-count.
    pub fn first_visible_version(&self) -> u64 {
        let mut first = self.deleted_before;
        if self.deletion == Deletion::Hard {
            first = self.next_version;
        }
        if let Some(tb) = self.metadata.truncate_before {
            first = first.max(tb);
        }
        if let Some(mc) = self.metadata.max_count {
            first = first.max(self.next_version.saturating_sub(mc));
        }
        first.min(self.next_version)
    }

    /// Whether an event of this stream is visible to reads at `now_micros`.
    pub fn is_visible(&self, version: u64, recorded_at_micros: i64, now_micros: i64) -> bool {
        if version < self.first_visible_version() || version >= self.next_version {
            return false;
        }
        match self.metadata.max_age_secs {
            Some(age) => recorded_at_micros > now_micros.saturating_sub(age as i64 * 1_000_000),
            None => true,
        }
    }

    /// Whether scavenging may remove this event: hidden now, and hidden for
    /// good (max-age and max-count only hide, a metadata change could show
    /// the event again before a scavenge, never after).
    pub fn is_reclaimable(&self, version: u64, recorded_at_micros: i64, now_micros: i64) -> bool {
        !self.is_visible(version, recorded_at_micros, now_micros)
    }

    pub fn apply_append(&mut self, count: u64) {
        self.next_version += count;
        if self.deletion == Deletion::Soft {
            self.deletion = Deletion::None;
        }
    }

    pub fn apply_delete(&mut self, mode: DeleteMode) {
        match mode {
            DeleteMode::Soft => {
                self.deletion = Deletion::Soft;
                self.deleted_before = self.next_version;
            }
            DeleteMode::Hard => {
                self.deletion = Deletion::Hard;
                self.deleted_before = self.next_version;
            }
        }
    }

    /// Read-side status: `Err` when the stream cannot be read at all.
    pub fn check_readable(&self, stream: &str) -> Result<(), LogError> {
        match self.deletion {
            Deletion::Hard => Err(LogError::StreamDeleted { stream: stream.to_owned() }),
            _ if self.current() == CurrentVersion::NoStream => {
                Err(LogError::StreamNotFound { stream: stream.to_owned() })
            }
            _ => Ok(()),
        }
    }

    /// Versions to visit for a stream read, nearest first.
    pub fn read_range(&self, from: ReadFrom, direction: Direction) -> Box<dyn Iterator<Item = u64> + Send> {
        let first = self.first_visible_version();
        let end = self.next_version; // exclusive
        match direction {
            Direction::Forward => {
                let start = match from {
                    ReadFrom::Start => first,
                    ReadFrom::End => end.saturating_sub(1).max(first),
                    ReadFrom::Version(v) => v.max(first),
                };
                Box::new(start..end)
            }
            Direction::Backward => {
                let start = match from {
                    ReadFrom::Start => first.saturating_add(1).min(end),
                    ReadFrom::End => end,
                    ReadFrom::Version(v) => v.saturating_add(1).min(end),
                };
                if start <= first { Box::new(std::iter::empty()) } else { Box::new((first..start).rev()) }
            }
        }
    }
}

/// An earlier event found by id: its stream, version, position, content.
pub struct Earlier {
    pub stream: Arc<str>,
    pub version: u64,
    pub position: u64,
    pub event: NewEvent,
}

/// Idempotency by event id, shared by the backends: `Ok(Some)` when every
/// event of `append` was appended before, to the same stream, at
/// consecutive versions, with the same content (a retry: the original
/// result); `Ok(None)` when none was; an error for anything in between.
/// `earlier` looks an id up among stored events (`None` if unknown or
/// scavenged).
pub fn check_repeat(
    append: &StreamAppend,
    mut earlier: impl FnMut(&Uuid) -> Result<Option<Earlier>, LogError>,
) -> Result<Option<AppendResult>, LogError> {
    let mut found = Vec::with_capacity(append.events.len());
    for e in &append.events {
        found.push(earlier(&e.id)?);
    }
    if found.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mixed = || LogError::EventIdReused {
        id: append.events[0].id,
        detail: "the batch mixes new events with events appended before".into(),
    };
    let first = found[0].as_ref().ok_or_else(mixed)?;
    let mut last = first;
    for (i, (event, e)) in append.events.iter().zip(&found).enumerate() {
        let e = e.as_ref().ok_or_else(mixed)?;
        if e.stream.as_ref() != append.stream.as_str() || e.version != first.version + i as u64 || &e.event != event {
            return Err(LogError::EventIdReused { id: event.id, detail: "content differs".into() });
        }
        last = e;
    }
    Ok(Some(AppendResult {
        next_expected_version: last.version,
        first_position: first.position,
        last_position: last.position,
    }))
}

/// Combines the per-stream repeat checks of a (multi-stream) append:
/// `Some` when the whole append is a retry, an error when only part is.
pub fn whole_repeat(
    appends: &[StreamAppend],
    repeats: Vec<AppendResult>,
) -> Result<Option<Vec<AppendResult>>, LogError> {
    if repeats.is_empty() {
        Ok(None)
    } else if repeats.len() == appends.len() {
        Ok(Some(repeats))
    } else {
        Err(LogError::EventIdReused {
            id: appends[0].events[0].id,
            detail: "a multi-stream append partly repeats an earlier append".into(),
        })
    }
}

/// The metadata of a stream as reads report it.
pub fn readable_metadata(stream: &str, rules: Option<&StreamRules>) -> Result<StreamMetadata, LogError> {
    match rules {
        Some(r) if r.deletion == Deletion::Hard => Err(LogError::StreamDeleted { stream: stream.to_owned() }),
        Some(r) => Ok(r.metadata),
        None => Ok(StreamMetadata::default()),
    }
}
