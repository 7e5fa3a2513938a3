//! The embedded file key store: its own directory (never the event log's),
//! one directory per tenant holding the tenant's KEK per epoch and up to
//! 256 shard files of wrapped data keys. New keys and use reservations are
//! appended and fsync'd; a shred or a rotation rewrites the shard to a
//! temporary file, fsyncs it and renames it over the old one, so the old
//! bytes are in no file afterwards. Layouts are in `docs/keys.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use eventlog::Clock;
use eventlog::file::vfs::{StorageFile, Vfs};
use prost::Message;
use proto::keystore as pb;
use uuid::Uuid;

use crate::crypto::WrappedKey;
use crate::error::KeyError;
use crate::files::{self, Finding, FindingAction, Frame, Twin};
use crate::provider::RootKeyProvider;
use crate::store::{KeyEntry, LocalKeyStore, Persist, Record, SHARDS, TenantState};
use crate::types::{Group, KeyId, KeyPurpose};

/// Format 2 writes every record twice (twin frames, `docs/keys.md`);
/// format 1 files (one copy) are read and rewritten as format 2 at open.
pub const FORMAT_VERSION: u32 = 2;
const META_MAGIC_V1: &[u8; 8] = b"PYKSMETA";
const KEK_MAGIC_V1: &[u8; 8] = b"PYKSTKEK";
const SHARD_MAGIC_V1: &[u8; 8] = b"PYKSSHRD";
const SHREDDED_MAGIC_V1: &[u8; 8] = b"PYKSTSHR";
// Each v2 magic differs from its v1 magic in every byte, so one damaged
// byte never makes a file of one version look like the other.
const META_MAGIC: &[u8; 8] = b"pyksmet2";
const KEK_MAGIC: &[u8; 8] = b"pykstke2";
const SHARD_MAGIC: &[u8; 8] = b"pyksshd2";
const SHREDDED_MAGIC: &[u8; 8] = b"pykstsh2";
const META_FILE: &str = "keystore.meta";
const LOCK_FILE: &str = "LOCK";
const TENANTS_DIR: &str = "tenants";
const SHREDDED_FILE: &str = "SHREDDED";
/// Largest record body; real ones are about 120 bytes.
const MAX_RECORD: usize = 4096;

fn kek_name(epoch: u32) -> String {
    format!("kek-{epoch:08}")
}

fn shard_name(shard: u16) -> String {
    format!("shard-{shard:02x}")
}

/// Opens (or creates, when `dir` is empty or absent) a file key store.
/// Everything is read and checked first (every file, every copy, every
/// tenant KEK unwrapped); only then are repairs written, so a refused open
/// changes no file. What was repaired is in [`LocalKeyStore::findings`].
pub fn open_file_store(
    vfs: Arc<dyn Vfs>,
    dir: &Path,
    provider: Arc<dyn RootKeyProvider>,
    clock: Arc<dyn Clock>,
) -> Result<LocalKeyStore, KeyError> {
    let (persist, tenants) = FilePersist::check(vfs, dir, Access::ReadWrite)?;
    LocalKeyStore::from_loaded(tenants, provider, Box::new(persist), clock)
}

/// Reads and checks a file key store without writing anything (for
/// `pypes keys verify`): the store, for unwrapping every key; what an open
/// would repair is in its [`LocalKeyStore::findings`].
pub fn check_file_store(
    vfs: Arc<dyn Vfs>,
    dir: &Path,
    provider: Arc<dyn RootKeyProvider>,
    clock: Arc<dyn Clock>,
) -> Result<LocalKeyStore, KeyError> {
    let (persist, tenants) = FilePersist::check(vfs, dir, Access::ReadOnly)?;
    LocalKeyStore::from_loaded(tenants, provider, Box::new(persist), clock)
}

/// True when `dir` holds key-store data (so a new root key must not be made).
pub fn holds_keys(vfs: &Arc<dyn Vfs>, dir: &Path) -> bool {
    let tenants = dir.join(TENANTS_DIR);
    vfs.exists(&dir.join(META_FILE)) && vfs.list(&tenants).is_ok_and(|names| !names.is_empty())
}

/// Whether an open may write (repair, migrate, create) or only read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
}

/// One write the open decided on after checking everything.
#[derive(Debug)]
pub(crate) enum Fix {
    Remove(PathBuf),
    Replace(PathBuf, Vec<u8>),
    Truncate(PathBuf, u64),
}

