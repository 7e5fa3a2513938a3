//! Integrity at rest, every file class: a data directory written through
//! the server itself (two tenants, end users, Sessions with messages and a
//! media upload, an erasure, an epoch rotation), stopped cleanly; then one
//! byte flipped at a time in every byte of the last record of every file
//! and at 2,000 seeded positions over all files. For each flip the start
//! (`server::integrity::check`, which opens the stores exactly as `serve`
//! does, then reads every event, blob and view) must
//!
//! - refuse, naming the file, and leave every file as it found it; or
//! - repair from redundancy (key store) or rebuild (views), and then give
//!   exactly the pristine copy's answers; or
//! - serve exactly the pristine copy's answers (a byte nothing reads); or
//! - for a media blob (no redundancy: the log keeps its SHA-256), answer
//!   DATA_LOSS naming that media and everything else as before;
//!
//! and never serve different data, lose an acknowledged record, or let a
//! verifier (`pypes audit verify`, `pypes keys verify`) pass a damaged file
//! it covers. The counts of each class are printed.
//!
//! Regression (issue "integrity at rest"): a flipped byte in a shard's last
//! record destroyed a key; a flipped byte in the last frames was cut before
//! the refusal; a deleted head passed verification; a damaged view store
//! stopped the server.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use proto::api as pb;
use server::integrity::{Answers, check};

/// Files whose flip a start cannot judge: `admin.key` is a credential the
/// operator also holds (a flipped byte makes it another credential, which
/// the API then refuses as unauthenticated); `LOCK` files are empty.
fn judged(rel: &Path) -> bool {
    let name = rel.file_name().unwrap_or_default().to_string_lossy();
    name != "admin.key" && name != "LOCK"
}

fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for path in files_under(dir) {
        out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
    }
    out
}

