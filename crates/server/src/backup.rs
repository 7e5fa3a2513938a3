//! `pypes backup` and `pypes restore` for the embedded backends (the file
//! event log and key store; the format is in docs/backup-format.md, the
//! drill in docs/operations.md).
//!
//! A backup is a consistent cut taken while the server runs: the signed
//! heads first, then the log's segments (so the log holds at least what
//! the heads sign), then the key store (every key an event of the cut was
//! sealed under was made before that event was written, so it is there
//! unless it was shredded since, which is what an erasure must do), then
//! the blobs. The copy is then opened as a start would open it (a torn
//! last frame of a segment being written is cut in the copy) and checked:
//! every key unwraps under the live provider. Never in a backup: the root
//! key and the provider's epoch state (docs/keys.md: an old copy of them
//! would keep destroyed epochs alive), the views (rebuilt from the log),
//! the log's lock.
//!
//! A restore reads and checks every file of the backup against its
//! manifest (size and SHA-256) before it writes a byte, writes into a new
//! directory beside the target, and moves it into place only when all of
//! it is written and synced.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sha2::Digest;

/// The manifest's name inside a backup.
pub const MANIFEST: &str = "pypes-backup.json";
/// The backup format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What is copied first, as it is: the signed heads and the log's
/// public key (they must not be newer than the segments copied after).
const HEADS: &[&str] = &["audit.head", "audit.checkpoint", "log/head.sig", "log/signing.pub"];
/// Secrets and identity the node needs to go on with the same log.
const NODE_FILES: &[&str] = &["log-signing.key", "admin.key", "node.id"];

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// RFC 3339.
    pub created: String,
    /// The data directory it was taken from.
    pub source: String,
    /// The log's head position in the backup (events up to it are in it).
    pub log_position: u64,
    pub keys: KeysSummary,
    /// Every file of the backup but the manifest, sorted by path.
    pub files: Vec<FileEntry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSummary {
    pub tenants: usize,
    pub keys: usize,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, with `/`.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What `backup` needs.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub data_dir: PathBuf,
    pub to: PathBuf,
    /// The live provider's directory (default `<data_dir>/provider`).
    pub provider_dir: Option<PathBuf>,
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut src = std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    let mut dst = create_private(to)?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    dst.sync_all().with_context(|| format!("syncing {}", to.display()))?;
    Ok(())
}

fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Copies the tree `from` into `to`, skipping `*.tmp` and what `skip` says.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> anyhow::Result<()> {
    if !from.exists() {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", from.display()))?;
    entries.sort_by_key(|e| e.file_name());
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || skip(&path) {
            continue;
        }
        let kind = e.file_type().with_context(|| format!("reading {}", path.display()))?;
        if kind.is_dir() {
            copy_tree(&path, &to.join(&name), skip)?;
        } else if kind.is_file() {
            match copy_file(&path, &to.join(&name)) {
                // A blob or key file removed while copying (a sweep, a shred): not in the cut.
                Err(e)
                    if e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                    }) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok((bytes, hex::encode(h.finalize())))
}

/// Every file under `root`, relative with `/`, sorted.
fn list_files(root: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let p = e.path();
            let kind = e.file_type().with_context(|| format!("reading {}", p.display()))?;
            if kind.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

fn sync_tree(root: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let p = e?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        }
    }
    std::fs::File::open(root).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", root.display()))
}

fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))
}

/// A destination that must be new (absent, or an empty directory).
fn fresh_destination(what: &str, dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => anyhow::bail!("{what} {}: {e}", dir.display()),
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!(
                    "{what} {} is not empty: give a new or empty directory (nothing is overwritten)",
                    dir.display()
                );
            }
            std::fs::remove_dir(dir).with_context(|| format!("{what} {}", dir.display()))?;
            Ok(())
        }
    }
}

