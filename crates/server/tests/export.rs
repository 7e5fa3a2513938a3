//! Access and portability: an export holds every kind of data pypes keeps
//! about a subject (profile, history, requests, Sessions with messages,
//! devices, participants and read horizons), is valid JSON in the
//! documented format, arrives in chunks, shows erased parts as erased, and
//! keeps the server's memory bounded for a subject with 100,000 messages.

mod common;

use common::{ADMIN, authed, clients, post, setup, start};
use proto::api as pb;
use tonic::Code;

async fn export(
    c: &tonic::transport::Channel,
    key: &str,
    subject: &str,
    tenant: &str,
) -> Result<(Vec<u8>, usize), tonic::Status> {
    let mut client = pb::privacy_service_client::PrivacyServiceClient::new(c.clone());
    let mut stream = client
        .export_subject(authed(key, pb::ExportSubjectRequest { subject_id: subject.into(), tenant_id: tenant.into() }))
        .await?
        .into_inner();
    let (mut all, mut chunks) = (Vec::new(), 0);
    while let Some(chunk) = stream.message().await? {
        assert!(chunk.data.len() <= 64 * 1024 + 8 * 1024, "chunk of {} bytes", chunk.data.len());
        all.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    Ok((all, chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_every_kind_of_data() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, "exporter").await;
    let user = c
        .subjects
        .register_subject(authed(
            &s.key,
            pb::RegisterSubjectRequest {
                username: "ex.port".into(),
                email: "ex.port@example.com".into(),
                phone: "+4915112345678".into(),
                date_of_birth: "1990-05-17".into(),
                password: "a long enough password".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let session = c
        .sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: s.pype.clone(),
                end_user_id: user.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let agent = uuid::Uuid::now_v7().to_string();
    c.pypes
        .assign_member(authed(
            &s.key,
            pb::AssignMemberRequest {
                pype_id: s.pype.clone(),
                member_id: agent.clone(),
                kind: pb::ParticipantKind::Agent as i32,
                assigned: true,
            },
        ))
        .await
        .unwrap();
    c.sessions
        .join_session(authed(
            &s.key,
            pb::JoinSessionRequest {
                session_id: session.session_id.clone(),
                participant_id: agent.clone(),
                kind: pb::ParticipantKind::Agent as i32,
            },
        ))
        .await
        .unwrap();
    let mut mine = common::Setup { user: user.subject_id.clone(), session: session.session_id.clone(), ..s };
    let mut m = post(&mine, "my card \"is\" lost\nplease help");
    m.device = "iPhone 15; iOS 18".into();
    c.sessions.post_message(authed(&mine.key, m)).await.unwrap();
    mine.user = agent.clone();
    c.sessions.post_message(authed(&mine.key, post(&mine, "we blocked it"))).await.unwrap();
    c.sessions
        .advance_read_horizon(authed(
            &mine.key,
            pb::AdvanceReadHorizonRequest {
                session_id: session.session_id.clone(),
                participant_id: user.subject_id.clone(),
                up_to: 2,
                private: true,
            },
        ))
        .await
        .unwrap();
    c.sessions
        .close_session(authed(&mine.key, pb::CloseSessionRequest { session_id: session.session_id.clone() }))
        .await
        .unwrap();
    for deactivate in [true, false] {
        if deactivate {
            c.subjects
                .deactivate_subject(authed(
                    &mine.key,
                    pb::DeactivateSubjectRequest { subject_id: user.subject_id.clone() },
                ))
                .await
                .unwrap();
        } else {
            c.subjects
                .reactivate_subject(authed(
                    &mine.key,
                    pb::ReactivateSubjectRequest { subject_id: user.subject_id.clone() },
                ))
                .await
                .unwrap();
        }
    }

    let (bytes, _) = export(&ch, &mine.key, &user.subject_id, "").await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("the export is one JSON document");
    assert_eq!(doc["format"], "pypes-subject-export");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["subject_id"], user.subject_id.as_str());
    assert_eq!(doc["tenant_id"], mine.tenant.as_str());
    let p = &doc["profile"];
    assert_eq!(p["username"], "ex.port");
    assert_eq!(p["email"], "ex.port@example.com");
    assert_eq!(p["phone"], "+4915112345678");
    assert_eq!(p["date_of_birth"], "1990-05-17");
    assert_eq!(p["status"], "active");
    assert_eq!(p["password"], "set (the hash is not exported)");
    assert!(!String::from_utf8_lossy(&bytes).contains("argon2"), "no password hash in the export");
    let history: Vec<&str> = doc["history"].as_array().unwrap().iter().map(|h| h["event"].as_str().unwrap()).collect();
    assert_eq!(history, ["registered", "password set", "deactivated by the tenant", "reactivated by the tenant"]);
    let sessions = doc["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    let x = &sessions[0];
    assert_eq!(x["session_id"], session.session_id.as_str());
    assert_eq!(x["pype_id"], mine.pype.as_str());
    assert_eq!(x["state"], "closed");
    assert_eq!(x["closed_by"], "api");
    let msgs = x["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["from"], "you");
    assert_eq!(msgs[0]["body"], "my card \"is\" lost\nplease help");
    assert_eq!(msgs[0]["device"], "iPhone 15; iOS 18");
    assert_eq!(msgs[1]["from"], "agent");
    assert_eq!(msgs[1]["body"], "we blocked it");
    let horizons = x["read_horizons"].as_array().unwrap();
    assert!(
        horizons.iter().any(|h| h["participant"] == "you" && h["read_up_to"] == 2 && h["private"] == true),
        "{horizons:?}"
    );
    let participants = x["participants"].as_array().unwrap();
    assert!(participants.iter().any(|p| p["id"] == agent.as_str() && p["kind"] == "agent"), "{participants:?}");

    // Another tenant's key, a missing subject and bad ids are refused.
    let other = c
        .tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "O".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert_eq!(export(&ch, &other, &user.subject_id, "").await.unwrap_err().code(), Code::NotFound);
    let e = export(&ch, &mine.key, "nope", "").await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("subject_id"), "{e:?}");
    // The admin key names the tenant.
    let (admin_bytes, _) = export(&ch, ADMIN, &user.subject_id, &mine.tenant).await.unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&admin_bytes).is_ok());

    // After erasure: the export still works, with the profile erased.
    c.erasure
        .request_erasure(authed(
            &mine.key,
            pb::RequestErasureRequest { subject_id: user.subject_id.clone(), tenant_id: String::new() },
        ))
        .await
        .unwrap();
    for _ in 0..100 {
        let st = c
            .erasure
            .get_erasure(authed(
                &mine.key,
                pb::GetErasureRequest { subject_id: user.subject_id.clone(), tenant_id: String::new() },
            ))
            .await
            .unwrap()
            .into_inner();
        if !st.certificate.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (bytes, _) = export(&ch, &mine.key, &user.subject_id, "").await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["profile"]["erased"], true);
    for f in ["username", "email", "phone", "date_of_birth"] {
        assert_eq!(doc["profile"][f], "[erased]", "{f}");
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("ex.port") && !text.contains("lost"), "{text}");
    assert!(text.contains("erasure requested") && text.contains("\"kind\":\"erasure\""), "{text}");
}

/// 100,000 messages (10 Sessions of 10,000): the export streams them in
/// chunks, and the server's peak memory grows by far less than the
/// document's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_with_100k_messages_exports_in_bounded_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, "chatty").await;
    let body = "x".repeat(300);
    let mut sessions = vec![s.session.clone()];
    for _ in 1..10 {
        let started = c
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
        sessions.push(started.session_id);
    }
    let mut tasks = Vec::new();
    for session in sessions {
        let (ch, key, user, body) = (ch.clone(), s.key.clone(), s.user.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = pb::session_service_client::SessionServiceClient::new(ch);
            for _ in 0..10_000 {
                client
                    .post_message(authed(
                        &key,
                        pb::PostMessageRequest {
                            session_id: session.clone(),
                            sender_id: user.clone(),
                            body: body.clone(),
                            device: String::new(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The read models digest the 100,000 messages in the background; the
    // measurement starts once they are done, so only the export is in it.
    common::wait_projections_caught_up(&server.http).await;
    // A first export warms the server up: the blocking threads that read
    // the log and their allocator heaps are made once (more of them on a
    // busy machine), and are not the export's to count.
    export(&ch, &s.key, &s.user, "").await.unwrap();
    let pid = server.child.id();
    let before = common::peak_rss_kib(pid);
    let (bytes, chunks) = export(&ch, &s.key, &s.user, "").await.unwrap();
    let after = common::peak_rss_kib(pid);
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let total: usize =
        doc["sessions"].as_array().unwrap().iter().map(|x| x["messages"].as_array().unwrap().len()).sum();
    assert_eq!(total, 100_000);
    assert!(chunks > 400, "{chunks} chunks for {} bytes", bytes.len());
    let grew = after.saturating_sub(before);
    println!("export of {} bytes in {chunks} chunks; server peak RSS {before} → {after} KiB", bytes.len());
    assert!(grew * 1024 < bytes.len() as u64 / 2, "peak memory grew by {grew} KiB for a {} byte export", bytes.len());
}
