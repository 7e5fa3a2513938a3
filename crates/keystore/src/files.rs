//! Byte-level helpers shared by the key store and the embedded provider:
//! frames (`u32 length | u32 CRC32C | body`), whole-file reads, and the
//! atomic replace (write a temporary, fsync, rename, fsync the directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use eventlog::file::vfs::{Vfs, parent};

use crate::error::KeyError;

pub const FRAME_HEADER: usize = 8;
/// Suffix of files being written; any found at open are leftovers of an
/// interrupted replace and are removed (the file they would replace is
/// still whole).
pub const TMP_SUFFIX: &str = ".tmp";

pub fn push_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// What is at an offset of a framed file.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame whose checksum matches: body range and next offset.
    Whole { body: std::ops::Range<usize>, next: usize },
    /// Nothing more.
    End,
    /// Bytes that are not a whole, valid frame.
    Bad(&'static str),
}

pub fn frame_at(bytes: &[u8], at: usize, max_body: usize) -> Frame {
    if at == bytes.len() {
        return Frame::End;
    }
    if bytes.len() - at < FRAME_HEADER {
        return Frame::Bad("frame header cut short");
    }
    let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
    if len == 0 || len > max_body {
        return Frame::Bad("frame length out of range");
    }
    let start = at + FRAME_HEADER;
    if bytes.len() - start < len {
        return Frame::Bad("frame body cut short");
    }
    if crc32c::crc32c(&bytes[start..start + len]) != crc {
        return Frame::Bad("frame checksum mismatch");
    }
    Frame::Whole { body: start..start + len, next: start + len }
}

/// True when a whole, valid frame starts anywhere after `at`: then a bad
/// frame at `at` is damage inside the file, not a torn last append.
pub fn valid_frame_after(bytes: &[u8], at: usize, max_body: usize) -> bool {
    (at + 1..bytes.len()).any(|off| matches!(frame_at(bytes, off, max_body), Frame::Whole { .. }))
}

/// Something an open found and settled (or, read-only, would settle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub offset: u64,
    pub action: FindingAction,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindingAction {
    /// A damaged copy of a record (or a damaged magic number) rewritten
    /// from the intact copy.
    Repaired,
    /// The bytes of an append that never returned, cut off.
    TornTailCut,
    /// A format 1 file rewritten in format 2.
    Migrated,
    /// A leftover of an interrupted replace or tenant shred, removed.
    LeftoverRemoved,
}

impl FindingAction {
    /// Whether the finding is damage (a verifier fails on it) rather than
    /// the expected trace of a crash or an old format.
    pub fn is_damage(self) -> bool {
        matches!(self, Self::Repaired | Self::TornTailCut)
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.action {
            FindingAction::Repaired => "one copy damaged, the other whole: rewritten from it at open",
            FindingAction::TornTailCut => "torn last append, never acknowledged: cut off at open",
            FindingAction::Migrated => "format 1: rewritten as format 2 at open",
            FindingAction::LeftoverRemoved => "leftover of an interrupted write: removed at open",
        };
        write!(f, "{} at offset {}: {} ({action})", self.path.display(), self.offset, self.what)
    }
}

/// Format v2 writes every record twice, back to back (a *twin*): one
/// write and one fdatasync as before, and a flipped byte, a rotted sector of
/// one copy or a damaged length field leaves the other copy whole.
pub fn push_twin(out: &mut Vec<u8>, body: &[u8]) {
    push_frame(out, body);
    push_frame(out, body);
}

