//! Managing the platform's staff: members, their keys, break-glass grants.

use audit::Record;
use domain::staff::{Grant, Member, Role, StaffCommand, StaffDirectory};
use uuid::Uuid;

use crate::auth::{self, Caller, Credentials};
use crate::call::current_actor;
use crate::{App, AppError, parse_id};

/// A member and the one copy of their new key.
pub struct StaffKey {
    pub staff: Uuid,
    pub member: Member,
    pub api_key: String,
}

/// The directory as listed: members and the grants live now.
pub struct StaffList {
    pub members: Vec<(Uuid, Member)>,
    pub live_grants: Vec<(Uuid, Grant)>,
    pub now_micros: i64,
}

fn member(d: &StaffDirectory, id: Uuid) -> Result<Member, AppError> {
    d.members.get(&id).cloned().ok_or_else(|| AppError::not_found("staff member"))
}

/// The staff member making the call (break-glass grants are personal).
fn staff_caller(caller: Caller) -> Result<Uuid, AppError> {
    match caller {
        Caller::Staff { id, .. } => Ok(id),
        _ => Err(AppError::Forbidden("break-glass grants are for staff keys".into())),
    }
}

impl App {
    async fn issue_staff_key(
        &self,
        action: &'static str,
        staff: Uuid,
        add: Option<Role>,
    ) -> Result<StaffKey, AppError> {
        let (token, hash) = auth::new_staff_key(staff)?;
        let command = match add {
            Some(role) => StaffCommand::Add { staff, role, key_sha256: hash },
            None => StaffCommand::RotateKey { staff, key_sha256: hash },
        };
        let (_, directory) = self.staff.execute(command).await?;
        let m = member(&directory, staff)?;
        self.audit
            .record(Record::new(action, current_actor(), "ok").target(format!("staff:{staff}")).detail(m.role.name()))
            .await?;
        Ok(StaffKey { staff, member: m, api_key: token })
    }

    pub async fn add_staff(&self, who: &Credentials, role: Result<Role, AppError>) -> Result<StaffKey, AppError> {
        self.platform(who).await?;
        let role = role?;
        self.issue_staff_key("staff.add", Uuid::now_v7(), Some(role)).await
    }

    pub async fn rotate_staff_key(&self, who: &Credentials, staff_id: &str) -> Result<StaffKey, AppError> {
        self.platform(who).await?;
        let staff = parse_id("staff_id", staff_id)?;
        self.issue_staff_key("staff.rotate_key", staff, None).await
    }

    pub async fn disable_staff(&self, who: &Credentials, staff_id: &str) -> Result<(Uuid, Member), AppError> {
        self.platform(who).await?;
        let staff = parse_id("staff_id", staff_id)?;
        let (_, directory) = self.staff.execute(StaffCommand::Disable { staff }).await?;
        self.audit.record(Record::new("staff.disable", current_actor(), "ok").target(format!("staff:{staff}"))).await?;
        Ok((staff, member(&directory, staff)?))
    }

    pub async fn list_staff(&self, who: &Credentials) -> Result<StaffList, AppError> {
        self.platform(who).await?;
        let d = self.staff.directory().await?;
        let now = self.clock.now_micros();
        Ok(StaffList {
            members: d.members.into_iter().collect(),
            live_grants: d.grants.into_iter().filter(|(_, g)| g.live(now)).collect(),
            now_micros: now,
        })
    }

    /// Opens a break-glass grant for the calling staff member: (grant id,
    /// grant, now).
    pub async fn open_break_glass(
        &self,
        who: &Credentials,
        tenant_id: &str,
        reason: String,
        duration_secs: i64,
    ) -> Result<(Uuid, Grant, i64), AppError> {
        let staff = staff_caller(self.platform(who).await?)?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        self.local(tenant)?;
        let grant = Uuid::now_v7();
        let command = StaffCommand::OpenBreakGlass { grant, staff, tenant, reason, duration_secs };
        let (_, d) = self.staff.execute(command).await?;
        let g = d.grants.get(&grant).cloned().ok_or_else(|| AppError::Internal("the new grant is missing".into()))?;
        self.audit
            .record(
                Record::new("staff.break_glass_open", current_actor(), "ok")
                    .tenant(tenant)
                    .target(format!("grant:{grant}"))
                    .detail(format!("expires_micros={}", g.expires_micros)),
            )
            .await?;
        Ok((grant, g, self.clock.now_micros()))
    }

    pub async fn close_break_glass(&self, who: &Credentials, grant_id: &str) -> Result<(Uuid, Grant, i64), AppError> {
        let by = staff_caller(self.platform(who).await?)?;
        let grant = parse_id("grant_id", grant_id)?;
        let (_, d) = self.staff.execute(StaffCommand::CloseBreakGlass { grant, by }).await?;
        let g = d.grants.get(&grant).cloned().ok_or_else(|| AppError::Internal("the grant is missing".into()))?;
        self.audit
            .record(
                Record::new("staff.break_glass_close", current_actor(), "ok")
                    .tenant(g.tenant)
                    .target(format!("grant:{grant}")),
            )
            .await?;
        Ok((grant, g, self.clock.now_micros()))
    }
}

/// The longest window a breach scope covers.
const MAX_SCOPE_MICROS: i64 = 366 * 86_400 * 1_000_000;

/// A breach scope as the API answers it.
#[derive(Debug)]
pub struct AccessScopes {
    pub actors: Vec<String>,
    pub from_micros: i64,
    pub to_micros: i64,
    pub scopes: Vec<audit::scope::Scope>,
    /// Audit entries verified on the way.
    pub verified: u64,
}

impl App {
    /// Breach scope: whose data `actor` reached in `[from, to)`, from the
    /// audit trail after its chain is verified.
    pub async fn scope_access(
        &self,
        who: &Credentials,
        actor: &str,
        from_micros: i64,
        to_micros: i64,
    ) -> Result<AccessScopes, AppError> {
        self.platform(who).await?;
        let actors = audit::scope::actors_for(actor).map_err(|e| AppError::invalid("actor", e))?;
        let to = if to_micros == 0 { self.clock.now_micros() } else { to_micros };
        if from_micros < 0 || from_micros >= to {
            return Err(AppError::invalid("from_micros", "the window is empty: from_micros is not before to_micros"));
        }
        if to - from_micros > MAX_SCOPE_MICROS {
            return Err(AppError::invalid("to_micros", "the window is longer than 366 days"));
        }
        self.audit.record(Record::new("privacy.breach_scope", current_actor(), "ok").target(actors.join(" "))).await?;
        let keep = |e: &audit::TrailEntry| actors.contains(&e.actor) && e.at_micros >= from_micros && e.at_micros < to;
        let (report, entries) =
            self.audit.verified_entries(self.log.as_ref(), keep).await.map_err(|e| {
                AppError::DataLoss(format!("the audit trail does not verify, so no scope is given: {e}"))
            })?;
        let scopes = actors.iter().map(|a| audit::scope::scope_of(&entries, a, from_micros, to)).collect();
        Ok(AccessScopes { actors, from_micros, to_micros: to, scopes, verified: report.entries })
    }
}
