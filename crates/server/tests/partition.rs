//! A network partition between a pypes node and its PostgreSQL, under load
//! (issue: reliability under faults).
//!
//! Node A runs in a network namespace of its own with two links to the
//! host (veth pairs): one the clients use, one to PostgreSQL. Node B runs
//! on the host. Both write the same Sessions at once (each Session has a
//! writer through A and one through B). Mid-load A's link to the database
//! is cut (the veth taken down: packets vanish, nothing answers, as in a
//! real partition), B carries on alone, and the link is restored.
//! Expected and checked:
//!
//! - A notices by itself: `/readyz` 503 naming the unreachable database,
//!   its calls fail with `UNAVAILABLE` and the retry hint, none hangs;
//! - B keeps acknowledging posts to the same Sessions meanwhile;
//! - once the link is back, A is ready again within seconds and its posts
//!   go through;
//! - no split brain: every Session's numbers are dense, every
//!   acknowledged message is there once at the number it was acknowledged
//!   with (A's actors, stale after the cut, lose the expected-version check
//!   and fold in B's writes instead of overwriting them), every failed one
//!   at most once.
//!
//! Two pypes nodes share nothing but the database (no node-to-node
//! traffic), so the partition that matters is a node's to PostgreSQL; a
//! cut between the nodes themselves changes nothing they do.
//!
//! Needs root (network namespaces; CI runs as root): elsewhere SKIPPED,
//! unless `PYPES_REQUIRE_ROOT=1`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

const SESSIONS: usize = 4;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A network namespace with two veth links to the host: `c` for clients,
/// `d` for the database. Deleted (with its links) on drop.
struct Netns {
    name: String,
    /// The host end of the database link (taken down to cut it).
    db_link: String,
    /// The namespace's address on the client link.
    client_addr: String,
    /// The host's address on the database link.
    db_host: String,
}

