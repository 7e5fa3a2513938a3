//! Canaries through the API: unique strings in every personal and content
//! field (username, email, phone, date of birth, invitation email, message
//! bodies, devices), then a byte-scan of every file under the data
//! directory and of the server's own log output: none may appear. (The
//! erasure half of this test arrives with the erasure process.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ADMIN, authed, clients};
use proto::api as pb;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_any_file_or_log_line() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::NamedTempFile::new().unwrap();
    let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let canaries = [
        format!("cnry{tag}u"),                                                             // username
        format!("cnry{tag}e@example.com"),                                                 // email
        format!("+4917{}", &u64::from_str_radix(&tag[..8], 16).unwrap().to_string()[..9]), // phone
        format!("cnry{tag}i@example.com"),                                                 // invitation email
        format!("cnry{tag}o"),                                                             // onboarding username
        format!("canary body {tag}"),                                                      // message body
        format!("canary device {tag}"),                                                    // device
        "1987-06-05".to_string(),                                                          // date of birth
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-key", ADMIN, "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logs.reopen().unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let grpc = format!("http://{}", line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).unwrap());
    let mut c = clients(&grpc).await;

    let t = c
        .tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Canary Co".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let key = t.api_key;
    let pype = c
        .pypes
        .create_pype(authed(&key, pb::CreatePypeRequest { name: "Help".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let user = c
        .subjects
        .register_subject(authed(
            &key,
            pb::RegisterSubjectRequest {
                username: canaries[0].clone(),
                email: canaries[1].clone(),
                phone: canaries[2].clone(),
                date_of_birth: canaries[7].clone(),
                attested_at_least_13: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let invited = c
        .subjects
        .invite_subject(authed(&key, pb::InviteSubjectRequest { email: canaries[3].clone() }))
        .await
        .unwrap()
        .into_inner();
    c.subjects
        .onboard_subject(authed(
            &key,
            pb::OnboardSubjectRequest {
                subject_id: invited.subject_id,
                username: canaries[4].clone(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let session = c
        .sessions
        .start_session(authed(
            &key,
            pb::StartSessionRequest { pype_id: pype.pype_id, end_user_id: user.subject_id.clone(), timers: None },
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        c.sessions
            .post_message(authed(
                &key,
                pb::PostMessageRequest {
                    session_id: session.session_id.clone(),
                    sender_id: user.subject_id.clone(),
                    body: canaries[5].clone(),
                    device: canaries[6].clone(),
                },
            ))
            .await
            .unwrap();
    }
    // Bad input that echoes personal data must not log it either.
    let _ = c
        .subjects
        .register_subject(authed(
            &key,
            pb::RegisterSubjectRequest {
                username: canaries[0].clone(),
                email: canaries[1].clone(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await;
    // The data is there and readable through the API...
    let got = c
        .subjects
        .get_subject(authed(&key, pb::GetSubjectRequest { subject_id: user.subject_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.email, canaries[1]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();

    // ...and in no byte at rest, nor in the server's log output.
    let mut scanned = files_under(data.path());
    scanned.push(logs.path().to_path_buf());
    assert!(scanned.len() > 8, "{scanned:?}");
    for path in &scanned {
        let bytes = std::fs::read(path).unwrap();
        for canary in &canaries {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary:?} found in {}",
                path.display()
            );
        }
    }
    let log_text = std::fs::read_to_string(logs.path()).unwrap();
    assert!(log_text.contains("subject registered"), "the scan looked at real log output");
}
