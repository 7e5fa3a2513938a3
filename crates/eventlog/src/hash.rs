//! A fast keyed hash for in-memory maps.

/// A keyed hash for ids and short binary keys: one multiply-fold per 16
/// bytes with random per-process keys and a full avalanche at the end.
/// Much cheaper than SipHash (the log's id window, the projections' page
/// caches); the random keys keep crafted ids from piling into one bucket
/// (ids are 128-bit, so plain folding without keys would let a client
/// choose collisions).
#[derive(Clone)]
pub struct KeyedHash {
    k0: u64,
    k1: u64,
}

impl Default for KeyedHash {
    fn default() -> Self {
        let mut seed = [0u8; 16];
        // Without OS randomness the keys stay fixed: still a good spread,
        // only no longer secret.
        let _ = getrandom::fill(&mut seed);
        let k = u128::from_le_bytes(seed);
        Self { k0: (k as u64) | 1, k1: ((k >> 64) as u64) | 1 }
    }
}

impl std::hash::BuildHasher for KeyedHash {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher { k0: self.k0, k1: self.k1, h: 0 }
    }
}

pub struct KeyedHasher {
    k0: u64,
    k1: u64,
    h: u64,
}

impl KeyedHasher {
    #[inline]
    fn mix(&mut self, v: u128) {
        let m = u128::from((v as u64) ^ self.k0) * u128::from(((v >> 64) as u64) ^ self.k1);
        self.h = (self.h ^ (m as u64) ^ ((m >> 64) as u64)).rotate_left(23);
    }
}

impl std::hash::Hasher for KeyedHasher {
    fn write(&mut self, bytes: &[u8]) {
        let (chunks, tail) = bytes.as_chunks::<16>();
        for chunk in chunks {
            self.mix(u128::from_le_bytes(*chunk));
        }
        if !tail.is_empty() {
            let mut b = [0u8; 16];
            b[..tail.len()].copy_from_slice(tail);
            self.mix(u128::from_le_bytes(b) ^ ((tail.len() as u128) << 120));
        }
    }
    fn write_usize(&mut self, _: usize) {}
    fn finish(&self) -> u64 {
        // murmur3 fmix64
        let mut x = self.h;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}
