//! The `KeyStore` port and the local store behind both embedded backends:
//! an in-memory catalog of tenant KEKs and wrapped data keys, kept in step
//! with a persistence layer (none for the in-memory backend, shard files for
//! the file backend). Memory changes only after the persistence layer has
//! made the change durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use eventlog::Clock;
use uuid::Uuid;

use crate::crypto::{self, SecretKey, WrappedKey};
use crate::error::KeyError;
use crate::provider::RootKeyProvider;
use crate::types::{
    DataKey, Group, KeyId, KeyLookup, KeyPurpose, KeysImported, RotationReport, ShredReport, ShredTarget, StoreStatus,
    TenantKeys,
};

/// Where data keys are kept, wrapped. Every method that changes something
/// is durable before it returns. Calls may block on disk or network; async
/// callers go through [`crate::Keyring`], which keeps them off the runtime.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// The key that seals new data for `purpose`: the newest one not
    /// retired, made (with the tenant's KEK if needed) when there is none.
    fn active_key(&self, tenant: Uuid, purpose: &KeyPurpose) -> Result<DataKey, KeyError>;
    /// A key by id, for opening. A shredded key is `Shredded`; an id this
    /// store never issued for the tenant is an error.
    fn key(&self, tenant: Uuid, id: KeyId) -> Result<KeyLookup, KeyError>;
    /// Raises the key's reserved seal count to at least `up_to`; returns the
    /// count now reserved, or `None` when the key is retired or shredded.
    fn reserve_uses(&self, tenant: Uuid, id: KeyId, up_to: u64) -> Result<Option<u64>, KeyError>;
    /// Reserves the next `block` seals of the key for this caller alone:
    /// the range after every reservation made so far, by any node of a
    /// shared store. `None` when the key is retired or shredded.
    fn reserve_block(&self, tenant: Uuid, id: KeyId, block: u64) -> Result<Option<std::ops::Range<u64>>, KeyError>;
    /// Stops a key from sealing; it still opens what it sealed.
    fn retire(&self, tenant: Uuid, id: KeyId) -> Result<(), KeyError>;
    /// Destroys keys. Idempotent: what is already gone is not reported again.
    fn shred(&self, tenant: Uuid, target: &ShredTarget) -> Result<ShredReport, KeyError>;
    /// The live keys (retired included) a shred of `target` would destroy,
    /// sorted; nothing for a target that is already gone.
    fn keys_of(&self, tenant: Uuid, target: &ShredTarget) -> Result<Vec<KeyId>, KeyError>;
    /// Every key of `tenant`: the live ones unwrapped, the ids of the
    /// destroyed ones (moving the tenant to another region). A tenant
    /// whose KEK was destroyed has nothing to hand over: an error.
    fn export_tenant(&self, tenant: Uuid) -> Result<TenantKeys, KeyError>;
    /// Takes in the keys another store exported for `tenant`, wrapped
    /// under this store's KEK of the tenant, with their ids, purposes and
    /// reservations (so no nonce count starts again). Taking in the same
    /// keys again changes nothing (a resumed move).
    fn import_tenant(&self, tenant: Uuid, keys: &TenantKeys) -> Result<KeysImported, KeyError>;
    /// Moves every live key under a new epoch KEK and destroys the old epoch
    /// at the provider; finishes an interrupted rotation instead when one is
    /// found.
    fn rotate_epoch(&self) -> Result<RotationReport, KeyError>;
    fn status(&self) -> Result<StoreStatus, KeyError>;
    /// For a store several nodes share: takes in what other nodes changed
    /// and reports the keys they shredded, so that the caller drops its
    /// unwrapped copies. A store only this process writes has nothing to
    /// report.
    fn sync(&self) -> Result<Vec<RemoteShred>, KeyError> {
        Ok(Vec::new())
    }
    /// Why the store refuses writes for now, if it does (for `/readyz`).
    fn write_trouble(&self) -> Option<String> {
        None
    }
}

/// Keys another node shredded (all of the tenant's when `tenant_shredded`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteShred {
    pub tenant: Uuid,
    pub keys: Vec<KeyId>,
    pub tenant_shredded: bool,
}

/// Shards per tenant: a shred rewrites one shard file, so its cost is the
/// size of one shard, whatever the number of events sealed with the key.
pub const SHARDS: u16 = 256;

/// Seals reserved when a key is made (the keyring's default block).
pub const INITIAL_RESERVATION: u64 = 1 << 16;

pub(crate) fn shard_of(anchor: Uuid) -> u16 {
    (crc32c::crc32c(anchor.as_bytes()) % u32::from(SHARDS)) as u16
}

/// A data key as stored: wrapped under its tenant's KEK of `kek_epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyEntry {
    pub purpose: KeyPurpose,
    pub kek_epoch: u32,
    pub wrapped: WrappedKey,
    pub reserved: u64,
    pub retired: bool,
}

/// One change to a shard, as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Key { id: KeyId, entry: KeyEntry },
    Uses { id: KeyId, up_to: u64 },
    Retired { id: KeyId },
    Shredded { id: KeyId },
}

#[derive(Default, Debug)]
pub(crate) struct Shard {
    pub keys: HashMap<KeyId, KeyEntry>,
    pub shredded: BTreeSet<KeyId>,
}

impl Shard {
    /// The shard compacted to one record per key.
    pub fn records(&self) -> Vec<Record> {
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_by_key(|(id, _)| **id);
        let mut out: Vec<Record> = keys.into_iter().map(|(&id, e)| Record::Key { id, entry: e.clone() }).collect();
        out.extend(self.shredded.iter().map(|&id| Record::Shredded { id }));
        out
    }
}

