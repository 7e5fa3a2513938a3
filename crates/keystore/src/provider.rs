//! The root-key provider: holder of the root key and of the epoch KEKs
//! wrapped under it. Epoch KEKs never leave the provider's own state (never
//! the key store, never its backups); the key store only asks the provider
//! to wrap and unwrap tenant KEKs under an epoch. A KMS fits behind the same
//! trait; the embedded default keeps its state in one file of the data
//! directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use eventlog::file::vfs::Vfs;
use prost::Message;
use proto::keystore as pb;

use crate::crypto::{self, SecretKey, WrappedKey};
use crate::error::KeyError;
use crate::files;
use crate::types::EpochInfo;

/// Where the root key lives and what it does with epochs.
pub trait RootKeyProvider: Send + Sync + std::fmt::Debug {
    /// For logs and errors: e.g. "embedded provider at /data/provider".
    fn describe(&self) -> String;
    /// Live epochs, oldest first; never empty.
    fn epochs(&self) -> Result<Vec<EpochInfo>, KeyError>;
    /// Makes a new epoch KEK, durable before it returns.
    fn create_epoch(&self, now_unix: i64) -> Result<u32, KeyError>;
    /// Destroys an epoch KEK for good, durable before it returns;
    /// destroying a destroyed epoch is a no-op.
    fn destroy_epoch(&self, epoch: u32, now_unix: i64) -> Result<(), KeyError>;
    fn wrap(&self, epoch: u32, aad: &[u8], key: &SecretKey) -> Result<WrappedKey, KeyError>;
    fn unwrap(&self, epoch: u32, aad: &[u8], wrapped: &WrappedKey) -> Result<SecretKey, KeyError>;
}

const MAGIC_V1: &[u8; 8] = b"PYPESRK1";
/// Format 2: the state is written twice (a twin, as the key store's files),
/// so a damaged byte is repaired from the other copy at open.
const MAGIC: &[u8; 8] = b"pypesrk2";
const STATE_FILE: &str = "epochs";
const MAX_STATE: usize = 16 << 20;
const ROOT_CHECK_AAD: &str = "pypes/root-check/v1";

fn epoch_aad(epoch: u32) -> Vec<u8> {
    crypto::associated_data("pypes/epoch-kek/v1", &[&epoch.to_le_bytes()])
}

struct Epoch {
    created_at_unix: i64,
    kek: SecretKey,
    wrapped: WrappedKey,
}

struct State {
    epochs: BTreeMap<u32, Epoch>,
    destroyed: BTreeMap<u32, i64>,
    next_epoch: u32,
    check: WrappedKey,
}

/// Where the embedded provider keeps its state (the epoch KEKs wrapped
/// under the root key, one small blob): a file of the data directory, or a
/// database row that several nodes share.
pub trait ProviderStorage: Send + Sync {
    fn describe(&self) -> String;
    /// Where the state is, for errors: a file path, or a table name.
    fn location(&self) -> PathBuf;
    /// The stored state, `None` when there is none yet.
    fn read(&self) -> Result<Option<Vec<u8>>, KeyError>;
    /// Replaces the state, durable before it returns. A shared storage
    /// refuses the write when another node changed the state since this
    /// one last read it.
    fn write(&self, bytes: &[u8]) -> Result<(), KeyError>;
    /// Whether other processes may change the state (it is then read again
    /// before a change and when an epoch is not known here).
    fn shared(&self) -> bool {
        false
    }
    /// Whether this storage is opened only to be checked (no writes).
    fn read_only(&self) -> bool {
        false
    }
}

struct FileStorage {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    read_only: bool,
}

impl ProviderStorage for FileStorage {
    fn describe(&self) -> String {
        format!("embedded root-key provider at {}", self.dir.display())
    }

    fn location(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self) -> Result<Option<Vec<u8>>, KeyError> {
        let path = self.dir.join(STATE_FILE);
        if !self.read_only && self.vfs.exists(&files::tmp_path(&path)) {
            files::remove_file(&self.vfs, &files::tmp_path(&path))?;
        }
        if !self.vfs.exists(&path) {
            return Ok(None);
        }
        files::read_file(&self.vfs, &path).map(Some)
    }

