//! Byte layout of the file log: segment headers, frames, digests, the hash
//! chain and the checkpoint signature message. docs/event-log-format.md is
//! the prose version of this file; the golden test keeps them honest.

use prost::Message;
use proto::log::{Frame, frame};
use sha2::{Digest, Sha256};

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PYPESEG1";
/// Format version written in the segment header.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// magic (8) | format version u32 LE | reserved u32 (0) | segment number u64 LE
pub const SEGMENT_HEADER_LEN: u64 = 24;

/// First 4 bytes of every frame: "PFR1" read as little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"PFR1");
/// magic u32 LE | body length u32 LE | CRC-32C of the body u32 LE
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest frame body: a full batch plus room for envelopes.
pub const MAX_FRAME_BODY: usize = crate::MAX_BATCH_BYTES + (1 << 20);

/// The chain value before the first frame.
pub const GENESIS_CHAIN: [u8; 32] = [0; 32];

/// Magic of the `head.sig` file that holds the latest signed checkpoint.
pub const HEAD_MAGIC: [u8; 8] = *b"PYPESHD1";

pub fn segment_file_name(number: u64) -> String {
    format!("{number:010}.seg")
}

pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn encode_segment_header(number: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&number.to_le_bytes());
    h
}

/// Checks a segment header; `Err` says what is wrong.
pub fn check_segment_header(bytes: &[u8], expected_number: u64) -> Result<(), String> {
    if bytes.len() < SEGMENT_HEADER_LEN as usize {
        return Err(format!(
            "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
            bytes.len()
        ));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    if bytes[12..16] != [0; 4] {
        return Err("reserved segment header bytes are not zero".into());
    }
    let number = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if number != expected_number {
        return Err(format!(
            "segment header says number {number}, file name says {expected_number}"
        ));
    }
    Ok(())
}

/// Appends the framed encoding of `frame` to `out`; returns its length.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> usize {
    let body_len = frame.encoded_len();
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    frame.encode(out).expect("vec has room");
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Outcome of parsing the bytes at a frame boundary.
#[derive(Debug)]
pub enum FrameParse {
    /// A whole, valid frame of `len` bytes (header included).
    Frame { frame: Frame, len: usize },
    /// The bytes end before the frame does.
    Incomplete,
    /// The bytes are not a valid frame; the reason says why.
    Invalid(String),
}

/// Parses one frame from the start of `buf`. Never panics on any input.
pub fn parse_frame(buf: &[u8]) -> FrameParse {
    match parse_frame_header(buf) {
        Err(p) => p,
        Ok(body_len) => decode_body(bytes::Bytes::copy_from_slice(
            &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len],
        )),
    }
}

/// Parses a frame from a shared buffer without copying event bytes out of it.
pub fn parse_frame_shared(buf: &bytes::Bytes) -> FrameParse {
    match parse_frame_header(buf) {
        Err(p) => p,
        Ok(body_len) => decode_body(buf.slice(FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len)),
    }
}

fn decode_body(body: bytes::Bytes) -> FrameParse {
    let len = FRAME_HEADER_LEN + body.len();
    match Frame::decode(body) {
        Ok(frame) if frame.body.is_some() && frame.chain.len() == 32 => {
            FrameParse::Frame { frame, len }
        }
        Ok(_) => FrameParse::Invalid("frame has no body or a malformed chain value".into()),
        Err(e) => FrameParse::Invalid(format!("frame does not decode: {e}")),
    }
}

