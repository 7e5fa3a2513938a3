//! What the peers benchmark and its gRPC peers share: the options and
//! the appender every store under test is driven through.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// The options of `loadgen peers`.
pub struct Options {
    pub dir: PathBuf,
    pub seconds: f64,
    pub warmup: f64,
    pub rounds: usize,
    pub writers: Vec<usize>,
    pub streams: usize,
    pub distributions: Vec<String>,
    pub seed: u64,
    pub out: PathBuf,
    pub python: Option<PathBuf>,
    /// Concurrent readers of the read workload (whole streams).
    pub readers: Vec<usize>,
    /// Streams and events per stream the read and mixed workloads start from.
    pub read_streams: usize,
    pub events_per_stream: usize,
    /// Clients of the mixed workload (70 % whole-stream reads, 30 % appends).
    pub mixed_clients: usize,
    /// UmaDB's server binary (`benches/peers/install.sh`).
    pub umadb: Option<PathBuf>,
    /// Also measure pypes through its gRPC API (the `pypes` binary next to
    /// `loadgen`).
    pub grpc: bool,
    /// Events a subscriber catches up over (0: no catch-up workload).
    pub catchup_events: usize,
    /// Sessions of the messaging scenario (0: none) and its clients.
    pub messaging_sessions: usize,
    pub messaging_clients: usize,
}

/// Something that appends one event to a stream, durably, and reads a
/// whole stream back.
pub(crate) trait Appender: Send + Sync + 'static {
    fn append(&self, writer: usize, stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>>;
    /// Reads every event of the stream; returns how many.
    fn read(&self, reader: usize, stream: usize) -> eventlog::BoxFuture<'_, Result<usize>>;
    /// Puts `per_stream` events into each of `streams` streams, fast (not
    /// measured).
    fn seed(&self, streams: usize, per_stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>>;
}

/// One measured round of one system.
#[derive(Clone)]
pub(crate) struct Round {
    pub(crate) events_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p95_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
}

pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

pub(crate) fn round_of(h: &Histogram<u64>, elapsed: Duration) -> Round {
    Round {
        events_per_s: h.len() as f64 / elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.50),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    }
}

pub(crate) fn median(rounds: &[Round]) -> Round {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    sorted[sorted.len() / 2].clone()
}
