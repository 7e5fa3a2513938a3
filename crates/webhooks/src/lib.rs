//! The outbound side of webhook delivery, kept apart from what is
//! delivered and when (the application's business):
//!
//! - [`sign`]: the `pypes-signature` header, HMAC-SHA-256 over the
//!   timestamp and the body, with one or two secrets (rotation), and the
//!   receiver's check, which refuses stale timestamps (replays);
//! - [`target`]: which URLs and addresses may be delivered to: HTTPS only
//!   (plain HTTP to loopback when allowed, for tests), and no private,
//!   loopback, link-local or otherwise internal address unless the
//!   configuration allows it, checked on every address a name resolves to
//!   at connect time (so DNS cannot point a vetted name elsewhere);
//! - [`deliver`]: one attempt: a POST with a connect timeout and a
//!   per-attempt deadline, no redirects followed, at most a small prefix of
//!   the answer read, every failure named;
//! - [`backoff`]: the retry schedule (exponential, jittered, for at least
//!   72 hours).

pub mod backoff;
pub mod deliver;
pub mod sign;
pub mod target;
