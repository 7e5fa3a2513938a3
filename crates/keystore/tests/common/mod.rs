//! Helpers shared by the file key-store tests: opening a store and its
//! provider over a (simulated) filesystem, and scanning files for bytes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eventlog::file::sim::SimVfs;
use eventlog::file::vfs::Vfs;
use eventlog::{Clock, ManualClock};
use keystore::crypto::SecretKey;
use keystore::file::open_file_store;
use keystore::{EmbeddedRootProvider, KeyError, LocalKeyStore};
use prost::Message;
use proto::keystore as pb;

pub const PROVIDER: &str = "/data/provider";
pub const KEYS: &str = "/data/keys";

pub fn clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(1_700_000_000_000_000))
}

pub fn open(vfs: &SimVfs, root: &SecretKey) -> Result<LocalKeyStore, KeyError> {
    open_with_clock(vfs, root, clock())
}

/// The provider's first epoch is made at unix 1_700_000_000.
pub fn open_with_clock(vfs: &SimVfs, root: &SecretKey, clock: Arc<dyn Clock>) -> Result<LocalKeyStore, KeyError> {
    let vfs: Arc<dyn Vfs> = Arc::new(vfs.clone());
    let provider = EmbeddedRootProvider::open(vfs.clone(), Path::new(PROVIDER), root.clone(), true, 1_700_000_000)?;
    open_file_store(vfs, Path::new(KEYS), Arc::new(provider), clock)
}

/// Every file whose bytes contain `needle`.
pub fn files_containing(vfs: &SimVfs, needle: &[u8]) -> Vec<PathBuf> {
    vfs.all_file_bytes()
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(p, _)| p)
        .collect()
}

/// The wrapped bytes (nonce and ciphertext) of a data key, read from the
/// shard files.
pub fn wrapped_bytes_of(vfs: &SimVfs, key_id: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (path, bytes) in vfs.all_file_bytes() {
        if !path.to_string_lossy().contains("shard-") || bytes.len() < 8 {
            continue;
        }
        let mut at = 8;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let Some(body) = bytes.get(at + 8..at + 8 + len) else { break };
            if let Ok(pb::ShardRecord { record: Some(pb::shard_record::Record::Key(k)) }) =
                pb::ShardRecord::decode(body)
                && k.key_id == key_id
            {
                out.push(k.nonce.to_vec());
                out.push(k.wrapped.to_vec());
            }
            at += 8 + len;
        }
    }
    out
}
