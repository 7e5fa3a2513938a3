//! The console's sessions and the rules every answer follows (the module
//! map is in `console/mod.rs`).
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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use app::App;
use app::auth::Credentials;
use app::console::Principal;
use eventlog::Clock;
use zeroize::Zeroizing;

const MICROS: i64 = 1_000_000;
/// Console sessions one node keeps (the oldest go first past this).
const MAX_SESSIONS: usize = 10_000;
/// Addresses whose failed sign-ins are remembered (a bound on memory).
const MAX_FAILING_ADDRESSES: usize = 100_000;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One signed-in browser.
struct Session {
    key: Zeroizing<String>,
    principal: Principal,
    csrf: String,
    created_micros: i64,
    last_micros: i64,
}

/// What a page handler knows about the signed-in browser.
#[derive(Clone)]
pub struct SignedIn {
    key: Zeroizing<String>,
    pub principal: Principal,
    pub csrf: String,
}

impl SignedIn {
    /// The credentials of a call made for this browser about `tenant`
    /// (a staff member's calls name it like the API's tenant header).
    pub fn credentials(&self, tenant: Option<uuid::Uuid>) -> Credentials {
        Credentials {
            authorization: Some(Ok(format!("Bearer {}", self.key.as_str()))),
            tenant: tenant.map(|t| Ok(t.to_string())),
        }
    }

    pub fn who(&self) -> String {
        match self.principal {
            Principal::Admin => "admin key".into(),
            Principal::Staff { id, role } => format!("staff {id} ({})", role.name()),
            Principal::Tenant(t) => format!("tenant {t}"),
        }
    }

    pub fn is_tenant(&self) -> Option<uuid::Uuid> {
        match self.principal {
            Principal::Tenant(t) => Some(t),
            _ => None,
        }
    }

    /// Operators: the admin key or an admin staff member.
    pub fn is_operator(&self) -> bool {
        matches!(self.principal, Principal::Admin | Principal::Staff { role: domain::staff::Role::Admin, .. })
    }
}

/// Why there is no signed-in browser.
pub enum NotSignedIn {
    Missing,
    Expired,
}

pub struct Console {
    pub app: Arc<App>,
    pub history: Arc<super::history::History>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Address → (consecutive failed sign-ins, time of the last).
    failures: Mutex<HashMap<IpAddr, (u32, i64)>>,
    clock: Arc<dyn Clock>,
    idle_secs: i64,
    pub(super) lifetime_secs: i64,
    /// The browser reaches pypes over TLS (pypes' own, or a mesh's).
    pub secure: bool,
}

pub(super) fn random_hex() -> Result<String, NoRandom> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| NoRandom(e.to_string()))?;
    Ok(hex::encode(b))
}

/// The OS's random number generator failed: no token can be made, so no
/// session or form is started (the request fails; the server goes on).
#[derive(Debug)]
pub struct NoRandom(pub String);

pub(super) fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && app::auth::same(&app::auth::sha256(a.as_bytes()), &app::auth::sha256(b.as_bytes()))
}

impl Console {
    pub fn new(app: Arc<App>, history: Arc<super::history::History>, clock: Arc<dyn Clock>, secure: bool) -> Arc<Self> {
        let auth = app.auth_config();
        let (idle_secs, lifetime_secs) = (auth.idle_secs, auth.lifetime_secs);
        Arc::new(Self {
            app,
            history,
            sessions: Mutex::default(),
            failures: Mutex::default(),
            clock,
            idle_secs,
            lifetime_secs,
            secure,
        })
    }

    fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    pub fn cookie_name(&self) -> &'static str {
        if self.secure { "__Host-pypes_console" } else { "pypes_console" }
    }

    pub fn pre_cookie_name(&self) -> &'static str {
        if self.secure { "__Host-pypes_console_pre" } else { "pypes_console_pre" }
    }

    /// A `Set-Cookie` value for `name` (empty value and max-age 0: removal).
    pub fn set_cookie(&self, name: &str, value: &str, max_age_secs: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
    }

    /// The browser's console session, touched (its idle timer restarts).
    pub fn signed_in(&self, req: &HttpRequest) -> Result<SignedIn, NotSignedIn> {
        let token = cookie(req, self.cookie_name()).ok_or(NotSignedIn::Missing)?;
        let id = app::auth::sha256(token.as_bytes());
        let now = self.now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = sessions.get_mut(&id) else { return Err(NotSignedIn::Expired) };
        let idle = now - s.last_micros >= self.idle_secs * MICROS;
        let old = now - s.created_micros >= self.lifetime_secs * MICROS;
        if idle || old {
            sessions.remove(&id);
            return Err(NotSignedIn::Expired);
        }
        s.last_micros = now;
        Ok(SignedIn { key: s.key.clone(), principal: s.principal, csrf: s.csrf.clone() })
    }

    /// Ends the browser's console session (sign-out).
    pub fn end(&self, req: &HttpRequest) {
        if let Some(token) = cookie(req, self.cookie_name()) {
            self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&app::auth::sha256(token.as_bytes()));
        }
    }

    /// A new console session for a verified key: the cookie's token.
    pub(super) fn start(&self, key: Zeroizing<String>, principal: Principal) -> Result<String, NoRandom> {
        let token = random_hex()?;
        let csrf = random_hex()?;
        let now = self.now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Expired sessions go at once; past the cap, the least recently used.
        sessions.retain(|_, s| {
            now - s.last_micros < self.idle_secs * MICROS && now - s.created_micros < self.lifetime_secs * MICROS
        });
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_micros).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        let session = Session { key, principal, csrf, created_micros: now, last_micros: now };
        sessions.insert(app::auth::sha256(token.as_bytes()), session);
        Ok(token)
    }

    /// Seconds `addr` must still wait before its next sign-in (0: none).
    pub(super) fn locked_for(&self, addr: Option<IpAddr>) -> i64 {
        let Some(addr) = addr else { return 0 };
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some((count, last)) = failures.get(&addr) else { return 0 };
        let left = last + app::end_user_auth::delay_secs(*count) * MICROS - self.now();
        if left <= 0 { 0 } else { (left + MICROS - 1) / MICROS }
    }

    pub(super) fn failed(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        let now = self.now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_FAILING_ADDRESSES {
            // Forget the failures past the longest delay first.
            failures.retain(|_, (_, last)| now - *last < app::end_user_auth::MAX_DELAY_SECS * MICROS);
        }
        let e = failures.entry(addr).or_insert((0, now));
        // A day without failures forgets them (like the end users' lockout).
        if now - e.1 >= 24 * 3600 * MICROS {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = now;
    }

    pub(super) fn succeeded(&self, addr: Option<IpAddr>) {
        if let Some(addr) = addr {
            self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&addr);
        }
    }

    /// Runs one application call for the console as `method`; a refusal is
    /// audited like the API's.
    pub async fn call<T>(
        &self,
        method: &'static str,
        f: impl std::future::Future<Output = Result<T, app::AppError>>,
    ) -> Result<T, app::AppError> {
        let (out, noted) = app::call::scope_noting(method, f).await;
        if let Err(e) = &out {
            self.app.note_refusal(method, e.code(), noted.actor()).await;
        }
        out
    }
}

/// A cookie of the request, by name.
pub fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    let header = req.headers().get("cookie")?.to_str().ok()?;
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// The security headers every console answer carries.
pub fn harden(mut r: HttpResponse) -> HttpResponse {
    let h = r.headers_mut();
    let set = |h: &mut actix_web::http::header::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(
            actix_web::http::header::HeaderName::from_static(k),
            actix_web::http::header::HeaderValue::from_static(v),
        );
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key("cache-control") {
        set(h, "cache-control", "no-store");
    }
    r
}

/// An HTML answer.
pub fn html(status: StatusCode, body: String) -> HttpResponse {
    harden(HttpResponse::build(status).content_type("text/html; charset=utf-8").body(body))
}

/// A redirect after a form (303: the browser GETs the new place).
pub fn see_other(to: &str) -> HttpResponse {
    harden(HttpResponse::SeeOther().insert_header(("location", to.to_string())).finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_only_when_equal_and_present() {
        let t = random_hex().unwrap();
        assert_eq!(t.len(), 64);
        assert!(same(&t, &t.clone()));
        assert!(!same(&t, &random_hex().unwrap()));
        assert!(!same("", ""), "an empty token never matches");
    }

    #[test]
    fn the_policy_allows_nothing_inline_and_nothing_foreign() {
        assert!(CSP.contains("script-src 'self';"));
        assert!(!CSP.contains("unsafe-inline"));
        assert!(!CSP.contains("http"));
        assert!(CSP.contains("frame-ancestors 'none'"));
    }
}
