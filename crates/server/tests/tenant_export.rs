//! `ExportTenant` through the real binary: a tenant with 100,000 messages
//! exported, the stream broken part-way and resumed from the last token,
//! and the result equal to what the API reads (Pypes, Sessions, messages,
//! end users); erased end users arrive erased, restricted ones withheld;
//! the export still runs after CancelTenant (the grace period), and a bad
//! token is refused by name.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{ADMIN, authed, clients, post, setup, start, wait_certified};
use proto::api as pb;
use tonic::Code;
use tonic::transport::Channel;

const T: i64 = 1_700_000_000_000_000;
const SESSIONS: usize = 100;
const PER_SESSION: usize = 1000;

type Records = tonic::Streaming<pb::TenantExportRecord>;

async fn export(ch: &Channel, key: &str, token: &str) -> Result<Records, tonic::Status> {
    pb::integration_service_client::IntegrationServiceClient::new(ch.clone())
        .export_tenant(authed(key, pb::ExportTenantRequest { resume_token: token.into() }))
        .await
        .map(|r| r.into_inner())
}

async fn next(records: &mut Records) -> Option<pb::TenantExportRecord> {
    tokio::time::timeout(Duration::from_secs(60), records.message()).await.expect("a record in 60 s").unwrap()
}

/// What an export says, by kind.
#[derive(Default, Debug)]
struct Exported {
    header: Option<pb::TenantExportHeader>,
    pypes: BTreeMap<String, pb::Pype>,
    subjects: BTreeMap<String, pb::ExportedSubject>,
    sessions: BTreeMap<String, pb::Session>,
    messages: BTreeMap<String, Vec<(pb::Message, bool)>>,
    end: Option<pb::TenantExportEnd>,
    records: usize,
}

impl Exported {
    fn take(&mut self, r: pb::TenantExportRecord) {
        use pb::tenant_export_record::Record;
        self.records += 1;
        assert!(self.end.is_none(), "a record after the end: {r:?}");
        match r.record.expect("a record") {
            Record::Header(h) => assert!(self.header.replace(h).is_none(), "two headers"),
            Record::Pype(p) => assert!(self.pypes.insert(p.pype_id.clone(), p).is_none(), "a Pype twice"),
            Record::Subject(s) => assert!(self.subjects.insert(s.subject_id.clone(), s).is_none(), "a subject twice"),
            Record::Session(s) => assert!(self.sessions.insert(s.session_id.clone(), s).is_none(), "a Session twice"),
            Record::Message(m) => {
                assert!(self.sessions.contains_key(&m.session_id), "a message before its Session");
                self.messages.entry(m.session_id).or_default().push((m.message.unwrap(), m.withheld));
            }
            Record::Media(_) => {}
            Record::End(e) => self.end = Some(e),
        }
    }
}

