//! AES-256-GCM primitives: key material that is zeroised on drop, random
//! nonces, unambiguous associated data, and the wrap/unwrap of one key
//! under another.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use zeroize::{Zeroize, Zeroizing};

use crate::error::KeyError;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// 256 bits of key material, zeroised when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Invalid {
            what: "key material",
            reason: format!("{} bytes, expected {KEY_LEN}", bytes.len()),
        })?;
        let key = Self(Zeroizing::new(array));
        let mut array = array;
        array.zeroize();
        Ok(key)
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The AES-256-GCM cipher of this key (its round keys are zeroised when
    /// the cipher is dropped).
    pub fn cipher(&self) -> Aes256Gcm {
        let key: &Key<Aes256Gcm> = (&*self.0).into();
        Aes256Gcm::new(key)
    }
}

pub fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    getrandom::fill(buf).map_err(|e| KeyError::Random(e.to_string()))
}

/// Associated data built from length-prefixed parts under a domain label,
/// so no two different tuples give the same bytes.
pub fn associated_data(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + 4 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    for part in std::iter::once(label.as_bytes()).chain(parts.iter().copied()) {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Random bytes for nonces, drawn from the operating system's CSPRNG in
/// blocks so that a seal does not cost a system call. (Never shared across
/// a fork: pypes does not fork.)
const NONCE_POOL: usize = 12 * 64;

thread_local! {
    static NONCES: std::cell::RefCell<(Zeroizing<[u8; NONCE_POOL]>, usize)> =
        std::cell::RefCell::new((Zeroizing::new([0u8; NONCE_POOL]), NONCE_POOL));
}

pub fn random_nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    NONCES.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if *used + NONCE_LEN > NONCE_POOL {
            fill_random(bytes.as_mut())?;
            *used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[*used..*used + NONCE_LEN]);
        // Each nonce is handed out once: wipe it from the pool.
        bytes[*used..*used + NONCE_LEN].fill(0);
        *used += NONCE_LEN;
        Ok(nonce)
    })
}

/// Encrypts `plaintext` under a random nonce; returns the nonce and the
/// ciphertext followed by the tag.
pub fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<([u8; NONCE_LEN], Vec<u8>), KeyError> {
    let nonce = random_nonce()?;
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), aad, buf.as_mut_slice().into())
        .map_err(|_| KeyError::Invalid { what: "plaintext", reason: "too long for AES-GCM".into() })?;
    buf.extend_from_slice(&tag);
    Ok((nonce, buf))
}

/// Decrypts and authenticates; `None` when the tag does not verify.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_do_not_repeat_across_pool_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(random_nonce().unwrap()));
        }
    }
}

pub fn open(cipher: &Aes256Gcm, nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let body_len = ciphertext.len().checked_sub(TAG_LEN)?;
    let (body, tag) = ciphertext.split_at(body_len);
    let tag: &Tag = tag.try_into().ok()?;
    let mut buf = Zeroizing::new(body.to_vec());
    cipher.decrypt_inout_detached(&Nonce::from(nonce), aad, buf.as_mut_slice().into(), tag).ok()?;
    Some(buf)
}

/// A key encrypted under another key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    pub fn from_parts(nonce: &[u8], ciphertext: &[u8]) -> Option<Self> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        (ciphertext.len() == KEY_LEN + TAG_LEN).then(|| Self { nonce, ciphertext: ciphertext.to_vec() })
    }
}

pub fn wrap(kek: &SecretKey, aad: &[u8], key: &SecretKey) -> Result<WrappedKey, KeyError> {
    let (nonce, ciphertext) = seal(&kek.cipher(), aad, key.expose())?;
    Ok(WrappedKey { nonce, ciphertext })
}

/// `None` when the wrapped key does not authenticate under `kek` and `aad`.
pub fn unwrap(kek: &SecretKey, aad: &[u8], wrapped: &WrappedKey) -> Option<SecretKey> {
    let plain = open(&kek.cipher(), &wrapped.nonce, aad, &wrapped.ciphertext)?;
    SecretKey::from_bytes(&plain).ok()
}
