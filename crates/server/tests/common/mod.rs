//! Helpers of the server's integration tests: the real `pypes` binary on
//! ephemeral ports, tonic clients, and a tenant with a Pype, an end user
//! and a Session.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::api as pb;
use tonic::Request;
use tonic::transport::Channel;

pub mod ledger;
pub mod receiver;

pub const ADMIN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub struct Server {
    pub child: Child,
    pub grpc: String,
    pub http: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(data: &Path) -> Server {
    start_with(data, &[])
}

/// Starts the server with extra environment variables.
pub fn start_with(data: &Path, env: &[(&str, &str)]) -> Server {
    spawn(data, env, "warn", Stdio::inherit())
}

/// Starts the server logging at debug level into `logs` (to scan its log
/// output for canaries).
pub fn start_logging(data: &Path, logs: &Path) -> Server {
    start_logging_with(data, logs, &[])
}

/// [`start_logging`] with extra environment variables.
pub fn start_logging_with(data: &Path, logs: &Path, env: &[(&str, &str)]) -> Server {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(logs).expect("open the log file");
    spawn(data, env, "debug", Stdio::from(file))
}

/// With `PYPES_TEST_BACKEND=postgres` every server of the test runs on
/// PostgreSQL (event log and key store): one throw-away cluster per test
/// process, one database per data directory (a restart on the same data
/// directory finds its database again).
pub fn backend_env(data: &Path) -> Vec<(String, String)> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    match std::env::var("PYPES_TEST_BACKEND").as_deref() {
        Err(_) | Ok("file") => return Vec::new(),
        Ok("postgres") => {}
        Ok(other) => panic!("PYPES_TEST_BACKEND={other}: \"file\" or \"postgres\""),
    }
    static CLUSTER: OnceLock<&'static pgtest::Cluster> = OnceLock::new();
    static DATABASES: OnceLock<Mutex<HashMap<std::path::PathBuf, String>>> = OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        pgtest::Cluster::start().expect("PYPES_TEST_BACKEND=postgres needs PostgreSQL").for_this_process()
    });
    let url = DATABASES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(data.to_path_buf())
        .or_insert_with(|| cluster.fresh_database())
        .clone();
    vec![("PYPES_LOG_BACKEND".into(), "postgres".into()), ("PYPES_LOG_URL".into(), url)]
}

/// Starts the server inside network namespace `ns` (`ip netns exec`),
/// listening on every address there in plain text (as behind a mesh that
/// terminates TLS); the test reaches it at `reach` (an address of the
/// namespace).
pub fn start_in_netns(ns: &str, reach: &str, data: &Path, env: &[(&str, &str)]) -> Server {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_pypes")]).env("PYPES_PLAINTEXT_BEHIND_MESH", "true");
    let mut server = spawn_command(command, "0.0.0.0", data, env, "warn", Stdio::inherit());
    server.grpc = server.grpc.replace("0.0.0.0", reach);
    server.http = server.http.replace("0.0.0.0", reach);
    server
}

fn spawn(data: &Path, env: &[(&str, &str)], level: &str, stderr: Stdio) -> Server {
    spawn_command(Command::new(env!("CARGO_BIN_EXE_pypes")), "127.0.0.1", data, env, level, stderr)
}

fn spawn_command(
    mut command: Command,
    host: &str,
    data: &Path,
    env: &[(&str, &str)],
    level: &str,
    stderr: Stdio,
) -> Server {
    let (grpc, http) = (format!("{host}:0"), format!("{host}:0"));
    let mut child = command
        .args(["serve", "--grpc-addr", &grpc, "--http-addr", &http, "--admin-key", ADMIN, "--data-dir"])
        .arg(data)
        .envs(backend_env(data))
        .envs(env.iter().copied())
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start pypes");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read the listen line");
    if std::env::var("PYPES_TEST_BACKEND").as_deref() == Ok("postgres") {
        // Prove the server really runs on PostgreSQL.
        let mut backends = String::new();
        while !backends.starts_with("event log:") {
            backends.clear();
            assert!(reader.read_line(&mut backends).expect("read stdout") > 0, "no backend line");
        }
        assert!(backends.contains("event log: postgres") && backends.contains("key store: postgres"), "{backends}");
    }
    // Keep reading, as a terminal would (the server must also survive a reader that stops).
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .to_string()
    };
    Server { grpc: format!("http://{}", field("grpc=")), http: field("http="), child }
}