#[derive(Default, Debug)]
pub(crate) struct TenantState {
    pub keks: BTreeMap<u32, WrappedKey>,
    pub shredded: bool,
    pub shards: BTreeMap<u16, Shard>,
    /// Shard of every key id the tenant ever had, live or shredded.
    pub index: HashMap<KeyId, u16>,
    /// Live keys by anchor (subject or Session).
    pub by_anchor: HashMap<Uuid, Vec<KeyId>>,
}

impl TenantState {
    /// Applies one persisted record (at load and after each write).
    pub fn apply(&mut self, shard: u16, record: Record) {
        let s = self.shards.entry(shard).or_default();
        match record {
            Record::Key { id, entry } => {
                if s.shredded.contains(&id) {
                    return;
                }
                // A shard rewritten by another node comes back whole: a key
                // seen before is replaced (re-wrapped), not listed twice.
                if !s.keys.contains_key(&id) {
                    self.by_anchor.entry(entry.purpose.anchor()).or_default().push(id);
                }
                self.index.insert(id, shard);
                s.keys.insert(id, entry);
            }
            Record::Uses { id, up_to } => {
                if let Some(e) = s.keys.get_mut(&id) {
                    e.reserved = e.reserved.max(up_to);
                }
            }
            Record::Retired { id } => {
                if let Some(e) = s.keys.get_mut(&id) {
                    e.retired = true;
                }
            }
            Record::Shredded { id } => {
                if let Some(e) = s.keys.remove(&id) {
                    let anchor = e.purpose.anchor();
                    if let Some(ids) = self.by_anchor.get_mut(&anchor) {
                        ids.retain(|k| *k != id);
                        if ids.is_empty() {
                            self.by_anchor.remove(&anchor);
                        }
                    }
                }
                s.shredded.insert(id);
                self.index.insert(id, shard);
            }
        }
    }

    /// The keys a shred of `target` destroys (not for `Tenant`), sorted.
    fn doomed(&self, target: &ShredTarget) -> Vec<KeyId> {
        let candidates: Vec<KeyId> = match (target.anchor(), target) {
            (Some(anchor), _) => self.by_anchor.get(&anchor).cloned().unwrap_or_default(),
            (None, ShredTarget::Key(id)) => vec![*id],
            (None, _) => Vec::new(),
        };
        let mut doomed: Vec<KeyId> = candidates
            .into_iter()
            .filter(|id| self.entry(*id).is_some_and(|e| target.matches(*id, &e.purpose)))
            .collect();
        doomed.sort();
        doomed.dedup();
        doomed
    }

    fn entry(&self, id: KeyId) -> Option<&KeyEntry> {
        self.index.get(&id).and_then(|s| self.shards.get(s)).and_then(|s| s.keys.get(&id))
    }

    fn active(&self, purpose: &KeyPurpose) -> Option<KeyId> {
        let ids = self.by_anchor.get(&purpose.anchor())?;
        ids.iter().rev().copied().find(|id| self.entry(*id).is_some_and(|e| e.purpose == *purpose && !e.retired))
    }

    fn newest_kek_epoch(&self) -> Option<u32> {
        self.keks.keys().next_back().copied()
    }
}

/// How the local store makes changes durable.
pub(crate) trait Persist: Send + Sync {
    fn describe(&self) -> String;
    /// Writes what the open decided after checking (repairs, migration,
    /// torn tails cut, leftovers removed); called once every tenant KEK has
    /// unwrapped, so a refused open changes nothing.
    fn settle(&self) -> Result<(), KeyError> {
        Ok(())
    }
    /// What the open found damaged, migrated or left over.
    fn findings(&self) -> Vec<crate::files::Finding> {
        Vec::new()
    }
    fn write_kek(&self, tenant: Uuid, epoch: u32, kek: &WrappedKey) -> Result<(), KeyError>;
    fn remove_kek(&self, tenant: Uuid, epoch: u32) -> Result<(), KeyError>;
    fn append(&self, tenant: Uuid, shard: u16, record: &Record) -> Result<(), KeyError>;
    /// Replaces a shard with exactly `records`: afterwards no file holds
    /// what the old shard held and the new one does not.
    fn rewrite_shard(&self, tenant: Uuid, shard: u16, records: &[Record]) -> Result<(), KeyError>;
    /// Marks the tenant shredded, then removes its KEKs and shards.
    fn shred_tenant(&self, tenant: Uuid) -> Result<(), KeyError>;
    /// Whether other processes write the same store. Such a store is read
    /// again before each change and on a miss, and a failed write does not
    /// poison it (the change is one transaction that was rolled back).
    fn shared(&self) -> bool {
        false
    }
    /// For a shared store: takes this process's exclusive hold on `tenant`
    /// until [`Persist::release`] (the writes in between are one
    /// transaction) and returns what others changed since this process
    /// last looked.
    fn hold(&self, _tenant: Uuid) -> Result<Option<Delta>, KeyError> {
        Ok(None)
    }
    /// Ends the hold: commits the writes made under it, or rolls them back.
    fn release(&self, _commit: bool) -> Result<(), KeyError> {
        Ok(())
    }
    /// Reads every file back after a failed write, repairs what it left,
    /// and returns the state the files hold (`None`: this backend cannot).
    fn reload(&self) -> Result<Option<HashMap<Uuid, TenantState>>, KeyError> {
        Ok(None)
    }
    /// Forgets what this process knew of `tenant`: its next look reads the
    /// tenant whole (after a change that was rolled back).
    fn forget(&self, _tenant: Uuid) {}
    /// For a shared store: what others changed, in `tenant` or in all
    /// tenants, without a hold.
    fn changes(&self, _tenant: Option<Uuid>) -> Result<Vec<Delta>, KeyError> {
        Ok(Vec::new())
    }
}