/// What the check of an open found and the writes that settle it.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub findings: Vec<Finding>,
    pub fixes: Vec<Fix>,
}

impl Plan {
    fn found(&mut self, path: &Path, offset: usize, action: FindingAction, what: impl Into<String>) {
        self.findings.push(Finding { path: path.to_path_buf(), offset: offset as u64, action, what: what.into() });
    }
}

/// Open shard files and their lengths, for appends.
type Handles = HashMap<(Uuid, u16), (Arc<dyn StorageFile>, u64)>;

struct FilePersist {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    handles: Mutex<Handles>,
    access: Access,
    /// What the open found; its writes are made by `settle`, once the
    /// store has checked everything (tenant KEKs included).
    findings: Vec<Finding>,
    pending: Mutex<Vec<Fix>>,
    _lock: Box<dyn std::any::Any + Send + Sync>,
}

impl FilePersist {
    fn check(vfs: Arc<dyn Vfs>, dir: &Path, access: Access) -> Result<(Self, HashMap<Uuid, TenantState>), KeyError> {
        let meta = dir.join(META_FILE);
        if access == Access::ReadOnly && !vfs.exists(&meta) {
            return Err(KeyError::NotAKeyStore { dir: dir.to_path_buf(), reason: format!("it has no {META_FILE}") });
        }
        vfs.create_dir_all(dir).map_err(|e| KeyError::io(dir, e))?;
        let lock = vfs.lock(&dir.join(LOCK_FILE)).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => KeyError::Locked { dir: dir.to_path_buf() },
            _ => KeyError::io(dir.join(LOCK_FILE), e),
        })?;
        let mut plan = Plan::default();
        let tmp_meta = files::tmp_path(&meta);
        if vfs.exists(&tmp_meta) {
            plan.found(&tmp_meta, 0, FindingAction::LeftoverRemoved, "an interrupted replace left this file");
            plan.fixes.push(Fix::Remove(tmp_meta));
        }
        let meta_body = pb::StoreMeta { format_version: FORMAT_VERSION }.encode_to_vec();
        let mut rewrite_meta = false;
        if vfs.exists(&meta) {
            let bytes = files::read_file(&vfs, &meta)?;
            let (body, damaged) = files::read_single(&meta, &bytes, META_MAGIC_V1, META_MAGIC, MAX_RECORD)?;
            let msg = pb::StoreMeta::decode(body).map_err(|e| KeyError::corrupt(&meta, e.to_string()))?;
            if msg.format_version != 1 && msg.format_version != FORMAT_VERSION {
                return Err(KeyError::corrupt(
                    &meta,
                    format!("format version {} (this build reads 1 and {FORMAT_VERSION})", msg.format_version),
                ));
            }
            if let Some(what) = damaged {
                plan.found(&meta, 0, action_for(what), what);
                rewrite_meta = true;
            } else if msg.format_version != FORMAT_VERSION {
                plan.found(&meta, 0, FindingAction::Migrated, "format version 1");
                rewrite_meta = true;
            }
        } else {
            let names = vfs.list(dir).map_err(|e| KeyError::io(dir, e))?;
            let foreign: Vec<_> = names.iter().filter(|n| *n != LOCK_FILE).cloned().collect();
            if !foreign.is_empty() {
                return Err(KeyError::NotAKeyStore {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "it holds {} but no {META_FILE}; the key store needs a directory of its own, never the event log's",
                        foreign.join(", ")
                    ),
                });
            }
            // A new store: nothing to check, so it is set up at once.
            files::replace_file(&vfs, &meta, &files::single_twin_file(META_MAGIC, &meta_body))?;
        }
        let tenants_dir = dir.join(TENANTS_DIR);
        if access == Access::ReadWrite {
            vfs.create_dir_all(&tenants_dir).map_err(|e| KeyError::io(&tenants_dir, e))?;
        }
        let mut persist = Self {
            vfs,
            dir: dir.to_path_buf(),
            handles: Mutex::new(HashMap::new()),
            access,
            findings: Vec::new(),
            pending: Mutex::new(Vec::new()),
            _lock: lock,
        };
        let tenants = persist.load_tenants(&mut plan)?;
        // Last, so that the store says format 2 only once every file is.
        if rewrite_meta {
            plan.fixes.push(Fix::Replace(meta, files::single_twin_file(META_MAGIC, &meta_body)));
        }
        persist.findings = plan.findings;
        persist.pending = Mutex::new(plan.fixes);
        Ok((persist, tenants))
    }

    /// Reads and checks every tenant's files; the repairs go to `plan`.
    fn load_tenants(&self, plan: &mut Plan) -> Result<HashMap<Uuid, TenantState>, KeyError> {
        let tenants_dir = self.dir.join(TENANTS_DIR);
        let mut tenants = HashMap::new();
        let names = if self.vfs.exists(&tenants_dir) {
            self.vfs.list(&tenants_dir).map_err(|e| KeyError::io(&tenants_dir, e))?
        } else {
            Vec::new()
        };
        for name in names {
            let tenant = Uuid::parse_str(&name).map_err(|_| {
                KeyError::corrupt(tenants_dir.join(&name), "unexpected entry: tenant directories are named by UUID")
            })?;
            if let Some(state) = self.load_tenant(tenant, plan)? {
                tenants.insert(tenant, state);
            }
        }
        Ok(tenants)
    }

    /// Syncs every file and directory of the tenants again, so that what
    /// a read-back saw is on the disk (after a failed fsync the page cache
    /// may hold bytes the disk never got).
    fn sync_everything(&self) -> Result<(), KeyError> {
        let tenants_dir = self.dir.join(TENANTS_DIR);
        for name in self.vfs.list(&tenants_dir).map_err(|e| KeyError::io(&tenants_dir, e))? {
            let dir = tenants_dir.join(&name);
            for file in self.vfs.list(&dir).map_err(|e| KeyError::io(&dir, e))? {
                let path = dir.join(&file);
                let f = self.vfs.open(&path, false).map_err(|e| KeyError::io(&path, e))?;
                f.sync_data().map_err(|e| KeyError::io(&path, e))?;
            }
            self.vfs.sync_dir(&dir).map_err(|e| KeyError::io(&dir, e))?;
        }
        self.vfs.sync_dir(&tenants_dir).map_err(|e| KeyError::io(&tenants_dir, e))
    }

    /// Carries out the writes a check decided on, each durable before the next.
    fn apply(&self, fixes: Vec<Fix>) -> Result<(), KeyError> {
        for fix in fixes {
            match fix {
                Fix::Remove(path) => files::remove_file(&self.vfs, &path)?,
                Fix::Replace(path, bytes) => files::replace_file(&self.vfs, &path, &bytes)?,
                Fix::Truncate(path, len) => {
                    let file = self.vfs.open(&path, false).map_err(|e| KeyError::io(&path, e))?;
                    file.set_len(len).map_err(|e| KeyError::io(&path, e))?;
                    file.sync_data().map_err(|e| KeyError::io(&path, e))?;
                }
            }
        }
        Ok(())
    }

    fn tenant_dir(&self, tenant: Uuid) -> PathBuf {
        self.dir.join(TENANTS_DIR).join(tenant.to_string())
    }

    fn handles(&self) -> MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_tenant(&self, tenant: Uuid, plan: &mut Plan) -> Result<Option<TenantState>, KeyError> {
        let dir = self.tenant_dir(tenant);
        let names = self.vfs.list(&dir).map_err(|e| KeyError::io(&dir, e))?;
        for name in names.iter().filter(|n| n.ends_with(files::TMP_SUFFIX)) {
            let path = dir.join(name);
            plan.found(&path, 0, FindingAction::LeftoverRemoved, "an interrupted replace left this file");
            plan.fixes.push(Fix::Remove(path));
        }
        let names: Vec<String> = names.into_iter().filter(|n| !n.ends_with(files::TMP_SUFFIX)).collect();
        if names.iter().any(|n| n == SHREDDED_FILE) {
            self.read_shredded_marker(tenant, plan)?;
            // Finish an interrupted tenant shred: nothing but the marker stays.
            for name in names.iter().filter(|n| *n != SHREDDED_FILE) {
                let path = dir.join(name);
                plan.found(&path, 0, FindingAction::LeftoverRemoved, "the tenant was shredded; finishing the removal");
                plan.fixes.push(Fix::Remove(path));
            }
            return Ok(Some(TenantState { shredded: true, ..TenantState::default() }));
        }
        let mut state = TenantState::default();
        let mut has_shards = false;
        for name in &names {
            let path = dir.join(name);
            if let Some(epoch) = name.strip_prefix("kek-").and_then(|n| n.parse::<u32>().ok()) {
                state.keks.insert(epoch, read_kek(&self.vfs, &path, tenant, epoch, plan)?);
            } else if let Some(shard) = name.strip_prefix("shard-").and_then(|n| u16::from_str_radix(n, 16).ok()) {
                if shard >= SHARDS {
                    return Err(KeyError::corrupt(&path, format!("shard number {shard} is out of range")));
                }
                has_shards = true;
                for record in self.read_shard(&path, tenant, shard, plan)? {
                    state.apply(shard, record);
                }
            } else {
                return Err(KeyError::corrupt(&path, "unexpected file in a tenant directory"));
            }
        }
        if state.keks.is_empty() {
            if has_shards {
                return Err(KeyError::corrupt(&dir, "the tenant has data keys but no KEK file"));
            }
            // A tenant whose first KEK write was cut short: nothing was acknowledged.
            return Ok(None);
        }
        Ok(Some(state))
    }

    fn read_shredded_marker(&self, tenant: Uuid, plan: &mut Plan) -> Result<(), KeyError> {
        let path = self.tenant_dir(tenant).join(SHREDDED_FILE);
        let bytes = files::read_file(&self.vfs, &path)?;
        let (body, damaged) = files::read_single(&path, &bytes, SHREDDED_MAGIC_V1, SHREDDED_MAGIC, MAX_RECORD)?;
        let msg = pb::TenantShredded::decode(body).map_err(|e| KeyError::corrupt(&path, e.to_string()))?;
        if files::uuid_field(&path, "tenant id", &msg.tenant_id)? != tenant {
            return Err(KeyError::corrupt(&path, "marker names another tenant"));
        }
        if let Some(what) = damaged {
            plan.found(&path, 0, action_for(what), what);
            plan.fixes.push(Fix::Replace(path, files::single_twin_file(SHREDDED_MAGIC, body)));
        }
        Ok(())
    }

    /// Reads a shard's records. Format 2: a record with one whole copy is
    /// kept (and the file rewritten whole from the intact copies); a record
    /// with no whole copy is a torn last append (cut off) only if nothing
    /// valid follows it, otherwise the file is refused. Format 1 (one copy)
    /// keeps its old rule and is rewritten as format 2.
    fn read_shard(&self, path: &Path, tenant: Uuid, shard: u16, plan: &mut Plan) -> Result<Vec<Record>, KeyError> {
        let bytes = files::read_file(&self.vfs, path)?;
        let (version, magic_damaged) = files::magic_version(&bytes, SHARD_MAGIC_V1, SHARD_MAGIC)
            .ok_or_else(|| KeyError::corrupt(path, "wrong magic number (not a shard file, or damaged)"))?;
        let mut bodies: Vec<std::ops::Range<usize>> = Vec::new();
        let mut rewrite = None;
        let mut cut = None;
        if magic_damaged {
            plan.found(path, 0, FindingAction::Repaired, "magic number damaged");
            rewrite = Some(());
        }
        let mut at = SHARD_MAGIC.len();
        if version == 1 {
            plan.found(path, 0, FindingAction::Migrated, "format version 1 (one copy of each record)");
            rewrite = Some(());
            loop {
                match files::frame_at(&bytes, at, MAX_RECORD) {
                    Frame::End => break,
                    Frame::Whole { body, next } => {
                        bodies.push(body);
                        at = next;
                    }
                    Frame::Bad(why) => {
                        if bodies.is_empty() || files::valid_frame_after(&bytes, at, MAX_RECORD) {
                            return Err(KeyError::corrupt(path, format!("damaged record at offset {at}: {why}")));
                        }
                        plan.found(path, at, FindingAction::TornTailCut, format!("torn last append ({why})"));
                        break;
                    }
                }
            }
        } else {
            loop {
                match files::twin_at(&bytes, at, MAX_RECORD) {
                    Twin::End => break,
                    Twin::Whole { body, next, damaged } => {
                        if let Some(what) = damaged {
                            plan.found(path, at, FindingAction::Repaired, what);
                            rewrite = Some(());
                        }
                        bodies.push(body);
                        at = next;
                    }
                    Twin::Conflict => {
                        return Err(KeyError::corrupt(
                            path,
                            format!("the two copies of the record at offset {at} differ"),
                        ));
                    }
                    Twin::Bad(why) => {
                        if bodies.is_empty() || files::valid_frame_after(&bytes, at, MAX_RECORD) {
                            return Err(KeyError::corrupt(
                                path,
                                format!("both copies of the record at offset {at} are damaged ({why})"),
                            ));
                        }
                        // No whole copy here and nothing valid after: an
                        // append that never returned (an acknowledged one
                        // has two whole copies, and one damage spoils one).
                        plan.found(path, at, FindingAction::TornTailCut, format!("torn last append ({why})"));
                        cut = Some(at);
                        break;
                    }
                }
            }
        }
        let Some((header, records)) = bodies.split_first() else {
            return Err(KeyError::corrupt(path, "damaged shard header"));
        };
        let header =
            pb::ShardHeader::decode(&bytes[header.clone()]).map_err(|e| KeyError::corrupt(path, e.to_string()))?;
        if files::uuid_field(path, "tenant id", &header.tenant_id)? != tenant || header.shard != u32::from(shard) {
            return Err(KeyError::corrupt(path, "header names another tenant or shard"));
        }
        let records: Vec<Record> =
            records.iter().map(|body| decode_record(path, &bytes[body.clone()])).collect::<Result<_, _>>()?;
        if rewrite.is_some() {
            let mut out = Self::shard_header(tenant, shard);
            for record in &records {
                files::push_twin(&mut out, &encode_record(record).encode_to_vec());
            }
            plan.fixes.push(Fix::Replace(path.to_path_buf(), out));
        } else if let Some(at) = cut {
            plan.fixes.push(Fix::Truncate(path.to_path_buf(), at as u64));
        }
        Ok(records)
    }

    fn shard_header(tenant: Uuid, shard: u16) -> Vec<u8> {
        let mut out = SHARD_MAGIC.to_vec();
        let header = pb::ShardHeader { tenant_id: tenant.as_bytes().to_vec().into(), shard: u32::from(shard) };
        files::push_twin(&mut out, &header.encode_to_vec());
        out
    }
}