async fn list_sessions(ch: &Channel, key: &str, pype: &str) -> Vec<pb::Session> {
    let mut sessions = pb::session_service_client::SessionServiceClient::new(ch.clone());
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = sessions
            .list_sessions(authed(
                key,
                pb::ListSessionsRequest { pype_id: pype.into(), page_size: 500, page_token: token.clone() },
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_messages_resumed_after_a_broken_stream_equal_what_the_api_reads() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, "alpha-user").await;
    let other = setup(&mut c, "bravo-canary").await;
    c.sessions.post_message(authed(&other.key, post(&other, "bravo canary body"))).await.unwrap();
    let agent = uuid::Uuid::now_v7().to_string();

    // 100 Sessions of 1,000 messages, imported.
    let items: Vec<_> = (0..SESSIONS)
        .map(|n| pb::ImportSessionRequest {
            import_id: format!("s{n}"),
            pype_id: s.pype.clone(),
            end_user_id: s.user.clone(),
            started_at_micros: T,
            messages: (0..PER_SESSION)
                .map(|i| pb::ImportedMessage {
                    sender_id: if i % 2 == 0 { s.user.clone() } else { agent.clone() },
                    sender_kind: pb::ParticipantKind::Agent as i32,
                    body: format!("s{n} message {i}"),
                    sent_at_micros: T + 1_000 * i as i64,
                })
                .collect(),
            closed_at_micros: T + 1_000_000_000,
        })
        .collect();
    let imported = pb::session_service_client::SessionServiceClient::new(ch.clone())
        .import_sessions(authed(&s.key, tokio_stream::iter(items)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.messages_written as usize, SESSIONS * PER_SESSION);
    for i in 0..3 {
        c.sessions.post_message(authed(&s.key, post(&s, &format!("live {i}")))).await.unwrap();
    }
    // A second end user, restricted.
    let restricted = c
        .subjects
        .register_subject(authed(
            &s.key,
            pb::RegisterSubjectRequest {
                username: "restricted-user".into(),
                email: "r@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let r_session = c
        .sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: s.pype.clone(),
                end_user_id: restricted.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let r_post = pb::PostMessageRequest {
        session_id: r_session.clone(),
        sender_id: restricted.subject_id.clone(),
        body: "restricted canary".into(),
        ..Default::default()
    };
    c.sessions.post_message(authed(&s.key, r_post)).await.unwrap();
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let r_ref = pb::SubjectRef { subject_id: restricted.subject_id.clone(), ..Default::default() };
    privacy.restrict_processing(authed(&s.key, r_ref)).await.unwrap();
    for _ in 0..600 {
        let got = c
            .sessions
            .get_session(authed(&s.key, pb::GetSessionRequest { session_id: r_session.clone() }))
            .await
            .unwrap()
            .into_inner();
        if got.version >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The export, broken after 40,000 records and resumed.
    let mut got = Exported::default();
    let mut records = export(&ch, &s.key, "").await.unwrap();
    let mut token = String::new();
    while got.records < 40_000 {
        let r = next(&mut records).await.expect("not the end yet");
        token = r.resume_token.clone();
        got.take(r);
    }
    drop(records);
    let mut records = export(&ch, &s.key, &token).await.unwrap();
    while let Some(r) = next(&mut records).await {
        token = r.resume_token.clone();
        got.take(r);
    }
    let end = got.end.expect("an end record");
    let header = got.header.clone().expect("a header");
    assert_eq!(
        (header.format.as_str(), header.version, header.tenant_id.as_str()),
        ("pypes-tenant-export", 1, s.tenant.as_str())
    );
    assert_eq!(header.as_of_position, end.as_of_position);
    let total: usize = got.messages.values().map(Vec::len).sum();
    assert_eq!(total, SESSIONS * PER_SESSION + 4);
    assert_eq!(
        (end.pypes, end.subjects, end.sessions, end.messages),
        (1, 2, (SESSIONS + 2) as u64, total as u64),
        "the end's counts"
    );

    // Equal to what the API reads.
    assert_eq!(got.pypes.keys().collect::<Vec<_>>(), [&s.pype]);
    let api_sessions = list_sessions(&ch, &s.key, &s.pype).await;
    assert_eq!(
        got.sessions.keys().cloned().collect::<BTreeSet<_>>(),
        api_sessions.iter().map(|x| x.session_id.clone()).collect::<BTreeSet<_>>()
    );
    for api in &api_sessions {
        let exported = &got.sessions[&api.session_id];
        assert_eq!(
            (exported.pype_id.as_str(), exported.end_user_id.as_str(), exported.state),
            (api.pype_id.as_str(), api.end_user_id.as_str(), api.state)
        );
        let messages: Vec<pb::Message> =
            got.messages.get(&api.session_id).map(|m| m.iter().map(|(m, _)| m.clone()).collect()).unwrap_or_default();
        if api.session_id == r_session {
            let (m, withheld) = &got.messages[&r_session][0];
            assert!(*withheld && m.body.is_empty(), "{m:?}");
            continue;
        }
        let listed = common::all_messages(&ch, &s.key, &api.session_id).await;
        assert_eq!(messages.len(), listed.len(), "session {}", api.session_id);
        for (e, l) in messages.iter().zip(&listed) {
            assert_eq!(
                (e.seq, &e.sender_id, e.sent_at_micros, &e.body),
                (l.seq, &l.sender_id, l.sent_at_micros, &l.body)
            );
        }
    }
    let user = &got.subjects[&s.user];
    assert_eq!((user.username.as_str(), user.email.as_str(), user.erased), ("alpha-user", "u@example.com", false));
    let r = &got.subjects[&restricted.subject_id];
    assert!(r.restricted && r.username.is_empty() && r.email.is_empty(), "{r:?}");
    assert!(!format!("{got:?}").contains("bravo") && !format!("{got:?}").contains("restricted canary"));

    // The end token gives the end again; a forged one is refused.
    let mut again = export(&ch, &s.key, &token).await.unwrap();
    let last = next(&mut again).await.unwrap();
    assert!(matches!(last.record, Some(pb::tenant_export_record::Record::End(_))));
    assert!(next(&mut again).await.is_none());
    for bad in ["nope", "x1-99999999-1-0-0-0-0-0-0", "x1-5-9-0-0-0-0-0-0"] {
        let Err(e) = export(&ch, &s.key, bad).await else { panic!("{bad} accepted") };
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("resume_token"), "{}", e.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_end_users_arrive_erased_and_a_cancelled_tenant_still_exports() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, "erased-user").await;
    c.sessions.post_message(authed(&s.key, post(&s, "erased canary"))).await.unwrap();
    let erase = pb::RequestErasureRequest { subject_id: s.user.clone(), ..Default::default() };
    c.erasure.request_erasure(authed(&s.key, erase)).await.unwrap();
    wait_certified(&mut c, &s.key, &s.user).await;
    c.tenants.cancel_tenant(authed(ADMIN, pb::CancelTenantRequest { tenant_id: s.tenant.clone() })).await.unwrap();
    // Other calls are refused for the cancelled tenant; the export is not.
    let refused = c.pypes.get_pype(authed(&s.key, pb::GetPypeRequest { pype_id: s.pype.clone() })).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut got = Exported::default();
    let mut records = export(&ch, &s.key, "").await.unwrap();
    while let Some(r) = next(&mut records).await {
        got.take(r);
    }
    let user = &got.subjects[&s.user];
    assert!(user.erased && user.username.is_empty() && user.email.is_empty(), "{user:?}");
    let (m, _) = &got.messages[&s.session][0];
    assert!(m.erased && m.body.is_empty(), "{m:?}");
    assert!(!format!("{got:?}").contains("erased canary"));
    // Still refused after the export: the export did not open the door.
    let refused = c.pypes.get_pype(authed(&s.key, pb::GetPypeRequest { pype_id: s.pype.clone() })).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}
