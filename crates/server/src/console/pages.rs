//! The console's pages: each handler reads the browser's session, makes
//! one application call for it (`Console::call`, as the method the staff
//! policy knows) and renders a template; a refusal renders the error page.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use app::console::{AuditFilter, Principal};
use askama::Template;
use audit::time::time_text;
use uuid::Uuid;

use super::session::{self, Console, NotSignedIn, SignedIn, html, see_other};
use crate::http::HttpState;

// ---------------------------------------------------------------- layout

pub struct NavLink {
    pub href: String,
    pub label: &'static str,
    pub current: bool,
}

/// What every page's frame shows.
pub struct Layout {
    pub title: String,
    pub who: String,
    pub csrf: String,
    pub nav: Vec<NavLink>,
    pub flash: String,
}

impl Layout {
    fn new(s: &SignedIn, title: impl Into<String>, here: &str) -> Self {
        let mut links: Vec<(String, &'static str)> = Vec::new();
        match s.principal {
            Principal::Tenant(t) => {
                links.push((format!("/console/tenants/{t}"), "My tenant"));
                links.push((format!("/console/tenants/{t}/privacy"), "Privacy"));
            }
            Principal::Admin | Principal::Staff { .. } => {
                if s.is_operator() {
                    links.push(("/console/overview".into(), "Overview"));
                }
                links.push(("/console/tenants".into(), "Tenants"));
                if !matches!(s.principal, Principal::Staff { role: domain::staff::Role::Support, .. }) {
                    links.push(("/console/privacy".into(), "Privacy"));
                    links.push(("/console/audit".into(), "Audit"));
                }
            }
        }
        let nav = links.into_iter().map(|(href, label)| NavLink { current: href == here, href, label }).collect();
        Self { title: title.into(), who: s.who(), csrf: s.csrf.clone(), nav, flash: String::new() }
    }

    fn anonymous(title: &str) -> Self {
        Self { title: title.into(), who: String::new(), csrf: String::new(), nav: Vec::new(), flash: String::new() }
    }
}

fn render(t: &impl Template) -> HttpResponse {
    match t.render() {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => {
            tracing::error!(error = %e, "a console template did not render");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>The page could not be made; the server log says why.</p>".into(),
            )
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    l: Layout,
    heading: &'static str,
    message: String,
}

fn error_page(l: Layout, status: StatusCode, message: String) -> HttpResponse {
    let heading = match status.as_u16() {
        400 => "That request is not valid",
        401 => "Not signed in",
        403 => "Not allowed",
        404 => "Not found",
        409 | 412 => "Not possible now",
        429 => "Too many attempts",
        503 => "Unavailable",
        _ => "Something went wrong",
    };
    let body = ErrorPage { l, heading, message };
    let mut r = render(&body);
    *r.status_mut() = status;
    r
}

/// The answer to an application error, as a page.
fn refused(s: &SignedIn, e: app::AppError) -> HttpResponse {
    let (code, message) = e.answer();
    let status = StatusCode::from_u16(code.http()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_page(Layout::new(s, "Refused", ""), status, message)
}

fn bad_input(s: &SignedIn, message: String) -> HttpResponse {
    error_page(Layout::new(s, "Bad input", ""), StatusCode::BAD_REQUEST, message)
}

// ---------------------------------------------------------------- helpers

/// The `Ok` value, or return the answer the error already is.
macro_rules! or_answer {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

/// The application call's answer, or return the page of its refusal.
macro_rules! or_refused {
    ($s:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return refused(&$s, e),
        }
    };
}

fn console(state: &HttpState) -> &std::sync::Arc<Console> {
    &state.console
}

fn t(micros: i64) -> String {
    if micros == 0 { "-".into() } else { time_text(micros) }
}

fn id_text(bytes: &[u8]) -> String {
    Uuid::from_slice(bytes).map_or_else(|_| "-".into(), |u| u.to_string())
}

/// The query string's fields (a field given twice: the last).
fn query(req: &HttpRequest) -> Result<HashMap<String, String>, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .map(|v| v.into_iter().collect())
        .map_err(|e| format!("the address's query is not valid: {e}"))
}

fn form(body: &[u8]) -> Result<HashMap<String, String>, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|v| v.into_iter().collect())
        .map_err(|e| format!("the form is not valid: {e}"))
}

fn field<'a>(m: &'a HashMap<String, String>, name: &str) -> &'a str {
    m.get(name).map_or("", |v| v.trim())
}

/// A path segment that must be a UUID.
fn uuid_in_path(s: &SignedIn, what: &str, text: &str) -> Result<Uuid, Box<HttpResponse>> {
    Uuid::try_parse(text).map_err(|_| Box::new(bad_input(s, format!("{what} in the address is not a UUID"))))
}

/// Only the console's own pages are places to go back to after sign-in.
fn safe_next(next: &str) -> &str {
    let ok = next.starts_with("/console/") && !next.starts_with("//") && !next.contains('\\') && next.len() < 2048;
    if ok { next } else { "/console" }
}

/// The signed-in browser, or the answer that sends it to sign in.
async fn signed(c: &Console, req: &HttpRequest) -> Result<SignedIn, Box<HttpResponse>> {
    match c.signed_in(req) {
        Ok(s) => Ok(s),
        Err(NotSignedIn::Missing) => {
            let next = format!(
                "{}{}",
                req.path(),
                if req.query_string().is_empty() { String::new() } else { format!("?{}", req.query_string()) }
            );
            let to = format!(
                "/console/sign-in?next={}",
                serde_urlencoded::to_string([("n", next.as_str())]).unwrap_or_default().trim_start_matches("n=")
            );
            Err(Box::new(see_other(&to)))
        }
        Err(NotSignedIn::Expired) => {
            c.app.console_note("console.session_expired", "refused", req.path().to_string()).await;
            Err(Box::new(sign_in_page(
                c,
                StatusCode::UNAUTHORIZED,
                "Your console session has ended (idle too long, or past its lifetime, or the server restarted). Sign in again.",
                req.path(),
            )))
        }
    }
}

