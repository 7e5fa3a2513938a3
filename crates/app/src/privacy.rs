//! Privacy requests on one subject: erasure (Art. 17), export (Art. 15 and
//! 20), rectification (Art. 16), restriction (Art. 18) and consent.
//! Erasure, restriction and consent withdrawal reach beyond the subject;
//! those parts are processes of their own ([`crate::erasure`],
//! [`crate::restriction`], [`crate::consent`]).

use std::sync::Arc;

use domain::subject::{Subject, SubjectCommand};
use projections::sessions;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::erasure::Status;
use crate::subjects::birth_in;
use crate::{App, AppError, parse_id};

/// What a rectification changes (`None`: left as it is).
pub struct Rectification {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub date_of_birth: Option<String>,
}

impl App {
    /// The tenant and the subject a privacy call is about.
    async fn privacy_subject(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
    ) -> Result<(Uuid, Uuid), AppError> {
        Ok((self.privacy_tenant(who, tenant_id).await?, parse_id("subject_id", subject_id)?))
    }

    /// The public key erasure certificates verify with (hex).
    pub fn erasure_public_key(&self) -> String {
        self.erasures.public_key_hex()
    }

    pub async fn request_erasure(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
    ) -> Result<(Uuid, Status), AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        let status = self.erasures.request(tenant, subject).await?;
        self.auth.revoke_subject(tenant, subject);
        self.record_subject("privacy.erasure_requested", tenant, subject, "").await?;
        Ok((subject, status))
    }

    pub async fn get_erasure(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
    ) -> Result<(Uuid, Status), AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        match self.erasures.status(tenant, subject).await? {
            Some(s) => Ok((subject, s)),
            None => Err(AppError::not_found("erasure request")),
        }
    }

    /// The subject's export (a JSON document, docs/export.md) in chunks,
    /// written as the receiver reads them; the access is recorded first.
    pub async fn export_subject(
        self: &Arc<Self>,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>, AppError>>, AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        self.registry.read::<Subject>(tenant, subject).await?.state.require_exists()?;
        let view = self.views.read(sessions::NAME).await?;
        let sessions = sessions::sessions_of_end_user(&view, tenant, subject)
            .map_err(|e| AppError::internal("listing the subject's sessions", e))?;
        drop(view);
        self.record_subject("privacy.export", tenant, subject, "").await?;
        // One chunk in flight at most: the reader's pace sets the export's.
        let (tx, rx) = mpsc::channel(1);
        let me = self.clone();
        tokio::spawn(async move {
            let mut sink = crate::export::Sink::new(tx);
            let now = me.clock.now_micros();
            let result =
                crate::export::write(me.log.as_ref(), &me.keyring, tenant, subject, &sessions, now, &mut sink).await;
            if let Err(e) = result {
                tracing::warn!(%tenant, %subject, error = %e, "export stopped");
                sink.fail(e).await;
            }
        });
        Ok(rx)
    }

    pub async fn rectify_subject(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
        r: Rectification,
    ) -> Result<Subject, AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        let birth = match &r.date_of_birth {
            Some(d) => Some(birth_in(d, false)?),
            None => None,
        };
        let fields: Vec<&str> =
            [("email", r.email.is_some()), ("phone", r.phone.is_some()), ("birth", r.date_of_birth.is_some())]
                .into_iter()
                .filter_map(|(f, on)| on.then_some(f))
                .collect();
        let cmd = SubjectCommand::Rectify { email: r.email, phone: r.phone, birth };
        let done = self.registry.execute::<Subject>(tenant, subject, cmd).await?;
        self.record_subject("privacy.rectify", tenant, subject, fields.join("+")).await?;
        Ok(done.into_state())
    }

    /// Restricts processing of a subject's data (or lifts the restriction).
    /// The subject's own state changes at once; their Sessions follow
    /// through the restriction process, which this call waits for (it
    /// resumes after a crash on its own).
    pub async fn set_restriction(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
        restrict: bool,
    ) -> Result<Subject, AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        let cmd = if restrict { SubjectCommand::Restrict } else { SubjectCommand::LiftRestriction };
        let done = self.registry.execute::<Subject>(tenant, subject, cmd).await?;
        if restrict {
            self.auth.revoke_subject(tenant, subject);
        }
        let sessions = self.restrictions.apply(tenant, subject).await?;
        let action = if restrict { "privacy.restrict" } else { "privacy.lift_restriction" };
        self.record_subject(action, tenant, subject, format!("sessions={sessions}")).await?;
        Ok(done.into_state())
    }

    pub async fn grant_consent(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
        purpose: String,
        policy_version: String,
    ) -> Result<Subject, AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        let cmd = SubjectCommand::GrantConsent { purpose: purpose.clone(), policy_version };
        let done = self.registry.execute::<Subject>(tenant, subject, cmd).await?;
        self.record_subject("privacy.consent_granted", tenant, subject, purpose).await?;
        Ok(done.into_state())
    }

    /// Withdraws consent. For `geolocation`, what was collected becomes
    /// unreadable: the consent process shreds the subject's location keys,
    /// now and whenever a location sealed after the withdrawal reaches the
    /// log (a share whose consent check ran just before it).
    pub async fn withdraw_consent(
        &self,
        who: &Credentials,
        tenant_id: &str,
        subject_id: &str,
        purpose: String,
    ) -> Result<Subject, AppError> {
        let (tenant, subject) = self.privacy_subject(who, tenant_id, subject_id).await?;
        let cmd = SubjectCommand::WithdrawConsent { purpose: purpose.clone() };
        let done = self.registry.execute::<Subject>(tenant, subject, cmd).await?;
        let mut detail = purpose.clone();
        if purpose == "geolocation" {
            let keys = self.consents.shred_locations(tenant, subject).await?;
            detail = format!("{detail} geo_keys_shredded={keys}");
        }
        self.record_subject("privacy.consent_withdrawn", tenant, subject, detail).await?;
        Ok(done.into_state())
    }
}