/// Stops the server as an operator does (SIGTERM) and waits for a clean exit.
pub fn stop_cleanly(mut server: Server) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "the server stopped with {status}");
}

pub fn authed<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

pub struct Clients {
    pub tenants: pb::tenant_service_client::TenantServiceClient<Channel>,
    pub pypes: pb::pype_service_client::PypeServiceClient<Channel>,
    pub subjects: pb::subject_service_client::SubjectServiceClient<Channel>,
    pub sessions: pb::session_service_client::SessionServiceClient<Channel>,
    pub views: pb::view_service_client::ViewServiceClient<Channel>,
    pub analytics: pb::analytics_service_client::AnalyticsServiceClient<Channel>,
    pub erasure: pb::erasure_service_client::ErasureServiceClient<Channel>,
    pub logins: pb::end_user_auth_service_client::EndUserAuthServiceClient<Channel>,
}

pub async fn clients(url: &str) -> Clients {
    let channel = Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    Clients {
        tenants: pb::tenant_service_client::TenantServiceClient::new(channel.clone()),
        pypes: pb::pype_service_client::PypeServiceClient::new(channel.clone()),
        subjects: pb::subject_service_client::SubjectServiceClient::new(channel.clone()),
        sessions: pb::session_service_client::SessionServiceClient::new(channel.clone()),
        views: pb::view_service_client::ViewServiceClient::new(channel.clone()),
        analytics: pb::analytics_service_client::AnalyticsServiceClient::new(channel.clone()),
        erasure: pb::erasure_service_client::ErasureServiceClient::new(channel.clone()),
        logins: pb::end_user_auth_service_client::EndUserAuthServiceClient::new(channel),
    }
}

pub struct Setup {
    pub tenant: String,
    pub key: String,
    pub pype: String,
    pub user: String,
    pub session: String,
}