    fn write(&self, bytes: &[u8]) -> Result<(), KeyError> {
        if self.read_only {
            return Err(KeyError::Invalid { what: "provider state", reason: "opened read-only to be checked".into() });
        }
        self.vfs.create_dir_all(&self.dir).map_err(|e| KeyError::io(&self.dir, e))?;
        files::replace_file(&self.vfs, &self.dir.join(STATE_FILE), bytes)
    }
}

/// The embedded provider: root key given by the caller (from an environment
/// variable or a 0600 file, see the `embedded` module), epoch KEKs wrapped
/// under it in `<dir>/epochs` (or a shared [`ProviderStorage`]), or only in
/// memory for tests.
pub struct EmbeddedRootProvider {
    root: SecretKey,
    state: Mutex<State>,
    storage: Option<Box<dyn ProviderStorage>>,
    findings: Vec<crate::files::Finding>,
}

impl std::fmt::Debug for EmbeddedRootProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl EmbeddedRootProvider {
    /// A provider that keeps its epochs in memory only (tests, benches).
    pub fn in_memory(root: SecretKey, now_unix: i64) -> Result<Self, KeyError> {
        let state = fresh_state(&root, now_unix)?;
        Ok(Self { root, state: Mutex::new(state), storage: None, findings: Vec::new() })
    }

    /// Whether `dir` already holds provider state.
    pub fn exists(vfs: &Arc<dyn Vfs>, dir: &Path) -> bool {
        vfs.exists(&dir.join(STATE_FILE))
    }

    /// Opens the provider state in `dir`, creating it (with epoch 1) when
    /// absent and `create` is true. A root key that does not open the state
    /// is refused: never is a new state made over an existing one.
    pub fn open(vfs: Arc<dyn Vfs>, dir: &Path, root: SecretKey, create: bool, now_unix: i64) -> Result<Self, KeyError> {
        Self::open_in(Box::new(FileStorage { vfs, dir: dir.to_path_buf(), read_only: false }), root, create, now_unix)
    }

    /// Reads and checks the provider state in `dir` without writing
    /// anything (for verifiers); what an open would repair is in
    /// [`Self::findings`].
    pub fn check(vfs: Arc<dyn Vfs>, dir: &Path, root: SecretKey, now_unix: i64) -> Result<Self, KeyError> {
        Self::open_in(Box::new(FileStorage { vfs, dir: dir.to_path_buf(), read_only: true }), root, false, now_unix)
    }

    /// Opens the provider state kept in `storage` (see [`Self::open`]). A
    /// damaged copy of the state (or the old one-copy format) is rewritten
    /// once the root key has opened the state, never before.
    pub fn open_in(
        storage: Box<dyn ProviderStorage>,
        root: SecretKey,
        create: bool,
        now_unix: i64,
    ) -> Result<Self, KeyError> {
        let mut findings = Vec::new();
        let state = match storage.read()? {
            Some(bytes) => {
                let (state, damaged) = read_state(&storage.location(), &bytes, &root)?;
                if let Some(what) = damaged {
                    let action = if what.starts_with("format v1") {
                        crate::files::FindingAction::Migrated
                    } else {
                        crate::files::FindingAction::Repaired
                    };
                    findings.push(crate::files::Finding {
                        path: storage.location(),
                        offset: 0,
                        action,
                        what: what.into(),
                    });
                    if !storage.shared() && !storage.read_only() {
                        tracing::warn!(path = %storage.location().display(), what, "rewriting the provider state from its intact copy");
                        storage.write(&encode_state(&state))?;
                    }
                }
                state
            }
            None if create => {
                let state = fresh_state(&root, now_unix)?;
                storage.write(&encode_state(&state))?;
                state
            }
            None => {
                return Err(KeyError::RootKeyMissing {
                    detail: format!(
                        "{} holds no root-key provider state (its epoch KEKs), but the key store holds keys wrapped \
                         under them: point the server at the provider's live state (keys.provider_dir, \
                         PYPES_KEYS_PROVIDER_DIR; docs/operations.md, Backup and restore). A new one is never made \
                         over existing keys",
                        storage.describe()
                    ),
                });
            }
        };
        Ok(Self { root, state: Mutex::new(state), storage: Some(storage), findings })
    }

