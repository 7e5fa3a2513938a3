//! The key-store conformance suite on the file backend, over the simulated
//! filesystem (crash tests live in `crash.rs`; the real filesystem in
//! `file_store.rs`).

use std::path::Path;
use std::sync::Arc;

use eventlog::SystemClock;
use eventlog::file::sim::SimVfs;
use eventlog::file::vfs::Vfs;
use keystore::crypto::SecretKey;
use keystore::file::open_file_store;
use keystore::{EmbeddedRootProvider, KeyStore};

fn new_store() -> Arc<dyn KeyStore> {
    let vfs: Arc<dyn Vfs> = Arc::new(SimVfs::new());
    let provider =
        EmbeddedRootProvider::open(vfs.clone(), Path::new("/data/provider"), SecretKey::random().unwrap(), true, 1)
            .unwrap();
    Arc::new(open_file_store(vfs, Path::new("/data/keys"), Arc::new(provider), Arc::new(SystemClock)).unwrap())
}

keystore::keystore_conformance_tests!(new_store);