impl Persist for FilePersist {
    fn describe(&self) -> String {
        format!("file key store at {}", self.dir.display())
    }

    fn settle(&self) -> Result<(), KeyError> {
        if self.access == Access::ReadOnly {
            return Ok(());
        }
        let fixes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.apply(fixes)?;
        for f in &self.findings {
            tracing::warn!(path = %f.path.display(), offset = f.offset, what = %f.what, action = ?f.action, "key store settled at open");
        }
        Ok(())
    }

    fn findings(&self) -> Vec<Finding> {
        self.findings.clone()
    }

    fn reload(&self) -> Result<Option<HashMap<Uuid, TenantState>>, KeyError> {
        if self.access == Access::ReadOnly {
            return Ok(None);
        }
        // Appends open their shard again (and read its length afresh).
        self.handles().clear();
        let mut plan = Plan::default();
        // Everything is read and checked before anything is written.
        let tenants = self.load_tenants(&mut plan)?;
        for f in &plan.findings {
            tracing::warn!(path = %f.path.display(), offset = f.offset, what = %f.what, action = ?f.action, "key store repaired after a failed write");
        }
        self.apply(plan.fixes)?;
        self.sync_everything()?;
        Ok(Some(tenants))
    }

    fn write_kek(&self, tenant: Uuid, epoch: u32, kek: &WrappedKey) -> Result<(), KeyError> {
        let dir = self.tenant_dir(tenant);
        if !self.vfs.exists(&dir) {
            self.vfs.create_dir_all(&dir).map_err(|e| KeyError::io(&dir, e))?;
            let parent = self.dir.join(TENANTS_DIR);
            self.vfs.sync_dir(&parent).map_err(|e| KeyError::io(&parent, e))?;
        }
        let msg = pb::TenantKek {
            tenant_id: tenant.as_bytes().to_vec().into(),
            epoch,
            nonce: kek.nonce.to_vec().into(),
            wrapped: kek.ciphertext.clone().into(),
        };
        files::replace_file(
            &self.vfs,
            &dir.join(kek_name(epoch)),
            &files::single_twin_file(KEK_MAGIC, &msg.encode_to_vec()),
        )
    }

