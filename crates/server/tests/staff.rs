//! Staff roles through the API: every RPC called with each role's key
//! gives exactly what the table in docs/security.md (the server's `POLICY`)
//! says; content needs a break-glass grant, which is personal, ends, and
//! leaves a trace in the audit trail; disabled and rotated keys stop.

mod common;

use std::process::Command;

use common::{ADMIN, Ids, RPCS, call, clients, setup, start};
use domain::staff::{Access, access};
use proto::api as pb;
use tonic::Code;

fn refused(r: &Result<String, tonic::Status>) -> bool {
    matches!(r, Err(e) if e.code() == Code::PermissionDenied || e.code() == Code::Unauthenticated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_call_exactly_what_the_table_says() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "stella").await;
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let ids = Ids {
        tenant: s.tenant.clone(),
        pype: s.pype.clone(),
        session: s.session.clone(),
        user: s.user.clone(),
        ..Ids::default()
    };
    let mut staff = pb::staff_service_client::StaffServiceClient::new(ch.clone());

    // A tenant key may not manage staff.
    let e = staff.add_staff(common::authed(&s.key, pb::AddStaffRequest { role: 1 })).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let roles = [
        (domain::staff::Role::Support, pb::StaffRole::Support),
        (domain::staff::Role::PrivacyOfficer, pb::StaffRole::PrivacyOfficer),
        (domain::staff::Role::Admin, pb::StaffRole::Admin),
    ];
    for (role, wire) in roles {
        let key = staff
            .add_staff(common::authed(ADMIN, pb::AddStaffRequest { role: wire as i32 }))
            .await
            .unwrap()
            .into_inner()
            .api_key;
        let mut content = Vec::new();
        for rpc in RPCS.iter().filter(|r| **r != "OpenBreakGlass") {
            let got = call(&ch, rpc, &key, Some(&s.tenant), &ids).await;
            match access(role, rpc) {
                Access::Allowed => assert!(!refused(&got), "{role:?} {rpc}: refused {got:?}"),
                Access::Denied => {
                    assert!(matches!(&got, Err(e) if e.code() == Code::PermissionDenied), "{role:?} {rpc}: {got:?}")
                }
                Access::BreakGlass => {
                    let e = got.as_ref().unwrap_err();
                    assert_eq!(e.code(), Code::PermissionDenied, "{role:?} {rpc}");
                    assert!(e.message().contains("break-glass"), "{e:?}");
                    content.push(*rpc);
                }
            }
        }
        // With a grant for this tenant, the content calls go through.
        let grant = call(&ch, "OpenBreakGlass", &key, None, &ids).await;
        assert!(grant.is_ok(), "{role:?}: {grant:?}");
        for rpc in &content {
            let got = call(&ch, rpc, &key, Some(&s.tenant), &ids).await;
            assert!(!refused(&got), "{role:?} {rpc} under a grant: {got:?}");
        }
        // ... not for another tenant.
        let other = Ids { tenant: uuid::Uuid::now_v7().to_string(), ..ids.clone() };
        let got = call(&ch, "ListMessages", &key, Some(&other.tenant), &other).await;
        assert!(refused(&got), "{role:?}: grant leaked to another tenant: {got:?}");
    }

    // A staff call without the tenant header is named as bad input.
    let key = staff.add_staff(common::authed(ADMIN, pb::AddStaffRequest { role: 1 })).await.unwrap().into_inner();
    let e = call(&ch, "GetPype", &key.api_key, None, &ids).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("x-pypes-tenant"), "{e:?}");
    // Bad grants are named.
    let e = staff
        .open_break_glass(common::req(
            &key.api_key,
            None,
            pb::OpenBreakGlassRequest { tenant_id: s.tenant.clone(), reason: "why".into(), duration_secs: 600 },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("reason"), "{e:?}");
    let e = staff
        .open_break_glass(common::req(
            &key.api_key,
            None,
            pb::OpenBreakGlassRequest {
                tenant_id: s.tenant.clone(),
                reason: "ticket SUP-9".into(),
                duration_secs: 86_400,
            },
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("duration_secs"), "{e:?}");

    // Rotation: the old key stops; disabling: the new one stops too.
    let id = key.member.unwrap().staff_id;
    let rotated = staff
        .rotate_staff_key(common::authed(ADMIN, pb::StaffRef { staff_id: id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .api_key;
    assert_eq!(
        call(&ch, "GetPype", &key.api_key, Some(&s.tenant), &ids).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(call(&ch, "GetPype", &rotated, Some(&s.tenant), &ids).await.is_ok());
    staff.disable_staff(common::authed(ADMIN, pb::StaffRef { staff_id: id })).await.unwrap();
    assert_eq!(call(&ch, "GetPype", &rotated, Some(&s.tenant), &ids).await.unwrap_err().code(), Code::Unauthenticated);

    // The audit trail has the grants and the content reads under them
    // (after a clean stop: a killed young log may have no signed head yet,
    // which `audit trail` refuses without --allow-missing-head).
    common::stop_cleanly(server);
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["audit", "trail", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "staff.break_glass_open",
        "staff.break_glass_access",
        "rpc:ListMessages",
        "staff.disable",
        "staff.access",
        "privacy.export staff:",
        "privacy.erasure_requested staff:",
        "privacy.tenant_cancelled staff:",
    ] {
        // The table pads its columns: compare with single spaces.
        let rows: Vec<String> = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        assert!(rows.iter().any(|r| r.contains(needle)), "no {needle} in the trail:\n{text}");
    }
}
