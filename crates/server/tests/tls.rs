//! TLS for gRPC and HTTP from PEM files; without them the server listens
//! on loopback only and says so; bad TLS configuration is named.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{ADMIN, authed, start_with};
use proto::api as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn pypes_serve(args: &[&str]) -> (bool, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--admin-key", ADMIN, "--data-dir"])
        .arg(data.path())
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_over_tls_and_nothing_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = start_with(
        data.path(),
        &[("PYPES_TLS_CERT", cert.to_str().unwrap()), ("PYPES_TLS_KEY", key.to_str().unwrap())],
    );
    let addr = server.grpc.strip_prefix("http://").unwrap().to_string();

    // gRPC over TLS, the server's certificate as the only root.
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cert_pem)).domain_name("localhost");
    let channel =
        Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel);
    let made = tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "Over TLS".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(made.api_key.starts_with("pypes_"));

    // A plaintext client gets nowhere.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await?;
        pb::tenant_service_client::TenantServiceClient::new(ch)
            .get_tenant(authed(ADMIN, pb::GetTenantRequest { tenant_id: String::new() }))
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(plain.await.is_err(), "plaintext gRPC was answered");

    // HTTPS health check.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&server.http).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Plain HTTP to the TLS port is not served.
    let mut tcp = tokio::net::TcpStream::connect(&server.http).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tcp.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP was answered");
}

#[test]
fn without_tls_only_loopback_and_bad_tls_files_are_named() {
    let (ok, out) = pypes_serve(&["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"]);
    assert!(!ok && out.contains("grpc_addr 0.0.0.0:0 is not a loopback address") && out.contains("TLS"), "{out}");
    let (ok, out) = pypes_serve(&["--grpc-addr", "127.0.0.1:0", "--http-addr", "0.0.0.0:0"]);
    assert!(!ok && out.contains("http_addr"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let (ok, out) = pypes_serve(&["--tls-cert", cert.to_str().unwrap()]);
    assert!(!ok && out.contains("without a key"), "{out}");
    let key = dir.path().join("missing-key.pem");
    let (ok, out) = pypes_serve(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("tls.key_file") && out.contains("missing-key.pem"), "{out}");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let (ok, out) = pypes_serve(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("tls.cert_file"), "{out}");
}
