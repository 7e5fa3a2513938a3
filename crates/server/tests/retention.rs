//! Retention and tenant offboarding, on a moved clock (the development
//! clock offset file): closed Sessions past their Pype's (or tenant's)
//! retention lose their content key, recorded on the Session and in the
//! audit trail, also across a restart; a cancelled tenant's KEK is shredded
//! after its grace period and a signed certificate issued.

mod common;

use std::process::Command;

use common::{ADMIN, authed, clients, post, setup, start_with};
use proto::api as pb;
use tonic::Code;

const DAY: i64 = 86_400;

struct Env {
    _dir: tempfile::TempDir,
    clock: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Env {
    fn new(grace_days: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join("clock-offset");
        std::fs::write(&clock, "0").unwrap();
        let config = dir.path().join("pypes.toml");
        std::fs::write(&config, format!("[privacy]\nsweep_secs = 1\noffboarding_grace_days = {grace_days}\n")).unwrap();
        Self { _dir: dir, clock, config }
    }
    fn vars(&self) -> [(&str, &str); 2] {
        [("PYPES_CONFIG", self.config.to_str().unwrap()), ("PYPES_DEV_CLOCK_OFFSET_FILE", self.clock.to_str().unwrap())]
    }
    fn advance_days(&self, days: i64) {
        let now: i64 = std::fs::read_to_string(&self.clock).unwrap().trim().parse().unwrap();
        std::fs::write(&self.clock, (now + days * DAY).to_string()).unwrap();
    }
}

async fn bodies(c: &mut common::Clients, key: &str, session: &str) -> Vec<(String, bool)> {
    c.views
        .list_messages(authed(key, pb::ListMessagesRequest { session_id: session.into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| (m.body, m.erased))
        .collect()
}

async fn eventually(mut check: impl AsyncFnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sessions_lose_their_content_when_retention_runs_out() {
    let env = Env::new(30);
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), &env.vars());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "reta").await;
    c.sessions.post_message(authed(&s.key, post(&s, "keep me 30 days"))).await.unwrap();
    // A second Pype keeps content 2 days (overriding the tenant's 30).
    let short = c
        .pypes
        .create_pype(authed(&s.key, pb::CreatePypeRequest { name: "Short".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(
        tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap(),
    );
    let set = tenants
        .set_retention(authed(
            &s.key,
            pb::SetRetentionRequest { pype_id: String::new(), retention_days: 30, inherit: false },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.tenant_retention_days, 30);
    let set = tenants
        .set_retention(authed(
            &s.key,
            pb::SetRetentionRequest { pype_id: short.pype_id.clone(), retention_days: 2, inherit: false },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.pype_retention_days, Some(2));
    let e = tenants
        .set_retention(authed(
            &s.key,
            pb::SetRetentionRequest { pype_id: short.pype_id.clone(), retention_days: 5000, inherit: false },
        ))
        .await
        .unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("retention_days"), "{e:?}");
    let second = c
        .sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: short.pype_id.clone(),
                end_user_id: s.user.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let short_setup = common::Setup { session: second.clone(), ..s_clone(&s) };
    c.sessions.post_message(authed(&s.key, post(&short_setup, "gone after 2 days"))).await.unwrap();
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    common::upload(&ch, &s.key, None, common::upload_messages(&second, &s.user, "text/plain", b"a file, 2 days", 4))
        .await
        .unwrap();
    let second_blobs = data.path().join("blobs").join(&s.tenant).join(&second);
    assert_eq!(common::files_under(&second_blobs).len(), 1);
    // An open Session is never expired.
    env.advance_days(3);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(bodies(&mut c, &s.key, &second).await, [("gone after 2 days".to_string(), false)]);
    for session in [&s.session, &second] {
        c.sessions
            .close_session(authed(&s.key, pb::CloseSessionRequest { session_id: session.clone() }))
            .await
            .unwrap();
    }
    env.advance_days(2);
    eventually(async || bodies(&mut c, &s.key, &second).await == [("[erased]".to_string(), true)], "the 2-day purge")
        .await;
    // The expired Session's media went with it.
    assert!(!second_blobs.exists(), "the expired session's blobs are deleted");
    // The 30-day Pype keeps its content until its time is up.
    assert_eq!(bodies(&mut c, &s.key, &s.session).await, [("keep me 30 days".to_string(), false)]);

    // A restart loses nothing of the schedule.
    drop(server);
    let server = start_with(data.path(), &env.vars());
    let mut c = clients(&server.grpc).await;
    env.advance_days(30);
    eventually(
        async || bodies(&mut c, &s.key, &s.session).await == [("[erased]".to_string(), true)],
        "the 30-day purge",
    )
    .await;
    drop(server);

    // Each purge is recorded: on the Session and in the audit trail.
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["audit", "trail", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("retention.purge").count(), 2, "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["replay", "--stream", &format!("session-{}-{}", s.tenant, second), "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ContentExpired") && text.contains("[erased]") && !text.contains("gone after"), "{text}");
    // The purged words are in no file under the data directory.
    for words in ["gone after 2 days", "keep me 30 days"] {
        let hits = common::containing(&common::files_under(data.path()), words);
        assert!(hits.is_empty(), "{words:?} found in {hits:?}");
    }
    // Both Sessions' content keys are gone; the end user's own keys are not.
    let keys = keystore::embedded::open_embedded(
        data.path(),
        None,
        std::sync::Arc::new(eventlog::SystemClock),
        keystore::embedded::OpenMode::MustExist,
    )
    .unwrap();
    let tenant = uuid::Uuid::parse_str(&s.tenant).unwrap();
    for session in [&s.session, &second] {
        let target = keystore::ShredTarget::Session { session: uuid::Uuid::parse_str(session).unwrap() };
        assert!(keystore::KeyStore::keys_of(&*keys.store, tenant, &target).unwrap().is_empty(), "{session}");
    }
    let user = keystore::ShredTarget::Subject { subject: uuid::Uuid::parse_str(&s.user).unwrap(), group: None };
    assert!(!keystore::KeyStore::keys_of(&*keys.store, tenant, &user).unwrap().is_empty());
}

fn s_clone(s: &common::Setup) -> common::Setup {
    common::Setup {
        tenant: s.tenant.clone(),
        key: s.key.clone(),
        pype: s.pype.clone(),
        user: s.user.clone(),
        session: s.session.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_tenant_is_shredded_after_its_grace_period_with_a_certificate() {
    let env = Env::new(7);
    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), &env.vars());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "leaving").await;
    c.sessions.post_message(authed(&s.key, post(&s, "tenant canary 5c1f"))).await.unwrap();
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    common::upload(&ch, &s.key, None, common::upload_messages(&s.session, &s.user, "image/png", b"tenant picture", 5))
        .await
        .unwrap();
    let tenant_blobs = data.path().join("blobs").join(&s.tenant);
    assert_eq!(common::files_under(&tenant_blobs).len(), 1);
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(ch);
    let e = tenants
        .cancel_tenant(authed(&s.key, pb::CancelTenantRequest { tenant_id: s.tenant.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "a tenant does not cancel itself here: {e:?}");
    let off = tenants
        .cancel_tenant(authed(ADMIN, pb::CancelTenantRequest { tenant_id: s.tenant.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.shred_due_micros - off.cancelled_at_micros, 7 * DAY * 1_000_000);
    // Its keys stop at once.
    let e = c.sessions.post_message(authed(&s.key, post(&s, "after"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Within the grace period nothing is shredded.
    env.advance_days(6);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let get = || pb::CancelTenantRequest { tenant_id: s.tenant.clone() };
    assert_eq!(tenants.get_offboarding(authed(ADMIN, get())).await.unwrap().into_inner().shredded_at_micros, 0);
    env.advance_days(2);
    let mut off = pb::Offboarding::default();
    for _ in 0..100 {
        off = tenants.get_offboarding(authed(ADMIN, get())).await.unwrap().into_inner();
        if !off.certificate.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(off.shredded_at_micros > 0 && !off.certificate.is_empty(), "{off:?}");
    let cert: serde_json::Value = serde_json::from_str(&off.certificate).unwrap();
    assert_eq!(cert["format"], "pypes-tenant-offboarding-certificate/v1");
    assert_eq!(cert["tenant_id"], s.tenant.as_str());
    assert!(!cert["destroyed_key_fingerprints"].as_array().unwrap().is_empty(), "{cert}");
    assert!(!tenant_blobs.exists(), "the tenant's media are deleted");

    // The operator's CLI shows it and writes the certificate out.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cert.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["tenant", "offboarding", "--tenant", &s.tenant, "--grpc", &server.grpc, "--admin-key", ADMIN, "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // It names the tenant and the time of the KEK shred the server reports.
    let shredded = server::audit_tool::time_text(off.shredded_at_micros);
    let field = |name: &str, value: &str| text.lines().any(|l| l.split_whitespace().eq([name, value]));
    assert!(
        out.status.success() && field("tenant:", &s.tenant) && field("kek_shredded:", &shredded),
        "{shredded} in {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), off.certificate);
    drop(server);
    // The certificate verifies with the log's public key; one changed byte does not.
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args(["erase", "--verify"])
            .arg(&file)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    std::fs::write(&file, off.certificate.replace("\"grace_days\":7", "\"grace_days\":8")).unwrap();
    assert!(!verify().status.success());

    // Everything of the tenant is unreadable: the replay shows it erased.
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["replay", "--stream", &format!("session-{}-{}", s.tenant, s.session), "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("[erased]") && !text.contains("tenant canary"), "{text}");
}
