//! The in-memory backend runs the shared conformance suite.
use std::sync::Arc;

use eventlog::conformance::{Fixture, MakeLog};
use eventlog::mem::MemLog;

fn make() -> MakeLog {
    Arc::new(|clock| Box::pin(async move { Fixture { log: Arc::new(MemLog::with_clock(clock)), guard: Box::new(()) } }))
}

eventlog::conformance_tests!(make());