/// Checks a POST's CSRF token; a missing or wrong one is refused and audited.
/// A form's sender: signed in, the form readable, its CSRF token right.
async fn posted(
    c: &Console,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(SignedIn, HashMap<String, String>), Box<HttpResponse>> {
    let s = signed(c, req).await?;
    let f = form(body).map_err(|e| Box::new(bad_input(&s, e)))?;
    csrf_ok(c, &s, &f, req.path()).await?;
    Ok((s, f))
}

/// A form about the tenant in the address: its sender, fields and tenant.
async fn tenant_form(
    c: &Console,
    req: &HttpRequest,
    tenant: &str,
    body: &[u8],
) -> Result<(SignedIn, HashMap<String, String>, Uuid), Box<HttpResponse>> {
    let (s, f) = posted(c, req, body).await?;
    let tenant = uuid_in_path(&s, "the tenant", tenant)?;
    Ok((s, f, tenant))
}

/// The form's subject id (an end user's UUID).
fn subject_of<'a>(s: &SignedIn, f: &'a HashMap<String, String>) -> Result<&'a str, Box<HttpResponse>> {
    let subject = field(f, "subject");
    match Uuid::try_parse(subject) {
        Ok(_) => Ok(subject),
        Err(_) => Err(Box::new(bad_input(s, "subject: give the end user's id (a UUID)".into()))),
    }
}

async fn csrf_ok(c: &Console, s: &SignedIn, f: &HashMap<String, String>, path: &str) -> Result<(), Box<HttpResponse>> {
    if session::same(field(f, "csrf"), &s.csrf) {
        return Ok(());
    }
    c.app.console_note("console.csrf_refused", "refused", path.to_string()).await;
    Err(Box::new(error_page(
        Layout::new(s, "Refused", ""),
        StatusCode::FORBIDDEN,
        "This form was not sent by a page of this console session (its CSRF token is missing or wrong). Reload the page and send it again."
            .into(),
    )))
}

// ---------------------------------------------------------------- sign-in

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    l: Layout,
    notice: String,
    csrf: String,
    next: String,
}

/// The page of a request the OS's random generator failed.
fn no_random(e: session::NoRandom) -> HttpResponse {
    tracing::error!(error = %e.0, "the OS random number generator failed");
    error_page(
        Layout::anonymous("Error"),
        StatusCode::SERVICE_UNAVAILABLE,
        "The server could not make a random token (its random number generator failed); try again.".into(),
    )
}

fn sign_in_page(c: &Console, status: StatusCode, notice: &str, next: &str) -> HttpResponse {
    let csrf = match session::random_hex() {
        Ok(t) => t,
        Err(e) => return no_random(e),
    };
    let page = SignInPage {
        l: Layout::anonymous("Sign in"),
        notice: notice.into(),
        csrf: csrf.clone(),
        next: safe_next(next).into(),
    };
    let mut r = render(&page);
    *r.status_mut() = status;
    let cookie = c.set_cookie(c.pre_cookie_name(), &csrf, 3600);
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&cookie) {
        r.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
    }
    r
}

async fn sign_in_form(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    if c.signed_in(&req).is_ok() {
        return see_other("/console");
    }
    let next = query(&req).ok().and_then(|q| q.get("next").cloned()).unwrap_or_default();
    sign_in_page(c, StatusCode::OK, "", &next)
}

async fn sign_in(req: HttpRequest, state: web::Data<HttpState>, body: web::Bytes) -> HttpResponse {
    let c = console(&state);
    let f = match form(&body) {
        Ok(f) => f,
        Err(e) => return sign_in_page(c, StatusCode::BAD_REQUEST, &e, ""),
    };
    let next = field(&f, "next").to_string();
    let pre = session::cookie(&req, c.pre_cookie_name()).unwrap_or_default();
    if !session::same(field(&f, "csrf"), &pre) {
        c.app.console_note("console.csrf_refused", "refused", "/console/sign-in".into()).await;
        return sign_in_page(
            c,
            StatusCode::FORBIDDEN,
            "The sign-in form was not sent by this console (its CSRF token is missing or wrong). Try again from this page.",
            &next,
        );
    }
    let addr = req.peer_addr().map(|a| a.ip());
    let wait = c.locked_for(addr);
    if wait > 0 {
        c.app.console_note("console.sign_in", "locked", format!("retry_after_secs={wait}")).await;
        return sign_in_page(
            c,
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too many failed sign-ins from this address; try again in {wait} s."),
            &next,
        );
    }
    let key = zeroize::Zeroizing::new(field(&f, "key").to_string());
    if key.is_empty() || key.len() > 512 {
        c.failed(addr);
        return sign_in_page(c, StatusCode::UNAUTHORIZED, "Give a key (staff, admin or tenant API key).", &next);
    }
    let creds = app::auth::Credentials { authorization: Some(Ok(format!("Bearer {}", key.as_str()))), tenant: None };
    match c.call("ConsoleSignIn", c.app.console_sign_in(&creds)).await {
        Ok(principal) => {
            c.succeeded(addr);
            let token = match c.start(key, principal) {
                Ok(t) => t,
                Err(e) => return no_random(e),
            };
            let mut r = see_other(safe_next(&next));
            for cookie in
                [c.set_cookie(c.cookie_name(), &token, c.lifetime_secs), c.set_cookie(c.pre_cookie_name(), "", 0)]
            {
                if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&cookie) {
                    r.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
                }
            }
            r
        }
        Err(e) => {
            c.failed(addr);
            let (code, message) = e.answer();
            let status = StatusCode::from_u16(code.http()).unwrap_or(StatusCode::UNAUTHORIZED);
            sign_in_page(c, status, &format!("Sign-in refused: {message}"), &next)
        }
    }
}

