//! The event-log conformance suite against a real KurrentDB node. No
//! KurrentDB server can be installed on this project's machines, so every
//! test here is ignored by default: nextest lists them as skipped, never
//! as passed. To run them, start an empty, throw-away node and:
//!
//! ```sh
//! PYPES_TEST_KURRENTDB_URL='esdb://127.0.0.1:2113?tls=false' \
//!     cargo nextest run -p eventlog-kurrentdb --run-ignored all
//! ```
//!
//! Expected to fail there by design (docs/backends.md): the checks of
//! dense `$all` positions, of atomic multi-stream appends, and of max-age
//! on a manual clock (KurrentDB ages events by its own clock).

use std::sync::Arc;

use eventlog::Clock;
use eventlog::conformance::{Fixture, MakeLog};
use eventlog_kurrentdb::KurrentLog;

fn make() -> MakeLog {
    let url = std::env::var("PYPES_TEST_KURRENTDB_URL")
        .expect("PYPES_TEST_KURRENTDB_URL is not set: the KurrentDB suite DID NOT RUN (see this file's docs)");
    Arc::new(move |clock: Arc<dyn Clock>| {
        let url = url.clone();
        Box::pin(async move {
            let log = KurrentLog::open(&url, clock).await.expect("connect to KurrentDB");
            Fixture { log: Arc::new(log), guard: Box::new(()) }
        })
    })
}

eventlog::conformance_tests!(
    ignored: "needs a KurrentDB server: set PYPES_TEST_KURRENTDB_URL and run with --run-ignored all",
    make()
);

/// What can be checked without a server: a bad connection string is
/// refused with the reason, and an unreachable node is named without its
/// password.
#[tokio::test]
async fn a_bad_connection_string_is_named() {
    let clock: Arc<dyn Clock> = Arc::new(eventlog::SystemClock);
    let Err(e) = KurrentLog::open("http://nowhere", clock.clone()).await else { panic!("accepted a non-esdb url") };
    assert!(e.to_string().contains("connection string"), "{e}");
}
