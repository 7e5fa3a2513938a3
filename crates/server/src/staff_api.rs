//! `StaffService`: staff members and break-glass grants over gRPC.

use domain::staff::{Grant, Member, Role, StaffCommand, StaffDirectory};
use proto::api as pb;
use tonic::Request;
use uuid::Uuid;

use crate::api::Handle;
use crate::auth::{self, Caller};
use crate::error::{ApiError, parse_id};
use audit::Record;

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

fn role_in(r: i32) -> Result<Role, ApiError> {
    match pb::StaffRole::try_from(r) {
        Ok(pb::StaffRole::Support) => Ok(Role::Support),
        Ok(pb::StaffRole::PrivacyOfficer) => Ok(Role::PrivacyOfficer),
        Ok(pb::StaffRole::Admin) => Ok(Role::Admin),
        _ => Err(ApiError::invalid("role", "one of SUPPORT, PRIVACY_OFFICER, ADMIN")),
    }
}

fn role_out(r: Role) -> i32 {
    (match r {
        Role::Support => pb::StaffRole::Support,
        Role::PrivacyOfficer => pb::StaffRole::PrivacyOfficer,
        Role::Admin => pb::StaffRole::Admin,
    }) as i32
}

fn member_out(id: Uuid, m: &Member) -> pb::StaffMember {
    pb::StaffMember {
        staff_id: id.to_string(),
        role: role_out(m.role),
        disabled: m.disabled,
        added_micros: m.added_micros,
    }
}

fn grant_out(id: Uuid, g: &Grant, now: i64) -> pb::BreakGlassGrant {
    pb::BreakGlassGrant {
        grant_id: id.to_string(),
        staff_id: g.staff.to_string(),
        tenant_id: g.tenant.to_string(),
        reason: g.reason.clone(),
        opened_micros: g.opened_micros,
        expires_micros: g.expires_micros,
        live: g.live(now),
    }
}

fn member(d: &StaffDirectory, id: Uuid) -> Result<&Member, ApiError> {
    d.members
        .get(&id)
        .ok_or(ApiError::Actor(actors::ActorError::Rejected(domain::Rejection::NotFound { what: "staff member" })))
}

/// The staff member making the call (break-glass grants are personal).
fn staff_caller(caller: Caller) -> Result<Uuid, ApiError> {
    match caller {
        Caller::Staff { id, .. } => Ok(id),
        _ => Err(ApiError::Forbidden("break-glass grants are for staff keys".into())),
    }
}

impl Handle {
    async fn issue_key(&self, method: &'static str, staff: Uuid, add: Option<Role>) -> Result<pb::StaffKey, ApiError> {
        let api = &self.0;
        let (token, hash) = auth::new_staff_key(staff)?;
        let command = match add {
            Some(role) => StaffCommand::Add { staff, role, key_sha256: hash },
            None => StaffCommand::RotateKey { staff, key_sha256: hash },
        };
        let (_, directory) = api.staff.execute(command).await?;
        let m = member(&directory, staff)?;
        api.audit
            .record(
                Record::new(method, crate::api::current_actor(), "ok")
                    .target(format!("staff:{staff}"))
                    .detail(m.role.name()),
            )
            .await?;
        Ok(pb::StaffKey { member: Some(member_out(staff, m)), api_key: token })
    }
}

#[tonic::async_trait]
impl pb::staff_service_server::StaffService for Handle {
    async fn add_staff(&self, request: Request<pb::AddStaffRequest>) -> Reply<pb::StaffKey> {
        let api = &self.0;
        api.timed("AddStaff", async {
            api.platform(request.metadata()).await?;
            let role = role_in(request.get_ref().role)?;
            self.issue_key("staff.add", Uuid::now_v7(), Some(role)).await
        })
        .await
    }

    async fn rotate_staff_key(&self, request: Request<pb::StaffRef>) -> Reply<pb::StaffKey> {
        let api = &self.0;
        api.timed("RotateStaffKey", async {
            api.platform(request.metadata()).await?;
            let staff = parse_id("staff_id", &request.get_ref().staff_id)?;
            self.issue_key("staff.rotate_key", staff, None).await
        })
        .await
    }

    async fn disable_staff(&self, request: Request<pb::StaffRef>) -> Reply<pb::StaffMember> {
        let api = &self.0;
        api.timed("DisableStaff", async {
            api.platform(request.metadata()).await?;
            let staff = parse_id("staff_id", &request.get_ref().staff_id)?;
            let (_, directory) = api.staff.execute(StaffCommand::Disable { staff }).await?;
            api.audit
                .record(
                    Record::new("staff.disable", crate::api::current_actor(), "ok").target(format!("staff:{staff}")),
                )
                .await?;
            Ok(member_out(staff, member(&directory, staff)?))
        })
        .await
    }

    async fn list_staff(&self, request: Request<pb::ListStaffRequest>) -> Reply<pb::ListStaffResponse> {
        let api = &self.0;
        api.timed("ListStaff", async {
            api.platform(request.metadata()).await?;
            let d = api.staff.directory().await?;
            let now = api.staff.now_micros();
            Ok(pb::ListStaffResponse {
                staff: d.members.iter().map(|(id, m)| member_out(*id, m)).collect(),
                live_grants: d
                    .grants
                    .iter()
                    .filter(|(_, g)| g.live(now))
                    .map(|(id, g)| grant_out(*id, g, now))
                    .collect(),
            })
        })
        .await
    }

    async fn open_break_glass(&self, request: Request<pb::OpenBreakGlassRequest>) -> Reply<pb::BreakGlassGrant> {
        let api = &self.0;
        api.timed("OpenBreakGlass", async {
            let caller = api.platform(request.metadata()).await?;
            let staff = staff_caller(caller)?;
            let r = request.into_inner();
            let tenant = parse_id("tenant_id", &r.tenant_id)?;
            let grant = Uuid::now_v7();
            let command =
                StaffCommand::OpenBreakGlass { grant, staff, tenant, reason: r.reason, duration_secs: r.duration_secs };
            let (_, d) = api.staff.execute(command).await?;
            let g = d.grants.get(&grant).ok_or_else(|| ApiError::Internal("the new grant is missing".into()))?;
            api.audit
                .record(
                    Record::new("staff.break_glass_open", crate::api::current_actor(), "ok")
                        .tenant(tenant)
                        .target(format!("grant:{grant}"))
                        .detail(format!("expires_micros={}", g.expires_micros)),
                )
                .await?;
            Ok(grant_out(grant, g, api.staff.now_micros()))
        })
        .await
    }

    async fn close_break_glass(&self, request: Request<pb::CloseBreakGlassRequest>) -> Reply<pb::BreakGlassGrant> {
        let api = &self.0;
        api.timed("CloseBreakGlass", async {
            let caller = api.platform(request.metadata()).await?;
            let by = staff_caller(caller)?;
            let grant = parse_id("grant_id", &request.get_ref().grant_id)?;
            let (_, d) = api.staff.execute(StaffCommand::CloseBreakGlass { grant, by }).await?;
            let g = d.grants.get(&grant).ok_or_else(|| ApiError::Internal("the grant is missing".into()))?;
            api.audit
                .record(
                    Record::new("staff.break_glass_close", crate::api::current_actor(), "ok")
                        .tenant(g.tenant)
                        .target(format!("grant:{grant}")),
                )
                .await?;
            Ok(grant_out(grant, g, api.staff.now_micros()))
        })
        .await
    }
}
