//! One delivery attempt: a POST of the signed body to the endpoint, with a
//! connect timeout and a deadline for the whole attempt (connect, TLS,
//! request, answer), redirects never followed, and at most
//! [`Limits::max_answer_bytes`] of the answer read (for the error report).
//! The outcome names what happened in words a tenant can act on.

use std::time::{Duration, Instant};

/// A URL, as [`Client::check`] gives it.
pub use reqwest::Url;
use reqwest::redirect;

use crate::target::{GuardedResolver, Policy, check_url};

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
}

/// The HTTP client of webhook delivery.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    policy: Policy,
    limits: Limits,
}

impl Client {
    /// A client under `policy` and `limits`; `extra_root` (PEM) is trusted
    /// besides the system's roots (an internal CA, or a test's).
    pub fn new(policy: Policy, limits: Limits, extra_root: Option<&[u8]>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .no_proxy()
            .connect_timeout(limits.connect)
            .timeout(limits.attempt)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(limits.idle_connections_per_host)
            .user_agent(concat!("pypes-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(std::sync::Arc::new(GuardedResolver { policy }));
        if let Some(pem) = extra_root {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| format!("the extra CA certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| format!("the webhook HTTP client: {e}"))?;
        Ok(Self { http, policy, limits })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks `url` against the destination policy, once for many
    /// attempts ([`Client::post_checked`]); the reason it is refused.
    pub fn check(&self, url: &str) -> Result<Url, String> {
        check_url(url, self.policy).map_err(|e| format!("refused by the destination policy: {e}"))
    }

    /// POSTs `body` (JSON) with `headers` to `url`.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Attempt {
        match self.check(url) {
            Ok(url) => self.post_checked(url, headers, body).await,
            Err(reason) => Attempt { status: None, latency: Duration::ZERO, outcome: Err(reason) },
        }
    }

    /// POSTs `body` (JSON) with `headers` to `url`, which
    /// [`Client::check`] passed. (A name in it is checked again when it
    /// is resolved.)
    pub async fn post_checked(&self, url: Url, headers: &[(&str, String)], body: Vec<u8>) -> Attempt {
        let started = Instant::now();
        let done =
            |status: Option<u16>, outcome: Result<(), String>| Attempt { status, latency: started.elapsed(), outcome };
        let mut request = self.http.post(url).header("content-type", "application/json").body(body);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        // The client's timeout covers the whole attempt, the answer's
        // prefix included (reqwest: "until the response body has
        // finished"), so a slow answer ends as `is_timeout`.
        let attempt = async {
            let mut response = match request.send().await {
                Ok(r) => r,
                Err(e) => return done(None, Err(self.describe(&e))),
            };
            let status = response.status();
            // Read a prefix of the answer for the report, within the deadline.
            let mut answer = Vec::new();
            while answer.len() < self.limits.max_answer_bytes {
                match response.chunk().await {
                    Ok(Some(chunk)) => answer.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
            answer.truncate(self.limits.max_answer_bytes);
            let code = Some(status.as_u16());
            if status.is_success() {
                return done(code, Ok(()));
            }
            let said =
                String::from_utf8_lossy(&answer).chars().filter(|c| !c.is_control()).take(200).collect::<String>();
            let said = if said.trim().is_empty() { String::new() } else { format!(": {}", said.trim()) };
            if status.is_redirection() {
                let to = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(|l| format!(" to {}", l.chars().take(200).collect::<String>()))
                    .unwrap_or_default();
                return done(
                    code,
                    Err(format!(
                        "the endpoint answered {status} (a redirect{to}): redirects are not followed; register the final URL"
                    )),
                );
            }
            done(code, Err(format!("the endpoint answered {status}{said}")))
        };
        attempt.await
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        // The innermost cause names it best (a refused address, a TLS alert).
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let root = cause.to_string();
        if e.is_timeout() {
            if e.is_connect() {
                format!("connecting took longer than {} s", self.limits.connect.as_secs_f64())
            } else {
                format!("no answer within {} s", self.limits.attempt.as_secs_f64())
            }
        } else if e.is_connect() {
            format!("could not connect: {root}")
        } else {
            format!("the request failed: {root}")
        }
    }
}
