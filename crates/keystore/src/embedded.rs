//! Wiring of the embedded default: the root key from an environment
//! variable or from `<data>/root.key` (made on first start, mode 0600, with
//! a loud warning), the provider's epochs in `<data>/provider/`, and the key
//! store in `<data>/keys/`, apart from the event log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eventlog::Clock;
use eventlog::file::vfs::{OsVfs, Vfs};
use zeroize::Zeroizing;

use crate::crypto::SecretKey;
use crate::error::KeyError;
use crate::file::{holds_keys, open_file_store};
use crate::provider::{EmbeddedRootProvider, RootKeyProvider};
use crate::store::LocalKeyStore;

/// The environment variable the embedded provider reads the root key from
/// (64 hex digits).
pub const ROOT_KEY_ENV: &str = "PYPES_ROOT_KEY";
pub const ROOT_KEY_FILE: &str = "root.key";
pub const PROVIDER_DIR: &str = "provider";
pub const KEYS_DIR: &str = "keys";

/// Where the root key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootKeyOrigin {
    Environment,
    File(PathBuf),
    /// Made now, on first start, into this file.
    Created(PathBuf),
}

impl std::fmt::Display for RootKeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootKeyOrigin::Environment => f.write_str("from PYPES_ROOT_KEY"),
            RootKeyOrigin::File(p) => write!(f, "from {}", p.display()),
            RootKeyOrigin::Created(p) => {
                write!(f, "made now into {} (development only: escrow it, docs/keys.md)", p.display())
            }
        }
    }
}

/// The key store and provider of a data directory.
#[derive(Debug)]
pub struct Embedded {
    pub provider: Arc<EmbeddedRootProvider>,
    pub store: Arc<LocalKeyStore>,
    pub origin: RootKeyOrigin,
}

pub fn parse_root_key(text: &str) -> Result<SecretKey, KeyError> {
    let text = Zeroizing::new(text.trim().to_string());
    if text.len() != 64 {
        return Err(KeyError::Invalid {
            what: "root key",
            reason: format!("{} characters; expected 64 hex digits (32 bytes)", text.len()),
        });
    }
    let bytes = Zeroizing::new(
        hex::decode(text.as_bytes())
            .map_err(|e| KeyError::Invalid { what: "root key", reason: format!("not hex: {e}") })?,
    );
    SecretKey::from_bytes(&bytes)
}

fn read_root_file(path: &Path) -> Result<SecretKey, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| KeyError::io(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "root key file is readable by others than its owner; chmod 600 it"
        );
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?);
    parse_root_key(&text).map_err(|e| match e {
        KeyError::Invalid { reason, .. } => KeyError::corrupt(path, format!("not a root key: {reason}")),
        other => other,
    })
}

fn create_root_file(path: &Path) -> Result<SecretKey, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::random()?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.expose())));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyError::io(path, e))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| KeyError::io(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| KeyError::io(dir, e))?;
    tracing::warn!(
        path = %path.display(),
        "==================== NEW ROOT KEY ====================\n\
         pypes made a root key and stored it in the data directory.\n\
         That is for development only: anyone who can read this file and\n\
         a copy of the data can read everything. In production keep the\n\
         root key in a KMS (or at least pass it in PYPES_ROOT_KEY from a\n\
         secret store), keep it out of backups, and never lose it: without\n\
         it no data can be opened.\n\
         ======================================================"
    );
    Ok(key)
}

