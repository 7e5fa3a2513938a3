//! Privacy rights through the API: rectification (read models follow, the
//! change is recorded), restriction of processing (refused until lifted,
//! analytics leave the subject out), geolocation consent (locations only
//! under consent; withdrawal erases them), and children (refused, nothing
//! of theirs stored, not even in logs).

mod common;

use std::process::Command;

use common::{ADMIN, Setup, authed, clients, post, setup, start, start_with};
use proto::api as pb;
use tonic::Code;

fn precondition<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}"),
        Ok(v) => panic!("{what} went through: {v:?}"),
    }
}

fn subject_ref(s: &Setup) -> pb::SubjectRef {
    pb::SubjectRef { subject_id: s.user.clone(), tenant_id: String::new() }
}

/// The analytics cells by day of `s`'s Pype, two days either side of now.
async fn day_cells(c: &mut common::Clients, s: &Setup) -> Vec<pb::AnalyticsCell> {
    const DAY: i64 = 86_400_000_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    c.analytics
        .query_analytics(authed(
            &s.key,
            pb::QueryAnalyticsRequest {
                pype_id: s.pype.clone(),
                granularity: pb::Granularity::Day as i32,
                from_micros: now - 2 * DAY,
                to_micros: now + 2 * DAY,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .cells
}

async fn export_json(c: &tonic::transport::Channel, key: &str, subject: &str) -> serde_json::Value {
    let mut client = pb::privacy_service_client::PrivacyServiceClient::new(c.clone());
    let mut stream = client
        .export_subject(authed(key, pb::ExportSubjectRequest { subject_id: subject.into(), tenant_id: String::new() }))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        all.extend_from_slice(&chunk.data);
    }
    serde_json::from_slice(&all).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rectification_reaches_the_read_models_and_is_recorded() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let s = setup(&mut c, "rita").await;
    let fixed = privacy
        .rectify_subject(authed(
            &s.key,
            pb::RectifySubjectRequest {
                subject_id: s.user.clone(),
                email: Some("rita.new@example.com".into()),
                phone: Some("+4915199999999".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((fixed.email.as_str(), fixed.phone.as_str()), ("rita.new@example.com", "+4915199999999"));
    let got =
        c.subjects.get_subject(authed(&s.key, pb::GetSubjectRequest { subject_id: s.user.clone() })).await.unwrap();
    assert_eq!(got.into_inner().email, "rita.new@example.com");
    let users = c
        .views
        .list_end_users(authed(&s.key, pb::ListEndUsersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .end_users;
    assert!(users.iter().any(|u| u.email == "rita.new@example.com" && u.phone == "+4915199999999"), "{users:?}");
    let doc = export_json(&ch, &s.key, &s.user).await;
    assert_eq!(doc["profile"]["email"], "rita.new@example.com");
    let history = doc["history"].to_string();
    assert!(history.contains("rectified: email, phone"), "{history}");
    // An operator does the same from the command line (admin key).
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args([
                "privacy",
                "--tenant",
                &s.tenant,
                "--subject",
                &s.user,
                "--grpc",
                &server.grpc,
                "--admin-key",
                ADMIN,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = cli(&["rectify", "--phone", "+4915100000001"]);
    assert!(ok && out.contains("rectified"), "{out}");
    let (ok, out) = cli(&["restrict"]);
    assert!(ok && out.contains("restricted: true"), "{out}");
    let (ok, out) = cli(&["lift"]);
    assert!(ok && out.contains("restricted: false"), "{out}");
    let (ok, out) = cli(&["grant", "--purpose", "geolocation", "--policy-version", "v2"]);
    assert!(ok && out.contains("geolocation granted (policy v2)"), "{out}");
    let (ok, out) = cli(&["rectify", "--email", "nope"]);
    assert!(!ok && out.contains("INVALID_ARGUMENT") && out.contains("email"), "{out}");
    let got =
        c.subjects.get_subject(authed(&s.key, pb::GetSubjectRequest { subject_id: s.user.clone() })).await.unwrap();
    assert_eq!(got.into_inner().phone, "+4915100000001");
    // Bad input is named; nothing named is refused.
    let e = privacy
        .rectify_subject(authed(
            &s.key,
            pb::RectifySubjectRequest {
                subject_id: s.user.clone(),
                email: Some("not-an-email".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("email"), "{e:?}");
    let e = privacy
        .rectify_subject(authed(&s.key, pb::RectifySubjectRequest { subject_id: s.user.clone(), ..Default::default() }))
        .await
        .unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("at least one"), "{e:?}");
    let e = privacy
        .rectify_subject(authed(
            &s.key,
            pb::RectifySubjectRequest {
                subject_id: s.user.clone(),
                date_of_birth: Some("2031-02-30".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(e.code() == Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restriction_refuses_processing_until_lifted_and_analytics_leave_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pypes.toml");
    std::fs::write(&config, "[privacy]\nanalytics_k = 2\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), &[("PYPES_CONFIG", config.to_str().unwrap())]);
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let s = setup(&mut c, "rosa").await;
    c.subjects
        .set_password(authed(
            &s.key,
            pb::SetPasswordRequest { subject_id: s.user.clone(), password: "rosa's password".into() },
        ))
        .await
        .unwrap();
    c.sessions.post_message(authed(&s.key, post(&s, "before"))).await.unwrap();
    // A second Session of another user, so the Pype's cell has k = 2 Sessions.
    let other = c
        .subjects
        .register_subject(authed(
            &s.key,
            pb::RegisterSubjectRequest {
                username: "otto".into(),
                email: "o@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let other_session = c
        .sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: s.pype.clone(),
                end_user_id: other.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let restricted = privacy.restrict_processing(authed(&s.key, subject_ref(&s))).await.unwrap().into_inner();
    assert!(restricted.restricted && restricted.username.is_empty() && restricted.email.is_empty(), "{restricted:?}");

    precondition(c.sessions.post_message(authed(&s.key, post(&s, "during"))).await, "PostMessage");
    precondition(
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
            .await,
        "StartSession",
    );
    precondition(
        c.views
            .list_messages(authed(
                &s.key,
                pb::ListMessagesRequest { session_id: s.session.clone(), ..Default::default() },
            ))
            .await,
        "ListMessages",
    );
    precondition(
        c.subjects
            .set_password(authed(
                &s.key,
                pb::SetPasswordRequest { subject_id: s.user.clone(), password: "another password".into() },
            ))
            .await,
        "SetPassword",
    );
    precondition(
        privacy
            .rectify_subject(authed(
                &s.key,
                pb::RectifySubjectRequest {
                    subject_id: s.user.clone(),
                    email: Some("x@example.com".into()),
                    ..Default::default()
                },
            ))
            .await,
        "RectifySubject",
    );
    let login = c
        .logins
        .login(authed(&s.key, pb::LoginRequest { username: "rosa".into(), password: "rosa's password".into() }))
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::PermissionDenied, "{login:?}");
    let users = c
        .views
        .list_end_users(authed(&s.key, pb::ListEndUsersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .end_users;
    let rosa = users.iter().find(|u| u.subject_id == s.user).unwrap();
    assert!(rosa.username.is_empty() && rosa.email.is_empty(), "{rosa:?}");
    // Storage and export go on.
    let doc = export_json(&ch, &s.key, &s.user).await;
    assert_eq!(doc["processing_restricted"], true);
    assert_eq!(doc["sessions"][0]["messages"][0]["body"], "before");

    // Closing both Sessions: only the unrestricted one is counted.
    for session in [&s.session, &other_session.session_id] {
        c.sessions
            .close_session(authed(&s.key, pb::CloseSessionRequest { session_id: session.clone() }))
            .await
            .unwrap();
    }
    let cells = day_cells(&mut c, &s).await;
    assert_eq!(cells.len(), 1, "{cells:?}");
    assert_eq!(cells[0].started, 2, "{cells:?}");
    assert_eq!(cells[0].closed_by_api, 1, "the restricted subject's close is left out: {cells:?}");

    // Lifted: processing resumes.
    let lifted = privacy.lift_restriction(authed(&s.key, subject_ref(&s))).await.unwrap().into_inner();
    assert!(!lifted.restricted && lifted.username == "rosa", "{lifted:?}");
    c.subjects
        .set_password(authed(
            &s.key,
            pb::SetPasswordRequest { subject_id: s.user.clone(), password: "another password".into() },
        ))
        .await
        .unwrap();
    let _ = ADMIN;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geolocation_needs_consent_and_withdrawal_erases_it() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let s = setup(&mut c, "gina").await;
    let share = |lat: f64| pb::ShareLocationRequest {
        session_id: s.session.clone(),
        participant_id: s.user.clone(),
        latitude: lat,
        longitude: 2.294481,
        accuracy_m: 12,
    };
    precondition(c.sessions.share_location(authed(&s.key, share(48.858370))).await, "location without consent");
    let consent = |purpose: &str| pb::ConsentRequest {
        subject_id: s.user.clone(),
        tenant_id: String::new(),
        purpose: purpose.into(),
        policy_version: "2026-11".into(),
    };
    let e = privacy.grant_consent(authed(&s.key, consent("geo"))).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("geolocation"), "{e:?}");
    let granted = privacy.grant_consent(authed(&s.key, consent("geolocation"))).await.unwrap().into_inner();
    assert!(granted.consents.iter().any(|c| c.purpose == "geolocation" && c.granted && c.policy_version == "2026-11"));
    c.sessions.share_location(authed(&s.key, share(48.858370))).await.unwrap();
    let e = c.sessions.share_location(authed(&s.key, share(123.0))).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("latitude"), "{e:?}");
    let doc = export_json(&ch, &s.key, &s.user).await;
    assert_eq!(doc["sessions"][0]["locations"][0]["location"], "48.858370,2.294481,12", "{doc}");
    assert_eq!(doc["consents"][0]["granted"], true);

    let withdrawn = privacy.withdraw_consent(authed(&s.key, consent("geolocation"))).await.unwrap().into_inner();
    assert!(withdrawn.consents.iter().any(|c| c.purpose == "geolocation" && !c.granted));
    precondition(c.sessions.share_location(authed(&s.key, share(48.858370))).await, "location after withdrawal");
    let doc = export_json(&ch, &s.key, &s.user).await;
    assert_eq!(doc["sessions"][0]["locations"][0]["location"], "[erased]", "{doc}");
    let history = doc["history"].to_string();
    assert!(
        history.contains("consent to geolocation granted (policy 2026-11)")
            && history.contains("consent to geolocation withdrawn"),
        "{history}"
    );
    // The rest of the Session is untouched.
    c.sessions.post_message(authed(&s.key, post(&s, "still here"))).await.unwrap();
    // No geo key of theirs is left in the key store (after the second shred).
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    drop(server);
    let keys = keystore::embedded::open_embedded(
        data.path(),
        None,
        std::sync::Arc::new(eventlog::SystemClock),
        keystore::embedded::OpenMode::MustExist,
    )
    .unwrap();
    // The location was never stored in the clear, anywhere.
    let hits = common::containing(&common::files_under(data.path()), "48.858370,2.294481");
    assert!(hits.is_empty(), "location found in {hits:?}");
    let (tenant, subject) = (uuid::Uuid::parse_str(&s.tenant).unwrap(), uuid::Uuid::parse_str(&s.user).unwrap());
    let geo = keystore::ShredTarget::Subject { subject, group: Some(keystore::Group::Geo) };
    assert!(keystore::KeyStore::keys_of(&*keys.store, tenant, &geo).unwrap().is_empty(), "a geo key survived");
    let profile = keystore::ShredTarget::Subject { subject, group: Some(keystore::Group::Profile) };
    assert!(
        !keystore::KeyStore::keys_of(&*keys.store, tenant, &profile).unwrap().is_empty(),
        "the profile key went too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_refused_and_nothing_of_theirs_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut server = common::start_logging(data.path(), logs.path());
    let grpc = server.grpc.clone();
    let mut c = clients(&grpc).await;
    let s = setup(&mut c, "grown.up").await;
    let tag = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let canaries =
        [format!("kid{tag}"), format!("kid{tag}@example.com"), "+4917612398765".to_string(), format!("kidpw{tag}")];
    // About this year, from the clock (a nine-year-old either way).
    let this_year =
        1970 + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 31_556_952;
    let e = c
        .subjects
        .register_subject(authed(
            &s.key,
            pb::RegisterSubjectRequest {
                username: canaries[0].clone(),
                email: canaries[1].clone(),
                phone: canaries[2].clone(),
                date_of_birth: format!("{}-03-04", this_year - 9),
                password: canaries[3].clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("under 13"), "{e:?}");
    for canary in &canaries {
        assert!(!e.message().contains(canary.as_str()), "the refusal echoes {canary}");
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
    let mut files = common::files_under(data.path());
    files.push(logs.path().to_path_buf());
    assert!(files.len() > 8, "the scan looked at the data directory: {files:?}");
    for canary in &canaries {
        let hits = common::containing(&files, canary);
        assert!(hits.is_empty(), "{canary} found in {hits:?}");
    }
}

/// Do-Not-Track: a Session started under DNT (or GPC) and a message sent
/// with DNT leave no device detail in the log (replayed with the keys),
/// any file of the data directory or the server's log output; the Session
/// counts in no analytics cell; `GetSession`, the export and the tenant
/// feed say so. A Session without the signal keeps its device details (so
/// the checks can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_track_records_no_device_and_counts_in_no_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("pypes.toml");
    std::fs::write(&config, "[privacy]\nanalytics_k = 2\n").unwrap();
    let logs = dir.path().join("server.log");
    let server = common::start_logging_with(&data, &logs, &[("PYPES_CONFIG", config.to_str().unwrap())]);
    let mut c = clients(&server.grpc).await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let s = setup(&mut c, "tracy").await;
    const DNT_DEVICE: &str = "DntCanaryDevice-7f3a";
    const GPC_DEVICE: &str = "GpcCanaryDevice-91bc";
    const MESSAGE_DNT_DEVICE: &str = "MsgDntCanaryDevice-22d0";
    const PLAIN_DEVICE: &str = "PlainDevice-4e81";
    let start = |dnt: bool, gpc: bool| pb::StartSessionRequest {
        pype_id: s.pype.clone(),
        end_user_id: s.user.clone(),
        timers: None,
        do_not_track: dnt,
        global_privacy_control: gpc,
    };
    let dnt = c.sessions.start_session(authed(&s.key, start(true, false))).await.unwrap().into_inner();
    let gpc = c.sessions.start_session(authed(&s.key, start(false, true))).await.unwrap().into_inner();
    assert!(dnt.do_not_track && gpc.do_not_track);
    let post_from = |session: &str, device: &str, message_dnt: bool| pb::PostMessageRequest {
        session_id: session.into(),
        sender_id: s.user.clone(),
        body: "hello".into(),
        device: device.into(),
        do_not_track: message_dnt,
        ..Default::default()
    };
    for _ in 0..3 {
        c.sessions.post_message(authed(&s.key, post_from(&dnt.session_id, DNT_DEVICE, false))).await.unwrap();
    }
    c.sessions.post_message(authed(&s.key, post_from(&gpc.session_id, GPC_DEVICE, false))).await.unwrap();
    // Plain Sessions (two, so the cell is over k = 2): one message with
    // its device, one sent with DNT.
    let second = c.sessions.start_session(authed(&s.key, start(false, false))).await.unwrap().into_inner();
    assert!(!second.do_not_track);
    c.sessions.post_message(authed(&s.key, post_from(&s.session, PLAIN_DEVICE, false))).await.unwrap();
    c.sessions.post_message(authed(&s.key, post_from(&s.session, MESSAGE_DNT_DEVICE, true))).await.unwrap();
    let got = c
        .sessions
        .get_session(authed(&s.key, pb::GetSessionRequest { session_id: dnt.session_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(got.do_not_track);

    // The export: the DNT Sessions say so and carry no device.
    let doc = export_json(&ch, &s.key, &s.user).await;
    let sessions = doc["sessions"].as_array().unwrap();
    let find = |id: &str| sessions.iter().find(|x| x["session_id"] == id).unwrap().clone();
    let exported = find(&dnt.session_id);
    assert_eq!(exported["tracking"]["do_not_track"], true, "{exported}");
    assert!(exported["tracking"]["effect"].as_str().unwrap().contains("no device details"), "{exported}");
    assert_eq!(find(&gpc.session_id)["tracking"]["global_privacy_control"], true);
    let text = doc.to_string();
    for canary in [DNT_DEVICE, GPC_DEVICE, MESSAGE_DNT_DEVICE] {
        assert!(!text.contains(canary), "{canary} in the export");
    }
    assert!(text.contains(PLAIN_DEVICE), "the plain Session's device is missing from the export");
    assert_eq!(find(&s.session)["tracking"]["effect"], "none");

    // Analytics: only the plain Sessions and their two messages count.
    let cells = day_cells(&mut c, &s).await;
    assert_eq!(cells.len(), 1, "{cells:?}");
    assert_eq!((cells[0].started, cells[0].sessions, cells[0].messages_end_user), (2, 2, 2), "{cells:?}");

    // The log, opened with the keys: no device of a DNT Session or message.
    common::stop_cleanly(server);
    let replay = |session: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args(["replay", "--data-dir"])
            .arg(&data)
            .args(["--stream", &format!("session-{}-{session}", s.tenant)])
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let plain = replay(&s.session);
    assert!(plain.contains(PLAIN_DEVICE), "replay shows no devices at all:\n{plain}");
    assert!(!plain.contains(MESSAGE_DNT_DEVICE), "{plain}");
    for (session, canary) in [(&dnt.session_id, DNT_DEVICE), (&gpc.session_id, GPC_DEVICE)] {
        let text = replay(session);
        assert!(text.contains("hello") && !text.contains(canary), "{text}");
    }
    // No store and no log line holds them either.
    let files = common::files_under(dir.path());
    for canary in [DNT_DEVICE, GPC_DEVICE, MESSAGE_DNT_DEVICE] {
        assert!(common::containing(&files, canary).is_empty(), "{canary} in {:?}", common::containing(&files, canary));
    }
}
