//! Who may make a call: the caller's key checked against the tenant's
//! actor (cached for a few seconds), the staff directory or the admin key;
//! a staff member's call checked against the role table, and written to
//! the audit trail before it goes on.

use std::time::Instant;

use audit::Record;
use domain::tenant::Tenant;
use uuid::Uuid;

use crate::auth::{self, Bearer, Caller, Credentials};
use crate::call::{Actor, Object, current_actor, method, set_actor, set_object, set_tenant};
use crate::staff::Access;
use crate::{App, AppError};

/// How long a verified API key is trusted without asking the tenant's actor
/// again. A revocation clears this node's cache at once; other nodes follow
/// within this time.
const AUTH_CACHE_SECS: u64 = 5;

impl App {
    /// The verified caller of a call.
    pub async fn caller(&self, credentials: &Credentials) -> Result<Caller, AppError> {
        let bearer = match auth::bearer(credentials, &self.admin_sha256) {
            Ok(b) => b,
            Err(e) => {
                self.audit.note(Record::new("auth.bearer", "anonymous", "failed").detail("missing_or_malformed")).await;
                return Err(e);
            }
        };
        match bearer {
            Bearer::Staff(token) => {
                let actor = format!("staff:{}", token.staff);
                let member = self.staff.member(token.staff).await?;
                match member {
                    Some(m) if !m.disabled && auth::same(&m.key_sha256, &token.secret_sha256) => {
                        set_actor(Actor::Staff(token.staff));
                        self.audit.note(Record::new("auth.staff_key", actor, "ok").detail(m.role.name())).await;
                        Ok(Caller::Staff { id: token.staff, role: m.role })
                    }
                    _ => {
                        self.audit
                            .note(Record::new("auth.staff_key", actor, "failed").detail("unknown_or_disabled"))
                            .await;
                        Err(AppError::Unauthenticated("unknown or revoked key".into()))
                    }
                }
            }
            Bearer::Admin => {
                set_actor(Actor::Admin);
                self.audit.note(Record::new("auth.admin_key", "admin", "ok")).await;
                Ok(Caller::Admin)
            }
            Bearer::Tenant(token) => {
                self.local(token.tenant)?;
                let actor = || format!("tenant-key:{}", token.key_id);
                let cache_key = (token.tenant, token.key_id);
                let cached = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&cache_key).is_some_and(
                    |(hash, at)| at.elapsed().as_secs() < AUTH_CACHE_SECS && auth::same(hash, &token.secret_sha256),
                );
                if cached {
                    set_actor(Actor::TenantKey(token.key_id));
                    set_tenant(token.tenant);
                    self.audit.count_api_key_ok(token.tenant, token.key_id);
                    return Ok(Caller::Tenant(token.tenant));
                }
                let tenant = self.registry.read::<Tenant>(token.tenant, token.tenant).await?.into_state();
                let known = tenant.api_keys.get(&token.key_id).is_some_and(|h| auth::same(h, &token.secret_sha256));
                if !known {
                    self.audit
                        .note(
                            Record::new("auth.api_key", actor(), "failed")
                                .tenant(token.tenant)
                                .detail("unknown_or_revoked"),
                        )
                        .await;
                    return Err(AppError::Unauthenticated("unknown or revoked key".into()));
                }
                // A cancelled tenant's keys still export the tenant until
                // its keys are shredded: the grace period is the window
                // to take its data to another provider.
                if tenant.cancelled && !(crate::call::method() == "ExportTenant" && tenant.shredded.is_none()) {
                    self.audit
                        .note(
                            Record::new("auth.api_key", actor(), "refused")
                                .tenant(token.tenant)
                                .detail("tenant_cancelled"),
                        )
                        .await;
                    return Err(AppError::Forbidden("the tenant is cancelled".into()));
                }
                // A cancelled tenant's key is checked every time (only the
                // export may pass).
                if !tenant.cancelled {
                    let mut cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(cache_key, (token.secret_sha256, Instant::now()));
                }
                set_actor(Actor::TenantKey(token.key_id));
                set_tenant(token.tenant);
                self.audit.count_api_key_ok(token.tenant, token.key_id);
                Ok(Caller::Tenant(token.tenant))
            }
        }
    }

    /// The tenant a call acts for: the tenant key's, or the one a staff
    /// member's call names in its tenant header (if their role may).
    pub async fn tenant(&self, credentials: &Credentials) -> Result<Uuid, AppError> {
        match self.caller(credentials).await? {
            Caller::Tenant(t) => Ok(t),
            Caller::Admin => Err(AppError::Forbidden("this call needs a tenant API key, not the admin key".into())),
            Caller::Staff { id, role } => {
                let tenant = staff_tenant(credentials)?;
                self.local(tenant)?;
                self.staff_may(id, role, Some(tenant)).await?;
                set_tenant(tenant);
                Ok(tenant)
            }
        }
    }

    /// [`App::tenant`] for a call about one Session or subject (`id` as the
    /// request spells it; an id that does not parse is left for the call
    /// to refuse after authentication).
    pub(crate) async fn tenant_about(
        &self,
        credentials: &Credentials,
        object: fn(Uuid) -> Object,
        id: &str,
    ) -> Result<Uuid, AppError> {
        if let Ok(id) = Uuid::parse_str(id.trim()) {
            set_object(object(id));
        }
        self.tenant(credentials).await
    }

    /// Whether staff member `id` may make the current call (about
    /// `tenant`); the access is written to the audit trail before the call
    /// goes on.
    pub(crate) async fn staff_may(
        &self,
        id: Uuid,
        role: domain::staff::Role,
        tenant: Option<Uuid>,
    ) -> Result<(), AppError> {
        let method = method();
        let actor = format!("staff:{id}");
        let mut record =
            Record::new("staff.access", actor, "ok").target(self.call_target(method, tenant).await).detail(role.name());
        if let Some(t) = tenant {
            record = record.tenant(t);
        }
        match crate::staff::access(role, method) {
            Access::Allowed => {}
            Access::Denied => {
                return Err(AppError::Forbidden(format!("the {} role may not call {method}", role.name())));
            }
            Access::BreakGlass => {
                let tenant = tenant.ok_or_else(|| AppError::Forbidden(format!("{method} needs a tenant")))?;
                let now = self.clock.now_micros();
                let Some(grant) = self.staff.live_grant(id, tenant, now).await? else {
                    return Err(AppError::Forbidden(format!(
                        "{method} reads the tenant's content: it needs a live break-glass grant \
                         (StaffService.OpenBreakGlass, with a reason)"
                    )));
                };
                record = Record { action: "staff.break_glass_access", ..record }.detail(format!("grant:{grant}"));
            }
        }
        Ok(self.audit.record(record).await?)
    }

    /// The target of a staff member's access entry: the RPC, and the
    /// Session and subject it is about when it names one (the subject of a
    /// Session is its end user), as `rpc:<method> session:<id>
    /// subject:<id>`.
    async fn call_target(&self, method: &str, tenant: Option<Uuid>) -> String {
        match (crate::call::object(), tenant) {
            (Some(Object::Subject(s)), Some(_)) => format!("rpc:{method} subject:{s}"),
            (Some(Object::Session(id)), Some(t)) => {
                let end_user = match self.registry.read::<domain::session::Session>(t, id).await {
                    Ok(read) => {
                        let session = read.into_state();
                        session.id.map(|_| session.end_user)
                    }
                    Err(_) => None,
                };
                match end_user {
                    Some(u) => format!("rpc:{method} session:{id} subject:{u}"),
                    None => format!("rpc:{method} session:{id}"),
                }
            }
            _ => format!("rpc:{method}"),
        }
    }

    /// The platform admin key, or a staff member whose role may make the
    /// current call.
    pub async fn platform(&self, credentials: &Credentials) -> Result<Caller, AppError> {
        match self.caller(credentials).await? {
            Caller::Admin => Ok(Caller::Admin),
            Caller::Staff { id, role } => {
                self.staff_may(id, role, None).await?;
                Ok(Caller::Staff { id, role })
            }
            Caller::Tenant(_) => Err(AppError::Forbidden("this call is for the platform's staff, not a tenant".into())),
        }
    }

    /// The tenant a privacy call (erasure, export, rectification, ...) acts
    /// for: the key's, or (admin key, privacy officer) the request's
    /// `tenant_id`.
    pub(crate) async fn privacy_tenant(&self, credentials: &Credentials, tenant_id: &str) -> Result<Uuid, AppError> {
        match self.caller(credentials).await? {
            Caller::Tenant(t) => {
                if !tenant_id.is_empty() && crate::parse_id("tenant_id", tenant_id)? != t {
                    return Err(AppError::Forbidden("tenant_id is not the tenant of the API key".into()));
                }
                Ok(t)
            }
            Caller::Admin => {
                let tenant = crate::parse_id("tenant_id", tenant_id)?;
                self.local(tenant)?;
                Ok(tenant)
            }
            Caller::Staff { id, role } => {
                let tenant = crate::parse_id("tenant_id", tenant_id)?;
                self.local(tenant)?;
                self.staff_may(id, role, Some(tenant)).await?;
                set_tenant(tenant);
                Ok(tenant)
            }
        }
    }

    /// An action on one subject by the verified caller, durable in the audit
    /// trail before the call answers.
    pub(crate) async fn record_subject(
        &self,
        action: &'static str,
        tenant: Uuid,
        subject: Uuid,
        detail: impl Into<String>,
    ) -> Result<(), AppError> {
        self.audit
            .record(
                Record::new(action, current_actor(), "ok")
                    .tenant(tenant)
                    .target(format!("subject:{subject}"))
                    .detail(detail),
            )
            .await?;
        Ok(())
    }

    /// Every authorisation refusal is an audit entry (logins and token
    /// checks write entries of their own). The edge calls this with the
    /// code of every answer.
    pub async fn note_refusal(&self, method: &'static str, code: crate::Code, actor: Option<String>) {
        if matches!(code, crate::Code::Unauthenticated | crate::Code::PermissionDenied)
            && !matches!(method, "Login" | "Introspect")
        {
            // The verified key when there is one (a role refused a call),
            // so refusals can be counted per key.
            let actor = actor.unwrap_or_else(|| "caller".into());
            self.audit
                .note(
                    Record::new("authz.refused", actor, "refused")
                        .target(format!("rpc:{method}"))
                        .detail(format!("{code:?}")),
                )
                .await;
        }
    }
}

/// The tenant a staff member's call names in the `x-pypes-tenant` header.
fn staff_tenant(credentials: &Credentials) -> Result<Uuid, AppError> {
    let value = credentials
        .tenant
        .as_ref()
        .ok_or_else(|| AppError::invalid("x-pypes-tenant", "staff calls name the tenant in this header"))?;
    let text = value.as_deref().map_err(|_| AppError::invalid("x-pypes-tenant", "is not text"))?;
    Uuid::parse_str(text.trim()).map_err(|_| AppError::invalid("x-pypes-tenant", "is not a UUID"))
}
