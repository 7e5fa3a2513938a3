//! The file backend across restarts and faults: reopening, torn tails,
//! corruption anywhere else, bit flips, tampering seen by verification,
//! truncation, a full disk, and scavenging that leaves no byte behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use eventlog::file::format::{self, FrameParse};
use eventlog::file::sim::{CrashMode, SimVfs};
use eventlog::file::vfs::OsVfs;
use eventlog::file::{FileLog, FileLogConfig, verify_log};
use eventlog::{
    DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError, NewEvent, ReadFrom, RecordedEvent,
    StreamMetadata,
};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn config() -> FileLogConfig {
    let mut c = FileLogConfig::new(key());
    c.segment_size = 4096;
    c.checkpoint_every_frames = 4;
    c
}

fn sim_config(vfs: &SimVfs) -> FileLogConfig {
    let mut c = config();
    c.vfs = Arc::new(vfs.clone());
    c
}

fn ev(payload: &str) -> NewEvent {
    NewEvent::new("Written", payload.as_bytes().to_vec())
}

async fn everything(log: &FileLog) -> Vec<RecordedEvent> {
    log.read_all(0, usize::MAX, &EventFilter::all()).await.unwrap().events
}

/// Writes a log of several segments with metadata and deletes; returns what
/// a reader sees.
async fn populate(log: &FileLog) -> Vec<RecordedEvent> {
    for i in 0..60 {
        let stream = format!("s-{}", i % 4);
        log.append(&stream, ExpectedVersion::Any, vec![ev(&format!("event {i} {}", "p".repeat(i * 3)))]).await.unwrap();
    }
    log.set_stream_metadata("s-1", StreamMetadata { max_count: Some(5), ..Default::default() }).await.unwrap();
    log.delete_stream("s-2", ExpectedVersion::Any, DeleteMode::Soft).await.unwrap();
    log.delete_stream("s-3", ExpectedVersion::Any, DeleteMode::Hard).await.unwrap();
    log.checkpoint().await.unwrap();
    everything(log).await
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("segments")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Offsets of every frame in a segment file.
fn frame_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = format::SEGMENT_HEADER_LEN as usize;
    let mut out = Vec::new();
    while at < bytes.len() {
        match format::parse_frame(&bytes[at..]) {
            FrameParse::Frame { len, .. } => {
                out.push((at, len));
                at += len;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn reopening_keeps_events_metadata_deletes_and_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    let before = populate(&log).await;
    let retry = vec![ev("retried")];
    let first = log.append("s-0", ExpectedVersion::Any, retry.clone()).await.unwrap();
    let before_s1 = log.read_stream("s-1", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    let head = log.head();
    drop(log);
    assert!(segments(&path).len() > 3, "the test spans several segments");

    let log = FileLog::open(&path, config()).unwrap();
    assert_eq!(log.head(), head);
    let after = everything(&log).await;
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(log.read_stream("s-1", ReadFrom::Start, Direction::Forward, 100).await.unwrap(), before_s1);
    assert_eq!(log.stream_metadata("s-1").await.unwrap().max_count, Some(5));
    assert!(matches!(
        log.read_stream("s-2", ReadFrom::Start, Direction::Forward, 1).await,
        Err(LogError::StreamNotFound { .. })
    ));
    assert!(matches!(
        log.append("s-3", ExpectedVersion::Any, vec![ev("x")]).await,
        Err(LogError::StreamDeleted { .. })
    ));
    assert_eq!(log.append("s-0", ExpectedVersion::Any, retry).await.unwrap(), first, "retry recognised after reopen");
    let r = log.append("s-2", ExpectedVersion::NoStream, vec![ev("again")]).await.unwrap();
    assert_eq!(r.next_expected_version, 15, "soft-deleted stream continues its versions after reopen");
    log.checkpoint().await.unwrap();
    let report = verify_log(&OsVfs, &path, &key().verifying_key()).unwrap();
    assert!(report.checkpoints > 5 && report.signed_head_checked && report.unsigned_tail_frames == 0, "{report:?}");
    assert_eq!(report.events, head + 1);
}

#[tokio::test]
async fn torn_tail_is_truncated_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    let before = populate(&log).await;
    drop(log);
    let last = segments(&path).pop().unwrap();
    let clean_len = std::fs::metadata(&last).unwrap().len();
    // A frame cut in the middle, as a crash during a write leaves it.
    let mut frame = Vec::new();
    let whole = format::encode_frame(
        &proto::log::Frame {
            group_start: clean_len,
            chain: vec![0; 32].into(),
            body: Some(proto::log::frame::Body::Metadata(vec![1, 2, 3].into())),
        },
        &mut frame,
    );
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&frame[..whole / 2]);
    std::fs::write(&last, &bytes).unwrap();

    let log = FileLog::open(&path, config()).unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), clean_len, "the torn frame was cut off");
    assert_eq!(everything(&log).await, before);
    log.append("s-0", ExpectedVersion::Any, vec![ev("after repair")]).await.unwrap();
    log.checkpoint().await.unwrap();
    drop(log);
    verify_log(&OsVfs, &path, &key().verifying_key()).unwrap();
    // Zeros after the last frame (a file extended but never written) too.
    let mut bytes = std::fs::read(&last).unwrap();
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 700]);
    std::fs::write(&last, &bytes).unwrap();
    let log = FileLog::open(&path, config()).unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
    assert_eq!(everything(&log).await.last().unwrap().event.payload, &b"after repair"[..]);
}

