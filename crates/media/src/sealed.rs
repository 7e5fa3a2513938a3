//! The byte format of a blob at rest (`docs/media.md`, "Blob format").
//!
//! ```text
//! header   88 bytes   magic "PYPESMB1", version u16 = 1, flags u16 = 0,
//!                     chunk size u32, plaintext size u64, key id [16],
//!                     tenant [16], session [16], media [16]   (little endian)
//! chunk 0  nonce [12] ‖ ciphertext (chunk size bytes) ‖ tag [16]
//! chunk 1  ...
//! chunk n  the last holds the rest: 1 to chunk size bytes
//! ```
//!
//! Every chunk is AES-256-GCM under the blob's own media key with a random
//! nonce; its AAD is the header's fields and the chunk's index. So a chunk
//! moved to another index or another blob, a header with another size or
//! id, or a blob cut short (the size says how many chunks there are) all
//! fail to open. Chunk `i` sits at a fixed offset, so a range read reads
//! only the chunks it covers.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use keystore::crypto::{NONCE_LEN, TAG_LEN, associated_data, random_nonce};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::BlobId;

pub const MAGIC: &[u8; 8] = b"PYPESMB1";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 88;
/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Bytes a sealed chunk adds to its plaintext (nonce and tag).
pub const CHUNK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("blob header: {0}")]
    Header(String),
    #[error("chunk {index} of the blob does not authenticate (altered, moved, or under another key)")]
    Chunk { index: u64 },
    #[error("chunk {index}: {got} bytes stored, expected {expected}")]
    ChunkLength { index: u64, got: usize, expected: usize },
    #[error("{got} bytes so far, more than the {declared} declared")]
    TooLong { declared: u64, got: u64 },
    #[error("the upload ended after {got} bytes; {declared} were declared")]
    TooShort { declared: u64, got: u64 },
    #[error("the bytes hash to {got}, not the SHA-256 given ({expected})")]
    Digest { expected: String, got: String },
    #[error("no random source: {0}")]
    Random(String),
}

/// What the header of a blob says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    /// Plaintext bytes.
    pub size: u64,
    pub key_id: Uuid,
    pub id: BlobId,
}

