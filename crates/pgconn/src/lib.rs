//! Connections to PostgreSQL for every backend on it (the event log, the
//! key store and its provider's epochs, the SQL read models).
//!
//! The URL decides, as with libpq: `sslmode=require` (or `verify-ca`,
//! `verify-full`) connects over TLS and **always verifies** the server's
//! certificate and name, against the CA file named by `sslrootcert=` in
//! the URL, else by `PGSSLROOTCERT`, else the system's bundle
//! (`/etc/ssl/certs/ca-certificates.crt`). Without it (`disable`, or
//! `prefer`, the default) the connection is in the clear: pypes never
//! takes an unverified TLS connection for a secure one. docs/backends.md.
//!
//! A URL may name several hosts (`host=a,b` or `postgres://a,b/db`) with
//! `target_session_attrs=read-write`: every connection is made to the one
//! that takes writes, so after a failover a broken connection is made
//! again to the promoted standby. Unless the URL says otherwise, a
//! connection attempt gives up after [`CONNECT_TIMEOUT`] and a connection
//! whose server stopped answering (a cut network) is dropped within
//! [`DEAD_PEER_TIMEOUT`], so nothing waits on a dead peer for TCP's two
//! hours. [`is_unreachable`] tells those failures from the database's
//! answers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// A connection attempt's limit per host, unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long sent data may go unacknowledged, and how long an idle
/// connection may go without a keepalive answer, before the connection is
/// given up (unless the URL sets `tcp_user_timeout` or `keepalives_idle`).
pub const DEAD_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Session settings every connection asks the server for: a transaction
/// left idle (its client gone silent: a cut network, a frozen node) is
/// ended after 5 s and its locks released, and the server drops a
/// connection whose client stopped answering as the client does.
pub const SERVER_SIDE: &str = "-c idle_in_transaction_session_timeout=5000 -c tcp_keepalives_idle=5 \
     -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000";

/// Where a CA bundle is looked for when the URL and environment name none.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A connection's settings and its TLS connector, from a URL.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// Reads a URL (`postgres://…?…` or `key=value …`) into a client config
/// and a TLS connector. Errors name what is wrong (never the password).
pub fn target(url: &str) -> Result<Target, String> {
    let (url, root) = split_tls_options(url);
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| describe(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEAD_PEER_TIMEOUT);
    }
    if !url.contains("keepalives_idle") {
        config.keepalives_idle(DEAD_PEER_TIMEOUT / 2);
    }
    if !url.contains("keepalives_interval") {
        config.keepalives_interval(DEAD_PEER_TIMEOUT / 5);
    }
    // The server side of the same: a node cut off in the middle of a
    // transaction must not keep its locks (the event log's append lock
    // serialises every node's appends) until the server's TCP notices,
    // hours later. Settings the URL's `options` name win.
    let mut options = SERVER_SIDE.to_string();
    if let Some(theirs) = config.get_options() {
        options = format!("{options} {theirs}");
    }
    config.options(options);
    let tls = match config.get_ssl_mode() {
        SslMode::Require => {
            let path = root
                .or_else(|| std::env::var("PGSSLROOTCERT").ok().filter(|p| !p.is_empty()))
                .or_else(|| std::path::Path::new(SYSTEM_BUNDLE).exists().then(|| SYSTEM_BUNDLE.to_string()))
                .ok_or_else(|| {
                    "sslmode=require: name the CA of the server's certificate with sslrootcert= in the URL \
                     or PGSSLROOTCERT (no system bundle found either)"
                        .to_string()
                })?;
            PgTls::verifying(&path)?
        }
        // `prefer` would take whatever the server offers, verified or not:
        // in the clear unless the URL requires TLS.
        _ => {
            config.ssl_mode(SslMode::Disable);
            PgTls(None)
        }
    };
    Ok(Target { config, tls })
}

/// An error with its causes, for messages: tokio-postgres shows only the
/// kind ("error performing TLS handshake") and keeps the reason in the
/// source ("invalid peer certificate: UnknownIssuer").
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// True when `e` says the database could not be reached or the connection
/// broke (a stopped or failed-over server, a cut network, a server that
/// only reads: a standby, or a primary that was demoted) rather than that
/// the database answered with an error. Such a failure passes: the caller
/// answers "unavailable, retry", and the next attempt connects again. An
/// operation whose connection broke during its COMMIT may have been
/// committed; the caller cannot know.
pub fn is_unreachable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::READ_ONLY_SQL_TRANSACTION,
                SqlState::IDLE_SESSION_TIMEOUT,
            ]
            .contains(code);
    }
    // No answer from the server: a socket error, a refused or timed-out
    // connection, or no host that takes writes.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<io::Error>() {
            return true;
        }
        cause = c.source();
    }
    let text = e.to_string();
    text.starts_with("timeout") || text.starts_with("error connecting")
}

