//! Watching privileged access, through the real server: each alert rule
//! fires on its case and stays silent on the normal case; alerts reach a
//! webhook receiver started here, signed (checked with the receiver's
//! secret), while a second, hanging receiver neither holds them up nor
//! slows the API; a `kill -9` raises nothing twice. Breach scope: a
//! staff member with a break-glass grant reads three subjects' Sessions;
//! `ScopeAccess` and `pypes audit scope` list exactly those, and an edited
//! audit entry makes the command refuse.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::receiver::{HANG, Receiver, UP, now_micros};
use common::{ADMIN, authed, clients, req, setup};
use proto::api as pb;
use tonic::Code;
use tonic::transport::Channel;

const SECRET: &str = "alert-hook-secret-0123456789";

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

fn staff(ch: &Channel) -> pb::staff_service_client::StaffServiceClient<Channel> {
    pb::staff_service_client::StaffServiceClient::new(ch.clone())
}

/// A new staff member of `role`: (id, key).
async fn add_staff(ch: &Channel, role: pb::StaffRole) -> (String, String) {
    let k = staff(ch).add_staff(authed(ADMIN, pb::AddStaffRequest { role: role as i32 })).await.unwrap().into_inner();
    (k.member.unwrap().staff_id, k.api_key)
}

async fn open_grant(ch: &Channel, key: &str, tenant: &str) {
    let r =
        pb::OpenBreakGlassRequest { tenant_id: tenant.into(), reason: "ticket SUP-4711".into(), duration_secs: 600 };
    staff(ch).open_break_glass(req(key, None, r)).await.unwrap();
}

async fn read_messages(ch: &Channel, key: &str, tenant: &str, session: &str) {
    let r = pb::ListMessagesRequest { session_id: session.into(), ..Default::default() };
    pb::view_service_client::ViewServiceClient::new(ch.clone())
        .list_messages(req(key, Some(tenant), r))
        .await
        .unwrap_or_else(|e| panic!("ListMessages {session}: {e:?}"));
}

async fn refused_call(ch: &Channel, key: &str) {
    let r = pb::CreateTenantRequest { name: "T".into(), ..Default::default() };
    let e = pb::tenant_service_client::TenantServiceClient::new(ch.clone()).create_tenant(req(key, None, r)).await;
    assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
}

