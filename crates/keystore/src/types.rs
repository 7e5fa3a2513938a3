//! The vocabulary of the key store: key ids, what a key protects, what a
//! shred removes, and what the store reports.

use uuid::Uuid;

use crate::crypto::SecretKey;
use crate::error::KeyError;
pub use crate::id::KeyId;

impl KeyId {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        Uuid::from_slice(bytes)
            .map(Self)
            .map_err(|_| KeyError::Invalid { what: "key id", reason: format!("{} bytes, expected 16", bytes.len()) })
    }
}

/// Groups of a subject's personal data, each under its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Profile,
    Device,
    Geo,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Profile, Group::Device, Group::Geo];

    pub fn name(self) -> &'static str {
        match self {
            Group::Profile => "profile",
            Group::Device => "device",
            Group::Geo => "geo",
        }
    }
}

impl std::str::FromStr for Group {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Group::ALL.into_iter().find(|g| g.name() == s).ok_or_else(|| KeyError::Invalid {
            what: "group",
            reason: format!("{s:?} is not one of profile, device, geo"),
        })
    }
}

/// What a data key protects. Ids here are the platform's own opaque ids
/// (subject, Session, media), never personal data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// One group of one subject's personal data.
    Subject { subject: Uuid, group: Group },
    /// The content (message bodies) of one Session.
    SessionContent { session: Uuid },
    /// One media blob attached in a Session.
    Media { session: Uuid, media: Uuid },
    /// The tenant's secret for keyed hashes of lookup values (e.g. the
    /// username reservation stream): never retired, gone with the tenant.
    TenantIndex { tenant: Uuid },
}

impl KeyPurpose {
    /// The id a key is filed under: the subject, or the Session (so a
    /// Session's content key and its media keys live and die together).
    pub fn anchor(&self) -> Uuid {
        match *self {
            KeyPurpose::Subject { subject, .. } => subject,
            KeyPurpose::SessionContent { session } | KeyPurpose::Media { session, .. } => session,
            KeyPurpose::TenantIndex { tenant } => tenant,
        }
    }
}

/// What a shred destroys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShredTarget {
    /// A subject's keys: all groups, or one.
    Subject { subject: Uuid, group: Option<Group> },
    /// A Session's content key and the keys of its media.
    Session { session: Uuid },
    /// One media blob's key.
    Media { session: Uuid, media: Uuid },
    /// One key by id.
    Key(KeyId),
    /// The tenant's KEK and with it every key of the tenant (offboarding).
    Tenant,
}

impl ShredTarget {
    pub(crate) fn matches(&self, id: KeyId, purpose: &KeyPurpose) -> bool {
        match (*self, *purpose) {
            (ShredTarget::Subject { subject, group }, KeyPurpose::Subject { subject: s, group: g }) => {
                subject == s && group.is_none_or(|want| want == g)
            }
            (
                ShredTarget::Session { session },
                KeyPurpose::SessionContent { session: s } | KeyPurpose::Media { session: s, .. },
            ) => session == s,
            (ShredTarget::Media { media, .. }, KeyPurpose::Media { media: m, .. }) => media == m,
            (ShredTarget::Key(k), _) => k == id,
            (ShredTarget::Tenant, _) => true,
            _ => false,
        }
    }

    /// The anchor whose shard holds every key the target names, if one does.
    pub(crate) fn anchor(&self) -> Option<Uuid> {
        match *self {
            ShredTarget::Subject { subject, .. } => Some(subject),
            ShredTarget::Session { session } | ShredTarget::Media { session, .. } => Some(session),
            ShredTarget::Key(_) | ShredTarget::Tenant => None,
        }
    }
}

/// A data key, unwrapped.
#[derive(Clone, Debug)]
pub struct DataKey {
    pub id: KeyId,
    pub tenant: Uuid,
    pub purpose: KeyPurpose,
    pub material: SecretKey,
    /// Seals reserved so far; a user of the key may seal up to this many
    /// times before reserving more.
    pub uses_reserved: u64,
    pub retired: bool,
    /// Made by this call: no seal has used it yet. (A key loaded from the
    /// store may have been used up to `uses_reserved` before a restart.)
    pub fresh: bool,
}

/// A tenant's keys as one region's store hands them to another's when the
/// tenant moves (docs/residency.md): the live keys unwrapped, and the ids
/// of the keys already destroyed (so what was sealed under them opens as
/// erased in the new region too).
#[derive(Clone, Debug, Default)]
pub struct TenantKeys {
    pub live: Vec<DataKey>,
    pub shredded: Vec<KeyId>,
}

/// What taking in another store's keys did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysImported {
    /// Live keys written here now.
    pub added: usize,
    /// Live keys that were here already (a resumed move).
    pub present: usize,
    /// Shredded ids recorded here now.
    pub shredded_recorded: usize,
    /// Keys live here that the other store lists as shredded: the caller
    /// shreds them through the keyring (so its cache forgets them too).
    pub to_shred: Vec<KeyId>,
}

/// What looking a key up by id finds.
#[derive(Clone, Debug)]
pub enum KeyLookup {
    Live(DataKey),
    /// The key existed and was destroyed.
    Shredded,
}

/// What a shred did. Shredding again finds nothing and reports zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShredReport {
    pub keys: Vec<KeyId>,
    /// True when the tenant's KEK was destroyed by this call.
    pub tenant_kek: bool,
}

/// What a rotation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Epochs destroyed at the provider.
    pub destroyed_epochs: Vec<u32>,
    /// The epoch every live key is now wrapped under.
    pub epoch: u32,
    pub tenants: usize,
    pub keys_rewrapped: usize,
    /// True when an interrupted rotation was finished rather than a new one started.
    pub resumed: bool,
}

/// An epoch the root-key provider holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochInfo {
    pub epoch: u32,
    pub created_at_unix: i64,
}

/// Counts for operators (`pypes keys status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStatus {
    pub tenants: usize,
    pub shredded_tenants: usize,
    pub live_keys: usize,
    pub retired_keys: usize,
    pub shredded_keys: usize,
    /// Live epochs at the provider, oldest first; more than one means a
    /// rotation is under way or was interrupted.
    pub epochs: Vec<EpochInfo>,
}
