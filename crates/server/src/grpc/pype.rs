//! `PypeService`.

use proto::api as pb;
use tonic::Request;

use super::convert::{kind_in, pype_out, timers_in};
use super::{Handle, Reply, credentials};

#[tonic::async_trait]
impl pb::pype_service_server::PypeService for Handle {
    async fn create_pype(&self, request: Request<pb::CreatePypeRequest>) -> Reply<pb::Pype> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("CreatePype", async {
            Ok(pype_out(&self.app.create_pype(&who, r.name, r.description, timers_in(r.timers)).await?))
        })
        .await
    }

    async fn get_pype(&self, request: Request<pb::GetPypeRequest>) -> Reply<pb::Pype> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetPype", async { Ok(pype_out(&self.app.get_pype(&who, &r.pype_id).await?)) }).await
    }

    async fn assign_member(&self, request: Request<pb::AssignMemberRequest>) -> Reply<pb::Pype> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("AssignMember", async {
            let kind = kind_in("kind", r.kind);
            Ok(pype_out(&self.app.assign_member(&who, &r.pype_id, &r.member_id, kind, r.assigned).await?))
        })
        .await
    }

    async fn archive_pype(&self, request: Request<pb::ArchivePypeRequest>) -> Reply<pb::Pype> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ArchivePype", async { Ok(pype_out(&self.app.archive_pype(&who, &r.pype_id).await?)) }).await
    }
}
