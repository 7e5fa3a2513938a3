//! The `EventLog` port on KurrentDB (formerly EventStoreDB) through the
//! official `kurrentdb` client. The server builds it only with its
//! `kurrentdb` feature (the client's TLS stack is a heavy build).
//!
//! How each contract point maps:
//!
//! | port | KurrentDB |
//! |---|---|
//! | `append` with `ExpectedVersion` | `append_to_stream` with `StreamState` (`Any`, `NoStream`, `StreamExists`, `StreamRevision`) |
//! | idempotent by event id | KurrentDB's own idempotency on event ids (it answers a repeated append with the first result) |
//! | the envelope | `pypes.storage.v1.StoredEvent` protobuf as the event's binary data; its id is the event id |
//! | `read_stream` | `read_stream` forwards / backwards from a revision |
//! | `$all`, filters | `read_all` and `subscribe_to_all` with a stream-prefix or event-type filter, system events excluded |
//! | global position | the event's **prepare position** in the transaction file: ordered, but *not* dense |
//! | `watch_head` | a live `subscribe_to_all` from the end |
//! | stream metadata | `$maxAge`, `$maxCount`, `$tb` |
//! | soft / hard delete | `delete_stream` / `tombstone_stream` |
//! | `scavenge` | starts a server-side scavenge (operations API); it runs asynchronously |
//!
//! What KurrentDB does not give that the file backend does (also in
//! docs/backends.md):
//!
//! - **No hash chain and no signed checkpoints**: the file log's
//!   tamper-evidence is not available; the audit trail keeps its own hash
//!   links and signatures in its entries, so `audit verify` still finds a
//!   changed or removed audit entry.
//! - **Positions are not dense**: `$all` positions are prepare positions,
//!   with gaps between them. Readers continue from what a page returned;
//!   nothing in pypes assumes `position + 1` is the next event, but the
//!   conformance checks that do (dense positions) fail here by design.
//! - **Multi-stream appends are not atomic**: KurrentDB 24 and the client
//!   1.2 have no atomic append to several streams. The streams that are
//!   expected not to exist are written first; if a later stream refuses,
//!   those are soft-deleted again. A crash between the two leaves the first
//!   written (for pypes: a username reserved with no registration).
//! - **Deletion is not immediate on disk**: deleted and truncated events
//!   stay in chunk files until a scavenge completes. Crypto-shredding does
//!   not depend on it: keys never live in the event store.
//!
//! No KurrentDB server can be installed on the build machines of this
//! project: the conformance suite runs only when `PYPES_TEST_KURRENTDB_URL`
//! names one, and says loudly that it did not run otherwise.

#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eventlog::{
    AllPage, AppendResult, BoxFuture, Clock, CurrentVersion, DeleteMode, Direction, EventFilter, EventLog,
    ExpectedVersion, LogError, ReadFrom, RecordedEvent, Result, ScavengeReport, StreamAppend, StreamMetadata,
    validate_appends, validate_stream_name,
};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, DeleteStreamOptions, EventData, Position, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionFilter, TombstoneStreamOptions,
};
use prost::Message;
use tokio::sync::watch;

/// How many resume points of `read_all` are remembered (our position →
/// the exact KurrentDB position to continue from).
const RESUME_POINTS: usize = 4096;

/// The event log on a KurrentDB node or cluster.
pub struct KurrentLog {
    client: Client,
    settings: ClientSettings,
    name: String,
    head: watch::Receiver<u64>,
    resume: Arc<Mutex<VecDeque<(u64, Position)>>>,
}

fn db(name: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Database { detail: format!("KurrentDB {name}: {e}") }
}

fn state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream => StreamState::NoStream,
        ExpectedVersion::StreamExists => StreamState::StreamExists,
        ExpectedVersion::Exact(v) => StreamState::StreamRevision(v),
    }
}

/// Our position of a KurrentDB event: its prepare position.
fn our_position(p: Position) -> u64 {
    p.prepare
}

