//! The real `pypes` binary on ephemeral ports, driven by a real tonic
//! client: a conversation end to end, the errors every kind of bad input
//! gets, tenant isolation, health and reflection, and a SIGKILL in the
//! middle of a conversation that loses no acknowledged message.

mod common;

use std::time::Duration;

use common::{authed, clients, post, setup, start};

use proto::api as pb;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("expected an error");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_and_every_kind_of_bad_input() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "ada").await;
    // Watch from the start while messages arrive.
    let mut watch = c
        .sessions
        .watch_session(authed(&s.key, pb::WatchSessionRequest { session_id: s.session.clone(), from_version: 0 }))
        .await
        .unwrap()
        .into_inner();
    for i in 1..=3 {
        let r = c.sessions.post_message(authed(&s.key, post(&s, &format!("message {i}")))).await.unwrap().into_inner();
        assert_eq!(r.seq, i);
    }
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        if let Some(pb::session_event::Event::Message(m)) = ev.event {
            bodies.push(m.body);
        }
    }
    assert_eq!(bodies, ["message 1", "message 2", "message 3"]);

    // Bad input names the field.
    let bad = c
        .sessions
        .post_message(authed(&s.key, pb::PostMessageRequest { session_id: "nope".into(), ..post(&s, "x") }))
        .await;
    assert_eq!(code(bad), (Code::InvalidArgument, "session_id: is not a UUID".into()));
    let (c1, m1) = code(c.sessions.post_message(authed(&s.key, post(&s, ""))).await);
    assert_eq!(c1, Code::InvalidArgument);
    assert!(m1.starts_with("body"), "{m1}");
    let (c2, m2) = code(c.sessions.post_message(authed(&s.key, post(&s, &"x".repeat(10_001)))).await);
    assert!(c2 == Code::InvalidArgument && m2.starts_with("body"), "{m2}");
    let bad_timers = pb::StartSessionRequest {
        pype_id: s.pype.clone(),
        end_user_id: s.user.clone(),
        timers: Some(pb::Timers { inactive_after_secs: 1, close_after_secs: 10 }),
        ..Default::default()
    };
    let (c3, m3) = code(c.sessions.start_session(authed(&s.key, bad_timers)).await);
    assert!(c3 == Code::InvalidArgument && m3.starts_with("timers"), "{m3}");
    let list = pb::ListSessionsRequest { pype_id: s.pype.clone(), page_size: 0, page_token: "garbage".into() };
    assert_eq!(code(c.sessions.list_sessions(authed(&s.key, list)).await).0, Code::InvalidArgument);
    let child = pb::RegisterSubjectRequest {
        username: "kid".into(),
        email: "k@example.com".into(),
        date_of_birth: "2020-01-01".into(),
        ..Default::default()
    };
    let (c4, m4) = code(c.subjects.register_subject(authed(&s.key, child)).await);
    assert!(c4 == Code::InvalidArgument && m4.starts_with("birth"), "{m4}");
    let dup = pb::RegisterSubjectRequest {
        username: "ADA".into(),
        email: "a2@example.com".into(),
        attested_at_least_13: true,
        ..Default::default()
    };
    assert_eq!(
        code(c.subjects.register_subject(authed(&s.key, dup)).await),
        (Code::AlreadyExists, "username already exists".into())
    );

    // Invited, then onboarded: the username is claimed at onboarding.
    let invited = c
        .subjects
        .invite_subject(authed(&s.key, pb::InviteSubjectRequest { email: "eve@example.com".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(invited.status, pb::SubjectStatus::Invited as i32);
    let taken = pb::OnboardSubjectRequest {
        subject_id: invited.subject_id.clone(),
        username: "ada".into(),
        attested_at_least_13: true,
        ..Default::default()
    };
    assert_eq!(
        code(c.subjects.onboard_subject(authed(&s.key, taken)).await),
        (Code::AlreadyExists, "username already exists".into())
    );
    let ok = pb::OnboardSubjectRequest {
        subject_id: invited.subject_id.clone(),
        username: "eve".into(),
        attested_at_least_13: true,
        ..Default::default()
    };
    let eve = c.subjects.onboard_subject(authed(&s.key, ok)).await.unwrap().into_inner();
    assert_eq!(
        (eve.status, eve.username.as_str(), eve.email.as_str()),
        (pb::SubjectStatus::Active as i32, "eve", "eve@example.com")
    );
    let got = c
        .subjects
        .get_subject(authed(&s.key, pb::GetSubjectRequest { subject_id: invited.subject_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.status,
        pb::SubjectStatus::Active as i32,
        "a live actor must not serve the state from before onboarding"
    );

    // Unknown ids, and another tenant's ids, are NOT_FOUND alike.
    let unknown = pb::GetSessionRequest { session_id: uuid::Uuid::now_v7().to_string() };
    assert_eq!(code(c.sessions.get_session(authed(&s.key, unknown)).await).0, Code::NotFound);
    let other = setup(&mut c, "bob").await;
    let theirs = pb::GetSessionRequest { session_id: s.session.clone() };
    assert_eq!(
        code(c.sessions.get_session(authed(&other.key, theirs)).await),
        (Code::NotFound, "session not found".into())
    );
    assert_eq!(code(c.sessions.post_message(authed(&other.key, post(&s, "hi"))).await).0, Code::NotFound);

    // Authentication and roles.
    assert_eq!(
        code(c.sessions.get_session(Request::new(pb::GetSessionRequest { session_id: s.session.clone() })).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            c.sessions
                .get_session(authed("pypes_nonsense", pb::GetSessionRequest { session_id: s.session.clone() }))
                .await
        )
        .0,
        Code::Unauthenticated
    );
    assert_eq!(
        code(
            c.tenants
                .create_tenant(authed(&s.key, pb::CreateTenantRequest { name: "x".into(), ..Default::default() }))
                .await
        )
        .0,
        Code::PermissionDenied
    );
    let second = c.tenants.create_api_key(authed(&s.key, pb::CreateApiKeyRequest {})).await.unwrap().into_inner();
    c.tenants
        .revoke_api_key(authed(&s.key, pb::RevokeApiKeyRequest { api_key_id: second.api_key_id, ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(
        code(
            c.sessions
                .get_session(authed(&second.api_key, pb::GetSessionRequest { session_id: s.session.clone() }))
                .await
        )
        .0,
        Code::Unauthenticated
    );

    // Paging over a Pype's Sessions.
    for _ in 0..4 {
        c.sessions
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
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = 0;
    let mut token = String::new();
    loop {
        let page = c
            .sessions
            .list_sessions(authed(
                &s.key,
                pb::ListSessionsRequest { pype_id: s.pype.clone(), page_size: 2, page_token: token },
            ))
            .await
            .unwrap()
            .into_inner();
        seen += page.sessions.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, 5);

    // Closed is final.
    c.sessions.close_session(authed(&s.key, pb::CloseSessionRequest { session_id: s.session.clone() })).await.unwrap();
    assert_eq!(
        code(c.sessions.post_message(authed(&s.key, post(&s, "late"))).await),
        (Code::FailedPrecondition, "the session is closed".into())
    );

    // Health and metrics over HTTP; gRPC health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap(),
    );
    let h = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // Reflection lists the API, so grpcurl works without proto files.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection =
        ServerReflectionClient::new(Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "pypes.api.v1.SessionService",
        "pypes.api.v1.TenantService",
        "pypes.api.v1.PypeService",
        "pypes.api.v1.SubjectService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // Older grpcurl versions speak reflection v1alpha only.
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut old =
            ServerReflectionClient::new(Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap());
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = old.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.message().await.unwrap().unwrap().message_response
        else {
            panic!("no service list over v1alpha")
        };
        assert!(list.service.iter().any(|s| s.name == "pypes.api.v1.SessionService"));
    }
    let metrics = http_get(&server.http, "/metrics").await;
    assert!(metrics.contains("pypes_grpc_requests_total{method=\"PostMessage\",code=\"OK\"} 3"), "{metrics}");
    assert!(http_get(&server.http, "/readyz").await.contains("ready"));
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_conversation_loses_no_acknowledged_message() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "carol").await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let (mut sessions, acked, s_key, req) = (c.sessions.clone(), acked.clone(), s.key.clone(), post(&s, ""));
        tokio::spawn(async move {
            for i in 0.. {
                let body = format!("m{i}");
                match sessions
                    .post_message(authed(&s_key, pb::PostMessageRequest { body: body.clone(), ..req.clone() }))
                    .await
                {
                    Ok(r) => acked.lock().unwrap().push((r.into_inner().seq, body)),
                    Err(_) => return,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    // SIGKILL: no shutdown, no flush.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = writer.await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 5, "only {} acknowledged before the kill", acked.len());

    let server2 = start(data.path());
    let mut c = clients(&server2.grpc).await;
    let state = c
        .sessions
        .get_session(authed(&s.key, pb::GetSessionRequest { session_id: s.session.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(state.last_seq >= acked.len() as u64);
    let mut watch = c
        .sessions
        .watch_session(authed(&s.key, pb::WatchSessionRequest { session_id: s.session.clone(), from_version: 0 }))
        .await
        .unwrap()
        .into_inner();
    let mut stored = Vec::new();
    while (stored.len() as u64) < state.last_seq {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap().unwrap().unwrap();
        if let Some(pb::session_event::Event::Message(m)) = ev.event {
            stored.push((m.seq, m.body));
        }
    }
    // Every acknowledged message is there, with its number and body; numbers have no gaps.
    for (seq, body) in &acked {
        assert_eq!(&stored[(*seq - 1) as usize], &(*seq, body.clone()));
    }
    assert!(stored.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 1));
    // And the conversation goes on.
    let next = c.sessions.post_message(authed(&s.key, post(&s, "after the restart"))).await.unwrap().into_inner();
    assert_eq!(next.seq, state.last_seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_valid_protobuf_text_is_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "dora").await;
    // A PostMessageRequest whose body (field 3) holds bytes that are not UTF-8,
    // sent with a raw codec so the client cannot refuse it first.
    let mut raw = Vec::new();
    for (field, value) in [(1u8, s.session.as_bytes()), (2, s.user.as_bytes()), (3, &[0xff, 0xfe, 0x41][..])] {
        raw.push(field << 3 | 2);
        raw.push(value.len() as u8);
        raw.extend_from_slice(value);
    }
    let channel = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/pypes.api.v1.SessionService/PostMessage");
    let status = grpc.unary::<_, Vec<u8>, _>(authed(&s.key, raw), path, RawCodec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("PostMessageRequest.body"), "{}", status.message());
}

/// Sends and receives raw bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypes_members_horizons_and_subject_states_through_the_api() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "fred").await;
    let agent = uuid::Uuid::now_v7().to_string();
    let join = |who: &str, kind: pb::ParticipantKind| pb::JoinSessionRequest {
        session_id: s.session.clone(),
        participant_id: who.to_string(),
        kind: kind as i32,
    };
    // An agent must be assigned to the Pype before joining its Sessions.
    let (c1, m1) = code(c.sessions.join_session(authed(&s.key, join(&agent, pb::ParticipantKind::Agent))).await);
    assert_eq!((c1, m1.as_str()), (Code::FailedPrecondition, "the participant is not assigned to the session's pype"));
    let bad_kind =
        pb::AssignMemberRequest { pype_id: s.pype.clone(), member_id: agent.clone(), kind: 42, assigned: true };
    let (c2, m2) = code(c.pypes.assign_member(authed(&s.key, bad_kind)).await);
    assert!(c2 == Code::InvalidArgument && m2.starts_with("kind"), "{m2}");
    let assign = pb::AssignMemberRequest {
        pype_id: s.pype.clone(),
        member_id: agent.clone(),
        kind: pb::ParticipantKind::Agent as i32,
        assigned: true,
    };
    let pype = c.pypes.assign_member(authed(&s.key, assign)).await.unwrap().into_inner();
    assert_eq!(pype.agent_ids, vec![agent.clone()]);
    let joined =
        c.sessions.join_session(authed(&s.key, join(&agent, pb::ParticipantKind::Agent))).await.unwrap().into_inner();
    assert_eq!(joined.participants.len(), 2);

    // Read horizons: forward only, past the last message refused, private ones hidden.
    for body in ["one", "two"] {
        c.sessions.post_message(authed(&s.key, post(&s, body))).await.unwrap();
    }
    let horizon = |who: &str, up_to: u64, private: bool| pb::AdvanceReadHorizonRequest {
        session_id: s.session.clone(),
        participant_id: who.to_string(),
        up_to,
        private,
    };
    let seen = c.sessions.advance_read_horizon(authed(&s.key, horizon(&agent, 2, false))).await.unwrap().into_inner();
    let agent_row = seen.participants.iter().find(|p| p.participant_id == agent).unwrap();
    assert_eq!(agent_row.read_up_to, Some(2));
    let (c3, m3) = code(c.sessions.advance_read_horizon(authed(&s.key, horizon(&agent, 3, false))).await);
    assert!(c3 == Code::InvalidArgument && m3.starts_with("up_to"), "{m3}");
    let private =
        c.sessions.advance_read_horizon(authed(&s.key, horizon(&s.user, 1, true))).await.unwrap().into_inner();
    let user_row = private.participants.iter().find(|p| p.participant_id == s.user).unwrap();
    assert_eq!(user_row.read_up_to, None, "a private horizon is not shown");
    // Leaving: the agent can, the end user cannot.
    c.sessions
        .leave_session(authed(
            &s.key,
            pb::LeaveSessionRequest { session_id: s.session.clone(), participant_id: agent.clone() },
        ))
        .await
        .unwrap();
    let (c4, _) = code(
        c.sessions
            .leave_session(authed(
                &s.key,
                pb::LeaveSessionRequest { session_id: s.session.clone(), participant_id: s.user.clone() },
            ))
            .await,
    );
    assert_eq!(c4, Code::FailedPrecondition);
    let unknown = pb::CloseSessionRequest { session_id: uuid::Uuid::now_v7().to_string() };
    assert_eq!(code(c.sessions.close_session(authed(&s.key, unknown)).await).0, Code::NotFound);

    // A deactivated end user cannot start a Session; reactivated, they can.
    let id = pb::DeactivateSubjectRequest { subject_id: s.user.clone() };
    let off = c.subjects.deactivate_subject(authed(&s.key, id)).await.unwrap().into_inner();
    assert_eq!(off.status, pb::SubjectStatus::Deactivated as i32);
    let start = pb::StartSessionRequest {
        pype_id: s.pype.clone(),
        end_user_id: s.user.clone(),
        timers: None,
        ..Default::default()
    };
    assert_eq!(
        code(c.sessions.start_session(authed(&s.key, start.clone())).await),
        (Code::FailedPrecondition, "the end user is deactivated".into())
    );
    c.subjects
        .reactivate_subject(authed(&s.key, pb::ReactivateSubjectRequest { subject_id: s.user.clone() }))
        .await
        .unwrap();
    c.sessions.start_session(authed(&s.key, start.clone())).await.unwrap();
    let nobody = pb::StartSessionRequest { end_user_id: uuid::Uuid::now_v7().to_string(), ..start.clone() };
    assert_eq!(
        code(c.sessions.start_session(authed(&s.key, nobody)).await),
        (Code::NotFound, "end user not found".into())
    );

    // An archived Pype takes no new Sessions.
    c.pypes.archive_pype(authed(&s.key, pb::ArchivePypeRequest { pype_id: s.pype.clone() })).await.unwrap();
    assert_eq!(
        code(c.sessions.start_session(authed(&s.key, start)).await),
        (Code::FailedPrecondition, "the pype is archived".into())
    );
}
