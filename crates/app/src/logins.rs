//! End users' logins: password checks with a lockout, auth sessions with
//! idle and absolute timeouts, introspection and logout.

use audit::Record;
use domain::subject::{Subject, SubjectStatus};
use uuid::Uuid;

use crate::auth::Credentials;
use crate::call::current_actor;
use crate::end_user_auth::{Account, AuthConfig, AuthSession, LoginOutcome};
use crate::{App, AppError};

/// A successful login: the token (shown once) and its auth session.
pub struct LoggedIn {
    pub token: String,
    pub session: AuthSession,
}

impl App {
    /// The configuration of auth sessions (their timeouts).
    pub fn auth_config(&self) -> &AuthConfig {
        &self.auth.config
    }

    /// The subject a username names in `tenant`, as a login sees it.
    async fn account_of(&self, tenant: Uuid, username: &str) -> Result<Option<Account>, AppError> {
        let Some((subject, _, _)) = self.registry.username_owner(tenant, username).await? else { return Ok(None) };
        let s = self.registry.read::<Subject>(tenant, subject).await?.into_state();
        if s.status.is_none() || s.erasure.is_some() {
            return Ok(None);
        }
        Ok(Some(Account {
            tenant,
            subject,
            password_hash: s.password_hash,
            active: s.status == Some(SubjectStatus::Active) && !s.restricted,
        }))
    }

    pub async fn login(&self, who: &Credentials, username: &str, password: &str) -> Result<LoggedIn, AppError> {
        let tenant = self.tenant(who).await?;
        let username = domain::subject::normalize_username(username)?;
        if password.is_empty() || password.len() > 4096 {
            return Err(AppError::invalid("password", "is required, at most 4096 bytes"));
        }
        let account = self.account_of(tenant, &username).await?;
        let known = account.as_ref().map(|a| a.subject);
        let actor = known.map_or_else(|| "anonymous".to_string(), |s| format!("subject:{s}"));
        let secret = self.keyring.tenant_index_secret(tenant).await?;
        let lockout = events::stream::lockout_stream(secret.expose(), tenant, &username);
        let outcome = self.auth.login(tenant, &lockout, password, account).await?;
        let (result, code) = match outcome {
            LoginOutcome::Ok { token, session } => (Ok(LoggedIn { token, session }), "ok"),
            LoginOutcome::Failed => {
                (Err(AppError::Unauthenticated("the username or the password is wrong".into())), "failed")
            }
            LoginOutcome::Locked { retry_after_secs } => (
                Err(AppError::TooMany(format!(
                    "too many failed logins for this username; try again in {retry_after_secs} s"
                ))),
                "locked",
            ),
            LoginOutcome::Deactivated => (Err(AppError::Forbidden("the account is deactivated".into())), "refused"),
        };
        // Unknown usernames are not written down (a username is personal data).
        self.audit.record(Record::new("auth.login", actor, code).tenant(tenant)).await?;
        result
    }

    pub async fn introspect(&self, who: &Credentials, token: &str) -> Result<AuthSession, AppError> {
        let tenant = self.tenant(who).await?;
        let invalid = || AppError::Unauthenticated("the token is unknown, expired or revoked".into());
        let Some(session) = self.auth.touch(tenant, token).await? else {
            self.audit.note(Record::new("auth.token", "anonymous", "failed").tenant(tenant)).await;
            return Err(invalid());
        };
        // Another node may have deactivated the user or changed the
        // password: the subject's state (read fresh from the log)
        // decides, and what ended an auth session stays ended.
        let s = self.registry.read::<Subject>(tenant, session.subject).await?.into_state();
        let live = s.status == Some(SubjectStatus::Active)
            && !s.restricted
            && s.erasure.is_none()
            && s.logins_revoked_micros <= session.created_micros;
        if !live {
            self.auth.revoke_subject(tenant, session.subject);
            self.audit
                .note(
                    Record::new("auth.token", format!("subject:{}", session.subject), "refused")
                        .tenant(tenant)
                        .detail("revoked"),
                )
                .await;
            return Err(invalid());
        }
        self.audit.note(Record::new("auth.token", format!("subject:{}", session.subject), "ok").tenant(tenant)).await;
        Ok(session)
    }

    /// Ends an auth session; whether there was one to end.
    pub async fn logout(&self, who: &Credentials, token: &str) -> Result<bool, AppError> {
        let tenant = self.tenant(who).await?;
        let ended = self.auth.logout(tenant, token).await?;
        self.audit
            .note(Record::new("auth.logout", current_actor(), if ended { "ok" } else { "failed" }).tenant(tenant))
            .await;
        Ok(ended)
    }
}