impl KurrentLog {
    /// Connects to `url` (`esdb://…`, `kurrentdb://…` or `esdb+discover://…`)
    /// and starts following the head of `$all`. Needs a tokio runtime.
    pub async fn open(url: &str, _clock: Arc<dyn Clock>) -> Result<Self> {
        let name = eventlog::redact_url(url);
        let settings: ClientSettings = url.parse().map_err(|e| db(&name, format!("connection string: {e}")))?;
        let client = Client::new(settings.clone()).map_err(|e| db(&name, e))?;
        // The head: one past the newest event, then followed live.
        let newest = {
            let options = ReadAllOptions::default().backwards().position(StreamPosition::End).max_count(1);
            let mut read = client.read_all(&options).await.map_err(|e| db(&name, e))?;
            match read.next().await.map_err(|e| db(&name, e))? {
                Some(e) => e.event.map(|e| our_position(e.position) + 1).unwrap_or(0),
                None => 0,
            }
        };
        let (tx, head) = watch::channel(newest);
        let follower = client.clone();
        let follower_name = name.clone();
        tokio::spawn(async move {
            let options = SubscribeToAllOptions::default()
                .position(StreamPosition::End)
                .filter(SubscriptionFilter::on_event_type().exclude_system_events());
            let mut sub = follower.subscribe_to_all(&options).await;
            loop {
                match sub.next().await {
                    Ok(e) => {
                        if let Some(e) = e.event {
                            let next = our_position(e.position) + 1;
                            tx.send_if_modified(|h| {
                                if next > *h {
                                    *h = next;
                                    true
                                } else {
                                    false
                                }
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(db = %follower_name, error = %e, "following $all failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        sub = follower.subscribe_to_all(&options).await;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { client, settings, name, head, resume: Arc::default() })
    }

    fn recorded(&self, e: kurrentdb::RecordedEvent) -> Result<RecordedEvent> {
        let stored = proto::storage::StoredEvent::decode(e.data.clone()).map_err(|err| LogError::Corrupt {
            file: format!("kurrentdb:{}", e.stream_id()).into(),
            offset: e.revision,
            reason: format!("event {} is not a pypes envelope: {err}", e.id),
        })?;
        let stream: Arc<str> = Arc::from(e.stream_id());
        let mut out = RecordedEvent::from_stored(stored, stream.clone()).map_err(|reason| LogError::Corrupt {
            file: format!("kurrentdb:{stream}").into(),
            offset: e.revision,
            reason,
        })?;
        out.version = e.revision;
        out.position = our_position(e.position);
        out.recorded_at_micros = e.created.timestamp_micros();
        Ok(out)
    }

    fn remember(&self, next: u64, exact: Position) {
        let mut r = self.resume.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= RESUME_POINTS {
            r.pop_front();
        }
        r.push_back((next, exact));
    }

    fn resume_point(&self, from: u64) -> StreamPosition<Position> {
        if from == 0 {
            return StreamPosition::Start;
        }
        let r = self.resume.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter().rev().find(|(next, _)| *next == from) {
            Some((_, exact)) => StreamPosition::Position(*exact),
            // Not a point this process handed out (a checkpoint from before
            // a restart): KurrentDB reads `$all` only from an exact record
            // position, which `from` alone does not give, so this read
            // starts at the beginning and skips what lies below `from`
            // (once per reader and restart; later pages resume exactly).
            None => StreamPosition::Start,
        }
    }

    async fn append_one(&self, a: &StreamAppend) -> Result<AppendResult> {
        let events: Vec<EventData> = a
            .events
            .iter()
            .map(|e| {
                let stored = e.to_stored(&a.stream, 0, 0, 0);
                EventData::binary(e.event_type.clone(), Bytes::from(stored.encode_to_vec())).id(e.id)
            })
            .collect();
        let options = AppendToStreamOptions::default().stream_state(state(a.expected));
        match self.client.append_to_stream(a.stream.clone(), &options, events).await {
            Ok(w) => {
                let last = our_position(w.position);
                Ok(AppendResult {
                    next_expected_version: w.next_expected_version,
                    first_position: last.saturating_sub(a.events.len() as u64 - 1),
                    last_position: last,
                })
            }
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => Err(LogError::WrongExpectedVersion {
                stream: a.stream.clone(),
                expected: a.expected,
                actual: match current {
                    kurrentdb::CurrentRevision::Current(v) => CurrentVersion::Version(v),
                    kurrentdb::CurrentRevision::NoStream => CurrentVersion::NoStream,
                },
            }),
            Err(kurrentdb::Error::ResourceDeleted) => Err(LogError::StreamDeleted { stream: a.stream.clone() }),
            Err(e) => Err(db(&self.name, e)),
        }
    }
}

impl EventLog for KurrentLog {
    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<AppendResult>>> {
        Box::pin(async move {
            validate_appends(&appends)?;
            // Streams that must not exist yet go first: undoing one of
            // them (a soft delete) removes exactly what was written.
            let mut order: Vec<usize> = (0..appends.len()).collect();
            order.sort_by_key(|&i| appends[i].expected != ExpectedVersion::NoStream);
            let mut results: Vec<Option<AppendResult>> = vec![None; appends.len()];
            for (n, &i) in order.iter().enumerate() {
                match self.append_one(&appends[i]).await {
                    Ok(r) => results[i] = Some(r),
                    Err(e) => {
                        for &done in &order[..n] {
                            let a = &appends[done];
                            let undo = match (a.expected, results[done]) {
                                (ExpectedVersion::NoStream, Some(r)) => {
                                    self.delete_stream(
                                        &a.stream,
                                        ExpectedVersion::Exact(r.next_expected_version),
                                        DeleteMode::Soft,
                                    )
                                    .await
                                }
                                _ => Err(LogError::Database {
                                    detail: format!(
                                        "stream {:?} was written but a later stream of the same append failed; \
                                         KurrentDB has no atomic multi-stream append",
                                        a.stream
                                    ),
                                }),
                            };
                            if let Err(u) = undo {
                                tracing::error!(stream = %a.stream, error = %u, "undoing part of a multi-stream append");
                            }
                        }
                        return Err(e);
                    }
                }
            }
            results
                .into_iter()
                .map(|r| r.ok_or_else(|| LogError::Database { detail: "an append of the batch has no result".into() }))
                .collect()
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
            let mut options = ReadStreamOptions::default().max_count(max_count.max(1));
            options = match direction {
                Direction::Forward => options.forwards(),
                Direction::Backward => options.backwards(),
            };
            options = options.position(match (from, direction) {
                (ReadFrom::Start, Direction::Forward) | (ReadFrom::End, Direction::Backward) => match direction {
                    Direction::Forward => StreamPosition::Start,
                    Direction::Backward => StreamPosition::End,
                },
                (ReadFrom::Start, Direction::Backward) => StreamPosition::Position(0),
                (ReadFrom::End, Direction::Forward) => StreamPosition::End,
                (ReadFrom::Version(v), _) => StreamPosition::Position(v),
            });
            let mut out = Vec::new();
            if max_count == 0 {
                return Ok(out);
            }
            let mut read = match self.client.read_stream(stream.to_string(), &options).await {
                Ok(r) => r,
                Err(kurrentdb::Error::ResourceNotFound) => {
                    return Err(LogError::StreamNotFound { stream: stream.into() });
                }
                Err(kurrentdb::Error::ResourceDeleted) => {
                    return Err(LogError::StreamDeleted { stream: stream.into() });
                }
                Err(e) => return Err(db(&self.name, e)),
            };
            loop {
                match read.next().await {
                    Ok(Some(e)) => {
                        if let Some(e) = e.event {
                            out.push(self.recorded(e)?);
                        }
                    }
                    Ok(None) => return Ok(out),
                    Err(kurrentdb::Error::ResourceNotFound) => {
                        return Err(LogError::StreamNotFound { stream: stream.into() });
                    }
                    Err(kurrentdb::Error::ResourceDeleted) => {
                        return Err(LogError::StreamDeleted { stream: stream.into() });
                    }
                    Err(e) => return Err(db(&self.name, e)),
                }
            }
        })
    }

    fn read_all<'a>(&'a self, from: u64, max_count: usize, filter: &'a EventFilter) -> BoxFuture<'a, Result<AllPage>> {
        Box::pin(async move {
            let head = *self.head.borrow();
            let start = self.resume_point(from);
            // From the beginning, the events below `from` do not count
            // towards the page: read on until the page is full.
            let limit = if from > 0 && start == StreamPosition::Start { usize::MAX } else { max_count.max(1) };
            let mut options = ReadAllOptions::default().forwards().position(start);
            // One server-side filter: by stream prefix, or else by type.
            if !filter.stream_prefixes.is_empty() {
                let mut f = SubscriptionFilter::on_stream_name();
                for p in &filter.stream_prefixes {
                    f = f.add_prefix(p);
                }
                options = options.filter(f.exclude_system_events());
            } else if !filter.event_types.is_empty() {
                let mut f = SubscriptionFilter::on_event_type();
                for t in &filter.event_types {
                    f = f.add_prefix(t);
                }
                options = options.filter(f.exclude_system_events());
            } else {
                options = options.filter(SubscriptionFilter::on_event_type().exclude_system_events());
            }
            let options = options.max_count(limit);
            let mut read = self.client.read_all(&options).await.map_err(|e| db(&self.name, e))?;
            let mut page = AllPage { events: Vec::new(), next_position: from, head };
            while let Some(e) = read.next().await.map_err(|e| db(&self.name, e))? {
                let Some(e) = e.event else { continue };
                let exact = e.position;
                let at = our_position(exact);
                if at < from {
                    continue;
                }
                page.next_position = at + 1;
                self.remember(at + 1, exact);
                if filter.matches(e.stream_id(), &e.event_type) {
                    page.events.push(self.recorded(e)?);
                }
                if page.events.len() >= max_count {
                    break;
                }
            }
            page.head = page.head.max(page.next_position);
            Ok(page)
        })
    }

    fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    fn set_stream_metadata<'a>(&'a self, stream: &'a str, metadata: StreamMetadata) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            metadata.validate(stream)?;
            let mut m = kurrentdb::StreamMetadata::builder();
            if let Some(n) = metadata.max_count {
                m = m.max_count(n);
            }
            if let Some(s) = metadata.max_age_secs {
                m = m.max_age(Duration::from_secs(s));
            }
            if let Some(v) = metadata.truncate_before {
                m = m.truncate_before(v);
            }
            self.client
                .set_stream_metadata(stream.to_string(), &AppendToStreamOptions::default(), &m.build())
                .await
                .map(drop)
                .map_err(|e| db(&self.name, e))
        })
    }

    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamMetadata>> {
        Box::pin(async move {
            validate_stream_name(stream)?;
            match self.client.get_stream_metadata(stream.to_string(), &ReadStreamOptions::default()).await {
                Ok(kurrentdb::StreamMetadataResult::Success(m)) => {
                    let m = m.metadata();
                    Ok(StreamMetadata {
                        max_age_secs: m.max_age.map(|d| d.as_secs()),
                        max_count: m.max_count,
                        truncate_before: m.truncate_before,
                    })
                }
                Ok(_) | Err(kurrentdb::Error::ResourceNotFound) => Ok(StreamMetadata::default()),
                Err(e) => Err(db(&self.name, e)),
            }
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
            let result = match mode {
                DeleteMode::Soft => {
                    self.client
                        .delete_stream(
                            stream.to_string(),
                            &DeleteStreamOptions::default().stream_state(state(expected)),
                        )
                        .await
                }
                DeleteMode::Hard => {
                    self.client
                        .tombstone_stream(
                            stream.to_string(),
                            &TombstoneStreamOptions::default().stream_state(state(expected)),
                        )
                        .await
                }
            };
            match result {
                Ok(_) => Ok(()),
                Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => Err(LogError::WrongExpectedVersion {
                    stream: stream.into(),
                    expected,
                    actual: match current {
                        kurrentdb::CurrentRevision::Current(v) => CurrentVersion::Version(v),
                        kurrentdb::CurrentRevision::NoStream => CurrentVersion::NoStream,
                    },
                }),
                Err(kurrentdb::Error::ResourceDeleted) => Err(LogError::StreamDeleted { stream: stream.into() }),
                Err(kurrentdb::Error::ResourceNotFound) => Err(LogError::StreamNotFound { stream: stream.into() }),
                Err(e) => Err(db(&self.name, e)),
            }
        })
    }

    fn scavenge(&self) -> BoxFuture<'_, Result<ScavengeReport>> {
        Box::pin(async move {
            // KurrentDB scavenges on the server, asynchronously: this starts
            // one; what it reclaims is in the server's scavenge log.
            let ops = kurrentdb::operations::Client::new(self.settings.clone()).map_err(|e| db(&self.name, e))?;
            let started = ops
                .start_scavenge(1, 0, &kurrentdb::operations::OperationalOptions::default())
                .await
                .map_err(|e| db(&self.name, e))?;
            tracing::info!(db = %self.name, id = %started.id(), "KurrentDB scavenge started");
            Ok(ScavengeReport::default())
        })
    }
}
