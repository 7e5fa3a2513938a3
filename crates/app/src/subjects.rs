//! End users (subjects): registration, invitation and onboarding, reads,
//! deactivation and passwords.

use domain::subject::{Birth, Subject, SubjectCommand};
use domain::tenant::Tenant;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::{App, AppError, parse_id};

/// A date of birth as given (`YYYY-MM-DD`), or the attestation of being at
/// least 13.
pub fn birth_in(date: &str, attested: bool) -> Result<Birth, AppError> {
    match (date.is_empty(), attested) {
        (true, true) => Ok(Birth::AttestedAtLeast13),
        (true, false) => Err(AppError::invalid("date_of_birth", "give a date of birth or set attested_at_least_13")),
        (false, _) => {
            let parts: Vec<&str> = date.split('-').collect();
            match parts.as_slice() {
                [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => match (y.parse(), m.parse(), d.parse()) {
                    (Ok(year), Ok(month), Ok(day)) => Ok(Birth::Date { year, month, day }),
                    _ => Err(AppError::invalid("date_of_birth", "not YYYY-MM-DD")),
                },
                _ => Err(AppError::invalid("date_of_birth", "not YYYY-MM-DD")),
            }
        }
    }
}

/// Checks a password given in a request and hashes it (off the runtime);
/// `None` when none was given.
async fn password_hash_of(password: &str) -> Result<Option<String>, AppError> {
    if password.is_empty() {
        return Ok(None);
    }
    domain::subject::check_password(password)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || crate::end_user_auth::hash_password(&password))
        .await
        .map_err(|e| AppError::internal("hashing a password", e))?
        .map(Some)
}

/// A registration or an onboarding as the request gives it.
pub struct Profile {
    pub username: String,
    pub email: String,
    pub phone: String,
    pub date_of_birth: String,
    pub attested_at_least_13: bool,
    pub password: String,
}

impl App {
    pub async fn register_subject(&self, who: &Credentials, p: Profile) -> Result<Subject, AppError> {
        let tenant = self.tenant(who).await?;
        self.registry.read::<Tenant>(tenant, tenant).await?.state.require_active()?;
        let birth = birth_in(&p.date_of_birth, p.attested_at_least_13)?;
        let password = password_hash_of(&p.password).await?;
        let id = Uuid::now_v7();
        let cmd = SubjectCommand::Register {
            subject: id,
            tenant,
            username: p.username,
            email: p.email,
            phone: p.phone,
            birth,
        };
        let mut done = self.registry.execute::<Subject>(tenant, id, cmd).await?;
        if let Some(hash) = password {
            done = self.registry.execute::<Subject>(tenant, id, SubjectCommand::SetPassword { hash }).await?;
        }
        tracing::info!(tenant = %tenant, subject = %id, "subject registered");
        Ok(done.into_state())
    }

    pub async fn invite_subject(&self, who: &Credentials, email: String) -> Result<Subject, AppError> {
        let tenant = self.tenant(who).await?;
        self.registry.read::<Tenant>(tenant, tenant).await?.state.require_active()?;
        let id = Uuid::now_v7();
        let cmd = SubjectCommand::Invite { subject: id, tenant, email };
        Ok(self.registry.execute::<Subject>(tenant, id, cmd).await?.into_state())
    }

    pub async fn onboard_subject(&self, who: &Credentials, subject_id: &str, p: Profile) -> Result<Subject, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("subject_id", subject_id)?;
        let birth = birth_in(&p.date_of_birth, p.attested_at_least_13)?;
        let password = password_hash_of(&p.password).await?;
        let cmd = SubjectCommand::Onboard { username: p.username, phone: p.phone, birth };
        let mut done = self.registry.execute::<Subject>(tenant, id, cmd).await?;
        if let Some(hash) = password {
            done = self.registry.execute::<Subject>(tenant, id, SubjectCommand::SetPassword { hash }).await?;
        }
        Ok(done.into_state())
    }

    pub async fn get_subject(&self, who: &Credentials, subject_id: &str) -> Result<Subject, AppError> {
        let tenant = self.tenant_about(who, crate::call::Object::Subject, subject_id).await?;
        let id = parse_id("subject_id", subject_id)?;
        let s = self.registry.read::<Subject>(tenant, id).await?.into_state();
        s.require_exists()?;
        Ok(s)
    }

    pub async fn deactivate_subject(&self, who: &Credentials, subject_id: &str) -> Result<Subject, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("subject_id", subject_id)?;
        let done = self.registry.execute::<Subject>(tenant, id, SubjectCommand::Deactivate).await?;
        // The subject's new state refuses its auth sessions on every node.
        self.auth.revoke_subject(tenant, id);
        self.record_subject("access.deactivate", tenant, id, "auth_sessions=revoked").await?;
        Ok(done.into_state())
    }

    pub async fn reactivate_subject(&self, who: &Credentials, subject_id: &str) -> Result<Subject, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("subject_id", subject_id)?;
        let done = self.registry.execute::<Subject>(tenant, id, SubjectCommand::Reactivate).await?;
        self.record_subject("access.reactivate", tenant, id, "").await?;
        Ok(done.into_state())
    }

    pub async fn set_password(&self, who: &Credentials, subject_id: &str, password: &str) -> Result<Subject, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("subject_id", subject_id)?;
        self.registry.read::<Subject>(tenant, id).await?.state.require_exists()?;
        let hash = password_hash_of(password).await?.ok_or_else(|| AppError::invalid("password", "is required"))?;
        let done = self.registry.execute::<Subject>(tenant, id, SubjectCommand::SetPassword { hash }).await?;
        // The subject's new state refuses its auth sessions on every node.
        self.auth.revoke_subject(tenant, id);
        self.record_subject("auth.password_set", tenant, id, "auth_sessions=revoked").await?;
        Ok(done.into_state())
    }
}