    fn remove_kek(&self, tenant: Uuid, epoch: u32) -> Result<(), KeyError> {
        let path = self.tenant_dir(tenant).join(kek_name(epoch));
        if self.vfs.exists(&path) { files::remove_file(&self.vfs, &path) } else { Ok(()) }
    }

    fn append(&self, tenant: Uuid, shard: u16, record: &Record) -> Result<(), KeyError> {
        let path = self.tenant_dir(tenant).join(shard_name(shard));
        let mut frame = Vec::with_capacity(320);
        files::push_twin(&mut frame, &encode_record(record).encode_to_vec());
        let mut handles = self.handles();
        let (file, len) = match handles.entry((tenant, shard)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if !self.vfs.exists(&path) {
                    // A new shard appears whole or not at all.
                    let mut bytes = Self::shard_header(tenant, shard);
                    bytes.extend_from_slice(&frame);
                    return files::replace_file(&self.vfs, &path, &bytes);
                }
                let file = self.vfs.open(&path, false).map_err(|e| KeyError::io(&path, e))?;
                let len = file.len().map_err(|e| KeyError::io(&path, e))?;
                e.insert((file, len))
            }
        };
        let result = file.write_at(*len, &frame).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                *len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                handles.remove(&(tenant, shard));
                Err(KeyError::io(&path, e))
            }
        }
    }

    fn rewrite_shard(&self, tenant: Uuid, shard: u16, records: &[Record]) -> Result<(), KeyError> {
        let path = self.tenant_dir(tenant).join(shard_name(shard));
        self.handles().remove(&(tenant, shard));
        let mut bytes = Self::shard_header(tenant, shard);
        for record in records {
            files::push_twin(&mut bytes, &encode_record(record).encode_to_vec());
        }
        files::replace_file(&self.vfs, &path, &bytes)
    }

    fn shred_tenant(&self, tenant: Uuid) -> Result<(), KeyError> {
        let dir = self.tenant_dir(tenant);
        if !self.vfs.exists(&dir) {
            self.vfs.create_dir_all(&dir).map_err(|e| KeyError::io(&dir, e))?;
            let parent = self.dir.join(TENANTS_DIR);
            self.vfs.sync_dir(&parent).map_err(|e| KeyError::io(&parent, e))?;
        }
        self.handles().retain(|(t, _), _| *t != tenant);
        // The marker is the commit point: from here on the tenant is
        // shredded, and an open finishes removing its files if we crash.
        let msg = pb::TenantShredded { tenant_id: tenant.as_bytes().to_vec().into() };
        files::replace_file(
            &self.vfs,
            &dir.join(SHREDDED_FILE),
            &files::single_twin_file(SHREDDED_MAGIC, &msg.encode_to_vec()),
        )?;
        for name in self.vfs.list(&dir).map_err(|e| KeyError::io(&dir, e))? {
            if name != SHREDDED_FILE {
                self.vfs.remove(&dir.join(&name)).map_err(|e| KeyError::io(dir.join(&name), e))?;
            }
        }
        self.vfs.sync_dir(&dir).map_err(|e| KeyError::io(&dir, e))
    }
}