/// What is at an offset of a file of twin frames.
#[derive(Debug, PartialEq, Eq)]
pub enum Twin {
    /// A record with at least one whole copy: the body of a whole copy,
    /// where the next record starts, and what was wrong with the other
    /// copy (`None` when both are whole and equal).
    Whole { body: std::ops::Range<usize>, next: usize, damaged: Option<&'static str> },
    /// Nothing more.
    End,
    /// Neither copy is whole: a torn last append if nothing valid follows.
    Bad(&'static str),
    /// Both copies are whole but differ: no crash or single flip does that.
    Conflict,
}

pub fn twin_at(bytes: &[u8], at: usize, max_body: usize) -> Twin {
    match frame_at(bytes, at, max_body) {
        Frame::End => Twin::End,
        Frame::Whole { body, next } => {
            let twin_end = next + FRAME_HEADER + body.len();
            match frame_at(bytes, next, max_body) {
                Frame::Whole { body: second, next: end } if end == twin_end => {
                    if bytes[second] == bytes[body.clone()] {
                        Twin::Whole { body, next: twin_end, damaged: None }
                    } else {
                        Twin::Conflict
                    }
                }
                Frame::Whole { .. } => Twin::Conflict,
                Frame::End => Twin::Whole { body, next: bytes.len(), damaged: Some("second copy missing") },
                Frame::Bad(_) if twin_end > bytes.len() => {
                    Twin::Whole { body, next: bytes.len(), damaged: Some("second copy cut short") }
                }
                Frame::Bad(why) => Twin::Whole { body, next: twin_end, damaged: Some(second_copy_reason(why)) },
            }
        }
        Frame::Bad(why) => {
            // The first copy is damaged (perhaps its length): the second is
            // the frame of length L that starts right after L body bytes.
            for len in 1..=max_body {
                let second = at + FRAME_HEADER + len;
                if second + FRAME_HEADER > bytes.len() {
                    break;
                }
                if bytes[second..second + 4] != (len as u32).to_le_bytes() {
                    continue;
                }
                if let Frame::Whole { body, next } = frame_at(bytes, second, max_body) {
                    return Twin::Whole { body, next, damaged: Some(first_copy_reason(why)) };
                }
            }
            Twin::Bad(why)
        }
    }
}

fn second_copy_reason(why: &'static str) -> &'static str {
    match why {
        "frame length out of range" | "frame body cut short" => "second copy: length damaged",
        _ => "second copy: checksum mismatch",
    }
}

fn first_copy_reason(why: &'static str) -> &'static str {
    match why {
        "frame header cut short" => "first copy: header damaged",
        "frame length out of range" => "first copy: length damaged",
        "frame body cut short" => "first copy: length damaged",
        _ => "first copy: checksum mismatch",
    }
}

/// Which format a file's magic number says it is in, given the kind's v1
/// and v2 magics. A v2 magic with one damaged byte is still v2 (the magics
/// of the two versions differ in every byte, so one flip cannot make one
/// look like the other); the flag says it needs repair.
pub fn magic_version(bytes: &[u8], v1: &[u8; 8], v2: &[u8; 8]) -> Option<(u32, bool)> {
    let magic = bytes.get(..8)?;
    if magic == v2 {
        return Some((2, false));
    }
    if magic == v1 {
        return Some((1, false));
    }
    let differing = magic.iter().zip(v2).filter(|(a, b)| a != b).count();
    (differing == 1).then_some((2, true))
}

/// A single-record file in format v2: magic, then one twin. Returns the
/// body and, if a copy (or the magic) was damaged, what was.
pub fn single_twin_body<'a>(
    path: &Path,
    bytes: &'a [u8],
    max_body: usize,
) -> Result<(&'a [u8], Option<&'static str>), KeyError> {
    match twin_at(bytes, 8, max_body) {
        Twin::Whole { body, next, damaged } if next == bytes.len() => Ok((&bytes[body], damaged)),
        Twin::Whole { .. } => Err(KeyError::corrupt(path, "trailing bytes after the record")),
        Twin::End => Err(KeyError::corrupt(path, "no record after the magic number")),
        Twin::Bad(why) => Err(KeyError::corrupt(path, format!("both copies of the record are damaged ({why})"))),
        Twin::Conflict => Err(KeyError::corrupt(path, "the two copies of the record differ")),
    }
}

/// A single-record file in either format: the body, and what needs repair
/// (a damaged copy or magic, or the old format, which has no second copy).
pub fn read_single<'a>(
    path: &Path,
    bytes: &'a [u8],
    v1: &[u8; 8],
    v2: &[u8; 8],
    max_body: usize,
) -> Result<(&'a [u8], Option<&'static str>), KeyError> {
    match magic_version(bytes, v1, v2) {
        Some((1, _)) => single_frame_body(path, bytes, v1, max_body).map(|b| (b, Some("format v1 (no second copy)"))),
        Some((_, magic_damaged)) => {
            let (body, damaged) = single_twin_body(path, bytes, max_body)?;
            Ok((body, damaged.or(magic_damaged.then_some("magic number damaged"))))
        }
        None => Err(KeyError::corrupt(path, "wrong magic number (not this kind of file, or damaged)")),
    }
}

pub fn single_twin_file(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    push_twin(&mut out, body);
    out
}

pub fn read_file(vfs: &Arc<dyn Vfs>, path: &Path) -> Result<Vec<u8>, KeyError> {
    let file = vfs.open(path, false).map_err(|e| KeyError::io(path, e))?;
    let len = file.len().map_err(|e| KeyError::io(path, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_at(0, &mut buf).map_err(|e| KeyError::io(path, e))?;
    Ok(buf)
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file
/// or the new one, never a mix, and no other copy of either.
pub fn replace_file(vfs: &Arc<dyn Vfs>, path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = tmp_path(path);
    let file = vfs.open(&tmp, true).map_err(|e| KeyError::io(&tmp, e))?;
    file.set_len(0).map_err(|e| KeyError::io(&tmp, e))?;
    file.write_at(0, bytes).map_err(|e| KeyError::io(&tmp, e))?;
    file.sync_data().map_err(|e| KeyError::io(&tmp, e))?;
    drop(file);
    vfs.rename(&tmp, path).map_err(|e| KeyError::io(path, e))?;
    let dir = parent(path);
    vfs.sync_dir(&dir).map_err(|e| KeyError::io(&dir, e))
}

/// Removes a file and makes the removal durable.
pub fn remove_file(vfs: &Arc<dyn Vfs>, path: &Path) -> Result<(), KeyError> {
    vfs.remove(path).map_err(|e| KeyError::io(path, e))?;
    let dir = parent(path);
    vfs.sync_dir(&dir).map_err(|e| KeyError::io(&dir, e))
}

/// A file holding a magic number and exactly one frame: its body.
pub fn single_frame_body<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: &[u8; 8],
    max_body: usize,
) -> Result<&'a [u8], KeyError> {
    if bytes.len() < magic.len() || &bytes[..magic.len()] != magic {
        return Err(KeyError::corrupt(path, "wrong magic number (not this kind of file, or damaged)"));
    }
    match frame_at(bytes, magic.len(), max_body) {
        Frame::Whole { body, next } if next == bytes.len() => Ok(&bytes[body]),
        Frame::Whole { .. } => Err(KeyError::corrupt(path, "trailing bytes after the record")),
        Frame::End => Err(KeyError::corrupt(path, "no record after the magic number")),
        Frame::Bad(why) => Err(KeyError::corrupt(path, why)),
    }
}

pub fn uuid_field(path: &Path, what: &str, bytes: &[u8]) -> Result<uuid::Uuid, KeyError> {
    uuid::Uuid::from_slice(bytes)
        .map_err(|_| KeyError::corrupt(path, format!("{what} is {} bytes, not 16", bytes.len())))
}
