//! The blob format: round trips at every size around chunk boundaries, and
//! every way of moving, dropping or altering sealed bytes is refused.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use media::BlobId;
use media::sealed::{CHUNK_OVERHEAD, Decryptor, Encryptor, FormatError, HEADER_LEN, Header, check_digest};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

fn cipher(seed: u8) -> Aes256Gcm {
    Aes256Gcm::new(&[seed; 32].into())
}

fn id() -> BlobId {
    BlobId { tenant: Uuid::new_v4(), session: Uuid::new_v4(), media: Uuid::new_v4() }
}

/// Seals `data` (pushed in pieces of `piece`) with a small chunk size.
fn seal(header: Header, data: &[u8], piece: usize) -> (Vec<u8>, [u8; 32]) {
    let mut enc = Encryptor::new(header, cipher(1));
    let mut out = header.encode().to_vec();
    for part in data.chunks(piece.max(1)) {
        for c in enc.push(part).unwrap() {
            out.extend_from_slice(&c);
        }
    }
    let (last, digest) = enc.finish().unwrap();
    out.extend(last.unwrap_or_default());
    (out, digest)
}

fn read(stored: &[u8], key: u8, offset: u64, len: u64) -> Result<Vec<u8>, FormatError> {
    let header = Header::decode(stored)?;
    let dec = Decryptor::new(header, cipher(key));
    let mut out = Vec::new();
    for i in dec.chunks_of(offset, len) {
        let (at, n) = dec.stored_range(i);
        let bytes = stored.get(at as usize..at as usize + n).ok_or(FormatError::ChunkLength {
            index: i,
            got: stored.len().saturating_sub(at as usize),
            expected: n,
        })?;
        out.extend(dec.open(i, bytes.to_vec(), offset, len)?);
    }
    Ok(out)
}

fn small(size: u64) -> Header {
    Header { chunk_size: 64, ..Header::new(id(), Uuid::new_v4(), size) }
}

proptest! {
    #[test]
    fn round_trips_any_size_and_range(size in 1u64..600, piece in 1usize..200, a in 0u64..600, b in 0u64..600) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let header = small(size);
        let (stored, digest) = seal(header, &data, piece);
        prop_assert_eq!(stored.len() as u64, header.stored_len());
        prop_assert_eq!(digest.to_vec(), Sha256::digest(&data).to_vec());
        prop_assert_eq!(read(&stored, 1, 0, size).unwrap(), data.clone());
        let (from, to) = (a.min(b).min(size), a.max(b).min(size));
        prop_assert_eq!(read(&stored, 1, from, to - from).unwrap(), data[from as usize..to as usize].to_vec());
    }
}

#[test]
fn sizes_at_chunk_boundaries() {
    for size in [1, 63, 64, 65, 127, 128, 129] {
        let data = vec![9u8; size];
        let (stored, _) = seal(small(size as u64), &data, 10);
        assert_eq!(read(&stored, 1, 0, size as u64).unwrap(), data, "size {size}");
    }
}

#[test]
fn swapped_chunks_do_not_open() {
    let data: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    let header = small(256);
    let (stored, _) = seal(header, &data, 256);
    let stride = 64 + CHUNK_OVERHEAD;
    let mut swapped = stored.clone();
    let (c0, c1) = (HEADER_LEN, HEADER_LEN + stride);
    let first = stored[c0..c0 + stride].to_vec();
    swapped[c0..c0 + stride].copy_from_slice(&stored[c1..c1 + stride]);
    swapped[c1..c1 + stride].copy_from_slice(&first);
    assert_eq!(read(&swapped, 1, 0, 256), Err(FormatError::Chunk { index: 0 }));
}

#[test]
fn a_chunk_from_another_blob_does_not_open() {
    let data = vec![5u8; 128];
    let (a, _) = seal(small(128), &data, 128);
    let (b, _) = seal(small(128), &data, 128);
    let mut mixed = a.clone();
    mixed[HEADER_LEN..].copy_from_slice(&b[HEADER_LEN..]);
    assert!(matches!(read(&mixed, 1, 0, 128), Err(FormatError::Chunk { .. })));
}

#[test]
fn a_cut_blob_or_another_size_or_key_is_refused() {
    let data = vec![3u8; 200];
    let header = small(200);
    let (stored, _) = seal(header, &data, 50);
    // The last chunk dropped.
    let cut = &stored[..header.chunk_offset(3) as usize];
    assert!(matches!(read(cut, 1, 0, 200), Err(FormatError::ChunkLength { index: 3, .. })));
    // A header claiming fewer bytes (to hide the tail): every chunk fails.
    let mut shorter = stored.clone();
    shorter[..HEADER_LEN].copy_from_slice(&Header { size: 128, ..header }.encode());
    assert_eq!(read(&shorter, 1, 0, 128), Err(FormatError::Chunk { index: 0 }));
    // Another media id in the header.
    let mut moved = stored.clone();
    let other = Header { id: BlobId { media: Uuid::new_v4(), ..header.id }, ..header };
    moved[..HEADER_LEN].copy_from_slice(&other.encode());
    assert_eq!(read(&moved, 1, 0, 200), Err(FormatError::Chunk { index: 0 }));
    // Another key.
    assert_eq!(read(&stored, 2, 0, 200), Err(FormatError::Chunk { index: 0 }));
    // A flipped ciphertext bit.
    let mut flipped = stored.clone();
    flipped[HEADER_LEN + 20] ^= 1;
    assert_eq!(read(&flipped, 1, 0, 10), Err(FormatError::Chunk { index: 0 }));
    // Not a blob at all.
    assert!(matches!(Header::decode(b"hello"), Err(FormatError::Header(_))));
}

#[test]
fn declared_size_is_enforced_both_ways() {
    let mut enc = Encryptor::new(small(10), cipher(1));
    assert_eq!(enc.push(&[0; 11]).unwrap_err(), FormatError::TooLong { declared: 10, got: 11 });
    let mut enc = Encryptor::new(small(10), cipher(1));
    enc.push(&[0; 9]).unwrap();
    assert_eq!(enc.finish().unwrap_err(), FormatError::TooShort { declared: 10, got: 9 });
}

#[test]
fn a_given_digest_must_match() {
    let got: [u8; 32] = Sha256::digest(b"abc").into();
    assert!(check_digest(&[], &got).is_ok());
    assert!(check_digest(&got, &got).is_ok());
    assert!(matches!(check_digest(&[0; 32], &got), Err(FormatError::Digest { .. })));
}