    /// What opening found damaged or in the old format (and, unless
    /// read-only, rewrote).
    pub fn findings(&self) -> Vec<crate::files::Finding> {
        self.findings.clone()
    }

    /// Reads a shared storage's state again (another node may have made or
    /// destroyed an epoch); a no-op for a storage only this process writes.
    fn refresh(&self, state: &mut State) -> Result<(), KeyError> {
        if let Some(storage) = self.storage.as_ref().filter(|s| s.shared())
            && let Some(bytes) = storage.read()?
        {
            *state = read_state(&storage.location(), &bytes, &self.root)?.0;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state that `change` produces; memory changes only once
    /// the file is durable.
    fn commit(&self, state: &mut State, next: State) -> Result<(), KeyError> {
        if let Some(storage) = &self.storage {
            storage.write(&encode_state(&next))?;
        }
        *state = next;
        Ok(())
    }

    fn clone_state(state: &State) -> State {
        State {
            epochs: state
                .epochs
                .iter()
                .map(|(&n, e)| {
                    (n, Epoch { created_at_unix: e.created_at_unix, kek: e.kek.clone(), wrapped: e.wrapped.clone() })
                })
                .collect(),
            destroyed: state.destroyed.clone(),
            next_epoch: state.next_epoch,
            check: state.check.clone(),
        }
    }

    fn unavailable(state: &State, epoch: u32) -> KeyError {
        let detail = match state.destroyed.get(&epoch) {
            Some(at) => format!("destroyed at unix time {at}"),
            None => "never created by this provider".to_string(),
        };
        KeyError::EpochUnavailable { epoch, detail }
    }
}

fn fresh_state(root: &SecretKey, now_unix: i64) -> Result<State, KeyError> {
    let check = crypto::wrap(root, &crypto::associated_data(ROOT_CHECK_AAD, &[]), &SecretKey::from_bytes(&[0u8; 32])?)?;
    let kek = SecretKey::random()?;
    let wrapped = crypto::wrap(root, &epoch_aad(1), &kek)?;
    let mut epochs = BTreeMap::new();
    epochs.insert(1, Epoch { created_at_unix: now_unix, kek, wrapped });
    Ok(State { epochs, destroyed: BTreeMap::new(), next_epoch: 2, check })
}

fn encode_state(state: &State) -> Vec<u8> {
    let msg = pb::ProviderState {
        root_check_nonce: state.check.nonce.to_vec().into(),
        root_check: state.check.ciphertext.clone().into(),
        epochs: state
            .epochs
            .iter()
            .map(|(&epoch, e)| pb::EpochKek {
                epoch,
                created_at_unix: e.created_at_unix,
                nonce: e.wrapped.nonce.to_vec().into(),
                wrapped: e.wrapped.ciphertext.clone().into(),
            })
            .collect(),
        destroyed: state
            .destroyed
            .iter()
            .map(|(&epoch, &at)| pb::DestroyedEpoch { epoch, destroyed_at_unix: at })
            .collect(),
        next_epoch: state.next_epoch,
    };
    files::single_twin_file(MAGIC, &msg.encode_to_vec())
}

/// The state, and what needs rewriting (a damaged copy, or format 1).
fn read_state(path: &Path, bytes: &[u8], root: &SecretKey) -> Result<(State, Option<&'static str>), KeyError> {
    let (body, damaged) = files::read_single(path, bytes, MAGIC_V1, MAGIC, MAX_STATE)?;
    let msg =
        pb::ProviderState::decode(body).map_err(|e| KeyError::corrupt(path, format!("undecodable state: {e}")))?;
    let check = WrappedKey::from_parts(&msg.root_check_nonce, &msg.root_check)
        .ok_or_else(|| KeyError::corrupt(path, "root check has the wrong size"))?;
    if crypto::unwrap(root, &crypto::associated_data(ROOT_CHECK_AAD, &[]), &check).is_none() {
        return Err(KeyError::RootKeyMismatch { path: path.to_path_buf() });
    }
    let mut epochs = BTreeMap::new();
    for e in msg.epochs {
        let wrapped = WrappedKey::from_parts(&e.nonce, &e.wrapped)
            .ok_or_else(|| KeyError::corrupt(path, format!("epoch {} KEK has the wrong size", e.epoch)))?;
        let kek = crypto::unwrap(root, &epoch_aad(e.epoch), &wrapped).ok_or_else(|| {
            KeyError::corrupt(path, format!("epoch {} KEK does not open under the root key", e.epoch))
        })?;
        epochs.insert(e.epoch, Epoch { created_at_unix: e.created_at_unix, kek, wrapped });
    }
    if epochs.is_empty() {
        return Err(KeyError::corrupt(path, "no live epoch"));
    }
    let destroyed = msg.destroyed.iter().map(|d| (d.epoch, d.destroyed_at_unix)).collect();
    let next_epoch = msg.next_epoch.max(epochs.keys().last().map_or(1, |e| e + 1));
    Ok((State { epochs, destroyed, next_epoch, check }, damaged))
}

impl RootKeyProvider for EmbeddedRootProvider {
    fn describe(&self) -> String {
        match &self.storage {
            Some(storage) => storage.describe(),
            None => "in-memory root-key provider".to_string(),
        }
    }

    fn epochs(&self) -> Result<Vec<EpochInfo>, KeyError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        Ok(state.epochs.iter().map(|(&epoch, e)| EpochInfo { epoch, created_at_unix: e.created_at_unix }).collect())
    }

    fn create_epoch(&self, now_unix: i64) -> Result<u32, KeyError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        let epoch = state.next_epoch;
        let kek = SecretKey::random()?;
        let wrapped = crypto::wrap(&self.root, &epoch_aad(epoch), &kek)?;
        let mut next = Self::clone_state(&state);
        next.epochs.insert(epoch, Epoch { created_at_unix: now_unix, kek, wrapped });
        next.next_epoch = epoch + 1;
        self.commit(&mut state, next)?;
        tracing::info!(epoch, "created epoch KEK");
        Ok(epoch)
    }

