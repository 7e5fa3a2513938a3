//! Data residency with two regions on one machine: a node of region eu
//! and a node of region us, each on its own data directory, sharing the
//! global tenant directory. Tenants are created in each, with canaries in
//! their fields and messages; then a byte scan: each region's files hold
//! its own tenants' ids and names and none of the other region's, the
//! global directory holds only tenant ids and region names; the log of
//! each region, opened with its keys, shows its own content and has no
//! stream of the other's. A request for a tenant of the other region is
//! refused with FAILED_PRECONDITION naming the region (`pypes-region`
//! too, for a router).

mod common;

use std::path::Path;
use std::process::Command;

use common::{ADMIN, Clients, authed, clients, files_under, start_with};
use proto::api as pb;
use tonic::Code;

struct Tenant {
    id: String,
    key: String,
    pype: String,
    user: String,
    session: String,
    name: String,
    body: String,
}

async fn tenant_with_content(c: &mut Clients, region: &str, tag: &str) -> Tenant {
    let name = format!("ResidencyCo-{region}-{tag}");
    let t = c
        .tenants
        .create_tenant(authed(
            ADMIN,
            pb::CreateTenantRequest { name: name.clone(), region: region.into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    let key = t.api_key;
    let tenant = t.tenant.unwrap();
    assert_eq!(tenant.region, region);
    let pype = c
        .pypes
        .create_pype(authed(&key, pb::CreatePypeRequest { name: format!("Desk {tag}"), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .pype_id;
    let (user, session) = common::end_user_with_session(c, &key, &pype, &format!("user{region}{tag}")).await;
    let body = format!("residency body {region} {tag}");
    c.sessions
        .post_message(authed(
            &key,
            pb::PostMessageRequest {
                session_id: session.clone(),
                sender_id: user.clone(),
                body: body.clone(),
                device: format!("device {region} {tag}"),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    Tenant { id: tenant.tenant_id, key, pype, user, session, name, body }
}

fn config(dir: &Path, serve: &str, eu: &Path, us: &Path, global: &Path) -> std::path::PathBuf {
    let path = dir.join(format!("{serve}.toml"));
    std::fs::write(
        &path,
        format!(
            "[regions]\nserve = \"{serve}\"\ndirectory = \"{}\"\n[regions.eu]\ndata_dir = \"{}\"\n\
             [regions.us]\ndata_dir = \"{}\"\n",
            global.display(),
            eu.display(),
            us.display()
        ),
    )
    .unwrap();
    path
}

/// The byte forms an id takes in stores: its text and its 16 bytes.
fn forms(id: &str) -> [Vec<u8>; 2] {
    let u = uuid::Uuid::parse_str(id).unwrap();
    [id.as_bytes().to_vec(), u.as_bytes().to_vec()]
}

/// Files read once (a database cluster's are tens of MB), for byte scans.
struct Scanned(Vec<(std::path::PathBuf, Vec<u8>)>);

impl Scanned {
    fn read(files: Vec<std::path::PathBuf>) -> Self {
        Self(files.into_iter().filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b))).collect())
    }

    /// The files holding `needle`.
    fn holding(&self, needle: &[u8]) -> Vec<std::path::PathBuf> {
        let finder = memchr::memmem::Finder::new(needle);
        self.0.iter().filter(|(_, b)| finder.find(b).is_some()).map(|(p, _)| p.clone()).collect()
    }
}

/// Each region's files hold its own tenant's ids (text and 16-byte forms)
/// and name and none of the other's; the global directory's files hold no
/// name, message, or Pype, user or Session id.
fn each_region_holds_only_its_own(eu: &Scanned, us: &Scanned, global: &Scanned, a: &Tenant, b: &Tenant) {
    for (mine, theirs, t, region) in [(eu, us, a, "eu"), (us, eu, b, "us")] {
        for id in [&t.id, &t.pype, &t.user, &t.session] {
            let [text, raw] = forms(id);
            assert!(
                !mine.holding(&text).is_empty() || !mine.holding(&raw).is_empty(),
                "{id} is not in region {region}'s files: the scan finds nothing"
            );
            for form in [&text, &raw] {
                let found = theirs.holding(form);
                assert!(found.is_empty(), "{region}'s {id} in the other region's files: {found:?}");
            }
        }
        assert!(!mine.holding(t.name.as_bytes()).is_empty(), "tenant name {} not in {region}", t.name);
        assert!(theirs.holding(t.name.as_bytes()).is_empty(), "tenant name {} outside {region}", t.name);
        for canary in [&t.name, &t.body] {
            assert!(global.holding(canary.as_bytes()).is_empty(), "{canary} in the global directory");
        }
        for id in [&t.pype, &t.user, &t.session] {
            for form in forms(id) {
                assert!(global.holding(&form).is_empty(), "{id} in the global directory");
            }
        }
    }
}

fn replay(data: &Path, tenant: &str, session: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["replay", "--data-dir"])
        .arg(data)
        .args(["--stream", &format!("session-{tenant}-{session}")])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_region_holds_only_its_tenants_and_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (eu, us, global) = (dir.path().join("eu"), dir.path().join("us"), dir.path().join("global"));
    let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let eu_node = start_with(&eu, &[("PYPES_CONFIG", config(dir.path(), "eu", &eu, &us, &global).to_str().unwrap())]);
    let us_node = start_with(&us, &[("PYPES_CONFIG", config(dir.path(), "us", &eu, &us, &global).to_str().unwrap())]);
    let mut to_eu = clients(&eu_node.grpc).await;
    let mut to_us = clients(&us_node.grpc).await;

    let a = tenant_with_content(&mut to_eu, "eu", &tag).await;
    let b = tenant_with_content(&mut to_us, "us", &tag).await;
    // An empty region is the node's own.
    let own = to_us
        .tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Default".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.tenant.unwrap().region, "us");

    // The wrong node: refused, naming the region, before anything is read.
    let wrong = to_eu.pypes.get_pype(authed(&b.key, pb::GetPypeRequest { pype_id: b.pype.clone() })).await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");
    assert!(wrong.message().contains("region us"), "{wrong:?}");
    assert_eq!(wrong.metadata().get("pypes-region").unwrap(), "us");
    let wrong = to_us
        .sessions
        .post_message(authed(
            &a.key,
            pb::PostMessageRequest {
                session_id: a.session.clone(),
                sender_id: a.user.clone(),
                body: "from the wrong side".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.metadata().get("pypes-region").unwrap(), "eu", "{wrong:?}");
    let wrong =
        to_us.tenants.get_tenant(authed(ADMIN, pb::GetTenantRequest { tenant_id: a.id.clone() })).await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    // A tenant is created by a node of its region; an unknown region is named.
    let e = to_eu
        .tenants
        .create_tenant(authed(
            ADMIN,
            pb::CreateTenantRequest { name: "X".into(), region: "us".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.metadata().get("pypes-region").unwrap().to_str().unwrap()),
        (Code::FailedPrecondition, "us")
    );
    let e = to_eu
        .tenants
        .create_tenant(authed(
            ADMIN,
            pb::CreateTenantRequest { name: "X".into(), region: "mars".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("eu, us"), "{e:?}");
    // Each node still serves its own.
    to_eu.pypes.get_pype(authed(&a.key, pb::GetPypeRequest { pype_id: a.pype.clone() })).await.unwrap();
    to_us.pypes.get_pype(authed(&b.key, pb::GetPypeRequest { pype_id: b.pype.clone() })).await.unwrap();

    common::stop_cleanly(eu_node);
    common::stop_cleanly(us_node);

    // The byte scan.
    let global_files = files_under(&global);
    let scanned = |dir: &Path| Scanned::read(files_under(dir));
    each_region_holds_only_its_own(&scanned(&eu), &scanned(&us), &Scanned::read(global_files.clone()), &a, &b);
    // The global directory: a file per tenant, named by its id, holding its region.
    let mut placed: Vec<(String, String)> = global_files
        .iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read_to_string(p).unwrap()))
        .collect();
    placed.sort();
    assert_eq!(placed.len(), 3, "{placed:?}");
    assert!(placed.contains(&(a.id.clone(), "eu\n".into())) && placed.contains(&(b.id.clone(), "us\n".into())));

    // Opened with each region's keys: its own content, none of the other's.
    let (ok, text) = replay(&eu, &a.id, &a.session);
    assert!(ok && text.contains(&a.body), "{text}");
    let (ok, text) = replay(&us, &b.id, &b.session);
    assert!(ok && text.contains(&b.body), "{text}");
    let (ok, text) = replay(&eu, &b.id, &b.session);
    assert!(!ok || !text.contains(&b.body), "{text}");
    let (ok, text) = replay(&us, &a.id, &a.session);
    assert!(!ok || !text.contains(&a.body), "{text}");
}

/// A bad `[regions]` is refused at start, naming what is wrong.
#[test]
fn a_bad_regions_config_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        ("[regions]\ndirectory = \"/tmp/g\"\n[regions.eu]\ndata_dir = \"DATA\"\n", "regions.serve"),
        ("[regions]\nserve = \"eu\"\n[regions.eu]\ndata_dir = \"DATA\"\n", "regions.directory"),
        (
            "[regions]\nserve = \"eu\"\ndirectory = \"/tmp/g\"\ndirectory_url = \"host=db\"\n[regions.eu]\ndata_dir = \"DATA\"\n",
            "give one global tenant directory",
        ),
        ("[regions]\nserve = \"us\"\ndirectory = \"/tmp/g\"\n[regions.eu]\ndata_dir = \"DATA\"\n", "no [regions.us]"),
        (
            "[regions]\nserve = \"eu\"\ndirectory = \"/tmp/g\"\n[regions.eu]\ndata_dir = \"/elsewhere\"\n",
            "not region eu's",
        ),
        (
            "[regions]\nserve = \"eu\"\ndirectory = \"/tmp/g\"\n[regions.eu]\ndata_dir = \"DATA\"\nurl = \"x\"\n",
            "regions.eu.url",
        ),
        ("[regions]\nserve = \"EU\"\ndirectory = \"/tmp/g\"\n[regions.EU]\ndata_dir = \"DATA\"\n", "lower-case"),
    ];
    for (text, needle) in cases {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text.replace("DATA", data.to_str().unwrap())).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args([
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--admin-key",
                ADMIN,
                "--data-dir",
            ])
            .arg(&data)
            .env("PYPES_CONFIG", &cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{text}: {err}");
    }
}

fn pypes_move(eu: &common::Server, us: &common::Server, tenant: &str, out: &Path) -> (bool, String) {
    let run = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["tenant", "move", "--tenant", tenant, "--to", "us", "--server", &eu.grpc, "--to-server", &us.grpc])
        .arg("--out")
        .arg(out)
        .arg("--json")
        .env("PYPES_ADMIN_KEY", ADMIN)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (run.status.success(), format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr)))
}

async fn exited(server: &mut common::Server) -> bool {
    for _ in 0..1000 {
        if server.child.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Moving a tenant from eu to us, with the new region's node killed
/// halfway through the copy and the old region's right after the switch:
/// each time the same command, run again, goes on. Afterwards the tenant
/// is served by us with its messages, media and erasures as they were,
/// and no file of eu holds its name, a message or a device; eu's keys of
/// it are destroyed, and the certificate verifies with eu's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_to_another_region_through_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let (eu, us, global) = (dir.path().join("eu"), dir.path().join("us"), dir.path().join("global"));
    let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let (eu_config, us_config) =
        (config(dir.path(), "eu", &eu, &us, &global), config(dir.path(), "us", &eu, &us, &global));
    let eu_env = |crash: &str| -> Vec<(String, String)> {
        let mut v = vec![("PYPES_CONFIG".to_string(), eu_config.display().to_string())];
        if !crash.is_empty() {
            v.push(("PYPES_CRASH_AT".into(), crash.into()));
        }
        v
    };
    let us_env = |crash: &str| -> Vec<(String, String)> {
        let mut v = vec![("PYPES_CONFIG".to_string(), us_config.display().to_string())];
        if !crash.is_empty() {
            v.push(("PYPES_CRASH_AT".into(), crash.into()));
        }
        v
    };
    let as_refs = |v: &[(String, String)]| -> Vec<(String, String)> { v.to_vec() };
    let start = |data: &Path, env: Vec<(String, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_with(data, &env)
    };
    let mut eu_node = start(&eu, as_refs(&eu_env("move:switched")));
    let mut us_node = start(&us, as_refs(&us_env("move:events:1")));
    let mut to_eu = clients(&eu_node.grpc).await;

    // The tenant in eu: a message with a device, 300 more (more than one
    // part of events), a picture, and an end user erased before the move.
    let a = tenant_with_content(&mut to_eu, "eu", &tag).await;
    for i in 0..300 {
        let post = pb::PostMessageRequest {
            session_id: a.session.clone(),
            sender_id: a.user.clone(),
            body: format!("message {i}"),
            ..Default::default()
        };
        to_eu.sessions.post_message(authed(&a.key, post)).await.unwrap();
    }
    let picture: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let eu_channel = tonic::transport::Channel::from_shared(eu_node.grpc.clone()).unwrap().connect().await.unwrap();
    let media = common::upload(
        &eu_channel,
        &a.key,
        None,
        common::upload_messages(&a.session, &a.user, "image/png", &picture, 64 * 1024),
    )
    .await
    .unwrap();
    let (gone, gone_session) = common::end_user_with_session(&mut to_eu, &a.key, &a.pype, &format!("gone{tag}")).await;
    let gone_body = format!("erased before the move {tag}");
    let post = pb::PostMessageRequest {
        session_id: gone_session.clone(),
        sender_id: gone.clone(),
        body: gone_body.clone(),
        ..Default::default()
    };
    to_eu.sessions.post_message(authed(&a.key, post)).await.unwrap();
    to_eu
        .erasure
        .request_erasure(authed(&a.key, pb::RequestErasureRequest { subject_id: gone.clone(), ..Default::default() }))
        .await
        .unwrap();
    let mut certified = false;
    for _ in 0..600 {
        let s = to_eu
            .erasure
            .get_erasure(authed(&a.key, pb::GetErasureRequest { subject_id: gone.clone(), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        if !s.certificate.is_empty() {
            certified = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(certified, "the erasure before the move did not finish");

    // Before the move, eu's files hold the tenant's clear names (the scan below finds what is there).
    let pype_name = format!("Desk {tag}");
    let before = Scanned::read(files_under(&eu));
    for canary in [&a.name, &pype_name] {
        assert!(!before.holding(canary.as_bytes()).is_empty(), "{canary} not in eu before the move");
    }

    let cert = dir.path().join("move.json");
    // 1. The new region's node dies after the first part of events.
    let (ok, text) = pypes_move(&eu_node, &us_node, &a.id, &cert);
    assert!(!ok, "the move went through a killed node: {text}");
    assert!(exited(&mut us_node).await, "us did not stop at move:events:1");
    assert!(text.contains("new region"), "{text}");
    // Frozen: eu answers UNAVAILABLE (retry), us sends callers to eu.
    let frozen =
        to_eu.pypes.get_pype(authed(&a.key, pb::GetPypeRequest { pype_id: a.pype.clone() })).await.unwrap_err();
    assert_eq!(frozen.code(), Code::Unavailable, "{frozen:?}");
    assert!(frozen.message().contains("moving"), "{frozen:?}");
    let placement = global.join("tenants").join(&a.id);
    assert_eq!(std::fs::read_to_string(&placement).unwrap(), "eu>us\n");

    // 2. Again: the copy goes on; the old region's node dies right after the switch.
    us_node = start(&us, as_refs(&us_env("")));
    let (ok, text) = pypes_move(&eu_node, &us_node, &a.id, &cert);
    assert!(!ok, "{text}");
    assert!(exited(&mut eu_node).await, "eu did not stop at move:switched");
    assert_eq!(std::fs::read_to_string(&placement).unwrap(), "us\n", "the switch is durable before the shred");

    // 3. Again: eu finishes the shred and issues the certificate.
    eu_node = start(&eu, as_refs(&eu_env("")));
    let (ok, text) = pypes_move(&eu_node, &us_node, &a.id, &cert);
    assert!(ok, "{text}");
    let record: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(record["region"], "us", "{record}");
    assert!(record["events"].as_u64().unwrap() > 300, "{record}");
    assert_eq!(record["blobs"], 1, "{record}");
    let certificate = std::fs::read_to_string(&cert).unwrap();
    let signature = std::fs::read_to_string(format!("{}.sig", cert.display())).unwrap();
    let eu_public = std::fs::read_to_string(eu.join("log").join("signing.pub")).unwrap();
    app::certificate::verify(certificate.trim_end_matches('\n'), &signature, &eu_public).unwrap();
    let c: serde_json::Value = serde_json::from_str(&certificate).unwrap();
    assert_eq!(
        (c["format"].as_str(), c["from_region"].as_str(), c["to_region"].as_str()),
        (Some("pypes-tenant-move-certificate/v1"), Some("eu"), Some("us"))
    );
    assert!(!c["destroyed_key_fingerprints"].as_array().unwrap().is_empty(), "{c}");
    // A third run: the same certificate, nothing done twice.
    let (ok, again) = pypes_move(&eu_node, &us_node, &a.id, &cert);
    assert!(ok, "{again}");
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), certificate);

    // us serves the tenant: its messages, its picture, its erasure as they were.
    let mut to_us = clients(&us_node.grpc).await;
    let listed = to_us
        .views
        .list_messages(authed(
            &a.key,
            pb::ListMessagesRequest { session_id: a.session.clone(), page_size: 500, ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.messages.iter().any(|m| m.body == a.body), "the first message did not move");
    assert!(listed.messages.iter().any(|m| m.body == "message 299"), "the last message did not move");
    let us_channel = tonic::transport::Channel::from_shared(us_node.grpc.clone()).unwrap().connect().await.unwrap();
    let (_, bytes) = common::download(
        &us_channel,
        &a.key,
        None,
        pb::DownloadMediaRequest {
            session_id: a.session.clone(),
            media_id: media.media_id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(bytes, picture, "the picture did not move intact");
    let erased = to_us
        .views
        .list_messages(authed(
            &a.key,
            pb::ListMessagesRequest { session_id: gone_session.clone(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(erased.messages.iter().all(|m| m.body != gone_body), "an erased message opened in the new region");
    let post = pb::PostMessageRequest {
        session_id: a.session.clone(),
        sender_id: a.user.clone(),
        body: "after the move".into(),
        ..Default::default()
    };
    to_us.sessions.post_message(authed(&a.key, post)).await.unwrap();
    // eu sends callers on.
    let mut to_eu = clients(&eu_node.grpc).await;
    let moved = to_eu.pypes.get_pype(authed(&a.key, pb::GetPypeRequest { pype_id: a.pype.clone() })).await.unwrap_err();
    assert_eq!(
        (moved.code(), moved.metadata().get("pypes-region").unwrap().to_str().unwrap()),
        (Code::FailedPrecondition, "us")
    );

    common::stop_cleanly(eu_node);
    common::stop_cleanly(us_node);
    // No file of eu holds the tenant's name, a message, a device or the Pype's name.
    let eu_files = Scanned::read(files_under(&eu));
    let device = format!("device eu {tag}");
    for canary in [&a.name, &a.body, &device, &pype_name, &"message 150".to_string()] {
        let found = eu_files.holding(canary.as_bytes());
        assert!(found.is_empty(), "{canary:?} is still in eu after the move: {found:?}");
    }
    let (_, text) = replay(&eu, &a.id, &a.session);
    assert!(!text.contains(&a.body), "eu's log still opens the tenant's messages: {text}");
    // us holds it, and opens it with its own keys.
    let (ok, text) = replay(&us, &a.id, &a.session);
    assert!(ok && text.contains(&a.body) && text.contains("after the move"), "{text}");
}

/// Two regions on two throw-away PostgreSQL clusters (each region's event
/// log and key store in its own cluster) and the global directory in a
/// database of a third: tenants with canaries in each region; a byte scan
/// of each cluster's files (heap and WAL) finds its own tenants' names and
/// ids and none of the other region's; the directory's database holds
/// tenant ids and region names and no name or other id; the wrong node
/// refuses with the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_on_two_postgresql_clusters_hold_only_their_own() {
    let Some(eu_pg) = pgtest::Cluster::start() else { return };
    let Some(us_pg) = pgtest::Cluster::start() else { return };
    let Some(global_pg) = pgtest::Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (eu, us) = (dir.path().join("eu"), dir.path().join("us"));
    let directory_url = global_pg.fresh_database();
    let config = |serve: &str| {
        let path = dir.path().join(format!("{serve}-pg.toml"));
        std::fs::write(
            &path,
            format!(
                "[regions]\nserve = \"{serve}\"\ndirectory_url = \"{directory_url}\"\n[regions.eu]\ndata_dir = \"{}\"\n\
                 [regions.us]\ndata_dir = \"{}\"\n",
                eu.display(),
                us.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let (eu_config, us_config, eu_db, us_db) =
        (config("eu"), config("us"), eu_pg.fresh_database(), us_pg.fresh_database());
    let eu_node =
        start_with(&eu, &[("PYPES_CONFIG", &eu_config), ("PYPES_LOG_BACKEND", "postgres"), ("PYPES_LOG_URL", &eu_db)]);
    let us_node =
        start_with(&us, &[("PYPES_CONFIG", &us_config), ("PYPES_LOG_BACKEND", "postgres"), ("PYPES_LOG_URL", &us_db)]);
    let (mut to_eu, mut to_us) = (clients(&eu_node.grpc).await, clients(&us_node.grpc).await);
    let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let a = tenant_with_content(&mut to_eu, "eu", &tag).await;
    let b = tenant_with_content(&mut to_us, "us", &tag).await;
    // The other region's node learns of a tenant from the directory's
    // database (within its refresh) and refuses with the region.
    let mut refused = None;
    for _ in 0..100 {
        let e = to_us.pypes.get_pype(authed(&a.key, pb::GetPypeRequest { pype_id: a.pype.clone() })).await.unwrap_err();
        if e.metadata().get("pypes-region").is_some() {
            refused = Some(e);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = refused.expect("us never refused eu's tenant with the region");
    assert_eq!(
        (e.code(), e.metadata().get("pypes-region").unwrap().to_str().unwrap()),
        (Code::FailedPrecondition, "eu")
    );
    let e = to_eu
        .tenants
        .create_tenant(authed(
            ADMIN,
            pb::CreateTenantRequest { name: "X".into(), region: "us".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.metadata().get("pypes-region").unwrap(), "us");
    // The directory's row for each tenant: its id and region, nothing else.
    let rows = global_pg.psql(
        &directory_url,
        "SELECT tenant || ':' || region || ':' || coalesce(moving_to, '') FROM pypes_tenant_directory ORDER BY 1",
    );
    assert_eq!(rows.lines().count(), 2, "{rows}");
    assert!(rows.contains(&format!("{}:eu:", a.id)) && rows.contains(&format!("{}:us:", b.id)), "{rows}");
    // The directory's connections cut (a database restart, a network
    // blip): each is made again at its next use.
    let cut = global_pg.psql(
        &directory_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    );
    assert!(cut.parse::<u32>().unwrap() >= 4, "the nodes' directory connections: {cut}");
    let c = tenant_with_content(&mut to_eu, "eu", &format!("{tag}c")).await;
    let e = to_us.pypes.get_pype(authed(&c.key, pb::GetPypeRequest { pype_id: c.pype.clone() })).await.unwrap_err();
    assert_eq!(e.metadata().get("pypes-region").map(|v| v.to_str().unwrap()), Some("eu"), "{e:?}");
    common::stop_cleanly(eu_node);
    common::stop_cleanly(us_node);
    for pg in [&eu_pg, &us_pg, &global_pg] {
        pg.psql(&pg.url("postgres"), "CHECKPOINT");
    }

    let eu_files = Scanned::read([files_under(&eu_pg.data_dir()), files_under(&eu)].concat());
    let us_files = Scanned::read([files_under(&us_pg.data_dir()), files_under(&us)].concat());
    let global_files = Scanned::read(files_under(&global_pg.data_dir()));
    each_region_holds_only_its_own(&eu_files, &us_files, &global_files, &a, &b);
}
