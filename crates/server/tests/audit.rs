//! The auditors' commands against a real data directory: `pypes audit
//! verify` passes on an intact log and fails, naming the file, on a flipped
//! byte; `pypes replay --stream` prints a Session's timeline and state,
//! cut at `--as-of`, and shows shredded content as `[erased]`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{authed, clients, post, setup, start};
use keystore::embedded::{OpenMode, open_embedded};
use keystore::{KeyStore, ShredTarget};
use proto::api as pb;
use uuid::Uuid;

fn pypes(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pypes")).args(args).env("RUST_LOG", "error").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_replay_a_real_log() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let (s, between) = {
        let mut server = start(data.path());
        let mut c = clients(&server.grpc).await;
        let s = setup(&mut c, "audrey").await;
        c.sessions.post_message(authed(&s.key, post(&s, "first words"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let between = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.sessions.post_message(authed(&s.key, post(&s, "second words"))).await.unwrap();
        c.sessions
            .close_session(authed(&s.key, pb::CloseSessionRequest { session_id: s.session.clone() }))
            .await
            .unwrap();
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        (s, between)
    };

    let (ok, out) = pypes(&["audit", "verify", "--data-dir", &dir]);
    assert!(ok, "{out}");
    assert!(out.contains(": OK") && out.contains("hash chain verified"), "{out}");

    let stream = format!("session-{}-{}", s.tenant, s.session);
    let (ok, out) = pypes(&["replay", "--data-dir", &dir, "--stream", &stream]);
    assert!(ok, "{out}");
    assert!(out.contains(": first words") && out.contains(": second words"), "{out}");
    assert!(out.contains("state: closed, 2 messages"), "{out}");
    // For people: no Rust debug formatting, times in RFC 3339.
    assert!(!out.contains("Some(") && !out.contains("None") && out.contains("Closed at_micros=20"), "{out}");
    let (ok, out) = pypes(&["replay", "--data-dir", &dir, "--stream", &stream, "--as-of", &between.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains(": first words") && !out.contains("second words"), "{out}");
    assert!(out.contains("state: active, 1 messages"), "{out}");
    let (ok, out) = pypes(&["replay", "--data-dir", &dir, "--stream", &stream, "--as-of", "yesterday"]);
    assert!(!ok && out.contains("--as-of \"yesterday\""), "{out}");

    // Shred the Session's content key: the replay still works, the words are gone.
    {
        let keys = open_embedded(data.path(), None, Arc::new(eventlog::SystemClock), OpenMode::MustExist).unwrap();
        let (tenant, session) = (Uuid::parse_str(&s.tenant).unwrap(), Uuid::parse_str(&s.session).unwrap());
        assert_eq!(keys.store.shred(tenant, &ShredTarget::Session { session }).unwrap().keys.len(), 1);
    }
    let (ok, out) = pypes(&["replay", "--data-dir", &dir, "--stream", &stream]);
    assert!(ok, "{out}");
    assert!(out.contains("[erased]") && !out.contains("words"), "{out}");

    // A flipped byte anywhere in the log fails the audit, naming the file.
    let segment = std::fs::read_dir(data.path().join("log/segments")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&segment, bytes).unwrap();
    let (ok, out) = pypes(&["audit", "verify", "--data-dir", &dir]);
    assert!(!ok, "{out}");
    assert!(out.contains(segment.file_name().unwrap().to_str().unwrap()), "{out}");
}

/// Authentication attempts (good key, unknown key, none) and refusals land
/// in the audit trail with no personal data; `pypes audit trail` prints
/// them; a log cut short fails `pypes audit verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_attempts_and_a_cut_log_fails_verify() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let s = {
        let mut server = start(data.path());
        let mut c = clients(&server.grpc).await;
        let s = setup(&mut c, "trail.user").await;
        let forged = format!("pypes_{}_{}_{}", s.tenant.replace('-', ""), Uuid::now_v7().simple(), "00".repeat(32));
        let err = c.subjects.get_subject(authed(&forged, pb::GetSubjectRequest { subject_id: s.user.clone() })).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Unauthenticated);
        let err =
            c.subjects.get_subject(tonic::Request::new(pb::GetSubjectRequest { subject_id: s.user.clone() })).await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Unauthenticated);
        // Server streams are refused and recorded like any call.
        let err = c
            .sessions
            .watch_session(tonic::Request::new(pb::WatchSessionRequest {
                session_id: s.session.clone(),
                from_version: 0,
            }))
            .await;
        assert_eq!(err.unwrap_err().code(), tonic::Code::Unauthenticated);
        c.subjects
            .deactivate_subject(authed(&s.key, pb::DeactivateSubjectRequest { subject_id: s.user.clone() }))
            .await
            .unwrap();
        // A checkpoint is due within a second of the last entry.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        s
    };
    let (ok, out) = pypes(&["audit", "trail", "--data-dir", &dir]);
    assert!(ok, "{out}");
    assert!(out.contains("audit streams: OK") && out.contains("checked (audit.head)"), "{out}");
    assert!(out.contains("server.start"), "{out}");
    assert!(out.contains("auth.api_key  tenant-key:") && out.contains("  ok"), "{out}");
    assert!(out.contains("unknown_or_revoked"), "{out}");
    assert!(out.contains("auth.bearer  anonymous") && out.contains("missing_or_malformed"), "{out}");
    assert!(out.contains("authz.refused") && out.contains("rpc:GetSubject"), "{out}");
    assert!(out.contains("rpc:WatchSession"), "{out}");
    assert!(out.contains("access.deactivate  tenant-key:"), "the real caller is named:\n{out}");
    assert!(!out.contains("trail.user"), "no username in the audit trail:\n{out}");
    let _ = s;

    // Cut the log's last segment short: the audit fails.
    let mut segments: Vec<_> =
        std::fs::read_dir(data.path().join("log/segments")).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(len - 40).unwrap();
    let (ok, out) = pypes(&["audit", "verify", "--data-dir", &dir]);
    assert!(!ok, "{out}");
}