/// Takes `sslrootcert` out of a URL (tokio-postgres does not know it) and
/// reads libpq's `verify-ca`/`verify-full` as `require` (which here always
/// verifies the certificate and the name).
fn split_tls_options(url: &str) -> (String, Option<String>) {
    let mut root = None;
    let mut fix = |part: &str| -> Option<String> {
        match part.split_once('=') {
            Some(("sslrootcert", v)) => {
                root = Some(v.to_string());
                None
            }
            Some(("sslmode", "verify-ca" | "verify-full")) => Some("sslmode=require".to_string()),
            _ => Some(part.to_string()),
        }
    };
    if let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) {
        let kept: Vec<String> = query.split('&').filter_map(&mut fix).collect();
        let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        (url, root)
    } else {
        let kept: Vec<String> = url.split_whitespace().filter_map(&mut fix).collect();
        (kept.join(" "), root)
    }
}

/// The TLS connector for tokio-postgres and postgres: rustls on ring with
/// the given roots, or none (the config then says `sslmode=disable`).
#[derive(Clone)]
pub struct PgTls(Option<Arc<rustls::ClientConfig>>);

impl PgTls {
    /// Verifies servers against the CA certificates in the PEM file `path`.
    pub fn verifying(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("CA file {path}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("CA file {path}: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA file {path}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("CA file {path}: no certificate in it"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Some(Arc::new(config))))
    }

    /// Whether connections made with it use TLS.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, std::convert::Infallible> {
        // Called for every connection, TLS or not: the checks wait until a
        // handshake is due.
        Ok(PgTlsConnect { config: self.0.clone(), domain: domain.to_string() })
    }
}

/// One connection's TLS handshake.
pub struct PgTlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    domain: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
            let config = self.config.ok_or_else(|| invalid("TLS was not asked for (sslmode)".into()))?;
            let name = ServerName::try_from(self.domain.clone())
                .map_err(|e| invalid(format!("server name {:?}: {e}", self.domain)))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// A TLS stream to the server.
pub struct PgTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (SCRAM-SHA-256, not -PLUS).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_read_from_both_url_forms() {
        let (u, r) = split_tls_options("postgres://u:p@db:5432/x?sslmode=verify-full&sslrootcert=/ca.pem&user=a");
        assert_eq!((u.as_str(), r.as_deref()), ("postgres://u:p@db:5432/x?sslmode=require&user=a", Some("/ca.pem")));
        let (u, r) = split_tls_options("postgres://db/x?sslrootcert=/ca.pem");
        assert_eq!((u.as_str(), r.as_deref()), ("postgres://db/x", Some("/ca.pem")));
        let (u, r) = split_tls_options("host=db sslmode=verify-ca sslrootcert=/c.pem dbname=x");
        assert_eq!((u.as_str(), r.as_deref()), ("host=db sslmode=require dbname=x", Some("/c.pem")));
        let (u, r) = split_tls_options("host=db dbname=x");
        assert_eq!((u.as_str(), r), ("host=db dbname=x", None));
    }

    #[test]
    fn without_require_the_connection_is_in_the_clear() {
        for url in ["host=db dbname=x", "host=db sslmode=prefer", "postgres://db/x?sslmode=disable"] {
            let t = target(url).unwrap();
            assert_eq!(t.config.get_ssl_mode(), SslMode::Disable, "{url}");
            assert!(!t.tls.is_on());
        }
    }

    #[test]
    fn bad_tls_settings_are_named() {
        let e = target("host=db sslmode=require sslrootcert=/nonexistent/ca.pem").err().unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let e = target(&format!("host=db sslmode=require sslrootcert={}", empty.display())).err().unwrap();
        assert!(e.contains("no certificate"), "{e}");
        let e = target("host=db sslmode=sometimes").err().unwrap();
        assert!(e.contains("sslmode"), "{e}");
    }
}
