//! Row keys (fixed-width big-endian parts, so byte order is the order we
//! page in) and opening a sealed field kept in a view.

use eventlog::SealedField;
use keystore::{Aad, Keyring, Opened};
use proto::Message;
use proto::views::SealedRef;
use uuid::Uuid;

use crate::ViewError;

pub(crate) fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Copies a 16-byte id into `to` (an id of another length, which the
/// projections never store, leaves zeros).
pub(crate) fn copy_id(to: &mut [u8], id: &[u8]) {
    if id.len() == to.len() {
        to.copy_from_slice(id);
    }
}

pub(crate) fn uuid_at(bytes: &[u8], at: usize) -> Option<Uuid> {
    bytes.get(at..at + 16).and_then(|b| Uuid::from_slice(b).ok())
}

pub(crate) fn uuid_of(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(bytes).ok()
}

/// A sealed field of an event, kept for a view.
pub(crate) fn sealed_ref(event_id: Uuid, field: &SealedField) -> SealedRef {
    SealedRef { event_id: event_id.as_bytes().to_vec(), sealed: field.encode_to_vec() }
}

/// What a view's sealed field opens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenedField {
    Text(String),
    /// The key was shredded (or the row purged): shown as `[erased]`.
    Erased,
}

impl OpenedField {
    pub fn or_erased(&self) -> &str {
        match self {
            OpenedField::Text(t) => t,
            OpenedField::Erased => "[erased]",
        }
    }
}

/// Opens a sealed field kept in a view, with the AAD of the event it came
/// from (`stream` is that event's stream).
pub async fn open_sealed(
    keyring: &Keyring,
    tenant: Uuid,
    stream: &str,
    field: &str,
    sealed: Option<&SealedRef>,
) -> Result<OpenedField, ViewError> {
    Ok(match open_sealed_bytes(keyring, tenant, stream, field, sealed).await? {
        Some(p) => OpenedField::Text(String::from_utf8_lossy(&p).into_owned()),
        None => OpenedField::Erased,
    })
}

/// [`open_sealed`] for a field that is not text; `None` when erased.
pub async fn open_sealed_bytes(
    keyring: &Keyring,
    tenant: Uuid,
    stream: &str,
    field: &str,
    sealed: Option<&SealedRef>,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, ViewError> {
    let Some(r) = sealed else { return Ok(None) };
    let event_id =
        uuid_of(&r.event_id).ok_or_else(|| ViewError::Corrupt { table: field.into(), reason: "event id".into() })?;
    let sf = SealedField::decode(r.sealed.as_slice())
        .map_err(|e| ViewError::Corrupt { table: field.into(), reason: e.to_string() })?;
    match keyring.open(field, &sf, &Aad { tenant, stream, event_id }).await? {
        Opened::Plaintext(p) => Ok(Some(p)),
        Opened::Erased => Ok(None),
    }
}
