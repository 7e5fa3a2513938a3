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
//!   72 hours);
//! - [`schedule`]: one endpoint's delivery schedule as a state machine: in
//!   order per Session, concurrent across Sessions, back-off per event and
//!   per endpoint, pause after 72 hours, a bounded queue, the checkpoint.

pub mod backoff;
pub mod deliver;
pub mod schedule;
pub mod sign;
pub mod target;
