//! The embedded server on a disk that fills up under it (issue 26, part
//! 3): the data directory on a small tmpfs of its own. Appends fail with
//! RESOURCE_EXHAUSTED naming the cause, `/readyz` says why, reads keep
//! working, nothing acknowledged is lost, and writes resume by themselves
//! when space is freed (the tmpfs grown). Mounting needs root (CI runs as
//! root); elsewhere the test says SKIPPED, unless `PYPES_REQUIRE_ROOT=1`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{authed, clients, setup, start, stop_cleanly};
use pgtest::Tmpfs;
use proto::api as pb;
use tonic::Code;

/// Moves `dir` onto a new tmpfs of `size` of its own: its files are
/// copied onto the tmpfs mounted where it was.
fn onto_tmpfs(dir: &Path, size: &str) -> Option<Tmpfs> {
    let kept = dir.with_extension("before-tmpfs");
    std::fs::rename(dir, &kept).unwrap();
    let Some(mount) = Tmpfs::mount(dir, size) else {
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::rename(&kept, dir).unwrap();
        return None;
    };
    let status = Command::new("cp").arg("-a").arg(kept.join(".")).arg(dir).status().unwrap();
    assert!(status.success(), "copying {} onto its tmpfs", dir.display());
    Some(mount)
}

/// `/readyz`, asserted to answer 503.
async fn not_ready(http: &str) -> String {
    let (code, text) = common::readyz(http).await;
    assert_eq!(code, 503, "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_by_name_keeps_reads_and_resumes_when_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(&dir.path().join("small"), "6m") else { return };
    let data = mount.path().join("data");
    let server = start(&data);
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, "fuller").await;
    // An erasure certified before the disk fills.
    let gone = common::register(&mut c, &s.key, "gone").await;
    let erase = pb::RequestErasureRequest { subject_id: gone.clone(), ..Default::default() };
    c.erasure.request_erasure(authed(&s.key, erase)).await.unwrap();
    let certified = common::wait_certified(&mut c, &s.key, &gone).await;
    let body = "x".repeat(4000);
    let mut acked = Vec::new();
    let refusal = loop {
        let post = pb::PostMessageRequest {
            session_id: s.session.clone(),
            sender_id: s.user.clone(),
            body: format!("{} {body}", acked.len()),
            ..Default::default()
        };
        match c.sessions.post_message(authed(&s.key, post)).await {
            Ok(_) => acked.push(acked.len()),
            Err(e) => break e,
        }
        assert!(acked.len() < 5_000, "a 6 MiB disk never filled up");
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("disk is full"), "{}", refusal.message());
    // Fill what is left with small messages and new Sessions (each needs a
    // key in the key store, on the same disk) until a Session is refused
    // too. Free space moves a little as failed writes are cut off, so a
    // small write may still fit now and then: every refusal must name the
    // disk, and one Session must be refused.
    let mut session_refused = false;
    for _ in 0..2_000 {
        let post = pb::PostMessageRequest {
            session_id: s.session.clone(),
            sender_id: s.user.clone(),
            body: format!("{} small", acked.len()),
            ..Default::default()
        };
        match c.sessions.post_message(authed(&s.key, post)).await {
            Ok(_) => acked.push(acked.len()),
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
        let new_session =
            pb::StartSessionRequest { pype_id: s.pype.clone(), end_user_id: s.user.clone(), ..Default::default() };
        if let Err(e) = c.sessions.start_session(authed(&s.key, new_session)).await {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            session_refused = true;
            break;
        }
    }
    assert!(session_refused, "a new Session was refused on the full disk");
    let ready = not_ready(&server.http).await;
    assert!(ready.contains("disk is full"), "{ready}");
    let metrics = common::metrics_text(&server.http).await;
    assert_eq!(common::metric(&metrics, "pypes_log_storage_full"), 1);

    // Reads keep working on the full disk (the views may lag: they cannot
    // commit either, so a listing may stop short of the newest messages).
    let listed = common::all_messages(&ch, &s.key, &s.session).await;
    assert!(!listed.is_empty() && listed.len() <= acked.len(), "{} listed of {}", listed.len(), acked.len());
    for (i, m) in listed.iter().enumerate() {
        assert!(m.body.starts_with(&format!("{i} ")), "message {i} in order");
    }

    // A certificate written before is still answered.
    let again = common::wait_certified(&mut c, &s.key, &gone).await;
    assert_eq!((again.certificate, again.signature), (certified.certificate, certified.signature));

    // Space comes back: writes resume by themselves, readiness with them.
    mount.resize("64m");
    let post = pb::PostMessageRequest {
        session_id: s.session.clone(),
        sender_id: s.user.clone(),
        body: "after space was freed".into(),
        ..Default::default()
    };
    c.sessions.post_message(authed(&s.key, post)).await.expect("writes resume once space is freed");
    common::wait_readyz(&server.http, 200, std::time::Duration::from_secs(30)).await;
    assert_eq!(common::metric(&common::metrics_text(&server.http).await, "pypes_log_storage_full"), 0);
    common::wait_projections_caught_up(&server.http).await;
    assert_eq!(
        common::all_messages(&ch, &s.key, &s.session).await.len(),
        acked.len() + 1,
        "the views caught up once space was freed"
    );

    // After a restart: everything acknowledged, once, in order.
    stop_cleanly(server);
    let server = start(&data);
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let listed = common::all_messages(&ch, &s.key, &s.session).await;
    assert_eq!(listed.len(), acked.len() + 1);
    for (i, m) in listed.iter().take(acked.len()).enumerate() {
        assert!(m.body.starts_with(&format!("{i} ")), "message {i}: {}", &m.body[..20.min(m.body.len())]);
    }
    assert_eq!(listed.last().unwrap().body, "after space was freed");
    stop_cleanly(server);
}

/// A server whose `sub` directory of the data directory (`keys`,
/// `views`) is on a tmpfs of `size` of its own, with a tenant set up.
struct OnTmpfs {
    mount: Tmpfs,
    data: std::path::PathBuf,
    server: common::Server,
    c: common::Clients,
    ch: tonic::transport::Channel,
    s: common::Setup,
    _dir: tempfile::TempDir,
}

async fn with_dir_on_tmpfs(sub: &str, size: &str) -> Option<OnTmpfs> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A first start makes the key store and the views.
    stop_cleanly(start(&data));
    let mount = onto_tmpfs(&data.join(sub), size)?;
    let server = start(&data);
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, &format!("{sub}-full")).await;
    Some(OnTmpfs { mount, data, server, c, ch, s, _dir: dir })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_key_store_disk_refuses_new_keys_by_name_and_resumes_when_freed() {
    let Some(OnTmpfs { mount: keys, data, server, mut c, ch, s, _dir }) = with_dir_on_tmpfs("keys", "256k").await
    else {
        return;
    };
    let new_session =
        || pb::StartSessionRequest { pype_id: s.pype.clone(), end_user_id: s.user.clone(), ..Default::default() };
    // A Session's first message makes its key: new Sessions with a message
    // each fill the key store's disk (the setup's Session has no message,
    // so no key yet).
    let mut sessions = Vec::new();
    let post = |session: &str, body: String| pb::PostMessageRequest {
        session_id: session.into(),
        sender_id: s.user.clone(),
        body,
        ..Default::default()
    };
    let mut refusals = Vec::new();
    while refusals.len() < 2 {
        assert!(sessions.len() < 5_000, "a 256 KiB key store never filled up");
        let session = match c.sessions.start_session(authed(&s.key, new_session())).await {
            Ok(r) => r.into_inner().session_id,
            Err(e) => {
                refusals.push(e);
                continue;
            }
        };
        let first = post(&session, format!("first of {session}"));
        match c.sessions.post_message(authed(&s.key, first)).await {
            Ok(_) => sessions.push(session),
            Err(e) => refusals.push(e),
        }
    }
    for refusal in &refusals {
        assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
        assert!(refusal.message().contains("key store disk is full"), "{}", refusal.message());
    }
    // What already has a key goes on: messages in existing Sessions, reads.
    for session in &sessions {
        let second = post(session, format!("second of {session}"));
        c.sessions.post_message(authed(&s.key, second)).await.expect("a Session that has its key takes messages");
    }
    assert!(!sessions.is_empty(), "no Session got its key before the disk filled");
    eprintln!("{} Sessions got their key before the key store's disk filled", sessions.len());
    assert_eq!(common::all_messages(&ch, &s.key, &sessions[0]).await.len(), 2);
    let ready = not_ready(&server.http).await;
    assert!(ready.contains("key store refuses new keys"), "{ready}");
    assert_eq!(common::metric(&common::metrics_text(&server.http).await, "pypes_keystore_writes_refused"), 1);

    // Space comes back: within a second or so, new keys are made again.
    keys.resize("8m");
    let started = std::time::Instant::now();
    let resumed = c.sessions.start_session(authed(&s.key, new_session())).await.unwrap().into_inner().session_id;
    loop {
        match c.sessions.post_message(authed(&s.key, post(&resumed, format!("first of {resumed}")))).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(started.elapsed().as_secs() < 10, "new keys still refused 10 s after space was freed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    common::wait_readyz(&server.http, 200, std::time::Duration::from_secs(30)).await;
    assert_eq!(common::metric(&common::metrics_text(&server.http).await, "pypes_keystore_writes_refused"), 0);

    // After a restart: every acknowledged message, once, in order.
    stop_cleanly(server);
    let server = start(&data);
    let ch2 = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    for session in &sessions {
        let listed: Vec<String> =
            common::all_messages(&ch2, &s.key, session).await.into_iter().map(|m| m.body).collect();
        assert_eq!(listed, [format!("first of {session}"), format!("second of {session}")]);
    }
    let listed: Vec<String> = common::all_messages(&ch2, &s.key, &resumed).await.into_iter().map(|m| m.body).collect();
    assert_eq!(listed, [format!("first of {resumed}")]);
    drop(ch);
    stop_cleanly(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_on_a_full_disk_of_their_own_keep_serving_and_catch_up_when_freed() {
    let Some(OnTmpfs { mount: views, server, mut c, ch, s, .. }) = with_dir_on_tmpfs("views", "16m").await else {
        return;
    };
    for i in 0..20 {
        c.sessions.post_message(authed(&s.key, common::post(&s, &format!("{i} before")))).await.unwrap();
    }
    common::wait_projections_caught_up(&server.http).await;
    // Another writer fills the views' disk.
    let filler = views.path().join("filler");
    Tmpfs::fill(&filler, u64::MAX);
    // Writes go on (the log is elsewhere); the views stop at their reserve.
    for i in 20..220 {
        c.sessions.post_message(authed(&s.key, common::post(&s, &format!("{i} while full")))).await.unwrap();
    }
    let started = std::time::Instant::now();
    let ready = loop {
        let (code, text) = common::readyz(&server.http).await;
        if code == 503 {
            break text;
        }
        assert!(started.elapsed().as_secs() < 30, "/readyz never named the full views disk: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ready.contains("is not following the log") && ready.contains("disk nearly full"), "{ready}");
    // Reads keep working, in order, from what the views hold.
    let listed = common::all_messages(&ch, &s.key, &s.session).await;
    assert!(listed.len() >= 20, "{} listed", listed.len());
    for (i, m) in listed.iter().enumerate() {
        assert!(m.body.starts_with(&format!("{i} ")), "message {i} in order: {}", m.body);
    }
    // Space comes back: the views catch up by themselves.
    std::fs::remove_file(&filler).unwrap();
    common::wait_projections_caught_up(&server.http).await;
    common::wait_readyz(&server.http, 200, std::time::Duration::from_secs(30)).await;
    let listed = common::all_messages(&ch, &s.key, &s.session).await;
    assert_eq!(listed.len(), 220);
    for (i, m) in listed.iter().enumerate() {
        assert!(m.body.starts_with(&format!("{i} ")), "message {i} in order: {}", m.body);
    }
    stop_cleanly(server);
}
