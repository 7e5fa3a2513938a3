//! The `EventLog` port: an append-only log of streams with one global order
//! (`$all`), matched to KurrentDB's contract, plus its two built-in backends
//! (`mem` for tests, `file` the embedded default) and the conformance suite
//! every backend runs. The backends on database servers live in their own
//! crates (`eventlog-postgres`, `eventlog-kurrentdb`) and share the stream
//! rules through [`rules`].
//!
//! Architecture Invariant: this crate knows nothing of tenants, keys or the
//! domain. It stores `pypes.storage.v1.StoredEvent` envelopes and treats
//! their payload and sealed fields as opaque bytes.

mod clock;
mod error;
pub mod file;
pub mod hash;
pub mod mem;
pub mod stats;

/// The target of the spans exported as traces (the server's
/// `telemetry::SPAN_TARGET`; spelled here so the lower crates need not
/// depend on the server).
pub const SPAN_TARGET: &str = "pypes::span";
mod model;
mod subscription;
mod validate;
mod version;

pub mod conformance;

use std::future::Future;
use std::pin::Pin;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{LogError, WriteTrouble, is_full as is_storage_full};
pub use model::{
    AllPage, AppendResult, DeleteMode, Direction, EventFilter, MAX_BATCH_BYTES, MAX_EVENT_BYTES, MAX_EVENT_TYPE_LEN,
    MAX_STREAM_NAME_LEN, NewEvent, ReadFrom, RecordedEvent, ScavengeReport, StreamAppend, StreamMetadata,
    validate_stream_name,
};
pub use proto::storage::SealedField;
pub use stats::IndexStats;
pub use subscription::{SubscribeFrom, Subscription, SubscriptionMessage, SubscriptionOptions, subscribe_all};
pub use validate::validate_appends;
pub use version::{CurrentVersion, ExpectedVersion};

/// The stream rules every backend applies (versions, soft and hard deletes,
/// metadata limits, visibility, idempotency by event id), so a backend in
/// another crate cannot drift from the embedded ones.
pub mod rules {
    pub use crate::model::{Deletion, Earlier, StreamRules, check_repeat, readable_metadata, whole_repeat};
}

/// A connection string or URL without its password, for messages (every
/// backend on a database server names its database this way).
pub fn redact_url(url: &str) -> String {
    let no_kv = url.split_whitespace().filter(|p| !p.starts_with("password=")).collect::<Vec<_>>().join(" ");
    no_kv.split('@').next_back().unwrap_or_default().to_string()
}

/// A boxed, sendable future: the return type of the port's async methods, so
/// that `dyn EventLog` works and backends can be chosen at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of every log operation.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// The event log port.
///
/// Every backend gives the same guarantees, checked by [`conformance`]:
/// an acknowledged append is durable; a batch, and a multi-stream append,
/// is atomic; `$all` is one gap-free order in which a reader never sees an
/// event before every event with a lower position is readable.
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` to `stream` if the stream is at `expected`.
    ///
    /// Idempotent by event id: appending the same ids with the same content
    /// again returns the original result without writing.
    fn append<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'a, Result<AppendResult>> {
        Box::pin(async move {
            let mut results =
                self.append_multi(vec![StreamAppend { stream: stream.to_owned(), expected, events }]).await?;
            Ok(results.remove(0))
        })
    }

    /// Appends to several streams atomically: either every stream's
    /// expectation holds and all events are written, or nothing is.
    /// Results come back in the order of `appends`.
    fn append_multi(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<AppendResult>>>;

    /// Reads up to `max_count` events of `stream` from `from` in `direction`.
    ///
    /// Events hidden by metadata (truncate-before, max-count, max-age) are
    /// skipped. A stream that never existed or is soft-deleted with nothing
    /// after is `StreamNotFound`; a hard-deleted one is `StreamDeleted`.
    fn read_stream<'a>(
        &'a self,
        stream: &'a str,
        from: ReadFrom,
        direction: Direction,
        max_count: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>>;

    /// Reads `$all` forward from global position `from` (inclusive): up to
    /// `max_count` events that pass `filter`, and where to continue.
    fn read_all<'a>(&'a self, from: u64, max_count: usize, filter: &'a EventFilter) -> BoxFuture<'a, Result<AllPage>>;

    /// [`EventLog::read_all`] for a caller on a thread of its own (not a
    /// runtime worker), such as a projection rebuild: a backend that reads
    /// files reads them on the calling thread instead of handing the work
    /// to the runtime's blocking pool. The default runs `read_all` on `rt`.
    fn read_all_on_thread(
        &self,
        rt: &tokio::runtime::Handle,
        from: u64,
        max_count: usize,
        filter: &EventFilter,
    ) -> Result<AllPage> {
        rt.block_on(self.read_all(from, max_count, filter))
    }

    /// The position the next committed event will get: every event below it
    /// is durable and readable.
    fn head(&self) -> u64;

    /// A watch of [`EventLog::head`] that changes after every commit.
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Whether this process is the log's only writer (the file log holds
    /// its directory's lock), so what it read of a stream cannot have been
    /// changed by anyone else. `false` for logs other processes may write.
    fn exclusive(&self) -> bool {
        false
    }

    /// Ends this process's writing at a clean stop: the file log writes a
    /// final signed checkpoint (so `head.sig` covers every frame) and
    /// releases its directory; later writes fail with `Closed`. Blocks
    /// until done. Databases need nothing.
    fn close_for_shutdown(&self) {}

    /// How long this log's fdatasyncs take (the file log; databases sync
    /// out of our sight and give `None`).
    fn fsync_latency(&self) -> Option<stats::HistogramSnapshot> {
        None
    }

    /// How much of the log's index is in memory (the file log; `None` for
    /// databases, which index on their own side).
    fn index_stats(&self) -> Option<IndexStats> {
        None
    }

    /// Why appends fail right now, when it is the storage's fault and not
    /// the caller's (a full disk, an unreachable database: appends resume
    /// by themselves once the cause is gone); `None` while appends work.
    /// Readiness reports it.
    fn write_trouble(&self) -> Option<WriteTrouble> {
        None
    }

    /// Replaces the metadata of `stream` (which need not exist yet).
    fn set_stream_metadata<'a>(&'a self, stream: &'a str, metadata: StreamMetadata) -> BoxFuture<'a, Result<()>>;

    /// The current metadata of `stream` (default when never set).
    fn stream_metadata<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<StreamMetadata>>;

    /// Deletes `stream` if it is at `expected`. A soft delete hides every
    /// event so far and lets the stream be written again from the next
    /// version; a hard delete leaves a tombstone: the stream can never be
    /// written or read again.
    fn delete_stream<'a>(
        &'a self,
        stream: &'a str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> BoxFuture<'a, Result<()>>;

    /// Physically removes the bytes of deleted, truncated and expired events.
    /// Afterwards no read returns them and no file of the log holds them.
    fn scavenge(&self) -> BoxFuture<'_, Result<ScavengeReport>>;
}
