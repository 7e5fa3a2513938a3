//! The file backend runs the shared conformance suite, on the real
//! filesystem and on the simulated one used by the crash tests.
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use eventlog::conformance::{Fixture, MakeLog};
use eventlog::file::{FileLog, FileLogConfig};

fn make() -> MakeLog {
    Arc::new(|clock| {
        Box::pin(async move {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut config = FileLogConfig::new(SigningKey::from_bytes(&[7; 32]));
            config.clock = clock;
            // Small segments so the suite crosses segment boundaries.
            config.segment_size = 64 * 1024;
            let log = FileLog::open(dir.path().join("log"), config).expect("open file log");
            Fixture { log: Arc::new(log), guard: Box::new(dir) }
        })
    })
}

eventlog::conformance_tests!(make());

mod on_simulated_disk {
    use super::*;
    use eventlog::file::sim::SimVfs;

    fn make() -> MakeLog {
        Arc::new(|clock| {
            Box::pin(async move {
                let mut config = FileLogConfig::new(SigningKey::from_bytes(&[7; 32]));
                config.clock = clock;
                config.vfs = Arc::new(SimVfs::new());
                config.segment_size = 16 * 1024;
                let log = FileLog::open("/sim/log", config).expect("open file log");
                Fixture { log: Arc::new(log), guard: Box::new(()) }
            })
        })
    }

    eventlog::conformance_tests!(make());
}
