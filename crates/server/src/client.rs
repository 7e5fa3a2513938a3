//! How the client commands (`demo`, `erase`, `export`, `privacy`,
//! `tenant`) reach a server: its URL, TLS and the admin key, from flags,
//! then environment variables, then the `[client]` section of the same
//! `--config` file `serve` reads (docs/operations.md). Errors name the
//! cause and the fix in one sentence.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::config::FileConfig;

/// The flags every client command takes (the same names everywhere).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// The configuration file `serve` reads: its `[client]` section
    /// (url, ca_cert, admin_key_file) and its `data_dir`.
    #[arg(long, env = "PYPES_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The server: `https://host:port` (TLS, the server's name is checked)
    /// or `http://127.0.0.1:port`; a bare `host:port` means https, or http
    /// on a loopback address. Default http://127.0.0.1:50051.
    #[arg(long = "server", visible_alias = "grpc", env = "PYPES_GRPC_URL", global = true)]
    pub server: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate; by
    /// default the system's trust store.
    #[arg(long, env = "PYPES_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// The platform admin key (prefer --admin-key-file: flags are visible in `ps`).
    #[arg(long, env = "PYPES_ADMIN_KEY", hide_env_values = true, global = true)]
    pub admin_key: Option<String>,
    /// A file holding the admin key (default: <data-dir>/admin.key).
    #[arg(long, env = "PYPES_ADMIN_KEY_FILE", global = true)]
    pub admin_key_file: Option<PathBuf>,
    /// The server's data directory, where admin.key is looked for when no
    /// key is given (default: the config file's data_dir, else ./data).
    #[arg(long, env = "PYPES_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Where and how to reach the server, resolved.
#[derive(Debug, Clone)]
pub struct Client {
    /// The URL connected to (always with a scheme).
    pub url: String,
    tls: Option<ClientTlsConfig>,
    admin_key: AdminKey,
    pub data_dir: PathBuf,
}

#[derive(Clone)]
enum AdminKey {
    Given(String),
    File { path: PathBuf, named: bool },
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminKey::Given(_) => f.write_str("Given([redacted])"),
            AdminKey::File { path, .. } => write!(f, "File({})", path.display()),
        }
    }
}

/// Is `host` (no port, brackets stripped) a loopback name or address?
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `url` with a scheme, and its host: `host:port` becomes https, or http on
/// loopback; anything but http/https is refused naming the URL.
pub fn normalize_url(url: &str) -> anyhow::Result<(String, String)> {
    let url = url.trim();
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        let host = url.rsplit_once(':').map_or(url, |(h, _)| h);
        if is_loopback(host) { format!("http://{url}") } else { format!("https://{url}") }
    };
    let uri: tonic::codegen::http::Uri = with_scheme.parse().map_err(|e| {
        anyhow::anyhow!("--server {url:?} is not a URL ({e}); give https://host:port, or http://127.0.0.1:port")
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        other => anyhow::bail!(
            "--server {url:?}: the scheme {:?} is not offered; give https://host:port (TLS) or http://127.0.0.1:port",
            other.unwrap_or("")
        ),
    }
    let Some(host) = uri.host() else { anyhow::bail!("--server {url:?} names no host; give https://host:port") };
    if uri.port_u16().is_none() {
        anyhow::bail!("--server {url:?} names no port; the gRPC port is 50051 unless grpc_addr says otherwise");
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        anyhow::bail!("--server {url:?}: a server URL has no path; give https://host:port");
    }
    Ok((with_scheme, host.trim_start_matches('[').trim_end_matches(']').to_string()))
}