async fn sign_out(req: HttpRequest, state: web::Data<HttpState>, body: web::Bytes) -> HttpResponse {
    let c = console(&state);
    let (s, _) = or_answer!(posted(c, &req, &body).await);
    c.end(&req);
    // The key may have been revoked meanwhile: the sign-out holds anyway.
    let _ = c.call("ConsoleSignOut", c.app.console_sign_out(&s.credentials(None), "signed_out")).await;
    let mut r = sign_in_page(c, StatusCode::OK, "You are signed out.", "");
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&c.set_cookie(c.cookie_name(), "", 0)) {
        r.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
    }
    r
}

async fn home(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    match signed(c, &req).await {
        Ok(s) => match s.principal {
            Principal::Tenant(t) => see_other(&format!("/console/tenants/{t}")),
            _ if s.is_operator() => see_other("/console/overview"),
            _ => see_other("/console/tenants"),
        },
        Err(r) => *r,
    }
}

// ---------------------------------------------------------------- overview

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    l: Layout,
    ready: bool,
    head: u64,
    log_size: String,
    live_actors: u64,
    rate: String,
    p99: String,
    fsync_p99: String,
    interval: u64,
    samples: usize,
    capacity: usize,
    projections: Vec<(&'static str, &'static str, u64, String, u64)>,
}

fn bytes_text(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

async fn overview(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    if let Err(e) = c.call("ReadNodeMetrics", c.app.console_operator(&s.credentials(None))).await {
        return refused(&s, e);
    }
    let latest = c.history.latest().unwrap_or_default();
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("≤ {v} ms"));
    let projections = state
        .views
        .runners
        .iter()
        .map(|r| {
            let st = r.status();
            (st.name, st.state.name(), st.lag_positions, format!("{:.1}", st.lag_seconds), st.events_applied)
        })
        .collect();
    let page = OverviewPage {
        l: Layout::new(&s, "Overview", "/console/overview"),
        ready: *state.ready.borrow(),
        head: state.log.head(),
        log_size: state
            .log_dir
            .as_deref()
            .map_or_else(|| "(database)".into(), |d| bytes_text(crate::metrics::dir_bytes(d, 2))),
        live_actors: state.registry.live_actors() as u64,
        rate: format!("{:.1}", latest.rate),
        p99: ms(latest.p99_ms),
        fsync_p99: ms(latest.fsync_p99_ms),
        interval: c.history.interval.as_secs(),
        samples: c.history.held(),
        capacity: c.history.capacity(),
        projections,
    };
    render(&page)
}

async fn metrics_json(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    let fail = |status: StatusCode, message: String| {
        session::harden(
            HttpResponse::build(status)
                .content_type("application/json")
                .body(format!("{{\"error\":{}}}", app::certificate::json_str(&message))),
        )
    };
    let s = match c.signed_in(&req) {
        Ok(s) => s,
        Err(_) => return fail(StatusCode::UNAUTHORIZED, "not signed in, or the console session has ended".into()),
    };
    if let Err(e) = c.call("ReadNodeMetrics", c.app.console_operator(&s.credentials(None))).await {
        let (code, message) = e.answer();
        return fail(StatusCode::from_u16(code.http()).unwrap_or(StatusCode::FORBIDDEN), message);
    }
    session::harden(HttpResponse::Ok().content_type("application/json").body(c.history.json()))
}

// ---------------------------------------------------------------- tenants

struct TenantRow {
    id: String,
    name: String,
    created: String,
    state: &'static str,
    pypes: u64,
    subjects: u64,
}

#[derive(Template)]
#[template(path = "console/tenants.html")]
struct TenantsPage {
    l: Layout,
    q: String,
    rows: Vec<TenantRow>,
    next: String,
    first: String,
}

fn tenant_state(cancelled: i64, shredded: i64) -> &'static str {
    match (cancelled, shredded) {
        (_, s) if s != 0 => "offboarded (keys shredded)",
        (c, _) if c != 0 => "cancelled (in its grace period)",
        _ => "active",
    }
}

async fn tenants(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let q = or_answer!(query(&req).map_err(|e| Box::new(bad_input(&s, e))));
    let (search, after) = (field(&q, "q"), field(&q, "after"));
    let page = or_refused!(s, c.call("ListTenants", c.app.console_tenants(&s.credentials(None), search, after)).await);
    let enc = |k: &str, v: &str| serde_urlencoded::to_string([(k, v)]).unwrap_or_default();
    let rows = page
        .tenants
        .iter()
        .map(|(t, name)| TenantRow {
            id: id_text(&t.tenant_id),
            name: name.clone(),
            created: time_text(t.created_micros),
            state: tenant_state(t.cancelled_micros, t.shredded_micros),
            pypes: t.pypes,
            subjects: t.subjects,
        })
        .collect();
    let next = page.next.map_or_else(String::new, |n| format!("/console/tenants?{}&after={n}", enc("q", search)));
    let first = if after.is_empty() { String::new() } else { format!("/console/tenants?{}", enc("q", search)) };
    render(&TenantsPage { l: Layout::new(&s, "Tenants", "/console/tenants"), q: search.into(), rows, next, first })
}

