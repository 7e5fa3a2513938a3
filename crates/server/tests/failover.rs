//! PostgreSQL failover under load (issue: reliability under faults).
//!
//! A primary and a streaming-replication standby (two throw-away clusters)
//! with synchronous replication, so a commit is acknowledged only once
//! the standby has flushed it. Two pypes nodes keep their event log, key
//! store (with the provider's epochs) and SQL read models there, through
//! multi-host URLs with `target_session_attrs=read-write`. Several clients
//! post through both nodes; mid-load the primary is stopped hard, and a
//! moment later the standby is promoted. Expected and checked:
//!
//! - while no database takes writes, both nodes say so on `/readyz` (503,
//!   naming the unreachable database) and every failed call is
//!   `UNAVAILABLE` with the `grpc-retry-pushback-ms` hint, none hangs;
//! - the nodes reconnect to the promoted standby by themselves (ready
//!   again; posts succeed again on every client);
//! - every acknowledged message is there exactly once, in the order it
//!   was acknowledged, with the number it was acknowledged with; a message
//!   whose call failed is there at most once (its COMMIT may have reached
//!   the standby before the primary died);
//! - the key store followed (old content opens; new Sessions and end
//!   users get keys on the new primary), and so did the SQL read models.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use proto::api as pb;
use tonic::Code;

const WRITERS: usize = 8;

