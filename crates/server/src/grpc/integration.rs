//! `IntegrationService`: the tenant's event feed.

use app::feed::{FeedRequest, FeedStart};
use proto::api as pb;
use tonic::Request;

use super::convert::{export_record_out, feed_out};
use super::{Handle, Reply, Streamed, credentials};

#[tonic::async_trait]
impl pb::integration_service_server::IntegrationService for Handle {
    type SubscribeTenantEventsStream = Streamed<pb::FeedMessage>;

    async fn subscribe_tenant_events(
        &self,
        request: Request<pb::SubscribeTenantEventsRequest>,
    ) -> Reply<Self::SubscribeTenantEventsStream> {
        use pb::subscribe_tenant_events_request::From;
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let start = match r.from {
            None | Some(From::FromStart(false)) => FeedStart::Now,
            Some(From::FromStart(true)) => FeedStart::Start,
            Some(From::AfterPosition(p)) => FeedStart::After(p),
        };
        let feed = FeedRequest { start, types: r.types, pype_id: r.pype_id, session_id: r.session_id };
        self.streaming("SubscribeTenantEvents", self.app.subscribe_tenant_events(&who, feed), feed_out).await
    }

    type ExportTenantStream = Streamed<pb::TenantExportRecord>;

    async fn export_tenant(&self, request: Request<pb::ExportTenantRequest>) -> Reply<Self::ExportTenantStream> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.streaming("ExportTenant", self.app.export_tenant(&who, &r.resume_token), export_record_out).await
    }
}
