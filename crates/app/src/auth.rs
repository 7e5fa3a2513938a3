//! Who is calling: the platform admin (creates tenants), a staff member or
//! a tenant, by the bearer key of the call. Tenant keys are
//! `pypes_<tenant>_<key id>_<secret>`, staff keys
//! `pypes_staff_<staff id>_<secret>` (hex); the log keeps only the SHA-256
//! of each secret.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Staff { id: Uuid, role: domain::staff::Role },
    Tenant(Uuid),
}

/// A staff key as parsed from a token (the secret still to be checked).
pub struct StaffToken {
    pub staff: Uuid,
    pub secret_sha256: [u8; 32],
}

/// A tenant key as parsed from a token (the secret still to be checked).
pub struct TenantToken {
    pub tenant: Uuid,
    pub key_id: Uuid,
    pub secret_sha256: [u8; 32],
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal without an early exit, so timing does not tell how much matched.
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new staff key: (the token to hand out once, SHA-256 of its secret).
pub fn new_staff_key(staff: Uuid) -> Result<(String, [u8; 32]), AppError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| AppError::Internal(format!("random source: {e}")))?;
    Ok((format!("pypes_staff_{}_{}", staff.simple(), hex::encode(secret)), sha256(&secret)))
}

/// A new tenant key: (key id, the token to hand out once, SHA-256 of its secret).
pub fn new_tenant_key(tenant: Uuid) -> Result<(Uuid, String, [u8; 32]), AppError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| AppError::Internal(format!("random source: {e}")))?;
    let key_id = Uuid::now_v7();
    let token = format!("pypes_{}_{}_{}", tenant.simple(), key_id.simple(), hex::encode(secret));
    Ok((key_id, token, sha256(&secret)))
}

pub enum Bearer {
    Admin,
    Staff(StaffToken),
    Tenant(TenantToken),
}

/// What a call presents: its `authorization` header and the tenant header
/// a staff member's call names (as the edge read them; `Err` when a header
/// is there but is not text).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub authorization: Option<Result<String, ()>>,
    pub tenant: Option<Result<String, ()>>,
}

/// Header naming the tenant a staff member's call is about.
pub const TENANT_HEADER: &str = "x-pypes-tenant";

/// Reads and classifies the bearer key of a call.
pub fn bearer(credentials: &Credentials, admin_sha256: &[u8; 32]) -> Result<Bearer, AppError> {
    let value = credentials.authorization.as_ref().ok_or_else(|| {
        AppError::Unauthenticated("no authorization header; send `authorization: Bearer <key>`".into())
    })?;
    let value = value.as_deref().map_err(|_| AppError::Unauthenticated("authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| AppError::Unauthenticated("authorization header must be `Bearer <key>`".into()))?
        .trim();
    if same(&sha256(token.as_bytes()), admin_sha256) {
        return Ok(Bearer::Admin);
    }
    let bad = || AppError::Unauthenticated("unknown or revoked key".into());
    if let Some(rest) = token.strip_prefix("pypes_staff_") {
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        let staff = Uuid::try_parse(id).map_err(|_| bad())?;
        let secret = hex::decode(secret).map_err(|_| bad())?;
        if secret.len() != 32 {
            return Err(bad());
        }
        return Ok(Bearer::Staff(StaffToken { staff, secret_sha256: sha256(&secret) }));
    }
    let rest = token.strip_prefix("pypes_").ok_or_else(bad)?;
    let mut parts = rest.split('_');
    let (Some(t), Some(k), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let tenant = Uuid::try_parse(t).map_err(|_| bad())?;
    let key_id = Uuid::try_parse(k).map_err(|_| bad())?;
    let secret = hex::decode(s).map_err(|_| bad())?;
    if secret.len() != 32 {
        return Err(bad());
    }
    Ok(Bearer::Tenant(TenantToken { tenant, key_id, secret_sha256: sha256(&secret) }))
}
