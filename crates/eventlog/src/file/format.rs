//! Byte layout of the file log: segment headers, frames, digests, the hash
//! chain and the checkpoint signature message. docs/event-log-format.md is
//! the prose version of this file; the golden test keeps them honest.

use std::sync::Arc;

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

/// Little-endian integers from slices whose length the caller checked.
fn le_u32(b: &[u8]) -> u32 {
    b.iter().take(4).rev().fold(0, |v, &x| (v << 8) | u32::from(x))
}

fn le_u64(b: &[u8]) -> u64 {
    b.iter().take(8).rev().fold(0, |v, &x| (v << 8) | u64::from(x))
}

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
        return Err(format!("segment header is {} bytes, expected {SEGMENT_HEADER_LEN}", bytes.len()));
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let version = le_u32(&bytes[8..12]);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    if bytes[12..16] != [0; 4] {
        return Err("reserved segment header bytes are not zero".into());
    }
    let number = le_u64(&bytes[16..24]);
    if number != expected_number {
        return Err(format!("segment header says number {number}, file name says {expected_number}"));
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
    // A Vec grows as needed, so raw encoding cannot run out of room.
    frame.encode_raw(out);
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
        Ok(body_len) => decode_body(bytes::Bytes::copy_from_slice(&buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + body_len])),
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
        Ok(frame) if frame.body.is_some() && frame.chain.len() == 32 => FrameParse::Frame { frame, len },
        Ok(_) => FrameParse::Invalid("frame has no body or a malformed chain value".into()),
        Err(e) => FrameParse::Invalid(format!("frame does not decode: {e}")),
    }
}

/// Checks magic, length and checksum; returns the body length.
fn parse_frame_header(buf: &[u8]) -> Result<usize, FrameParse> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameParse::Incomplete);
    }
    let magic = le_u32(&buf[0..4]);
    if magic != FRAME_MAGIC {
        return Err(FrameParse::Invalid(format!("bad frame magic {magic:#010x}")));
    }
    let body_len = le_u32(&buf[4..8]) as usize;
    if body_len > MAX_FRAME_BODY {
        return Err(FrameParse::Invalid(format!("frame length {body_len} is over the limit {MAX_FRAME_BODY}")));
    }
    let crc = le_u32(&buf[8..12]);
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
    if buf.len() < FRAME_HEADER_LEN || u32::from_le_bytes(buf[0..4].try_into().ok()?) != FRAME_MAGIC {
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
                    Some(proto::log::entry::Kind::Redacted(r)) if r.digest.len() == 32 => h.update(&r.digest),
                    Some(proto::log::entry::Kind::Redacted(_)) => {
                        return Err("redacted entry digest is not 32 bytes".into());
                    }
                    None => return Err("batch entry has no content".into()),
                }
            }
        }
        Some(frame::Body::Metadata(bytes)) => return Ok(metadata_digest(bytes)),
        Some(frame::Body::Checkpoint(bytes)) => return Ok(checkpoint_digest(bytes)),
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
pub fn checkpoint_message(chain: &[u8], frame_count: u64, next_position: u64, signed_at_micros: i64) -> Vec<u8> {
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
    let len = le_u32(&bytes[8..12]) as usize;
    let crc = le_u32(&bytes[12..16]);
    let body = bytes.get(16..16 + len).ok_or("head.sig is truncated")?;
    if crc32c::crc32c(body) != crc {
        return Err("head.sig checksum mismatch".into());
    }
    proto::log::Checkpoint::decode(body).map_err(|e| format!("head.sig does not decode: {e}"))
}

/// The fields of a stored event the index needs, read without decoding the
/// rest (payload, sealed fields): what `open` does for every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKeys<'a> {
    pub event_id: &'a [u8],
    pub stream: &'a str,
    pub version: u64,
    pub position: u64,
}

fn get_varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or("varint runs past the end")?;
        *at += 1;
        if shift == 63 && b > 1 {
            return Err("varint overflows 64 bits".into());
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint is too long".into())
}

