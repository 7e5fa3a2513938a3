//! Canaries through the API: unique strings in every personal and content
//! field (username, email, phone, date of birth, invitation email, message
//! bodies, devices), then a byte-scan of every file under the data
//! directory and of the server's own log output: none may appear. Then the
//! erasure half: erase the user, wait for the certificate (its signature
//! verifies with the log's public key and breaks on any altered byte),
//! scan again, check no key of theirs is left, that another user's data
//! still opens, and that the views, analytics and `pypes replay --into`
//! show the erased content as `[erased]`. Snapshots are taken every two
//! events here, so the scans and the erasure cover them too (sealed under
//! the subject's and the Session's keys, which the erasure shreds).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ADMIN, authed, clients, files_under, start_logging_with};
use proto::api as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_reaches_any_file_or_log_line() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::NamedTempFile::new().unwrap();
    let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
    let canaries = [
        format!("cnry{tag}u"),                                                              // username
        format!("cnry{tag}e@example.com"),                                                  // email
        format!("+4917{:09}", u64::from_str_radix(&tag[..8], 16).unwrap() % 1_000_000_000), // phone
        format!("cnry{tag}i@example.com"),                                                  // invitation email
        format!("cnry{tag}o"),                                                              // onboarding username
        format!("canary body {tag}"),                                                       // message body
        format!("canary device {tag}"),                                                     // device
        "1987-06-05".to_string(),                                                           // date of birth
        format!("cnry{tag}password"),                                                       // password
        format!("canary picture {tag}"),                                                    // inside a picture
    ];
    let mut server = start_logging_with(data.path(), logs.path(), &[("PYPES_SNAPSHOT_EVERY", "2")]);
    let grpc = server.grpc.clone();
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
                password: canaries[8].clone(),
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
            pb::StartSessionRequest {
                pype_id: pype.pype_id.clone(),
                end_user_id: user.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
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
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    // A picture with the canary in its bytes (the scan covers the blob store).
    let mut picture = b"\x89PNG\r\n\x1a\n".to_vec();
    picture.extend_from_slice(canaries[9].as_bytes());
    picture.resize(3 << 20, 7);
    picture.extend_from_slice(canaries[9].as_bytes());
    let ch = tonic::transport::Channel::from_shared(grpc.clone()).unwrap().connect().await.unwrap();
    let media = common::upload(
        &ch,
        &key,
        None,
        common::upload_messages(&session.session_id, &user.subject_id, "image/png", &picture, 1 << 20),
    )
    .await
    .unwrap();
    c.sessions
        .post_message(authed(
            &key,
            pb::PostMessageRequest {
                session_id: session.session_id.clone(),
                sender_id: user.subject_id.clone(),
                attachment_ids: vec![media.media_id],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
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
    // The data is there and readable through the API and the views...
    let got = c
        .subjects
        .get_subject(authed(&key, pb::GetSubjectRequest { subject_id: user.subject_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.email, canaries[1]);
    let list = |session: &str| pb::ListMessagesRequest { session_id: session.to_string(), after_seq: 0, page_size: 0 };
    let messages = c.views.list_messages(authed(&key, list(&session.session_id))).await.unwrap().into_inner().messages;
    assert_eq!(messages.len(), 4);
    assert!(messages[..3].iter().all(|m| m.body == canaries[5] && m.device == canaries[6] && !m.erased));
    assert_eq!(messages[3].attachments.len(), 1);
    let directory =
        c.views.list_end_users(authed(&key, pb::ListEndUsersRequest::default())).await.unwrap().into_inner().end_users;
    assert!(directory.iter().any(|u| u.email == canaries[1] && u.username == canaries[0]), "{directory:?}");
    // A second end user, whose data must survive the first one's erasure.
    let kept_body = format!("kept body {tag}");
    let kept = c
        .subjects
        .register_subject(authed(
            &key,
            pb::RegisterSubjectRequest {
                username: format!("kept{tag}"),
                email: format!("kept{tag}@example.com"),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let kept_session = c
        .sessions
        .start_session(authed(
            &key,
            pb::StartSessionRequest {
                pype_id: pype.pype_id.clone(),
                end_user_id: kept.subject_id.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    c.sessions
        .post_message(authed(
            &key,
            pb::PostMessageRequest {
                session_id: kept_session.session_id.clone(),
                sender_id: kept.subject_id.clone(),
                body: kept_body.clone(),
                device: String::new(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // ...and in no byte at rest, nor in the server's log output.
    let scan = |extra: &[&Path]| {
        let mut scanned = files_under(data.path());
        scanned.push(logs.path().to_path_buf());
        for e in extra {
            scanned.extend(files_under(e));
        }
        assert!(scanned.iter().any(|p| p.extension().is_some_and(|e| e == "redb")), "views scanned: {scanned:?}");
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
        scanned.len()
    };
    assert!(scan(&[]) > 8);
    let log_text = std::fs::read_to_string(logs.path()).unwrap();
    assert!(log_text.contains("subject registered"), "the scan looked at real log output");

    // Erasure, through the API with the tenant's key.
    let requested = c
        .erasure
        .request_erasure(authed(
            &key,
            pb::RequestErasureRequest { subject_id: user.subject_id.clone(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(requested.due_micros - requested.requested_micros == 30 * 86_400 * 1_000_000);
    let get = pb::GetErasureRequest { subject_id: user.subject_id.clone(), ..Default::default() };
    let mut status = requested;
    for _ in 0..300 {
        if status.step == "certified" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = c.erasure.get_erasure(authed(&key, get.clone())).await.unwrap().into_inner();
    }
    assert_eq!(status.step, "certified", "{status:?}");
    // The certificate verifies with the log's public key; any altered byte breaks it.
    let public = std::fs::read_to_string(data.path().join("log").join("signing.pub")).unwrap();
    assert_eq!(public.trim(), status.signing_public_key);
    app::certificate::verify(&status.certificate, &status.signature, &public).unwrap();
    for i in [0, status.certificate.len() / 2, status.certificate.len() - 1] {
        let mut altered = status.certificate.clone().into_bytes();
        altered[i] ^= 0x01;
        let altered = String::from_utf8_lossy(&altered).into_owned();
        assert!(app::certificate::verify(&altered, &status.signature, &public).is_err(), "byte {i}");
    }
    for field in [
        "request_id",
        "tenant_id",
        "subject_ref",
        "destroyed_key_fingerprints",
        "projections_acknowledged",
        "tombstone",
    ] {
        assert!(status.certificate.contains(&format!("\"{field}\"")), "{field} missing: {}", status.certificate);
    }
    for projection in ["sessions", "directory", "analytics"] {
        assert!(status.certificate.contains(&format!("\"projection\":\"{projection}\"")), "{}", status.certificate);
    }
    // The erased user's Session reads [erased]; the other one's still opens.
    let erased = c.views.list_messages(authed(&key, list(&session.session_id))).await.unwrap().into_inner().messages;
    assert_eq!(erased.len(), 4);
    assert!(erased.iter().all(|m| m.erased && m.body == "[erased]" && m.attachments.is_empty()), "{erased:?}");
    assert!(
        !common::files_under(data.path()).iter().any(|f| f.extension().is_some_and(|e| e == "blob")),
        "the erased session's blob is deleted"
    );
    let still =
        c.views.list_messages(authed(&key, list(&kept_session.session_id))).await.unwrap().into_inner().messages;
    assert_eq!(still[0].body, kept_body);
    let view = c
        .views
        .get_session_view(authed(&key, pb::GetSessionViewRequest { session_id: session.session_id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(view.erased && view.end_user_id.is_empty(), "{view:?}");
    let directory =
        c.views.list_end_users(authed(&key, pb::ListEndUsersRequest::default())).await.unwrap().into_inner().end_users;
    assert!(directory.iter().all(|u| u.subject_id != user.subject_id), "erased user still listed");
    assert!(directory.iter().any(|u| u.subject_id == kept.subject_id));
    // The Session takes nothing more; the subject neither.
    let refused = c
        .sessions
        .post_message(authed(
            &key,
            pb::PostMessageRequest {
                session_id: session.session_id.clone(),
                sender_id: user.subject_id.clone(),
                body: "after erasure".into(),
                device: String::new(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    // Analytics still answer (cells suppressed below k = 5).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let cells = c
        .analytics
        .query_analytics(authed(
            &key,
            pb::QueryAnalyticsRequest {
                pype_id: pype.pype_id.clone(),
                granularity: pb::Granularity::Day as i32,
                from_micros: now - 86_400_000_000,
                to_micros: now + 86_400_000_000,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cells.k, 5);
    assert!(!cells.cells.is_empty() && cells.cells.iter().all(|c| c.suppressed && c.sessions == 0), "{cells:?}");
    let _ = server.child.kill();
    let _ = server.child.wait();

    // No key of theirs remains in the key store.
    let keys = keystore::embedded::open_embedded(
        data.path(),
        None,
        std::sync::Arc::new(eventlog::SystemClock),
        keystore::embedded::OpenMode::MustExist,
    )
    .unwrap();
    let tenant: uuid::Uuid = t.tenant.unwrap().tenant_id.parse().unwrap();
    let subject: uuid::Uuid = user.subject_id.parse().unwrap();
    let erased_session: uuid::Uuid = session.session_id.parse().unwrap();
    use keystore::{KeyStore, ShredTarget};
    assert!(keys.store.keys_of(tenant, &ShredTarget::Subject { subject, group: None }).unwrap().is_empty());
    assert!(keys.store.keys_of(tenant, &ShredTarget::Session { session: erased_session }).unwrap().is_empty());
    let kept_session_id: uuid::Uuid = kept_session.session_id.parse().unwrap();
    assert!(!keys.store.keys_of(tenant, &ShredTarget::Session { session: kept_session_id }).unwrap().is_empty());
    drop(keys);

    // Replay for audit still works, showing [erased].
    let replay = tempfile::tempdir().unwrap();
    let into = replay.path().join("asof");
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["replay", "--into"])
        .arg(&into)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(into.join("report.txt")).unwrap();
    assert!(report.contains("[erased]") && report.contains("[sealed]"), "{report}");
    assert!(!report.contains(&kept_body), "the report wrote content in clear");
    assert!(report.contains("(end user erased)"), "{report}");
    scan(&[replay.path()]);
}