/// Makes `dir` hold exactly `files` (restores a trial directory).
fn restore(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    for (rel, bytes) in files_of(dir) {
        match files.get(&rel) {
            Some(b) if *b == bytes => {}
            Some(b) => std::fs::write(dir.join(&rel), b).unwrap(),
            None => std::fs::remove_file(dir.join(&rel)).unwrap(),
        }
    }
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

/// The data directory, written through the server and stopped cleanly.
fn build(dir: &Path) {
    let server = start(dir);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = clients(&server.grpc).await;
        let a = setup(&mut c, "alice").await;
        for i in 0..6 {
            c.sessions.post_message(authed(&a.key, post(&a, &format!("message {i} from alice")))).await.unwrap();
        }
        let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
        let picture: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        upload(&ch, &a.key, None, upload_messages(&a.session, &a.user, "image/png", &picture, 1024)).await.unwrap();
        let b = setup(&mut c, "bob").await;
        c.sessions.post_message(authed(&b.key, post(&b, "bob's only message"))).await.unwrap();
        // Carol talks, then is erased.
        let carol = c
            .subjects
            .register_subject(authed(
                &a.key,
                pb::RegisterSubjectRequest {
                    username: "carol".into(),
                    email: "carol@example.com".into(),
                    attested_at_least_13: true,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        c.erasure
            .request_erasure(authed(
                &a.key,
                pb::RequestErasureRequest { subject_id: carol.subject_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap();
        wait_certified(&mut c, &a.key, &carol.subject_id).await;
        wait_projections_caught_up(&server.http).await;
    });
    stop_cleanly(server);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["keys", "rotate", "--yes", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "rotate: {}", String::from_utf8_lossy(&out.stderr));
}

/// The byte range of the last record of a file, by its kind.
fn last_record(rel: &Path, bytes: &[u8]) -> std::ops::Range<usize> {
    let s = rel.to_string_lossy();
    if s.starts_with("keys/") || s.starts_with("provider/") {
        // Twin frames after an 8-byte magic: the last twin.
        let (mut at, mut last) = (8, 8);
        while at + 8 <= bytes.len() {
            last = at;
            at += 2 * (8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize);
        }
        return last..bytes.len();
    }
    if s.ends_with(".seg") {
        use eventlog::file::format::{FrameParse, SEGMENT_HEADER_LEN, parse_frame};
        let (mut at, mut last) = (SEGMENT_HEADER_LEN as usize, SEGMENT_HEADER_LEN as usize);
        while let FrameParse::Frame { len, .. } = parse_frame(&bytes[at..]) {
            last = at;
            at += len;
            if at >= bytes.len() {
                break;
            }
        }
        return last..bytes.len();
    }
    // Views, blobs and small files: the last 512 bytes (a sector).
    bytes.len().saturating_sub(512)..bytes.len()
}

#[derive(Default, Debug)]
struct Counts {
    refused: u64,
    repaired: u64,
    rebuilt: u64,
    identical: u64,
    data_loss_named: u64,
}

async fn verifiers_fail(dir: &Path, rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    // `audit verify` reads the log and audit.head with the public key only;
    // the private signing key is no file it covers.
    if s.starts_with("log/") || s == "audit.head" {
        let heads = server::audit_tool::HeadPolicy { witness_dir: None, allow_missing_head: false };
        return server::audit_tool::verify(dir, None, &heads, None).is_err();
    }
    if s.starts_with("keys/") || s.starts_with("provider/") || s == "root.key" {
        return match keystore::embedded::check_embedded(dir, None, std::sync::Arc::new(eventlog::SystemClock)) {
            Err(_) => true,
            Ok(keys) => {
                keys.findings().iter().any(|f| f.action.is_damage()) || !keys.store.verify().failures.is_empty()
            }
        };
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_byte_is_refused_repaired_or_served_identically() {
    let root = tempfile::tempdir().unwrap();
    let pristine_dir = root.path().join("pristine");
    tokio::task::block_in_place(|| build(&pristine_dir));
    let pristine = files_of(&pristine_dir);
    let trial = root.path().join("trial");
    restore(&trial, &pristine);
    let reference = check(&trial, None).await.expect("the pristine copy starts");
    assert!(reference.settled.is_empty(), "the pristine copy needed settling: {:?}", reference.settled);
    assert!(reference.events.len() > 30, "{} events", reference.events.len());
    assert_eq!(reference.media.len(), 1, "{:?}", reference.media);
    assert!(reference.media[0].contains("sha256"), "{:?}", reference.media);
    assert!(reference.views.len() >= 3);
    // What a start writes to a pristine copy (the log's closing checkpoint)
    // is part of every trial's baseline.
    let baseline = files_of(&trial);

    let mut positions: Vec<(PathBuf, usize)> = Vec::new();
    for (rel, bytes) in baseline.iter().filter(|(r, _)| judged(r)) {
        for byte in last_record(rel, bytes) {
            positions.push((rel.clone(), byte));
        }
    }
    let last_records = positions.len();
    let sizes: Vec<(&PathBuf, usize)> = baseline.iter().filter(|(r, _)| judged(r)).map(|(r, b)| (r, b.len())).collect();
    let total: usize = sizes.iter().map(|(_, n)| n).sum();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut at = (rng % total as u64) as usize;
        for (rel, n) in &sizes {
            if at < *n {
                positions.push(((*rel).clone(), at));
                break;
            }
            at -= n;
        }
    }

    let mut counts = Counts::default();
    let mut per_class: BTreeMap<String, Counts> = BTreeMap::new();
    for (i, (rel, byte)) in positions.iter().enumerate() {
        restore(&trial, &baseline);
        let path = trial.join(rel);
        let mut bytes = baseline[rel].clone();
        bytes[*byte] ^= 1 << (i % 8);
        std::fs::write(&path, &bytes).unwrap();
        let damaged = files_of(&trial);
        let context = format!("flip {i}: {} byte {byte}", rel.display());
        let verifier_failed = verifiers_fail(&trial, rel).await;
        assert_eq!(files_of(&trial), damaged, "{context}: a verifier wrote");
        let class = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let c = per_class.entry(class).or_default();
        match check(&trial, None).await {
            Err(e) => {
                let text = format!("{e:#}");
                let name = rel.file_name().unwrap().to_string_lossy();
                assert!(
                    text.contains(&*name) || text.contains(&*rel.to_string_lossy()),
                    "{context}: refused without naming the file: {text}"
                );
                assert_eq!(files_of(&trial), damaged, "{context}: a refused start changed a file");
                if rel != Path::new("log-signing.key") {
                    assert!(verifier_failed, "{context}: refused at start, but its verifier passed");
                }
                counts.refused += 1;
                c.refused += 1;
            }
            Ok(answers) => {
                compare(&reference, &answers, rel, &context);
                let lost = answers.media != reference.media;
                if lost {
                    counts.data_loss_named += 1;
                    c.data_loss_named += 1;
                } else if answers.settled.iter().any(|s| s.starts_with("view")) {
                    counts.rebuilt += 1;
                    c.rebuilt += 1;
                } else if !answers.settled.is_empty() {
                    assert!(verifier_failed, "{context}: repaired at start, but the read-only verifier passed");
                    counts.repaired += 1;
                    c.repaired += 1;
                } else {
                    let s = rel.to_string_lossy();
                    if s.starts_with("log/")
                        || s == "audit.head"
                        || s.starts_with("keys/")
                        || s.starts_with("provider/")
                    {
                        assert!(verifier_failed, "{context}: served identically, but its verifier passed the damage");
                    }
                    counts.identical += 1;
                    c.identical += 1;
                }
            }
        }
    }
    eprintln!(
        "integrity: {} flips ({last_records} in last records, 2000 seeded) over {} files: {counts:?}",
        positions.len(),
        sizes.len()
    );
    for (class, c) in &per_class {
        eprintln!("  {class:<16} {c:?}");
    }
    assert!(counts.refused > 0 && counts.repaired > 0 && counts.identical > 0, "{counts:?}");
}

/// The answers equal the reference, except that a flipped blob may answer
/// DATA_LOSS naming its media.
fn compare(reference: &Answers, answers: &Answers, rel: &Path, context: &str) {
    assert_eq!(answers.events, reference.events, "{context}: the events differ");
    assert_eq!(answers.views, reference.views, "{context}: the views differ");
    if answers.media != reference.media {
        assert!(rel.starts_with("blobs"), "{context}: media answers changed: {:?}", answers.media);
        for (got, want) in answers.media.iter().zip(&reference.media) {
            if got != want {
                let media = want.split(':').next().unwrap();
                assert!(got.starts_with(media) && got.contains("DATA_LOSS"), "{context}: {got} instead of {want}");
            }
        }
    }
}
