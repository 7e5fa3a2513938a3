//! Encryption at rest and crypto-shredding for pypes.
//!
//! Keys form a hierarchy: the root key (held by a [`RootKeyProvider`]) wraps
//! epoch KEKs, which never leave the provider; an epoch KEK wraps each
//! tenant's KEK; a tenant KEK wraps the tenant's data keys, one per
//! (subject, group), per Session's content, per media blob. Fields are
//! sealed with AES-256-GCM under a data key with AAD = tenant ‖ stream ‖
//! event id ‖ field ‖ key id. Destroying a data key (or a tenant KEK) makes
//! everything sealed under it unreadable: `open` then answers
//! [`Opened::Erased`]. Rotating the epoch re-wraps every live key and
//! destroys the old epoch KEK, so a shredded key left in a backup cannot be
//! unwrapped after the next rotation. See `docs/keys.md`.

pub mod conformance;
pub mod crypto;
pub mod embedded;
mod error;
pub mod file;
mod files;
mod id;
mod keyring;
pub mod postgres;
pub mod provider;
mod store;
mod types;

pub use error::KeyError;
pub use files::{Finding, FindingAction};
pub use id::KeyId;
pub use keyring::{Aad, KeyPolicy, Keyring, Opened, rotation_schedule};
pub use provider::{EmbeddedRootProvider, RootKeyProvider};
pub use store::{INITIAL_RESERVATION, KeyStore, LocalKeyStore, RemoteShred, SHARDS, VerifyReport, rotation_due};
pub use types::{
    DataKey, EpochInfo, Group, KeyLookup, KeyPurpose, KeysImported, RotationReport, ShredReport, ShredTarget,
    StoreStatus, TenantKeys,
};

/// Default period between epoch rotations: 7 days.
pub const DEFAULT_ROTATION_PERIOD_SECS: i64 = 7 * 24 * 3600;
/// The longest rotation period accepted: erasure must reach backups within
/// 30 days, and a rotation needs time to run.
pub const MAX_ROTATION_PERIOD_SECS: i64 = 28 * 24 * 3600;

/// Checks a configured rotation period.
pub fn validate_rotation_period(secs: i64) -> Result<i64, KeyError> {
    if !(3600..=MAX_ROTATION_PERIOD_SECS).contains(&secs) {
        return Err(KeyError::Invalid {
            what: "rotation period",
            reason: format!(
                "{secs} s; it must be between 1 hour and 28 days so that erasure reaches backups within 30 days"
            ),
        });
    }
    Ok(secs)
}