/// Scans an encoded `StoredEvent` for its id, stream, version and position.
pub fn event_keys(buf: &[u8]) -> Result<EventKeys<'_>, String> {
    let mut keys = EventKeys { event_id: &[], stream: "", version: 0, position: 0 };
    let mut at = 0;
    while at < buf.len() {
        let key = get_varint(buf, &mut at)?;
        let (tag, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = get_varint(buf, &mut at)?;
                match tag {
                    3 => keys.version = v,
                    4 => keys.position = v,
                    _ => {}
                }
            }
            2 => {
                let len = get_varint(buf, &mut at)? as usize;
                let field =
                    buf.get(at..at.checked_add(len).ok_or("length overflows")?).ok_or("field runs past the end")?;
                at += len;
                match tag {
                    1 => keys.event_id = field,
                    2 => keys.stream = std::str::from_utf8(field).map_err(|_| "stream is not utf-8")?,
                    _ => {}
                }
            }
            5 => at += 4,
            1 => at += 8,
            _ => return Err(format!("unsupported wire type {wire}")),
        }
    }
    if at != buf.len() {
        return Err("field runs past the end".into());
    }
    Ok(keys)
}

/// A length-delimited field's bytes at `at` (advanced past them).
fn get_len(buf: &[u8], at: &mut usize) -> Result<std::ops::Range<usize>, String> {
    let len = usize::try_from(get_varint(buf, at)?).map_err(|_| "length overflows")?;
    let end = at.checked_add(len).ok_or("length overflows")?;
    if end > buf.len() {
        return Err("field runs past the end".into());
    }
    let range = *at..end;
    *at = end;
    Ok(range)
}

/// A field key at `at`: (tag, wire type), refused as prost refuses it.
fn get_key(buf: &[u8], at: &mut usize) -> Result<(u64, u64), String> {
    let key = get_varint(buf, at)?;
    if key > u64::from(u32::MAX) {
        return Err(format!("invalid key {key}"));
    }
    let (tag, wire) = (key >> 3, key & 7);
    if tag == 0 {
        return Err("invalid tag 0".into());
    }
    Ok((tag, wire))
}

/// Skips a field of an unknown tag, as prost does (groups included, to the
/// same depth).
fn skip_field(buf: &[u8], at: &mut usize, tag: u64, wire: u64, depth: u32) -> Result<(), String> {
    match wire {
        0 => get_varint(buf, at).map(drop),
        1 | 5 => {
            *at += if wire == 1 { 8 } else { 4 };
            if *at > buf.len() { Err("field runs past the end".into()) } else { Ok(()) }
        }
        2 => get_len(buf, at).map(drop),
        3 => {
            if depth == 0 {
                return Err("recursion limit reached".into());
            }
            loop {
                let (inner, inner_wire) = get_key(buf, at)?;
                if inner_wire == 4 {
                    return if inner == tag { Ok(()) } else { Err("unexpected end group tag".into()) };
                }
                skip_field(buf, at, inner, inner_wire, depth - 1)?;
            }
        }
        4 => Err("unexpected end group tag".into()),
        _ => Err(format!("invalid wire type {wire}")),
    }
}

/// prost's recursion limit (a group or message nests at most this deep).
const DECODE_DEPTH: u32 = 100;

fn utf8<'a>(field: &str, b: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(b).map_err(|_| format!("{field} is not utf-8"))
}

fn uuid_field(field: &str, b: &[u8]) -> Result<Option<uuid::Uuid>, String> {
    if b.is_empty() {
        return Ok(None);
    }
    uuid::Uuid::from_slice(b).map(Some).map_err(|_| format!("{field} is {} bytes, not a 16-byte uuid", b.len()))
}

