//! The erasure process survives a crash at every step: the server is
//! started with `PYPES_CRASH_AT=erasure:<step>`, aborts right after that
//! step, and a restart (without the crash point) finishes the erasure,
//! certificate included, with the keys gone and the views purged. Also:
//! the admin key with `tenant_id` (what `pypes erase` uses), a second
//! request returning the first, bad ids, another tenant's subject, and the
//! projections admin endpoint (list, pause, resume, reset, auth).

mod common;

use std::time::Duration;

use common::{ADMIN, authed, clients, post, setup, start, start_with, wait_certified};
use proto::api as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_completes_after_a_crash_at_every_step() {
    for step in ["planned", "shredded", "recorded", "tombstone"] {
        let data = tempfile::tempdir().unwrap();
        let (s, subject) = {
            let mut server = start_with(data.path(), &[("PYPES_CRASH_AT", &format!("erasure:{step}"))]);
            let mut c = clients(&server.grpc).await;
            let s = setup(&mut c, &format!("crash{step}")).await;
            c.sessions.post_message(authed(&s.key, post(&s, "secret words"))).await.unwrap();
            let _ = c
                .erasure
                .request_erasure(authed(
                    &s.key,
                    pb::RequestErasureRequest { subject_id: s.user.clone(), ..Default::default() },
                ))
                .await;
            // The process aborts at the crash point.
            let mut exited = false;
            for _ in 0..500 {
                if server.child.try_wait().unwrap().is_some() {
                    exited = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(exited, "the server did not stop at erasure:{step}");
            let user = s.user.clone();
            (s, user)
        };
        let server = start(data.path());
        let mut c = clients(&server.grpc).await;
        let status = wait_certified(&mut c, &s.key, &subject).await;
        let public = std::fs::read_to_string(data.path().join("log").join("signing.pub")).unwrap();
        app::certificate::verify(&status.certificate, &status.signature, &public).unwrap();
        assert!(
            status.certificate.contains("sha256:"),
            "no key fingerprints after a crash at {step}: {}",
            status.certificate
        );
        let m = c
            .views
            .list_messages(authed(
                &s.key,
                pb::ListMessagesRequest { session_id: s.session.clone(), ..Default::default() },
            ))
            .await
            .unwrap()
            .into_inner()
            .messages;
        assert_eq!(m.len(), 1);
        assert!(m[0].erased && m[0].body == "[erased]", "after a crash at {step}: {m:?}");
        let v = c
            .views
            .get_session_view(authed(&s.key, pb::GetSessionViewRequest { session_id: s.session.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert!(v.erased, "not purged after a crash at {step}");
        // The username is free again, for someone new.
        let again = c
            .subjects
            .register_subject(authed(
                &s.key,
                pb::RegisterSubjectRequest {
                    username: format!("crash{step}"),
                    email: "new@example.com".into(),
                    attested_at_least_13: true,
                    ..Default::default()
                },
            ))
            .await;
        assert!(again.is_ok(), "the erased user's username after a crash at {step}: {again:?}");
        assert_ne!(again.unwrap().into_inner().subject_id, subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_requests_by_admin_and_tenant_and_bad_input() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "adminerase").await;
    let other = setup(&mut c, "othertenant").await;
    // The admin key needs tenant_id; a tenant key may not name another tenant.
    let bad = c
        .erasure
        .request_erasure(authed(ADMIN, pb::RequestErasureRequest { subject_id: s.user.clone(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("tenant_id"), "{bad:?}");
    let cross = c
        .erasure
        .request_erasure(authed(
            &other.key,
            pb::RequestErasureRequest { subject_id: s.user.clone(), tenant_id: s.tenant.clone() },
        ))
        .await
        .unwrap_err();
    assert_eq!(cross.code(), Code::PermissionDenied);
    // Another tenant's subject is simply not found.
    let missing = c
        .erasure
        .request_erasure(authed(
            &other.key,
            pb::RequestErasureRequest { subject_id: s.user.clone(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let garbage = c
        .erasure
        .get_erasure(authed(&s.key, pb::GetErasureRequest { subject_id: "nope".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(garbage.message().contains("subject_id"));
    let none_yet = c
        .erasure
        .get_erasure(authed(&s.key, pb::GetErasureRequest { subject_id: s.user.clone(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(none_yet.code(), Code::NotFound);
    let first = c
        .erasure
        .request_erasure(authed(
            ADMIN,
            pb::RequestErasureRequest { subject_id: s.user.clone(), tenant_id: s.tenant.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .erasure
        .request_erasure(authed(&s.key, pb::RequestErasureRequest { subject_id: s.user.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.request_id, again.request_id, "a second request is the first one");
    wait_certified(&mut c, &s.key, &s.user).await;
    // Its username is free again: a new end user registers it and logs in
    // with it; the erased one is nowhere in that.
    let register = |name: &str| pb::RegisterSubjectRequest {
        username: name.into(),
        email: "next@example.com".into(),
        attested_at_least_13: true,
        password: "the next user's password".into(),
        ..Default::default()
    };
    let next = c.subjects.register_subject(authed(&s.key, register("adminerase"))).await.unwrap().into_inner();
    assert_ne!(next.subject_id, s.user);
    let login = pb::LoginRequest { username: "adminerase".into(), password: "the next user's password".into() };
    let token = c.logins.login(authed(&s.key, login)).await.unwrap().into_inner().token;
    let who = c.logins.introspect(authed(&s.key, pb::IntrospectRequest { token })).await.unwrap().into_inner();
    assert_eq!(who.subject_id, next.subject_id);
    // Taken again, it is refused as before.
    let taken = c.subjects.register_subject(authed(&s.key, register("adminerase"))).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    // The erased subject takes nothing more.
    let refused = c
        .subjects
        .deactivate_subject(authed(&s.key, pb::DeactivateSubjectRequest { subject_id: s.user.clone() }))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
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
        .unwrap_err();
    assert_eq!(started.code(), Code::FailedPrecondition, "{started:?}");
    // The metrics show no open request.
    let body = http_get(&server.http, "/metrics", None).await;
    assert!(body.contains("pypes_erasure_requests_open 0"), "{body}");
    assert!(body.contains("pypes_projection_lag_positions{projection=\"sessions\"}"), "{body}");
}

async fn http(addr: &str, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

async fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> String {
    http(addr, "GET", path, bearer).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_admin_endpoint() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "adminviews").await;
    assert_eq!(http(&server.http, "GET", "/admin/projections", None).await.0, 401);
    assert_eq!(http(&server.http, "GET", "/admin/projections", Some(&s.key)).await.0, 403);
    let (code, body) = http(&server.http, "GET", "/admin/projections", Some(ADMIN)).await;
    assert_eq!(code, 200, "{body}");
    for name in ["sessions", "directory", "analytics"] {
        assert!(body.contains(&format!("\"name\":\"{name}\"")), "{body}");
    }
    // The view has the Session before it is paused (a read waits for the
    // view to reach the log's head as of the call; a paused one never would).
    let list = pb::ListMessagesRequest { session_id: s.session.clone(), ..Default::default() };
    assert!(c.views.list_messages(authed(&s.key, list.clone())).await.unwrap().into_inner().messages.is_empty());
    // Pause the sessions view: new messages do not reach it until resumed.
    assert_eq!(http(&server.http, "POST", "/admin/projections/sessions/pause", Some(ADMIN)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.sessions.post_message(authed(&s.key, post(&s, "while paused"))).await.unwrap();
    let paused = c.views.list_messages(authed(&s.key, list.clone())).await.unwrap().into_inner().messages;
    assert!(paused.is_empty(), "a paused view moved: {paused:?}");
    let (_, body) = http(&server.http, "GET", "/admin/projections", Some(ADMIN)).await;
    assert!(body.contains("\"state\":\"paused\""), "{body}");
    assert_eq!(http(&server.http, "POST", "/admin/projections/sessions/resume", Some(ADMIN)).await.0, 200);
    let resumed = c.views.list_messages(authed(&s.key, list.clone())).await.unwrap().into_inner().messages;
    assert_eq!(resumed.len(), 1);
    // Skip when not stalled is refused; unknown names and actions are named.
    let (code, body) = http(&server.http, "POST", "/admin/projections/sessions/skip", Some(ADMIN)).await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = http(&server.http, "POST", "/admin/projections/nope/pause", Some(ADMIN)).await;
    assert!(code == 404 && body.contains("sessions"), "{body}");
    let (code, body) = http(&server.http, "POST", "/admin/projections/sessions/explode", Some(ADMIN)).await;
    assert!(code == 404 && body.contains("reset"), "{body}");
    // Reset rebuilds into a new generation; the answer stays the same.
    let (_, before) = http(&server.http, "GET", "/admin/projections", Some(ADMIN)).await;
    assert!(before.contains("\"serving_generation\":1"), "{before}");
    assert_eq!(http(&server.http, "POST", "/admin/projections/sessions/reset", Some(ADMIN)).await.0, 200);
    for _ in 0..200 {
        let (_, b) = http(&server.http, "GET", "/admin/projections", Some(ADMIN)).await;
        if b.contains("\"name\":\"sessions\",\"version\":1,\"state\":\"live\",\"stalled_at\":null,\"error\":null,\"serving_generation\":2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, after) = http(&server.http, "GET", "/admin/projections", Some(ADMIN)).await;
    assert!(after.contains("\"serving_generation\":2"), "{after}");
    let again = c.views.list_messages(authed(&s.key, list)).await.unwrap().into_inner().messages;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, "while paused");
}
