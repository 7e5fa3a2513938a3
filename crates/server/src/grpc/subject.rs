//! `SubjectService`.

use app::subjects::Profile;
use proto::api as pb;
use tonic::Request;

use super::convert::subject_out;
use super::{Handle, Reply, credentials};

#[tonic::async_trait]
impl pb::subject_service_server::SubjectService for Handle {
    async fn register_subject(&self, request: Request<pb::RegisterSubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let profile = Profile {
            username: r.username,
            email: r.email,
            phone: r.phone,
            date_of_birth: r.date_of_birth,
            attested_at_least_13: r.attested_at_least_13,
            password: r.password,
        };
        self.unary("RegisterSubject", async { Ok(subject_out(&self.app.register_subject(&who, profile).await?)) }).await
    }

    async fn invite_subject(&self, request: Request<pb::InviteSubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("InviteSubject", async { Ok(subject_out(&self.app.invite_subject(&who, r.email).await?)) }).await
    }

    async fn onboard_subject(&self, request: Request<pb::OnboardSubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let profile = Profile {
            username: r.username,
            email: String::new(),
            phone: r.phone,
            date_of_birth: r.date_of_birth,
            attested_at_least_13: r.attested_at_least_13,
            password: r.password,
        };
        self.unary("OnboardSubject", async {
            Ok(subject_out(&self.app.onboard_subject(&who, &r.subject_id, profile).await?))
        })
        .await
    }

    async fn get_subject(&self, request: Request<pb::GetSubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetSubject", async { Ok(subject_out(&self.app.get_subject(&who, &r.subject_id).await?)) }).await
    }

    async fn deactivate_subject(&self, request: Request<pb::DeactivateSubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("DeactivateSubject", async {
            Ok(subject_out(&self.app.deactivate_subject(&who, &r.subject_id).await?))
        })
        .await
    }

    async fn reactivate_subject(&self, request: Request<pb::ReactivateSubjectRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ReactivateSubject", async {
            Ok(subject_out(&self.app.reactivate_subject(&who, &r.subject_id).await?))
        })
        .await
    }

    async fn set_password(&self, request: Request<pb::SetPasswordRequest>) -> Reply<pb::Subject> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("SetPassword", async {
            Ok(subject_out(&self.app.set_password(&who, &r.subject_id, &r.password).await?))
        })
        .await
    }
}