/// Decodes one stored `StoredEvent` straight into a [`crate::RecordedEvent`]:
/// what `StoredEvent::decode` and `RecordedEvent::from_stored` give (tested
/// against them), without the intermediate message. Ids become UUIDs
/// without a copy, `payload` and the sealed fields' bytes share `buf`, and
/// the stream name is taken from `last` when it is the same as the
/// previous event's (a batch is mostly one stream), so reading a page
/// allocates once per event rather than once per field.
pub fn decode_recorded(buf: &bytes::Bytes, last: &mut Option<Arc<str>>) -> Result<crate::RecordedEvent, String> {
    let b = buf.as_ref();
    let mut at = 0;
    let (mut id, mut stream, mut event_type) = (None, 0..0, 0..0);
    let (mut version, mut position, mut schema_version, mut recorded_at) = (0u64, 0u64, 0u32, 0i64);
    let (mut tenant_id, mut correlation_id, mut causation_id) = (None, None, None);
    let mut payload = 0..0;
    let mut sealed_fields = Vec::new();
    while at < b.len() {
        let (tag, wire) = get_key(b, &mut at)?;
        let expected = match tag {
            3 | 4 | 6 | 7 => 0,
            1 | 2 | 5 | 8..=12 => 2,
            _ => {
                skip_field(b, &mut at, tag, wire, DECODE_DEPTH)?;
                continue;
            }
        };
        if wire != expected {
            return Err(format!("field {tag} has wire type {wire}, expected {expected}"));
        }
        if wire == 0 {
            let v = get_varint(b, &mut at)?;
            match tag {
                3 => version = v,
                4 => position = v,
                6 => schema_version = v as u32,
                _ => recorded_at = v as i64,
            }
            continue;
        }
        let r = get_len(b, &mut at)?;
        match tag {
            1 => id = Some(r),
            // Every occurrence must be UTF-8, as for prost; the last one is
            // checked below, only when it is not the previous event's name.
            2 => {
                if !stream.is_empty() {
                    utf8("stream", &b[stream.clone()])?;
                }
                stream = r;
            }
            5 => event_type = utf8("event_type", &b[r.clone()]).map(|_| r)?,
            8 => tenant_id = Some(r),
            9 => correlation_id = Some(r),
            10 => causation_id = Some(r),
            11 => payload = r,
            _ => sealed_fields.push(decode_sealed(buf, r, DECODE_DEPTH - 1)?),
        }
    }
    let stream = match last {
        Some(s) if s.as_bytes() == &b[stream.clone()] => s.clone(),
        _ => last.insert(Arc::from(utf8("stream", &b[stream])?)).clone(),
    };
    let opt = |field: &str, r: Option<std::ops::Range<usize>>| match r {
        Some(r) => uuid_field(field, &b[r]),
        None => Ok(None),
    };
    let event_id = opt("event_id", id.clone())?
        .ok_or_else(|| format!("event_id is {} bytes, not a 16-byte uuid", id.map_or(0, |r| r.len())))?;
    Ok(crate::RecordedEvent {
        stream,
        version,
        position,
        recorded_at_micros: recorded_at,
        event: crate::NewEvent {
            id: event_id,
            event_type: utf8("event_type", &b[event_type])?.to_owned(),
            schema_version,
            tenant_id: opt("tenant_id", tenant_id)?,
            correlation_id: opt("correlation_id", correlation_id)?,
            causation_id: opt("causation_id", causation_id)?,
            payload: buf.slice(payload),
            sealed_fields,
        },
    })
}

fn decode_sealed(
    buf: &bytes::Bytes,
    range: std::ops::Range<usize>,
    depth: u32,
) -> Result<proto::storage::SealedField, String> {
    let b = &buf[..range.end];
    let mut at = range.start;
    let mut f = proto::storage::SealedField::default();
    while at < b.len() {
        let (tag, wire) = get_key(b, &mut at)?;
        if !(1..=4).contains(&tag) {
            skip_field(b, &mut at, tag, wire, depth)?;
            continue;
        }
        if wire != 2 {
            return Err(format!("sealed field {tag} has wire type {wire}, expected 2"));
        }
        let r = get_len(b, &mut at)?;
        match tag {
            1 => f.field = utf8("sealed field name", &b[r])?.to_owned(),
            2 => f.key_id = buf.slice(r),
            3 => f.nonce = buf.slice(r),
            _ => f.ciphertext = buf.slice(r),
        }
    }
    Ok(f)
}