/// The root key: from the environment, else from `<data>/root.key`, else
/// (only when no key material exists that an old root key protected) a new
/// one made into that file.
fn resolve_root(
    data_dir: &Path,
    root_from_env: Option<&str>,
    material_in: Option<String>,
) -> Result<(SecretKey, RootKeyOrigin), KeyError> {
    let root_path = data_dir.join(ROOT_KEY_FILE);
    Ok(match root_from_env {
        Some(text) => (
            parse_root_key(text).map_err(|e| match e {
                KeyError::Invalid { reason, .. } => {
                    KeyError::Invalid { what: "root key", reason: format!("{ROOT_KEY_ENV}: {reason}") }
                }
                other => other,
            })?,
            RootKeyOrigin::Environment,
        ),
        None if root_path.exists() => (read_root_file(&root_path)?, RootKeyOrigin::File(root_path.clone())),
        None if let Some(place) = material_in => {
            return Err(KeyError::RootKeyMissing {
                detail: format!(
                    "{place} holds key material but neither {ROOT_KEY_ENV} nor {} is there; set {ROOT_KEY_ENV} or \
                     restore the root key file. A new root key is never made over existing data",
                    root_path.display()
                ),
            });
        }
        None => (create_root_file(&root_path)?, RootKeyOrigin::Created(root_path.clone())),
    })
}

/// Opens the key store in the PostgreSQL database at `url` and the
/// provider's epochs in the one at `provider_url` (may be the same), shared
/// by every node that uses them. The root key comes from [`ROOT_KEY_ENV`]
/// (the same on every node), or for a single node from `<data>/root.key`
/// as with the embedded default. The provider's database must not be
/// backed up or WAL-archived for longer than a rotation period (an old
/// copy keeps destroyed epochs alive): see docs/backends.md.
pub fn open_postgres(
    url: &str,
    provider_url: &str,
    data_dir: &Path,
    root_from_env: Option<&str>,
    clock: Arc<dyn Clock>,
    mode: OpenMode,
) -> Result<Embedded, KeyError> {
    let storage = crate::postgres::PgProviderStorage::open(provider_url)?;
    use crate::provider::ProviderStorage;
    let has_material = storage.read()?.is_some();
    if mode == OpenMode::MustExist && !has_material {
        return Err(KeyError::NotAKeyStore {
            dir: storage.location(),
            reason: "the database holds no key store yet (the server sets one up on its first start)".into(),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|e| KeyError::io(data_dir, e))?;
    let (root, origin) = resolve_root(data_dir, root_from_env, has_material.then(|| storage.describe()))?;
    let now = clock.now_micros() / 1_000_000;
    let provider = Arc::new(EmbeddedRootProvider::open_in(Box::new(storage), root, !has_material, now)?);
    let store = crate::postgres::open_postgres_store(url, provider.clone() as Arc<dyn RootKeyProvider>, clock)?;
    Ok(Embedded { provider, store: Arc::new(store), origin })
}

impl Embedded {
    /// What opening found in the provider's state and the key store:
    /// damaged copies repaired, torn appends cut, old formats migrated,
    /// leftovers removed (or, from [`check_embedded`], what an open would do).
    pub fn findings(&self) -> Vec<crate::files::Finding> {
        let mut out = self.provider.findings();
        out.extend(self.store.findings());
        out
    }
}

/// Reads and checks the provider state and key store of `data_dir` without
/// writing a byte (for `pypes keys verify`); the root key must exist.
pub fn check_embedded(
    data_dir: &Path,
    root_from_env: Option<&str>,
    clock: Arc<dyn Clock>,
) -> Result<Embedded, KeyError> {
    check_embedded_in(data_dir, &data_dir.join(PROVIDER_DIR), root_from_env, clock)
}

/// [`check_embedded`] with the provider's state in `provider_dir` (kept
/// apart from the data directory, e.g. on another volume, so that a
/// restored data directory finds the live epochs: docs/operations.md).
pub fn check_embedded_in(
    data_dir: &Path,
    provider_dir: &Path,
    root_from_env: Option<&str>,
    clock: Arc<dyn Clock>,
) -> Result<Embedded, KeyError> {
    let vfs: Arc<dyn Vfs> = Arc::new(OsVfs);
    let provider_dir = provider_dir.to_path_buf();
    if !EmbeddedRootProvider::exists(&vfs, &provider_dir) {
        return Err(KeyError::NotAKeyStore {
            dir: provider_dir.clone(),
            reason: "no root-key provider state is there (the server sets one up on its first start)".into(),
        });
    }
    let (root, origin) = resolve_root(data_dir, root_from_env, Some(data_dir.display().to_string()))?;
    let now = clock.now_micros() / 1_000_000;
    let provider = Arc::new(EmbeddedRootProvider::check(vfs.clone(), &provider_dir, root, now)?);
    let store = crate::file::check_file_store(
        vfs,
        &data_dir.join(KEYS_DIR),
        provider.clone() as Arc<dyn RootKeyProvider>,
        clock,
    )?;
    Ok(Embedded { provider, store: Arc::new(store), origin })
}

/// What a read-only check found: the report's lines, the damaged records
/// and the keys that do not unwrap (for `pypes keys verify` and
/// `pypes keys verify`; either count non-zero fails them).
pub fn verify_report(keys: &Embedded) -> (String, usize, usize) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let findings = keys.findings();
    for f in &findings {
        let tag = if f.action.is_damage() { "DAMAGED" } else { "NOTE" };
        let _ = writeln!(out, "{tag} {f}");
    }
    let r = keys.store.verify();
    let damaged = findings.iter().filter(|f| f.action.is_damage()).count();
    let _ = writeln!(
        out,
        "tenants: {}, keys unwrapped: {}, failures: {}, damaged records: {damaged}",
        r.tenants,
        r.keys_ok,
        r.failures.len()
    );
    for f in &r.failures {
        let _ = writeln!(out, "FAILED {f}");
    }
    (out, damaged, r.failures.len())
}

/// Whether opening may set up a new key store (the server's first start)
/// or must find one (operator tools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    CreateIfEmpty,
    MustExist,
}

