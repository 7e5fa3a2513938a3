//! Tenants: creation (with the first API key), keys, retention, and the
//! cancellation that starts an offboarding.

use audit::Record;
use domain::Timers;
use domain::pype::{Pype, PypeCommand};
use domain::tenant::{Tenant, TenantCommand, TenantSettings};
use uuid::Uuid;

use crate::auth::{self, Caller, Credentials};
use crate::call::current_actor;
use crate::{App, AppError, parse_id};

/// A new tenant and the one copy of its first key.
pub struct Created {
    pub tenant: Tenant,
    pub api_key: String,
    pub api_key_id: Uuid,
}

/// A tenant's offboarding as the API shows it.
pub struct Offboarding {
    pub tenant: Uuid,
    pub cancelled_at_micros: i64,
    pub shred_due_micros: i64,
    pub shredded_at_micros: i64,
    pub certificate: String,
    pub signature: String,
}

/// Retention after a change: the tenant's, and the Pype's when one was named.
pub struct Retention {
    pub tenant_days: u32,
    pub pype_days: Option<u32>,
}

/// Checks timers given in a request (`None`: not given).
pub(crate) fn timers_in(field: &'static str, t: Option<Timers>) -> Result<Option<Timers>, AppError> {
    t.map(|t| t.validate(field)).transpose().map_err(AppError::rejected)
}

impl App {
    pub async fn create_tenant(
        &self,
        who: &Credentials,
        name: String,
        default_timers: Option<Timers>,
        retention_days: u32,
        region: String,
    ) -> Result<Created, AppError> {
        self.platform(who).await?;
        let id = Uuid::now_v7();
        let timers = timers_in("default_timers", default_timers)?.unwrap_or_default();
        // With regions, the tenant's region is recorded in the global
        // directory before the tenant exists (docs/residency.md).
        let region = match &self.regions {
            Some(r) => r.place_new(id, &region).await?,
            None if region.is_empty() => "eu".into(),
            None => region,
        };
        let settings = TenantSettings { timers, retention_days, region };
        // The tenant and its first key are one append: never a tenant without a way in,
        // never a key handed out that was not recorded.
        let (key_id, token, hash) = auth::new_tenant_key(id)?;
        let cmd = TenantCommand::Create { tenant: id, name, settings, first_key: (key_id, hash) };
        let tenant = self.registry.execute::<Tenant>(id, id, cmd).await?.into_state();
        tracing::info!(tenant = %id, "tenant created");
        Ok(Created { tenant, api_key: token, api_key_id: key_id })
    }

    pub async fn get_tenant(&self, who: &Credentials, tenant_id: &str) -> Result<Tenant, AppError> {
        let wanted = parse_id("tenant_id", tenant_id)?;
        self.local(wanted)?;
        match self.caller(who).await? {
            Caller::Tenant(t) if t != wanted => return Err(AppError::not_found("tenant")),
            Caller::Staff { id, role } => self.staff_may(id, role, Some(wanted)).await?,
            _ => {}
        }
        let t = self.registry.read::<Tenant>(wanted, wanted).await?.into_state();
        t.id.ok_or_else(|| AppError::not_found("tenant"))?;
        Ok(t)
    }

    /// A new API key of the caller's tenant: (key id, the token, shown once).
    pub async fn create_api_key(&self, who: &Credentials) -> Result<(Uuid, String), AppError> {
        let tenant = self.tenant(who).await?;
        let (key_id, token, hash) = auth::new_tenant_key(tenant)?;
        self.registry
            .execute::<Tenant>(tenant, tenant, TenantCommand::IssueApiKey { key_id, secret_sha256: hash })
            .await?;
        Ok((key_id, token))
    }

