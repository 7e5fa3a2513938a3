//! Media over gRPC: uploads and downloads (small, ranged, and 100 MiB in
//! bounded memory), every kind of bad upload leaving nothing behind,
//! attachments, erasure deleting blobs and canaries, and a crash mid-upload.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    Server, authed, clients, containing, download, files_under, setup, start, start_with, upload, upload_messages,
    wait_certified,
};
use proto::api as pb;
use sha2::Digest;
use tonic::Code;
use tonic::transport::Channel;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap()
}

/// Deterministic bytes that do not compress or repeat.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Files under the blob store: (committed blobs, everything else).
fn blob_files(data: &Path) -> (Vec<String>, Vec<String>) {
    let mut blobs = Vec::new();
    let mut other = Vec::new();
    for f in files_under(&data.join("blobs")) {
        let name = f.strip_prefix(data).unwrap().display().to_string();
        if name.ends_with(".blob") { blobs.push(name) } else { other.push(name) }
    }
    (blobs, other)
}

fn range(session: &str, media: &str, offset: u64, length: u64) -> pb::DownloadMediaRequest {
    pb::DownloadMediaRequest {
        session_id: session.into(),
        media_id: media.into(),
        offset,
        length,
        ..Default::default()
    }
}

/// Starts the server with a config file beside the data directory (a
/// data directory holds only what pypes writes); the file is read at start.
fn with_config(data: &Path, toml: &str) -> Server {
    let path = std::path::PathBuf::from(format!("{}.pypes.toml", data.display()));
    std::fs::write(&path, toml).unwrap();
    let server = start_with(data, &[("PYPES_CONFIG", path.to_str().unwrap())]);
    std::fs::remove_file(&path).unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_round_trip_by_range_and_travel_as_attachments() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "mia").await;
    let ch = channel(&server).await;

    // Small, with its digest given.
    let small = b"hi!".to_vec();
    let mut messages = upload_messages(&s.session, &s.user, "text/plain", &small, 2);
    if let Some(pb::upload_media_request::Part::Start(start)) = &mut messages[0].part {
        start.sha256 = sha2::Sha256::digest(&small).to_vec();
        start.file_name = "note.txt".into();
    }
    let m = upload(&ch, &s.key, None, messages).await.unwrap();
    assert_eq!((m.size, m.content_type.as_str(), m.file_name.as_str()), (3, "text/plain", "note.txt"));
    assert_eq!(m.sha256, sha2::Sha256::digest(&small).to_vec());
    let (described, got) = download(&ch, &s.key, None, range(&s.session, &m.media_id, 0, 0)).await.unwrap();
    assert_eq!(got, small);
    assert_eq!(described.unwrap().media_id, m.media_id);

    // Several chunks of 1 MiB, sent in pieces that do not line up with them.
    let big = bytes(1, (3 << 20) + 12_345);
    let b = upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "video/mp4", &big, 100_000)).await.unwrap();
    assert_eq!(b.sha256, sha2::Sha256::digest(&big).to_vec());
    assert_eq!(download(&ch, &s.key, None, range(&s.session, &b.media_id, 0, 0)).await.unwrap().1, big);
    let len = big.len() as u64;
    for (offset, length) in
        [(0, 1), (1 << 20, 1), ((1 << 20) - 1, 2), (5, 2 << 20), (len - 1, 1), (len - 7, 0), (len, 0)]
    {
        let (_, got) = download(&ch, &s.key, None, range(&s.session, &b.media_id, offset, length)).await.unwrap();
        let end = if length == 0 { len } else { offset + length };
        assert_eq!(got, big[offset as usize..end as usize], "range {offset}+{length}");
    }
    for (offset, length) in [(len + 1, 0), (len - 1, 2), (u64::MAX, 1)] {
        let e = download(&ch, &s.key, None, range(&s.session, &b.media_id, offset, length)).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "range {offset}+{length}: {e:?}");
    }
    // A participant may fetch; someone who never took part may not.
    let mut as_user = range(&s.session, &b.media_id, 0, 10);
    as_user.participant_id = s.user.clone();
    assert!(download(&ch, &s.key, None, as_user.clone()).await.is_ok());
    as_user.participant_id = uuid::Uuid::now_v7().to_string();
    assert_eq!(download(&ch, &s.key, None, as_user).await.unwrap_err().code(), Code::PermissionDenied);

    // Attachments: an attachment-only message, and one with text.
    let posted = c
        .sessions
        .post_message(authed(
            &s.key,
            pb::PostMessageRequest {
                session_id: s.session.clone(),
                sender_id: s.user.clone(),
                attachment_ids: vec![m.media_id.clone(), b.media_id.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(posted.seq, 1);
    let listed = c
        .views
        .list_messages(authed(&s.key, pb::ListMessagesRequest { session_id: s.session.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .messages;
    let ids: Vec<&str> = listed[0].attachments.iter().map(|a| a.media_id.as_str()).collect();
    assert_eq!(ids, [m.media_id.as_str(), b.media_id.as_str()]);
    assert!(!listed[0].erased);
    assert_eq!(listed[0].attachments[1].size, len);
    // The Session's history shows the uploads and the message.
    let mut watch = c
        .sessions
        .watch_session(authed(&s.key, pb::WatchSessionRequest { session_id: s.session.clone(), from_version: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut uploads = 0;
    loop {
        let e = watch.message().await.unwrap().unwrap();
        match e.event {
            Some(pb::session_event::Event::MediaUploaded(u)) => {
                uploads += 1;
                assert!(!u.content_type.is_empty());
            }
            Some(pb::session_event::Event::Message(msg)) => {
                assert_eq!(msg.attachments.len(), 2);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(uploads, 2);

    // Bad references: twice the same, unknown, another Session's.
    let other = c
        .sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: s.pype.clone(),
                end_user_id: s.user.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for (ids, why) in [
        (vec![m.media_id.clone(), m.media_id.clone()], "named twice"),
        (vec![uuid::Uuid::now_v7().to_string()], "no media of this session"),
        (vec!["not-an-id".to_string()], "not a UUID"),
    ] {
        let e = c
            .sessions
            .post_message(authed(
                &s.key,
                pb::PostMessageRequest {
                    session_id: s.session.clone(),
                    sender_id: s.user.clone(),
                    body: "x".into(),
                    attachment_ids: ids,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{e:?}");
    }
    let e = c
        .sessions
        .post_message(authed(
            &s.key,
            pb::PostMessageRequest {
                session_id: other.session_id.clone(),
                sender_id: s.user.clone(),
                attachment_ids: vec![m.media_id.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("no media of this session"), "{e:?}");
    let e = download(&ch, &s.key, None, range(&other.session_id, &m.media_id, 0, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // An empty message is still refused.
    let e = c
        .sessions
        .post_message(authed(
            &s.key,
            pb::PostMessageRequest { session_id: s.session.clone(), sender_id: s.user.clone(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("body"), "{e:?}");

    // The export names the attachments.
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let mut stream = privacy
        .export_subject(authed(&s.key, pb::ExportSubjectRequest { subject_id: s.user.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let mut doc = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        doc.extend_from_slice(&chunk.data);
    }
    let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    let text = doc.to_string();
    assert!(text.contains(&b.media_id) && text.contains("video/mp4") && text.contains("note.txt"), "{text}");

    // Exactly the two blobs are stored, nothing half-done.
    let (blobs, other_files) = blob_files(data.path());
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    assert!(other_files.is_empty(), "{other_files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_upload_is_named_and_leaves_nothing() {
    use pb::upload_media_request::Part;
    let data = tempfile::tempdir().unwrap();
    let mut server = with_config(data.path(), "[media]\nmax_bytes = 4000000\n");
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "ben").await;
    let ch = channel(&server).await;
    let payload = bytes(2, 300_000);
    let ok = || upload_messages(&s.session, &s.user, "image/jpeg", &payload, 64 * 1024);
    let set_start = |mut m: Vec<pb::UploadMediaRequest>, f: &dyn Fn(&mut pb::UploadStart)| {
        if let Some(Part::Start(start)) = &mut m[0].part {
            f(start);
        }
        m
    };
    let edited = |f: &dyn Fn(&mut Vec<pb::UploadMediaRequest>)| {
        let mut m = ok();
        f(&mut m);
        m
    };
    let cases: Vec<(&str, Vec<pb::UploadMediaRequest>, Code, &str)> = vec![
        ("more bytes than declared", set_start(ok(), &|st| st.size = 200_000), Code::InvalidArgument, "more than the"),
        ("fewer bytes than declared", set_start(ok(), &|st| st.size = 400_000), Code::InvalidArgument, "were declared"),
        (
            "a type not allowed",
            set_start(ok(), &|st| st.content_type = "text/html".into()),
            Code::InvalidArgument,
            "not allowed",
        ),
        ("no type", set_start(ok(), &|st| st.content_type.clear()), Code::InvalidArgument, "content_type"),
        ("over the limit", set_start(ok(), &|st| st.size = 4_000_001), Code::InvalidArgument, "over the limit"),
        ("empty", set_start(ok(), &|st| st.size = 0), Code::InvalidArgument, "at least one byte"),
        ("a wrong digest", set_start(ok(), &|st| st.sha256 = vec![0; 32]), Code::DataLoss, "SHA-256"),
        ("a short digest", set_start(ok(), &|st| st.sha256 = vec![0; 5]), Code::InvalidArgument, "sha256"),
        (
            "a path as file name",
            set_start(ok(), &|st| st.file_name = "../etc/passwd".into()),
            Code::InvalidArgument,
            "file_name",
        ),
        (
            "no such session",
            set_start(ok(), &|st| st.session_id = uuid::Uuid::now_v7().to_string()),
            Code::NotFound,
            "session",
        ),
        (
            "not a participant",
            set_start(ok(), &|st| st.uploader_id = uuid::Uuid::now_v7().to_string()),
            Code::FailedPrecondition,
            "participant",
        ),
        ("chunks first", ok().into_iter().skip(1).collect(), Code::InvalidArgument, "first message"),
        ("nothing at all", Vec::new(), Code::InvalidArgument, "ended before its start"),
        ("a chunk out of order", edited(&|m| m.swap(2, 3)), Code::InvalidArgument, "expected 65536"),
        ("a chunk twice", edited(&|m| m.insert(2, m[1].clone())), Code::InvalidArgument, "chunk.offset"),
        ("two starts", edited(&|m| m.insert(2, m[0].clone())), Code::InvalidArgument, "sent twice"),
        ("an empty message", vec![pb::UploadMediaRequest { part: None }], Code::InvalidArgument, "start"),
    ];
    for (what, messages, code, text) in cases {
        let e = upload(&ch, &s.key, None, messages).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(e.message().contains(text), "{what}: {e:?}");
        let (blobs, other) = blob_files(data.path());
        assert!(blobs.is_empty() && other.is_empty(), "{what} left {blobs:?} {other:?}");
    }

    // A client that goes away mid-upload, and one that stalls.
    drop(c);
    drop(ch);
    server = {
        drop(server);
        with_config(data.path(), "[media]\nupload_idle_secs = 2\n")
    };
    let ch = channel(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut messages = upload_messages(&s.session, &s.user, "image/jpeg", &payload, 64 * 1024).into_iter();
    for m in messages.by_ref().take(3) {
        tx.send(m).await.unwrap();
    }
    let client = tokio::spawn({
        let (ch, key) = (ch.clone(), s.key.clone());
        async move {
            pb::media_service_client::MediaServiceClient::new(ch)
                .upload_media(authed(&key, tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
        }
    });
    wait_for(|| !blob_files(data.path()).1.is_empty(), "the upload to start").await;
    // The client vanishes: its task and its connection go.
    client.abort();
    drop(ch);
    drop(tx);
    wait_for(|| blob_files(data.path()) == (vec![], vec![]), "a vanished client's upload to be removed").await;

    let ch = channel(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for m in upload_messages(&s.session, &s.user, "image/jpeg", &payload, 64 * 1024).into_iter().take(2) {
        tx.send(m).await.unwrap();
    }
    let e = pb::media_service_client::MediaServiceClient::new(ch.clone())
        .upload_media(authed(&s.key, tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("65536 bytes"), "{e:?}");
    drop(tx);
    assert_eq!(blob_files(data.path()), (vec![], vec![]));

    // Per-tenant limits from config.
    drop(server);
    let server = with_config(
        data.path(),
        &format!(
            "[media]\n[[media.tenant]]\nid = \"{}\"\nmax_bytes = 100\nallowed_types = [\"text/plain\"]\n",
            s.tenant
        ),
    );
    let ch = channel(&server).await;
    let e = upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "image/jpeg", b"x", 1)).await.unwrap_err();
    assert!(e.message().contains("allowed: text/plain"), "{e:?}");
    let e = upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "text/plain", &[b'x'; 101], 50))
        .await
        .unwrap_err();
    assert!(e.message().contains("limit of 100"), "{e:?}");
    assert!(
        upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "text/plain", &[b'x'; 100], 50)).await.is_ok()
    );
    // Bad media config is named at start.
    drop(server);
    let path = data.path().join("bad.toml");
    std::fs::write(&path, "[media]\nallowed_types = [\"Image/PNG\"]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("media.allowed_types"), "{out:?}");
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_deletes_the_blobs_and_no_canary_is_left() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "carla").await;
    let ch = channel(&server).await;
    let canary = "CANARY-IN-A-PICTURE-6b1f0e";
    let mut picture = bytes(3, 2_500_000);
    for at in [0, 1 << 20, 2_400_000] {
        picture[at..at + canary.len()].copy_from_slice(canary.as_bytes());
    }
    let m = upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "image/png", &picture, 256 * 1024))
        .await
        .unwrap();
    c.sessions
        .post_message(authed(
            &s.key,
            pb::PostMessageRequest {
                session_id: s.session.clone(),
                sender_id: s.user.clone(),
                attachment_ids: vec![m.media_id.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // Encrypted at rest: the canary is in no file even before the erasure.
    assert!(containing(&files_under(data.path()), canary).is_empty());
    assert_eq!(blob_files(data.path()).0.len(), 1);

    c.erasure
        .request_erasure(authed(&s.key, pb::RequestErasureRequest { subject_id: s.user.clone(), ..Default::default() }))
        .await
        .unwrap();
    wait_certified(&mut c, &s.key, &s.user).await;
    assert_eq!(blob_files(data.path()), (vec![], vec![]), "the blob files are deleted");
    let e = download(&ch, &s.key, None, range(&s.session, &m.media_id, 0, 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("erased"), "{e:?}");
    assert!(containing(&files_under(data.path()), canary).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_upload_leaves_nothing_visible_and_the_space_is_reclaimed() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "dora").await;
    let ch = channel(&server).await;
    let payload = bytes(4, 6 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let client = tokio::spawn({
        let (ch, key) = (ch.clone(), s.key.clone());
        async move {
            pb::media_service_client::MediaServiceClient::new(ch)
                .upload_media(authed(&key, tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await
        }
    });
    for m in upload_messages(&s.session, &s.user, "video/mp4", &payload, 512 * 1024).into_iter().take(6) {
        tx.send(m).await.unwrap();
    }
    wait_for(
        || files_under(&data.path().join("blobs/incoming")).iter().any(|f| f.metadata().unwrap().len() > 2 << 20),
        "2 MiB of the upload on disk",
    )
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(client.await.unwrap().is_err(), "the upload cannot succeed");
    assert_eq!(blob_files(data.path()).1.len(), 1, "the crash left the part file");

    let server = start(data.path());
    assert_eq!(blob_files(data.path()), (vec![], vec![]), "the restart removed it");
    let mut c = clients(&server.grpc).await;
    let session = c
        .sessions
        .get_session(authed(&s.key, pb::GetSessionRequest { session_id: s.session.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.version, 0, "nothing was recorded in the session after its start: {session:?}");
    // And the store works as before.
    let ch = channel(&server).await;
    let m =
        upload(&ch, &s.key, None, upload_messages(&s.session, &s.user, "video/mp4", &payload, 1 << 20)).await.unwrap();
    assert_eq!(download(&ch, &s.key, None, range(&s.session, &m.media_id, 0, 0)).await.unwrap().1, payload);
}

/// 100 MiB up and down, generated and hashed as it streams: the server's
/// peak memory grows by a small fraction of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_streams_through_in_bounded_memory() {
    const SIZE: u64 = 100 << 20;
    const PIECE: usize = 1 << 20;
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "emil").await;
    let ch = channel(&server).await;
    let pid = server.child.id();
    let before = common::peak_rss_kib(pid);

    let piece = |i: u64| bytes(100 + i, PIECE);
    let start = pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Start(pb::UploadStart {
            session_id: s.session.clone(),
            uploader_id: s.user.clone(),
            content_type: "video/webm".into(),
            size: SIZE,
            ..Default::default()
        })),
    };
    let chunks = (0..SIZE / PIECE as u64).map(move |i| pb::UploadMediaRequest {
        part: Some(pb::upload_media_request::Part::Chunk(pb::UploadChunk {
            offset: i * PIECE as u64,
            data: piece(i).into(),
        })),
    });
    let stream = tokio_stream::iter(std::iter::once(start).chain(chunks));
    let m = pb::media_service_client::MediaServiceClient::new(ch.clone())
        .upload_media(authed(&s.key, stream))
        .await
        .unwrap()
        .into_inner();
    let mut expected = sha2::Sha256::new();
    for i in 0..SIZE / PIECE as u64 {
        expected.update(piece(i));
    }
    let expected = expected.finalize().to_vec();
    assert_eq!(m.sha256, expected);

    let mut stream = pb::media_service_client::MediaServiceClient::new(ch.clone())
        .download_media(authed(&s.key, range(&s.session, &m.media_id, 0, 0)))
        .await
        .unwrap()
        .into_inner();
    let (mut got, mut n) = (sha2::Sha256::new(), 0u64);
    while let Some(chunk) = stream.message().await.unwrap() {
        n += chunk.data.len() as u64;
        got.update(&chunk.data);
    }
    assert_eq!((n, got.finalize().to_vec()), (SIZE, expected));
    let after = common::peak_rss_kib(pid);
    println!("100 MiB up and down; server peak RSS {before} → {after} KiB");
    let grew = after.saturating_sub(before);
    assert!(grew < 48 * 1024, "peak RSS grew {grew} KiB for a 100 MiB blob");
    let stored = std::fs::metadata(data.path().join(&blob_files(data.path()).0[0])).unwrap().len();
    assert_eq!(stored, 88 + SIZE + 100 * 28, "header, and 28 bytes per 1 MiB chunk");
}
