//! Fuzzes the key store's files as an open reads them: a real store (the
//! root-provider state, a tenant's KEK, key shards, the meta file) is made
//! once on a simulated filesystem; each input replaces one of its files
//! (the first byte picks which) and the provider and the store are opened
//! read-only, as `pypes keys verify` and a start do. Any bytes: refused
//! with an error naming the file, or opened, never a panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use eventlog::file::sim::SimVfs;
use eventlog::file::vfs::Vfs;
use keystore::crypto::SecretKey;
use keystore::{Aad, EmbeddedRootProvider, KeyPolicy, Keyring};
use libfuzzer_sys::fuzz_target;

const ROOT: [u8; 32] = [9; 32];

/// The template store's files.
fn template() -> &'static Vec<(PathBuf, Vec<u8>)> {
    static FILES: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let vfs = SimVfs::new();
        let shared: Arc<dyn Vfs> = Arc::new(vfs.clone());
        let clock: Arc<dyn eventlog::Clock> = Arc::new(eventlog::SystemClock);
        let root = SecretKey::from_bytes(&ROOT).expect("root");
        let provider = Arc::new(
            EmbeddedRootProvider::open(shared.clone(), Path::new("/provider"), root, true, 0).expect("provider"),
        );
        let store = keystore::file::open_file_store(shared, Path::new("/ks"), provider, clock).expect("store");
        let keyring = Keyring::new(Arc::new(store), KeyPolicy::default()).expect("keyring");
        let tenant = uuid::Uuid::from_u128(1);
        rt.block_on(async {
            for i in 0..3u128 {
                let purpose = keystore::KeyPurpose::SessionContent { session: uuid::Uuid::from_u128(100 + i) };
                let aad = Aad { tenant, stream: "session-x", event_id: uuid::Uuid::from_u128(200 + i) };
                keyring.seal("body", b"hello", &purpose, &aad).await.expect("seal");
            }
        });
        let mut files = vfs.all_file_bytes();
        files.sort();
        files
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let files = template();
    let target = selector as usize % files.len();
    let vfs = SimVfs::new();
    for (i, (path, bytes)) in files.iter().enumerate() {
        let bytes = if i == target { rest } else { bytes.as_slice() };
        if let Some(dir) = path.parent() {
            vfs.create_dir_all(dir).expect("mkdir");
        }
        let file = vfs.open(path, true).expect("create");
        file.write_at(0, bytes).expect("write");
    }
    let shared: Arc<dyn Vfs> = Arc::new(vfs);
    let clock: Arc<dyn eventlog::Clock> = Arc::new(eventlog::SystemClock);
    let root = SecretKey::from_bytes(&ROOT).expect("root");
    let Ok(provider) = EmbeddedRootProvider::check(shared.clone(), Path::new("/provider"), root, 0) else { return };
    let _ = keystore::file::check_file_store(shared, Path::new("/ks"), Arc::new(provider), clock);
});
