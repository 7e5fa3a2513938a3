//! Three pypes servers on loopback sharing one PostgreSQL event log and key
//! store (a throw-away cluster). A mixed load goes to random nodes, so the
//! same Session is written from several nodes at once; the stream's
//! expected-version check is what keeps it consistent, not a lock of ours.
//! Afterwards: no acknowledged message is lost or doubled, every node
//! shows every Session's history the same, and the log holds each event
//! once with dense versions.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use proto::api as pb;
use tonic::Code;

const NODES: usize = 3;
const SESSIONS: usize = 6;
const WRITERS: usize = 9;
const POSTS_PER_WRITER: usize = 40;

/// A tiny deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn all_messages(c: &mut Clients, key: &str, session: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = c
            .views
            .list_messages(authed(
                key,
                pb::ListMessagesRequest { session_id: session.into(), after_seq: after, page_size: 50 },
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.messages.into_iter().map(|m| (m.seq, m.body)));
        if page.next_after_seq == 0 {
            return out;
        }
        after = page.next_after_seq;
    }
}

async fn login(c: &mut Clients, key: &str, username: &str, password: &str) -> Result<String, tonic::Status> {
    let request = pb::LoginRequest { username: username.into(), password: password.into() };
    c.logins.login(authed(key, request)).await.map(|r| r.into_inner().token)
}

async fn introspect(c: &mut Clients, key: &str, token: &str) -> Result<pb::AuthSessionInfo, tonic::Status> {
    c.logins.introspect(authed(key, pb::IntrospectRequest { token: token.into() })).await.map(|r| r.into_inner())
}

