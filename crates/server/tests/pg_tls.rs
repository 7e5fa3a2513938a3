//! The server on PostgreSQL over TLS (`sslmode=require`): every connection
//! it opens (event log, key store, SQL read models) is encrypted and the
//! database's certificate verified; a database whose certificate the
//! configured CA did not sign stops the start with a message naming it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use proto::api as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_talks_to_postgres_over_verified_tls_only() {
    let pki = pgtest::pki(&["127.0.0.1"]);
    let Some(pg) = pgtest::Cluster::start_with_tls(&pki.cert_pem, &pki.key_pem) else { return };
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("db-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let tls = format!(" sslmode=verify-full sslrootcert={}", ca.display());
    let (log, sql) = (pg.fresh_database() + &tls, pg.fresh_database() + &tls);
    let env = [("PYPES_LOG_BACKEND", "postgres"), ("PYPES_LOG_URL", log.as_str()), ("PYPES_SQL_URL", sql.as_str())];

    let data = tempfile::tempdir().unwrap();
    let server = start_with(data.path(), &env);
    let mut c = clients(&server.grpc).await;
    let s = setup(&mut c, "tina").await;
    let post = pb::PostMessageRequest {
        session_id: s.session.clone(),
        sender_id: s.user.clone(),
        body: "over tls".into(),
        ..Default::default()
    };
    c.sessions.post_message(authed(&s.key, post)).await.unwrap();
    // The SQL feeder has its connection open once it counted the message.
    let admin = pg.url("postgres");
    for _ in 0..200 {
        let counted = pg.psql(&sql.replace(&tls, ""), "SELECT coalesce(sum(messages), 0) FROM pypes_sql_sessions");
        if counted == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sessions = |ssl: bool| {
        pg.psql(
            &admin,
            &format!(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.usename = 'pypes' AND a.datname <> 'postgres' AND s.ssl = {ssl}"
            ),
        )
    };
    let (secure, clear) = (sessions(true), sessions(false));
    // Four for the log, one for the key store, one for the SQL read models.
    assert!(secure.parse::<u32>().unwrap() >= 6, "{secure} TLS sessions, {clear} in the clear");
    assert_eq!(clear, "0", "a connection of the server in the clear");
    drop(server);

    // A CA that did not sign the database's certificate: no start, and why.
    let other = pgtest::pki(&["127.0.0.1"]);
    let wrong = files.path().join("other-ca.pem");
    std::fs::write(&wrong, &other.ca_pem).unwrap();
    let url = pg.fresh_database() + &format!(" sslmode=require sslrootcert={}", wrong.display());
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-key", ADMIN, "--data-dir"])
        .arg(data.path())
        .env("PYPES_LOG_BACKEND", "postgres")
        .env("PYPES_LOG_URL", &url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started against a database it cannot verify: {stderr}");
    assert!(stderr.contains("certificate") && stderr.contains("127.0.0.1"), "{stderr}");
}