/// `dir` with a suffix beside it (`/a/b` → `/a/b.partial`).
fn beside(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The root key to check the copy with: `PYPES_ROOT_KEY`, else the data
/// directory's development `root.key` (read, never copied).
fn root_key_text(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(k) = std::env::var(keystore::embedded::ROOT_KEY_ENV) {
        return Ok(k);
    }
    let path = data_dir.join(keystore::embedded::ROOT_KEY_FILE);
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|e| {
        anyhow::anyhow!(
            "the backup is checked by unwrapping every key, which needs the root key: set {} as the server has it \
             ({} cannot be read: {e})",
            keystore::embedded::ROOT_KEY_ENV,
            path.display()
        )
    })
}

/// Takes a backup of a (running or stopped) server's data directory.
pub fn backup(opts: &BackupOptions) -> anyhow::Result<Manifest> {
    let data = &opts.data_dir;
    match crate::datadir::inspect(data)? {
        crate::datadir::Found::Marked | crate::datadir::Found::Unmarked => {}
        crate::datadir::Found::Absent | crate::datadir::Found::Empty => {
            anyhow::bail!("{} holds no pypes data to back up", data.display())
        }
    }
    let provider = opts.provider_dir.clone().unwrap_or_else(|| data.join(keystore::embedded::PROVIDER_DIR));
    if provider.starts_with(&opts.to) || opts.to.starts_with(data) {
        anyhow::bail!(
            "--to {} is inside the data directory (or holds the provider's state): put backups elsewhere",
            opts.to.display()
        );
    }
    let root = root_key_text(data)?;
    fresh_destination("--to", &opts.to)?;
    let partial = beside(&opts.to, ".partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing an unfinished {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let result = take(opts, &partial, &provider, &root);
    match result {
        Ok(manifest) => {
            std::fs::rename(&partial, &opts.to)
                .with_context(|| format!("moving {} to {}", partial.display(), opts.to.display()))?;
            sync_parent(&opts.to)?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

fn take(opts: &BackupOptions, out: &Path, provider: &Path, root: &str) -> anyhow::Result<Manifest> {
    let data = &opts.data_dir;
    // 1. The signed heads (never newer than what follows).
    for f in HEADS {
        let src = data.join(f);
        if src.exists() {
            copy_file(&src, &out.join(f))?;
        }
    }
    // 2. The log's segments.
    copy_tree(&data.join("log/segments"), &out.join("log/segments"), &|_| false)?;
    // 3. The node's own files.
    for f in NODE_FILES {
        let src = data.join(f);
        if src.exists() {
            copy_file(&src, &out.join(f))?;
        }
    }
    // 4. The key store, checked under the live provider; copied again if
    //    a write was caught halfway (a torn append in the copy).
    let clock: Arc<dyn eventlog::Clock> = Arc::new(eventlog::SystemClock);
    let mut keys_summary = None;
    for attempt in 0..3 {
        let keys_out = out.join(keystore::embedded::KEYS_DIR);
        if keys_out.exists() {
            std::fs::remove_dir_all(&keys_out)?;
        }
        copy_tree(&data.join(keystore::embedded::KEYS_DIR), &keys_out, &|_| false)?;
        let checked = keystore::embedded::check_embedded_in(out, provider, Some(root), clock.clone())
            .with_context(|| format!("checking the copied key store under the provider in {}", provider.display()))?;
        let (report, damaged, failures) = keystore::embedded::verify_report(&checked);
        if damaged == 0 && failures == 0 {
            let s = keystore::KeyStore::status(checked.store.as_ref())?;
            keys_summary = Some(KeysSummary { tenants: s.tenants, keys: s.live_keys });
            break;
        }
        if attempt == 2 {
            anyhow::bail!("the copied key store does not check out three times in a row:\n{report}");
        }
    }
    let keys = keys_summary.ok_or_else(|| anyhow::anyhow!("the key store was not checked"))?;
    // 5. The blobs (media).
    copy_tree(&data.join("blobs"), &out.join("blobs"), &|_| false)?;
    // 6. The log copy opened as a start opens it: a frame caught halfway
    //    is cut, the head is signed anew; then the lock is removed.
    let signing = crate::wiring::read_signing_key(out)?;
    let log = eventlog::file::FileLog::open(out.join("log"), eventlog::file::FileLogConfig::new(signing))
        .map_err(|e| anyhow::anyhow!("the copied event log does not open: {e}"))?;
    let log_position = eventlog::EventLog::head(&log);
    log.close();
    drop(log);
    let lock = out.join("log/LOCK");
    if lock.exists() {
        std::fs::remove_file(&lock)?;
    }
    // 7. The manifest.
    let mut files = Vec::new();
    for path in list_files(out)? {
        let (bytes, sha256) = sha256_file(&out.join(&path))?;
        files.push(FileEntry { path, bytes, sha256 });
    }
    let manifest = Manifest {
        format: FORMAT,
        created: audit::time::time_text(eventlog::Clock::now_micros(&eventlog::SystemClock)),
        source: std::fs::canonicalize(data).unwrap_or_else(|_| data.clone()).display().to_string(),
        log_position,
        keys,
        files,
    };
    let mut f = create_private(&out.join(MANIFEST))?;
    f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    f.sync_all()?;
    sync_tree(out)?;
    Ok(manifest)
}

/// Reads a backup's manifest and checks every file against it (nothing
/// missing, nothing extra, every size and SHA-256 right). Writes nothing.
pub fn verify(from: &Path) -> anyhow::Result<Manifest> {
    let path = from.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!("{} is not a pypes backup: {} cannot be read ({e})", from.display(), path.display())
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
    if manifest.format != FORMAT {
        anyhow::bail!("{}: backup format {}; this build reads format {FORMAT}", path.display(), manifest.format);
    }
    let listed: std::collections::BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for f in &manifest.files {
        if f.path.split('/').any(|c| c == ".." || c.is_empty()) || f.path.starts_with('/') {
            anyhow::bail!("{}: the path {:?} leaves the backup", path.display(), f.path);
        }
        let file = from.join(&f.path);
        let (bytes, sha256) = sha256_file(&file)
            .map_err(|e| anyhow::anyhow!("backup file {} is missing or unreadable ({e:#})", f.path))?;
        if bytes != f.bytes || sha256 != f.sha256 {
            anyhow::bail!(
                "backup file {} is damaged: {bytes} bytes with SHA-256 {sha256}, the manifest says {} bytes with {}",
                file.display(),
                f.bytes,
                f.sha256
            );
        }
    }
    if let Some(extra) = list_files(from)?.into_iter().find(|p| p != MANIFEST && !listed.contains(p.as_str())) {
        anyhow::bail!("{} holds {extra}, which its manifest does not list: not restored", from.display());
    }
    Ok(manifest)
}

/// Restores a backup into `data_dir` (absent or empty), checking all of it first.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Manifest> {
    let manifest = verify(from)?;
    match crate::datadir::inspect(data_dir)? {
        crate::datadir::Found::Absent | crate::datadir::Found::Empty => {}
        _ => anyhow::bail!(
            "{} holds data: a restore goes into a new or empty directory (nothing is overwritten)",
            data_dir.display()
        ),
    }
    let staging = beside(data_dir, ".restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing an unfinished {}", staging.display()))?;
    }
    let result = (|| -> anyhow::Result<()> {
        for f in &manifest.files {
            copy_file(&from.join(&f.path), &staging.join(&f.path))?;
            // Read back what was written: a copy that changed on the way is refused.
            let (bytes, sha256) = sha256_file(&staging.join(&f.path))?;
            if bytes != f.bytes || sha256 != f.sha256 {
                anyhow::bail!("{} changed while it was restored", f.path);
            }
        }
        sync_tree(&staging)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Into place: the whole directory when it is new, else its entries.
    if data_dir.exists() {
        for e in std::fs::read_dir(&staging)? {
            let e = e?;
            std::fs::rename(e.path(), data_dir.join(e.file_name()))?;
        }
        std::fs::remove_dir(&staging)?;
        sync_tree(data_dir)?;
    } else {
        std::fs::rename(&staging, data_dir)
            .with_context(|| format!("moving {} to {}", staging.display(), data_dir.display()))?;
        sync_parent(data_dir)?;
    }
    crate::datadir::write_marker(data_dir)?;
    Ok(manifest)
}
