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

pub fn single_frame_file(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    push_frame(&mut out, body);
    out
}

pub fn uuid_field(path: &Path, what: &str, bytes: &[u8]) -> Result<uuid::Uuid, KeyError> {
    uuid::Uuid::from_slice(bytes)
        .map_err(|_| KeyError::corrupt(path, format!("{what} is {} bytes, not 16", bytes.len())))
}
