//! `ErasureService`: erasure requests and their certificates.

use app::erasure::Status;
use proto::api as pb;
use tonic::Request;
use uuid::Uuid;

use super::{Handle, Reply, credentials};

fn erasure_out(subject: Uuid, s: Status, signing_public_key: String) -> pb::ErasureStatus {
    pb::ErasureStatus {
        request_id: s.request.to_string(),
        subject_id: subject.to_string(),
        step: s.step.into(),
        requested_micros: s.requested_micros,
        due_micros: s.due_micros,
        certificate: s.certificate,
        signature: s.signature,
        signing_public_key,
    }
}

#[tonic::async_trait]
impl pb::erasure_service_server::ErasureService for Handle {
    async fn request_erasure(&self, request: Request<pb::RequestErasureRequest>) -> Reply<pb::ErasureStatus> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("RequestErasure", async {
            let (subject, s) = self.app.request_erasure(&who, &r.tenant_id, &r.subject_id).await?;
            Ok(erasure_out(subject, s, self.app.erasure_public_key()))
        })
        .await
    }

    async fn get_erasure(&self, request: Request<pb::GetErasureRequest>) -> Reply<pb::ErasureStatus> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetErasure", async {
            let (subject, s) = self.app.get_erasure(&who, &r.tenant_id, &r.subject_id).await?;
            Ok(erasure_out(subject, s, self.app.erasure_public_key()))
        })
        .await
    }
}