#[tokio::test]
async fn corruption_before_the_tail_is_refused_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    populate(&log).await;
    drop(log);
    let first = segments(&path).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    let (offset, len) = frame_offsets(&bytes)[2];
    bytes[offset + len - 3] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();
    let err = FileLog::open(&path, config()).unwrap_err();
    match &err {
        LogError::Corrupt { file, offset: at, reason } => {
            assert_eq!(file, &first);
            assert_eq!(*at, offset as u64);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("0000000000.seg") && message.contains(&format!("offset {offset}")), "{message}");
}

#[tokio::test]
async fn a_bad_frame_followed_by_a_later_write_group_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut c = config();
    c.segment_size = 1 << 20;
    let log = FileLog::open(&path, c.clone()).unwrap();
    for i in 0..5 {
        log.append("s", ExpectedVersion::Any, vec![ev(&format!("e{i}"))]).await.unwrap();
    }
    drop(log);
    let last = segments(&path).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let (offset, _) = frame_offsets(&bytes)[1];
    bytes[offset + format::FRAME_HEADER_LEN + 4] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    let err = FileLog::open(&path, c).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { offset: at, reason, .. } if *at == offset as u64 && reason.contains("not a torn tail")),
        "{err}"
    );
}

/// Builds a closed log on a simulated disk and returns it with its events.
fn sim_log() -> (SimVfs, Vec<RecordedEvent>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let vfs = SimVfs::new();
    let events = rt.block_on(async {
        let log = FileLog::open("/d/log", sim_config(&vfs)).unwrap();
        let events = populate(&log).await;
        log.close();
        events
    });
    (vfs, events)
}