struct PypeRow {
    id: String,
    name: String,
    created: String,
    state: &'static str,
    total: u64,
    active: u64,
    inactive: u64,
    closed: u64,
    last: String,
}

#[derive(Template)]
#[template(path = "console/tenant.html")]
struct TenantPage {
    l: Layout,
    id: String,
    name: String,
    created: String,
    state: &'static str,
    retention: String,
    region: String,
    subjects: u64,
    pypes: Vec<PypeRow>,
    next: String,
}

fn retention_text(days: u32) -> String {
    if days == 0 { "content kept without a limit".into() } else { format!("closed Sessions' content kept {days} days") }
}

async fn tenant(req: HttpRequest, state: web::Data<HttpState>, path: web::Path<String>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let id = or_answer!(uuid_in_path(&s, "the tenant", &path));
    let q = or_answer!(query(&req).map_err(|e| Box::new(bad_input(&s, e))));
    let after = field(&q, "after");
    let page = or_refused!(s, c.call("ListPypes", c.app.console_tenant(&s.credentials(Some(id)), &path, after)).await);
    let pypes = page
        .pypes
        .iter()
        .map(|(p, name, o)| PypeRow {
            id: id_text(&p.pype_id),
            name: name.clone(),
            created: time_text(p.created_micros),
            state: if p.archived_micros != 0 { "archived" } else { "open" },
            total: o.sessions_total,
            active: o.active,
            inactive: o.inactive,
            closed: o.closed,
            last: t(o.last_activity_micros),
        })
        .collect();
    let here = format!("/console/tenants/{id}");
    let next = page.next.map_or_else(String::new, |n| format!("{here}?after={n}"));
    let title = format!("Tenant {}", page.tenant.name);
    render(&TenantPage {
        l: Layout::new(&s, title, &here),
        id: id.to_string(),
        name: page.tenant.name.clone(),
        created: t(page.row.created_micros),
        state: if page.tenant.cancelled { tenant_state(1, page.row.shredded_micros) } else { "active" },
        retention: retention_text(page.tenant.settings.retention_days),
        region: page.tenant.settings.region.clone(),
        subjects: page.row.subjects,
        pypes,
        next,
    })
}

// ---------------------------------------------------------------- a Pype

struct CellRow {
    bucket: String,
    suppressed: bool,
    sessions: u64,
    closed_api: u64,
    closed_timer: u64,
    first_response: String,
}

struct SessionLine {
    id: String,
    state: &'static str,
    started: String,
    last: String,
    messages: u64,
}

#[derive(Template)]
#[template(path = "console/pype.html")]
struct PypePage {
    l: Layout,
    tenant: String,
    id: String,
    name: String,
    description: String,
    state: &'static str,
    active: u64,
    inactive: u64,
    closed: u64,
    total: u64,
    from: String,
    to: String,
    k: u64,
    hourly: Vec<CellRow>,
    daily: Vec<CellRow>,
    hourly_json: String,
    daily_json: String,
    sessions: Vec<SessionLine>,
    next: String,
}

fn cells(answers: &[projections::analytics::CellAnswer]) -> (Vec<CellRow>, String) {
    let rows: Vec<CellRow> = answers
        .iter()
        .map(|a| match &a.cell {
            Some(c) => CellRow {
                bucket: time_text(a.bucket_start_micros),
                suppressed: false,
                sessions: c.sessions,
                closed_api: c.closed_by_api,
                closed_timer: c.closed_by_timer,
                first_response: if c.first_response_count == 0 {
                    "-".into()
                } else {
                    format!("{:.1}", c.first_response_micros_sum as f64 / c.first_response_count as f64 / 1e6)
                },
            },
            None => CellRow {
                bucket: time_text(a.bucket_start_micros),
                suppressed: true,
                sessions: 0,
                closed_api: 0,
                closed_timer: 0,
                first_response: String::new(),
            },
        })
        .collect();
    // For the chart: (t seconds, sessions or suppressed). `<` never appears
    // in numbers and keys, so the JSON cannot end its script element.
    let json = answers
        .iter()
        .map(|a| match &a.cell {
            Some(c) => format!(
                "{{\"t\":{},\"sessions\":{},\"suppressed\":false}}",
                a.bucket_start_micros / 1_000_000,
                c.sessions
            ),
            None => format!("{{\"t\":{},\"sessions\":null,\"suppressed\":true}}", a.bucket_start_micros / 1_000_000),
        })
        .collect::<Vec<_>>()
        .join(",");
    (rows, format!("[{json}]"))
}

fn session_state(state: i32) -> &'static str {
    match proto::views::SessionState::try_from(state) {
        Ok(proto::views::SessionState::Active) => "active",
        Ok(proto::views::SessionState::Inactive) => "inactive",
        Ok(proto::views::SessionState::Closed) => "closed",
        _ => "-",
    }
}