fn read_kek(
    vfs: &Arc<dyn Vfs>,
    path: &Path,
    tenant: Uuid,
    epoch: u32,
    plan: &mut Plan,
) -> Result<WrappedKey, KeyError> {
    let bytes = files::read_file(vfs, path)?;
    let (body, damaged) = files::read_single(path, &bytes, KEK_MAGIC_V1, KEK_MAGIC, MAX_RECORD)?;
    let msg = pb::TenantKek::decode(body).map_err(|e| KeyError::corrupt(path, e.to_string()))?;
    if files::uuid_field(path, "tenant id", &msg.tenant_id)? != tenant || msg.epoch != epoch {
        return Err(KeyError::corrupt(path, "KEK file names another tenant or epoch than its path"));
    }
    let wrapped = WrappedKey::from_parts(&msg.nonce, &msg.wrapped)
        .ok_or_else(|| KeyError::corrupt(path, "wrapped KEK has the wrong size"))?;
    if let Some(what) = damaged {
        plan.found(path, 0, action_for(what), what);
        plan.fixes.push(Fix::Replace(path.to_path_buf(), files::single_twin_file(KEK_MAGIC, body)));
    }
    Ok(wrapped)
}

/// A single-record file found in format 1 is migrated; one with a damaged
/// copy (or magic) is repaired.
fn action_for(what: &str) -> FindingAction {
    if what.starts_with("format v1") { FindingAction::Migrated } else { FindingAction::Repaired }
}

