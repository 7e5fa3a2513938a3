//! Fuzzes the media blob format as a download reads it: the 88-byte
//! header, then chunks opened under the blob's key (range reads too).
//! Any bytes: a header error, a chunk that does not authenticate, or the
//! plaintext, never a panic or an allocation the header alone asks for.
#![no_main]

use aes_gcm::{Aes256Gcm, KeyInit};
use libfuzzer_sys::fuzz_target;
use media::sealed::{Decryptor, HEADER_LEN, Header};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN + 16 {
        let _ = Header::decode(data);
        return;
    }
    let (head, rest) = data.split_at(HEADER_LEN);
    let Ok(header) = Header::decode(head) else { return };
    let cipher = Aes256Gcm::new_from_slice(&[3; 32]).expect("key");
    let (range, stored) = rest.split_at(16);
    let offset = u64::from_le_bytes(range[..8].try_into().expect("8 bytes")) % header.size.max(1);
    let len = u64::from_le_bytes(range[8..].try_into().expect("8 bytes")) % (1 << 22);
    let reader = Decryptor::new(header, cipher.clone());
    for index in reader.chunks_of(offset, len).take(4) {
        let _ = reader.open(index, stored.to_vec(), offset, len);
        let _ = header.open_chunk(&cipher, index, stored.to_vec());
    }
});