impl ClientArgs {
    /// Flags over environment over the config file's `[client]` section over defaults.
    pub fn resolve(&self) -> anyhow::Result<Client> {
        let file = match &self.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let data_dir = self.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("./data"));
        let given = self.server.clone().or(file.client.url.clone());
        let (url, host) = normalize_url(given.as_deref().unwrap_or("http://127.0.0.1:50051"))?;
        let ca = self.ca_cert.clone().or(file.client.ca_cert.clone());
        let tls = if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().domain_name(host);
            tls = match &ca {
                Some(path) => tls.ca_certificate(read_ca(path)?),
                None => tls.with_native_roots(),
            };
            Some(tls)
        } else {
            if let Some(path) = &ca {
                anyhow::bail!(
                    "--ca-cert {} is for TLS, but the server URL {url} is http://; use https://",
                    path.display()
                );
            }
            None
        };
        let admin_key = match (self.admin_key.clone(), self.admin_key_file.clone().or(file.client.admin_key_file)) {
            (Some(k), _) => AdminKey::Given(k),
            (None, Some(path)) => AdminKey::File { path, named: true },
            (None, None) => match file.admin_key {
                Some(k) => AdminKey::Given(k),
                None => AdminKey::File { path: data_dir.join("admin.key"), named: false },
            },
        };
        Ok(Client { url, tls, admin_key, data_dir })
    }
}

fn read_ca(path: &Path) -> anyhow::Result<Certificate> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--ca-cert {}: not a PEM certificate ({e})", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--ca-cert {}: no CERTIFICATE in it; give the CA's PEM file", path.display());
    }
    Ok(Certificate::from_pem(pem))
}

impl Client {
    /// A channel to the server, or one sentence on why not and what to do.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(self.url.clone())
            .map_err(|e| anyhow::anyhow!("--server {}: {e}", self.url))?
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| anyhow::anyhow!("TLS for {}: {e}", self.url))?;
        }
        endpoint.connect().await.map_err(|e| connect_error(&self.url, &e))
    }

    /// The admin key: given, or read from its file.
    pub fn admin_key(&self) -> anyhow::Result<String> {
        match &self.admin_key {
            AdminKey::Given(k) => Ok(k.trim().to_string()),
            AdminKey::File { path, named } => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    if *named {
                        anyhow::anyhow!("admin key file {}: {e}", path.display())
                    } else {
                        anyhow::anyhow!(
                            "no admin key: {} cannot be read ({e}); give --admin-key-file, PYPES_ADMIN_KEY, \
                             or [client] admin_key_file in --config",
                            path.display()
                        )
                    }
                })?;
                let key = text.trim().to_string();
                if key.is_empty() {
                    anyhow::bail!("admin key file {} is empty", path.display());
                }
                Ok(key)
            }
        }
    }
}

/// The innermost cause of an error chain, as text.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn connect_error(url: &str, e: &tonic::transport::Error) -> anyhow::Error {
    let cause = root_cause(e);
    let lower = cause.to_lowercase();
    let fix = if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "the server's certificate does not hold the host name of the URL: connect by a name the certificate holds"
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") || lower.contains("certificate") {
        "the server's certificate is not trusted: give --ca-cert with the CA that signed it"
    } else if lower.contains("refused") {
        "nothing listens there: is `pypes serve` running, and is the port its grpc_addr?"
    } else if lower.contains("corrupt message")
        || lower.contains("wrong version")
        || lower.contains("invalidcontenttype")
    {
        "the server does not speak TLS there: use http:// for a server without TLS"
    } else if lower.contains("dns") || lower.contains("resolve") || lower.contains("lookup") {
        "the host name does not resolve"
    } else if lower.contains("timed out") || lower.contains("elapsed") {
        "no answer within 10 s: check the address and the network"
    } else {
        "check the URL, and for https:// the CA certificate"
    };
    anyhow::anyhow!("cannot reach the server at {url}: {cause}; {fix}")
}

