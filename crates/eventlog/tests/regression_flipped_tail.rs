//! Regression: a byte flipped near the end of the last segment after a
//! clean stop was first "repaired" as a torn tail (frames cut off) and only
//! then refused because `head.sig` covered more frames than remained, so
//! the refused start destroyed the evidence and acknowledged frames. Now
//! the signed heads (`head.sig` and the witness's copy) are checked before
//! anything is written, a frame they cover is never cut, a whole frame
//! whose checksum fails is refused even when no head covers it (it was
//! damaged, not torn), and a refused open changes no file. Deleting
//! `head.sig` with the tail is seen through the witness, and the verifier
//! fails on a missing head unless told to allow it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use eventlog::file::format::{self, FrameParse};
use eventlog::file::sim::{CrashMode, SimVfs};
use eventlog::file::vfs::Vfs;
use eventlog::file::{FileLog, FileLogConfig, VerifyOptions, verify_log_with};
use eventlog::{EventFilter, EventLog, ExpectedVersion, LogError, NewEvent};

const DIR: &str = "/d/log";
const WITNESS: &str = "/other-volume/witness";
const SEGMENT: &str = "/d/log/segments/0000000000.seg";

fn config(vfs: &SimVfs, witness: bool) -> FileLogConfig {
    let mut c = FileLogConfig::new(SigningKey::from_bytes(&[5; 32]));
    c.vfs = Arc::new(vfs.clone());
    c.checkpoint_interval = std::time::Duration::from_secs(3600);
    c.checkpoint_every_frames = 1_000_000;
    if witness {
        c.witness_dir = Some(WITNESS.into());
    }
    c
}

fn files(vfs: &SimVfs) -> BTreeMap<PathBuf, Vec<u8>> {
    vfs.all_file_bytes().into_iter().collect()
}

/// Writes `n` acknowledged appends; closes cleanly (a signed head covers
/// all) or not (the power is cut right after the last acknowledgement:
/// no head covers the last frames).
fn log_with(n: usize, clean: bool, witness: bool) -> SimVfs {
    let vfs = SimVfs::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let log = FileLog::open(DIR, config(&vfs, witness)).unwrap();
        for i in 0..n {
            log.append("s-1", ExpectedVersion::Any, vec![NewEvent::new("E", format!("acknowledged {i}").into_bytes())])
                .await
                .unwrap();
            if i == 0 {
                log.checkpoint().await.unwrap();
            }
        }
        if clean {
            log.close();
        } else {
            // Power off before the log is dropped: no closing checkpoint.
            vfs.cut_power_after(1);
            drop(log);
        }
    });
    if clean { vfs } else { vfs.crash(CrashMode::KeepUnsynced) }
}

fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = format::SEGMENT_HEADER_LEN as usize;
    let mut out = Vec::new();
    while let FrameParse::Frame { len, .. } = format::parse_frame(&bytes[at..]) {
        out.push((at, len));
        at += len;
        if at >= bytes.len() {
            break;
        }
    }
    out
}

fn events(vfs: &SimVfs, witness: bool) -> Result<usize, LogError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let log = FileLog::open(DIR, config(vfs, witness))?;
    let n = rt.block_on(log.read_all(0, usize::MAX, &EventFilter::all())).unwrap().events.len();
    log.close();
    Ok(n)
}

#[test]
fn a_flip_in_the_last_frames_after_a_clean_stop_is_refused_and_nothing_is_cut() {
    let pristine = log_with(6, true, false);
    let bytes = files(&pristine)[&PathBuf::from(SEGMENT)].clone();
    let (last_batch, len) = frames(&bytes).into_iter().rev().nth(1).unwrap(); // before the closing checkpoint
    for byte in last_batch..bytes.len() {
        let vfs = pristine.crash(CrashMode::KeepUnsynced);
        vfs.flip_bit(SEGMENT.as_ref(), byte as u64 * 8 + 3).unwrap();
        let damaged = files(&vfs);
        let err = events(&vfs, false).expect_err("a damaged signed frame is refused");
        let LogError::Corrupt { file, offset, .. } = &err else { panic!("byte {byte}: {err}") };
        assert_eq!(file, &PathBuf::from(SEGMENT), "byte {byte}: {err}");
        assert!(*offset as usize >= last_batch, "byte {byte}: {err}");
        assert_eq!(files(&vfs), damaged, "byte {byte}: the refused open changed a file");
    }
    assert!(len > 0);
}

#[test]
fn a_flip_in_an_unsigned_acknowledged_last_frame_is_refused_not_cut() {
    let pristine = log_with(5, false, false);
    let bytes = files(&pristine)[&PathBuf::from(SEGMENT)].clone();
    let (last, len) = *frames(&bytes).last().unwrap();
    assert_eq!(last + len, bytes.len(), "the crash kept the whole last frame");
    assert_eq!(frames(&bytes).len(), 6, "5 appends and one checkpoint after the first: the last 4 are unsigned");
    assert_eq!(events(&pristine.crash(CrashMode::KeepUnsynced), false).unwrap(), 5);
    // Every byte of the last frame: magic, length, checksum, body.
    for byte in last..bytes.len() {
        let vfs = pristine.crash(CrashMode::KeepUnsynced);
        vfs.flip_bit(SEGMENT.as_ref(), byte as u64 * 8 + 1).unwrap();
        let damaged = files(&vfs);
        match events(&vfs, false) {
            Err(LogError::Corrupt { file, .. }) => assert_eq!(file, PathBuf::from(SEGMENT)),
            Err(other) => panic!("byte {byte}: {other}"),
            Ok(n) => panic!("byte {byte}: opened with {n} events: an acknowledged frame was cut or served damaged"),
        }
        assert_eq!(files(&vfs), damaged, "byte {byte}: the refused open changed a file");
    }
}