/// Waits until the alert rules have read everything written so far.
async fn rules_caught_up(http: &str) {
    let head = common::metric(&common::metrics_text(http).await, "pypes_log_head_position");
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::metric(&common::metrics_text(http).await, "pypes_access_alerts_next_position") < head {
        assert!(Instant::now() < deadline, "the alert rules did not reach position {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The distinct alerts the receiver acknowledged, as (id, rule), each
/// checked against the secret.
fn alerts(r: &Receiver) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for g in r.got().iter().filter(|g| g.acked) {
        let header = &g.headers[webhooks::sign::HEADER];
        let at = g.at_micros / 1_000_000;
        webhooks::sign::verify(header, SECRET.as_bytes(), &g.body, at, 300)
            .unwrap_or_else(|e| panic!("an alert's signature does not verify: {e:?}"));
        assert!(webhooks::sign::verify(header, b"another-secret-0123456", &g.body, at, 300).is_err());
        let j = g.json();
        assert_eq!(j["type"], "access_alert");
        assert_eq!(g.headers["pypes-event-id"], j["id"].as_str().unwrap());
        assert_eq!(g.headers["pypes-alert-rule"], j["rule"].as_str().unwrap());
        out.insert((j["id"].as_str().unwrap().to_string(), j["rule"].as_str().unwrap().to_string()));
    }
    out
}

fn rules(set: &BTreeSet<(String, String)>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|(_, r)| r.clone()).collect();
    v.sort();
    v
}

async fn wait_alerts(r: &Receiver, n: usize) -> BTreeSet<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = alerts(r);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{} of {n} alerts arrived: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_fires_on_its_case_only_and_reaches_a_signed_webhook_past_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two tenants first: the hours rule names one of them.
    let server = common::start(&data);
    let mut c = clients(&server.grpc).await;
    let a = setup(&mut c, "ann").await;
    let b = setup(&mut c, "bob").await;
    let mut users = vec![(a.user.clone(), a.session.clone())];
    for name in ["cid", "dee"] {
        users.push(common::end_user_with_session(&mut c, &a.key, &a.pype, name).await);
    }
    common::stop_cleanly(server);

    let good = Receiver::start(UP).await;
    let dead = Receiver::start(HANG).await;
    std::fs::write(dir.path().join("hook.secret"), format!("{SECRET}\n")).unwrap();
    // Tenant b's hours are twelve hours away from now, every day.
    let hour = (now_micros() / 3_600_000_000 + 12) % 24;
    let cfg = dir.path().join("pypes.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\ncontent_subjects_per_hour = 2\nrefusals_per_minute = 3\nallow_loopback = true\n\
             first_retry_ms = 200\n\
             [[alerts.tenant_hours]]\ntenant = \"{}\"\ndays = \"all\"\nfrom = \"{hour:02}:00\"\nto = \"{:02}:00\"\n\
             [[alerts.webhooks]]\nname = \"siem\"\nurl = \"{}\"\nsecret_file = \"{}\"\n\
             [[alerts.webhooks]]\nname = \"dead\"\nurl = \"{}\"\nsecret_file = \"{}\"\n",
            b.tenant,
            hour + 1,
            good.url,
            dir.path().join("hook.secret").display(),
            dead.url,
            dir.path().join("hook.secret").display(),
        ),
    )
    .unwrap();
    let env = [("PYPES_CONFIG", cfg.to_str().unwrap())];
    let server = common::start_with(&data, &env);
    let ch = channel(&server.grpc).await;
    let (_, support) = add_staff(&ch, pb::StaffRole::Support).await;

    // The normal case: metadata calls, content of two subjects under a
    // grant, three refusals, tenant a (no hours) at any time. Only the
    // grant itself is an alert.
    open_grant(&ch, &support, &a.tenant).await;
    // The hanging hook holds its first alert; the API does not wait for it.
    dead.wait_requests_past(0).await;
    let started = Instant::now();
    for (_, session) in &users[..2] {
        read_messages(&ch, &support, &a.tenant, session).await;
        read_messages(&ch, &support, &a.tenant, session).await;
    }
    for _ in 0..3 {
        refused_call(&ch, &support).await;
    }
    let get_pype = |tenant: &str, pype: &str| {
        let r = pb::GetPypeRequest { pype_id: pype.into() };
        let (ch, key, tenant) = (ch.clone(), support.clone(), tenant.to_string());
        async move { pb::pype_service_client::PypeServiceClient::new(ch).get_pype(req(&key, Some(&tenant), r)).await }
    };
    get_pype(&a.tenant, &a.pype).await.unwrap();
    // An attempt to the hanging hook lasts 10 s; these calls did not wait
    // for it (nor for any alert).
    assert!(started.elapsed() < Duration::from_secs(8), "the API waited: {:?}", started.elapsed());
    rules_caught_up(&server.http).await;
    let first = wait_alerts(&good, 1).await;
    assert_eq!(rules(&first), ["break_glass_opened"]);

    // Each rule's case: a third subject's content, two more refusals
    // within the minute, tenant b outside its hours, a whole tenant out.
    read_messages(&ch, &support, &a.tenant, &users[2].1).await;
    refused_call(&ch, &support).await;
    refused_call(&ch, &support).await;
    get_pype(&b.tenant, &b.pype).await.unwrap();
    export_all(&ch, &a.key).await;
    let all = wait_alerts(&good, 5).await;
    assert_eq!(
        rules(&all),
        ["break_glass_opened", "bulk_export", "content_subjects", "outside_hours", "refusals"],
        "{all:?}"
    );
    // The dead hook got nothing through, and held nothing up.
    assert!(dead.got().iter().all(|g| !g.acked));
    let metrics = common::metrics_text(&server.http).await;
    for rule in ["break_glass_opened", "bulk_export", "content_subjects", "outside_hours", "refusals"] {
        let line = format!("pypes_access_alerts_total{{rule=\"{rule}\"}} 1");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(common::metric(&metrics, "pypes_alert_webhook_backlog") >= 1, "the dead hook's backlog is not shown");

    // A kill -9 and a restart replay the windows and raise nothing again.
    drop(server);
    let server = common::start_with(&data, &env);
    rules_caught_up(&server.http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&good), all, "an alert was raised again after the restart");
    let metrics = common::metrics_text(&server.http).await;
    assert!(metrics.contains("pypes_access_alerts_total{rule=\"content_subjects\"} 0"), "{metrics}");
}

