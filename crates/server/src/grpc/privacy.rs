//! `PrivacyService`: export, rectification, restriction and consent.

use app::privacy::Rectification;
use proto::api as pb;
use tonic::Request;

use super::convert::subject_out;
use super::{Handle, Reply, Streamed, credentials};

#[tonic::async_trait]
impl pb::privacy_service_server::PrivacyService for Handle {
    type ExportSubjectStream = Streamed<pb::ExportChunk>;

    async fn export_subject(&self, request: Request<pb::ExportSubjectRequest>) -> Reply<Self::ExportSubjectStream> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.streaming("ExportSubject", self.app.export_subject(&who, &r.tenant_id, &r.subject_id), |data| {
            pb::ExportChunk { data }
        })
        .await
    }

    async fn rectify_subject(&self, request: Request<pb::RectifySubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let change = Rectification { email: r.email, phone: r.phone, date_of_birth: r.date_of_birth };
        self.unary("RectifySubject", async {
            Ok(subject_out(&self.app.rectify_subject(&who, &r.tenant_id, &r.subject_id, change).await?))
        })
        .await
    }

    async fn restrict_processing(&self, request: Request<pb::SubjectRef>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("RestrictProcessing", async {
            Ok(subject_out(&self.app.set_restriction(&who, &r.tenant_id, &r.subject_id, true).await?))
        })
        .await
    }

    async fn lift_restriction(&self, request: Request<pb::SubjectRef>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("LiftRestriction", async {
            Ok(subject_out(&self.app.set_restriction(&who, &r.tenant_id, &r.subject_id, false).await?))
        })
        .await
    }

    async fn grant_consent(&self, request: Request<pb::ConsentRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GrantConsent", async {
            let (tenant, subject) = (&r.tenant_id, &r.subject_id);
            Ok(subject_out(&self.app.grant_consent(&who, tenant, subject, r.purpose, r.policy_version).await?))
        })
        .await
    }

    async fn withdraw_consent(&self, request: Request<pb::ConsentRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("WithdrawConsent", async {
            Ok(subject_out(&self.app.withdraw_consent(&who, &r.tenant_id, &r.subject_id, r.purpose).await?))
        })
        .await
    }
}
