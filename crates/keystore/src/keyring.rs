//! The keyring: what the rest of pypes seals and opens through. It keeps
//! unwrapped data keys (as ready AES-256-GCM ciphers) in a bounded cache so
//! the hot path, one Session sealing message after message, costs one AEAD
//! call; it counts every seal per key, reserving counts in the store ahead
//! of use so a restart never resets them, and retires a key long before
//! random 96-bit nonces could repeat.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aes_gcm::Aes256Gcm;
use proto::storage::SealedField;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::crypto::{self, NONCE_LEN, TAG_LEN};
use crate::error::KeyError;
use crate::store::KeyStore;
use crate::types::{DataKey, KeyId, KeyLookup, KeyPurpose, RotationReport, ShredReport, ShredTarget};

/// Limits of key use and of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Seals after which a data key is retired. With random 96-bit nonces
    /// the chance of a repeat after q seals is about q²/2⁹⁷; NIST caps q at
    /// 2³²; the default 2²⁸ keeps it under 2⁻⁴¹.
    pub retire_after_uses: u64,
    /// Seals reserved in the store at a time (one fsync'd append each).
    pub reserve_block: u64,
    /// Unwrapped keys kept in memory.
    pub cache_capacity: usize,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self { retire_after_uses: 1 << 28, reserve_block: 1 << 16, cache_capacity: 100_000 }
    }
}

/// Where a sealed field sits: its AAD binds tenant, stream, event and (with
/// the field name and key id) makes a ciphertext unopenable anywhere else.
#[derive(Clone, Copy, Debug)]
pub struct Aad<'a> {
    pub tenant: Uuid,
    pub stream: &'a str,
    pub event_id: Uuid,
}

/// What opening a sealed field gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    Plaintext(Zeroizing<Vec<u8>>),
    /// The key was shredded: the data is gone for good.
    Erased,
}

struct CachedKey {
    id: KeyId,
    tenant: Uuid,
    purpose: KeyPurpose,
    cipher: Aes256Gcm,
    uses: AtomicU64,
    reserved: AtomicU64,
    retired: AtomicBool,
    last_used: AtomicU64,
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<KeyId, Arc<CachedKey>>,
    /// The sealing key per purpose (one lookup on the hot path).
    active: HashMap<(Uuid, KeyPurpose), Arc<CachedKey>>,
    erased: HashSet<(Uuid, KeyId)>,
}

struct Inner {
    store: Arc<dyn KeyStore>,
    policy: KeyPolicy,
    cache: RwLock<Cache>,
    /// Bumped by every shred, so a lookup that raced a shred does not put
    /// the shredded key back into the cache.
    shreds: AtomicU64,
    clock: AtomicU64,
}

/// Seals and opens fields; cheap to clone (shared state).
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("store", &self.inner.store).field("policy", &self.inner.policy).finish()
    }
}

/// AAD of a sealed field.
fn field_aad(aad: &Aad<'_>, field: &str, key: KeyId) -> Vec<u8> {
    crypto::associated_data(
        "pypes/field/v1",
        &[aad.tenant.as_bytes(), aad.stream.as_bytes(), aad.event_id.as_bytes(), field.as_bytes(), key.as_bytes()],
    )
}

/// Runs a store call off the async runtime (on its blocking pool), or
/// inline when there is no runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(f).await.map_err(|e| KeyError::Task(e.to_string()))?,
        Err(_) => f(),
    }
}

const MAX_KEY_SWITCHES: usize = 8;

