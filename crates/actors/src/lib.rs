//! actix actors for pypes' entities. Each tenant, Pype, Session and
//! subject that is in use has an actor that holds its state and is the one
//! writer of its stream in this node: load → decide (in `domain`) → seal →
//! append with the expected version → evolve → reply, after the append is
//! durable. The registry places actors on arbiters by id hash, passivates
//! idle ones and caps how many live; Session timers live in one task,
//! re-armed from the log at start.

pub mod entity;
mod error;
pub mod registry;
pub mod timers;
pub mod write;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use eventlog::{Clock, EventLog};
use keystore::Keyring;

pub use entity::Executed;
pub use error::ActorError;
pub use events::{Codec, Kind, StreamName, stream_name};
pub use registry::{Registry, RegistryConfig};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub appends: AtomicU64,
    pub conflicts: AtomicU64,
    pub live_actors: AtomicU64,
    pub timer_firings: AtomicU64,
}

/// What every actor uses.
pub struct Shared {
    pub log: Arc<dyn EventLog>,
    pub keyring: Keyring,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

/// A clock that follows tokio's (so paused-time tests move it): the
/// wall-clock time at creation plus the tokio time elapsed since.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_micros: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base_micros: i64) -> Self {
        Self { base_micros, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now_micros(&self) -> i64 {
        self.base_micros + self.start.elapsed().as_micros() as i64
    }
}
