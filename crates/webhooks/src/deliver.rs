//! One delivery attempt: a POST of the signed body to the endpoint, with a
//! connect timeout and a deadline for the whole attempt (connect, TLS,
//! request, answer), redirects never followed, and at most
//! [`Limits::max_answer_bytes`] of the answer read (for the error report).
//! The outcome names what happened in words a tenant can act on.
//!
//! The client is HTTP/1.1 over TCP or TLS (rustls on ring, the system's
//! roots and an optional extra CA), written for this one exchange: the
//! attempt future does its own writes and reads on a connection it takes
//! from the client's idle set and puts back when the answer was read to
//! its end, so an attempt is polled by the task that awaits it and
//! nothing else (no connection task, no channel between them). See
//! `docs/integrations.md`, "What a delivery costs".
//!
//! - A host name is resolved at every connect and each of its addresses
//!   checked against the destination policy ([`resolve`]).
//! - A kept connection the endpoint closed while it was idle fails before
//!   any answer: the request is sent once more on a new connection (a
//!   delivery is at least once; a repeat carries the same event id).
//! - An answer is kept for reuse only when it was read to its end within
//!   the prefix (a `content-length`, or chunks ending within it) and did
//!   not say `connection: close`; any other connection is closed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
/// A URL, as [`Client::check`] gives it.
pub use url::Url;

use crate::target::{Policy, TargetError, check_url, resolve};

/// The limits of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to open the TCP connection.
    pub connect: Duration,
    /// Time for the whole attempt, from connect to the answer's status.
    pub attempt: Duration,
    /// Bytes of the answer read, at most (the rest is not read).
    pub max_answer_bytes: usize,
    /// Idle connections kept open per endpoint host: as many as attempts
    /// may be in flight to it, so a busy endpoint does not reconnect.
    pub idle_connections_per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            attempt: Duration::from_secs(10),
            max_answer_bytes: 4096,
            idle_connections_per_host: 8,
        }
    }
}

/// An idle connection is closed after this long unused.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// The most an answer's status line and headers may take.
const MAX_HEAD: usize = 16 * 1024;

/// Headers of an answer looked at, at most.
const MAX_HEADERS: usize = 64;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// From the start of the attempt to its outcome.
    pub latency: Duration,
    /// `Err(reason)` unless the endpoint answered 2xx.
    pub outcome: Result<(), String>,
}

impl Attempt {
    pub fn delivered(&self) -> bool {
        self.outcome.is_ok()
    }

    /// An attempt that never left: the destination was refused.
    pub fn refused(reason: String) -> Self {
        Self { status: None, latency: Duration::ZERO, outcome: Err(reason) }
    }
}

/// A connection's byte stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    idle_since: Instant,
}

/// Where a connection goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    tls: bool,
    host: String,
    port: u16,
}

/// Why an exchange failed, before it is put in words.
enum Failure {
    /// Refused by the destination policy at connect time.
    Refused(TargetError),
    /// The host name does not resolve.
    Unresolved(TargetError),
    ConnectTimeout,
    Connect(io::Error),
    Tls(io::Error),
    /// The request could not be written, or the answer read.
    Exchange(String),
}

/// An answer: its status, `location` and a prefix of its body.
struct Answer {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

/// The HTTP client of webhook delivery.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Policy,
    limits: Limits,
    tls: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<Origin, Vec<Conn>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("policy", &self.inner.policy).field("limits", &self.inner.limits).finish()
    }
}