/// The canonical gRPC name of a code, as in the docs (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A refusal from the server as one sentence: what was asked, the code,
/// the server's message and, where there is one, the fix.
pub fn refused(what: &str, s: &tonic::Status) -> anyhow::Error {
    let message = s.message().trim();
    let lower = message.to_lowercase();
    let fix = match s.code() {
        tonic::Code::Unauthenticated => {
            "; check the admin key (--admin-key-file, PYPES_ADMIN_KEY or [client] admin_key_file): it is the one in the server's admin.key"
        }
        tonic::Code::PermissionDenied => "; this key's role may not do this",
        tonic::Code::Unavailable
            if lower.contains("h2 protocol") || lower.contains("frame") || lower.contains("connection") =>
        {
            "; if the server uses TLS, connect with https:// (and --ca-cert)"
        }
        tonic::Code::Unavailable => "; the server is not ready or not reachable: try again, or check /readyz",
        tonic::Code::Unknown if lower.contains("error reading a body") || lower.contains("connection reset") => {
            "; the connection broke in the middle of the answer (did the server stop?): try again"
        }
        tonic::Code::Unknown
            if lower.contains("h2 protocol") || lower.contains("http2") || lower.contains("transport error") =>
        {
            "; if the server uses TLS, connect with https:// (and --ca-cert)"
        }
        _ => "",
    };
    let message = if message.is_empty() { "no message" } else { message };
    anyhow::anyhow!("{what}: the server answered {} ({message}){fix}", code_name(s.code()))
}

/// Asks on a terminal before a destructive step; scripts pass `--yes`.
/// Without a terminal and without `--yes` the step is refused.
pub fn confirm(yes: bool, what: &str, word: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        anyhow::bail!("{what}: not confirmed; this cannot be undone, so in a script pass --yes");
    }
    eprint!("{what}. This cannot be undone. Type {word:?} to go on: ");
    let mut line = String::new();
    stdin.read_line(&mut line).context("reading the confirmation")?;
    if line.trim() != word {
        anyhow::bail!("{what}: not confirmed; nothing was done");
    }
    Ok(())
}

/// Creates (or truncates) `path` readable and writable by its owner only:
/// for files of personal data (exports).
pub fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // An existing file keeps its mode on open: narrow it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private (0600)", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_or_refused_by_name() {
        assert_eq!(normalize_url("127.0.0.1:50051").unwrap().0, "http://127.0.0.1:50051");
        assert_eq!(normalize_url("localhost:50051").unwrap().0, "http://localhost:50051");
        assert_eq!(normalize_url("[::1]:50051").unwrap(), ("http://[::1]:50051".into(), "::1".into()));
        assert_eq!(
            normalize_url("pypes.example.com:443").unwrap(),
            ("https://pypes.example.com:443".into(), "pypes.example.com".into())
        );
        assert_eq!(normalize_url("https://db1:50051").unwrap().1, "db1");
        for (bad, says) in [
            ("ftp://x:1", "scheme"),
            ("https://x", "no port"),
            ("https://x:1/api", "no path"),
            ("http://", "not a URL"),
        ] {
            let e = normalize_url(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_refusal_is_one_sentence_with_the_fix() {
        let e = refused("erasing", &tonic::Status::unauthenticated("bad key")).to_string();
        assert!(e.starts_with("erasing: the server answered UNAUTHENTICATED (bad key); check the admin key"), "{e}");
        assert!(!e.contains("MetadataMap"), "{e}");
        // A server that stops mid-answer is not a TLS mismatch.
        let broke = tonic::Status::unknown("h2 protocol error: error reading a body from connection");
        let e = refused("copying", &broke).to_string();
        assert!(e.contains("the connection broke") && !e.contains("https://"), "{e}");
    }

    #[test]
    fn confirmation_without_a_terminal_needs_yes() {
        assert!(confirm(true, "x", "y").is_ok());
        // The test harness's stdin is not a terminal.
        if !std::io::stdin().is_terminal() {
            let e = confirm(false, "erasing subject s", "erase").unwrap_err().to_string();
            assert!(e.contains("pass --yes"), "{e}");
        }
    }

    #[test]
    fn private_files_are_0600_even_when_they_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("export.json");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&p).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
