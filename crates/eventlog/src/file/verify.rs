//! Offline verification of a file log by someone holding only the public
//! key: recomputes every frame digest and the hash chain, checks every
//! signed checkpoint, and checks that the log reaches the signed head.

use std::path::Path;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use prost::Message;
use proto::log::{Checkpoint, frame};

use super::format::{self, FrameParse, SEGMENT_HEADER_LEN};
use super::state::HEAD_FILE;
use super::vfs::Vfs;
use crate::LogError;

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: u64,
    pub frames: u64,
    pub events: u64,
    pub redacted_events: u64,
    pub checkpoints: u64,
    /// Frames after the last signed checkpoint: covered by the chain and
    /// the checksums, not yet by a signature.
    pub unsigned_tail_frames: u64,
    /// Whether `head.sig` was present and the log reaches it.
    pub signed_head_checked: bool,
    /// Whether the witness's copy of the signed head was present and the
    /// log reaches it.
    pub witness_checked: bool,
}

/// What a verification demands beyond the log itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The witness's copy of the signed head (see
    /// [`super::state::FileLogConfig::witness_path`]); checked like `head.sig`, and
    /// its absence is a failure unless `allow_missing_head`.
    pub witness: Option<std::path::PathBuf>,
    /// Demand `head.sig` (and the witness's copy, when given) on a log that
    /// holds frames: without it a truncated log cannot be told from a
    /// whole one.
    pub require_head: bool,
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt { file: file.to_path_buf(), offset, reason: reason.into() }
}

fn check_signature(key: &VerifyingKey, cp: &Checkpoint, file: &Path, offset: u64) -> Result<(), LogError> {
    let message = format::checkpoint_message(&cp.chain, cp.frame_count, cp.next_position, cp.signed_at_micros);
    let signature =
        Signature::from_slice(&cp.signature).map_err(|e| corrupt(file, offset, format!("malformed signature: {e}")))?;
    key.verify(&message, &signature)
        .map_err(|_| corrupt(file, offset, "checkpoint signature does not verify with the given public key"))
}

/// Verifies the log in `dir` (closed, or quiescent) against `key`.
pub fn verify_log(vfs: &dyn Vfs, dir: &Path, key: &VerifyingKey) -> Result<VerifyReport, LogError> {
    verify_log_visiting(vfs, dir, key, None)
}

/// [`verify_log`], handing every stored event (in log order, redacted ones
/// left out) to `visit` as it is checked; an event that does not decode,
/// or an error from `visit`, fails the verification. For checks layered on
/// the log, such as the audit streams' own hash links.
pub fn verify_log_visiting(
    vfs: &dyn Vfs,
    dir: &Path,
    key: &VerifyingKey,
    visit: Option<&mut dyn FnMut(crate::RecordedEvent) -> Result<(), String>>,
) -> Result<VerifyReport, LogError> {
    verify_log_with(vfs, dir, key, &VerifyOptions::default(), visit)
}