async fn pype(req: HttpRequest, state: web::Data<HttpState>, path: web::Path<(String, String)>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let (tenant_text, pype_text) = path.into_inner();
    let (tenant, pype) = match (uuid_in_path(&s, "the tenant", &tenant_text), uuid_in_path(&s, "the Pype", &pype_text))
    {
        (Ok(t), Ok(p)) => (t, p),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let q = or_answer!(query(&req).map_err(|e| Box::new(bad_input(&s, e))));
    const HOUR: i64 = 3_600_000_000;
    let now = audit::time::now_micros();
    let parse = |name: &str, default: i64| -> Result<i64, String> {
        match field(&q, name) {
            "" => Ok(default),
            text => audit::time::parse_day_or_time(text).map_err(|e| format!("{name}: {e}")),
        }
    };
    let to_default = (now / HOUR + 1) * HOUR;
    let range = match (parse("from", to_default - 7 * 24 * HOUR), parse("to", to_default)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return bad_input(&s, e),
    };
    let after = field(&q, "after");
    let creds = s.credentials(Some(tenant));
    let call = c.app.console_pype(&creds, &tenant_text, &pype_text, range, after);
    let page = or_refused!(s, c.call("QueryAnalytics", call).await);
    let (hourly, hourly_json) = cells(&page.hourly);
    let (daily, daily_json) = cells(&page.daily);
    let sessions = page
        .sessions
        .iter()
        .map(|r| SessionLine {
            id: id_text(&r.session_id),
            state: session_state(r.state),
            started: t(r.started_micros),
            last: t(r.last_activity_micros),
            messages: r.messages,
        })
        .collect();
    let here = format!("/console/tenants/{tenant}/pypes/{pype}");
    let (from, to) = (time_text(range.0), time_text(range.1));
    let enc = serde_urlencoded::to_string([("from", from.as_str()), ("to", to.as_str())]).unwrap_or_default();
    let next = page.next.map_or_else(String::new, |n| format!("{here}?{enc}&after={n}"));
    let o = &page.overview;
    render(&PypePage {
        l: Layout::new(&s, format!("Pype {}", page.pype.name), &here),
        tenant: tenant.to_string(),
        id: pype.to_string(),
        name: page.pype.name.clone(),
        description: if page.pype.description.is_empty() { "-".into() } else { page.pype.description.clone() },
        state: if page.pype.archived { "archived" } else { "open" },
        active: o.active,
        inactive: o.inactive,
        closed: o.closed,
        total: o.sessions_total,
        from,
        to,
        k: page.k,
        hourly,
        daily,
        hourly_json,
        daily_json,
        sessions,
        next,
    })
}

// ---------------------------------------------------------------- privacy

struct ErasureLine {
    tenant: String,
    name: String,
    subject: String,
    requested: String,
    due: String,
    status: &'static str,
    class: &'static str,
    left: String,
    certified: bool,
}

#[derive(Template)]
#[template(path = "console/privacy.html")]
struct PrivacyPage {
    l: Layout,
    tenant: String,
    name: String,
    csrf: String,
    may_act: bool,
    offboarding: String,
    erasures: Vec<ErasureLine>,
    restricted: Vec<(String, String)>,
    subjects: u64,
    consents: Vec<(String, u64, u64)>,
    retention: String,
    pype_retention: Vec<(String, String)>,
    exports: Vec<(String, String, String)>,
}

/// One erasure request as the privacy pages list it: status and time left.
fn erasure_line(tenant: Uuid, name: &str, e: &proto::views::ErasureRow, now: i64) -> ErasureLine {
    let (status, class, left) = if e.certified_micros != 0 {
        ("certified", "state-ok", format!("done {}", time_text(e.certified_micros)))
    } else if e.due_micros <= now {
        ("overdue", "state-bad", format!("overdue by {}", duration_text(now - e.due_micros)))
    } else {
        ("open", "state-warn", format!("{} left", duration_text(e.due_micros - now)))
    };
    ErasureLine {
        tenant: tenant.to_string(),
        name: name.to_string(),
        subject: id_text(&e.subject_id),
        requested: t(e.requested_micros),
        due: t(e.due_micros),
        status,
        class,
        left,
        certified: e.certified_micros != 0,
    }
}

#[derive(Template)]
#[template(path = "console/erasures.html")]
struct OpenErasuresPage {
    l: Layout,
    rows: Vec<ErasureLine>,
}

async fn open_erasures(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let open = or_refused!(s, c.call("ListPrivacyRequests", c.app.console_open_erasures(&s.credentials(None))).await);
    let now = audit::time::now_micros();
    let rows = open
        .iter()
        .map(|(t, name, e)| erasure_line(Uuid::from_slice(&t.tenant_id).unwrap_or_default(), name, e, now))
        .collect();
    render(&OpenErasuresPage { l: Layout::new(&s, "Open erasure requests", "/console/privacy"), rows })
}

fn duration_text(micros: i64) -> String {
    let secs = micros.abs() / 1_000_000;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min")
    }
}

async fn privacy(req: HttpRequest, state: web::Data<HttpState>, path: web::Path<String>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let id = or_answer!(uuid_in_path(&s, "the tenant", &path));
    let page =
        or_refused!(s, c.call("ListPrivacyRequests", c.app.console_privacy(&s.credentials(Some(id)), &path)).await);
    let now = audit::time::now_micros();
    let erasures = page.erasures.iter().map(|e| erasure_line(id, &page.tenant.name, e, now)).collect();
    let offboarding = match &page.offboarding {
        Some(o) if o.shredded_at_micros != 0 => {
            format!("Offboarded: cancelled {}, keys shredded {}.", t(o.cancelled_at_micros), t(o.shredded_at_micros))
        }
        Some(o) => format!(
            "Cancelled {}: the tenant's keys are shredded on {} (grace period).",
            t(o.cancelled_at_micros),
            t(o.shred_due_micros)
        ),
        None => String::new(),
    };
    let here = format!("/console/tenants/{id}/privacy");
    let retention_days = page.tenant.settings.retention_days;
    render(&PrivacyPage {
        l: Layout::new(&s, format!("Privacy: {}", page.tenant.name), &here),
        tenant: id.to_string(),
        name: page.tenant.name.clone(),
        csrf: s.csrf.clone(),
        // Whoever the policy lets make privacy requests (the calls check again).
        may_act: matches!(
            s.principal,
            Principal::Admin
                | Principal::Tenant(_)
                | Principal::Staff { role: domain::staff::Role::PrivacyOfficer, .. }
        ),
        offboarding,
        erasures,
        restricted: page.summary.restricted.iter().map(|(s, at)| (s.to_string(), t(*at))).collect(),
        subjects: page.summary.subjects,
        consents: page.summary.consents.iter().map(|(p, (g, w))| (p.clone(), *g, *w)).collect(),
        retention: retention_text(retention_days),
        pype_retention: page
            .pype_retention
            .iter()
            .map(|(_, name, days)| {
                (
                    name.clone(),
                    days.map_or_else(|| format!("the tenant's ({})", retention_text(retention_days)), retention_text),
                )
            })
            .collect(),
        exports: page.exports.iter().map(|e| (time_text(e.at_micros), e.actor.clone(), e.target.clone())).collect(),
    })
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    l: Layout,
    heading: String,
    warning: String,
    facts: Vec<(String, String)>,
    action: String,
    hidden: Vec<(String, String)>,
    button: String,
    back: String,
}

