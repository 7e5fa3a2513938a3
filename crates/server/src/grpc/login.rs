//! `EndUserAuthService`: end users' logins.

use app::end_user_auth::{AuthConfig, AuthSession};
use proto::api as pb;
use tonic::Request;

use super::{Handle, Reply, credentials};

fn session_info(s: &AuthSession, c: &AuthConfig) -> pb::AuthSessionInfo {
    pb::AuthSessionInfo {
        subject_id: s.subject.to_string(),
        created_at_micros: s.created_micros,
        idle_expires_at_micros: s.idle_expires_micros(c),
        expires_at_micros: s.expires_micros(c),
    }
}

#[tonic::async_trait]
impl pb::end_user_auth_service_server::EndUserAuthService for Handle {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("Login", async {
            let done = self.app.login(&who, &r.username, &r.password).await?;
            Ok(pb::LoginResponse {
                token: done.token,
                session: Some(session_info(&done.session, self.app.auth_config())),
            })
        })
        .await
    }

    async fn introspect(&self, request: Request<pb::IntrospectRequest>) -> Reply<pb::AuthSessionInfo> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("Introspect", async {
            Ok(session_info(&self.app.introspect(&who, &r.token).await?, self.app.auth_config()))
        })
        .await
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("Logout", async { Ok(pb::LogoutResponse { ended: self.app.logout(&who, &r.token).await? }) }).await
    }
}