#[test]
fn random_bit_flips_are_detected_never_served() {
    let (vfs, original) = sim_log();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let files: Vec<(PathBuf, u64)> = vfs
        .all_file_bytes()
        .into_iter()
        .filter(|(p, _)| !p.ends_with("signing.pub"))
        .map(|(p, b)| (p, b.len() as u64))
        .collect();
    let total_bits: u64 = files.iter().map(|(_, l)| l * 8).sum();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut detected_at_open = 0;
    for trial in 0..400 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut bit = rng % total_bits;
        let (file, _) = files
            .iter()
            .find(|(_, l)| {
                if bit < l * 8 {
                    true
                } else {
                    bit -= l * 8;
                    false
                }
            })
            .unwrap();
        let disk = vfs.crash(CrashMode::KeepUnsynced);
        disk.flip_bit(file, bit).unwrap();
        let damaged = disk.all_file_bytes();
        match FileLog::open("/d/log", sim_config(&disk)) {
            Err(LogError::Corrupt { file: named, .. }) => {
                assert!(named.starts_with("/d/log"), "trial {trial}: error names a file of the log");
                assert_eq!(disk.all_file_bytes(), damaged, "trial {trial}: a refused open wrote");
                detected_at_open += 1;
            }
            Err(other) => {
                panic!("trial {trial}: flip in {file:?} gave a non-corruption error: {other}")
            }
            Ok(log) => {
                // Opened: whatever it serves must be exactly what was written,
                // and verification must flag the change.
                let served = rt.block_on(everything(&log));
                assert_eq!(served.len(), original.len(), "trial {trial}: an acknowledged event was cut");
                for e in &served {
                    let o = original.iter().find(|o| o.id() == e.id()).expect("served an event nobody wrote");
                    assert_eq!(o, e, "trial {trial}: served altered bytes");
                }
                log.close();
                assert!(
                    verify_log(&disk, "/d/log".as_ref(), &key().verifying_key()).is_err(),
                    "trial {trial}: flip of bit {bit} in {file:?} went unnoticed"
                );
            }
        }
    }
    assert!(detected_at_open > 300, "most flips are refused at open ({detected_at_open}/400)");
}

/// Re-encodes a segment with one event's payload changed, optionally
/// recomputing every later chain value (an attacker without the key).
fn tamper(bytes: &[u8], recompute_chain: bool) -> Vec<u8> {
    use prost::Message;
    let mut out = bytes[..format::SEGMENT_HEADER_LEN as usize].to_vec();
    let mut chain = format::GENESIS_CHAIN;
    let mut edited = false;
    for (offset, _) in frame_offsets(bytes) {
        let FrameParse::Frame { mut frame, .. } = format::parse_frame(&bytes[offset..]) else { unreachable!() };
        if let Some(proto::log::frame::Body::Batch(batch)) = &mut frame.body
            && !edited
        {
            let Some(proto::log::entry::Kind::Event(e)) = &batch.entries[0].kind else { unreachable!() };
            let mut stored = proto::storage::StoredEvent::decode(e.clone()).unwrap();
            stored.payload = b"forged".to_vec().into();
            batch.entries[0].kind = Some(proto::log::entry::Kind::Event(stored.encode_to_vec().into()));
            edited = true;
        }
        if recompute_chain {
            chain = format::chain_next(&chain, &format::frame_digest(&frame).unwrap());
            frame.chain = chain.to_vec().into();
        }
        format::encode_frame(&frame, &mut out);
    }
    out
}

#[tokio::test]
async fn verification_detects_tampering_with_valid_checksums() {
    for recompute_chain in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = FileLog::open(&path, config()).unwrap();
        populate(&log).await;
        drop(log);
        verify_log(&OsVfs, &path, &key().verifying_key()).unwrap();
        let first = segments(&path).remove(0);
        let bytes = std::fs::read(&first).unwrap();
        std::fs::write(&first, tamper(&bytes, recompute_chain)).unwrap();
        let err = verify_log(&OsVfs, &path, &key().verifying_key()).unwrap_err();
        let message = err.to_string();
        if recompute_chain {
            assert!(message.contains("checkpoint does not match"), "{message}");
        } else {
            assert!(message.contains("hash chain mismatch"), "{message}");
        }
        assert!(message.contains("0000000000.seg"), "{message}");
    }
    // A checkpoint signed by another key is refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    populate(&log).await;
    drop(log);
    let other = SigningKey::from_bytes(&[1; 32]).verifying_key();
    let err = verify_log(&OsVfs, &path, &other).unwrap_err();
    assert!(err.to_string().contains("signature does not verify"), "{err}");
}