/// What other processes changed in one tenant of a shared store.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub tenant: Uuid,
    /// The records are the tenant's whole state, not what came after the
    /// last look (first look, or this process lost track).
    pub full: bool,
    pub shredded: bool,
    /// The tenant's KEKs as stored now.
    pub keks: BTreeMap<u32, WrappedKey>,
    /// Records written since the last look, in the order written.
    pub records: Vec<(u16, Record)>,
}

/// The in-memory backend's persistence: nothing.
pub(crate) struct NoPersist;

impl Persist for NoPersist {
    fn describe(&self) -> String {
        "in-memory key store".into()
    }
    fn write_kek(&self, _: Uuid, _: u32, _: &WrappedKey) -> Result<(), KeyError> {
        Ok(())
    }
    fn remove_kek(&self, _: Uuid, _: u32) -> Result<(), KeyError> {
        Ok(())
    }
    fn append(&self, _: Uuid, _: u16, _: &Record) -> Result<(), KeyError> {
        Ok(())
    }
    fn rewrite_shard(&self, _: Uuid, _: u16, _: &[Record]) -> Result<(), KeyError> {
        Ok(())
    }
    fn shred_tenant(&self, _: Uuid) -> Result<(), KeyError> {
        Ok(())
    }
}

fn group_byte(purpose: &KeyPurpose) -> u8 {
    match purpose {
        KeyPurpose::Subject { group: Group::Profile, .. } => 1,
        KeyPurpose::Subject { group: Group::Device, .. } => 2,
        KeyPurpose::Subject { group: Group::Geo, .. } => 3,
        _ => 0,
    }
}

/// AAD of a data key wrapped under a tenant KEK: the wrapped bytes cannot be
/// relabelled as another key, purpose, tenant or epoch.
pub(crate) fn data_key_aad(tenant: Uuid, id: KeyId, purpose: &KeyPurpose, kek_epoch: u32) -> Vec<u8> {
    let (kind, media) = match purpose {
        KeyPurpose::Subject { .. } => (1u8, Uuid::nil()),
        KeyPurpose::SessionContent { .. } => (2, Uuid::nil()),
        KeyPurpose::Media { media, .. } => (3, *media),
        KeyPurpose::TenantIndex { .. } => (4, Uuid::nil()),
    };
    crypto::associated_data(
        "pypes/data-key/v1",
        &[
            tenant.as_bytes(),
            id.as_bytes(),
            &[kind, group_byte(purpose)],
            purpose.anchor().as_bytes(),
            media.as_bytes(),
            &kek_epoch.to_le_bytes(),
        ],
    )
}

pub(crate) fn tenant_kek_aad(tenant: Uuid, epoch: u32) -> Vec<u8> {
    crypto::associated_data("pypes/tenant-kek/v1", &[tenant.as_bytes(), &epoch.to_le_bytes()])
}

struct Inner {
    tenants: HashMap<Uuid, TenantState>,
    /// Unwrapped tenant KEKs by (tenant, epoch).
    keks: HashMap<(Uuid, u32), SecretKey>,
    poisoned: Option<Poison>,
    /// When the store last tried to recover from a failed write.
    recovered_at: Option<std::time::Instant>,
    /// Shreds by other nodes taken in but not yet reported by `sync`.
    remote_shreds: Vec<RemoteShred>,
}

/// Why the store refuses writes.
struct Poison {
    reason: String,
    storage_full: bool,
}

/// Recovery from a failed write is tried at most this often.
const RECOVERY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Unwraps every tenant KEK of `tenants`.
fn unwrap_keks(
    tenants: &HashMap<Uuid, TenantState>,
    provider: &dyn RootKeyProvider,
    persist: &dyn Persist,
) -> Result<HashMap<(Uuid, u32), SecretKey>, KeyError> {
    let mut keks = HashMap::new();
    for (&tenant, state) in tenants {
        for (&epoch, wrapped) in &state.keks {
            let kek = provider.unwrap(epoch, &tenant_kek_aad(tenant, epoch), wrapped).map_err(|e| match e {
                KeyError::EpochUnavailable { epoch, detail } => KeyError::EpochUnavailable {
                    epoch,
                    detail: format!(
                        "{detail}; tenant {tenant}'s KEK in {} is wrapped under it: this key store (or backup) \
                         predates the provider's live epochs, or belongs to another provider",
                        persist.describe()
                    ),
                },
                KeyError::Integrity { .. } => KeyError::RootKeyMismatch {
                    path: format!("{} (tenant {tenant}, epoch {epoch})", persist.describe()).into(),
                },
                other => other,
            })?;
            keks.insert((tenant, epoch), kek);
        }
    }
    Ok(keks)
}

/// The store behind the in-memory and file backends.
pub struct LocalKeyStore {
    inner: Mutex<Inner>,
    rotation: Mutex<()>,
    provider: Arc<dyn RootKeyProvider>,
    persist: Box<dyn Persist>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LocalKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKeyStore({}, {})", self.persist.describe(), self.provider.describe())
    }
}

