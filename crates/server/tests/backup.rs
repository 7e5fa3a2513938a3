//! The backup and restore drill of docs/operations.md, end to end through
//! the binary: write; back up while the server runs; write more; erase a
//! subject; lose the data directory; restore; everything up to the backup
//! is readable and `pypes audit verify` passes; once the key epoch turns,
//! the backup (the erased subject's data with it) can no longer be opened.
//! And every bad input to backup and restore is refused by name, writing
//! nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ADMIN, authed, clients, setup, start_with, stop_cleanly, wait_certified};
use proto::api as pb;

fn pypes(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pypes"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PYPES_") {
            c.env_remove(k);
        }
    }
    c.args(args).envs(env.iter().copied()).env("RUST_LOG", "error").output().unwrap()
}

#[track_caller]
fn ok(o: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "failed: {text}");
    text
}

#[track_caller]
fn refused(o: Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded: {}", String::from_utf8_lossy(&o.stdout));
    assert!(err.contains(needle), "{needle:?} not in {err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn bodies(c: &mut common::Clients, key: &str, session: &str) -> Vec<String> {
    let req = pb::ListMessagesRequest { session_id: session.to_string(), after_seq: 0, page_size: 0 };
    c.views.list_messages(authed(key, req)).await.unwrap().into_inner().messages.into_iter().map(|m| m.body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_restores_up_to_the_backup_and_a_turned_epoch_shuts_the_backup() {
    let t = tempfile::tempdir().unwrap();
    let (data, provider, backup) = (t.path().join("data"), t.path().join("provider"), t.path().join("backup"));
    let root = hex::encode(rand_bytes());
    let env = [("PYPES_ROOT_KEY", root.as_str()), ("PYPES_KEYS_PROVIDER_DIR", s(&provider))];

    // Write.
    let server = start_with(&data, &env);
    let mut c = clients(&server.grpc).await;
    let a = setup(&mut c, "keeper").await;
    c.sessions.post_message(authed(&a.key, common::post(&a, "before the backup"))).await.unwrap();
    let gone = c
        .subjects
        .register_subject(authed(
            &a.key,
            pb::RegisterSubjectRequest {
                username: "gone".into(),
                email: "gone@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let gone_session = c
        .sessions
        .start_session(authed(
            &a.key,
            pb::StartSessionRequest {
                pype_id: a.pype.clone(),
                end_user_id: gone.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    c.sessions
        .post_message(authed(
            &a.key,
            pb::PostMessageRequest {
                session_id: gone_session.clone(),
                sender_id: gone.subject_id.clone(),
                body: "secret of the erased".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    // Back up while the server runs.
    let out = ok(pypes(
        &["backup", "--data-dir", s(&data), "--to", s(&backup), "--keys-provider-dir", s(&provider), "--json"],
        &[("PYPES_ROOT_KEY", &root)],
    ));
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(summary["log_position"].as_u64().unwrap() > 0 && summary["keys"].as_u64().unwrap() >= 2, "{summary}");
    for never in ["root.key", "provider", "views", "log/LOCK"] {
        assert!(!backup.join(never).exists(), "{never} is in the backup");
    }
    assert!(backup.join("blobs").exists() || !data.join("blobs").read_dir().unwrap().any(|_| true));
    // Bad backups: into a non-empty directory, of a directory that is not pypes'.
    let busy = t.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("x"), "").unwrap();
    refused(
        pypes(
            &["backup", "--data-dir", s(&data), "--to", s(&busy), "--keys-provider-dir", s(&provider)],
            &[("PYPES_ROOT_KEY", &root)],
        ),
        "is not empty",
    );
    refused(
        pypes(&["backup", "--data-dir", s(&busy), "--to", s(&t.path().join("b2"))], &[("PYPES_ROOT_KEY", &root)]),
        "is not a pypes data directory",
    );
    refused(
        pypes(
            &["backup", "--data-dir", s(&data), "--to", s(&t.path().join("b3")), "--keys-provider-dir", s(&provider)],
            &[],
        ),
        "needs the root key",
    );
    assert!(!t.path().join("b3").exists() && !t.path().join("b3.partial").exists());

    // Write more; erase a subject.
    c.sessions.post_message(authed(&a.key, common::post(&a, "after the backup"))).await.unwrap();
    c.erasure
        .request_erasure(authed(
            &a.key,
            pb::RequestErasureRequest { subject_id: gone.subject_id.clone(), ..Default::default() },
        ))
        .await
        .unwrap();
    wait_certified(&mut c, &a.key, &gone.subject_id).await;
    drop(c);
    stop_cleanly(server);

    // Lose the data directory.
    std::fs::remove_dir_all(&data).unwrap();

    // A damaged backup is refused before anything is written.
    let damaged = t.path().join("damaged");
    copy_dir(&backup, &damaged);
    let segment = std::fs::read_dir(damaged.join("log/segments")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();
    let restored_bad = t.path().join("restored-bad");
    let e = refused(pypes(&["restore", "--from", s(&damaged), "--data-dir", s(&restored_bad)], &[]), "is damaged");
    assert!(e.contains("log/segments/"), "{e}");
    assert!(!restored_bad.exists() && !t.path().join("restored-bad.restoring").exists(), "a refused restore wrote");
    refused(pypes(&["restore", "--check", "--from", s(&damaged)], &[]), "is damaged");
    ok(pypes(&["restore", "--check", "--from", s(&backup)], &[]));
    // A file the manifest does not list; a file it lists gone.
    let stray = t.path().join("stray");
    copy_dir(&backup, &stray);
    std::fs::write(stray.join("keys/extra"), "").unwrap();
    refused(pypes(&["restore", "--check", "--from", s(&stray)], &[]), "keys/extra, which its manifest does not list");
    std::fs::remove_file(stray.join("keys/extra")).unwrap();
    std::fs::remove_file(stray.join("node.id")).unwrap();
    refused(pypes(&["restore", "--check", "--from", s(&stray)], &[]), "node.id is missing");
    // Into a directory that holds something: refused.
    refused(pypes(&["restore", "--from", s(&backup), "--data-dir", s(&busy)], &[]), "is not a pypes data directory");

    // Restore and start: everything up to the backup is there, nothing after.
    let restored = t.path().join("restored");
    let out = ok(pypes(&["restore", "--from", s(&backup), "--data-dir", s(&restored)], &[]));
    assert!(out.contains("restored:"), "{out}");
    let server = start_with(&restored, &env);
    let mut c = clients(&server.grpc).await;
    assert_eq!(bodies(&mut c, &a.key, &a.session).await, vec!["before the backup".to_string()]);
    // Before the epoch turns, the backup still opens, the erased subject's
    // data with it (docs/operations.md: re-apply erasures certified after
    // the backup was taken).
    assert_eq!(bodies(&mut c, &a.key, &gone_session).await, vec!["secret of the erased".to_string()]);
    drop(c);
    stop_cleanly(server);
    ok(pypes(&["audit", "verify", "--data-dir", s(&restored)], &[]));
    // A restore over it (it holds pypes data now): refused.
    refused(pypes(&["restore", "--from", s(&backup), "--data-dir", s(&restored)], &[]), "holds data");

    // The epoch turns (the rotation the server runs every 7 days, by hand).
    ok(pypes(
        &["keys", "rotate", "--yes", "--data-dir", s(&restored), "--keys-provider-dir", s(&provider)],
        &[("PYPES_ROOT_KEY", &root)],
    ));
    // The backup no longer opens: its keys are wrapped under a destroyed epoch.
    let again = t.path().join("again");
    ok(pypes(&["restore", "--from", s(&backup), "--data-dir", s(&again)], &[]));
    let e = refused(
        pypes(
            &["keys", "verify", "--data-dir", s(&again), "--keys-provider-dir", s(&provider)],
            &[("PYPES_ROOT_KEY", &root)],
        ),
        "",
    );
    assert!(e.to_lowercase().contains("epoch"), "{e}");
    let start = pypes(
        &[
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-key",
            ADMIN,
            "--data-dir",
            s(&again),
        ],
        &env,
    );
    assert!(!start.status.success());
    assert!(
        String::from_utf8_lossy(&start.stderr).to_lowercase().contains("epoch"),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    // The restored node itself goes on: its keys were re-wrapped under the new epoch.
    let server = start_with(&restored, &env);
    let mut c = clients(&server.grpc).await;
    assert_eq!(bodies(&mut c, &a.key, &a.session).await, vec!["before the backup".to_string()]);
}

fn rand_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    b
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