#[tokio::test]
async fn truncating_the_log_below_its_signed_head_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    populate(&log).await;
    drop(log);
    let last = segments(&path).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let frames = frame_offsets(&bytes);
    let (cut, _) = frames[frames.len() - 1];
    std::fs::write(&last, &bytes[..cut]).unwrap();
    let err = verify_log(&OsVfs, &path, &key().verifying_key()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = FileLog::open(&path, config()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[tokio::test]
async fn a_full_disk_fails_appends_cleanly_and_they_work_again_with_space() {
    let vfs = SimVfs::new();
    let log = FileLog::open("/d/log", sim_config(&vfs)).unwrap();
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(log.append("s", ExpectedVersion::Any, vec![ev(&format!("before {i}"))]).await.unwrap());
    }
    let used: u64 = vfs.all_file_bytes().iter().map(|(_, b)| b.len() as u64).sum();
    vfs.set_space_limit(Some(used + 300));
    let mut failures = 0;
    for i in 0..20 {
        match log.append("s", ExpectedVersion::Any, vec![ev(&format!("{i} {}", "x".repeat(100)))]).await {
            Ok(r) => acked.push(r),
            Err(e) => {
                assert!(e.is_storage_full(), "{e}");
                assert!(
                    log.write_trouble().is_some_and(|t| t.to_string().contains("disk is full")),
                    "{:?}",
                    log.write_trouble()
                );
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "the disk filled up");
    vfs.set_space_limit(None);
    let r = log.append("s", ExpectedVersion::Any, vec![ev("after space returned")]).await.unwrap();
    assert_eq!(log.write_trouble(), None, "a commit that goes through clears the trouble");
    assert_eq!(r.next_expected_version, acked.len() as u64, "no version was burnt by the failures");
    log.close();
    let log = FileLog::open("/d/log", sim_config(&vfs.crash(CrashMode::DropUnsynced))).unwrap();
    let events = log.read_stream("s", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(events.len(), acked.len() + 1);
    assert_eq!(events.last().unwrap().event.payload, &b"after space returned"[..]);
}

#[tokio::test]
async fn scavenging_leaves_no_byte_of_removed_events_and_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    let canary = "CANARY-7f3a9c-personal-data";
    for i in 0..20 {
        log.append("victim", ExpectedVersion::Any, vec![ev(&format!("{canary} #{i}"))]).await.unwrap();
        log.append("keeper", ExpectedVersion::Any, vec![ev(&format!("KEEPER-{i}"))]).await.unwrap();
    }
    log.append("aging", ExpectedVersion::Any, vec![ev(&format!("{canary} old"))]).await.unwrap();
    log.delete_stream("victim", ExpectedVersion::Any, DeleteMode::Hard).await.unwrap();
    let scan = |needle: &str| -> usize {
        let mut hits = 0;
        for entry in walk(&path) {
            let bytes = std::fs::read(&entry).unwrap();
            hits += bytes.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count();
        }
        hits
    };
    assert_eq!(scan(canary), 21);
    let report = log.scavenge().await.unwrap();
    assert_eq!(report.events_removed, 20);
    assert!(report.bytes_reclaimed > 20 * canary.len() as u64);
    assert_eq!(scan(canary), 1, "only the live event still holds the canary");
    assert_eq!(scan("KEEPER-"), 20, "live events are untouched");
    let keeper = log.read_stream("keeper", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(keeper.len(), 20);
    log.checkpoint().await.unwrap();
    drop(log);
    let report = verify_log(&OsVfs, &path, &key().verifying_key()).unwrap();
    assert_eq!(report.redacted_events, 20, "{report:?}");
    // After a reopen the redacted events stay gone and numbering holds.
    let log = FileLog::open(&path, config()).unwrap();
    let all = everything(&log).await;
    assert_eq!(all.len(), 21);
    assert!(all.iter().all(|e| &*e.stream != "victim"));
    let r = log.append("keeper", ExpectedVersion::Exact(19), vec![ev("next")]).await.unwrap();
    assert_eq!(r.first_position, 41);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_through_a_full_disk_lose_nothing_acknowledged() {
    let vfs = SimVfs::new();
    let log = Arc::new(FileLog::open("/d/log", sim_config(&vfs)).unwrap());
    log.append("warmup", ExpectedVersion::Any, vec![ev("w")]).await.unwrap();
    let used: u64 = vfs.all_file_bytes().iter().map(|(_, b)| b.len() as u64).sum();
    vfs.set_space_limit(Some(used + 20_000));
    let results = writers_through_faults(&log, 32, 40, |_, _| {}).await;
    assert!(results.iter().map(|r| r.failed).sum::<usize>() > 0, "the disk filled up under load");
    vfs.set_space_limit(None);
    log.append("after", ExpectedVersion::Any, vec![ev("space is back")]).await.unwrap();
    log.close();
    let rebooted = vfs.crash(CrashMode::DropUnsynced);
    let log = FileLog::open("/d/log", sim_config(&rebooted)).unwrap();
    assert_exactly_acknowledged(&log, &results).await;
    log.close();
    verify_log(&rebooted, "/d/log".as_ref(), &key().verifying_key()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_append_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path().join("log"), config()).unwrap());
    for round in 0..20 {
        let batch = vec![ev(&format!("r{round}-a")), ev(&format!("r{round}-b"))];
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (log, batch) = (log.clone(), batch.clone());
            tasks.push(tokio::spawn(async move { log.append("retried", ExpectedVersion::Any, batch).await }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap().unwrap());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "round {round}: every retry got the original result");
    }
    let events = log.read_stream("retried", ReadFrom::Start, Direction::Forward, 1000).await.unwrap();
    assert_eq!(events.len(), 40, "each batch stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsyncs_under_load_fail_only_unacknowledged_appends() {
    let vfs = SimVfs::new();
    let log = Arc::new(FileLog::open("/d/log", sim_config(&vfs)).unwrap());
    let faults = vfs.clone();
    let results = writers_through_faults(&log, 16, 30, move |w, i| {
        if w == 0 && i % 10 == 5 {
            faults.fail_syncs(1);
        }
    })
    .await;
    assert!(results.iter().map(|r| r.failed).sum::<usize>() > 0, "some fsyncs failed");
    log.close();
    let rebooted = vfs.crash(CrashMode::Torn { seed: 11 });
    let log = FileLog::open("/d/log", sim_config(&rebooted)).unwrap();
    assert_exactly_acknowledged(&log, &results).await;
    log.close();
    verify_log(&rebooted, "/d/log".as_ref(), &key().verifying_key()).unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let first = FileLog::open(&path, config()).unwrap();
    let err = FileLog::open(&path, config()).unwrap_err();
    assert!(matches!(&err, LogError::Locked { dir } if dir == &path), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    FileLog::open(&path, config()).expect("reopens once the first is closed");
}

#[tokio::test]
async fn opening_with_another_signing_key_is_refused_naming_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = FileLog::open(&path, config()).unwrap();
    populate(&log).await;
    drop(log);
    let other = FileLogConfig::new(SigningKey::from_bytes(&[2; 32]));
    let err = FileLog::open(&path, other).unwrap_err();
    assert!(matches!(err, LogError::WrongSigningKey { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(&eventlog::file::public_key_hex(&key())), "{message}");
    assert!(message.contains(&eventlog::file::public_key_hex(&SigningKey::from_bytes(&[2; 32]))), "{message}");
}

#[tokio::test]
async fn a_log_in_a_relative_directory_opens_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let _cwd = CwdGuard::enter(dir.path());
    let log = FileLog::open("rel-log", config()).unwrap();
    log.append("s", ExpectedVersion::Any, vec![ev("relative")]).await.unwrap();
    drop(log);
    let log = FileLog::open("rel-log", config()).unwrap();
    assert_eq!(everything(&log).await.len(), 1);
}

/// Changes the working directory for one test and restores it.
struct CwdGuard(PathBuf);

impl CwdGuard {
    fn enter(dir: &Path) -> Self {
        let old = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir).unwrap();
        CwdGuard(old)
    }
}

impl Drop for CwdGuard {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_appends_stay_consistent_while_scavenging_rewrites_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path().join("log"), config()).unwrap());
    for i in 0..200 {
        let stream = if i % 2 == 0 { format!("keep-{}", i % 5) } else { format!("drop-{i}") };
        log.append(&stream, ExpectedVersion::Any, vec![ev(&format!("{stream} #{i}"))]).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (log, stop) = (log.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let page = log.read_all(0, usize::MAX, &EventFilter::all()).await.unwrap();
                for e in &page.events {
                    let text = String::from_utf8(e.event.payload.to_vec()).unwrap();
                    assert!(text.starts_with(&*e.stream), "event {} of {} reads back intact", e.position, e.stream);
                }
                for k in 0..5 {
                    let keep =
                        log.read_stream(&format!("keep-{k}"), ReadFrom::Start, Direction::Forward, 1000).await.unwrap();
                    assert!(keep.len() >= 20, "kept streams never lose events");
                }
                rounds += 1;
            }
            rounds
        }));
    }
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 200..400 {
                log.append(&format!("keep-{}", i % 5), ExpectedVersion::Any, vec![ev(&format!("keep-{} #{i}", i % 5))])
                    .await
                    .unwrap();
            }
        })
    };
    for i in (1..200).step_by(2) {
        log.delete_stream(&format!("drop-{i}"), ExpectedVersion::Any, DeleteMode::Hard).await.unwrap();
        if i % 20 == 1 {
            log.scavenge().await.unwrap();
        }
    }
    log.scavenge().await.unwrap();
    writer.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let all = everything(&log).await;
    assert_eq!(all.len(), 300, "100 kept from before, 200 appended during scavenging");
    assert!(all.iter().all(|e| e.stream.starts_with("keep-")));
}