impl Header {
    pub fn new(id: BlobId, key_id: Uuid, size: u64) -> Self {
        Self { chunk_size: CHUNK_SIZE, size, key_id, id }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out[24..40].copy_from_slice(self.key_id.as_bytes());
        out[40..56].copy_from_slice(self.id.tenant.as_bytes());
        out[56..72].copy_from_slice(self.id.session.as_bytes());
        out[72..88].copy_from_slice(self.id.media.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let bad = |why: String| FormatError::Header(why);
        if bytes.len() < HEADER_LEN {
            return Err(bad(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad("not a pypes media blob (bad magic)".into()));
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let version = u16_at(8);
        if version != VERSION {
            return Err(bad(format!("version {version}; this build reads version {VERSION}")));
        }
        if u16_at(10) != 0 {
            return Err(bad(format!("unknown flags {:#06x}", u16_at(10))));
        }
        let mut u32b = [0u8; 4];
        u32b.copy_from_slice(&bytes[12..16]);
        let chunk_size = u32::from_le_bytes(u32b);
        if chunk_size == 0 || chunk_size > 64 << 20 {
            return Err(bad(format!("chunk size {chunk_size}; 1 byte to 64 MiB")));
        }
        let mut u64b = [0u8; 8];
        u64b.copy_from_slice(&bytes[16..24]);
        let uuid_at = |at: usize| Uuid::from_slice(&bytes[at..at + 16]).unwrap_or_default();
        Ok(Self {
            chunk_size,
            size: u64::from_le_bytes(u64b),
            key_id: uuid_at(24),
            id: BlobId { tenant: uuid_at(40), session: uuid_at(56), media: uuid_at(72) },
        })
    }

    /// How many chunks hold the plaintext.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// Plaintext bytes in chunk `index`.
    pub fn plain_len(&self, index: u64) -> usize {
        let start = index.saturating_mul(u64::from(self.chunk_size));
        self.size.saturating_sub(start).min(u64::from(self.chunk_size)) as usize
    }

    /// Where chunk `index` starts in the stored blob.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        (HEADER_LEN as u64).saturating_add(index.saturating_mul(u64::from(self.chunk_size) + CHUNK_OVERHEAD as u64))
    }

    /// Stored bytes of the whole blob.
    pub fn stored_len(&self) -> u64 {
        self.chunk_offset(self.chunks().saturating_sub(1))
            .saturating_add(self.plain_len(self.chunks().saturating_sub(1)) as u64 + CHUNK_OVERHEAD as u64)
    }

    fn aad(&self, index: u64) -> Vec<u8> {
        associated_data(
            "pypes.media.v1.chunk",
            &[
                self.id.tenant.as_bytes(),
                self.id.session.as_bytes(),
                self.id.media.as_bytes(),
                self.key_id.as_bytes(),
                &self.chunk_size.to_le_bytes(),
                &self.size.to_le_bytes(),
                &index.to_le_bytes(),
            ],
        )
    }

    /// Seals `plaintext` as chunk `index`: nonce ‖ ciphertext ‖ tag.
    pub fn seal_chunk(&self, cipher: &Aes256Gcm, index: u64, plaintext: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::with_capacity(plaintext.len() + CHUNK_OVERHEAD);
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_in_place(cipher, index, &mut out)?;
        Ok(out)
    }

    /// Seals chunk `index` in place: `buf` is `NONCE_LEN` bytes of room and
    /// then the plaintext; it becomes nonce ‖ ciphertext ‖ tag (no copy of
    /// the chunk).
    pub fn seal_in_place(&self, cipher: &Aes256Gcm, index: u64, buf: &mut Vec<u8>) -> Result<(), FormatError> {
        let nonce = random_nonce().map_err(|e| FormatError::Random(e.to_string()))?;
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &self.aad(index), buf[NONCE_LEN..].as_mut().into())
            .map_err(|_| FormatError::Chunk { index })?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens chunk `index` from its stored bytes, in place: the returned
    /// vector is the plaintext.
    pub fn open_chunk(&self, cipher: &Aes256Gcm, index: u64, mut stored: Vec<u8>) -> Result<Vec<u8>, FormatError> {
        let expected = self.plain_len(index) + CHUNK_OVERHEAD;
        if index >= self.chunks() || stored.len() != expected {
            return Err(FormatError::ChunkLength { index, got: stored.len(), expected });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&stored[..NONCE_LEN]);
        let body_end = stored.len() - TAG_LEN;
        let tag = Tag::try_from(&stored[body_end..]).map_err(|_| FormatError::Chunk { index })?;
        cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &self.aad(index),
                stored[NONCE_LEN..body_end].as_mut().into(),
                &tag,
            )
            .map_err(|_| FormatError::Chunk { index })?;
        stored.truncate(body_end);
        stored.drain(..NONCE_LEN);
        Ok(stored)
    }
}

/// Seals an upload as it streams: bytes in, sealed chunks out, with the
/// SHA-256 of the plaintext and the declared size enforced.
pub struct Encryptor {
    header: Header,
    cipher: Aes256Gcm,
    /// Room for the nonce, then the plaintext of the chunk being filled.
    buffer: Vec<u8>,
    next_index: u64,
    received: u64,
    hash: Sha256,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor").field("header", &self.header).field("received", &self.received).finish()
    }
}

impl Encryptor {
    pub fn new(header: Header, cipher: Aes256Gcm) -> Self {
        Self { buffer: Self::fresh_buffer(&header), header, cipher, next_index: 0, received: 0, hash: Sha256::new() }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn fresh_buffer(header: &Header) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(header.chunk_size as usize + CHUNK_OVERHEAD);
        buffer.extend_from_slice(&[0; NONCE_LEN]);
        buffer
    }

    /// Seals the buffered chunk and starts the next.
    fn seal_buffer(&mut self) -> Result<Vec<u8>, FormatError> {
        let mut sealed = std::mem::replace(&mut self.buffer, Self::fresh_buffer(&self.header));
        self.header.seal_in_place(&self.cipher, self.next_index, &mut sealed)?;
        self.next_index += 1;
        Ok(sealed)
    }

