//! The console: HTML pages on the HTTP port under `/console`, over the same
//! application calls, roles and audit entries as the gRPC API
//! (docs/console.md).
//!
//! - Sign-in exchanges a key (admin, staff, or a tenant's API key) for a
//!   console session: a random token in an `HttpOnly`, `SameSite=Strict`
//!   cookie (`Secure` and `__Host-` when the browser reaches pypes over
//!   TLS); the key stays in this node's memory, never in the browser after
//!   the form is sent. Idle and absolute timeouts are the API's auth
//!   sessions' (`auth.idle_secs`, `auth.lifetime_secs`); failed sign-ins
//!   from one address are slowed down by the end users' lockout curve.
//! - Every form carries the session's CSRF token (the sign-in form a
//!   pre-session one, double-submitted in a cookie); a POST without it is
//!   refused and audited.
//! - Every answer has a strict Content-Security-Policy: scripts, styles and
//!   the chart library are pypes' own files (`assets`); nothing inline,
//!   nothing from another origin.

//!
//! Files: `session.rs` (the console's sessions, CSRF, the security headers,
//! the one call), `pages.rs` (the handlers, their templates and routes),
//! `history.rs` (the overview's hour of metrics), `assets.rs` (the static
//! files in the binary).

pub mod assets;
pub mod history;
pub mod pages;
pub mod session;