    pub async fn revoke_api_key(&self, who: &Credentials, key_id: &str, tenant_id: &str) -> Result<(), AppError> {
        let tenant = match self.caller(who).await? {
            Caller::Admin => {
                let tenant = parse_id("tenant_id", tenant_id)?;
                self.local(tenant)?;
                tenant
            }
            Caller::Tenant(tenant) => {
                if !tenant_id.is_empty() && parse_id("tenant_id", tenant_id)? != tenant {
                    return Err(AppError::Forbidden("tenant_id is not the tenant of the API key".into()));
                }
                tenant
            }
            Caller::Staff { .. } => {
                return Err(AppError::Forbidden(
                    "no staff role may revoke a tenant's key (the tenant may, and the admin key)".into(),
                ));
            }
        };
        let key_id = parse_id("api_key_id", key_id)?;
        self.registry.execute::<Tenant>(tenant, tenant, TenantCommand::RevokeApiKey { key_id }).await?;
        self.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&(tenant, key_id));
        self.audit
            .record(
                Record::new("access.api_key_revoked", current_actor(), "ok")
                    .tenant(tenant)
                    .target(format!("tenant-key:{key_id}")),
            )
            .await?;
        Ok(())
    }

    /// Sets the tenant's retention (no `pype_id`), or a Pype's (`inherit`:
    /// the Pype follows the tenant's again).
    pub async fn set_retention(
        &self,
        who: &Credentials,
        pype_id: &str,
        retention_days: u32,
        inherit: bool,
    ) -> Result<Retention, AppError> {
        let tenant = self.tenant(who).await?;
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        if pype_id.is_empty() {
            if inherit {
                return Err(AppError::invalid("inherit", "only for a Pype (give pype_id)"));
            }
            let settings = TenantSettings { retention_days, ..t.settings.clone() };
            let done =
                self.registry.execute::<Tenant>(tenant, tenant, TenantCommand::UpdateSettings { settings }).await?;
            self.audit
                .record(
                    Record::new("privacy.retention_set", current_actor(), "ok")
                        .tenant(tenant)
                        .detail(format!("days={retention_days}")),
                )
                .await?;
            return Ok(Retention { tenant_days: done.state.settings.retention_days, pype_days: None });
        }
        let pype = parse_id("pype_id", pype_id)?;
        let days = if inherit { None } else { Some(retention_days) };
        let done = self.registry.execute::<Pype>(tenant, pype, PypeCommand::SetRetention { days }).await?;
        self.audit
            .record(
                Record::new("privacy.retention_set", current_actor(), "ok")
                    .tenant(tenant)
                    .target(format!("pype:{pype}"))
                    .detail(days.map_or("inherit".to_string(), |d| format!("days={d}"))),
            )
            .await?;
        Ok(Retention {
            tenant_days: t.settings.retention_days,
            pype_days: Some(done.state.retention_days.unwrap_or(t.settings.retention_days)),
        })
    }

    /// Cancels a tenant: its keys stop working at once; its data is
    /// shredded when the grace period ends (the offboarding process).
    pub async fn cancel_tenant(&self, who: &Credentials, tenant_id: &str) -> Result<Offboarding, AppError> {
        self.platform(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        self.local(tenant)?;
        let done = self.registry.execute::<Tenant>(tenant, tenant, TenantCommand::Cancel).await?;
        self.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|(t, _), _| *t != tenant);
        self.audit.record(Record::new("privacy.tenant_cancelled", current_actor(), "ok").tenant(tenant)).await?;
        Ok(self.offboarding_of(tenant, &done.state))
    }

    pub async fn get_offboarding(&self, who: &Credentials, tenant_id: &str) -> Result<Offboarding, AppError> {
        self.platform(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        self.local(tenant)?;
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        t.id.ok_or_else(|| AppError::not_found("tenant"))?;
        Ok(self.offboarding_of(tenant, &t))
    }

    pub(crate) fn offboarding_of(&self, tenant: Uuid, t: &Tenant) -> Offboarding {
        let (certificate, signature) = t.certificate.clone().unwrap_or_default();
        let grace = i64::from(self.offboarding_grace_days) * 86_400_000_000;
        Offboarding {
            tenant,
            cancelled_at_micros: if t.cancelled { t.cancelled_micros } else { 0 },
            shred_due_micros: if t.cancelled { t.cancelled_micros + grace } else { 0 },
            shredded_at_micros: t.shredded.as_ref().map_or(0, |(at, _)| *at),
            certificate,
            signature,
        }
    }
}
