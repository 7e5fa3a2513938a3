//! The console in a real browser: Debian's Chromium driven by Playwright
//! (`crates/server/console/tests/console.mjs`), against the real binary
//! seeded through the gRPC API. Needs `/usr/bin/chromium` and
//! `npm ci` in `crates/server/console`; `.ci/console-browser.sh` installs
//! both. Without them the test says so and passes, unless
//! `PYPES_REQUIRE_BROWSER=1` (CI), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ADMIN, authed, clients, start_with, wait_projections_caught_up};
use proto::api as pb;
use tonic::transport::Channel;

const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

/// Whether the browser and Playwright are here; `None` with the reason.
fn browser() -> Option<String> {
    let chromium = std::env::var("PYPES_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = console_dir().join("node_modules/playwright-core/package.json");
    let missing = if !Path::new(&chromium).exists() {
        format!("{chromium} (Debian's chromium package)")
    } else if !playwright.exists() {
        "playwright-core (npm ci in crates/server/console)".into()
    } else {
        return Some(chromium);
    };
    if std::env::var("PYPES_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("PYPES_REQUIRE_BROWSER=1 but {missing} is missing: run .ci/console-browser.sh --install");
    }
    eprintln!("SKIPPED: the console's browser test needs {missing}; .ci/console-browser.sh --install installs both");
    None
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

async fn import(ch: &Channel, key: &str, items: Vec<pb::ImportSessionRequest>) -> pb::ImportSessionsResponse {
    pb::session_service_client::SessionServiceClient::new(ch.clone())
        .import_sessions(authed(key, tokio_stream::iter(items)))
        .await
        .unwrap()
        .into_inner()
}

/// QueryAnalytics's cells as the browser test compares them: (t in
/// seconds, sessions or null when suppressed).
async fn cells(ch: &Channel, key: &str, pype: &str, g: pb::Granularity, from: i64, to: i64) -> String {
    let r = pb::analytics_service_client::AnalyticsServiceClient::new(ch.clone())
        .query_analytics(authed(
            key,
            pb::QueryAnalyticsRequest { pype_id: pype.into(), granularity: g as i32, from_micros: from, to_micros: to },
        ))
        .await
        .unwrap()
        .into_inner();
    let items: Vec<String> = r
        .cells
        .iter()
        .map(|c| {
            let n = if c.suppressed { "null".to_string() } else { c.sessions.to_string() };
            format!("{{\"t\":{},\"sessions\":{n}}}", c.bucket_start_micros / 1_000_000)
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some(chromium) = browser() else { return };
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("pypes.toml");
    // A point a second, so the test sees the overview's charts grow.
    std::fs::write(&config, "[console]\nsample_secs = 1\n\n[privacy]\nanalytics_k = 5\n").unwrap();
    // The browser test moves the server's clock an hour on (idle timeout).
    let clock = data.path().join("clock-offset");
    std::fs::write(&clock, "0\n").unwrap();
    let server = start_with(
        &data.path().join("data"),
        &[("PYPES_CONFIG", config.to_str().unwrap()), ("PYPES_DEV_CLOCK_OFFSET_FILE", clock.to_str().unwrap())],
    );
    let mut c = clients(&server.grpc).await;
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();

    // Tenant A: a name that would run as script if it were not escaped.
    let a = c
        .tenants
        .create_tenant(authed(
            ADMIN,
            pb::CreateTenantRequest { name: "Acme <script>alert(1)</script>".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    let (tenant_a, key_a) = (a.tenant.unwrap().tenant_id, a.api_key);
    let b = c
        .tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Other Corp".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let (tenant_b, key_b) = (b.tenant.unwrap().tenant_id, b.api_key);
    let pype = c
        .pypes
        .create_pype(authed(&key_a, pb::CreatePypeRequest { name: "Support <b>desk</b>".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .pype_id;
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(common::register(&mut c, &key_a, &format!("user{i}")).await);
    }
    // Analytics: one hour with 6 Sessions (shown, k = 5), one with 2
    // (suppressed), one day earlier with 3 (suppressed), all imported with
    // their original times.
    let now = now_micros();
    let base = (now / DAY - 2) * DAY + 10 * HOUR;
    let mut items = Vec::new();
    for (n, start) in [(6, base), (2, base + 3 * HOUR), (3, base - DAY + 5 * HOUR)] {
        for i in 0..n {
            let at = start + i as i64 * 60_000_000;
            items.push(pb::ImportSessionRequest {
                import_id: format!("hist-{start}-{i}"),
                pype_id: pype.clone(),
                end_user_id: users[i % 6].clone(),
                started_at_micros: at,
                messages: vec![pb::ImportedMessage {
                    sender_id: users[i % 6].clone(),
                    sender_kind: pb::ParticipantKind::EndUser as i32,
                    body: "imported hello".into(),
                    sent_at_micros: at + 1_000_000,
                }],
                closed_at_micros: at + 600_000_000,
            });
        }
    }
    let done = import(&ch, &key_a, items).await;
    assert_eq!(done.written, 11, "{done:?}");
    // A live Session whose content support must not see without a grant.
    let session = c
        .sessions
        .start_session(authed(
            &key_a,
            pb::StartSessionRequest { pype_id: pype.clone(), end_user_id: users[0].clone(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    c.sessions
        .post_message(authed(
            &key_a,
            pb::PostMessageRequest {
                session_id: session.clone(),
                sender_id: users[0].clone(),
                body: "my card number is SECRET-4711".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut staff = pb::staff_service_client::StaffServiceClient::new(ch.clone());
    let mut keys = Vec::new();
    for role in [pb::StaffRole::Support, pb::StaffRole::PrivacyOfficer] {
        let added = staff.add_staff(authed(ADMIN, pb::AddStaffRequest { role: role as i32 })).await.unwrap();
        keys.push(added.into_inner().api_key);
    }
    let (support, officer) = (keys[0].clone(), keys[1].clone());
    wait_projections_caught_up(&server.http).await;

    let from = base - 2 * DAY;
    let to = (now / HOUR + 1) * HOUR;
    let hourly = cells(&ch, &key_a, &pype, pb::Granularity::Hour, from, to).await;
    let (day_from, day_to) = (from / DAY * DAY, (to / DAY + i64::from(to % DAY != 0)) * DAY);
    let daily = cells(&ch, &key_a, &pype, pb::Granularity::Day, day_from, day_to).await;
    assert!(
        hourly.contains("null") && hourly.contains("\"sessions\":6"),
        "the seed gives a shown and a suppressed cell: {hourly}"
    );

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    // Only this run's pictures (docs/console.md copies them from here).
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::task::spawn_blocking({
        let env: Vec<(&str, String)> = vec![
            ("PYPES_URL", format!("http://{}", server.http)),
            ("CHROMIUM", chromium),
            ("ADMIN_KEY", ADMIN.into()),
            ("SUPPORT_KEY", support),
            ("OFFICER_KEY", officer),
            ("TENANT_A", tenant_a.clone()),
            ("TENANT_A_KEY", key_a.clone()),
            ("TENANT_B", tenant_b),
            ("TENANT_B_KEY", key_b),
            ("PYPE_A", pype.clone()),
            ("SESSION_A", session.clone()),
            ("ERASE_SUBJECT", users[7].clone()),
            ("RESTRICT_SUBJECT", users[6].clone()),
            ("FROM", (from / 1_000_000).to_string()),
            ("TO", (to / 1_000_000).to_string()),
            ("EXPECT_HOURLY", hourly),
            ("EXPECT_DAILY", daily),
            ("SCREENSHOTS", shots.to_string_lossy().into_owned()),
            ("CLOCK_FILE", clock.to_string_lossy().into_owned()),
        ];
        move || {
            Command::new("node")
                .arg(console_dir().join("tests/console.mjs"))
                .envs(env)
                .current_dir(console_dir())
                .output()
                .expect("run node")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "the browser test failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("ALL CONSOLE CHECKS PASSED"), "{stdout}");

    // What the browser did went through the API's processes: the erasure
    // it asked for is certified, the restriction holds.
    let status = common::wait_certified(&mut c, &key_a, &users[7]).await;
    assert!(!status.certificate.is_empty());
}