async fn set_password(c: &mut Clients, key: &str, subject: &str, password: &str) {
    let request = pb::SetPasswordRequest { subject_id: subject.into(), password: password.into() };
    c.subjects.set_password(authed(key, request)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_one_postgres_log_and_key_store() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let (root, signing) = ("7e".repeat(32), "5a".repeat(32));
    // The provider's epochs in a database of their own (as in production:
    // one that is not backed up).
    let epochs = pg.fresh_database();
    let env = [
        ("PYPES_LOG_BACKEND", "postgres"),
        ("PYPES_LOG_URL", url.as_str()),
        ("PYPES_KEYS_PROVIDER_URL", epochs.as_str()),
        ("PYPES_ROOT_KEY", root.as_str()),
        ("PYPES_LOG_SIGNING_KEY", signing.as_str()),
    ];
    let dirs: Vec<tempfile::TempDir> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    // The first node sets the database up (and keeps the SQL read models
    // in a database of their own); the other two start together.
    let sql = pg.fresh_database();
    let mut first_env = env.to_vec();
    first_env.push(("PYPES_SQL_URL", sql.as_str()));
    let mut servers = vec![start_with(dirs[0].path(), &first_env)];
    let (d1, d2) = (dirs[1].path().to_path_buf(), dirs[2].path().to_path_buf());
    let (e1, e2) = (env.map(|(k, v)| (k, v.to_string())), env.map(|(k, v)| (k, v.to_string())));
    let start = |d: std::path::PathBuf, e: [(&'static str, String); 5]| {
        std::thread::spawn(move || {
            let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
            start_with(&d, &env)
        })
    };
    let (a, b) = (start(d1, e1), start(d2, e2));
    servers.push(a.join().unwrap());
    servers.push(b.join().unwrap());
    let mut nodes = Vec::new();
    for s in &servers {
        nodes.push(clients(&s.grpc).await);
    }

    let first = setup(&mut nodes[0], "first").await;
    let key = first.key.clone();
    // More Sessions, each started on another node, for the same end user.
    let mut sessions = vec![first.session.clone()];
    for i in 1..SESSIONS {
        let s = nodes[i % NODES]
            .sessions
            .start_session(authed(
                &key,
                pb::StartSessionRequest {
                    pype_id: first.pype.clone(),
                    end_user_id: first.user.clone(),
                    timers: None,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        sessions.push(s.session_id);
    }

    // The same username registered on two nodes at once: exactly one wins.
    let (mut n0, mut n1) = (nodes[0].subjects.clone(), nodes[1].subjects.clone());
    let register = |name: &str| pb::RegisterSubjectRequest {
        username: name.into(),
        email: "r@example.com".into(),
        attested_at_least_13: true,
        ..Default::default()
    };
    let (r0, r1) = tokio::join!(
        n0.register_subject(authed(&key, register("contested"))),
        n1.register_subject(authed(&key, register("contested")))
    );
    let codes = [r0.as_ref().err().map(|s| s.code()), r1.as_ref().err().map(|s| s.code())];
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1, "exactly one registration wins: {codes:?}");
    assert!(codes.contains(&Some(Code::AlreadyExists)), "{codes:?}");

    // The mixed load: messages to random Sessions through random nodes,
    // with registrations and reads in between.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut node_clients: Vec<_> =
            nodes.iter().map(|c| (c.sessions.clone(), c.subjects.clone(), c.views.clone())).collect();
        let (key, user, sessions) = (key.clone(), first.user.clone(), sessions.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
            let mut acked = Vec::new();
            let mut aborted = 0;
            for i in 0..POSTS_PER_WRITER {
                let (sessions_client, subjects_client, views_client) = &mut node_clients[rng.below(NODES)];
                match rng.below(10) {
                    0 => {
                        let name = format!("user-{w}-{i}");
                        subjects_client.register_subject(authed(&key, register(&name))).await.unwrap();
                    }
                    1 => {
                        let session = &sessions[rng.below(sessions.len())];
                        views_client
                            .list_messages(authed(
                                &key,
                                pb::ListMessagesRequest { session_id: session.clone(), after_seq: 0, page_size: 10 },
                            ))
                            .await
                            .unwrap();
                    }
                    _ => {
                        let session = sessions[rng.below(sessions.len())].clone();
                        let body = format!("w{w}-m{i}");
                        let request = pb::PostMessageRequest {
                            session_id: session.clone(),
                            sender_id: user.clone(),
                            body: body.clone(),
                            ..Default::default()
                        };
                        match sessions_client.post_message(authed(&key, request)).await {
                            Ok(r) => acked.push((session, body, r.into_inner().seq)),
                            // Contention beyond the retries is refused, never half done.
                            Err(s) if s.code() == Code::Aborted => aborted += 1,
                            Err(s) => panic!("post through a node failed: {s:?}"),
                        }
                    }
                }
            }
            (acked, aborted)
        }));
    }
    let mut acked = Vec::new();
    let mut aborted = 0;
    for t in tasks {
        let (a, n) = t.await.unwrap();
        acked.extend(a);
        aborted += n;
    }
    let elapsed = started.elapsed();
    let mut conflicts = 0;
    for s in &servers {
        conflicts += metric(&metrics_text(&s.http).await, "pypes_version_conflicts_total");
    }
    eprintln!(
        "{} messages acknowledged, {aborted} refused as contended, {conflicts} version conflicts retried, in {elapsed:?}",
        acked.len()
    );
    // Without collisions this test would not test the expected-version check.
    assert!(conflicts > 0, "no version conflict: the nodes never wrote one Session at once");
    assert!(
        acked.len() > WRITERS * POSTS_PER_WRITER / 2,
        "most posts succeed: {} acked, {aborted} aborted",
        acked.len()
    );

    // Every node shows every Session the same, with every acknowledged
    // message exactly once at the sequence number it was acknowledged with.
    let mut expected: HashMap<String, BTreeMap<u64, String>> = HashMap::new();
    for (session, body, seq) in &acked {
        let previous = expected.entry(session.clone()).or_default().insert(*seq, body.clone());
        assert!(previous.is_none(), "two acknowledgements with seq {seq} in {session}: {previous:?} and {body}");
    }
    for session in &sessions {
        let mut histories = Vec::new();
        for c in nodes.iter_mut() {
            // A node's read may trail the log by a moment.
            let deadline = Instant::now() + Duration::from_secs(20);
            let history = loop {
                let h = all_messages(c, &key, session).await;
                let want = expected.get(session).map_or(0, |m| m.len());
                if h.len() >= want || Instant::now() > deadline {
                    break h;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            histories.push(history);
        }
        for h in &histories[1..] {
            assert_eq!(h, &histories[0], "two nodes show Session {session} differently");
        }
        let history = &histories[0];
        let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "dense sequence numbers in {session}");
        let bodies: HashSet<&String> = history.iter().map(|(_, b)| b).collect();
        assert_eq!(bodies.len(), history.len(), "a message doubled in {session}");
        let shown: BTreeMap<u64, String> = history.iter().cloned().collect();
        let want = expected.remove(session).unwrap_or_default();
        assert_eq!(shown, want, "Session {session}: what was acknowledged is what is stored");
    }

    // The SQL read models (fed by node 0 from the shared log) count every
    // acknowledged message once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counted = pg.psql(&sql, "SELECT coalesce(sum(messages), 0) FROM pypes_sql_sessions");
        if counted == acked.len().to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SQL read models count {counted} messages, {} were acknowledged",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.psql(&sql, "SELECT count(*) FROM pypes_sql_sessions"), SESSIONS.to_string());

    // End users' logins hold on every node (they live in the shared log).
    const PASSWORD: &str = "a good long password";
    let user = first.user.clone();
    set_password(&mut nodes[1], &key, &user, PASSWORD).await;
    let token = login(&mut nodes[0], &key, "first", PASSWORD).await.unwrap();
    for c in nodes.iter_mut() {
        assert_eq!(introspect(c, &key, &token).await.unwrap().subject_id, user, "a token from node 0 on every node");
    }
    let out = nodes[2].logins.logout(authed(&key, pb::LogoutRequest { token: token.clone() })).await.unwrap();
    assert!(out.into_inner().ended);
    for c in nodes.iter_mut() {
        let e = introspect(c, &key, &token).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "logged out on node 2, still valid elsewhere: {e:?}");
    }
    // Failures made on different nodes add up: the username is locked on all.
    for i in 0..5 {
        let e = login(&mut nodes[i % NODES], &key, "first", "wrong password!").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    for c in nodes.iter_mut() {
        let e = login(c, &key, "first", PASSWORD).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "five failures over three nodes lock every node: {e:?}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = login(&mut nodes[0], &key, "first", PASSWORD).await.unwrap();
    for c in nodes.iter_mut() {
        introspect(c, &key, &token).await.unwrap();
    }
    // A password change on node 2 ends the older token on nodes 0 and 1,
    // whose actors of the subject were live (they read it fresh).
    set_password(&mut nodes[2], &key, &user, &format!("{PASSWORD} 2")).await;
    for c in nodes.iter_mut() {
        let e = introspect(c, &key, &token).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "a token from before a password change: {e:?}");
    }
    assert_eq!(login(&mut nodes[1], &key, "first", PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);
    login(&mut nodes[1], &key, "first", &format!("{PASSWORD} 2")).await.unwrap();

    // In the log itself: each event once, versions dense in every stream.
    let events = pg.psql(&url, "SELECT count(*) || ' ' || count(DISTINCT event_id) FROM pypes_log_events");
    let (all, distinct) = events.split_once(' ').unwrap();
    assert_eq!(all, distinct, "an event id twice in the log");
    let gaps = pg.psql(
        &url,
        "SELECT count(*) FROM (SELECT stream FROM pypes_log_events GROUP BY stream \
         HAVING count(*) <> max(version) - min(version) + 1) g",
    );
    assert_eq!(gaps, "0", "a stream with a gap in its versions");
    let positions = pg.psql(&url, "SELECT count(*) = max(position) + 1 FROM pypes_log_events");
    assert_eq!(positions, "t", "gap-free global positions");

    // An auditor, with the servers stopped: one Session's timeline from
    // the shared log (decrypted with the shared key store), and the audit
    // trails of all three nodes verified with the one public key.
    drop(nodes);
    drop(servers);
    let pypes = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pypes"))
            .args(args)
            .arg("--data-dir")
            .arg(dirs[0].path())
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "pypes {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let stream = format!("session-{}-{}", first.tenant, sessions[0]);
    let replay = pypes(&["replay", "--stream", &stream]);
    let count = acked.iter().filter(|(s, _, _)| s == &sessions[0]).count();
    assert!(replay.contains(&format!("{count} messages")), "{replay}");
    let verify = pypes(&["audit", "verify"]);
    assert!(verify.contains("audit streams: OK") && verify.contains("streams           3"), "{verify}");
    // The same from the servers' configuration file instead of variables.
    let config = dirs[0].path().join("pypes.toml");
    std::fs::write(
        &config,
        format!("[log]\nbackend = \"postgres\"\nurl = \"{url}\"\n\n[keys]\nprovider_url = \"{epochs}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dirs[0].path())
        .envs([("PYPES_ROOT_KEY", root.as_str()), ("PYPES_LOG_SIGNING_KEY", signing.as_str())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("streams           3"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