impl Client {
    /// A client under `policy` and `limits`; `extra_root` (PEM) is trusted
    /// besides the system's roots (an internal CA, or a test's).
    pub fn new(policy: Policy, limits: Limits, extra_root: Option<&[u8]>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        // A system root rustls cannot read is skipped, as browsers do.
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
        if let Some(pem) = extra_root {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("the extra CA certificate: {e}"))?;
                roots.add(cert).map_err(|e| format!("the extra CA certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("the extra CA certificate: no certificate in it".into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("the webhook TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let inner = Inner {
            policy,
            limits,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            idle: Mutex::new(HashMap::new()),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Checks `url` against the destination policy, once for many
    /// attempts ([`Client::post_checked`]); the reason it is refused.
    pub fn check(&self, url: &str) -> Result<Url, String> {
        check_url(url, self.inner.policy).map_err(|e| format!("refused by the destination policy: {e}"))
    }

    /// POSTs `body` (JSON) with `headers` to `url`.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: &[u8]) -> Attempt {
        match self.check(url) {
            Ok(url) => self.post_checked(url, headers, body).await,
            Err(reason) => Attempt::refused(reason),
        }
    }

    /// POSTs `body` (JSON) with `headers` to `url`, which
    /// [`Client::check`] passed. (A name in it is checked again when it
    /// is resolved.)
    pub async fn post_checked(&self, url: Url, headers: &[(&str, String)], body: &[u8]) -> Attempt {
        let started = Instant::now();
        let limits = self.inner.limits;
        let outcome = tokio::time::timeout(limits.attempt, self.exchange(&url, headers, body)).await;
        let (status, outcome) = match outcome {
            Err(_) => (None, Err(format!("no answer within {} s", limits.attempt.as_secs_f64()))),
            Ok(Err(failure)) => (None, Err(self.describe(failure))),
            Ok(Ok(answer)) => (Some(answer.status), judge(&answer)),
        };
        Attempt { status, latency: started.elapsed(), outcome }
    }

    fn describe(&self, failure: Failure) -> String {
        match failure {
            Failure::Refused(e) => format!("refused by the destination policy: {e}"),
            Failure::Unresolved(e) => format!("could not connect: {e}"),
            Failure::ConnectTimeout => {
                format!("connecting took longer than {} s", self.inner.limits.connect.as_secs_f64())
            }
            Failure::Connect(e) => format!("could not connect: {e}"),
            Failure::Tls(e) => format!("could not connect: the TLS handshake failed: {}", tls_reason(&e)),
            Failure::Exchange(e) => format!("the request failed: {e}"),
        }
    }

    /// The request and its answer, on a kept connection or a new one.
    async fn exchange(&self, url: &Url, headers: &[(&str, String)], body: &[u8]) -> Result<Answer, Failure> {
        let origin = origin(url)?;
        let request = request(url, &origin, headers, body);
        if let Some(conn) = self.take_idle(&origin) {
            match self.send(conn, &origin, &request).await {
                Ok(answer) => return Ok(answer),
                // Closed while idle (nothing of an answer came): once more
                // on a new connection.
                Err(Sent::Unanswered(_)) => {}
                Err(Sent::Failed(e)) => return Err(Failure::Exchange(e)),
            }
        }
        let conn = self.connect(url, &origin).await?;
        self.send(conn, &origin, &request).await.map_err(|(Sent::Unanswered(e) | Sent::Failed(e))| Failure::Exchange(e))
    }

    fn take_idle(&self, origin: &Origin) -> Option<Conn> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.get_mut(origin)?;
        while let Some(conn) = kept.pop() {
            if conn.idle_since.elapsed() < IDLE_FOR {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, origin: Origin, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.entry(origin).or_default();
        // Long-idle ones go first; the newest is taken first.
        kept.retain(|c| c.idle_since.elapsed() < IDLE_FOR);
        if kept.len() < self.inner.limits.idle_connections_per_host {
            kept.push(conn);
        }
    }

    /// A new connection: the name resolved and its addresses checked, TCP
    /// within the connect timeout (each address in turn), then TLS.
    async fn connect(&self, url: &Url, origin: &Origin) -> Result<Conn, Failure> {
        let addresses: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(a)) => vec![SocketAddr::new(IpAddr::V4(a), origin.port)],
            Some(url::Host::Ipv6(a)) => vec![SocketAddr::new(IpAddr::V6(a), origin.port)],
            Some(url::Host::Domain(name)) => {
                resolve(name, origin.port, self.inner.policy).await.map_err(|e| match e {
                    TargetError::Unresolved { .. } => Failure::Unresolved(e),
                    other => Failure::Refused(other),
                })?
            }
            None => return Err(Failure::Refused(TargetError::NoHost)),
        };
        let tcp = tokio::time::timeout(self.inner.limits.connect, async {
            let mut last = None;
            for a in &addresses {
                match TcpStream::connect(a).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(io::Error::new(e.kind(), format!("{a}: {e}"))),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
        })
        .await
        .map_err(|_| Failure::ConnectTimeout)?
        .map_err(Failure::Connect)?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match origin.tls {
            false => Box::new(tcp),
            true => {
                let name = ServerName::try_from(origin.host.clone())
                    .map_err(|e| Failure::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
                Box::new(self.inner.tls.connect(name, tcp).await.map_err(Failure::Tls)?)
            }
        };
        Ok(Conn { io, idle_since: Instant::now() })
    }

    /// Writes `request` and reads the answer; the connection goes back to
    /// the idle set when the answer left it ready for the next request.
    async fn send(&self, mut conn: Conn, origin: &Origin, request: &[u8]) -> Result<Answer, Sent> {
        if let Err(e) = write_all(&mut conn.io, request).await {
            return Err(Sent::Unanswered(format!("writing the request: {e}")));
        }
        let (answer, keep) = read_answer(&mut conn.io, self.inner.limits.max_answer_bytes).await?;
        if keep {
            self.put_idle(origin.clone(), conn);
        }
        Ok(answer)
    }
}

/// Why an exchange on a connection failed: before any byte of an answer
/// (a kept connection may have been closed while idle), or after.
enum Sent {
    Unanswered(String),
    Failed(String),
}

async fn write_all(io: &mut Box<dyn Io>, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

fn origin(url: &Url) -> Result<Origin, Failure> {
    let host = url.host_str().ok_or(Failure::Refused(TargetError::NoHost))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let tls = url.scheme() == "https";
    let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
    Ok(Origin { tls, host, port })
}

/// The request's bytes: head and body in one buffer (one write).
fn request(url: &Url, origin: &Origin, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r =
        Vec::with_capacity(256 + body.len() + headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
    r.extend_from_slice(b"POST ");
    r.extend_from_slice(url.path().as_bytes());
    if let Some(q) = url.query() {
        r.push(b'?');
        r.extend_from_slice(q.as_bytes());
    }
    r.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match url.host() {
        Some(url::Host::Ipv6(_)) => r.extend_from_slice(format!("[{}]", origin.host).as_bytes()),
        _ => r.extend_from_slice(origin.host.as_bytes()),
    }
    if url.port().is_some() {
        r.extend_from_slice(format!(":{}", origin.port).as_bytes());
    }
    r.extend_from_slice(concat!("\r\nuser-agent: pypes-webhooks/", env!("CARGO_PKG_VERSION")).as_bytes());
    r.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    r.extend_from_slice(body.len().to_string().as_bytes());
    for (name, value) in headers {
        // Names and values are the server's own (signature, ids); a line
        // break in one would split the request, so it is left out.
        if name.bytes().chain(value.bytes()).any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(name.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(value.as_bytes());
    }
    r.extend_from_slice(b"\r\n\r\n");
    r.extend_from_slice(body);
    r
}

/// How an answer's body is delimited.
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads an answer's head and at most `max_body` bytes of its body.
async fn read_answer(io: &mut Box<dyn Io>, max_body: usize) -> Result<(Answer, bool), Sent> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    // Whether any byte of an answer came (an interim one included), and
    // whether what is in `buf` was parsed already and needs more.
    let (mut heard, mut read) = (false, true);
    loop {
        if read {
            let mut chunk = [0u8; 4096];
            let n = match io.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) if !heard => return Err(Sent::Unanswered(format!("reading the answer: {e}"))),
                Err(e) => return Err(Sent::Failed(format!("reading the answer: {e}"))),
            };
            if n == 0 {
                return Err(match heard {
                    false => Sent::Unanswered("the endpoint closed the connection without answering".into()),
                    true => Sent::Failed("the endpoint closed the connection in the middle of its answer".into()),
                });
            }
            heard = true;
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Response::new(&mut headers);
        let parsed = head.parse(&buf).map_err(|e| Sent::Failed(format!("the answer is not HTTP/1.1: {e}")))?;
        let httparse::Status::Complete(head_len) = parsed else {
            if buf.len() > MAX_HEAD {
                return Err(Sent::Failed(format!("the answer's head is longer than {} KiB", MAX_HEAD / 1024)));
            }
            read = true;
            continue;
        };
        let status = head.code.unwrap_or(0);
        // An interim answer (100 Continue): the real one follows.
        if (100..200).contains(&status) && status != 101 {
            buf.drain(..head_len);
            // The final answer may have come in the same read.
            read = buf.is_empty();
            continue;
        }
        let mut close = head.version == Some(0);
        let (mut framing, mut location) = (Framing::UntilClose, None);
        for h in head.headers.iter() {
            let value = String::from_utf8_lossy(h.value);
            if h.name.eq_ignore_ascii_case("content-length") {
                match value.trim().parse::<usize>() {
                    Ok(n) => framing = Framing::Length(n),
                    Err(_) => {
                        return Err(Sent::Failed(format!("the answer's content-length is not a number: {value}")));
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                framing = match value.to_ascii_lowercase().trim().ends_with("chunked") {
                    true => Framing::Chunked,
                    false => Framing::UntilClose,
                };
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                close |= v.contains("close");
                close &= !(head.version == Some(0) && v.contains("keep-alive"));
            } else if h.name.eq_ignore_ascii_case("location") {
                location = Some(value.chars().take(200).collect());
            }
        }
        if status == 204 || status == 304 {
            framing = Framing::None;
        }
        // Transfer-encoding wins over a content-length (RFC 9112 6.3).
        if head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
            close |= !matches!(framing, Framing::Chunked);
        }
        buf.drain(..head_len);
        let (body, complete) = read_body(io, buf, framing, max_body).await?;
        return Ok((Answer { status, location, body }, complete && !close));
    }
}

/// Reads the body's first `max` bytes: (those bytes, whether the body
/// ended within them, so the connection is ready for the next request).
async fn read_body(
    io: &mut Box<dyn Io>,
    mut raw: Vec<u8>,
    framing: Framing,
    max: usize,
) -> Result<(Vec<u8>, bool), Sent> {
    // The raw bytes read, at most: the prefix and a chunked body's framing.
    let cap = max + 1024;
    match framing {
        Framing::None => Ok((Vec::new(), raw.is_empty())),
        Framing::Length(n) => {
            while raw.len() < n.min(max) {
                match more(&mut raw, io).await {
                    Ok(0) | Err(_) => return Ok((raw, false)),
                    Ok(_) => {}
                }
            }
            let complete = raw.len() == n;
            raw.truncate(n.min(max));
            Ok((raw, complete))
        }
        Framing::UntilClose => {
            while raw.len() < max {
                match more(&mut raw, io).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            raw.truncate(max);
            Ok((raw, false))
        }
        Framing::Chunked => loop {
            match dechunk(&raw) {
                Dechunked::Done { body, rest } => return Ok((body, rest == 0)),
                Dechunked::Bad => return Ok((dechunk_prefix(&raw, max), false)),
                Dechunked::More if raw.len() >= cap => return Ok((dechunk_prefix(&raw, max), false)),
                Dechunked::More => match more(&mut raw, io).await {
                    Ok(0) | Err(_) => return Ok((dechunk_prefix(&raw, max), false)),
                    Ok(_) => {}
                },
            }
        },
    }
}

/// Reads more of the answer onto the end of `raw`.
async fn more(raw: &mut Vec<u8>, io: &mut Box<dyn Io>) -> io::Result<usize> {
    let start = raw.len();
    raw.resize(start + 4096, 0);
    let r = io.read(&mut raw[start..]).await;
    raw.truncate(start + *r.as_ref().unwrap_or(&0));
    r
}

enum Dechunked {
    /// The whole body; `rest` bytes came after its end.
    Done {
        body: Vec<u8>,
        rest: usize,
    },
    More,
    Bad,
}

/// Decodes a chunked body from `raw` when it is all there.
fn dechunk(raw: &[u8]) -> Dechunked {
    let (mut at, mut body) = (0, Vec::new());
    loop {
        let Some(eol) = find_crlf(&raw[at..]) else { return Dechunked::More };
        let Some(size) = chunk_size(&raw[at..at + eol]) else { return Dechunked::Bad };
        at += eol + 2;
        if size == 0 {
            // Trailers, each a line, then an empty line.
            loop {
                let Some(eol) = find_crlf(&raw[at..]) else { return Dechunked::More };
                at += eol + 2;
                if eol == 0 {
                    return Dechunked::Done { body, rest: raw.len() - at };
                }
            }
        }
        if raw.len() < at + size + 2 {
            return Dechunked::More;
        }
        if &raw[at + size..at + size + 2] != b"\r\n" {
            return Dechunked::Bad;
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// The data of the whole chunks in `raw`, at most `max` bytes (for the
/// report of an answer too long or malformed to read to its end).
fn dechunk_prefix(raw: &[u8], max: usize) -> Vec<u8> {
    let (mut at, mut body) = (0, Vec::new());
    while let Some(eol) = find_crlf(&raw[at..]) {
        let Some(size) = chunk_size(&raw[at..at + eol]) else { break };
        at += eol + 2;
        let end = (at + size).min(raw.len());
        body.extend_from_slice(&raw[at..end]);
        if size == 0 || end < at + size || body.len() >= max {
            break;
        }
        at = end + 2;
        if at > raw.len() {
            break;
        }
    }
    body.truncate(max);
    body
}

/// The size a chunk's line gives (hex digits, then any `;extension`).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    std::str::from_utf8(digits).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The outcome an answer means.
fn judge(answer: &Answer) -> Result<(), String> {
    let status = answer.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let name = reason_phrase(status);
    let status_text = match name {
        "" => status.to_string(),
        name => format!("{status} {name}"),
    };
    if (300..400).contains(&status) {
        let to = answer.location.as_ref().map(|l| format!(" to {l}")).unwrap_or_default();
        return Err(format!(
            "the endpoint answered {status_text} (a redirect{to}): redirects are not followed; register the final URL"
        ));
    }
    let said = String::from_utf8_lossy(&answer.body).chars().filter(|c| !c.is_control()).take(200).collect::<String>();
    let said = if said.trim().is_empty() { String::new() } else { format!(": {}", said.trim()) };
    Err(format!("the endpoint answered {status_text}{said}"))
}

/// The standard reason phrase of the statuses an endpoint is likely to
/// answer with (what the endpoint itself wrote is not trusted for it).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The innermost cause of an error (a TLS alert, a refused address).
/// Why a TLS handshake failed, in words a tenant can act on for the
/// certificate problems an endpoint meets in practice (the library's
/// wording for the rest).
fn tls_reason(e: &io::Error) -> String {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) = e.get_ref().and_then(|r| r.downcast_ref::<rustls::Error>())
    else {
        return innermost(e);
    };
    let what = match cert {
        C::UnknownIssuer => "is not issued by a certificate authority this server trusts",
        C::Expired | C::ExpiredContext { .. } => "has expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "is not valid yet",
        C::NotValidForName | C::NotValidForNameContext { .. } => "is not valid for the host name in the endpoint's URL",
        C::Revoked => "has been revoked",
        C::BadSignature => "has a signature that does not verify",
        C::BadEncoding => "cannot be parsed",
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => "is not meant for a server",
        C::UnsupportedSignatureAlgorithmContext { .. } | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "uses a signature algorithm this server does not accept"
        }
        C::Other(other) if other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity) => {
            "is a certificate authority's (CA:TRUE), not a server's: serve a certificate signed by a CA"
        }
        _ => return innermost(e),
    };
    format!("the endpoint's certificate {what}")
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_whole_or_as_a_prefix() {
        match dechunk(b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n") {
            Dechunked::Done { body, rest } => assert_eq!((body.as_slice(), rest), (&b"hello world"[..], 0)),
            _ => panic!("not decoded"),
        }
        match dechunk(b"5\r\nhello\r\n0\r\ntrailer: x\r\n\r\nHTTP") {
            Dechunked::Done { body, rest } => assert_eq!((body.as_slice(), rest), (&b"hello"[..], 4)),
            _ => panic!("not decoded"),
        }
        assert!(matches!(dechunk(b"5\r\nhel"), Dechunked::More));
        assert!(matches!(dechunk(b"zz\r\nhello\r\n"), Dechunked::Bad));
        assert!(matches!(dechunk(b"5\r\nhelloXX0\r\n\r\n"), Dechunked::Bad));
        assert_eq!(dechunk_prefix(b"5\r\nhello\r\n3\r\nwor", 100), b"hellowor");
        assert_eq!(dechunk_prefix(b"5\r\nhello\r\n3\r\nwor", 3), b"hel");
    }

    #[test]
    fn a_request_is_one_buffer_with_its_host_and_length() {
        let url = Url::parse("https://hooks.example.com:8443/in?x=1").unwrap();
        let o = origin(&url).ok().unwrap();
        let r = request(&url, &o, &[("pypes-id", "e1".into()), ("bad", "a\r\nb".into())], b"{}");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("POST /in?x=1 HTTP/1.1\r\nhost: hooks.example.com:8443\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 2\r\n") && text.contains("\r\npypes-id: e1\r\n"), "{text}");
        assert!(!text.contains("bad:"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        let v6 = Url::parse("http://[::1]:9000/h").unwrap();
        let text = String::from_utf8(request(&v6, &origin(&v6).ok().unwrap(), &[], b"")).unwrap();
        assert!(text.contains("host: [::1]:9000\r\n"), "{text}");
    }
}