impl Netns {
    fn create() -> Netns {
        let n = std::process::id() % 250 + 1;
        let name = format!("pypes-part-{n}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            db_link: format!("ppd{n}h"),
            client_addr: format!("10.201.{n}.2"),
            db_host: format!("10.202.{n}.1"),
        };
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for (kind, net) in [("c", 201), ("d", 202)] {
            let (host, inside) = (format!("pp{kind}{n}h"), format!("pp{kind}{n}n"));
            let _ = Command::new("ip").args(["link", "del", &host]).output();
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &name]);
            ip(&["addr", "add", &format!("10.{net}.{n}.1/30"), "dev", &host]);
            ip(&["link", "set", &host, "up"]);
            ip(&["-n", &name, "addr", "add", &format!("10.{net}.{n}.2/30"), "dev", &inside]);
            ip(&["-n", &name, "link", "set", &inside, "up"]);
        }
        ns
    }

    fn cut(&self) {
        ip(&["link", "set", &self.db_link, "down"]);
    }

    fn restore(&self) {
        ip(&["link", "set", &self.db_link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        for kind in ["c", "d"] {
            let host = self.db_link.replace("ppd", &format!("pp{kind}"));
            let _ = Command::new("ip").args(["link", "del", &host]).output();
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_its_database_recovers_without_split_brain() {
    if !is_root() {
        assert!(std::env::var_os("PYPES_REQUIRE_ROOT").is_none(), "PYPES_REQUIRE_ROOT is set but this is not root");
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let Some(pg) = pgtest::Cluster::start_reachable_from("10.202.0.0/16") else { return };
    let url = pg.fresh_database();
    let ns = Netns::create();
    let url_in_ns = url.replace("host=127.0.0.1", &format!("host={}", ns.db_host));
    let (root, signing) = ("7e".repeat(32), "5a".repeat(32));
    let env = |log_url: &str| {
        vec![
            ("PYPES_LOG_BACKEND".to_string(), "postgres".to_string()),
            ("PYPES_LOG_URL".into(), log_url.to_string()),
            ("PYPES_ROOT_KEY".into(), root.clone()),
            ("PYPES_LOG_SIGNING_KEY".into(), signing.clone()),
        ]
    };
    let (env_a, env_b) = (env(&url_in_ns), env(&url));
    let pairs = |e: &[(String, String)]| e.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let b =
        start_with(dirs[1].path(), &pairs(&env_b).iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
    let a = start_in_netns(
        &ns.name,
        &ns.client_addr,
        dirs[0].path(),
        &pairs(&env_a).iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
    );
    let mut nodes = [clients(&a.grpc).await, clients(&b.grpc).await];
    let first = setup(&mut nodes[1], "first").await;
    let key = first.key.clone();
    let (mut sessions, mut users) = (vec![first.session.clone()], vec![first.user.clone()]);
    for i in 1..SESSIONS {
        let (user, session) = end_user_with_session(&mut nodes[i % 2], &key, &first.pype, &format!("user{i}")).await;
        sessions.push(session);
        users.push(user);
    }

    // Writer w posts to Session w % SESSIONS through node w / SESSIONS
    // (0: A, 1: B): every Session is written from both nodes at once.
    let stop = Arc::new(AtomicBool::new(false));
    let restored = Arc::new(AtomicBool::new(false));
    let b_acks = Arc::new(AtomicUsize::new(0));
    let back = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..2 * SESSIONS {
        let (node, s) = (w / SESSIONS, w % SESSIONS);
        let writer = ledger::Writer {
            name: format!("w{w}"),
            client: nodes[node].sessions.clone(),
            key: key.clone(),
            session: sessions[s].clone(),
            sender: users[s].clone(),
            stop: stop.clone(),
            after: restored.clone(),
            acks: (node == 1).then(|| b_acks.clone()),
            back: back.clone(),
        };
        tasks.push(tokio::spawn(writer.run()));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = Instant::now();
    ns.cut();
    let text = wait_readyz(&a.http, 503, Duration::from_secs(30)).await;
    assert!(text.contains("unreachable"), "{text}");
    let noticed_after = cut_at.elapsed();
    let b_before = b_acks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b_during = b_acks.load(Ordering::Relaxed) - b_before;
    assert!(b_during > 0, "node B stopped acknowledging while A was cut off");
    assert_eq!(readyz(&b.http).await.0, 200, "node B is ready throughout");
    let restore_at = Instant::now();
    ns.restore();
    wait_readyz(&a.http, 200, Duration::from_secs(30)).await;
    let ready_after = restore_at.elapsed();
    restored.store(true, Ordering::Relaxed);
    // Every writer, on both nodes, gets a post through again (a call that
    // was under way when the link returned may first have to fail).
    let all_back_after = ledger::wait_all_back(&back, 2 * SESSIONS, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    let acked: usize = seen.iter().map(|s| s.acked.len()).sum();
    let failed: usize = seen.iter().map(|s| s.failed.len()).sum();
    eprintln!(
        "partition: {acked} posts acknowledged, {failed} failed; A not ready {noticed_after:?} after the cut; \
         B acknowledged {b_during} posts in 3 s while A was cut off; A ready {ready_after:?} after the link \
         returned; every writer through again {all_back_after:?} later; codes {:?}",
        seen.iter().flat_map(|s| s.codes.iter()).collect::<Vec<_>>()
    );
    for (w, s) in seen.iter().enumerate() {
        for code in s.codes.keys() {
            // Contention between the nodes beyond the retries is ABORTED.
            assert!(matches!(code, Code::Unavailable | Code::Aborted), "writer {w}: {:?}", s.codes);
        }
        assert_eq!(s.without_hint, 0, "writer {w}: UNAVAILABLE without grpc-retry-pushback-ms");
        assert!(s.acked_after > 0, "writer {w}: nothing acknowledged after the link returned");
    }
    assert!(seen[..SESSIONS].iter().any(|s| s.codes.contains_key(&Code::Unavailable)), "A's writers never failed");

    let channel = tonic::transport::Channel::from_shared(b.grpc.clone()).unwrap().connect().await.unwrap();
    for (s, session) in sessions.iter().enumerate() {
        let messages = all_messages(&channel, &key, session).await;
        ledger::check_session(&format!("Session {s}"), &messages, &[&seen[s], &seen[s + SESSIONS]]);
    }
    drop((a, b, ns));
}