    /// Plaintext bytes taken so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes the next bytes; returns the chunks they completed, sealed.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, FormatError> {
        let got = self.received + data.len() as u64;
        if got > self.header.size {
            return Err(FormatError::TooLong { declared: self.header.size, got });
        }
        self.received = got;
        self.hash.update(data);
        let mut out = Vec::new();
        let full = NONCE_LEN + self.header.chunk_size as usize;
        while !data.is_empty() {
            let take = (full - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == full {
                out.push(self.seal_buffer()?);
            }
        }
        Ok(out)
    }

    /// The end of the upload: the last (partial) chunk, if any, and the
    /// SHA-256 of the plaintext.
    pub fn finish(mut self) -> Result<(Option<Vec<u8>>, [u8; 32]), FormatError> {
        if self.received != self.header.size {
            return Err(FormatError::TooShort { declared: self.header.size, got: self.received });
        }
        let last = if self.buffer.len() == NONCE_LEN { None } else { Some(self.seal_buffer()?) };
        Ok((last, self.hash.finalize().into()))
    }
}

/// Checks a SHA-256 the client gave against the one computed.
pub fn check_digest(expected: &[u8], got: &[u8; 32]) -> Result<(), FormatError> {
    if expected.is_empty() || expected == got {
        return Ok(());
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Err(FormatError::Digest { expected: hex(expected), got: hex(got) })
}

/// Opens a range of a blob chunk by chunk.
pub struct Decryptor {
    header: Header,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor").field("header", &self.header).finish()
    }
}

impl Decryptor {
    pub fn new(header: Header, cipher: Aes256Gcm) -> Self {
        Self { header, cipher }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The chunks that hold plaintext bytes [offset, offset + len), cut
    /// at the blob's end (a range past it, or one whose end overflows,
    /// gives no chunk past the last).
    pub fn chunks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.header.size);
        if offset >= end {
            return 0..0;
        }
        let c = u64::from(self.header.chunk_size);
        offset / c..end.div_ceil(c)
    }

    /// Opens chunk `index` (its stored bytes) and keeps the part inside
    /// [offset, offset + len).
    pub fn open(&self, index: u64, stored: Vec<u8>, offset: u64, len: u64) -> Result<Vec<u8>, FormatError> {
        let mut plain = self.header.open_chunk(&self.cipher, index, stored)?;
        let start = index.saturating_mul(u64::from(self.header.chunk_size));
        let from = offset.saturating_sub(start).min(plain.len() as u64) as usize;
        let to = offset.saturating_add(len).saturating_sub(start).min(plain.len() as u64) as usize;
        plain.truncate(to);
        plain.drain(..from);
        Ok(plain)
    }

    /// Stored byte range of chunk `index`.
    pub fn stored_range(&self, index: u64) -> (u64, usize) {
        (self.header.chunk_offset(index), self.header.plain_len(index) + CHUNK_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `media_blob` fuzz target: a range whose end overflows
    /// u64 (from a damaged header's size) panicked in `chunks_of`.
    #[test]
    fn ranges_near_the_end_of_u64_do_not_overflow() {
        let id = BlobId { tenant: Uuid::nil(), session: Uuid::nil(), media: Uuid::nil() };
        let mut header = Header::new(id, Uuid::nil(), u64::MAX);
        header.chunk_size = 1;
        let cipher = <Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&[3; 32]).unwrap();
        let reader = Decryptor::new(header, cipher);
        assert_eq!(reader.chunks_of(u64::MAX - 1, 4_000_000), u64::MAX - 1..u64::MAX);
        assert_eq!(reader.chunks_of(u64::MAX, 1), 0..0);
        assert!(reader.open(u64::MAX - 1, vec![0; 40], u64::MAX - 1, 4_000_000).is_err());
        assert_eq!(header.chunk_offset(u64::MAX), u64::MAX);
        assert_eq!(header.plain_len(u64::MAX), 0);
        let small = Header::new(id, Uuid::nil(), 3000);
        let reader = Decryptor::new(small, <Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&[3; 32]).unwrap());
        assert_eq!(reader.chunks_of(0, 3000), 0..1);
        assert_eq!(reader.chunks_of(2999, 10), 0..1);
        assert_eq!(reader.chunks_of(3000, 1), 0..0);
        assert_eq!(reader.chunks_of(5, 0), 0..0);
    }
}