    fn destroy_epoch(&self, epoch: u32, now_unix: i64) -> Result<(), KeyError> {
        let mut state = self.lock();
        self.refresh(&mut state)?;
        if !state.epochs.contains_key(&epoch) {
            return Ok(());
        }
        if state.epochs.len() == 1 {
            return Err(KeyError::Invalid { what: "epoch", reason: format!("epoch {epoch} is the only live epoch") });
        }
        let mut next = Self::clone_state(&state);
        next.epochs.remove(&epoch);
        next.destroyed.insert(epoch, now_unix);
        self.commit(&mut state, next)?;
        tracing::info!(epoch, "destroyed epoch KEK");
        Ok(())
    }

    fn wrap(&self, epoch: u32, aad: &[u8], key: &SecretKey) -> Result<WrappedKey, KeyError> {
        let mut state = self.lock();
        if !state.epochs.contains_key(&epoch) {
            self.refresh(&mut state)?;
        }
        let e = state.epochs.get(&epoch).ok_or_else(|| Self::unavailable(&state, epoch))?;
        crypto::wrap(&e.kek, aad, key)
    }

    fn unwrap(&self, epoch: u32, aad: &[u8], wrapped: &WrappedKey) -> Result<SecretKey, KeyError> {
        let mut state = self.lock();
        if !state.epochs.contains_key(&epoch) {
            self.refresh(&mut state)?;
        }
        let e = state.epochs.get(&epoch).ok_or_else(|| Self::unavailable(&state, epoch))?;
        crypto::unwrap(&e.kek, aad, wrapped).ok_or_else(|| KeyError::Integrity {
            what: format!("a key wrapped under epoch {epoch} does not open (another root, or altered)"),
        })
    }
}