/// What a confirmation page asks.
struct Confirm<'a> {
    heading: &'a str,
    warning: String,
    button: &'a str,
}

/// The confirmation page of the form `req` carried: the same form again
/// (its `hidden` fields, and `confirm=yes`), each field shown as a fact.
fn confirm(
    s: &SignedIn,
    req: &HttpRequest,
    back: String,
    tenant: Uuid,
    what: Confirm<'_>,
    hidden: Vec<(&str, String)>,
) -> HttpResponse {
    let title = |name: &str| {
        let mut c = name.chars();
        c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
    };
    let mut facts = vec![("Tenant".to_string(), tenant.to_string())];
    facts.extend(hidden.iter().map(|(k, v)| (title(k), v.clone())));
    render(&ConfirmPage {
        l: Layout::new(s, what.heading, &back),
        heading: what.heading.into(),
        warning: what.warning,
        facts,
        action: req.path().to_string(),
        hidden: hidden.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        button: what.button.into(),
        back,
    })
}

async fn request_erasure(
    req: HttpRequest,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let c = console(&state);
    let (s, f, tenant) = or_answer!(tenant_form(c, &req, &path, &body).await);
    let subject = or_answer!(subject_of(&s, &f));
    let back = format!("/console/tenants/{tenant}/privacy");
    if field(&f, "confirm") != "yes" {
        let what = Confirm {
            heading: "Erase this end user?",
            warning: "Erasure destroys the end user's keys: their profile, messages, media and locations become unreadable everywhere, backups included, and this cannot be undone. A signed certificate is issued when it is done.".into(),
            button: "Erase the end user",
        };
        return confirm(&s, &req, back, tenant, what, vec![("subject", subject.to_string())]);
    }
    let creds = s.credentials(Some(tenant));
    let call = c.app.request_erasure(&creds, &path, subject);
    match c.call("RequestErasure", call).await {
        Ok(_) => see_other(&format!("/console/tenants/{tenant}/erasures/{subject}")),
        Err(e) => refused(&s, e),
    }
}

async fn restriction(
    req: HttpRequest,
    state: web::Data<HttpState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let c = console(&state);
    let (s, f, tenant) = or_answer!(tenant_form(c, &req, &path, &body).await);
    let subject = or_answer!(subject_of(&s, &f));
    let restrict = match field(&f, "restrict") {
        "yes" => true,
        "no" => false,
        other => return bad_input(&s, format!("restrict: {other:?}; yes or no")),
    };
    let back = format!("/console/tenants/{tenant}/privacy");
    if field(&f, "confirm") != "yes" {
        let (heading, warning, button) = if restrict {
            (
                "Restrict this end user's processing?",
                "Their Sessions stop being processed and their messages stop being listed; their logins end. The data is kept until the restriction is lifted.",
                "Restrict processing",
            )
        } else {
            ("Lift the restriction?", "Processing of this end user's data starts again.", "Lift the restriction")
        };
        let what = Confirm { heading, warning: warning.into(), button };
        let hidden = vec![("subject", subject.to_string()), ("restrict", field(&f, "restrict").to_string())];
        return confirm(&s, &req, back, tenant, what, hidden);
    }
    let method = if restrict { "RestrictProcessing" } else { "LiftRestriction" };
    match c.call(method, c.app.set_restriction(&s.credentials(Some(tenant)), &path, subject, restrict)).await {
        Ok(_) => see_other(&back),
        Err(e) => refused(&s, e),
    }
}

#[derive(Template)]
#[template(path = "console/certificate.html")]
struct CertificatePage {
    l: Layout,
    tenant: String,
    subject: String,
    request: String,
    step: &'static str,
    requested: String,
    due: String,
    certified: bool,
    certificate: String,
    signature: String,
    public_key: String,
    server_ok: bool,
    server_check: String,
}

async fn erasure(req: HttpRequest, state: web::Data<HttpState>, path: web::Path<(String, String)>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let (tenant_text, subject_text) = path.into_inner();
    let tenant = or_answer!(uuid_in_path(&s, "the tenant", &tenant_text));
    let status = match c
        .call("GetErasure", c.app.get_erasure(&s.credentials(Some(tenant)), &tenant_text, &subject_text))
        .await
    {
        Ok((_, st)) => st,
        Err(e) => return refused(&s, e),
    };
    let public_key = c.app.erasure_public_key();
    let certified = !status.certificate.is_empty();
    let (server_ok, server_check) = if certified {
        match app::certificate::verify(&status.certificate, &status.signature, &public_key) {
            Ok(()) => {
                (true, "Checked by the server: the signature is valid (Ed25519, the erasure public key).".to_string())
            }
            Err(e) => (false, format!("Checked by the server: the signature is NOT valid: {e}")),
        }
    } else {
        (false, String::new())
    };
    render(&CertificatePage {
        l: Layout::new(&s, "Erasure", &format!("/console/tenants/{tenant}/privacy")),
        tenant: tenant.to_string(),
        subject: subject_text,
        request: status.request.to_string(),
        step: status.step,
        requested: t(status.requested_micros),
        due: t(status.due_micros),
        certified,
        certificate: status.certificate,
        signature: status.signature,
        public_key,
        server_ok,
        server_check,
    })
}

