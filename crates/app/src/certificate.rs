//! The signed certificates the privacy processes issue: an erasure's
//! (`pypes-erasure-certificate/v1`) and a tenant's offboarding
//! (`pypes-tenant-offboarding-certificate/v1`). Each is a JSON object whose fields
//! keep the order below (docs/privacy.md); the Ed25519 signature covers
//! its exact bytes, and the text is stored as issued, so a verifier never
//! re-serialises it.

use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;

/// Format tag of an erasure certificate.
pub const ERASURE_FORMAT: &str = "pypes-erasure-certificate/v1";
/// Format tag of an offboarding certificate.
pub const OFFBOARDING_FORMAT: &str = "pypes-tenant-offboarding-certificate/v1";

#[derive(Serialize)]
pub struct Erasure<'a> {
    pub format: &'static str,
    pub request_id: String,
    pub tenant_id: String,
    pub subject_ref: String,
    pub requested_at: String,
    pub due_at: String,
    pub keys_shredded_at: String,
    pub erased_at: String,
    pub issued_at: String,
    pub destroyed_key_fingerprints: &'a [String],
    pub sessions_erased: Vec<String>,
    pub projections_acknowledged: Vec<Acknowledged>,
    pub tombstone: Tombstone,
    pub signing_public_key: String,
}

#[derive(Serialize)]
pub struct Acknowledged {
    pub projection: String,
    pub position: u64,
}

#[derive(Serialize)]
pub struct Tombstone {
    pub stream: String,
    pub version: u64,
    pub position: u64,
}

#[derive(Serialize)]
pub struct Offboarding<'a> {
    pub format: &'static str,
    pub tenant_id: String,
    pub cancelled_at: String,
    pub grace_days: u32,
    pub kek_shredded_at: String,
    pub issued_at: String,
    pub destroyed_key_fingerprints: &'a [String],
    pub signing_public_key: String,
}

/// A tenant's move to another region (`pypes-tenant-move-certificate/v1`),
/// issued by the old region once its keys, blobs and streams of the
/// tenant are destroyed (docs/residency.md).
#[derive(Serialize)]
pub struct Move<'a> {
    pub format: &'static str,
    pub tenant_id: String,
    pub from_region: String,
    pub to_region: String,
    pub switched_at: String,
    pub kek_shredded_at: String,
    pub issued_at: String,
    /// The digest both regions computed of the copy.
    pub copy_digest: String,
    pub streams: u64,
    pub events: u64,
    pub keys: u64,
    pub blobs: u64,
    pub streams_deleted: u64,
    pub destroyed_key_fingerprints: &'a [String],
    pub signing_public_key: String,
}

/// The certificate's text and the hex of its signature.
pub fn sign(certificate: &impl Serialize, key: &SigningKey) -> Result<(String, String), crate::AppError> {
    let text = serde_json::to_string(certificate).map_err(|e| crate::AppError::internal("writing a certificate", e))?;
    let signature = hex::encode(key.sign(text.as_bytes()).to_bytes());
    Ok((text, signature))
}

/// Checks a certificate's signature with a public key (hex).
pub fn verify(certificate: &str, signature_hex: &str, public_key_hex: &str) -> anyhow::Result<()> {
    let pk: [u8; 32] = hex::decode(public_key_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("public key is not 64 hex digits"))?;
    let sig: [u8; 64] = hex::decode(signature_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("signature is not 128 hex digits"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|e| anyhow::anyhow!("public key: {e}"))?;
    key.verify_strict(certificate.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| anyhow::anyhow!("the signature does not match the certificate"))
}

/// A JSON string literal (quoted and escaped).
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field order and spelling of certificates issued before serde
    /// made them (a verifier compares fields by name, an auditor's diff by line).
    #[test]
    fn an_offboarding_certificate_keeps_its_layout() {
        let fps = vec!["sha256:ab".to_string()];
        let c = Offboarding {
            format: OFFBOARDING_FORMAT,
            tenant_id: "t".into(),
            cancelled_at: "2026-01-01T00:00:00Z".into(),
            grace_days: 30,
            kek_shredded_at: "2026-01-31T00:00:00Z".into(),
            issued_at: "2026-01-31T00:00:01Z".into(),
            destroyed_key_fingerprints: &fps,
            signing_public_key: "00".into(),
        };
        let key = SigningKey::from_bytes(&[3; 32]);
        let (text, sig) = sign(&c, &key).unwrap();
        assert_eq!(
            text,
            "{\"format\":\"pypes-tenant-offboarding-certificate/v1\",\"tenant_id\":\"t\",\"cancelled_at\":\"2026-01-01T00:00:00Z\",\"grace_days\":30,\"kek_shredded_at\":\"2026-01-31T00:00:00Z\",\"issued_at\":\"2026-01-31T00:00:01Z\",\"destroyed_key_fingerprints\":[\"sha256:ab\"],\"signing_public_key\":\"00\"}"
        );
        verify(&text, &sig, &hex::encode(key.verifying_key().as_bytes())).unwrap();
        assert!(verify(&text.replace("30", "31"), &sig, &hex::encode(key.verifying_key().as_bytes())).is_err());
        assert_eq!(json_str("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }
}