/// `url` (one host) with `host` and `port` naming both servers, the
/// writable one chosen at each connection.
fn both(url: &str, primary: u16, standby: u16) -> String {
    let db = url.split_whitespace().find_map(|w| w.strip_prefix("dbname=")).expect("dbname in the url");
    format!(
        "host=127.0.0.1,127.0.0.1 port={primary},{standby} user=pypes dbname={db} \
         target_session_attrs=read-write connect_timeout=2"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_a_failover_to_a_synchronous_standby() {
    let Some(mut primary) = pgtest::Cluster::start() else { return };
    // Every database exists before the base backup, so the standby has them.
    let (log, epochs, sql) = (primary.fresh_database(), primary.fresh_database(), primary.fresh_database());
    let standby = tokio::task::block_in_place(|| {
        let standby = primary.start_standby("standby1");
        primary.require_sync_standby("standby1");
        standby
    });
    let (p, s) = (primary.port(), standby.port());
    let (log_url, epochs_url, sql_url) = (both(&log, p, s), both(&epochs, p, s), both(&sql, p, s));
    let (root, signing) = ("7e".repeat(32), "5a".repeat(32));
    let env = [
        ("PYPES_LOG_BACKEND", "postgres"),
        ("PYPES_LOG_URL", log_url.as_str()),
        ("PYPES_KEYS_PROVIDER_URL", epochs_url.as_str()),
        ("PYPES_ROOT_KEY", root.as_str()),
        ("PYPES_LOG_SIGNING_KEY", signing.as_str()),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut first_env = env.to_vec();
    first_env.push(("PYPES_SQL_URL", sql_url.as_str()));
    let servers = [start_with(dirs[0].path(), &first_env), start_with(dirs[1].path(), &env)];
    let mut nodes = Vec::new();
    for server in &servers {
        nodes.push(clients(&server.grpc).await);
    }
    let first = setup(&mut nodes[0], "first").await;
    let key = first.key.clone();
    let (mut sessions, mut senders) = (vec![first.session.clone()], vec![first.user.clone()]);
    for i in 1..WRITERS {
        let (user, session) = end_user_with_session(&mut nodes[i % 2], &key, &first.pype, &format!("user{i}")).await;
        sessions.push(session);
        senders.push(user);
    }

    // The load: writer w posts to Session w through node w % 2, one call
    // at a time, a new body each time (a failed call is not retried: its
    // outcome is unknown, and the check below allows for that).
    let stop = Arc::new(AtomicBool::new(false));
    let promoted = Arc::new(AtomicBool::new(false));
    let back = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (w, session) in sessions.iter().enumerate() {
        let writer = ledger::Writer {
            name: format!("w{w}"),
            client: nodes[w % 2].sessions.clone(),
            key: key.clone(),
            session: session.clone(),
            sender: senders[w].clone(),
            stop: stop.clone(),
            after: promoted.clone(),
            acks: None,
            back: back.clone(),
        };
        tasks.push(tokio::spawn(writer.run()));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| primary.stop_hard());
    // No database takes writes: both nodes say so, by themselves.
    for server in &servers {
        let text = wait_readyz(&server.http, 503, Duration::from_secs(15)).await;
        assert!(text.contains("unreachable"), "{text}");
    }
    let not_ready_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let promoted_at = Instant::now();
    tokio::task::block_in_place(|| standby.promote());
    let promotion_took = promoted_at.elapsed();
    promoted.store(true, Ordering::Relaxed);
    for server in &servers {
        wait_readyz(&server.http, 200, Duration::from_secs(30)).await;
    }
    let ready_again_after = promoted_at.elapsed();
    // Every writer gets a post through on the new primary, then a little
    // more load, then stop.
    ledger::wait_all_back(&back, tasks.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    let acked: usize = seen.iter().map(|s| s.acked.len()).sum();
    let failed: usize = seen.iter().map(|s| s.failed.len()).sum();
    eprintln!(
        "failover: {acked} posts acknowledged, {failed} failed; not ready {not_ready_after:?} after the primary \
         stopped; the promotion took {promotion_took:?}, both nodes ready {ready_again_after:?} after it began; \
         codes {:?}",
        seen.iter().flat_map(|s| s.codes.iter()).collect::<Vec<_>>()
    );
    for (w, s) in seen.iter().enumerate() {
        for code in s.codes.keys() {
            assert_eq!(*code, Code::Unavailable, "writer {w}: a failed post must be UNAVAILABLE: {:?}", s.codes);
        }
        assert_eq!(s.without_hint, 0, "writer {w}: an UNAVAILABLE answer without grpc-retry-pushback-ms");
        assert!(s.acked_after > 0, "writer {w}: no post went through after the promotion");
    }
    assert!(failed > 0, "the primary stopped under load, yet no post failed: the test did not test a failover");

    // Every acknowledged message exactly once, in order, with its number.
    let channel = tonic::transport::Channel::from_shared(servers[1].grpc.clone()).unwrap().connect().await.unwrap();
    for (w, s) in seen.iter().enumerate() {
        let messages = all_messages(&channel, &key, &sessions[w]).await;
        ledger::check_session(&format!("writer {w}"), &messages, &[s]);
    }

    // The key store followed: new keys (an end user, a Session) on the new primary.
    let (user, session) = end_user_with_session(&mut nodes[1], &key, &first.pype, "after-failover").await;
    let request = pb::PostMessageRequest {
        session_id: session.clone(),
        sender_id: user,
        body: "after the failover".into(),
        ..Default::default()
    };
    nodes[0].sessions.post_message(authed(&key, request)).await.unwrap();
    let after = all_messages(&channel, &key, &session).await;
    assert_eq!(after.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["after the failover"]);

    // The SQL read models followed (node 0 feeds them on the new primary).
    let total: usize = {
        let mut n = after.len();
        for s in &sessions {
            n += all_messages(&channel, &key, s).await.len();
        }
        n
    };
    let sql_on_standby = standby.url(sql.split_whitespace().find_map(|w| w.strip_prefix("dbname=")).unwrap());
    let started = Instant::now();
    loop {
        let rows: usize =
            tokio::task::block_in_place(|| standby.psql(&sql_on_standby, "SELECT count(*) FROM pypes_sql_messages"))
                .parse()
                .unwrap();
        if rows == total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "SQL read models hold {rows} messages, the log {total}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(servers);
}