fn group_to_pb(group: Group) -> pb::KeyGroup {
    match group {
        Group::Profile => pb::KeyGroup::Profile,
        Group::Device => pb::KeyGroup::Device,
        Group::Geo => pb::KeyGroup::Geo,
    }
}

pub(crate) fn encode_record(record: &Record) -> pb::ShardRecord {
    use pb::shard_record::Record as R;
    let id_bytes = |id: &KeyId| id.as_bytes().to_vec().into();
    let inner = match record {
        Record::Key { id, entry } => {
            let (kind, group, media) = match entry.purpose {
                KeyPurpose::Subject { group, .. } => (pb::KeyKind::Subject, group_to_pb(group), None),
                KeyPurpose::SessionContent { .. } => (pb::KeyKind::SessionContent, pb::KeyGroup::Unspecified, None),
                KeyPurpose::Media { media, .. } => (pb::KeyKind::Media, pb::KeyGroup::Unspecified, Some(media)),
                KeyPurpose::TenantIndex { .. } => (pb::KeyKind::TenantIndex, pb::KeyGroup::Unspecified, None),
            };
            R::Key(pb::DataKey {
                key_id: id_bytes(id),
                kind: kind as i32,
                anchor: entry.purpose.anchor().as_bytes().to_vec().into(),
                group: group as i32,
                media_id: media.map(|m| m.as_bytes().to_vec().into()).unwrap_or_default(),
                kek_epoch: entry.kek_epoch,
                nonce: entry.wrapped.nonce.to_vec().into(),
                wrapped: entry.wrapped.ciphertext.clone().into(),
                uses_reserved: entry.reserved,
                retired: entry.retired,
            })
        }
        Record::Uses { id, up_to } => R::Uses(pb::UsesReserved { key_id: id_bytes(id), up_to: *up_to }),
        Record::Retired { id } => R::Retired(pb::KeyRetired { key_id: id_bytes(id) }),
        Record::Shredded { id } => R::Shredded(pb::KeyShredded { key_id: id_bytes(id) }),
    };
    pb::ShardRecord { record: Some(inner) }
}

