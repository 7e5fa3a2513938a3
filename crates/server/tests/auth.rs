//! End users' logins through the API: passwords (hashed, never stored in
//! the clear), tokens that deactivation, password change and logout end at
//! once, a lockout that treats unknown usernames alike, and tenant scoping
//! of tokens.

mod common;

use common::{ADMIN, authed, clients, setup, start};
use proto::api as pb;
use tonic::Code;

const PASSWORD: &str = "canary-pw-7f3a9c2e-horse";

async fn login(c: &mut common::Clients, key: &str, username: &str, password: &str) -> Result<String, tonic::Status> {
    c.logins
        .login(authed(key, pb::LoginRequest { username: username.into(), password: password.into() }))
        .await
        .map(|r| r.into_inner().token)
}

async fn introspect(c: &mut common::Clients, key: &str, token: &str) -> Result<pb::AuthSessionInfo, tonic::Status> {
    c.logins.introspect(authed(key, pb::IntrospectRequest { token: token.into() })).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_and_their_end() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "lena").await;

    // No password yet: the login fails like a wrong one.
    let e = login(&mut c, &s.key, "lena", PASSWORD).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let short = c
        .subjects
        .set_password(authed(&s.key, pb::SetPasswordRequest { subject_id: s.user.clone(), password: "short".into() }))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("password") && short.message().contains("at least 8"), "{short:?}");
    c.subjects
        .set_password(authed(&s.key, pb::SetPasswordRequest { subject_id: s.user.clone(), password: PASSWORD.into() }))
        .await
        .unwrap();

    // Wrong password and unknown username: one answer.
    let wrong = login(&mut c, &s.key, "lena", "not-the-password").await.unwrap_err();
    let unknown = login(&mut c, &s.key, "nobody-here", PASSWORD).await.unwrap_err();
    assert_eq!((wrong.code(), wrong.message()), (unknown.code(), unknown.message()));
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let token = login(&mut c, &s.key, "LENA", PASSWORD).await.unwrap();
    let info = introspect(&mut c, &s.key, &token).await.unwrap();
    assert_eq!(info.subject_id, s.user);
    // Introspection resets the idle timer: 30 min from now.
    let idle = info.idle_expires_at_micros - info.created_at_micros;
    assert!((30 * 60 * 1_000_000..31 * 60 * 1_000_000).contains(&idle), "{idle}");
    assert_eq!(info.expires_at_micros - info.created_at_micros, 12 * 3600 * 1_000_000);

    // Another tenant's key does not see the token.
    let other = c
        .tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Other".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert_eq!(introspect(&mut c, &other, &token).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(login(&mut c, &other, "lena", PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);

    // Deactivation ends the auth session at once; the right password is refused.
    let second = login(&mut c, &s.key, "lena", PASSWORD).await.unwrap();
    c.subjects
        .deactivate_subject(authed(&s.key, pb::DeactivateSubjectRequest { subject_id: s.user.clone() }))
        .await
        .unwrap();
    for t in [&token, &second] {
        assert_eq!(introspect(&mut c, &s.key, t).await.unwrap_err().code(), Code::Unauthenticated);
    }
    let e = login(&mut c, &s.key, "lena", PASSWORD).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Reactivation restores access, not the old tokens.
    c.subjects
        .reactivate_subject(authed(&s.key, pb::ReactivateSubjectRequest { subject_id: s.user.clone() }))
        .await
        .unwrap();
    assert_eq!(introspect(&mut c, &s.key, &token).await.unwrap_err().code(), Code::Unauthenticated);
    let token = login(&mut c, &s.key, "lena", PASSWORD).await.unwrap();

    // A password change ends the sessions from before it.
    c.subjects
        .set_password(authed(
            &s.key,
            pb::SetPasswordRequest { subject_id: s.user.clone(), password: format!("{PASSWORD}-2") },
        ))
        .await
        .unwrap();
    assert_eq!(introspect(&mut c, &s.key, &token).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(login(&mut c, &s.key, "lena", PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);
    let token = login(&mut c, &s.key, "lena", &format!("{PASSWORD}-2")).await.unwrap();

    // Logout.
    let out = c.logins.logout(authed(&s.key, pb::LogoutRequest { token: token.clone() })).await.unwrap();
    assert!(out.into_inner().ended);
    assert_eq!(introspect(&mut c, &s.key, &token).await.unwrap_err().code(), Code::Unauthenticated);

    // A token outlives a restart of the server (auth sessions are in the log).
    let token = login(&mut c, &s.key, "lena", &format!("{PASSWORD}-2")).await.unwrap();

    // Neither the password nor a token is anywhere under the data
    // directory (only a sealed hash of the one, a hash of the other).
    drop(server);
    let files = common::files_under(data.path());
    let hits = common::containing(&files, PASSWORD);
    assert!(hits.is_empty(), "password found in {hits:?}");
    let hits = common::containing(&files, &token);
    assert!(hits.is_empty(), "token found in {hits:?}");
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    assert_eq!(introspect(&mut c, &s.key, &token).await.unwrap().subject_id, s.user, "a token after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_known_and_unknown_usernames_alike() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "maja").await;
    c.subjects
        .set_password(authed(&s.key, pb::SetPasswordRequest { subject_id: s.user.clone(), password: PASSWORD.into() }))
        .await
        .unwrap();
    for name in ["maja", "ghost-user"] {
        for _ in 0..5 {
            let e = login(&mut c, &s.key, name, "wrong-password").await.unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{name}");
        }
        let e = login(&mut c, &s.key, name, PASSWORD).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
        assert!(e.message().contains("try again in 1 s"), "{e:?}");
    }
    // After the delay the right password gets in.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    login(&mut c, &s.key, "maja", PASSWORD).await.unwrap();
    // Bad input is named.
    let e = login(&mut c, &s.key, "x", PASSWORD).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("username"), "{e:?}");
    let e = login(&mut c, &s.key, "maja", "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("password"), "{e:?}");
}
