//! Signing webhook requests.
//!
//! Each request carries `pypes-signature: t=<unix seconds>,v1=<hex>` where
//! `<hex>` is HMAC-SHA-256 keyed with the endpoint's secret over
//! `<t>.<body>` (the timestamp in decimal, a full stop, the raw body
//! bytes). While a secret is being rotated the header carries one `v1=`
//! per live secret; a receiver accepts the request if any of them matches
//! a secret it knows. A receiver refuses a timestamp further than its
//! tolerance from its own clock (a replay of a recorded request).
//! docs/integrations.md has a receiver in Python.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "pypes-signature";

/// How far from the receiver's clock a timestamp may be (seconds) in
/// [`verify`]'s callers' default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The keyed hash over `<timestamp>.<body>` under `secret`, before it is
/// finalised (by [`mac`], or compared in constant time by [`verify`]).
fn keyed(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: `new_from_slice` never fails for it.
    let mut m = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    let mut digits = [0u8; 20];
    m.update(decimal(timestamp, &mut digits));
    m.update(b".");
    m.update(body);
    m
}

/// `n` in decimal, written into `buf` (no allocation: this runs for
/// every attempt).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// HMAC-SHA-256 of `<timestamp>.<body>` under `secret`.
pub fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    keyed(secret, timestamp, body).finalize().into_bytes().into()
}

/// The header's value for `body` sent at `timestamp` under each of
/// `secrets` (the newest first).
pub fn header(secrets: &[&[u8]], timestamp: i64, body: &[u8]) -> String {
    let mut out = String::with_capacity(24 + secrets.len() * 68);
    out.push_str("t=");
    let mut digits = [0u8; 20];
    // ASCII digits and a sign: valid UTF-8.
    out.push_str(std::str::from_utf8(decimal(timestamp, &mut digits)).unwrap_or_default());
    for secret in secrets {
        out.push_str(",v1=");
        let mut hex = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        if hex::encode_to_slice(mac(secret, timestamp, body), &mut hex).is_ok() {
            out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
        }
    }
    out
}

/// Why a receiver refuses a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the timestamp is {0} s from this clock, more than the tolerance (a replay, or a clock that is off)")]
    Stale(i64),
    #[error("no signature matches the secret")]
    Mismatch,
}

/// The receiver's check: the header parses, its timestamp is within
/// `tolerance_secs` of `now`, and one of its `v1` signatures is the body's
/// under `secret` (compared in constant time).
pub fn verify(header: &str, secret: &[u8], body: &[u8], now: i64, tolerance_secs: i64) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| VerifyError::Malformed("t is not a number"))?)
            }
            Some(("v1", s)) => signatures.push(hex::decode(s).map_err(|_| VerifyError::Malformed("v1 is not hex"))?),
            Some(_) => {} // other schemes: ignored, as new ones may come
            None => return Err(VerifyError::Malformed("a part without '='")),
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed("no t="))?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed("no v1="));
    }
    let skew = now.saturating_sub(timestamp);
    if skew.abs() > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    for signature in signatures {
        if keyed(secret, timestamp, body).verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_decimal_text() {
        for n in [0, 7, 10, 1_733_356_800, -1, -30, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
        let h = header(&[b"k"], 1_733_356_800, b"{}");
        assert!(h.starts_with("t=1733356800,v1="), "{h}");
        assert_eq!(h.len(), "t=1733356800,v1=".len() + 64);
    }

    #[test]
    fn the_mac_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for
        // nothing?"; here the data is split as "<t>.<body>".
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut m = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        m.update(b"17.body");
        assert_eq!(mac(b"k", 17, b"body").to_vec(), m.finalize().into_bytes().to_vec());
    }

    #[test]
    fn a_signed_request_verifies_and_every_change_is_refused() {
        let body = br#"{"type":"message.posted"}"#;
        let h = header(&[b"new-secret", b"old-secret"], 1_000, body);
        assert!(h.starts_with("t=1000,v1=") && h.matches("v1=").count() == 2);
        // Either secret of a rotation verifies.
        assert_eq!(verify(&h, b"new-secret", body, 1_010, 300), Ok(()));
        assert_eq!(verify(&h, b"old-secret", body, 990, 300), Ok(()));
        assert_eq!(verify(&h, b"other", body, 1_000, 300), Err(VerifyError::Mismatch));
        assert_eq!(verify(&h, b"new-secret", b"{}", 1_000, 300), Err(VerifyError::Mismatch));
        // A replay an hour later, and a timestamp from the future.
        assert_eq!(verify(&h, b"new-secret", body, 4_600, 300), Err(VerifyError::Stale(3_600)));
        assert_eq!(verify(&h, b"new-secret", body, 0, 300), Err(VerifyError::Stale(-1_000)));
        // The timestamp is signed: moving it breaks the signature.
        let moved = h.replacen("t=1000", "t=1001", 1);
        assert_eq!(verify(&moved, b"new-secret", body, 1_000, 300), Err(VerifyError::Mismatch));
        for bad in ["", "t=1000", "v1=00", "t=x,v1=00", "t=1000,v1=zz", "t1000"] {
            assert!(matches!(verify(bad, b"new-secret", body, 1_000, 300), Err(VerifyError::Malformed(_))), "{bad}");
        }
    }
}
