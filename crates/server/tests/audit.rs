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
    let (ok, out) = pypes(&["replay", "--json", "--data-dir", &dir, "--stream", &stream]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        ok && v["stream"] == stream.as_str() && v["state"].as_str().unwrap().starts_with("closed, 2 messages"),
        "{v}"
    );
    let events = v["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["event"].as_str().unwrap().contains(": first words")), "{v}");
    assert!(events.iter().all(|e| e["recorded_at"].as_str().unwrap().ends_with('Z')), "{v}");
    let (ok, out) = pypes(&["replay", "--json", "--data-dir", &dir, "--into", "/nonexistent/x"]);
    assert!(!ok && out.contains("--stream"), "--json needs --stream: {out}");
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
    assert!(!out.contains("trail.user"), "no username in the audit trail:\n{out}");
    // The table's columns line up: every row has its actor where the
    // heading's ACTOR is.
    let table: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("TIME (UTC)")).collect();
    let actor_at = table[0].find("ACTOR").unwrap();
    assert!(table.len() > 5, "{out}");
    for row in &table[1..] {
        assert!(row[..actor_at].ends_with("  ") && !row[actor_at..].starts_with(' '), "misaligned: {row:?}");
    }

    let trail = |filters: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["audit", "trail", "--json", "--data-dir", &dir];
        args.extend_from_slice(filters);
        let (ok, out) = pypes(&args);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["ok"], true);
        v["entries"].as_array().unwrap().clone()
    };
    let all = trail(&[]);
    let has = |action: &str, actor: &str, outcome: &str, detail: &str| {
        all.iter().any(|e| {
            e["action"] == action
                && e["actor"].as_str().unwrap().starts_with(actor)
                && e["outcome"] == outcome
                && e["detail"].as_str().unwrap().contains(detail)
        })
    };
    assert!(has("server.start", "pypes", "ok", ""), "{all:#?}");
    assert!(has("auth.api_key", "tenant-key:", "ok", ""), "{all:#?}");
    assert!(has("auth.api_key", "tenant-key:", "failed", "unknown_or_revoked"), "{all:#?}");
    assert!(has("auth.bearer", "anonymous", "failed", "missing_or_malformed"), "{all:#?}");
    assert!(all.iter().any(|e| e["action"] == "authz.refused" && e["target"] == "rpc:GetSubject"), "{all:#?}");
    assert!(all.iter().any(|e| e["target"] == "rpc:WatchSession"), "{all:#?}");
    assert!(has("access.deactivate", "tenant-key:", "ok", ""), "the real caller is named:\n{all:#?}");
    assert!(!format!("{all:?}").contains("trail.user"), "no username in the audit trail");

    // Filters: a prefix of actions and an outcome; a tenant; a time range.
    let failed_auth = trail(&["--action", "auth.", "--outcome", "failed"]);
    assert!(failed_auth.len() >= 2, "{failed_auth:#?}");
    assert!(
        failed_auth.iter().all(|e| e["action"].as_str().unwrap().starts_with("auth.") && e["outcome"] == "failed"),
        "{failed_auth:#?}"
    );
    let of_tenant = trail(&["--tenant", &s.tenant]);
    assert!(!of_tenant.is_empty() && of_tenant.iter().all(|e| e["tenant"] == s.tenant.as_str()), "{of_tenant:#?}");
    assert!(trail(&["--until", "2000-01-01T00:00:00Z"]).is_empty());
    assert_eq!(trail(&["--since", "2000-01-01T00:00:00Z"]).len(), all.len());
    let (ok, out) = pypes(&["audit", "trail", "--data-dir", &dir, "--tenant", "acme"]);
    assert!(!ok && out.contains("--tenant \"acme\" is not a tenant id"), "{out}");
    let (ok, out) = pypes(&["audit", "trail", "--data-dir", &dir, "--since", "yesterday"]);
    assert!(!ok && out.contains("--since") && out.contains("YYYY-MM-DDTHH:MM:SSZ"), "{out}");
    let (ok, out) = pypes(&["audit", "verify", "--json", "--data-dir", &dir]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok && v["log"]["frames"].as_u64().unwrap() > 0 && v.get("entries").is_none(), "{out}");
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
