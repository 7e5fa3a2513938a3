//! `TenantService`.

use proto::api as pb;
use tonic::Request;

use super::convert::{offboarding_out, tenant_out, timers_in};
use super::{Handle, Reply, credentials};

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for Handle {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Reply<pb::CreateTenantResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("CreateTenant", async {
            let c =
                self.app.create_tenant(&who, r.name, timers_in(r.default_timers), r.retention_days, r.region).await?;
            Ok(pb::CreateTenantResponse {
                tenant: Some(tenant_out(&c.tenant)),
                api_key: c.api_key,
                api_key_id: c.api_key_id.to_string(),
            })
        })
        .await
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Reply<pb::Tenant> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetTenant", async { Ok(tenant_out(&self.app.get_tenant(&who, &r.tenant_id).await?)) }).await
    }

    async fn create_api_key(&self, request: Request<pb::CreateApiKeyRequest>) -> Reply<pb::CreateApiKeyResponse> {
        let who = credentials(request.metadata());
        self.unary("CreateApiKey", async {
            let (key_id, token) = self.app.create_api_key(&who).await?;
            Ok(pb::CreateApiKeyResponse { api_key: token, api_key_id: key_id.to_string() })
        })
        .await
    }

    async fn set_retention(&self, request: Request<pb::SetRetentionRequest>) -> Reply<pb::SetRetentionResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("SetRetention", async {
            let done = self.app.set_retention(&who, &r.pype_id, r.retention_days, r.inherit).await?;
            Ok(pb::SetRetentionResponse {
                tenant_retention_days: done.tenant_days,
                pype_retention_days: done.pype_days,
            })
        })
        .await
    }

    async fn cancel_tenant(&self, request: Request<pb::CancelTenantRequest>) -> Reply<pb::Offboarding> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("CancelTenant", async { Ok(offboarding_out(self.app.cancel_tenant(&who, &r.tenant_id).await?)) })
            .await
    }

    async fn get_offboarding(&self, request: Request<pb::CancelTenantRequest>) -> Reply<pb::Offboarding> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetOffboarding", async { Ok(offboarding_out(self.app.get_offboarding(&who, &r.tenant_id).await?)) })
            .await
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Reply<pb::RevokeApiKeyResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("RevokeApiKey", async {
            self.app.revoke_api_key(&who, &r.api_key_id, &r.tenant_id).await?;
            Ok(pb::RevokeApiKeyResponse {})
        })
        .await
    }
}
