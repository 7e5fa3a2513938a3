//! The operator CLI against a server that uses TLS, as in production:
//! every client command over `https://` with the CA and the server's name
//! checked, the `[client]` section of the config file, `--json`,
//! confirmations, private export files; and every bad input named in one
//! sentence with a non-zero exit (issue 22).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{ADMIN, authed, start_with};
use proto::api as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

struct Tls {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    admin_key_file: PathBuf,
}

fn tls_files() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let admin_key_file = dir.path().join("admin.key");
    std::fs::write(&admin_key_file, format!("{ADMIN}\n")).unwrap();
    Tls { _dir: dir, cert, key, admin_key_file }
}

/// Runs `pypes` with `args`, stdin not a terminal, no PYPES_* from the test's environment but `env`.
fn pypes(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pypes"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PYPES_") {
            c.env_remove(k);
        }
    }
    c.args(args).envs(env.iter().copied()).env("RUST_LOG", "error").stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[track_caller]
fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "failed: {t}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Fails with one line on stderr holding every `needles`, and no Rust debug formatting.
#[track_caller]
fn refused(o: Output, needles: &[&str]) -> String {
    let t = text(&o);
    assert!(!o.status.success(), "succeeded: {t}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    for debug in ["MetadataMap", "Status {", "Some(", "Os {"] {
        assert!(!err.contains(debug), "debug formatting {debug:?} in {err}");
    }
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

async fn tls_channel(url: &str, cert: &Path) -> Channel {
    let pem = std::fs::read(cert).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)).domain_name("localhost");
    Channel::from_shared(url.to_string()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_works_against_a_tls_server() {
    let tls = tls_files();
    let data = tempfile::tempdir().unwrap();
    let server = start_with(
        data.path(),
        &[("PYPES_TLS_CERT", tls.cert.to_str().unwrap()), ("PYPES_TLS_KEY", tls.key.to_str().unwrap())],
    );
    let port = server.grpc.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let (ca, admin_file) = (tls.cert.to_str().unwrap(), tls.admin_key_file.to_str().unwrap());
    let flags = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["--server", &url, "--ca-cert", ca, "--admin-key-file", admin_file].map(String::from));
        v
    };
    let run = |extra: &[&str]| {
        let args = flags(extra);
        pypes(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };

    // A tenant, a Pype, an end user with a Session, over TLS.
    let channel = tls_channel(&url, &tls.cert).await;
    let mut tenants = pb::tenant_service_client::TenantServiceClient::new(channel.clone());
    let made = tenants
        .create_tenant(authed(ADMIN, pb::CreateTenantRequest { name: "CLI".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let tenant = made.tenant.unwrap().tenant_id;
    let mut subjects = pb::subject_service_client::SubjectServiceClient::new(channel.clone());
    let subject = subjects
        .register_subject(authed(
            &made.api_key,
            pb::RegisterSubjectRequest {
                username: "ada".into(),
                email: "ada@example.com".into(),
                attested_at_least_13: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .subject_id;

    // --version names the commit and the build.
    let v = ok(pypes(&["--version"], &[]));
    assert!(v.contains("commit:") && v.contains("profile:") && v.contains("features:"), "{v}");

    // demo: the whole scenario over TLS.
    let out = ok(run(&["demo"]));
    assert!(out.contains("demo finished"), "{out}");

    // The [client] section of the config file instead of flags.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pypes.toml");
    std::fs::write(
        &config,
        format!("[client]\nurl = \"{url}\"\nca_cert = \"{ca}\"\nadmin_key_file = \"{admin_file}\"\n"),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = ok(pypes(
        &[
            "privacy",
            "--config",
            cfg,
            "--tenant",
            &tenant,
            "--subject",
            &subject,
            "grant",
            "--purpose",
            "geolocation",
            "--policy-version",
            "v1",
        ],
        &[],
    ));
    assert!(out.contains("consent granted") && out.contains("geolocation granted (policy v1)"), "{out}");

    // privacy actions, --json.
    let p = |action: &[&str]| {
        let mut a = vec!["privacy", "--tenant", &tenant, "--subject", &subject, "--json"];
        a.extend_from_slice(action);
        json(&ok(run(&a)))
    };
    assert_eq!(p(&["restrict"])["restricted"], true);
    assert_eq!(p(&["lift"])["restricted"], false);
    assert_eq!(p(&["rectify", "--email", "ada@new.example"])["done"], "rectified");
    let w = p(&["withdraw", "--purpose", "geolocation"]);
    assert_eq!(w["consents"][0]["granted"], false, "{w}");

    // export: a file of personal data, 0600.
    let export = dir.path().join("export.json");
    ok(run(&["export", "--tenant", &tenant, "--subject", &subject, "--out", export.to_str().unwrap()]));
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&export).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let exported = json(&std::fs::read_to_string(&export).unwrap());
    assert!(exported.to_string().contains(&subject));

    // offboarding --out before a certificate exists: an error, nothing written.
    let cert_out = dir.path().join("offboarding.json");
    refused(
        run(&["tenant", "offboarding", "--tenant", &tenant, "--out", cert_out.to_str().unwrap()]),
        &["no offboarding certificate yet", "nothing was written"],
    );
    assert!(!cert_out.exists());

    // erase: refused without confirmation (stdin is not a terminal) ...
    refused(run(&["erase", "--tenant", &tenant, "--subject", &subject]), &["not confirmed", "--yes"]);
    refused(run(&["erase", "--status", "--tenant", &tenant, "--subject", &subject]), &["NOT_FOUND"]);
    // ... done with --yes; the certificate written and verified.
    let cert = dir.path().join("erasure.json");
    let e = json(&ok(run(&[
        "erase",
        "--yes",
        "--json",
        "--tenant",
        &tenant,
        "--subject",
        &subject,
        "--out",
        cert.to_str().unwrap(),
    ])));
    assert_eq!(e["step"], "certified", "{e}");
    assert_eq!(e["certificate"]["format"], "pypes-erasure-certificate/v1", "{e}");
    let public_key = e["public_key"].as_str().unwrap().to_string();
    let out = ok(pypes(&["erase", "--verify", cert.to_str().unwrap(), "--public-key", &public_key], &[]));
    assert!(out.contains("signature valid"), "{out}");
    let status = json(&ok(run(&["erase", "--status", "--json", "--tenant", &tenant, "--subject", &subject])));
    assert_eq!(status["step"], "certified");
    // A changed certificate does not verify.
    let changed = std::fs::read_to_string(&cert).unwrap().replacen(&subject, &uuid::Uuid::now_v7().to_string(), 1);
    std::fs::write(&cert, changed).unwrap();
    refused(
        pypes(&["erase", "--verify", cert.to_str().unwrap(), "--public-key", &public_key], &[]),
        &["does not verify"],
    );

    // tenant cancel: asks, then with --yes.
    refused(run(&["tenant", "cancel", "--tenant", &tenant]), &["not confirmed", "--yes"]);
    let c = json(&ok(run(&["tenant", "cancel", "--yes", "--json", "--tenant", &tenant])));
    assert!(c["cancelled"].is_string() && c["kek_shred_due"].is_string(), "{c}");
    let o = ok(run(&["tenant", "offboarding", "--tenant", &tenant]));
    assert!(o.contains("kek_shred_due:") && o.contains(&tenant), "{o}");

    // Bad connections, each one sentence with the fix.
    let plain = |extra: &[&str], args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--admin-key-file", admin_file]);
        pypes(&a, &[])
    };
    let sub = ["privacy", "--tenant", tenant.as_str(), "--subject", subject.as_str(), "lift"];
    refused(plain(&["--server", &url], &sub), &["not trusted", "--ca-cert"]);
    let by_ip = format!("https://127.0.0.1:{port}");
    refused(plain(&["--server", &by_ip, "--ca-cert", ca], &sub), &["does not hold the host name"]);
    let in_clear = format!("http://localhost:{port}");
    refused(plain(&["--server", &in_clear], &sub), &["https://"]);
    refused(plain(&["--server", "ftp://localhost:1"], &sub), &["scheme"]);
    refused(plain(&["--server", &url, "--ca-cert", admin_file], &sub), &["--ca-cert", "no CERTIFICATE"]);
    refused(plain(&["--server", &in_clear, "--ca-cert", ca], &sub), &["is for TLS"]);
    let lift_with = |extra: &[&str]| {
        let mut a = vec!["privacy", "--tenant", tenant.as_str(), "--subject", subject.as_str(), "lift"];
        a.extend_from_slice(&["--server", url.as_str(), "--ca-cert", ca]);
        a.extend_from_slice(extra);
        pypes(&a, &[])
    };
    refused(lift_with(&["--data-dir", "/nonexistent"]), &["no admin key", "--admin-key-file"]);
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "f".repeat(64)).unwrap();
    refused(lift_with(&["--admin-key-file", wrong.to_str().unwrap()]), &["UNAUTHENTICATED", "check the admin key"]);
    refused(
        pypes(&["demo"], &[("PYPES_GRPC_URLL", "x")]),
        &["PYPES_GRPC_URLL is not a pypes setting", "did you mean PYPES_GRPC_URL"],
    );
    drop(server);
}

#[test]
fn serve_refuses_what_is_not_its_own_and_leaves_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let serve = |data: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut a = vec!["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"];
        let d = data.to_str().unwrap().to_string();
        a.push(&d);
        a.extend_from_slice(extra);
        pypes(&a, env)
    };

    // A directory holding someone else's files.
    let checkout = t.path().join("checkout");
    std::fs::create_dir_all(checkout.join(".git")).unwrap();
    std::fs::write(checkout.join("README.md"), "mine").unwrap();
    refused(serve(&checkout, &[], &[]), &["is not a pypes data directory", ".git, README.md"]);
    let mut left: Vec<String> =
        std::fs::read_dir(&checkout).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, vec![".git", "README.md"], "nothing written into it");

    // A log/ folder of something else.
    let other = t.path().join("other");
    std::fs::create_dir_all(other.join("log")).unwrap();
    std::fs::write(other.join("log/app.log"), "").unwrap();
    refused(serve(&other, &[], &[]), &["log/app.log"]);

    // A port in use: refused before the data directory is made.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let fresh = t.path().join("fresh");
    let mut a = vec!["serve", "--grpc-addr", busy_addr.as_str(), "--http-addr", "127.0.0.1:0", "--data-dir"];
    let f = fresh.to_str().unwrap().to_string();
    a.push(&f);
    refused(pypes(&a, &[]), &["binding gRPC to", "grpc_addr"]);
    assert!(!fresh.exists(), "the data directory was made before the listener bound");

    // A misspelt variable is refused, not ignored.
    refused(
        serve(&fresh, &[], &[("PYPES_GRPC_ADR", "127.0.0.1:1")]),
        &["PYPES_GRPC_ADR", "did you mean PYPES_GRPC_ADDR"],
    );
    assert!(!fresh.exists());

    // A listen address with a host name; a first start makes and marks the directory.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pypes"))
        .args(["serve", "--grpc-addr", "localhost:0", "--http-addr", "localhost:0", "--data-dir"])
        .arg(&fresh)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("pypes listening grpc=127.0.0.1:"), "{line}");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    let marker = std::fs::read_to_string(fresh.join("pypes-data.toml")).unwrap();
    assert!(marker.contains("format = 1"), "{marker}");

    // The tools read data_dir from the same config file as serve.
    let config = t.path().join("pypes.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\n", fresh.display())).unwrap();
    let out = ok(pypes(&["audit", "verify", "--config", config.to_str().unwrap()], &[]));
    assert!(!out.is_empty(), "{out}");
    refused(pypes(&["audit", "verify", "--data-dir", t.path().join("nothing").to_str().unwrap()], &[]), &[]);

    // admin.key gone with the data still there: refused, not replaced.
    std::fs::remove_file(fresh.join("admin.key")).unwrap();
    refused(serve(&fresh, &[], &[]), &["admin.key is missing", "does not make a new admin key"]);
    assert!(!fresh.join("admin.key").exists());

    // A data directory of a newer format.
    std::fs::write(fresh.join("pypes-data.toml"), "format = 2\n").unwrap();
    refused(serve(&fresh, &["--admin-key", ADMIN], &[]), &["format 2, written by a newer pypes"]);
}
