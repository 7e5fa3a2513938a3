//! The in-memory backend: the simplest correct implementation of the port.
//! Used by tests of upper layers and as the model the file backend is
//! property-tested against. Nothing survives a drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use uuid::Uuid;

use crate::model::{Earlier, StreamRules, check_repeat, readable_metadata, whole_repeat};
use crate::validate::validate_appends;
use crate::{
    AllPage, AppendResult, BoxFuture, Clock, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError,
    ReadFrom, RecordedEvent, Result, ScavengeReport, StreamAppend, StreamMetadata, SystemClock, validate_stream_name,
};

#[derive(Default)]
struct MemStream {
    rules: StreamRules,
    /// Global position of every version ever written.
    positions: Vec<u64>,
}

#[derive(Default)]
struct State {
    /// Every position ever assigned; `None` once scavenged.
    events: Vec<Option<RecordedEvent>>,
    streams: HashMap<Arc<str>, MemStream>,
    ids: HashMap<Uuid, u64>,
}

/// The in-memory event log.
pub struct MemLog {
    state: Mutex<State>,
    head: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemLog").field("head", &*self.head.borrow()).finish()
    }
}

impl Default for MemLog {
    fn default() -> Self {
        Self::new()
    }
}

impl MemLog {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { state: Mutex::new(State::default()), head: watch::channel(0).0, clock }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated:
        // every mutation below happens after all checks.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn earlier(state: &State, id: &Uuid) -> Option<Earlier> {
    let e = state.ids.get(id).and_then(|&p| state.events[p as usize].as_ref())?;
    Some(Earlier { stream: e.stream.clone(), version: e.version, position: e.position, event: e.event.clone() })
}

impl EventLog for MemLog {
    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<AppendResult>>> {
        Box::pin(async move {
            validate_appends(&appends)?;
            let mut state = self.lock();
            let mut repeats = Vec::new();
            for append in &appends {
                if let Some(r) = check_repeat(append, |id| Ok(earlier(&state, id)))? {
                    repeats.push(r);
                }
            }
            if let Some(results) = whole_repeat(&appends, repeats)? {
                return Ok(results);
            }
            for append in &appends {
                let rules = state.streams.get(append.stream.as_str()).map(|s| s.rules.clone()).unwrap_or_default();
                rules.check_expected(&append.stream, append.expected)?;
            }
            let now = self.clock.now_micros();
            let mut results = Vec::with_capacity(appends.len());
            for append in appends {
                let name: Arc<str> = Arc::from(append.stream.as_str());
                let first_position = state.events.len() as u64;
                let mut version = state.streams.get(&name).map_or(0, |s| s.rules.next_version);
                let count = append.events.len() as u64;
                for event in append.events {
                    let position = state.events.len() as u64;
                    state.ids.insert(event.id, position);
                    state.events.push(Some(RecordedEvent {
                        stream: name.clone(),
                        version,
                        position,
                        recorded_at_micros: now,
                        event,
                    }));
                    state.streams.entry(name.clone()).or_default().positions.push(position);
                    version += 1;
                }
                let stream = state.streams.entry(name).or_default();
                stream.rules.apply_append(count);
                results.push(AppendResult {
                    next_expected_version: version - 1,
                    first_position,
                    last_position: first_position + count - 1,
                });
            }
            let head = state.events.len() as u64;
            drop(state);
            self.head.send_replace(head);
            Ok(results)
        })
    }

    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from: ReadFrom,
        direction: Direction,
        max_count: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            let state = self.lock();
            let Some(s) = state.streams.get(stream) else {
                return Err(LogError::StreamNotFound { stream: stream.to_owned() });
            };
            s.rules.check_readable(stream)?;
            let now = self.clock.now_micros();
            let mut out = Vec::new();
            for version in s.rules.read_range(from, direction) {
                if out.len() >= max_count {
                    break;
                }
                let position = s.positions[version as usize];
                if let Some(e) = &state.events[position as usize]
                    && s.rules.is_visible(version, e.recorded_at_micros, now)
                {
                    out.push(e.clone());
                }
            }
            Ok(out)
        })
    }

    fn read_all<'a>(&'a self, from: u64, max_count: usize, filter: &'a EventFilter) -> BoxFuture<'a, Result<AllPage>> {
        Box::pin(async move {
            let state = self.lock();
            let head = state.events.len() as u64;
            let now = self.clock.now_micros();
            let mut page = AllPage { events: Vec::new(), next_position: from, head };
            let mut position = from;
            while position < head && page.events.len() < max_count {
                if let Some(e) = &state.events[position as usize] {
                    let rules = &state.streams[&e.stream].rules;
                    if rules.is_visible(e.version, e.recorded_at_micros, now)
                        && filter.matches(&e.stream, &e.event.event_type)
                    {
                        page.events.push(e.clone());
                    }
                }
                position += 1;
            }
            page.next_position = position.max(from);
            Ok(page)
        })
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn set_stream_metadata<'a>(&'a self, stream: &'a str, metadata: StreamMetadata) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            metadata.validate(stream)?;
            let mut state = self.lock();
            let s = state.streams.entry(Arc::from(stream)).or_default();
            if s.rules.deletion == crate::model::Deletion::Hard {
                return Err(LogError::StreamDeleted { stream: stream.to_owned() });
            }
            s.rules.metadata = metadata;
            Ok(())
        })
    }

    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamMetadata>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            let state = self.lock();
            readable_metadata(stream, state.streams.get(stream).map(|s| &s.rules))
        })
    }

    fn delete_stream<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            let mut state = self.lock();
            let s = state.streams.entry(Arc::from(stream)).or_default();
            s.rules.check_expected(stream, expected)?;
            s.rules.apply_delete(mode);
            Ok(())
        })
    }

    fn scavenge(&self) -> BoxFuture<'_, Result<ScavengeReport>> {
        Box::pin(async move {
            let now = self.clock.now_micros();
            let mut state = self.lock();
            let State { events, streams, ids } = &mut *state;
            let mut report = ScavengeReport::default();
            for slot in events.iter_mut() {
                let reclaim = slot
                    .as_ref()
                    .is_some_and(|e| streams[&e.stream].rules.is_reclaimable(e.version, e.recorded_at_micros, now));
                if reclaim && let Some(e) = slot.take() {
                    ids.remove(&e.event.id);
                    report.events_removed += 1;
                    report.bytes_reclaimed += e.event.payload.len() as u64;
                }
            }
            Ok(report)
        })
    }
}