/// Checks magic, length and checksum; returns the body length.
fn parse_frame_header(buf: &[u8]) -> Result<usize, FrameParse> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameParse::Incomplete);
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if magic != FRAME_MAGIC {
        return Err(FrameParse::Invalid(format!(
            "bad frame magic {magic:#010x}"
        )));
    }
    let body_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if body_len > MAX_FRAME_BODY {
        return Err(FrameParse::Invalid(format!(
            "frame length {body_len} is over the limit {MAX_FRAME_BODY}"
        )));
    }
    let crc = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let Some(body) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len) else {
        return Err(FrameParse::Incomplete);
    };
    let actual = crc32c::crc32c(body);
    if actual != crc {
        return Err(FrameParse::Invalid(format!(
            "frame checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )));
    }
    Ok(body_len)
}

/// Length of the frame at the start of `buf` if its header is plausible.
pub fn peek_frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < FRAME_HEADER_LEN || u32::from_le_bytes(buf[0..4].try_into().ok()?) != FRAME_MAGIC
    {
        return None;
    }
    let body_len = u32::from_le_bytes(buf[4..8].try_into().ok()?) as usize;
    (body_len <= MAX_FRAME_BODY).then_some(FRAME_HEADER_LEN + body_len)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The digest of a frame's content, the input of the hash chain. It covers
/// the stored bytes of every event (or, once scavenged, their recorded
/// digest) so redaction leaves it unchanged, and not `group_start` or
/// `chain`, which are framing.
pub fn frame_digest(frame: &Frame) -> Result<[u8; 32], String> {
    let mut h = Sha256::new();
    match &frame.body {
        Some(frame::Body::Batch(batch)) => {
            h.update(b"pypes/batch/v1\0");
            for entry in &batch.entries {
                match &entry.kind {
                    Some(proto::log::entry::Kind::Event(bytes)) => h.update(sha256(bytes)),
                    Some(proto::log::entry::Kind::Redacted(r)) if r.digest.len() == 32 => {
                        h.update(&r.digest)
                    }
                    Some(proto::log::entry::Kind::Redacted(_)) => {
                        return Err("redacted entry digest is not 32 bytes".into());
                    }
                    None => return Err("batch entry has no content".into()),
                }
            }
        }
        Some(frame::Body::Metadata(bytes)) => {
            h.update(b"pypes/metadata/v1\0");
            h.update(bytes);
        }
        Some(frame::Body::Checkpoint(bytes)) => {
            h.update(b"pypes/checkpoint/v1\0");
            h.update(bytes);
        }
        None => return Err("frame has no body".into()),
    }
    Ok(h.finalize().into())
}

/// The next chain value: SHA-256(previous chain ‖ frame digest).
pub fn chain_next(previous: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(digest);
    h.finalize().into()
}

/// The exact bytes an Ed25519 checkpoint signature covers.
pub fn checkpoint_message(
    chain: &[u8],
    frame_count: u64,
    next_position: u64,
    signed_at_micros: i64,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + 32 + 24);
    m.extend_from_slice(b"pypes-log-checkpoint-v1\0");
    m.extend_from_slice(chain);
    m.extend_from_slice(&frame_count.to_le_bytes());
    m.extend_from_slice(&next_position.to_le_bytes());
    m.extend_from_slice(&signed_at_micros.to_le_bytes());
    m
}

/// Encodes `head.sig`: magic, then the checkpoint message bytes as framed.
pub fn encode_head(checkpoint: &proto::log::Checkpoint) -> Vec<u8> {
    let mut out = HEAD_MAGIC.to_vec();
    let body = checkpoint.encode_to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn decode_head(bytes: &[u8]) -> Result<proto::log::Checkpoint, String> {
    if bytes.len() < 16 || bytes[..8] != HEAD_MAGIC {
        return Err("bad head.sig magic".into());
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let body = bytes.get(16..16 + len).ok_or("head.sig is truncated")?;
    if crc32c::crc32c(body) != crc {
        return Err("head.sig checksum mismatch".into());
    }
    proto::log::Checkpoint::decode(body).map_err(|e| format!("head.sig does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    //! The decoder against arbitrary and mutated bytes (the fuzz target's
    //! property, run in CI on a budget).
    use super::*;
    use proptest::prelude::*;

    fn sample_frame() -> Vec<u8> {
        let frame = Frame {
            group_start: 24,
            chain: vec![1; 32].into(),
            body: Some(frame::Body::Metadata(vec![8, 1, 16, 2].into())),
        };
        let mut out = Vec::new();
        encode_frame(&frame, &mut out);
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            if let FrameParse::Frame { len, .. } = parse_frame(&data) {
                prop_assert!(len <= data.len());
            }
            let _ = decode_head(&data);
        }

        #[test]
        fn any_single_bit_flip_of_a_frame_is_rejected(bit in 0usize..(8 * 62)) {
            let mut bytes = sample_frame();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let accepted = matches!(parse_frame(&bytes), FrameParse::Frame { .. });
            prop_assert!(!accepted, "flipped bit {} was accepted", bit);
        }
    }

    #[test]
    fn frames_round_trip_and_truncations_are_incomplete() {
        let bytes = sample_frame();
        assert!(matches!(parse_frame(&bytes), FrameParse::Frame { len, .. } if len == bytes.len()));
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse_frame(&bytes[..cut]), FrameParse::Incomplete),
                "cut at {cut}"
            );
        }
    }
}