async fn certificate_file(
    req: HttpRequest,
    state: web::Data<HttpState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let (tenant_text, subject_text) = path.into_inner();
    let tenant = or_answer!(uuid_in_path(&s, "the tenant", &tenant_text));
    let status = match c
        .call("GetErasure", c.app.get_erasure(&s.credentials(Some(tenant)), &tenant_text, &subject_text))
        .await
    {
        Ok((_, st)) if !st.certificate.is_empty() => st,
        Ok(_) => return error_page(Layout::new(&s, "Not yet", ""), StatusCode::CONFLICT, "not certified yet".into()),
        Err(e) => return refused(&s, e),
    };
    let json = app::certificate::json_str;
    let body = format!(
        "{{\"certificate\":{},\"signature\":{},\"public_key\":{}}}\n",
        json(&status.certificate),
        json(&status.signature),
        json(&c.app.erasure_public_key())
    );
    let name = Uuid::try_parse(&subject_text).map_or_else(|_| "subject".into(), |u| u.to_string());
    session::harden(
        HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("content-disposition", format!("attachment; filename=\"erasure-{name}.json\"")))
            .body(body),
    )
}

// ---------------------------------------------------------------- audit

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    l: Layout,
    verified_ok: bool,
    verified: String,
    actor: String,
    action: String,
    tenant: String,
    from: String,
    to: String,
    grants: Vec<(String, String, String, String, String)>,
    shown: usize,
    matched: usize,
    entries: Vec<[String; 8]>,
}

async fn audit_page(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let q = or_answer!(query(&req).map_err(|e| Box::new(bad_input(&s, e))));
    let time = |name: &str| -> Result<Option<i64>, String> {
        match field(&q, name) {
            "" => Ok(None),
            text => audit::time::parse_day_or_time(text).map(Some).map_err(|e| format!("{name}: {e}")),
        }
    };
    let tenant = match field(&q, "tenant") {
        "" => None,
        text => match Uuid::try_parse(text) {
            Ok(t) => Some(t),
            Err(_) => return bad_input(&s, "tenant: give a tenant id (a UUID)".into()),
        },
    };
    let (from, to) = match (time("from"), time("to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return bad_input(&s, e),
    };
    let filter = AuditFilter {
        actor: field(&q, "actor").into(),
        action: field(&q, "action").into(),
        tenant,
        from_micros: from,
        to_micros: to,
        limit: 200,
    };
    let page = or_refused!(s, c.call("ReadAuditTrail", c.app.console_audit(&s.credentials(None), filter)).await);
    let (verified_ok, verified) = match &page.verified {
        Ok(r) => (
            true,
            format!(
                "The chain verifies: {} entries in {} audit streams, {} signed checkpoints, {} signed heads; {} entries after the last checkpoint (linked, not yet signed).",
                r.entries, r.streams, r.checkpoints, r.heads_checked, r.unsigned_tail
            ),
        ),
        Err(broken) => (false, format!("The chain does NOT verify: {broken}")),
    };
    render(&AuditPage {
        l: Layout::new(&s, "Audit", "/console/audit"),
        verified_ok,
        verified,
        actor: field(&q, "actor").into(),
        action: field(&q, "action").into(),
        tenant: field(&q, "tenant").into(),
        from: field(&q, "from").into(),
        to: field(&q, "to").into(),
        grants: page
            .grants
            .iter()
            .map(|(g, staff, tenant, reason, exp)| {
                (g.to_string(), staff.to_string(), tenant.to_string(), reason.clone(), t(*exp))
            })
            .collect(),
        shown: page.entries.len(),
        matched: page.matched,
        entries: page.entries.iter().map(|e| e.columns()).collect(),
    })
}

// ---------------------------------------------------------------- a Session

#[derive(Template)]
#[template(path = "console/session.html")]
struct SessionPage {
    l: Layout,
    tenant: String,
    pype: String,
    id: String,
    state: &'static str,
    started: String,
    last: String,
    closed: String,
    messages: u64,
    end_user: String,
    participants: Vec<String>,
    horizons: Vec<String>,
    may_read: bool,
    may_break_glass: bool,
    grant: String,
    content_note: String,
    content: Vec<(u64, String, String, String, String)>,
    timeline: Vec<(u64, String, String)>,
}

fn kind_text(kind: i32) -> &'static str {
    match kind {
        1 => "end user",
        2 => "agent",
        3 => "bot",
        _ => "participant",
    }
}