#[test]
fn a_torn_last_frame_is_still_cut() {
    let pristine = log_with(5, false, false);
    let bytes = files(&pristine)[&PathBuf::from(SEGMENT)].clone();
    let (last, len) = *frames(&bytes).last().unwrap();
    // Cut inside the frame; and its last sector unwritten (zeros).
    for shape in 0..2 {
        let vfs = pristine.crash(CrashMode::KeepUnsynced);
        let f = vfs.open(SEGMENT.as_ref(), false).unwrap();
        if shape == 0 {
            f.set_len((last + len / 2) as u64).unwrap();
        } else {
            // The frame's part of its last sector never reached the disk.
            let start = last.max((last + len - 1) / 512 * 512);
            f.write_at(start as u64, &vec![0; last + len - start]).unwrap();
        }
        f.sync_data().unwrap();
        assert_eq!(events(&vfs, false).unwrap(), 4, "shape {shape}: the torn append goes, the rest stays");
    }
}

#[test]
fn deleting_the_head_and_cutting_the_tail_is_seen_through_the_witness() {
    let pristine = log_with(6, true, true);
    let bytes = files(&pristine)[&PathBuf::from(SEGMENT)].clone();
    let witness_files: Vec<_> = files(&pristine).into_keys().filter(|p| p.starts_with(WITNESS)).collect();
    assert_eq!(witness_files.len(), 1, "the witness holds the head: {witness_files:?}");
    let (last_batch, _) = frames(&bytes).into_iter().rev().nth(1).unwrap();
    let vfs = pristine.crash(CrashMode::KeepUnsynced);
    vfs.remove(format!("{DIR}/head.sig").as_ref()).unwrap();
    vfs.open(SEGMENT.as_ref(), false).unwrap().set_len(last_batch as u64).unwrap();
    let before = files(&vfs);
    let err = events(&vfs, true).unwrap_err();
    assert!(err.to_string().contains("truncated or rolled back"), "{err}");
    assert_eq!(files(&vfs), before);
    // The verifier: with the witness it fails; without it, a missing head
    // fails unless allowed.
    let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
    let with_witness = VerifyOptions { witness: Some(witness_files[0].clone()), require_head: true };
    assert!(verify_log_with(&vfs, DIR.as_ref(), &key, &with_witness, None).is_err());
    let strict = VerifyOptions { witness: None, require_head: true };
    let err = verify_log_with(&vfs, DIR.as_ref(), &key, &strict, None).unwrap_err();
    assert!(err.to_string().contains("--allow-missing-head"), "{err}");
    let lenient = VerifyOptions { witness: None, require_head: false };
    let report = verify_log_with(&vfs, DIR.as_ref(), &key, &lenient, None).unwrap();
    assert!(!report.signed_head_checked);
    // The pristine log verifies against both copies.
    let report = verify_log_with(&pristine, DIR.as_ref(), &key, &with_witness, None).unwrap();
    assert!(report.signed_head_checked && report.witness_checked, "{report:?}");
}

#[test]
fn a_damaged_head_sig_is_covered_by_the_witness_and_refused_without_one() {
    let pristine = log_with(3, true, true);
    let vfs = pristine.crash(CrashMode::KeepUnsynced);
    vfs.flip_bit(format!("{DIR}/head.sig").as_ref(), 8 * 20).unwrap();
    let before = files(&vfs);
    let err = events(&vfs, false).unwrap_err();
    assert!(err.to_string().contains("head.sig"), "{err}");
    assert_eq!(files(&vfs), before, "the refused open changed a file");
    assert_eq!(events(&vfs, true).unwrap(), 3, "with the witness the log opens");
}

#[test]
fn the_witness_holds_a_signed_note_and_a_damaged_one_is_named() {
    let pristine = log_with(3, true, true);
    let (path, note) = files(&pristine).into_iter().find(|(p, _)| p.starts_with(WITNESS)).unwrap();
    let text = String::from_utf8(note.clone()).unwrap();
    let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
    assert!(text.starts_with(&format!("{}\n", eventlog::file::note::origin(&key))), "{text}");
    assert!(text.contains("\n\n\u{2014} pypes.log/"), "a C2SP signed note: {text}");
    let head = eventlog::file::note::decode(&note, &key).unwrap();
    assert_eq!(head.next_position, 3);
    for byte in [0, note.len() / 2, note.len() - 2] {
        let vfs = pristine.crash(CrashMode::KeepUnsynced);
        vfs.flip_bit(&path, byte as u64 * 8).unwrap();
        let before = files(&vfs);
        let err = events(&vfs, true).unwrap_err();
        assert!(matches!(&err, LogError::Corrupt { file, .. } if *file == path), "byte {byte}: {err}");
        assert_eq!(files(&vfs), before);
    }
}