impl LocalKeyStore {
    /// The in-memory backend: same rules, nothing survives the process.
    pub fn in_memory(provider: Arc<dyn RootKeyProvider>, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tenants: HashMap::new(),
                keks: HashMap::new(),
                poisoned: None,
                recovered_at: None,
                remote_shreds: Vec::new(),
            }),
            rotation: Mutex::new(()),
            provider,
            persist: Box::new(NoPersist),
            clock,
        }
    }

    /// A store over loaded state; every tenant KEK is unwrapped now, so a
    /// wrong root key or a missing epoch stops the start, not a later read.
    pub(crate) fn from_loaded(
        tenants: HashMap<Uuid, TenantState>,
        provider: Arc<dyn RootKeyProvider>,
        persist: Box<dyn Persist>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, KeyError> {
        let keks = unwrap_keks(&tenants, provider.as_ref(), persist.as_ref())?;
        persist.settle()?;
        Ok(Self {
            inner: Mutex::new(Inner { tenants, keks, poisoned: None, recovered_at: None, remote_shreds: Vec::new() }),
            rotation: Mutex::new(()),
            provider,
            persist,
            clock,
        })
    }

    /// Unwraps every live key of every tenant (for auditors and operators:
    /// `pypes keys verify`); reports what does not unwrap instead of stopping.
    pub fn verify(&self) -> VerifyReport {
        let mut inner = self.lock();
        let mut report = VerifyReport::default();
        let keys: Vec<(Uuid, KeyId, KeyEntry)> = inner
            .tenants
            .iter()
            .filter(|(_, t)| !t.shredded)
            .flat_map(|(&tenant, t)| {
                t.shards.values().flat_map(move |s| s.keys.iter().map(move |(&id, e)| (tenant, id, e.clone())))
            })
            .collect();
        report.tenants = inner.tenants.values().filter(|t| !t.shredded).count();
        for (tenant, id, entry) in keys {
            match self.unwrap_entry(&mut inner, tenant, id, &entry) {
                Ok(_) => report.keys_ok += 1,
                Err(e) => report.failures.push(format!("tenant {tenant} key {id}: {e}")),
            }
        }
        report
    }

    /// What opening the store found: copies repaired from their twin,
    /// torn last appends cut off, files migrated from format 1, leftovers
    /// of interrupted writes removed (a read-only check lists what an open
    /// would do).
    pub fn findings(&self) -> Vec<crate::files::Finding> {
        self.persist.findings()
    }

    pub fn provider(&self) -> &Arc<dyn RootKeyProvider> {
        &self.provider
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_unix(&self) -> i64 {
        self.clock.now_micros() / 1_000_000
    }

    /// Runs a persistence step; a failure poisons the store for writes,
    /// since the files may now hold a half-written change. A poisoned
    /// store tries to recover first (see [`Self::recover`]).
    fn persist<T>(
        &self,
        inner: &mut Inner,
        step: impl FnOnce(&dyn Persist) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        if self.persist.shared() {
            // One transaction, rolled back by `change` on failure.
            return step(self.persist.as_ref());
        }
        self.recover(inner)?;
        step(self.persist.as_ref()).inspect_err(|e| {
            tracing::error!(error = %e, "key store write failed; refusing writes until its files are read back");
            inner.poisoned = Some(Poison { reason: e.to_string(), storage_full: e.is_storage_full() });
        })
    }

    /// After a failed write: reads every file back, checks it, repairs
    /// what the failed write left (a torn append is cut off, a leftover
    /// temporary file removed; nothing is written before everything is
    /// read), syncs every file again, and takes what the files hold as the
    /// store's state. Memory only ever changes after a write succeeded, so
    /// the files hold what memory holds, or that and the failed change
    /// when it reached the disk after all. Tried at most once a second;
    /// until it succeeds, writes are refused naming the first failure.
    fn recover(&self, inner: &mut Inner) -> Result<(), KeyError> {
        let Some(poison) = inner.poisoned.as_ref() else { return Ok(()) };
        let refused = |p: &Poison| KeyError::Poisoned { reason: p.reason.clone(), storage_full: p.storage_full };
        if inner.recovered_at.is_some_and(|t| t.elapsed() < RECOVERY_EVERY) {
            return Err(refused(poison));
        }
        inner.recovered_at = Some(std::time::Instant::now());
        let reloaded = self.persist.reload().and_then(|t| {
            t.map(|t| unwrap_keks(&t, self.provider.as_ref(), self.persist.as_ref()).map(|k| (t, k))).transpose()
        });
        match reloaded {
            Ok(Some((tenants, keks))) => {
                tracing::info!(store = %self.persist.describe(), failure = %poison.reason, "key store read back after a failed write; writes resume");
                inner.tenants = tenants;
                inner.keks = keks;
                inner.poisoned = None;
                Ok(())
            }
            Ok(None) => Err(refused(poison)),
            Err(e) => {
                tracing::warn!(store = %self.persist.describe(), error = %e, "key store cannot recover yet");
                Err(refused(poison))
            }
        }
    }

    /// Runs a change to `tenant`. On a shared store it runs under the
    /// store's hold on the tenant, after taking in what other nodes
    /// changed, and its writes are one transaction; when it fails, this
    /// process reads the tenant whole next time (memory may hold part of a
    /// change that was rolled back).
    fn change<T>(&self, tenant: Uuid, f: impl FnOnce(&mut Inner) -> Result<T, KeyError>) -> Result<T, KeyError> {
        let mut inner = self.lock();
        if !self.persist.shared() {
            return f(&mut inner);
        }
        if let Some(delta) = self.persist.hold(tenant)? {
            Self::take_in(&mut inner, delta);
        }
        let result = f(&mut inner);
        let released = self.persist.release(result.is_ok());
        if result.is_err() || released.is_err() {
            self.persist.forget(tenant);
        }
        released?;
        result
    }

    /// Takes in what other nodes changed (in `tenant`, or everywhere).
    fn refresh(&self, inner: &mut Inner, tenant: Option<Uuid>) -> Result<(), KeyError> {
        if self.persist.shared() {
            for delta in self.persist.changes(tenant)? {
                Self::take_in(inner, delta);
            }
        }
        Ok(())
    }

    /// Applies another node's changes to one tenant, noting the keys they
    /// shredded that this process knew as live.
    fn take_in(inner: &mut Inner, delta: Delta) {
        let tenant = delta.tenant;
        let live = |t: &TenantState| -> Vec<KeyId> { t.shards.values().flat_map(|s| s.keys.keys().copied()).collect() };
        let mut report = RemoteShred { tenant, ..RemoteShred::default() };
        if delta.shredded {
            if let Some(old) = inner.tenants.get(&tenant).filter(|t| !t.shredded) {
                report.keys = live(old);
                report.tenant_shredded = true;
                inner.remote_shreds.push(report);
            }
            inner.tenants.insert(tenant, TenantState { shredded: true, ..TenantState::default() });
            inner.keks.retain(|(t, _), _| *t != tenant);
            return;
        }
        if delta.full {
            let mut state = TenantState::default();
            for (shard, record) in delta.records {
                state.apply(shard, record);
            }
            if let Some(old) = inner.tenants.get(&tenant) {
                report.keys = live(old).into_iter().filter(|id| state.entry(*id).is_none()).collect();
            }
            inner.tenants.insert(tenant, state);
            // An unwrapped KEK may be one of a change that was rolled back.
            inner.keks.retain(|(t, _), _| *t != tenant);
        } else {
            let state = inner.tenants.entry(tenant).or_default();
            for (shard, record) in delta.records {
                if let Record::Shredded { id } = &record
                    && state.entry(*id).is_some()
                {
                    report.keys.push(*id);
                }
                state.apply(shard, record);
            }
        }
        let state = inner.tenants.entry(tenant).or_default();
        state.keks = delta.keks;
        let epochs: BTreeSet<u32> = state.keks.keys().copied().collect();
        inner.keks.retain(|(t, e), _| *t != tenant || epochs.contains(e));
        if !report.keys.is_empty() {
            report.keys.sort();
            inner.remote_shreds.push(report);
        }
    }

    /// Raises the key's reservation to `target(reserved now)`; the range
    /// between the two, or `None` for a retired or shredded key.
    fn reserve(
        &self,
        tenant: Uuid,
        id: KeyId,
        target: impl FnOnce(u64) -> u64,
    ) -> Result<Option<std::ops::Range<u64>>, KeyError> {
        self.change(tenant, |inner| {
            let Some(state) = inner.tenants.get(&tenant) else { return Err(KeyError::UnknownKey { tenant, key: id }) };
            let Some(entry) = state.entry(id) else {
                return if state.index.contains_key(&id) || state.shredded {
                    Ok(None)
                } else {
                    Err(KeyError::UnknownKey { tenant, key: id })
                };
            };
            if entry.retired {
                return Ok(None);
            }
            let (from, up_to) = (entry.reserved, target(entry.reserved));
            if from >= up_to {
                return Ok(Some(from..from));
            }
            let shard = state.index[&id];
            let record = Record::Uses { id, up_to };
            self.persist(inner, |p| p.append(tenant, shard, &record))?;
            if let Some(t) = inner.tenants.get_mut(&tenant) {
                t.apply(shard, record);
            }
            Ok(Some(from..up_to))
        })
    }

    fn tenant_kek(&self, inner: &mut Inner, tenant: Uuid, epoch: u32) -> Result<SecretKey, KeyError> {
        if let Some(k) = inner.keks.get(&(tenant, epoch)) {
            return Ok(k.clone());
        }
        let wrapped = inner
            .tenants
            .get(&tenant)
            .and_then(|t| t.keks.get(&epoch))
            .ok_or_else(|| KeyError::EpochUnavailable {
                epoch,
                detail: format!("tenant {tenant} has no KEK under it"),
            })?
            .clone();
        let kek = self.provider.unwrap(epoch, &tenant_kek_aad(tenant, epoch), &wrapped)?;
        inner.keks.insert((tenant, epoch), kek.clone());
        Ok(kek)
    }

    /// Writes a tenant KEK under `epoch` (a new tenant, or a rotation).
    fn add_tenant_kek(&self, inner: &mut Inner, tenant: Uuid, epoch: u32) -> Result<(), KeyError> {
        let kek = SecretKey::random()?;
        let wrapped = self.provider.wrap(epoch, &tenant_kek_aad(tenant, epoch), &kek)?;
        self.persist(inner, |p| p.write_kek(tenant, epoch, &wrapped))?;
        inner.tenants.entry(tenant).or_default().keks.insert(epoch, wrapped);
        inner.keks.insert((tenant, epoch), kek);
        Ok(())
    }

    fn unwrap_entry(&self, inner: &mut Inner, tenant: Uuid, id: KeyId, entry: &KeyEntry) -> Result<DataKey, KeyError> {
        let kek = self.tenant_kek(inner, tenant, entry.kek_epoch)?;
        let material = crypto::unwrap(&kek, &data_key_aad(tenant, id, &entry.purpose, entry.kek_epoch), &entry.wrapped)
            .ok_or_else(|| KeyError::Integrity {
                what: format!("data key {id} of tenant {tenant} does not open under its tenant KEK"),
            })?;
        Ok(DataKey {
            id,
            tenant,
            purpose: entry.purpose,
            material,
            uses_reserved: entry.reserved,
            retired: entry.retired,
            fresh: false,
        })
    }

    fn key_owner(inner: &Inner, id: KeyId) -> Option<Uuid> {
        inner.tenants.iter().find(|(_, t)| t.index.contains_key(&id)).map(|(&tenant, _)| tenant)
    }

    fn rotate_tenant(&self, tenant: Uuid, target: u32) -> Result<usize, KeyError> {
        self.change(tenant, |inner| {
            let Some(state) = inner.tenants.get(&tenant) else { return Ok(0) };
            if state.shredded {
                return Ok(0);
            }
            if !state.keks.contains_key(&target) {
                self.add_tenant_kek(inner, tenant, target)?;
            }
            let new_kek = self.tenant_kek(inner, tenant, target)?;
            let stale: Vec<u16> = inner.tenants[&tenant]
                .shards
                .iter()
                .filter(|(_, s)| s.keys.values().any(|e| e.kek_epoch != target))
                .map(|(&n, _)| n)
                .collect();
            let mut rewrapped = 0;
            for shard in stale {
                let entries: Vec<(KeyId, KeyEntry)> =
                    inner.tenants[&tenant].shards[&shard].keys.iter().map(|(&id, e)| (id, e.clone())).collect();
                let mut keys = HashMap::with_capacity(entries.len());
                for (id, mut entry) in entries {
                    if entry.kek_epoch != target {
                        let key = self.unwrap_entry(inner, tenant, id, &entry)?;
                        entry.wrapped =
                            crypto::wrap(&new_kek, &data_key_aad(tenant, id, &entry.purpose, target), &key.material)?;
                        entry.kek_epoch = target;
                        rewrapped += 1;
                    }
                    keys.insert(id, entry);
                }
                let shredded = inner.tenants[&tenant].shards[&shard].shredded.clone();
                let next = Shard { keys, shredded };
                let records = next.records();
                self.persist(inner, |p| p.rewrite_shard(tenant, shard, &records))?;
                if let Some(t) = inner.tenants.get_mut(&tenant) {
                    t.shards.insert(shard, next);
                }
            }
            let old: Vec<u32> = inner.tenants[&tenant].keks.keys().copied().filter(|e| *e != target).collect();
            for epoch in old {
                self.persist(inner, |p| p.remove_kek(tenant, epoch))?;
                if let Some(t) = inner.tenants.get_mut(&tenant) {
                    t.keks.remove(&epoch);
                }
                inner.keks.remove(&(tenant, epoch));
            }
            Ok(rewrapped)
        })
    }
}

impl KeyStore for LocalKeyStore {
    fn active_key(&self, tenant: Uuid, purpose: &KeyPurpose) -> Result<DataKey, KeyError> {
        self.change(tenant, |inner| {
            if let Some(state) = inner.tenants.get(&tenant) {
                if state.shredded {
                    return Err(KeyError::TenantShredded { tenant });
                }
                if let Some(id) = state.active(purpose) {
                    let entry = state.entry(id).cloned().ok_or(KeyError::UnknownKey { tenant, key: id })?;
                    return self.unwrap_entry(inner, tenant, id, &entry);
                }
            }
            let epoch = match inner.tenants.get(&tenant).and_then(TenantState::newest_kek_epoch) {
                Some(epoch) => epoch,
                None => {
                    let epochs = self.provider.epochs()?;
                    let newest = epochs.last().map(|e| e.epoch).ok_or_else(|| KeyError::EpochUnavailable {
                        epoch: 0,
                        detail: "the provider has no live epoch".into(),
                    })?;
                    self.add_tenant_kek(inner, tenant, newest)?;
                    newest
                }
            };
            let kek = self.tenant_kek(inner, tenant, epoch)?;
            let mut id = KeyId::random();
            while inner.tenants.values().any(|t| t.index.contains_key(&id)) {
                id = KeyId::random();
            }
            let material = SecretKey::random()?;
            let wrapped = crypto::wrap(&kek, &data_key_aad(tenant, id, purpose, epoch), &material)?;
            // The first block of seals is reserved in the creation record itself,
            // so a new key costs one fsync, not two.
            let entry = KeyEntry {
                purpose: *purpose,
                kek_epoch: epoch,
                wrapped,
                reserved: INITIAL_RESERVATION,
                retired: false,
            };
            let shard = shard_of(purpose.anchor());
            let record = Record::Key { id, entry };
            self.persist(inner, |p| p.append(tenant, shard, &record))?;
            inner.tenants.entry(tenant).or_default().apply(shard, record);
            Ok(DataKey {
                id,
                tenant,
                purpose: *purpose,
                material,
                uses_reserved: INITIAL_RESERVATION,
                retired: false,
                fresh: true,
            })
        })
    }

    fn key(&self, tenant: Uuid, id: KeyId) -> Result<KeyLookup, KeyError> {
        let mut inner = self.lock();
        if !inner.tenants.get(&tenant).is_some_and(|t| t.shredded || t.index.contains_key(&id)) {
            // Perhaps made by another node since this one last looked.
            self.refresh(&mut inner, Some(tenant))?;
        }
        let found = inner.tenants.get(&tenant).map(|t| (t.shredded, t.index.contains_key(&id), t.entry(id).cloned()));
        match found {
            Some((true, _, _)) => Ok(KeyLookup::Shredded),
            Some((false, true, Some(entry))) => self.unwrap_entry(&mut inner, tenant, id, &entry).map(KeyLookup::Live),
            Some((false, true, None)) => Ok(KeyLookup::Shredded),
            _ => match Self::key_owner(&inner, id) {
                Some(_) => Err(KeyError::WrongTenant { tenant, key: id }),
                None => Err(KeyError::UnknownKey { tenant, key: id }),
            },
        }
    }

    fn reserve_uses(&self, tenant: Uuid, id: KeyId, up_to: u64) -> Result<Option<u64>, KeyError> {
        Ok(self.reserve(tenant, id, |reserved| reserved.max(up_to))?.map(|r| r.end))
    }

    fn reserve_block(&self, tenant: Uuid, id: KeyId, block: u64) -> Result<Option<std::ops::Range<u64>>, KeyError> {
        self.reserve(tenant, id, |reserved| reserved.saturating_add(block))
    }

    fn retire(&self, tenant: Uuid, id: KeyId) -> Result<(), KeyError> {
        self.change(tenant, |inner| {
            let Some(state) = inner.tenants.get(&tenant) else { return Err(KeyError::UnknownKey { tenant, key: id }) };
            let Some(entry) = state.entry(id) else {
                return if state.index.contains_key(&id) || state.shredded {
                    Ok(())
                } else {
                    Err(KeyError::UnknownKey { tenant, key: id })
                };
            };
            if entry.retired {
                return Ok(());
            }
            let shard = state.index[&id];
            let record = Record::Retired { id };
            self.persist(inner, |p| p.append(tenant, shard, &record))?;
            if let Some(t) = inner.tenants.get_mut(&tenant) {
                t.apply(shard, record);
            }
            Ok(())
        })
    }

    fn shred(&self, tenant: Uuid, target: &ShredTarget) -> Result<ShredReport, KeyError> {
        self.change(tenant, |inner| {
            if matches!(target, ShredTarget::Tenant) {
                if inner.tenants.get(&tenant).is_some_and(|t| t.shredded) {
                    return Ok(ShredReport::default());
                }
                self.persist(inner, |p| p.shred_tenant(tenant))?;
                let state = inner.tenants.entry(tenant).or_default();
                let mut keys: Vec<KeyId> = state.shards.values().flat_map(|s| s.keys.keys().copied()).collect();
                keys.sort();
                let epochs: Vec<u32> = state.keks.keys().copied().collect();
                *state = TenantState { shredded: true, ..TenantState::default() };
                for epoch in epochs {
                    inner.keks.remove(&(tenant, epoch));
                }
                return Ok(ShredReport { keys, tenant_kek: true });
            }
            let Some(state) = inner.tenants.get(&tenant).filter(|t| !t.shredded) else {
                return Ok(ShredReport::default());
            };
            let doomed = state.doomed(target);
            let Some(&first) = doomed.first() else { return Ok(ShredReport::default()) };
            let shard = state.index[&first];
            let current = &state.shards[&shard];
            let next = Shard {
                keys: current
                    .keys
                    .iter()
                    .filter(|(id, _)| !doomed.contains(id))
                    .map(|(&id, e)| (id, e.clone()))
                    .collect(),
                shredded: current.shredded.iter().copied().chain(doomed.iter().copied()).collect(),
            };
            let records = next.records();
            self.persist(inner, |p| p.rewrite_shard(tenant, shard, &records))?;
            if let Some(t) = inner.tenants.get_mut(&tenant) {
                for &id in &doomed {
                    t.apply(shard, Record::Shredded { id });
                }
            }
            Ok(ShredReport { keys: doomed, tenant_kek: false })
        })
    }

    fn keys_of(&self, tenant: Uuid, target: &ShredTarget) -> Result<Vec<KeyId>, KeyError> {
        let mut inner = self.lock();
        self.refresh(&mut inner, Some(tenant))?;
        Ok(match inner.tenants.get(&tenant).filter(|t| !t.shredded) {
            None => Vec::new(),
            Some(state) if matches!(target, ShredTarget::Tenant) => {
                let mut keys: Vec<KeyId> = state.shards.values().flat_map(|s| s.keys.keys().copied()).collect();
                keys.sort();
                keys
            }
            Some(state) => state.doomed(target),
        })
    }

    fn export_tenant(&self, tenant: Uuid) -> Result<TenantKeys, KeyError> {
        self.change(tenant, |inner| {
            let Some(state) = inner.tenants.get(&tenant) else { return Ok(TenantKeys::default()) };
            if state.shredded {
                return Err(KeyError::TenantShredded { tenant });
            }
            let mut entries: Vec<(KeyId, KeyEntry)> =
                state.shards.values().flat_map(|s| s.keys.iter().map(|(&id, e)| (id, e.clone()))).collect();
            entries.sort_by_key(|(id, _)| *id);
            let mut shredded: Vec<KeyId> = state.shards.values().flat_map(|s| s.shredded.iter().copied()).collect();
            shredded.sort();
            let mut live = Vec::with_capacity(entries.len());
            for (id, entry) in entries {
                live.push(self.unwrap_entry(inner, tenant, id, &entry)?);
            }
            Ok(TenantKeys { live, shredded })
        })
    }

    fn import_tenant(&self, tenant: Uuid, keys: &TenantKeys) -> Result<KeysImported, KeyError> {
        if let Some(k) = keys.live.iter().find(|k| k.tenant != tenant) {
            return Err(KeyError::WrongTenant { tenant, key: k.id });
        }
        self.change(tenant, |inner| {
            if inner.tenants.get(&tenant).is_some_and(|t| t.shredded) {
                return Err(KeyError::TenantShredded { tenant });
            }
            let mut report = KeysImported::default();
            let epoch = match inner.tenants.get(&tenant).and_then(TenantState::newest_kek_epoch) {
                Some(epoch) => epoch,
                None if keys.live.is_empty() && keys.shredded.is_empty() => return Ok(report),
                None => {
                    let newest = self.provider.epochs()?.last().map(|e| e.epoch).ok_or_else(|| {
                        KeyError::EpochUnavailable { epoch: 0, detail: "the provider has no live epoch".into() }
                    })?;
                    self.add_tenant_kek(inner, tenant, newest)?;
                    newest
                }
            };
            let kek = self.tenant_kek(inner, tenant, epoch)?;
            for key in &keys.live {
                if Self::key_owner(inner, key.id).is_some_and(|owner| owner != tenant) {
                    return Err(KeyError::WrongTenant { tenant, key: key.id });
                }
                let state = inner.tenants.entry(tenant).or_default();
                if let Some(entry) = state.entry(key.id) {
                    if entry.purpose != key.purpose {
                        return Err(KeyError::Integrity {
                            what: format!("key {} of tenant {tenant} is here for another purpose", key.id),
                        });
                    }
                    // A resumed move: the other store may have reserved more since.
                    let (shard, reserved, retired) = (state.index[&key.id], entry.reserved, entry.retired);
                    let mut records = Vec::new();
                    if reserved < key.uses_reserved {
                        records.push(Record::Uses { id: key.id, up_to: key.uses_reserved });
                    }
                    if key.retired && !retired {
                        records.push(Record::Retired { id: key.id });
                    }
                    for record in records {
                        self.persist(inner, |p| p.append(tenant, shard, &record))?;
                        inner.tenants.entry(tenant).or_default().apply(shard, record);
                    }
                    report.present += 1;
                    continue;
                }
                if state.index.contains_key(&key.id) {
                    // Destroyed here already: it stays destroyed.
                    report.present += 1;
                    continue;
                }
                let wrapped = crypto::wrap(&kek, &data_key_aad(tenant, key.id, &key.purpose, epoch), &key.material)?;
                let entry = KeyEntry {
                    purpose: key.purpose,
                    kek_epoch: epoch,
                    wrapped,
                    reserved: key.uses_reserved,
                    retired: key.retired,
                };
                let shard = shard_of(key.purpose.anchor());
                let record = Record::Key { id: key.id, entry };
                self.persist(inner, |p| p.append(tenant, shard, &record))?;
                inner.tenants.entry(tenant).or_default().apply(shard, record);
                report.added += 1;
            }
            for &id in &keys.shredded {
                let state = inner.tenants.entry(tenant).or_default();
                if state.entry(id).is_some() {
                    report.to_shred.push(id);
                } else if !state.index.contains_key(&id) {
                    // Never here: recorded destroyed, so what it sealed opens as erased.
                    let shard = shard_of(id.0);
                    let record = Record::Shredded { id };
                    self.persist(inner, |p| p.append(tenant, shard, &record))?;
                    inner.tenants.entry(tenant).or_default().apply(shard, record);
                    report.shredded_recorded += 1;
                }
            }
            Ok(report)
        })
    }

    fn rotate_epoch(&self) -> Result<RotationReport, KeyError> {
        let _one_rotation = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.provider.epochs()?;
        let (target, resumed) = match live.as_slice() {
            [.., newest] if live.len() > 1 => (newest.epoch, true),
            _ => (self.provider.create_epoch(self.now_unix())?, false),
        };
        let mut report = RotationReport { epoch: target, resumed, ..RotationReport::default() };
        loop {
            let behind: Vec<Uuid> = {
                let mut inner = self.lock();
                self.refresh(&mut inner, None)?;
                inner
                    .tenants
                    .iter()
                    .filter(|(_, t)| !t.shredded)
                    .filter(|(_, t)| {
                        t.keks.keys().any(|e| *e != target)
                            || t.shards.values().any(|s| s.keys.values().any(|e| e.kek_epoch != target))
                    })
                    .map(|(&id, _)| id)
                    .collect()
            };
            if behind.is_empty() {
                break;
            }
            for tenant in behind {
                report.keys_rewrapped += self.rotate_tenant(tenant, target)?;
                report.tenants += 1;
            }
        }
        for epoch in self.provider.epochs()?.into_iter().map(|e| e.epoch).filter(|e| *e != target) {
            self.provider.destroy_epoch(epoch, self.now_unix())?;
            report.destroyed_epochs.push(epoch);
        }
        tracing::info!(epoch = target, tenants = report.tenants, keys = report.keys_rewrapped, "key epoch rotated");
        Ok(report)
    }

    fn write_trouble(&self) -> Option<String> {
        self.lock().poisoned.as_ref().map(|p| p.reason.clone())
    }

    fn status(&self) -> Result<StoreStatus, KeyError> {
        let mut inner = self.lock();
        self.refresh(&mut inner, None)?;
        let mut status = StoreStatus { epochs: self.provider.epochs()?, ..StoreStatus::default() };
        for t in inner.tenants.values() {
            if t.shredded {
                status.shredded_tenants += 1;
                continue;
            }
            status.tenants += 1;
            for s in t.shards.values() {
                status.live_keys += s.keys.len();
                status.retired_keys += s.keys.values().filter(|e| e.retired).count();
                status.shredded_keys += s.shredded.len();
            }
        }
        Ok(status)
    }

    fn sync(&self) -> Result<Vec<RemoteShred>, KeyError> {
        let mut inner = self.lock();
        self.refresh(&mut inner, None)?;
        Ok(std::mem::take(&mut inner.remote_shreds))
    }
}

/// What [`LocalKeyStore::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub tenants: usize,
    pub keys_ok: usize,
    pub failures: Vec<String>,
}

/// Whether a rotation is due: the newest epoch is older than `period_secs`,
/// or an interrupted rotation left more than one live epoch.
pub fn rotation_due(provider: &dyn RootKeyProvider, now_unix: i64, period_secs: i64) -> Result<bool, KeyError> {
    let epochs = provider.epochs()?;
    Ok(epochs.len() > 1 || epochs.last().is_none_or(|e| e.created_at_unix.saturating_add(period_secs) <= now_unix))
}