/// Another end user of the tenant of `key` (`username`, an email made
/// from it) with a Session of their own in `pype`: (subject, session).
pub async fn end_user_with_session(c: &mut Clients, key: &str, pype: &str, username: &str) -> (String, String) {
    let user = register(c, key, username).await;
    let session = c
        .sessions
        .start_session(authed(
            key,
            pb::StartSessionRequest { pype_id: pype.into(), end_user_id: user.clone(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id;
    (user, session)
}

/// A new end user of the tenant of `key` (`username`, an email made from
/// it): their subject id.
pub async fn register(c: &mut Clients, key: &str, username: &str) -> String {
    c.subjects
        .register_subject(authed(
            key,
            pb::RegisterSubjectRequest {
                username: username.into(),
                email: format!("{username}@example.com"),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .subject_id
}

pub async fn setup(c: &mut Clients, username: &str) -> Setup {
    let t = c
        .tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Acme".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let key = t.api_key;
    let pype = c
        .pypes
        .create_pype(authed(&key, pb::CreatePypeRequest { name: "Support".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let user = c
        .subjects
        .register_subject(authed(
            &key,
            pb::RegisterSubjectRequest {
                username: username.into(),
                email: "u@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
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
    Setup {
        tenant: t.tenant.unwrap_or_default().tenant_id,
        key,
        pype: pype.pype_id,
        user: user.subject_id,
        session: session.session_id,
    }
}

pub fn post(s: &Setup, body: &str) -> pb::PostMessageRequest {
    pb::PostMessageRequest {
        session_id: s.session.clone(),
        sender_id: s.user.clone(),
        body: body.into(),
        ..Default::default()
    }
}

/// Ids a call by name uses (another tenant's, in the isolation matrix).
#[derive(Clone, Debug, Default)]
pub struct Ids {
    pub tenant: String,
    pub pype: String,
    pub session: String,
    pub user: String,
    /// An API key id (RevokeApiKey); the user id when empty.
    pub api_key_id: String,
    /// A media id of the session (DownloadMedia); a random one when empty.
    pub media: String,
}

/// Every RPC of the API by name (the staff and login services included).
pub const RPCS: &[&str] = &[
    "CreateTenant",
    "GetTenant",
    "CreateApiKey",
    "RevokeApiKey",
    "SetRetention",
    "CancelTenant",
    "GetOffboarding",
    "CreatePype",
    "GetPype",
    "AssignMember",
    "ArchivePype",
    "StartSession",
    "PostMessage",
    "AdvanceReadHorizon",
    "JoinSession",
    "LeaveSession",
    "CloseSession",
    "GetSession",
    "ListSessions",
    "WatchSession",
    "SubscribeTenantEvents",
    "ExportTenant",
    "ShareLocation",
    "ImportSessions",
    "RegisterSubject",
    "InviteSubject",
    "OnboardSubject",
    "GetSubject",
    "DeactivateSubject",
    "ReactivateSubject",
    "SetPassword",
    "Login",
    "Introspect",
    "Logout",
    "GetSessionView",
    "ListMessages",
    "ListEndUsers",
    "GetPypeOverview",
    "QueryAnalytics",
    "RequestErasure",
    "GetErasure",
    "ExportSubject",
    "RectifySubject",
    "RestrictProcessing",
    "LiftRestriction",
    "GrantConsent",
    "WithdrawConsent",
    "AddStaff",
    "RotateStaffKey",
    "DisableStaff",
    "ListStaff",
    "OpenBreakGlass",
    "CloseBreakGlass",
    "ScopeAccess",
    "UploadMedia",
    "DownloadMedia",
    "CreateWebhook",
    "GetWebhook",
    "ListWebhooks",
    "RotateWebhookSecret",
    "ResumeWebhook",
    "DeleteWebhook",
    "RedeliverWebhook",
    "BeginMove",
    "ReadMove",
    "WriteMove",
    "MoveDigest",
    "FinishMove",
    "AdoptMove",
];

/// The messages of an upload of `data` into `session` by `uploader`.
pub fn upload_messages(
    session: &str,
    uploader: &str,
    content_type: &str,
    data: &[u8],
    piece: usize,
) -> Vec<pb::UploadMediaRequest> {
    use pb::upload_media_request::Part;
    let start = pb::UploadStart {
        session_id: session.into(),
        uploader_id: uploader.into(),
        content_type: content_type.into(),
        size: data.len() as u64,
        ..Default::default()
    };
    let mut out = vec![pb::UploadMediaRequest { part: Some(Part::Start(start)) }];
    let mut offset = 0;
    for chunk in data.chunks(piece.max(1)) {
        out.push(pb::UploadMediaRequest {
            part: Some(Part::Chunk(pb::UploadChunk { offset, data: chunk.to_vec().into() })),
        });
        offset += chunk.len() as u64;
    }
    out
}

/// Uploads `data` whole; the answer or the refusal.
pub async fn upload(
    ch: &Channel,
    key: &str,
    tenant_header: Option<&str>,
    messages: Vec<pb::UploadMediaRequest>,
) -> Result<pb::Media, tonic::Status> {
    pb::media_service_client::MediaServiceClient::new(ch.clone())
        .upload_media(req(key, tenant_header, tokio_stream::iter(messages)))
        .await
        .map(|r| r.into_inner())
}

/// Downloads a range; the description and the bytes.
pub async fn download(
    ch: &Channel,
    key: &str,
    tenant_header: Option<&str>,
    request: pb::DownloadMediaRequest,
) -> Result<(Option<pb::Media>, Vec<u8>), tonic::Status> {
    let from = request.offset;
    let mut stream = pb::media_service_client::MediaServiceClient::new(ch.clone())
        .download_media(req(key, tenant_header, request))
        .await?
        .into_inner();
    let (mut media, mut bytes) = (None, Vec::new());
    while let Some(chunk) = stream.message().await? {
        if chunk.media.is_some() {
            media = chunk.media;
        }
        assert_eq!(chunk.offset, from + bytes.len() as u64, "chunks arrive in order, without gaps");
        bytes.extend_from_slice(&chunk.data);
    }
    Ok((media, bytes))
}

/// A request with `key` (none if empty) and, if given, the staff tenant header.
pub fn req<T>(key: &str, tenant_header: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if !key.is_empty() {
        r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    if let Some(t) = tenant_header {
        r.metadata_mut().insert("x-pypes-tenant", t.parse().unwrap());
    }
    r
}

/// The first item of a server stream as text, or nothing if none comes
/// within 300 ms (a live stream may wait for ever).
async fn first_item<T: std::fmt::Debug>(mut stream: tonic::Streaming<T>) -> Result<String, tonic::Status> {
    match tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await {
        Ok(Ok(m)) => Ok(format!("{m:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(String::new()),
    }
}

/// Calls `rpc` with `key` about `ids`; the answer's status (Ok as `Ok`).
/// The reply's text is returned too, to check it leaks nothing.
pub async fn call(
    ch: &Channel,
    rpc: &str,
    key: &str,
    tenant_header: Option<&str>,
    ids: &Ids,
) -> Result<String, tonic::Status> {
    use pb::analytics_service_client::AnalyticsServiceClient as An;
    use pb::end_user_auth_service_client::EndUserAuthServiceClient as Au;
    use pb::erasure_service_client::ErasureServiceClient as Er;
    use pb::pype_service_client::PypeServiceClient as Py;
    use pb::region_service_client::RegionServiceClient as Rg;
    use pb::session_service_client::SessionServiceClient as Se;
    use pb::staff_service_client::StaffServiceClient as St;
    use pb::subject_service_client::SubjectServiceClient as Su;
    use pb::tenant_service_client::TenantServiceClient as Te;
    use pb::view_service_client::ViewServiceClient as Vi;
    use pb::webhook_service_client::WebhookServiceClient as Wh;
    let c = ch.clone();
    let s = ids.session.clone();
    let u = ids.user.clone();
    let p = ids.pype.clone();
    macro_rules! go {
        ($e:expr) => {
            $e.await.map(|r| format!("{:?}", r.into_inner()))
        };
    }
    match rpc {
        "CreateTenant" => go!(Te::new(c).create_tenant(req(
            key,
            tenant_header,
            pb::CreateTenantRequest { name: "T".into(), ..Default::default() }
        ))),
        "GetTenant" => {
            go!(Te::new(c).get_tenant(req(key, tenant_header, pb::GetTenantRequest { tenant_id: ids.tenant.clone() })))
        }
        "CreateApiKey" => go!(Te::new(c).create_api_key(req(key, tenant_header, pb::CreateApiKeyRequest {}))),
        "RevokeApiKey" => {
            let api_key_id = if ids.api_key_id.is_empty() { u.clone() } else { ids.api_key_id.clone() };
            go!(Te::new(c).revoke_api_key(req(
                key,
                tenant_header,
                pb::RevokeApiKeyRequest { api_key_id, ..Default::default() }
            )))
        }
        "SetRetention" => go!(Te::new(c).set_retention(req(
            key,
            tenant_header,
            pb::SetRetentionRequest { pype_id: p.clone(), retention_days: 1, inherit: false }
        ))),
        "CancelTenant" => {
            go!(Te::new(c).cancel_tenant(req(
                key,
                tenant_header,
                pb::CancelTenantRequest { tenant_id: ids.tenant.clone() }
            )))
        }
        "GetOffboarding" => go!(Te::new(c).get_offboarding(req(
            key,
            tenant_header,
            pb::CancelTenantRequest { tenant_id: ids.tenant.clone() }
        ))),
        "ShareLocation" => go!(Se::new(c).share_location(req(
            key,
            tenant_header,
            pb::ShareLocationRequest {
                session_id: s.clone(),
                participant_id: u.clone(),
                latitude: 1.0,
                longitude: 2.0,
                accuracy_m: 5
            }
        ))),
        "ImportSessions" => {
            let item = pb::ImportSessionRequest {
                import_id: "isolation".into(),
                pype_id: p.clone(),
                end_user_id: u.clone(),
                started_at_micros: 1_700_000_000_000_000,
                messages: vec![pb::ImportedMessage {
                    sender_id: u.clone(),
                    body: "hello".into(),
                    sent_at_micros: 1_700_000_000_000_001,
                    ..Default::default()
                }],
                closed_at_micros: 0,
            };
            Se::new(c)
                .import_sessions(req(key, tenant_header, tokio_stream::iter(vec![item])))
                .await
                .map(|r| format!("{:?}", r.into_inner()))
        }
        "UploadMedia" => upload(&c, key, tenant_header, upload_messages(&s, &u, "image/png", b"\x89P", 1))
            .await
            .map(|m| format!("{m:?}")),
        "DownloadMedia" => {
            let media = if ids.media.is_empty() { uuid::Uuid::now_v7().to_string() } else { ids.media.clone() };
            let r = pb::DownloadMediaRequest { session_id: s, media_id: media, ..Default::default() };
            download(&c, key, tenant_header, r).await.map(|(m, bytes)| format!("{m:?} {bytes:?}"))
        }
        "ExportSubject" => {
            use pb::privacy_service_client::PrivacyServiceClient as Pr;
            match Pr::new(c)
                .export_subject(req(
                    key,
                    tenant_header,
                    pb::ExportSubjectRequest { subject_id: u.clone(), tenant_id: ids.tenant.clone() },
                ))
                .await
            {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    let mut all = Vec::new();
                    loop {
                        match stream.message().await {
                            Ok(Some(chunk)) => all.extend_from_slice(&chunk.data),
                            Ok(None) => break Ok(String::from_utf8_lossy(&all).into_owned()),
                            Err(e) => break Err(e),
                        }
                    }
                }
                Err(e) => Err(e),
            }
        }
        "RectifySubject" => go!(pb::privacy_service_client::PrivacyServiceClient::new(c).rectify_subject(req(
            key,
            tenant_header,
            pb::RectifySubjectRequest {
                subject_id: u.clone(),
                tenant_id: ids.tenant.clone(),
                email: Some("r@example.com".into()),
                ..Default::default()
            }
        ))),
        "RestrictProcessing" => go!(pb::privacy_service_client::PrivacyServiceClient::new(c).restrict_processing(req(
            key,
            tenant_header,
            pb::SubjectRef { subject_id: u.clone(), tenant_id: ids.tenant.clone() }
        ))),
        "LiftRestriction" => go!(pb::privacy_service_client::PrivacyServiceClient::new(c).lift_restriction(req(
            key,
            tenant_header,
            pb::SubjectRef { subject_id: u.clone(), tenant_id: ids.tenant.clone() }
        ))),
        "GrantConsent" => go!(pb::privacy_service_client::PrivacyServiceClient::new(c).grant_consent(req(
            key,
            tenant_header,
            pb::ConsentRequest {
                subject_id: u.clone(),
                tenant_id: ids.tenant.clone(),
                purpose: "geolocation".into(),
                policy_version: "1".into()
            }
        ))),
        "WithdrawConsent" => go!(pb::privacy_service_client::PrivacyServiceClient::new(c).withdraw_consent(req(
            key,
            tenant_header,
            pb::ConsentRequest {
                subject_id: u.clone(),
                tenant_id: ids.tenant.clone(),
                purpose: "geolocation".into(),
                policy_version: String::new()
            }
        ))),
        "CreatePype" => go!(Py::new(c).create_pype(req(
            key,
            tenant_header,
            pb::CreatePypeRequest { name: "P".into(), ..Default::default() }
        ))),
        "GetPype" => go!(Py::new(c).get_pype(req(key, tenant_header, pb::GetPypeRequest { pype_id: p }))),
        // Webhooks: `ids.session` stands for another tenant's endpoint id.
        "CreateWebhook" => go!(Wh::new(c).create_webhook(req(
            key,
            tenant_header,
            pb::CreateWebhookRequest { url: "https://93.184.215.14/hooks".into(), ..Default::default() }
        ))),
        "GetWebhook" => go!(Wh::new(c).get_webhook(req(key, tenant_header, pb::GetWebhookRequest { webhook_id: s }))),
        "ListWebhooks" => go!(Wh::new(c).list_webhooks(req(key, tenant_header, pb::ListWebhooksRequest {}))),
        "RotateWebhookSecret" => go!(Wh::new(c).rotate_webhook_secret(req(
            key,
            tenant_header,
            pb::RotateWebhookSecretRequest { webhook_id: s, overlap_secs: 0 }
        ))),
        "ResumeWebhook" => {
            go!(Wh::new(c).resume_webhook(req(key, tenant_header, pb::GetWebhookRequest { webhook_id: s })))
        }
        "DeleteWebhook" => {
            go!(Wh::new(c).delete_webhook(req(key, tenant_header, pb::GetWebhookRequest { webhook_id: s })))
        }
        "RedeliverWebhook" => go!(Wh::new(c).redeliver_webhook(req(
            key,
            tenant_header,
            pb::RedeliverWebhookRequest { webhook_id: s, from_micros: 1, to_micros: 2 }
        ))),
        "AssignMember" => go!(Py::new(c).assign_member(req(
            key,
            tenant_header,
            pb::AssignMemberRequest {
                pype_id: p,
                member_id: u,
                kind: pb::ParticipantKind::Agent as i32,
                assigned: true
            }
        ))),
        "ArchivePype" => go!(Py::new(c).archive_pype(req(key, tenant_header, pb::ArchivePypeRequest { pype_id: p }))),
        "StartSession" => go!(Se::new(c).start_session(req(
            key,
            tenant_header,
            pb::StartSessionRequest { pype_id: p, end_user_id: u, timers: None, ..Default::default() }
        ))),
        "PostMessage" => go!(Se::new(c).post_message(req(
            key,
            tenant_header,
            pb::PostMessageRequest { session_id: s, sender_id: u, body: "hi".into(), ..Default::default() }
        ))),
        "AdvanceReadHorizon" => go!(Se::new(c).advance_read_horizon(req(
            key,
            tenant_header,
            pb::AdvanceReadHorizonRequest { session_id: s, participant_id: u, up_to: 1, private: false }
        ))),
        "JoinSession" => go!(Se::new(c).join_session(req(
            key,
            tenant_header,
            pb::JoinSessionRequest {
                session_id: s,
                participant_id: uuid::Uuid::now_v7().to_string(),
                kind: pb::ParticipantKind::Agent as i32
            }
        ))),
        "LeaveSession" => go!(Se::new(c).leave_session(req(
            key,
            tenant_header,
            pb::LeaveSessionRequest { session_id: s, participant_id: u }
        ))),
        "CloseSession" => {
            go!(Se::new(c).close_session(req(key, tenant_header, pb::CloseSessionRequest { session_id: s })))
        }
        "GetSession" => go!(Se::new(c).get_session(req(key, tenant_header, pb::GetSessionRequest { session_id: s }))),
        "ListSessions" => go!(Se::new(c).list_sessions(req(
            key,
            tenant_header,
            pb::ListSessionsRequest { pype_id: p, ..Default::default() }
        ))),
        "WatchSession" => match Se::new(c)
            .watch_session(req(key, tenant_header, pb::WatchSessionRequest { session_id: s, from_version: 0 }))
            .await
        {
            Ok(stream) => first_item(stream.into_inner()).await,
            Err(e) => Err(e),
        },
        "SubscribeTenantEvents" => match pb::integration_service_client::IntegrationServiceClient::new(c)
            .subscribe_tenant_events(req(
                key,
                tenant_header,
                pb::SubscribeTenantEventsRequest {
                    from: Some(pb::subscribe_tenant_events_request::From::FromStart(true)),
                    session_id: s,
                    ..Default::default()
                },
            ))
            .await
        {
            Ok(stream) => first_item(stream.into_inner()).await,
            Err(e) => Err(e),
        },
        "ExportTenant" => match pb::integration_service_client::IntegrationServiceClient::new(c)
            .export_tenant(req(key, tenant_header, pb::ExportTenantRequest::default()))
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut all = String::new();
                loop {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.message()).await {
                        Ok(Ok(Some(m))) => all.push_str(&format!("{m:?}")),
                        Ok(Ok(None)) | Err(_) => break Ok(all),
                        Ok(Err(e)) => break Err(e),
                    }
                }
            }
            Err(e) => Err(e),
        },
        "RegisterSubject" => go!(Su::new(c).register_subject(req(
            key,
            tenant_header,
            pb::RegisterSubjectRequest {
                username: format!("u{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
                email: "x@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            }
        ))),
        "InviteSubject" => go!(Su::new(c).invite_subject(req(
            key,
            tenant_header,
            pb::InviteSubjectRequest { email: "y@example.com".into() }
        ))),
        "OnboardSubject" => go!(Su::new(c).onboard_subject(req(
            key,
            tenant_header,
            pb::OnboardSubjectRequest {
                subject_id: u,
                username: "someone".into(),
                attested_at_least_13: true,
                ..Default::default()
            }
        ))),
        "GetSubject" => go!(Su::new(c).get_subject(req(key, tenant_header, pb::GetSubjectRequest { subject_id: u }))),
        "DeactivateSubject" => {
            go!(Su::new(c).deactivate_subject(req(key, tenant_header, pb::DeactivateSubjectRequest { subject_id: u })))
        }
        "ReactivateSubject" => {
            go!(Su::new(c).reactivate_subject(req(key, tenant_header, pb::ReactivateSubjectRequest { subject_id: u })))
        }
        "SetPassword" => go!(Su::new(c).set_password(req(
            key,
            tenant_header,
            pb::SetPasswordRequest { subject_id: u, password: "a long password".into() }
        ))),
        "Login" => go!(Au::new(c).login(req(
            key,
            tenant_header,
            pb::LoginRequest { username: "someone".into(), password: "a long password".into() }
        ))),
        "Introspect" => {
            go!(Au::new(c).introspect(req(key, tenant_header, pb::IntrospectRequest { token: "pypes_eu_00".into() })))
        }
        "Logout" => go!(Au::new(c).logout(req(key, tenant_header, pb::LogoutRequest { token: "pypes_eu_00".into() }))),
        "GetSessionView" => {
            go!(Vi::new(c).get_session_view(req(key, tenant_header, pb::GetSessionViewRequest { session_id: s })))
        }
        "ListMessages" => go!(Vi::new(c).list_messages(req(
            key,
            tenant_header,
            pb::ListMessagesRequest { session_id: s, ..Default::default() }
        ))),
        "ListEndUsers" => go!(Vi::new(c).list_end_users(req(key, tenant_header, pb::ListEndUsersRequest::default()))),
        "GetPypeOverview" => {
            go!(Vi::new(c).get_pype_overview(req(key, tenant_header, pb::GetPypeOverviewRequest { pype_id: p })))
        }
        "QueryAnalytics" => go!(An::new(c).query_analytics(req(
            key,
            tenant_header,
            pb::QueryAnalyticsRequest {
                pype_id: p,
                granularity: pb::Granularity::Hour as i32,
                from_micros: 0,
                to_micros: i64::MAX / 2
            }
        ))),
        "RequestErasure" => go!(Er::new(c).request_erasure(req(
            key,
            tenant_header,
            pb::RequestErasureRequest { subject_id: u, tenant_id: ids.tenant.clone() }
        ))),
        "GetErasure" => go!(Er::new(c).get_erasure(req(
            key,
            tenant_header,
            pb::GetErasureRequest { subject_id: u, tenant_id: ids.tenant.clone() }
        ))),
        "AddStaff" => go!(St::new(c).add_staff(req(
            key,
            tenant_header,
            pb::AddStaffRequest { role: pb::StaffRole::Support as i32 }
        ))),
        "RotateStaffKey" => go!(St::new(c).rotate_staff_key(req(key, tenant_header, pb::StaffRef { staff_id: u }))),
        "DisableStaff" => go!(St::new(c).disable_staff(req(key, tenant_header, pb::StaffRef { staff_id: u }))),
        "ListStaff" => go!(St::new(c).list_staff(req(key, tenant_header, pb::ListStaffRequest {}))),
        "OpenBreakGlass" => go!(St::new(c).open_break_glass(req(
            key,
            tenant_header,
            pb::OpenBreakGlassRequest {
                tenant_id: ids.tenant.clone(),
                reason: "ticket SUP-1 check".into(),
                duration_secs: 600
            }
        ))),
        "CloseBreakGlass" => {
            go!(St::new(c).close_break_glass(req(key, tenant_header, pb::CloseBreakGlassRequest { grant_id: u })))
        }
        "ScopeAccess" => go!(St::new(c).scope_access(req(
            key,
            tenant_header,
            pb::ScopeAccessRequest { actor: "admin".into(), from_micros: 1, to_micros: 0 }
        ))),
        "BeginMove" => go!(Rg::new(c).begin_move(req(
            key,
            tenant_header,
            pb::BeginMoveRequest { tenant_id: ids.tenant.clone(), to_region: "us".into() }
        ))),
        "ReadMove" => {
            match Rg::new(c).read_move(req(key, tenant_header, pb::MoveRef { tenant_id: ids.tenant.clone() })).await {
                Ok(stream) => first_item(stream.into_inner()).await,
                Err(e) => Err(e),
            }
        }
        "WriteMove" => {
            let part = pb::MovePart {
                tenant_id: ids.tenant.clone(),
                part: Some(pb::move_part::Part::Keys(pb::MoveKeys::default())),
            };
            go!(Rg::new(c).write_move(req(key, tenant_header, tokio_stream::iter(vec![part]))))
        }
        "MoveDigest" => {
            go!(Rg::new(c).move_digest(req(key, tenant_header, pb::MoveRef { tenant_id: ids.tenant.clone() })))
        }
        "FinishMove" => go!(Rg::new(c).finish_move(req(
            key,
            tenant_header,
            pb::FinishMoveRequest { tenant_id: ids.tenant.clone(), destination_digest: "sha256:00".into() }
        ))),
        "AdoptMove" => go!(Rg::new(c).adopt_move(req(
            key,
            tenant_header,
            pb::AdoptMoveRequest { tenant_id: ids.tenant.clone(), undelivered: Vec::new() }
        ))),
        other => panic!("no call for {other}"),
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

/// The server's `/metrics` answer (headers and Prometheus text).
pub async fn metrics_text(http: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// One counter or gauge without labels from a `/metrics` text.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until every projection has applied the whole log (its lag in
/// `/metrics` is 0 for each), so a measurement that follows is not mixed
/// with the catch-up of the read models.
pub async fn wait_projections_caught_up(http: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let body = metrics_text(http).await;
        let lags: Vec<u64> = body
            .lines()
            .filter(|l| l.starts_with("pypes_projection_lag_positions{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if !lags.is_empty() && lags.iter().all(|&l| l == 0) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "projections still behind after 120 s: {lags:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The peak resident memory of process `pid` (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Waits until the erasure of `subject` is certified.
pub async fn wait_certified(c: &mut Clients, key: &str, subject: &str) -> pb::ErasureStatus {
    let get = pb::GetErasureRequest { subject_id: subject.into(), ..Default::default() };
    for _ in 0..500 {
        let s = c.erasure.get_erasure(authed(key, get.clone())).await.unwrap().into_inner();
        if s.step == "certified" {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("never certified");
}

/// Every message of a Session, in order, page by page.
pub async fn all_messages(ch: &Channel, key: &str, session: &str) -> Vec<pb::Message> {
    let mut views = pb::view_service_client::ViewServiceClient::new(ch.clone());
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = views
            .list_messages(authed(
                key,
                pb::ListMessagesRequest { session_id: session.into(), after_seq: after, page_size: 500 },
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.messages);
        if page.next_after_seq == 0 {
            return out;
        }
        after = page.next_after_seq;
    }
}

/// Those of `files` whose bytes contain `needle` anywhere.
pub fn containing(files: &[std::path::PathBuf], needle: &str) -> Vec<std::path::PathBuf> {
    files
        .iter()
        .filter(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()))
        .cloned()
        .collect()
}

/// `/readyz` of `http`: (status code, the whole answer); 0 when it does not
/// answer within 5 s.
pub async fn readyz(http: &str) -> (u16, String) {
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(http)).await
    else {
        return (0, "no connection".into());
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET /readyz HTTP/1.0\r\nHost: {http}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, "write failed".into());
    }
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text)).await;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// Waits until `/readyz` of `http` answers `code` (the last answer).
pub async fn wait_readyz(http: &str, code: u16, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let (got, text) = readyz(http).await;
        if got == code {
            return text;
        }
        assert!(started.elapsed() < within, "{http}/readyz is not {code} after {within:?}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
