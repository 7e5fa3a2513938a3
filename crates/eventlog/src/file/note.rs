//! The witness's copy of the signed head as a C2SP signed note
//! (`c2sp.org/signed-note`, body in the shape of `c2sp.org/tlog-checkpoint`),
//! so that a standard witness can store and cosign it:
//!
//! ```text
//! pypes.log/<first 16 hex digits of the public key>
//! <frames covered>                      the "tree size": frame count before the checkpoint, + 1
//! <base64 of the chain value>           the "root hash" (a hash chain head, not a Merkle root)
//! next-position <n>
//! signed-at-micros <t>
//! checkpoint-signature <base64 of the log checkpoint's own signature>
//!
//! — pypes.log/<…> <base64 of key id (4 bytes) ‖ Ed25519 signature of the lines above>
//! ```
//!
//! The key id is the first four bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖
//! public key), as the signed-note format defines it for Ed25519. The
//! extension lines carry what rebuilds the log's own `Checkpoint`, so the
//! note is checked twice: its note signature, and the checkpoint signature.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use proto::log::Checkpoint;
use sha2::{Digest, Sha256};

const SIGNATURE_TYPE_ED25519: u8 = 0x01;
const DASH: &str = "\u{2014} ";

/// The note's origin line for the log signed with `key`.
pub fn origin(key: &VerifyingKey) -> String {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("pypes.log/{}", &hex[..16])
}

fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([SIGNATURE_TYPE_ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The signed note for checkpoint `cp` (already signed by the log).
pub fn encode(cp: &Checkpoint, key: &SigningKey) -> Vec<u8> {
    let name = origin(&key.verifying_key());
    let body = format!(
        "{name}\n{}\n{}\nnext-position {}\nsigned-at-micros {}\ncheckpoint-signature {}\n",
        cp.frame_count + 1,
        STANDARD.encode(&cp.chain),
        cp.next_position,
        cp.signed_at_micros,
        STANDARD.encode(&cp.signature),
    );
    let signature = key.sign(body.as_bytes()).to_bytes();
    let mut blob = key_id(&name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&signature);
    format!("{body}\n{DASH}{name} {}\n", STANDARD.encode(blob)).into_bytes()
}

/// Checks a note's signature with `key` and gives the log checkpoint it
/// states; `Err` says what is wrong. The checkpoint's own signature is
/// checked by the caller, as for `head.sig`.
pub fn decode(bytes: &[u8], key: &VerifyingKey) -> Result<Checkpoint, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the note is not UTF-8".to_string())?;
    let (body, signatures) =
        text.split_once("\n\n").ok_or_else(|| "the note has no blank line before its signatures".to_string())?;
    let body = format!("{body}\n");
    let name = origin(key);
    let expected_id = key_id(&name, key);
    let mut verified = false;
    for line in signatures.lines() {
        let rest = line.strip_prefix(DASH).ok_or_else(|| format!("not a signature line: {line:?}"))?;
        let (signer, blob) = rest.split_once(' ').ok_or_else(|| "a signature line without a signature".to_string())?;
        let blob = STANDARD.decode(blob).map_err(|_| "a signature is not base64".to_string())?;
        if signer != name || blob.len() != 68 || blob[..4] != expected_id {
            continue; // another signer (a cosigning witness): not ours to check
        }
        let signature = Signature::from_slice(&blob[4..]).map_err(|e| format!("malformed signature: {e}"))?;
        key.verify(body.as_bytes(), &signature).map_err(|_| "the note's signature does not verify".to_string())?;
        verified = true;
    }
    if !verified || !signatures.ends_with('\n') {
        return Err(format!("no valid signature by {name}"));
    }
    let mut lines = body.lines();
    let mut next = |what: &str| lines.next().ok_or_else(|| format!("the note has no {what} line"));
    if next("origin")? != name {
        return Err("the note names another log".into());
    }
    let frames: u64 = next("size")?.parse().map_err(|_| "the size line is not a number".to_string())?;
    let chain = STANDARD.decode(next("hash")?).map_err(|_| "the hash line is not base64".to_string())?;
    let field = |line: &str, key: &str| -> Result<String, String> {
        line.strip_prefix(key).map(str::to_string).ok_or_else(|| format!("expected {key:?}"))
    };
    let next_position =
        field(next("position")?, "next-position ")?.parse().map_err(|_| "bad next-position".to_string())?;
    let signed_at_micros =
        field(next("time")?, "signed-at-micros ")?.parse().map_err(|_| "bad signed-at-micros".to_string())?;
    let signature = STANDARD
        .decode(field(next("signature")?, "checkpoint-signature ")?)
        .map_err(|_| "bad checkpoint-signature".to_string())?;
    if frames == 0 || chain.len() != 32 {
        return Err("the note's size or hash is malformed".into());
    }
    Ok(Checkpoint {
        chain: chain.into(),
        frame_count: frames - 1,
        next_position,
        signed_at_micros,
        signature: signature.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint {
            chain: vec![7; 32].into(),
            frame_count: 41,
            next_position: 99,
            signed_at_micros: 1_800_000_000_000_000,
            signature: vec![3; 64].into(),
        }
    }

    #[test]
    fn a_note_round_trips_and_every_changed_byte_is_refused() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let note = encode(&cp(), &key);
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with(&format!("{}\n42\n", origin(&key.verifying_key()))), "{text}");
        assert!(text.contains("\n\n\u{2014} pypes.log/"), "{text}");
        assert_eq!(decode(&note, &key.verifying_key()).unwrap(), cp());
        for i in 0..note.len() {
            let mut bad = note.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad, &key.verifying_key()).is_err(), "byte {i} changed unseen");
        }
        let other = SigningKey::from_bytes(&[5; 32]);
        assert!(decode(&note, &other.verifying_key()).is_err());
    }

    #[test]
    fn a_cosignature_of_another_witness_is_kept_and_ignored() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let mut note = encode(&cp(), &key);
        note.extend_from_slice(format!("{DASH}witness.example/w1 {}\n", STANDARD.encode([9u8; 68])).as_bytes());
        assert_eq!(decode(&note, &key.verifying_key()).unwrap(), cp());
    }
}