async fn session(req: HttpRequest, state: web::Data<HttpState>, path: web::Path<(String, String)>) -> HttpResponse {
    let c = console(&state);
    let s = or_answer!(signed(c, &req).await);
    let (tenant_text, session_text) = path.into_inner();
    let tenant = or_answer!(uuid_in_path(&s, "the tenant", &tenant_text));
    let creds = s.credentials(Some(tenant));
    let page =
        or_refused!(s, c.call("GetSessionView", c.app.console_session(&creds, &tenant_text, &session_text)).await);
    let mut content = Vec::new();
    if page.may_read {
        match c.call("ListMessages", c.app.list_messages(&creds, &session_text, 0, 100)).await {
            Ok((messages, _)) => {
                content = messages
                    .into_iter()
                    .map(|m| {
                        let body = if m.erased { "[erased]".to_string() } else { m.body };
                        (m.seq, t(m.sent_at_micros), id_text(&m.sender), body, m.device)
                    })
                    .collect();
            }
            Err(e) => return refused(&s, e),
        }
    }
    let r = &page.row;
    let content_note = match s.principal {
        Principal::Admin => "The admin key does not read content. A staff member opens a break-glass grant (with a reason) to read it; that access is audited.".to_string(),
        _ => "Message content is not shown: reading it needs a break-glass grant for this tenant, with a reason. Opening one is audited, and every read under it too.".to_string(),
    };
    let grant = page.grant.map_or_else(String::new, |(g, exp)| {
        format!("Break-glass grant {g} is open until {}: every read is audited.", t(exp))
    });
    render(&SessionPage {
        l: Layout::new(&s, "Session", ""),
        tenant: tenant.to_string(),
        pype: id_text(&r.pype_id),
        id: id_text(&r.session_id),
        state: session_state(r.state),
        started: t(r.started_micros),
        last: t(r.last_activity_micros),
        closed: t(r.closed_micros),
        messages: r.messages,
        end_user: id_text(&r.end_user_id),
        participants: r
            .participants
            .iter()
            .map(|p| {
                format!(
                    "{} ({}{})",
                    id_text(&p.participant_id),
                    kind_text(p.kind),
                    if p.present { "" } else { ", left" }
                )
            })
            .collect(),
        horizons: r
            .horizons
            .iter()
            .map(|h| format!("{} read up to #{}", id_text(&h.participant_id), h.up_to))
            .collect(),
        may_read: page.may_read,
        may_break_glass: matches!(s.principal, Principal::Staff { .. }),
        grant,
        content_note,
        content,
        timeline: page.timeline.iter().map(|(v, ty, at)| (*v, ty.clone(), t(*at))).collect(),
    })
}

async fn break_glass(
    req: HttpRequest,
    state: web::Data<HttpState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> HttpResponse {
    let c = console(&state);
    let (s, f) = or_answer!(posted(c, &req, &body).await);
    let (tenant_text, session_text) = path.into_inner();
    let (tenant, session) =
        match (uuid_in_path(&s, "the tenant", &tenant_text), uuid_in_path(&s, "the Session", &session_text)) {
            (Ok(t), Ok(x)) => (t, x),
            (Err(r), _) | (_, Err(r)) => return *r,
        };
    let reason = field(&f, "reason").to_string();
    let minutes: i64 = match field(&f, "minutes").parse() {
        Ok(m) if (1..=240).contains(&m) => m,
        _ => return bad_input(&s, "minutes: a whole number from 1 to 240".into()),
    };
    let back = format!("/console/tenants/{tenant}/sessions/{session}");
    if field(&f, "confirm") != "yes" {
        let what = Confirm {
            heading: "Open break-glass access to this tenant's content?",
            warning: format!(
                "For {minutes} minutes you may read this tenant's content. The grant, its reason and every read are written to the audit trail, and privileged-access alerts may fire."
            ),
            button: "Open the grant",
        };
        return confirm(&s, &req, back, tenant, what, vec![("reason", reason), ("minutes", minutes.to_string())]);
    }
    match c
        .call("OpenBreakGlass", c.app.open_break_glass(&s.credentials(None), &tenant_text, reason, minutes * 60))
        .await
    {
        Ok(_) => see_other(&back),
        Err(e) => refused(&s, e),
    }
}

/// Anything else under `/console`.
async fn not_found(req: HttpRequest, state: web::Data<HttpState>) -> HttpResponse {
    let c = console(&state);
    let l = match c.signed_in(&req) {
        Ok(s) => Layout::new(&s, "Not found", ""),
        Err(_) => Layout::anonymous("Not found"),
    };
    error_page(l, StatusCode::NOT_FOUND, format!("There is no console page at {}.", req.path()))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(home))
        .route("/console/", web::get().to(home))
        .route("/console/assets/{name}", web::get().to(super::assets::serve))
        .route("/console/sign-in", web::get().to(sign_in_form))
        .route("/console/sign-in", web::post().to(sign_in))
        .route("/console/sign-out", web::post().to(sign_out))
        .route("/console/overview", web::get().to(overview))
        .route("/console/api/metrics", web::get().to(metrics_json))
        .route("/console/tenants", web::get().to(tenants))
        .route("/console/tenants/{tenant}", web::get().to(tenant))
        .route("/console/tenants/{tenant}/pypes/{pype}", web::get().to(pype))
        .route("/console/tenants/{tenant}/privacy", web::get().to(privacy))
        .route("/console/tenants/{tenant}/privacy/erasure", web::post().to(request_erasure))
        .route("/console/tenants/{tenant}/privacy/restriction", web::post().to(restriction))
        .route("/console/tenants/{tenant}/erasures/{subject}", web::get().to(erasure))
        .route("/console/tenants/{tenant}/erasures/{subject}/certificate.json", web::get().to(certificate_file))
        .route("/console/audit", web::get().to(audit_page))
        .route("/console/privacy", web::get().to(open_erasures))
        .route("/console/tenants/{tenant}/sessions/{session}", web::get().to(session))
        .route("/console/tenants/{tenant}/sessions/{session}/break-glass", web::post().to(break_glass))
        .route("/console/{rest:.*}", web::route().to(not_found));
}
