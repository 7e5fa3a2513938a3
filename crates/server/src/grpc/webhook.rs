//! `WebhookService`: the tenant's webhook endpoints.

use app::webhook::NewWebhook;
use proto::api as pb;
use tonic::Request;

use super::convert::webhook_out;
use super::{Handle, Reply, credentials};

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for Handle {
    async fn create_webhook(&self, request: Request<pb::CreateWebhookRequest>) -> Reply<pb::CreateWebhookResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("CreateWebhook", async {
            let new = NewWebhook { url: r.url, description: r.description, types: r.types, pype_id: r.pype_id };
            let (view, secret) = self.app.create_webhook(&who, new).await?;
            Ok(pb::CreateWebhookResponse { webhook: Some(webhook_out(view)), secret })
        })
        .await
    }

    async fn get_webhook(&self, request: Request<pb::GetWebhookRequest>) -> Reply<pb::WebhookInfo> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetWebhook", async { Ok(webhook_out(self.app.get_webhook(&who, &r.webhook_id).await?)) }).await
    }

    async fn list_webhooks(&self, request: Request<pb::ListWebhooksRequest>) -> Reply<pb::ListWebhooksResponse> {
        let who = credentials(request.metadata());
        self.unary("ListWebhooks", async {
            let webhooks = self.app.list_webhooks(&who).await?.into_iter().map(webhook_out).collect();
            Ok(pb::ListWebhooksResponse { webhooks })
        })
        .await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Reply<pb::CreateWebhookResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("RotateWebhookSecret", async {
            let (view, secret) = self.app.rotate_webhook_secret(&who, &r.webhook_id, r.overlap_secs).await?;
            Ok(pb::CreateWebhookResponse { webhook: Some(webhook_out(view)), secret })
        })
        .await
    }

    async fn resume_webhook(&self, request: Request<pb::GetWebhookRequest>) -> Reply<pb::WebhookInfo> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ResumeWebhook", async { Ok(webhook_out(self.app.resume_webhook(&who, &r.webhook_id).await?)) })
            .await
    }

    async fn delete_webhook(&self, request: Request<pb::GetWebhookRequest>) -> Reply<pb::DeleteWebhookResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("DeleteWebhook", async {
            self.app.delete_webhook(&who, &r.webhook_id).await?;
            Ok(pb::DeleteWebhookResponse {})
        })
        .await
    }

    async fn redeliver_webhook(&self, request: Request<pb::RedeliverWebhookRequest>) -> Reply<pb::WebhookInfo> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("RedeliverWebhook", async {
            Ok(webhook_out(self.app.redeliver_webhook(&who, &r.webhook_id, r.from_micros, r.to_micros).await?))
        })
        .await
    }
}