/// Opens the key store of `data_dir`. `root_from_env` is the value of
/// [`ROOT_KEY_ENV`] if set. A new root key is made only when there is no
/// root key anywhere and no key material that an old one protected.
pub fn open_embedded(
    data_dir: &Path,
    root_from_env: Option<&str>,
    clock: Arc<dyn Clock>,
    mode: OpenMode,
) -> Result<Embedded, KeyError> {
    open_embedded_in(data_dir, &data_dir.join(PROVIDER_DIR), root_from_env, clock, mode)
}

/// [`open_embedded`] with the provider's state in `provider_dir`.
pub fn open_embedded_in(
    data_dir: &Path,
    provider_dir: &Path,
    root_from_env: Option<&str>,
    clock: Arc<dyn Clock>,
    mode: OpenMode,
) -> Result<Embedded, KeyError> {
    let vfs: Arc<dyn Vfs> = Arc::new(OsVfs);
    if mode == OpenMode::MustExist && !EmbeddedRootProvider::exists(&vfs, provider_dir) {
        return Err(KeyError::NotAKeyStore {
            dir: provider_dir.to_path_buf(),
            reason: "no root-key provider state is there (the server sets one up on its first start)".into(),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|e| KeyError::io(data_dir, e))?;
    let keys_dir = data_dir.join(KEYS_DIR);
    let provider_dir = provider_dir.to_path_buf();
    let store_has_keys = holds_keys(&vfs, &keys_dir);
    let provider_exists = EmbeddedRootProvider::exists(&vfs, &provider_dir);
    let (root, origin) = resolve_root(
        data_dir,
        root_from_env,
        (store_has_keys || provider_exists).then(|| data_dir.display().to_string()),
    )?;
    let now = clock.now_micros() / 1_000_000;
    let provider = Arc::new(EmbeddedRootProvider::open(vfs.clone(), &provider_dir, root, !store_has_keys, now)?);
    let store = open_file_store(vfs, &keys_dir, provider.clone() as Arc<dyn RootKeyProvider>, clock)?;
    Ok(Embedded { provider, store: Arc::new(store), origin })
}
