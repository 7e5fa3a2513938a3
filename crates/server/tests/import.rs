//! `SessionService.ImportSessions` through the real binary: per-item
//! errors that leave the items around them written, an idempotent re-send,
//! and a server killed (SIGKILL) in the middle of an import, restarted and
//! sent the same items again: every Session ends up written exactly once,
//! whole.

mod common;

use std::time::Duration;

use common::{authed, clients, setup, start};
use proto::api as pb;
use tonic::transport::Channel;

const T: i64 = 1_700_000_000_000_000;

fn item(id: &str, pype: &str, user: &str, agent: &str, messages: usize) -> pb::ImportSessionRequest {
    pb::ImportSessionRequest {
        import_id: id.into(),
        pype_id: pype.into(),
        end_user_id: user.into(),
        started_at_micros: T,
        messages: (0..messages)
            .map(|i| pb::ImportedMessage {
                sender_id: if i % 2 == 0 { user.into() } else { agent.into() },
                sender_kind: pb::ParticipantKind::Agent as i32,
                body: format!("{id} message {i}"),
                sent_at_micros: T + 1_000 * i as i64,
            })
            .collect(),
        closed_at_micros: T + 1_000 * messages as i64,
    }
}

async fn import(
    ch: &Channel,
    key: &str,
    items: Vec<pb::ImportSessionRequest>,
) -> Result<pb::ImportSessionsResponse, tonic::Status> {
    pb::session_service_client::SessionServiceClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .import_sessions(authed(key, tokio_stream::iter(items)))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_are_named_and_a_resend_writes_nothing_twice() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "importer").await;
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let agent = uuid::Uuid::now_v7().to_string();

    let mut items: Vec<_> = (0..12).map(|i| item(&format!("good-{i}"), &s.pype, &s.user, &agent, 20)).collect();
    let mut unknown_pype = item("bad-pype", &uuid::Uuid::now_v7().to_string(), &s.user, &agent, 3);
    unknown_pype.import_id = "bad-pype".into();
    let mut out_of_order = item("bad-order", &s.pype, &s.user, &agent, 5);
    out_of_order.messages[3].sent_at_micros = T - 5;
    let mut oversized = item("bad-size", &s.pype, &s.user, &agent, 2);
    oversized.messages[1].body = "x".repeat(10_001);
    let unknown_user = item("bad-user", &s.pype, &uuid::Uuid::now_v7().to_string(), &agent, 2);
    let mut bad_kind = item("bad-kind", &s.pype, &s.user, &agent, 2);
    bad_kind.messages[1].sender_kind = 99;
    let no_id = item("", &s.pype, &s.user, &agent, 2);
    // Bad items between the good ones.
    for (at, bad) in
        [(1, unknown_pype), (3, out_of_order), (5, oversized), (7, unknown_user), (9, bad_kind), (11, no_id)]
    {
        items.insert(at, bad);
    }

    let first = import(&ch, &s.key, items.clone()).await.unwrap();
    assert_eq!((first.written, first.already_imported, first.failed), (12, 0, 6), "{first:?}");
    assert_eq!(first.messages_written, 12 * 20);
    assert_eq!(first.results.len(), items.len());
    use pb::import_session_result::Status;
    let reason = |id: &str| {
        let r = first.results.iter().find(|r| r.import_id == id).unwrap();
        assert_eq!(r.status, Status::Failed as i32, "{r:?}");
        r.reason.clone()
    };
    assert!(reason("bad-pype").contains("no such Pype"), "{}", reason("bad-pype"));
    assert!(reason("bad-order").contains("messages[3]") && reason("bad-order").contains("out of order"));
    assert!(reason("bad-size").contains("messages[1]") && reason("bad-size").contains("10000"));
    assert!(reason("bad-user").contains("no such end user"));
    assert!(reason("bad-kind").contains("sender_kind"));
    assert!(reason("").contains("import_id"));
    // Results come back in the order sent.
    let order: Vec<&str> = first.results.iter().map(|r| r.import_id.as_str()).collect();
    let sent: Vec<&str> = items.iter().map(|i| i.import_id.as_str()).collect();
    assert_eq!(order, sent);

    // A written Session is whole, with its original times and its agent.
    let good = first.results.iter().find(|r| r.import_id == "good-4").unwrap();
    assert_eq!(good.status, Status::Written as i32);
    let session = c
        .sessions
        .get_session(authed(&s.key, pb::GetSessionRequest { session_id: good.session_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.last_seq, 20);
    assert_eq!(session.state, pb::SessionState::Closed as i32);
    assert!(session.participants.iter().any(|p| p.participant_id == agent));
    let messages = c
        .views
        .list_messages(authed(
            &s.key,
            pb::ListMessagesRequest { session_id: good.session_id.clone(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(messages.len(), 20);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(m.body, format!("good-4 message {i}"));
        assert_eq!(m.sent_at_micros, T + 1_000 * i as i64);
    }
    // A bad item wrote nothing: its Session does not exist.
    let bad = first.results.iter().find(|r| r.import_id == "bad-order").unwrap();
    let missing = c
        .sessions
        .get_session(authed(&s.key, pb::GetSessionRequest { session_id: bad.session_id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Sent again: nothing is written twice.
    let again = import(&ch, &s.key, items).await.unwrap();
    assert_eq!((again.written, again.already_imported, again.failed), (0, 12, 6), "{again:?}");
    for (a, b) in first.results.iter().zip(&again.results) {
        assert_eq!(a.session_id, b.session_id, "the same import id names the same Session");
    }
    let session = c
        .sessions
        .get_session(authed(&s.key, pb::GetSessionRequest { session_id: good.session_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((session.last_seq, session.version), (20, 20 + 1 + 1), "started, joined, 20 messages, closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_resumes_from_what_was_written() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "importer").await;
    let tenant = uuid::Uuid::parse_str(&s.tenant).unwrap();
    let agent = uuid::Uuid::now_v7().to_string();
    const N: usize = 1500;
    const M: usize = 30;
    let items: Vec<_> = (0..N).map(|i| item(&format!("old-{i}"), &s.pype, &s.user, &agent, M)).collect();
    let ids: Vec<String> = items.iter().map(|i| app::import::session_id(tenant, &i.import_id).to_string()).collect();

    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let running = tokio::spawn({
        let (ch, key, items) = (ch.clone(), s.key.clone(), items.clone());
        async move { import(&ch, &key, items).await }
    });
    // Kill once some Sessions are durable (the first one exists).
    let probe = |c: &mut common::Clients, id: String| {
        let key = s.key.clone();
        let mut sessions = c.sessions.clone();
        async move { sessions.get_session(authed(&key, pb::GetSessionRequest { session_id: id })).await }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while probe(&mut c, ids[0].clone()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the import wrote nothing in a minute");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let cut = running.await.unwrap();
    assert!(cut.is_err(), "the import finished before the kill; make it larger");

    let server = start(data.path());
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut c = clients(&server.grpc).await;
    // Before the re-send: every Session is whole or absent.
    let mut before = 0;
    for id in &ids {
        match probe(&mut c, id.clone()).await {
            Ok(r) => {
                assert_eq!(r.into_inner().last_seq, M as u64, "a half-written Session");
                before += 1;
            }
            Err(e) => assert_eq!(e.code(), tonic::Code::NotFound),
        }
    }
    assert!(before > 0);
    let resumed = import(&ch, &s.key, items).await.unwrap();
    assert_eq!(resumed.failed, 0, "{:?}", resumed.results.iter().find(|r| !r.reason.is_empty()));
    assert_eq!(resumed.already_imported, before as u64, "what was durable before the kill is not written again");
    assert_eq!(resumed.written + resumed.already_imported, N as u64);
    for id in &ids {
        let r = probe(&mut c, id.clone()).await.unwrap().into_inner();
        assert_eq!((r.last_seq, r.version), (M as u64, M as u64 + 2));
    }
}