pub(crate) fn decode_record(path: &Path, body: &[u8]) -> Result<Record, KeyError> {
    use pb::shard_record::Record as R;
    let msg = pb::ShardRecord::decode(body).map_err(|e| KeyError::corrupt(path, format!("undecodable record: {e}")))?;
    let key_id = |bytes: &[u8]| files::uuid_field(path, "key id", bytes).map(KeyId);
    Ok(match msg.record {
        Some(R::Key(k)) => {
            let id = key_id(&k.key_id)?;
            let anchor = files::uuid_field(path, "anchor", &k.anchor)?;
            let purpose = match (pb::KeyKind::try_from(k.kind), pb::KeyGroup::try_from(k.group)) {
                (Ok(pb::KeyKind::Subject), Ok(g)) => {
                    let group = match g {
                        pb::KeyGroup::Profile => Group::Profile,
                        pb::KeyGroup::Device => Group::Device,
                        pb::KeyGroup::Geo => Group::Geo,
                        pb::KeyGroup::Unspecified => {
                            return Err(KeyError::corrupt(path, format!("subject key {id} has no group")));
                        }
                    };
                    KeyPurpose::Subject { subject: anchor, group }
                }
                (Ok(pb::KeyKind::SessionContent), _) => KeyPurpose::SessionContent { session: anchor },
                (Ok(pb::KeyKind::TenantIndex), _) => KeyPurpose::TenantIndex { tenant: anchor },
                (Ok(pb::KeyKind::Media), _) => {
                    KeyPurpose::Media { session: anchor, media: files::uuid_field(path, "media id", &k.media_id)? }
                }
                _ => return Err(KeyError::corrupt(path, format!("key {id} has an unknown kind {}", k.kind))),
            };
            let wrapped = WrappedKey::from_parts(&k.nonce, &k.wrapped)
                .ok_or_else(|| KeyError::corrupt(path, format!("wrapped key {id} has the wrong size")))?;
            Record::Key {
                id,
                entry: KeyEntry {
                    purpose,
                    kek_epoch: k.kek_epoch,
                    wrapped,
                    reserved: k.uses_reserved,
                    retired: k.retired,
                },
            }
        }
        Some(R::Uses(u)) => Record::Uses { id: key_id(&u.key_id)?, up_to: u.up_to },
        Some(R::Retired(r)) => Record::Retired { id: key_id(&r.key_id)? },
        Some(R::Shredded(s)) => Record::Shredded { id: key_id(&s.key_id)? },
        None => return Err(KeyError::corrupt(path, "empty record")),
    })
}
