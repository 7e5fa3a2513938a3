//! The directed cases of the integrity issue, each through the real
//! binary, and the bad inputs found from outside.
//!
//! Regressions:
//! - a flipped byte in the last record of a key-store shard was cut off as a
//!   torn append: the key was lost and every read of that tenant answered
//!   INTERNAL, while `pypes keys verify` said `failures: 0`;
//! - a flipped byte near the end of the last log segment was cut off before
//!   the start was refused, destroying the evidence;
//! - deleting `log/head.sig` and `audit.head` left `pypes audit verify` at 0;
//! - a damaged view store stopped the server;
//! - error messages quoted caller input without bound (a 20,000-character
//!   consent purpose made a trailer over the client's 16 KiB limit:
//!   RESOURCE_EXHAUSTED instead of the error); `QueryAnalytics` with
//!   `i64::MIN..i64::MAX` overflowed; `WatchSession` from version 2^64-1
//!   waited until the client's deadline.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use proto::api as pb;
use tonic::Code;

fn pypes(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pypes")).args(args).arg("--data-dir").arg(data).output().unwrap()
}

fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files_under(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// A tenant with an end user and a Session with messages; the server stopped cleanly.
async fn written(data: &Path) -> Setup {
    let server = start(data);
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "dora").await;
    for i in 0..3 {
        c.sessions.post_message(authed(&s.key, post(&s, &format!("hello {i}")))).await.unwrap();
    }
    wait_projections_caught_up(&server.http).await;
    stop_cleanly(server);
    s
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_last_key_record_is_repaired_and_every_read_answers() {
    let data = tempfile::tempdir().unwrap();
    let s = written(data.path()).await;
    let shard = files_under(&data.path().join("keys"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("shard-"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let len = std::fs::metadata(&shard).unwrap().len() as usize;
    flip(&shard, len - 5);
    let damaged = snapshot(data.path());
    // The read-only check names the damage, exits non-zero and writes nothing.
    let out = pypes(&["keys", "verify"], data.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("DAMAGED") && text.contains("shard-"), "{text}");
    assert_eq!(snapshot(data.path()), damaged, "the verifier wrote");
    // The start repairs it from the twin; every read answers.
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let subject = c
        .subjects
        .get_subject(authed(&s.key, pb::GetSubjectRequest { subject_id: s.user.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(subject.username, "dora");
    let messages = c
        .views
        .list_messages(authed(&s.key, pb::ListMessagesRequest { session_id: s.session.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(messages.messages.len(), 3);
    assert_eq!(messages.messages[2].body, "hello 2");
    let metrics = metrics_text(&server.http).await;
    assert!(metrics.contains("pypes_integrity_events_total{store=\"keys\",action=\"repaired\"} 1"), "{metrics}");
    stop_cleanly(server);
    let out = pypes(&["audit", "trail"], data.path());
    let trail = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && trail.contains("integrity.keys"), "{trail}");
    let out = pypes(&["keys", "verify"], data.path());
    assert!(out.status.success(), "after the repair: {}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_last_log_frames_refuses_the_start_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    written(data.path()).await;
    let segment = data.path().join("log/segments/0000000000.seg");
    let len = std::fs::metadata(&segment).unwrap().len() as usize;
    flip(&segment, len - 150);
    let damaged = snapshot(data.path());
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-key", ADMIN, "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start was not refused: {err}");
    assert!(err.contains("0000000000.seg") && err.contains("offset"), "{err}");
    assert_eq!(snapshot(data.path()), damaged, "the refused start changed a file");
    let out = pypes(&["audit", "verify"], data.path());
    assert!(!out.status.success(), "audit verify passed a damaged log");
    assert_eq!(snapshot(data.path()), damaged, "the verifier changed a file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_signed_heads_fail_the_audit_unless_allowed() {
    let data = tempfile::tempdir().unwrap();
    written(data.path()).await;
    let out = pypes(&["audit", "verify"], data.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(data.path().join("log/head.sig")).unwrap();
    let out = pypes(&["audit", "verify"], data.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("head.sig") && err.contains("--allow-missing-head"), "{err}");
    std::fs::remove_file(data.path().join("audit.head")).unwrap();
    let out = pypes(&["audit", "verify", "--allow-missing-head"], data.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("signed head       absent"), "{text}");
    // Put back the log's head but not the trail's: still a failure.
    let server = start(data.path());
    stop_cleanly(server);
    std::fs::remove_file(data.path().join("audit.head")).unwrap();
    let out = pypes(&["audit", "verify"], data.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("audit.head"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_view_store_is_set_aside_and_rebuilt_while_the_rest_serves() {
    let data = tempfile::tempdir().unwrap();
    let s = written(data.path()).await;
    let view = data.path().join("views/sessions.redb");
    // Damage the file's header pages beyond repair.
    let mut bytes = std::fs::read(&view).unwrap();
    let end = 4096.min(bytes.len());
    for b in &mut bytes[..end] {
        *b ^= 0x5a;
    }
    std::fs::write(&view, &bytes).unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    // Whatever does not need the view answers at once.
    c.subjects.get_subject(authed(&s.key, pb::GetSubjectRequest { subject_id: s.user.clone() })).await.unwrap();
    // The view comes back, rebuilt from the log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let messages = loop {
        match c
            .views
            .list_messages(authed(
                &s.key,
                pb::ListMessagesRequest { session_id: s.session.clone(), ..Default::default() },
            ))
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) => assert!(e.code() == Code::Unavailable && Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(messages.messages.len(), 3);
    let aside: Vec<_> = std::fs::read_dir(data.path().join("views"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sessions.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept for inspection");
    let metrics = metrics_text(&server.http).await;
    assert!(
        metrics.contains("pypes_integrity_events_total{store=\"views\",action=\"set_aside_rebuilding\"} 1"),
        "{metrics}"
    );
    let admin = reqwest_get(&server.http, "/admin/projections").await;
    assert!(admin.contains("\"rebuilt_at_start\":{\"reason\"") && admin.contains("damaged-"), "{admin}");
}

/// GET with the admin key over plain HTTP/1.1 (no client library needed).
async fn reqwest_get(http: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_short_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "erin").await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    // A 20,000-character purpose: INVALID_ARGUMENT, not RESOURCE_EXHAUSTED.
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let huge = "p".repeat(20_000);
    let e = privacy
        .grant_consent(authed(
            &s.key,
            pb::ConsentRequest { subject_id: s.user.clone(), purpose: huge.clone(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("purpose") && e.message().len() < 300, "{}", e.message());
    assert!(e.message().contains("20000 bytes"), "{}", e.message());
    // A 1 MB content type on an upload.
    let mut messages = upload_messages(&s.session, &s.user, "image/png", b"abc", 3);
    if let Some(pb::upload_media_request::Part::Start(start)) = &mut messages[0].part {
        start.content_type = "x".repeat(1 << 20);
    }
    let e = upload(&ch, &s.key, None, messages).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("content_type") && e.message().len() < 400, "{}", e.message());
    // Analytics over the whole i64 range.
    for (from, to) in [(i64::MIN, i64::MAX), (i64::MIN, 3_600_000_000), (0, i64::MAX)] {
        let e = c
            .analytics
            .query_analytics(authed(
                &s.key,
                pb::QueryAnalyticsRequest {
                    pype_id: s.pype.clone(),
                    granularity: pb::Granularity::Hour as i32,
                    from_micros: from,
                    to_micros: to,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{from}..{to}: {e:?}");
    }
    // Watching from version 2^64-1: refused at once, naming the end.
    let started = Instant::now();
    let e = c
        .sessions
        .watch_session(authed(
            &s.key,
            pb::WatchSessionRequest { session_id: s.session.clone(), from_version: u64::MAX },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("from_version"), "{}", e.message());
    assert!(started.elapsed() < Duration::from_secs(30));
    // From the end itself it waits for what comes next, as before.
    let mut watch = c
        .sessions
        .watch_session(authed(&s.key, pb::WatchSessionRequest { session_id: s.session.clone(), from_version: 1 }))
        .await
        .unwrap()
        .into_inner();
    c.sessions.post_message(authed(&s.key, post(&s, "after"))).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_media_blob_answers_data_loss_naming_the_media() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "finn").await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    // Three chunks of 1 MiB: damage lands in the middle one.
    let picture: Vec<u8> = (0..(3u32 << 20) - 100).map(|i| (i % 251) as u8).collect();
    let media = upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "image/png", &picture, 256 << 10))
        .await
        .unwrap();
    stop_cleanly(server);
    let blob = files_under(&data.path().join("blobs"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&format!("{}.blob", media.media_id)))
        .expect("the blob file");
    let len = std::fs::metadata(&blob).unwrap().len() as usize;
    flip(&blob, len / 2);
    let server = start(data.path());
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let whole = pb::DownloadMediaRequest {
        session_id: s.session.clone(),
        media_id: media.media_id.clone(),
        ..Default::default()
    };
    let e = download(&ch, &s.key, None, whole).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(e.message().contains(&media.media_id), "{}", e.message());
    // The undamaged first chunk still reads back exactly.
    let head = pb::DownloadMediaRequest {
        session_id: s.session.clone(),
        media_id: media.media_id.clone(),
        offset: 0,
        length: 1000,
        ..Default::default()
    };
    let (_, bytes) = download(&ch, &s.key, None, head).await.unwrap();
    assert_eq!(bytes, picture[..1000]);
    // `pypes check` on the stopped server names it too, and exits non-zero.
    stop_cleanly(server);
    let out = pypes(&["check"], data.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains(&media.media_id) && text.contains("DATA_LOSS"), "{text}");
    let out = pypes(&["check", "--json"], data.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success() && v["events"].as_u64().unwrap() > 0, "{v}");
    assert!(v["media_damaged"][0].as_str().unwrap().contains(&media.media_id), "{v}");
    assert_eq!(v["answers_sha256"].as_str().unwrap().len(), 64, "{v}");
    // The key store's status, for people and as JSON.
    let out = pypes(&["keys", "status", "--json"], data.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success() && v["tenants"]["live"] == 1 && v["epochs"].as_array().unwrap().len() == 1, "{v}");
    assert_eq!(v["rotation_interrupted"], false);
}
