//! Helpers of the server's integration tests: the real `pypes` binary on
//! ephemeral ports, tonic clients, and a tenant with a Pype, an end user
//! and a Session.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use proto::api as pb;
use tonic::Request;
use tonic::transport::Channel;

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
    let mut child = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--admin-key", ADMIN, "--data-dir"])
        .arg(data)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pypes");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read the listen line");
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
        device: String::new(),
    }
}