impl Keyring {
    pub fn new(store: Arc<dyn KeyStore>, policy: KeyPolicy) -> Result<Self, KeyError> {
        if policy.reserve_block == 0 || policy.retire_after_uses == 0 || policy.cache_capacity == 0 {
            return Err(KeyError::Invalid {
                what: "key policy",
                reason: "retire_after_uses, reserve_block and cache_capacity must be above zero".into(),
            });
        }
        if policy.retire_after_uses > 1 << 32 {
            return Err(KeyError::Invalid {
                what: "key policy",
                reason: format!(
                    "retire_after_uses {} is past the 2^32 bound for random nonces",
                    policy.retire_after_uses
                ),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                policy,
                cache: RwLock::new(Cache::default()),
                shreds: AtomicU64::new(0),
                clock: AtomicU64::new(0),
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.inner.store
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.inner.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.inner.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self, key: &CachedKey) {
        key.last_used.store(self.inner.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    fn cached_active(&self, tenant: Uuid, purpose: &KeyPurpose) -> Option<Arc<CachedKey>> {
        self.read().active.get(&(tenant, *purpose)).cloned()
    }

    /// Puts a key from the store into the cache, unless a shred ran since
    /// `shreds_before` was read.
    fn remember(&self, key: DataKey, shreds_before: u64, active: bool) -> Arc<CachedKey> {
        let cached = Arc::new(CachedKey {
            id: key.id,
            tenant: key.tenant,
            purpose: key.purpose,
            cipher: key.material.cipher(),
            // A key from the store may have sealed up to its reservation
            // before a restart; only a key made just now starts at zero.
            uses: AtomicU64::new(if key.fresh { 0 } else { key.uses_reserved }),
            reserved: AtomicU64::new(key.uses_reserved),
            retired: AtomicBool::new(key.retired),
            last_used: AtomicU64::new(0),
        });
        self.touch(&cached);
        let mut cache = self.write();
        if self.inner.shreds.load(Ordering::SeqCst) != shreds_before {
            return cached;
        }
        if cache.by_id.len() >= self.inner.policy.cache_capacity {
            evict_oldest(&mut cache, self.inner.policy.cache_capacity);
        }
        // A key already cached keeps its counters; the store's copy may lag.
        let cached = cache.by_id.entry(key.id).or_insert(cached).clone();
        if active && !cached.retired.load(Ordering::SeqCst) {
            cache.active.insert((key.tenant, key.purpose), cached.clone());
        }
        cached
    }

    fn load_active_blocking(&self, tenant: Uuid, purpose: &KeyPurpose) -> Result<Arc<CachedKey>, KeyError> {
        let shreds = self.inner.shreds.load(Ordering::SeqCst);
        let key = self.inner.store.active_key(tenant, purpose)?;
        Ok(self.remember(key, shreds, true))
    }

    /// Seals with `key` if its counters allow; `None` when a reservation or
    /// a retirement has to happen first.
    fn try_seal_with(
        &self,
        key: &CachedKey,
        field: &str,
        plaintext: &[u8],
        aad: &Aad<'_>,
    ) -> Result<Option<SealedField>, KeyError> {
        if key.retired.load(Ordering::Acquire) {
            return Ok(None);
        }
        let n = key.uses.fetch_add(1, Ordering::AcqRel);
        if n >= self.inner.policy.retire_after_uses || n >= key.reserved.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.touch(key);
        let (nonce, ciphertext) = crypto::seal(&key.cipher, &field_aad(aad, field, key.id), plaintext)?;
        Ok(Some(SealedField {
            field: field.to_string(),
            key_id: key.id.as_bytes().to_vec().into(),
            nonce: nonce.to_vec().into(),
            ciphertext: ciphertext.into(),
        }))
    }

    /// Reserves more seals for `key`, or retires it when it has had its share.
    fn replenish_blocking(&self, key: &CachedKey) -> Result<(), KeyError> {
        let policy = self.inner.policy;
        let used = key.uses.load(Ordering::Acquire);
        if !key.retired.load(Ordering::Acquire) && used < policy.retire_after_uses {
            let block = policy.reserve_block.min(policy.retire_after_uses - used);
            // The block comes after every reservation so far, this node's
            // or another's (a shared store): the count moves to its start,
            // so two nodes never count the same seals.
            if let Some(range) = self.inner.store.reserve_block(key.tenant, key.id, block)? {
                key.uses.fetch_max(range.start, Ordering::AcqRel);
                key.reserved.fetch_max(range.end, Ordering::AcqRel);
                return Ok(());
            }
        } else {
            self.inner.store.retire(key.tenant, key.id)?;
            tracing::info!(key = %key.id, uses = used, "data key retired");
        }
        key.retired.store(true, Ordering::Release);
        let mut cache = self.write();
        if cache.active.get(&(key.tenant, key.purpose)).is_some_and(|k| k.id == key.id) {
            cache.active.remove(&(key.tenant, key.purpose));
        }
        Ok(())
    }

    /// Seals `plaintext` as field `field` of the event `aad` names, under the
    /// active key of `purpose`. Blocks on the store on a cache miss.
    pub fn seal_blocking(
        &self,
        field: &str,
        plaintext: &[u8],
        purpose: &KeyPurpose,
        aad: &Aad<'_>,
    ) -> Result<SealedField, KeyError> {
        for _ in 0..MAX_KEY_SWITCHES {
            let key = match self.cached_active(aad.tenant, purpose) {
                Some(key) => key,
                None => self.load_active_blocking(aad.tenant, purpose)?,
            };
            if let Some(sealed) = self.try_seal_with(&key, field, plaintext, aad)? {
                return Ok(sealed);
            }
            self.replenish_blocking(&key)?;
        }
        Err(KeyError::Invalid { what: "key state", reason: format!("no usable key for {purpose:?} after retries") })
    }

    /// [`Self::seal_blocking`] for async callers: the warm path runs inline
    /// (one AEAD call); store work goes to the blocking pool.
    pub async fn seal(
        &self,
        field: &str,
        plaintext: &[u8],
        purpose: &KeyPurpose,
        aad: &Aad<'_>,
    ) -> Result<SealedField, KeyError> {
        if let Some(key) = self.cached_active(aad.tenant, purpose)
            && let Some(sealed) = self.try_seal_with(&key, field, plaintext, aad)?
        {
            return Ok(sealed);
        }
        let (this, field, plaintext, purpose) =
            (self.clone(), field.to_string(), Zeroizing::new(plaintext.to_vec()), *purpose);
        let (tenant, stream, event_id) = (aad.tenant, aad.stream.to_string(), aad.event_id);
        off_runtime(move || {
            this.seal_blocking(&field, &plaintext, &purpose, &Aad { tenant, stream: &stream, event_id })
        })
        .await
    }

    fn check_sealed(field: &str, sealed: &SealedField) -> Result<KeyId, KeyError> {
        if sealed.field != field {
            return Err(KeyError::FieldMismatch { expected: field.to_string(), found: sealed.field.clone() });
        }
        if sealed.nonce.len() != NONCE_LEN {
            return Err(KeyError::Invalid {
                what: "sealed field",
                reason: format!("{field}: nonce is {} bytes, expected {NONCE_LEN}", sealed.nonce.len()),
            });
        }
        if sealed.ciphertext.len() < TAG_LEN {
            return Err(KeyError::Invalid {
                what: "sealed field",
                reason: format!("{field}: ciphertext is {} bytes, shorter than the tag", sealed.ciphertext.len()),
            });
        }
        KeyId::from_slice(&sealed.key_id)
    }

    fn decrypt(key: &CachedKey, field: &str, sealed: &SealedField, aad: &Aad<'_>) -> Result<Opened, KeyError> {
        if key.tenant != aad.tenant {
            return Err(KeyError::WrongTenant { tenant: aad.tenant, key: key.id });
        }
        crypto::open(&key.cipher, &sealed.nonce, &field_aad(aad, field, key.id), &sealed.ciphertext)
            .map(Opened::Plaintext)
            .ok_or_else(|| KeyError::Integrity {
                what: format!(
                    "field {field:?} of event {} in stream {:?} does not authenticate under key {}",
                    aad.event_id, aad.stream, key.id
                ),
            })
    }

    /// The cached answer, if the cache has one.
    fn try_open_cached(
        &self,
        id: KeyId,
        field: &str,
        sealed: &SealedField,
        aad: &Aad<'_>,
    ) -> Option<Result<Opened, KeyError>> {
        let key = {
            let cache = self.read();
            if cache.erased.contains(&(aad.tenant, id)) {
                return Some(Ok(Opened::Erased));
            }
            cache.by_id.get(&id)?.clone()
        };
        self.touch(&key);
        Some(Self::decrypt(&key, field, sealed, aad))
    }

    /// Opens field `field` of the event `aad` names. A shredded key gives
    /// `Erased`; an altered or moved ciphertext is an integrity error.
    pub fn open_blocking(&self, field: &str, sealed: &SealedField, aad: &Aad<'_>) -> Result<Opened, KeyError> {
        let id = Self::check_sealed(field, sealed)?;
        if let Some(result) = self.try_open_cached(id, field, sealed, aad) {
            return result;
        }
        let shreds = self.inner.shreds.load(Ordering::SeqCst);
        match self.inner.store.key(aad.tenant, id)? {
            KeyLookup::Live(key) => {
                let cached = self.remember(key, shreds, false);
                Self::decrypt(&cached, field, sealed, aad)
            }
            KeyLookup::Shredded => {
                let mut cache = self.write();
                if cache.erased.len() >= self.inner.policy.cache_capacity {
                    cache.erased.clear();
                }
                cache.erased.insert((aad.tenant, id));
                Ok(Opened::Erased)
            }
        }
    }

    /// [`Self::open_blocking`] for async callers.
    pub async fn open(&self, field: &str, sealed: &SealedField, aad: &Aad<'_>) -> Result<Opened, KeyError> {
        let id = Self::check_sealed(field, sealed)?;
        if let Some(result) = self.try_open_cached(id, field, sealed, aad) {
            return result;
        }
        let (this, field, sealed) = (self.clone(), field.to_string(), sealed.clone());
        let (tenant, stream, event_id) = (aad.tenant, aad.stream.to_string(), aad.event_id);
        off_runtime(move || this.open_blocking(&field, &sealed, &Aad { tenant, stream: &stream, event_id })).await
    }

    /// Shreds keys in the store (durable when this returns) and forgets them here.
    pub fn shred_blocking(&self, tenant: Uuid, target: &ShredTarget) -> Result<ShredReport, KeyError> {
        let report = self.inner.store.shred(tenant, target)?;
        self.forget(tenant, matches!(target, ShredTarget::Tenant), &report.keys);
        Ok(report)
    }

    /// Drops the unwrapped copies of shredded keys.
    fn forget(&self, tenant: Uuid, whole_tenant: bool, keys: &[KeyId]) {
        let mut cache = self.write();
        self.inner.shreds.fetch_add(1, Ordering::SeqCst);
        if whole_tenant {
            cache.by_id.retain(|_, k| k.tenant != tenant);
            cache.active.retain(|(t, _), _| *t != tenant);
        } else {
            for id in keys {
                cache.by_id.remove(id);
            }
            cache.active.retain(|_, k| !keys.contains(&k.id));
        }
    }

    /// Takes in what other nodes changed in a shared key store and drops
    /// the unwrapped copies of the keys they shredded; returns how many
    /// keys that was. The server calls it every second or so, which bounds
    /// how long another node's copy of a shredded key can still open data.
    pub async fn sync(&self) -> Result<usize, KeyError> {
        let store = self.inner.store.clone();
        let shreds = off_runtime(move || store.sync()).await?;
        let mut keys = 0;
        for shred in shreds {
            keys += shred.keys.len();
            self.forget(shred.tenant, shred.tenant_shredded, &shred.keys);
        }
        Ok(keys)
    }

    pub async fn shred(&self, tenant: Uuid, target: ShredTarget) -> Result<ShredReport, KeyError> {
        let this = self.clone();
        off_runtime(move || this.shred_blocking(tenant, &target)).await
    }

    /// Rotates the KEK epoch (cached data keys stay valid: only their
    /// wrapping changes).
    /// The keys a shred of `target` would destroy (see [`KeyStore::keys_of`]).
    pub async fn keys_of(&self, tenant: Uuid, target: ShredTarget) -> Result<Vec<KeyId>, KeyError> {
        let store = self.inner.store.clone();
        off_runtime(move || store.keys_of(tenant, &target)).await
    }

    pub async fn rotate_epoch(&self) -> Result<RotationReport, KeyError> {
        let store = self.inner.store.clone();
        off_runtime(move || store.rotate_epoch()).await
    }

    /// Rotates when the newest epoch is at least `period_secs` old at
    /// `now_unix`, or when an interrupted rotation left several epochs.
    pub async fn rotate_if_due(&self, now_unix: i64, period_secs: i64) -> Result<Option<RotationReport>, KeyError> {
        let store = self.inner.store.clone();
        off_runtime(move || {
            let epochs = store.status()?.epochs;
            let due = epochs.len() > 1
                || epochs.last().is_none_or(|e| e.created_at_unix.saturating_add(period_secs) <= now_unix);
            if due { store.rotate_epoch().map(Some) } else { Ok(None) }
        })
        .await
    }

    /// The tenant's secret for keyed hashes (e.g. naming the username
    /// reservation stream). It is a data key that is never retired, so the
    /// hash of a value stays the same for the life of the tenant; a tenant
    /// shred destroys it.
    pub async fn tenant_index_secret(&self, tenant: Uuid) -> Result<crate::crypto::SecretKey, KeyError> {
        let store = self.inner.store.clone();
        off_runtime(move || store.active_key(tenant, &KeyPurpose::TenantIndex { tenant }).map(|k| k.material)).await
    }

    /// A new media blob's key (made now, filed under its Session so a
    /// shred of the Session takes it too). Its user seals each chunk once
    /// with a random nonce; a blob has at most a few thousand chunks, far
    /// below the retirement limit, so uses are not counted per seal.
    pub async fn media_key(&self, tenant: Uuid, session: Uuid, media: Uuid) -> Result<(KeyId, Aes256Gcm), KeyError> {
        let store = self.inner.store.clone();
        off_runtime(move || {
            let key = store.active_key(tenant, &KeyPurpose::Media { session, media })?;
            Ok((key.id, key.material.cipher()))
        })
        .await
    }

    /// A media key by id; `None` once shredded. A key of another tenant,
    /// or one that is not a media key, is refused.
    pub async fn media_cipher(&self, tenant: Uuid, id: KeyId) -> Result<Option<Aes256Gcm>, KeyError> {
        let store = self.inner.store.clone();
        off_runtime(move || match store.key(tenant, id)? {
            KeyLookup::Live(key) if key.tenant != tenant => Err(KeyError::WrongTenant { tenant, key: id }),
            KeyLookup::Live(key) => match key.purpose {
                KeyPurpose::Media { .. } => Ok(Some(key.material.cipher())),
                other => Err(KeyError::Invalid { what: "media key", reason: format!("key {id} is a {other:?} key") }),
            },
            KeyLookup::Shredded => Ok(None),
        })
        .await
    }

    /// Unwrapped keys held now.
    pub fn cached_keys(&self) -> usize {
        self.read().by_id.len()
    }

    /// Drops every unwrapped key (their material is zeroised).
    pub fn clear_cache(&self) {
        let mut cache = self.write();
        cache.by_id.clear();
        cache.active.clear();
        cache.erased.clear();
    }
}

/// Checks every `check_every` whether a rotation is due and runs it; the
/// server spawns this for the life of the process. A failed rotation is
/// logged and tried again at the next check (it resumes where it stopped).
pub async fn rotation_schedule(
    keyring: Keyring,
    period_secs: i64,
    clock: Arc<dyn eventlog::Clock>,
    check_every: std::time::Duration,
) {
    let mut ticks = tokio::time::interval(check_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = clock.now_micros() / 1_000_000;
        match keyring.rotate_if_due(now, period_secs).await {
            Ok(Some(r)) => tracing::info!(epoch = r.epoch, keys = r.keys_rewrapped, "scheduled key rotation done"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "scheduled key rotation failed; will retry"),
        }
    }
}

/// Evicts the least recently used eighth of the cache.
fn evict_oldest(cache: &mut Cache, capacity: usize) {
    let mut ages: Vec<(u64, KeyId)> =
        cache.by_id.iter().map(|(id, k)| (k.last_used.load(Ordering::Relaxed), *id)).collect();
    let evict = (capacity / 8).max(1).min(ages.len());
    ages.select_nth_unstable(evict - 1);
    for (_, id) in &ages[..evict] {
        cache.by_id.remove(id);
    }
    cache.active.retain(|_, k| cache.by_id.contains_key(&k.id));
}
