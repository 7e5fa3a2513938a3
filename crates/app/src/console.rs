//! What the console's pages show, one call per page: the same callers,
//! roles and audit entries as the API. A page is authorised once (its
//! method in the staff policy, the tenant it is about) and then read from
//! the views; a tenant's key sees its own tenant only, and asking for
//! another is refused (an audit entry, like every refusal).

use audit::Record;
use domain::pype::Pype;
use domain::tenant::Tenant;
use eventlog::{Direction, ReadFrom};
use projections::{analytics, catalog, sessions};
use proto::views::{CatalogPypeRow, CatalogTenantRow, ErasureRow, PypeOverviewRow, SessionRow};
use uuid::Uuid;

use crate::auth::{Caller, Credentials};
use crate::call::{current_actor, set_object, set_tenant};
use crate::{App, AppError, parse_id};

fn internal(e: impl std::fmt::Display) -> AppError {
    AppError::internal("reading the catalog", e)
}

/// Rows a console list shows per page.
pub const PAGE: usize = 50;

/// Who signed in to the console, as the pages need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Staff { id: Uuid, role: domain::staff::Role },
    Tenant(Uuid),
}

impl From<Caller> for Principal {
    fn from(c: Caller) -> Self {
        match c {
            Caller::Admin => Principal::Admin,
            Caller::Staff { id, role } => Principal::Staff { id, role },
            Caller::Tenant(t) => Principal::Tenant(t),
        }
    }
}

pub struct TenantsPage {
    /// Each tenant with its name.
    pub tenants: Vec<(CatalogTenantRow, String)>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<Uuid>,
}

pub struct TenantPage {
    pub tenant: Tenant,
    pub row: CatalogTenantRow,
    /// The tenant's Pypes (a page) with each one's name and overview.
    pub pypes: Vec<(CatalogPypeRow, String, PypeOverviewRow)>,
    pub next: Option<Uuid>,
}

pub struct PypePage {
    pub pype: Pype,
    pub overview: PypeOverviewRow,
    pub hourly: Vec<analytics::CellAnswer>,
    pub daily: Vec<analytics::CellAnswer>,
    /// Cells with fewer Sessions than this are suppressed.
    pub k: u64,
    /// The newest Sessions first is not an order the view keeps: this is
    /// the first page in start order after `after`.
    pub sessions: Vec<SessionRow>,
    pub next: Option<String>,
}

pub struct PrivacyPage {
    pub tenant: Tenant,
    pub erasures: Vec<ErasureRow>,
    pub summary: catalog::PrivacySummary,
    /// (Pype, its name, its own retention in days when it overrides the tenant's).
    pub pype_retention: Vec<(Uuid, String, Option<u32>)>,
    /// Subject exports, newest first (from the audit trail).
    pub exports: Vec<audit::TrailEntry>,
    pub offboarding: Option<crate::tenants::Offboarding>,
}

pub struct AuditPage {
    /// The chain's verification: the report, or the first break.
    pub verified: Result<audit::AuditReport, String>,
    /// Matching entries, newest first, at most `limit`.
    pub entries: Vec<audit::TrailEntry>,
    /// Entries that matched in all (more than shown when over the limit).
    pub matched: usize,
    /// Open break-glass grants: (grant, holder, tenant, reason, expires µs).
    pub grants: Vec<(Uuid, Uuid, Uuid, String, i64)>,
}

/// Which audit entries the audit page shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: String,
    pub action: String,
    pub tenant: Option<Uuid>,
    pub from_micros: Option<i64>,
    pub to_micros: Option<i64>,
    pub limit: usize,
}

impl AuditFilter {
    /// Whether `e` matches every field given.
    pub fn keeps(&self, e: &audit::TrailEntry) -> bool {
        (self.actor.is_empty() || e.actor.contains(&self.actor))
            && (self.action.is_empty() || e.action.starts_with(&self.action))
            && self.tenant.is_none_or(|t| e.tenant == Some(t))
            && self.from_micros.is_none_or(|t| e.at_micros >= t)
            && self.to_micros.is_none_or(|t| e.at_micros < t)
    }
}