/// Length of a protobuf varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Key byte of a length-delimited field (tags below 16 only).
const fn len_key(tag: u8) -> u8 {
    (tag << 3) | 2
}

/// Key byte of a varint field (tags below 16 only).
const fn varint_key(tag: u8) -> u8 {
    tag << 3
}

fn len_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_field_len(v: u64) -> usize {
    if v == 0 { 0 } else { 1 + varint_len(v) }
}

fn put_len_field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    if !bytes.is_empty() {
        out.push(len_key(tag));
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

fn put_varint_field(out: &mut Vec<u8>, tag: u8, v: u64) {
    if v != 0 {
        out.push(varint_key(tag));
        put_varint(out, v);
    }
}

fn sealed_field_len(f: &proto::storage::SealedField) -> usize {
    [f.field.len(), f.key_id.len(), f.nonce.len(), f.ciphertext.len()]
        .into_iter()
        .filter(|&n| n > 0)
        .map(len_field_len)
        .sum()
}

/// Encoded length of the `StoredEvent` for `event` at these coordinates:
/// exactly what prost would produce.
pub fn stored_event_len(event: &crate::NewEvent, stream: &str, version: u64, position: u64, at_micros: i64) -> usize {
    let opt = |id: Option<uuid::Uuid>| if id.is_some() { len_field_len(16) } else { 0 };
    let strlen = |n: usize| if n > 0 { len_field_len(n) } else { 0 };
    len_field_len(16)
        + strlen(stream.len())
        + varint_field_len(version)
        + varint_field_len(position)
        + strlen(event.event_type.len())
        + varint_field_len(event.schema_version as u64)
        + varint_field_len(at_micros as u64)
        + opt(event.tenant_id)
        + opt(event.correlation_id)
        + opt(event.causation_id)
        + strlen(event.payload.len())
        + event.sealed_fields.iter().map(|f| len_field_len(sealed_field_len(f))).sum::<usize>()
}

/// Encodes the `StoredEvent` for `event` into `out` without building the
/// message: byte-for-byte what prost encodes (tested against it).
pub fn encode_stored_event(
    out: &mut Vec<u8>,
    event: &crate::NewEvent,
    stream: &str,
    version: u64,
    position: u64,
    at_micros: i64,
) {
    put_len_field(out, 1, event.id.as_bytes());
    put_len_field(out, 2, stream.as_bytes());
    put_varint_field(out, 3, version);
    put_varint_field(out, 4, position);
    put_len_field(out, 5, event.event_type.as_bytes());
    put_varint_field(out, 6, event.schema_version as u64);
    put_varint_field(out, 7, at_micros as u64);
    for (tag, id) in [(8, event.tenant_id), (9, event.correlation_id), (10, event.causation_id)] {
        if let Some(id) = id {
            put_len_field(out, tag, id.as_bytes());
        }
    }
    put_len_field(out, 11, &event.payload);
    for f in &event.sealed_fields {
        out.push(len_key(12));
        put_varint(out, sealed_field_len(f) as u64);
        put_len_field(out, 1, f.field.as_bytes());
        put_len_field(out, 2, &f.key_id);
        put_len_field(out, 3, &f.nonce);
        put_len_field(out, 4, &f.ciphertext);
    }
}

/// Bytes one event adds to a batch frame's body beyond its stored length:
/// the `Entry` wrapper and the repeated-field key.
pub fn entry_overhead(stored_len: usize) -> usize {
    let entry_len = len_field_len(stored_len);
    len_field_len(entry_len) - stored_len
}

/// Appends one `Entry { event }` of a `Batch` to `body` and returns the
/// range of the event's bytes in it (what the chain hashes).
pub fn encode_batch_entry(
    body: &mut Vec<u8>,
    event: &crate::NewEvent,
    stream: &str,
    version: u64,
    position: u64,
    at_micros: i64,
) -> std::ops::Range<usize> {
    let stored_len = stored_event_len(event, stream, version, position, at_micros);
    body.push(len_key(1));
    put_varint(body, len_field_len(stored_len) as u64);
    body.push(len_key(1));
    put_varint(body, stored_len as u64);
    let start = body.len();
    encode_stored_event(body, event, stream, version, position, at_micros);
    debug_assert_eq!(body.len() - start, stored_len);
    start..body.len()
}

/// Frames a batch whose `Batch` body was built with [`encode_batch_entry`]:
/// byte-for-byte what `encode_frame` gives for the same `Frame`.
pub fn encode_batch_frame(out: &mut Vec<u8>, group_start: u64, chain: &[u8; 32], batch_body: &[u8]) -> usize {
    let body_len = varint_field_len(group_start) + len_field_len(32) + len_field_len(batch_body.len());
    let start = out.len();
    out.reserve(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    put_varint_field(out, 1, group_start);
    put_len_field(out, 2, chain);
    out.push(len_key(3));
    put_varint(out, batch_body.len() as u64);
    out.extend_from_slice(batch_body);
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Offset of the 32 chain bytes inside an encoded frame (header included):
/// `group_start` (field 1, omitted when 0) comes first, then the chain.
pub fn chain_offset_in_frame(group_start: u64) -> usize {
    FRAME_HEADER_LEN + varint_field_len(group_start) + 2
}

/// Finishes a frame encoded with a zero chain: writes `chain` and the CRC.
pub fn seal_frame(frame: &mut [u8], group_start: u64, chain: &[u8; 32]) {
    let at = chain_offset_in_frame(group_start);
    frame[at..at + 32].copy_from_slice(chain);
    let crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// The digest of a metadata frame from its encoded `StreamMetadataChange`.
pub fn metadata_digest(message: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"pypes/metadata/v1\0");
    h.update(message);
    h.finalize().into()
}

/// The digest of a checkpoint frame from its encoded `Checkpoint` bytes.
pub fn checkpoint_digest(message: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"pypes/checkpoint/v1\0");
    h.update(message);
    h.finalize().into()
}

/// Decodes a frame's body without checking its CRC (for frames this
/// process is still building, whose CRC is not written yet).
pub fn decode_frame_unchecked(frame: &[u8]) -> Option<Frame> {
    Frame::decode(frame.get(FRAME_HEADER_LEN..)?).ok()
}

/// The running digest of a batch frame (see [`frame_digest`]).
pub fn batch_digest_start() -> Sha256 {
    let mut h = Sha256::new();
    h.update(b"pypes/batch/v1\0");
    h
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
            let _ = event_keys(&data);
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

    fn arb_event() -> impl Strategy<Value = (crate::NewEvent, String, u64, u64, i64)> {
        (
            any::<u128>(),
            "[a-zA-Z]{1,20}",
            any::<u32>(),
            prop::option::of(any::<u128>()),
            prop::option::of(any::<u128>()),
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(("[a-z]{0,8}", prop::collection::vec(any::<u8>(), 0..40)), 0..3),
            (
                "[a-z0-9-]{1,40}",
                prop_oneof![Just(0u64), any::<u64>()],
                prop_oneof![Just(0u64), any::<u64>()],
                any::<i64>(),
            ),
        )
            .prop_map(|(id, kind, schema, tenant, corr, payload, sealed, (stream, version, position, at))| {
                let event = crate::NewEvent {
                    id: uuid::Uuid::from_u128(id),
                    event_type: kind,
                    schema_version: schema,
                    tenant_id: tenant.map(uuid::Uuid::from_u128),
                    correlation_id: corr.map(uuid::Uuid::from_u128),
                    causation_id: None,
                    payload: payload.into(),
                    sealed_fields: sealed
                        .into_iter()
                        .map(|(field, c)| proto::storage::SealedField {
                            field,
                            key_id: c.iter().take(16).copied().collect::<Vec<u8>>().into(),
                            nonce: Default::default(),
                            ciphertext: c.into(),
                        })
                        .collect(),
                };
                (event, stream, version, position, at)
            })
    }

    proptest! {
        #[test]
        fn hand_encoder_matches_prost((event, stream, version, position, at) in arb_event()) {
            let expected = event.to_stored(&stream, version, position, at).encode_to_vec();
            let mut got = Vec::new();
            encode_stored_event(&mut got, &event, &stream, version, position, at);
            prop_assert_eq!(stored_event_len(&event, &stream, version, position, at), expected.len());
            prop_assert_eq!(&got, &expected);
            let keys = event_keys(&got).unwrap();
            prop_assert_eq!(keys.event_id, event.id.as_bytes());
            prop_assert_eq!((keys.stream, keys.version, keys.position), (stream.as_str(), version, position));

            let mut body = Vec::new();
            let range = encode_batch_entry(&mut body, &event, &stream, version, position, at);
            prop_assert_eq!(&body[range], &expected[..]);
            let chain = [3u8; 32];
            let mut fast = Vec::new();
            encode_batch_frame(&mut fast, 4096, &chain, &body);
            let frame = Frame {
                group_start: 4096,
                chain: chain.to_vec().into(),
                body: Some(frame::Body::Batch(proto::log::Batch {
                    entries: vec![proto::log::Entry { kind: Some(proto::log::entry::Kind::Event(expected.into())) }],
                })),
            };
            let mut slow = Vec::new();
            encode_frame(&frame, &mut slow);
            prop_assert_eq!(fast, slow);
        }
    }

    #[test]
    fn frames_round_trip_and_truncations_are_incomplete() {
        let bytes = sample_frame();
        assert!(matches!(parse_frame(&bytes), FrameParse::Frame { len, .. } if len == bytes.len()));
        for cut in 0..bytes.len() {
            assert!(matches!(parse_frame(&bytes[..cut]), FrameParse::Incomplete), "cut at {cut}");
        }
    }

    /// What prost and `from_stored` make of `bytes` (the reference).
    fn reference(bytes: &[u8]) -> Option<crate::RecordedEvent> {
        let stored = proto::storage::StoredEvent::decode(bytes::Bytes::copy_from_slice(bytes)).ok()?;
        let stream: std::sync::Arc<str> = std::sync::Arc::from(stored.stream.as_str());
        crate::RecordedEvent::from_stored(stored, stream).ok()
    }

    proptest! {
        #[test]
        fn hand_decoder_matches_prost((event, stream, version, position, at) in arb_event(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_stored_event(&mut bytes, &event, &stream, version, position, at);
            let whole = bytes::Bytes::from(bytes.clone());
            let mut last = None;
            let got = decode_recorded(&whole, &mut last).unwrap();
            prop_assert_eq!(Some(got.clone()), reference(&bytes));
            // The next event of the same stream shares the name.
            let again = decode_recorded(&whole, &mut last).unwrap();
            prop_assert!(std::sync::Arc::ptr_eq(&got.stream, &again.stream));
            // Damaged: never a panic, and whatever prost accepts decodes the same.
            let mut damaged = bytes.clone();
            for (i, b) in &flips {
                let i = i.index(damaged.len());
                damaged[i] ^= b | 1;
            }
            damaged.truncate(cut.index(damaged.len() + 1));
            let ours = decode_recorded(&bytes::Bytes::from(damaged.clone()), &mut None).ok();
            prop_assert_eq!(ours, reference(&damaged));
        }
    }
}
