//! The key-store conformance suite on the in-memory backend.

use std::sync::Arc;

use eventlog::SystemClock;
use keystore::crypto::SecretKey;
use keystore::{EmbeddedRootProvider, KeyStore, LocalKeyStore};

fn new_store() -> Arc<dyn KeyStore> {
    let provider = EmbeddedRootProvider::in_memory(SecretKey::random().unwrap(), 1_700_000_000).unwrap();
    Arc::new(LocalKeyStore::in_memory(Arc::new(provider), Arc::new(SystemClock)))
}

keystore::keystore_conformance_tests!(new_store);
