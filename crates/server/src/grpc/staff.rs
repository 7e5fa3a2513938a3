//! `StaffService`: staff members and break-glass grants.

use proto::api as pb;
use tonic::Request;

use super::convert::{grant_out, member_out, role_in};
use super::{Handle, Reply, credentials};

fn key_out(k: app::staff_admin::StaffKey) -> pb::StaffKey {
    pb::StaffKey { member: Some(member_out(k.staff, &k.member)), api_key: k.api_key }
}

fn scope_out(s: app::staff_admin::AccessScopes) -> pb::AccessScope {
    let ids = |set: &std::collections::BTreeSet<uuid::Uuid>| set.iter().map(|u| u.to_string()).collect();
    let tenants = s
        .scopes
        .iter()
        .flat_map(|scope| {
            scope.tenants.iter().map(|(tenant, t)| pb::TenantAccessScope {
                actor: scope.actor.clone(),
                tenant_id: tenant.to_string(),
                whole_tenant_because: t.whole_tenant.iter().cloned().collect(),
                subject_ids: ids(&t.subjects),
                session_ids: ids(&t.sessions),
                calls: t.calls,
                refused: t.refused,
                first_micros: t.first_micros,
                last_micros: t.last_micros,
                actions: t.actions.iter().map(|(a, n)| format!("{a}={n}")).collect(),
            })
        })
        .collect();
    pb::AccessScope {
        actors: s.actors,
        from_micros: s.from_micros,
        to_micros: s.to_micros,
        entries: s.scopes.iter().map(|x| x.entries).sum(),
        tenants,
        entries_verified: s.verified,
    }
}

#[tonic::async_trait]
impl pb::staff_service_server::StaffService for Handle {
    async fn add_staff(&self, request: Request<pb::AddStaffRequest>) -> Reply<pb::StaffKey> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("AddStaff", async { Ok(key_out(self.app.add_staff(&who, role_in(r.role)).await?)) }).await
    }

    async fn rotate_staff_key(&self, request: Request<pb::StaffRef>) -> Reply<pb::StaffKey> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("RotateStaffKey", async { Ok(key_out(self.app.rotate_staff_key(&who, &r.staff_id).await?)) }).await
    }

    async fn disable_staff(&self, request: Request<pb::StaffRef>) -> Reply<pb::StaffMember> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("DisableStaff", async {
            let (id, member) = self.app.disable_staff(&who, &r.staff_id).await?;
            Ok(member_out(id, &member))
        })
        .await
    }

    async fn list_staff(&self, request: Request<pb::ListStaffRequest>) -> Reply<pb::ListStaffResponse> {
        let who = credentials(request.metadata());
        self.unary("ListStaff", async {
            let l = self.app.list_staff(&who).await?;
            Ok(pb::ListStaffResponse {
                staff: l.members.iter().map(|(id, m)| member_out(*id, m)).collect(),
                live_grants: l.live_grants.iter().map(|(id, g)| grant_out(*id, g, l.now_micros)).collect(),
            })
        })
        .await
    }

    async fn open_break_glass(&self, request: Request<pb::OpenBreakGlassRequest>) -> Reply<pb::BreakGlassGrant> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("OpenBreakGlass", async {
            let (id, g, now) = self.app.open_break_glass(&who, &r.tenant_id, r.reason, r.duration_secs).await?;
            Ok(grant_out(id, &g, now))
        })
        .await
    }

    async fn scope_access(&self, request: Request<pb::ScopeAccessRequest>) -> Reply<pb::AccessScope> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ScopeAccess", async {
            let s = self.app.scope_access(&who, &r.actor, r.from_micros, r.to_micros).await?;
            Ok(scope_out(s))
        })
        .await
    }

    async fn close_break_glass(&self, request: Request<pb::CloseBreakGlassRequest>) -> Reply<pb::BreakGlassGrant> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("CloseBreakGlass", async {
            let (id, g, now) = self.app.close_break_glass(&who, &r.grant_id).await?;
            Ok(grant_out(id, &g, now))
        })
        .await
    }
}