/// A whole tenant out, read to its end.
async fn export_all(ch: &Channel, key: &str) {
    let mut stream = pb::integration_service_client::IntegrationServiceClient::new(ch.clone())
        .export_tenant(authed(key, pb::ExportTenantRequest { resume_token: String::new() }))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breach_scope_lists_exactly_the_subjects_a_staff_member_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let from = now_micros() - 1_000_000;
    let server = common::start(&data);
    let mut c = clients(&server.grpc).await;
    let a = setup(&mut c, "ann").await;
    let mut users = vec![(a.user.clone(), a.session.clone())];
    for name in ["cid", "dee", "eve"] {
        users.push(common::end_user_with_session(&mut c, &a.key, &a.pype, name).await);
    }
    let ch = channel(&server.grpc).await;
    let (id, support) = add_staff(&ch, pb::StaffRole::Support).await;
    let (_, officer) = add_staff(&ch, pb::StaffRole::PrivacyOfficer).await;
    open_grant(&ch, &support, &a.tenant).await;
    // Three subjects' Sessions read; the fourth user is never touched.
    for (_, session) in &users[..3] {
        read_messages(&ch, &support, &a.tenant, session).await;
    }
    let expected: BTreeSet<String> = users[..3].iter().map(|(u, _)| u.clone()).collect();
    let sessions: BTreeSet<String> = users[..3].iter().map(|(_, s)| s.clone()).collect();

    // The API, for a privacy officer; support may not ask.
    let ask = |key: &str, actor: &str| {
        let r = pb::ScopeAccessRequest { actor: actor.into(), from_micros: from, to_micros: 0 };
        let (ch, key) = (ch.clone(), key.to_string());
        async move { staff(&ch).scope_access(req(&key, None, r)).await }
    };
    let scope = ask(&officer, &format!("staff:{id}")).await.unwrap().into_inner();
    assert_eq!(scope.tenants.len(), 1, "{scope:?}");
    let t = &scope.tenants[0];
    assert_eq!(t.tenant_id, a.tenant);
    assert_eq!(t.subject_ids.iter().cloned().collect::<BTreeSet<_>>(), expected, "{scope:?}");
    assert_eq!(t.session_ids.iter().cloned().collect::<BTreeSet<_>>(), sessions, "{scope:?}");
    assert!(t.whole_tenant_because.is_empty(), "{scope:?}");
    assert!(scope.entries_verified > 0);
    // A bare id means either kind; the admin key may ask too.
    let bare = ask(ADMIN, &id).await.unwrap().into_inner();
    assert_eq!(bare.tenants[0].subject_ids, t.subject_ids);
    assert_eq!(ask(&support, &format!("staff:{id}")).await.unwrap_err().code(), Code::PermissionDenied);
    let e = ask(&officer, "bob").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("actor"), "{e:?}");

    // Containment with the operator's commands: the staff member's key
    // stops, the tenant's leaked key stops; both are in the trail.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args(args)
            .args(["--server", &server.grpc, "--admin-key", ADMIN, "--json"])
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let listed = cli(&["staff", "list"]);
    assert_eq!(listed["live_grants"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(cli(&["staff", "disable", "--staff", &id])["disabled"], true);
    let e = staff(&ch).list_staff(req(&support, None, pb::ListStaffRequest {})).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let key_id = a.key.split('_').nth(2).unwrap().to_string();
    assert_eq!(cli(&["tenant", "revoke-key", "--tenant", &a.tenant, "--key-id", &key_id])["revoked"], true);
    let get = pb::GetTenantRequest { tenant_id: a.tenant.clone() };
    let e = c.tenants.get_tenant(authed(&a.key, get)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // The command, after a clean stop (the signed head is written).
    common::stop_cleanly(server);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args(["audit", "scope", "--data-dir"])
            .arg(&data)
            .args(["--actor", &format!("staff:{id}"), "--from", &(from / 1_000_000).to_string()])
            .args(extra)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&["--json"]);
    assert!(ok, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["verified"]["ok"], true);
    let tenants = v["scopes"][0]["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1);
    let got: BTreeSet<String> =
        tenants[0]["subjects"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    assert_eq!(got, expected);
    let (ok, table, err) = run(&[]);
    assert!(ok, "{err}");
    for s in &expected {
        assert!(table.contains(&format!("subject  {s}")), "{table}");
    }
    assert!(!table.contains(&users[3].0), "{table}");

    // An edited audit entry (its actor changed in place): the command
    // refuses, naming the break, and gives no scope.
    let needle = format!("staff:{id}");
    let mut edited = false;
    for segment in std::fs::read_dir(data.join("log/segments")).unwrap() {
        let path = segment.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle.as_bytes()) {
            let last = at + needle.len() - 1;
            bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
            std::fs::write(&path, bytes).unwrap();
            edited = true;
            break;
        }
    }
    assert!(edited, "no audit entry of {needle} in the log's segments");
    let (ok, out, err) = run(&[]);
    assert!(!ok, "a scope from an edited trail:\n{out}");
    assert!(!out.contains("breach scope of"), "{out}");
    assert!(err.contains("segment") || err.contains("hash") || err.contains("checksum"), "{err}");
}