/// [`verify_log_visiting`] with [`VerifyOptions`]. Reads only.
pub fn verify_log_with(
    vfs: &dyn Vfs,
    dir: &Path,
    key: &VerifyingKey,
    options: &VerifyOptions,
    mut visit: Option<&mut dyn FnMut(crate::RecordedEvent) -> Result<(), String>>,
) -> Result<VerifyReport, LogError> {
    let segments_dir = dir.join("segments");
    let mut numbers: Vec<u64> = vfs
        .list(&segments_dir)
        .map_err(|e| LogError::io(format!("listing {}", segments_dir.display()), e))?
        .iter()
        .filter_map(|n| format::parse_segment_file_name(n))
        .collect();
    numbers.sort_unstable();
    let mut report = VerifyReport::default();
    let mut chain = format::GENESIS_CHAIN;
    // Chain value after each checkpoint frame, by frames before it.
    let mut checkpoint_chains = std::collections::HashMap::new();
    for (i, &number) in numbers.iter().enumerate() {
        let path = segments_dir.join(format::segment_file_name(number));
        if number != i as u64 {
            return Err(corrupt(&path, 0, format!("expected segment {i} here: a segment is missing")));
        }
        let io = |e| LogError::io(format!("reading {}", path.display()), e);
        let file = vfs.open(&path, false).map_err(io)?;
        let len = file.len().map_err(io)?;
        let mut bytes = vec![0u8; len as usize];
        file.read_at(0, &mut bytes).map_err(io)?;
        format::check_segment_header(&bytes, number).map_err(|r| corrupt(&path, 0, r))?;
        let bytes = bytes::Bytes::from(bytes);
        let mut offset = SEGMENT_HEADER_LEN as usize;
        while offset < bytes.len() {
            let (frame, frame_len) = match format::parse_frame_shared(&bytes.slice(offset..)) {
                FrameParse::Frame { frame, len } => (frame, len),
                FrameParse::Incomplete => {
                    return Err(corrupt(&path, offset as u64, "incomplete frame"));
                }
                FrameParse::Invalid(r) => return Err(corrupt(&path, offset as u64, r)),
            };
            let digest = format::frame_digest(&frame).map_err(|r| corrupt(&path, offset as u64, r))?;
            let expected = format::chain_next(&chain, &digest);
            if frame.chain[..] != expected {
                return Err(corrupt(
                    &path,
                    offset as u64,
                    "hash chain mismatch: the frame or one before it was altered",
                ));
            }
            match &frame.body {
                Some(frame::Body::Batch(batch)) => {
                    let mut last_stream = None;
                    for e in &batch.entries {
                        match &e.kind {
                            Some(proto::log::entry::Kind::Event(bytes)) => {
                                report.events += 1;
                                if let Some(visit) = visit.as_mut() {
                                    let event = format::decode_recorded(bytes, &mut last_stream).map_err(|r| {
                                        corrupt(&path, offset as u64, format!("event does not decode: {r}"))
                                    })?;
                                    visit(event).map_err(|r| corrupt(&path, offset as u64, r))?;
                                }
                            }
                            _ => report.redacted_events += 1,
                        }
                    }
                }
                Some(frame::Body::Checkpoint(cp_bytes)) => {
                    let cp = Checkpoint::decode(cp_bytes.clone())
                        .map_err(|e| corrupt(&path, offset as u64, format!("checkpoint does not decode: {e}")))?;
                    if cp.chain[..] != chain || cp.frame_count != report.frames {
                        return Err(corrupt(&path, offset as u64, "checkpoint does not match the chain before it"));
                    }
                    if cp.next_position != report.events + report.redacted_events {
                        return Err(corrupt(
                            &path,
                            offset as u64,
                            "checkpoint position does not match the events before it",
                        ));
                    }
                    check_signature(key, &cp, &path, offset as u64)?;
                    checkpoint_chains.insert(cp.frame_count, chain);
                    report.checkpoints += 1;
                    report.unsigned_tail_frames = 0;
                    chain = expected;
                    report.frames += 1;
                    offset += frame_len;
                    continue;
                }
                _ => {}
            }
            chain = expected;
            report.frames += 1;
            report.unsigned_tail_frames += 1;
            offset += frame_len;
        }
        report.segments += 1;
    }
    let head_path = dir.join(HEAD_FILE);
    let mut places = vec![(head_path, false)];
    if let Some(w) = &options.witness {
        places.push((w.clone(), true));
    }
    for (path, is_witness) in places {
        let form = if is_witness { HeadForm::Note } else { HeadForm::HeadSig };
        let Some(head) = read_signed_head(vfs, &path, key, form)? else {
            if options.require_head && report.frames > 0 {
                return Err(corrupt(
                    &path,
                    0,
                    "the signed head is missing although the log holds frames: a truncation could not be seen \
                     (pass --allow-missing-head to verify without it)",
                ));
            }
            continue;
        };
        match checkpoint_chains.get(&head.frame_count) {
            Some(c) if c[..] == head.chain[..] => {}
            Some(_) => {
                return Err(corrupt(&path, 0, "signed head does not match the log's checkpoint"));
            }
            None if head.frame_count >= report.frames => {
                return Err(corrupt(
                    &path,
                    0,
                    format!(
                        "signed head covers {} frames but the log holds {}: the log was truncated or rolled back",
                        head.frame_count + 1,
                        report.frames
                    ),
                ));
            }
            None => {
                return Err(corrupt(&path, 0, "signed head matches no checkpoint in the log"));
            }
        }
        if is_witness {
            report.witness_checked = true;
        } else {
            report.signed_head_checked = true;
        }
    }
    Ok(report)
}

/// How a signed head is stored: `head.sig`, or the witness's signed note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HeadForm {
    HeadSig,
    Note,
}

/// Reads a signed head file and checks it with `key` (for a note, its
/// note signature first), then the checkpoint's own signature: `Ok(None)`
/// when absent. The one reader of heads, for open and for verification.
pub(super) fn read_signed_head(
    vfs: &dyn Vfs,
    path: &Path,
    key: &VerifyingKey,
    form: HeadForm,
) -> Result<Option<Checkpoint>, LogError> {
    if !vfs.exists(path) {
        return Ok(None);
    }
    let io = |e| LogError::io(format!("reading {}", path.display()), e);
    let file = vfs.open(path, false).map_err(io)?;
    let mut bytes = vec![0u8; file.len().map_err(io)? as usize];
    file.read_at(0, &mut bytes).map_err(io)?;
    let head = match form {
        HeadForm::HeadSig => format::decode_head(&bytes),
        HeadForm::Note => super::note::decode(&bytes, key),
    }
    .map_err(|r| corrupt(path, 0, r))?;
    check_signature(key, &head, path, 0)?;
    Ok(Some(head))
}