pub struct SessionPage {
    pub row: SessionRow,
    /// (version, event type, recorded µs): what happened, never what was said.
    pub timeline: Vec<(u64, String, i64)>,
    /// The caller's live break-glass grant for the tenant (staff), expiry µs.
    pub grant: Option<(Uuid, i64)>,
    /// Whether the caller may read the content now (a tenant's own key,
    /// the admin key is not a reader, a staff member with a live grant).
    pub may_read: bool,
}

/// Events of a Session's timeline the page shows (the newest kept).
const TIMELINE: usize = 500;

impl App {
    /// The name an entity was created with, from its stream's first event
    /// (the catalog keeps no name). `None`: no such stream, or its events
    /// were scavenged here after the tenant moved to another region.
    async fn created_name(&self, kind: events::Kind, tenant: Uuid, id: Uuid) -> Result<Option<String>, AppError> {
        let stream = events::stream::stream_name(kind, tenant, id);
        let first = match self.log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 1).await {
            Ok(first) => first,
            Err(eventlog::LogError::StreamNotFound { .. } | eventlog::LogError::StreamDeleted { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(r) = first.first() else { return Ok(None) };
        let decoded = match r.event_type() {
            events::types::TENANT_CREATED => {
                <proto::events::TenantCreated as proto::Message>::decode(r.event.payload.clone()).map(|e| e.name)
            }
            events::types::PYPE_CREATED => {
                <proto::events::PypeCreated as proto::Message>::decode(r.event.payload.clone()).map(|e| e.name)
            }
            _ => return Ok(None),
        };
        decoded.map(Some).map_err(|e| AppError::internal("reading a name", e))
    }

    async fn tenant_name(&self, tenant: Uuid) -> Result<String, AppError> {
        Ok(self.created_name(events::Kind::Tenant, tenant, tenant).await?.unwrap_or_default())
    }

    /// Checks the key a console sign-in presents: the principal, and an
    /// audit entry either way.
    pub async fn console_sign_in(&self, who: &Credentials) -> Result<Principal, AppError> {
        match self.caller(who).await {
            Ok(c) => {
                let tenant = match c {
                    Caller::Tenant(t) => Some(t),
                    _ => None,
                };
                let mut r = Record::new("console.sign_in", current_actor(), "ok");
                if let Some(t) = tenant {
                    r = r.tenant(t);
                }
                self.audit.record(r).await?;
                Ok(c.into())
            }
            Err(e) => {
                self.audit.note(Record::new("console.sign_in", "anonymous", "failed")).await;
                Err(e)
            }
        }
    }

    /// An audit entry for what the console refused before any key was
    /// checked (a form without its CSRF token, a session that had ended,
    /// a locked-out address).
    pub async fn console_note(&self, action: &'static str, outcome: &'static str, detail: String) {
        self.audit.note(Record::new(action, "browser", outcome).detail(detail)).await;
    }

    /// Notes a console sign-out (the session's key is checked again).
    pub async fn console_sign_out(&self, who: &Credentials, reason: &'static str) -> Result<(), AppError> {
        self.caller(who).await?;
        self.audit.record(Record::new("console.sign_out", current_actor(), "ok").detail(reason)).await?;
        Ok(())
    }

    /// The console's check of a page about `tenant`: a tenant key for that
    /// tenant, the admin key, or a staff member whose role may make the
    /// current call (written to the audit trail).
    async fn console_tenant_access(&self, who: &Credentials, tenant: Uuid) -> Result<Principal, AppError> {
        self.local(tenant)?;
        let caller = self.caller(who).await?;
        match caller {
            Caller::Tenant(t) if t != tenant => {
                return Err(AppError::Forbidden(format!("this API key is not a key of tenant {tenant}")));
            }
            Caller::Staff { id, role } => self.staff_may(id, role, Some(tenant)).await?,
            _ => {}
        }
        set_tenant(tenant);
        Ok(caller.into())
    }

    /// The operators' page: the admin key, or a staff role that may
    /// (`ReadNodeMetrics`).
    pub async fn console_operator(&self, who: &Credentials) -> Result<Principal, AppError> {
        Ok(self.platform(who).await?.into())
    }

    /// Tenants whose name contains `search`, a page after `after` (`ListTenants`).
    /// A tenant's key lists its own tenant.
    pub async fn console_tenants(&self, who: &Credentials, search: &str, after: &str) -> Result<TenantsPage, AppError> {
        let after = if after.is_empty() { None } else { Some(parse_id("after", after)?) };
        if search.len() > 200 {
            return Err(AppError::invalid("q", "at most 200 bytes"));
        }
        let view = self.views.read(catalog::NAME).await?;
        let own = match self.caller(who).await? {
            Caller::Tenant(t) => Some(t),
            Caller::Staff { id, role } => {
                self.staff_may(id, role, None).await?;
                None
            }
            Caller::Admin => None,
        };
        let needle = search.to_lowercase();
        if let Some(t) = own {
            let mut tenants = Vec::new();
            if let Some(row) = catalog::tenant(&view, t).map_err(internal)? {
                let name = self.tenant_name(t).await?;
                if name.to_lowercase().contains(&needle) {
                    tenants.push((row, name));
                }
            }
            return Ok(TenantsPage { tenants, next: None });
        }
        // Names are read from each tenant's first event: a search reads them
        // page by page until a page of matches (or the end).
        let mut tenants = Vec::new();
        let mut cursor = after;
        'pages: loop {
            let rows = catalog::tenants(&view, cursor, 1024).map_err(internal)?;
            let full = rows.len() == 1024;
            for row in rows {
                let id = Uuid::from_slice(&row.tenant_id).map_err(internal)?;
                cursor = Some(id);
                let name = self.tenant_name(id).await?;
                if name.to_lowercase().contains(&needle) {
                    tenants.push((row, name));
                    if tenants.len() > PAGE {
                        break 'pages;
                    }
                }
            }
            if !full {
                break;
            }
        }
        let next = if tenants.len() > PAGE {
            tenants.truncate(PAGE);
            tenants.last().and_then(|(t, _)| Uuid::from_slice(&t.tenant_id).ok())
        } else {
            None
        };
        Ok(TenantsPage { tenants, next })
    }

    /// A tenant and a page of its Pypes (`ListPypes`).
    pub async fn console_tenant(
        &self,
        who: &Credentials,
        tenant_id: &str,
        after: &str,
    ) -> Result<TenantPage, AppError> {
        let tenant_id = parse_id("tenant_id", tenant_id)?;
        let after = if after.is_empty() { None } else { Some(parse_id("after", after)?) };
        self.console_tenant_access(who, tenant_id).await?;
        let tenant = self.registry.read::<Tenant>(tenant_id, tenant_id).await?.into_state();
        tenant.id.ok_or_else(|| AppError::not_found("tenant"))?;
        let view = self.views.read(catalog::NAME).await?;
        let row = catalog::tenant(&view, tenant_id).map_err(internal)?.unwrap_or_default();
        let mut rows = catalog::pypes(&view, tenant_id, after, PAGE + 1).map_err(internal)?;
        drop(view);
        let next = if rows.len() > PAGE {
            rows.truncate(PAGE);
            rows.last().and_then(|p| Uuid::from_slice(&p.pype_id).ok())
        } else {
            None
        };
        let sessions_view = self.views.read(sessions::NAME).await?;
        let mut pypes = Vec::with_capacity(rows.len());
        for p in rows {
            let id = Uuid::from_slice(&p.pype_id).map_err(internal)?;
            let o = sessions::pype_overview(&sessions_view, tenant_id, id).map_err(internal)?.unwrap_or_default();
            let name = self.created_name(events::Kind::Pype, tenant_id, id).await?.unwrap_or_default();
            pypes.push((p, name, o));
        }
        Ok(TenantPage { tenant, row, pypes, next })
    }

    /// A Pype: Sessions by state, analytics per hour and per day over
    /// `[from, to)`, and a page of its Sessions (`QueryAnalytics`).
    pub async fn console_pype(
        &self,
        who: &Credentials,
        tenant_id: &str,
        pype_id: &str,
        range: (i64, i64),
        after: &str,
    ) -> Result<PypePage, AppError> {
        let tenant = parse_id("tenant_id", tenant_id)?;
        let pype_id = parse_id("pype_id", pype_id)?;
        let (from, to) = range;
        crate::reads::check_analytics_range(from, to, analytics::Granularity::Hour.micros())?;
        let cursor = match after {
            "" => None,
            t => Some(
                hex::decode(t)
                    .ok()
                    .filter(|c| c.len() == 56)
                    .ok_or_else(|| AppError::invalid("after", "not a cursor this console made"))?,
            ),
        };
        self.console_tenant_access(who, tenant).await?;
        let pype = self.pype_of(tenant, pype_id).await?;
        let view = self.views.read(sessions::NAME).await?;
        let overview = sessions::pype_overview(&view, tenant, pype_id).map_err(internal)?.unwrap_or_default();
        let mut rows =
            sessions::list_sessions(&view, tenant, pype_id, cursor.as_deref(), PAGE + 1).map_err(internal)?;
        drop(view);
        let next = if rows.len() > PAGE {
            rows.truncate(PAGE);
            rows.last().map(|(k, _)| hex::encode(k))
        } else {
            None
        };
        let view = self.views.read(analytics::NAME).await?;
        let k = self.analytics_k;
        // Days start at midnight UTC: the daily range is widened to whole days.
        let day = analytics::Granularity::Day.micros();
        let hourly =
            analytics::query(&view, tenant, pype_id, analytics::Granularity::Hour, from, to, k).map_err(internal)?;
        let (day_from, day_to) = (from / day * day, (to / day + i64::from(to % day != 0)) * day);
        let daily = analytics::query(&view, tenant, pype_id, analytics::Granularity::Day, day_from, day_to, k)
            .map_err(internal)?;
        Ok(PypePage { pype, overview, hourly, daily, k, sessions: rows.into_iter().map(|(_, r)| r).collect(), next })
    }

    /// A tenant's privacy processes (`ListPrivacyRequests`).
    pub async fn console_privacy(&self, who: &Credentials, tenant_id: &str) -> Result<PrivacyPage, AppError> {
        let tenant_id = parse_id("tenant_id", tenant_id)?;
        self.console_tenant_access(who, tenant_id).await?;
        let tenant = self.registry.read::<Tenant>(tenant_id, tenant_id).await?.into_state();
        tenant.id.ok_or_else(|| AppError::not_found("tenant"))?;
        let view = self.views.read(catalog::NAME).await?;
        let erasures = catalog::erasures(&view, tenant_id).map_err(internal)?;
        let summary = catalog::privacy(&view, tenant_id).map_err(internal)?;
        let pypes = catalog::pypes(&view, tenant_id, None, usize::MAX).map_err(internal)?;
        drop(view);
        let mut pype_retention = Vec::new();
        for p in pypes {
            let id = Uuid::from_slice(&p.pype_id).map_err(internal)?;
            let state = self.pype_of(tenant_id, id).await?;
            pype_retention.push((id, state.name, state.retention_days));
        }
        // A list, not a verification (the audit page verifies the chain).
        let mut exports =
            audit::read_trail(self.log.as_ref(), |e| e.action == "privacy.export" && e.tenant == Some(tenant_id))
                .await
                .map_err(|e| AppError::Internal(format!("reading the audit trail: {e}")))?;
        exports.reverse();
        exports.truncate(PAGE);
        let offboarding = tenant.cancelled.then(|| self.offboarding_of(tenant_id, &tenant));
        Ok(PrivacyPage { tenant, erasures, summary, pype_retention, exports, offboarding })
    }

    /// Open erasure requests of every tenant with the tenant's name, oldest
    /// due first (`ListPrivacyRequests`, platform staff and the admin key).
    pub async fn console_open_erasures(
        &self,
        who: &Credentials,
    ) -> Result<Vec<(CatalogTenantRow, String, ErasureRow)>, AppError> {
        self.platform(who).await?;
        let view = self.views.read(catalog::NAME).await?;
        let open = catalog::open_erasures(&view).map_err(internal)?;
        let mut out = Vec::with_capacity(open.len());
        for (tenant, row) in open {
            let t = catalog::tenant(&view, tenant)
                .map_err(internal)?
                .unwrap_or_else(|| CatalogTenantRow { tenant_id: tenant.as_bytes().to_vec(), ..Default::default() });
            let name = self.tenant_name(tenant).await?;
            out.push((t, name, row));
        }
        Ok(out)
    }

    /// The audit trail, verified as it is read, filtered (`ReadAuditTrail`).
    pub async fn console_audit(&self, who: &Credentials, f: AuditFilter) -> Result<AuditPage, AppError> {
        self.platform(who).await?;
        let unreadable = |e: String| AppError::Internal(format!("reading the audit trail: {e}"));
        let (verified, mut entries) = match self.audit.verified_entries(self.log.as_ref(), |e| f.keeps(e)).await {
            Ok((report, entries)) => (Ok(report), entries),
            Err(broken) => {
                // The break is the news; the entries are still shown (read
                // without the check), so the page says where it broke.
                let entries = audit::read_trail(self.log.as_ref(), |e| f.keeps(e)).await.map_err(unreadable)?;
                (Err(broken), entries)
            }
        };
        let matched = entries.len();
        entries.sort_by_key(|e| std::cmp::Reverse(e.at_micros));
        entries.truncate(f.limit.max(1));
        let now = self.clock.now_micros();
        let grants = self
            .staff
            .with(|d| {
                d.grants
                    .iter()
                    .filter(|(_, g)| g.live(now))
                    .map(|(id, g)| (*id, g.staff, g.tenant, g.reason.clone(), g.expires_micros))
                    .collect()
            })
            .await?;
        Ok(AuditPage { verified, matched, entries, grants })
    }

    /// A Session's metadata and timeline (`GetSessionView`).
    pub async fn console_session(
        &self,
        who: &Credentials,
        tenant_id: &str,
        session_id: &str,
    ) -> Result<SessionPage, AppError> {
        let tenant = parse_id("tenant_id", tenant_id)?;
        let session = parse_id("session_id", session_id)?;
        set_object(crate::call::Object::Session(session));
        let principal = self.console_tenant_access(who, tenant).await?;
        let view = self.views.read(sessions::NAME).await?;
        let row = sessions::get_session(&view, tenant, session)
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("session"))?;
        drop(view);
        let stream = events::stream::stream_name(events::Kind::Session, tenant, session);
        let newest = self.log.read_stream(&stream, ReadFrom::End, Direction::Backward, TIMELINE).await?;
        let timeline =
            newest.iter().rev().map(|e| (e.version, e.event_type().to_string(), e.recorded_at_micros)).collect();
        let now = self.clock.now_micros();
        let (grant, may_read) = match principal {
            Principal::Staff { id, .. } => {
                let g = self.staff.with(|d| d.live_grant(id, tenant, now).map(|(g, x)| (g, x.expires_micros))).await?;
                (g, g.is_some())
            }
            Principal::Tenant(_) => (None, true),
            Principal::Admin => (None, false),
        };
        Ok(SessionPage { row, timeline, grant, may_read })
    }
}