/// What one writer of `writers_through_faults` saw.
struct WriterOutcome {
    stream: String,
    acked: Vec<(eventlog::AppendResult, NewEvent)>,
    failed: usize,
}

/// `writers` tasks each append `per_writer` events to their own stream,
/// calling `before(writer, i)` before each append; I/O errors are counted,
/// any other error fails the test.
async fn writers_through_faults(
    log: &Arc<FileLog>,
    writers: usize,
    per_writer: usize,
    before: impl Fn(usize, usize) + Clone + Send + 'static,
) -> Vec<WriterOutcome> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (log, before) = (log.clone(), before.clone());
        tasks.push(tokio::spawn(async move {
            let stream = format!("w-{w}");
            let mut outcome = WriterOutcome { stream: stream.clone(), acked: Vec::new(), failed: 0 };
            for i in 0..per_writer {
                before(w, i);
                let e = ev(&format!("{stream} {i} {}", "y".repeat(60)));
                match log.append(&stream, ExpectedVersion::Any, vec![e.clone()]).await {
                    Ok(r) => outcome.acked.push((r, e)),
                    Err(LogError::Io { .. }) => outcome.failed += 1,
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            outcome
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

/// Each writer's stream holds exactly its acknowledged events, in order, at
/// dense versions and the acknowledged positions; the chain verifies.
async fn assert_exactly_acknowledged(log: &FileLog, results: &[WriterOutcome]) {
    for WriterOutcome { stream, acked, .. } in results {
        let events = match log.read_stream(stream, ReadFrom::Start, Direction::Forward, 1000).await {
            Ok(events) => events,
            Err(LogError::StreamNotFound { .. }) => Vec::new(),
            Err(other) => panic!("{other}"),
        };
        assert_eq!(events.len(), acked.len(), "{stream}: exactly the acknowledged events, no holes");
        for (i, (result, e)) in acked.iter().enumerate() {
            assert_eq!(events[i].version, i as u64, "{stream}: versions stay dense");
            assert_eq!(result.next_expected_version, i as u64);
            assert_eq!(events[i].position, result.first_position);
            assert_eq!(&events[i].event, e, "{stream}: in order, bytes intact");
        }
    }
}
