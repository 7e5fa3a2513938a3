//! The gRPC services: thin adapters from the wire to the registry. Each
//! call authenticates, scopes to the caller's tenant, validates its input
//! (naming the field), runs one actor command, and converts the answer.

use std::sync::Arc;
use std::time::Instant;

use actors::{Codec, Executed, Registry, stream_name};
use domain::Timers;
use domain::pype::{Pype, PypeCommand};
use domain::session::{ParticipantKind, Reason, Session, SessionCommand, SessionEvent, Status};
use domain::subject::{Birth, Subject, SubjectCommand, SubjectStatus};
use domain::tenant::{Tenant, TenantCommand, TenantSettings};
use eventlog::{Direction, EventLog, LogError, ReadFrom};
use keystore::Keyring;
use proto::api as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus};
use uuid::Uuid;

use crate::auth::{self, Bearer, Caller};
use crate::end_user_auth::{Account, AuthSession, LoginOutcome};
use crate::error::{ApiError, parse_id};
use crate::metrics::ApiMetrics;
use audit::Record;

/// How long a verified API key is trusted without asking the tenant's actor
/// again. A revocation clears this node's cache at once; other nodes follow
/// within this time.
const AUTH_CACHE_SECS: u64 = 5;

/// Verified keys: (tenant, key id) → (SHA-256 of the secret, when verified).
pub type AuthCache = std::collections::HashMap<(Uuid, Uuid), ([u8; 32], Instant)>;

pub struct Api {
    pub auth_cache: std::sync::Mutex<AuthCache>,
    pub registry: Arc<Registry>,
    pub log: Arc<dyn EventLog>,
    pub keyring: Keyring,
    pub admin_sha256: [u8; 32],
    pub metrics: Arc<ApiMetrics>,
    pub views: Arc<crate::views::Views>,
    pub erasures: Arc<crate::erasure::Erasures>,
    pub analytics_k: u64,
    pub audit: audit::AuditLog,
    pub auth: Arc<crate::end_user_auth::EndUserAuth>,
    pub staff: Arc<crate::staff::Staff>,
    pub offboarding_grace_days: u32,
    pub media: Arc<crate::media::Media>,
}

fn offboarding_out(tenant: Uuid, t: &Tenant, grace_days: u32) -> pb::Offboarding {
    let (certificate, signature) = t.certificate.clone().unwrap_or_default();
    pb::Offboarding {
        tenant_id: tenant.to_string(),
        cancelled_at_micros: if t.cancelled { t.cancelled_micros } else { 0 },
        shred_due_micros: if t.cancelled { t.cancelled_micros + i64::from(grace_days) * 86_400_000_000 } else { 0 },
        shredded_at_micros: t.shredded.as_ref().map_or(0, |(at, _)| *at),
        certificate,
        signature,
    }
}

tokio::task_local! {
    /// The RPC being served (set by [`Api::timed`]): staff access is
    /// decided per RPC.
    static METHOD: &'static str;
    /// Who is calling, as the audit trail names them (set once the bearer
    /// key is verified): `admin`, `tenant-key:<key id>`, `staff:<id>`.
    static ACTOR: std::cell::Cell<Actor>;
}

/// Who a call's verified key belongs to; made into text only when an audit
/// entry is written (not on every call).
#[derive(Debug, Clone, Copy, Default)]
enum Actor {
    #[default]
    Unknown,
    Admin,
    Staff(Uuid),
    TenantKey(Uuid),
}

/// The verified caller of the current RPC, for audit entries.
pub(crate) fn current_actor() -> String {
    match ACTOR.try_with(std::cell::Cell::get).unwrap_or_default() {
        Actor::Unknown => "unknown".into(),
        Actor::Admin => "admin".into(),
        Actor::Staff(id) => format!("staff:{id}"),
        Actor::TenantKey(id) => format!("tenant-key:{id}"),
    }
}

fn set_actor(actor: Actor) {
    let _ = ACTOR.try_with(|a| a.set(actor));
}

/// Runs `f` as the RPC `method` (for calls that are not [`Api::timed`],
/// such as server streams).
pub(crate) async fn in_method<T>(method: &'static str, f: impl Future<Output = T>) -> T {
    METHOD.scope(method, ACTOR.scope(std::cell::Cell::new(Actor::Unknown), f)).await
}

/// Header naming the tenant a staff member's call is about.
pub const TENANT_HEADER: &str = "x-pypes-tenant";

/// The services share one `Api`.
#[derive(Clone)]
pub struct Handle(pub Arc<Api>);

type Reply<T> = Result<Response<T>, GrpcStatus>;

impl Api {
    pub(crate) async fn caller(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, ApiError> {
        use audit::Record;
        let bearer = match auth::bearer(metadata, &self.admin_sha256) {
            Ok(b) => b,
            Err(e) => {
                self.audit.note(Record::new("auth.bearer", "anonymous", "failed").detail("missing_or_malformed")).await;
                return Err(e);
            }
        };
        match bearer {
            Bearer::Staff(token) => {
                let actor = format!("staff:{}", token.staff);
                let member = self.staff.with(|d| d.members.get(&token.staff).cloned()).await?;
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
                        Err(ApiError::Unauthenticated("unknown or revoked key".into()))
                    }
                }
            }
            Bearer::Admin => {
                set_actor(Actor::Admin);
                self.audit.note(Record::new("auth.admin_key", "admin", "ok")).await;
                Ok(Caller::Admin)
            }
            Bearer::Tenant(token) => {
                let actor = || format!("tenant-key:{}", token.key_id);
                let cache_key = (token.tenant, token.key_id);
                let cached = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&cache_key).is_some_and(
                    |(hash, at)| at.elapsed().as_secs() < AUTH_CACHE_SECS && auth::same(hash, &token.secret_sha256),
                );
                if cached {
                    set_actor(Actor::TenantKey(token.key_id));
                    self.audit.count_api_key_ok(token.tenant, token.key_id);
                    return Ok(Caller::Tenant(token.tenant));
                }
                let tenant = self.registry.read::<Tenant>(token.tenant, token.tenant).await?.state;
                let known = tenant.api_keys.get(&token.key_id).is_some_and(|h| auth::same(h, &token.secret_sha256));
                if !known {
                    self.audit
                        .note(
                            Record::new("auth.api_key", actor(), "failed")
                                .tenant(token.tenant)
                                .detail("unknown_or_revoked"),
                        )
                        .await;
                    return Err(ApiError::Unauthenticated("unknown or revoked key".into()));
                }
                if tenant.cancelled {
                    self.audit
                        .note(
                            Record::new("auth.api_key", actor(), "refused")
                                .tenant(token.tenant)
                                .detail("tenant_cancelled"),
                        )
                        .await;
                    return Err(ApiError::Forbidden("the tenant is cancelled".into()));
                }
                {
                    let mut cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() > 100_000 {
                        cache.clear();
                    }
                    cache.insert(cache_key, (token.secret_sha256, Instant::now()));
                }
                set_actor(Actor::TenantKey(token.key_id));
                self.audit.count_api_key_ok(token.tenant, token.key_id);
                Ok(Caller::Tenant(token.tenant))
            }
        }
    }

    pub(crate) async fn tenant(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Uuid, ApiError> {
        match self.caller(metadata).await? {
            Caller::Tenant(t) => Ok(t),
            Caller::Admin => Err(ApiError::Forbidden("this call needs a tenant API key, not the admin key".into())),
            Caller::Staff { id, role } => {
                let tenant = staff_tenant(metadata)?;
                self.staff_may(id, role, Some(tenant)).await?;
                Ok(tenant)
            }
        }
    }

    /// Whether staff member `id` may make the current call (about
    /// `tenant`); the access is written to the audit trail before the call
    /// goes on.
    pub(crate) async fn staff_may(
        &self,
        id: Uuid,
        role: domain::staff::Role,
        tenant: Option<Uuid>,
    ) -> Result<(), ApiError> {
        use crate::staff::Access;
        let method = METHOD.try_with(|m| *m).unwrap_or("unknown");
        let actor = format!("staff:{id}");
        let mut record = Record::new("staff.access", actor, "ok").target(format!("rpc:{method}")).detail(role.name());
        if let Some(t) = tenant {
            record = record.tenant(t);
        }
        match crate::staff::access(role, method) {
            Access::Allowed => {}
            Access::Denied => {
                return Err(ApiError::Forbidden(format!("the {} role may not call {method}", role.name())));
            }
            Access::BreakGlass => {
                let tenant = tenant.ok_or_else(|| ApiError::Forbidden(format!("{method} needs a tenant")))?;
                let now = self.staff.now_micros();
                let Some(grant) = self.staff.with(|d| d.live_grant(id, tenant, now).map(|(g, _)| g)).await? else {
                    return Err(ApiError::Forbidden(format!(
                        "{method} reads the tenant's content: it needs a live break-glass grant \
                         (StaffService.OpenBreakGlass, with a reason)"
                    )));
                };
                record = Record { action: "staff.break_glass_access", ..record }.detail(format!("grant:{grant}"));
            }
        }
        Ok(self.audit.record(record).await?)
    }

    /// The platform admin key, or a staff member whose role may make the
    /// current call.
    pub(crate) async fn platform(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, ApiError> {
        match self.caller(metadata).await? {
            Caller::Admin => Ok(Caller::Admin),
            Caller::Staff { id, role } => {
                self.staff_may(id, role, None).await?;
                Ok(Caller::Staff { id, role })
            }
            Caller::Tenant(_) => Err(ApiError::Forbidden("this call is for the platform's staff, not a tenant".into())),
        }
    }

    pub(crate) async fn timed<T>(
        &self,
        method: &'static str,
        f: impl Future<Output = Result<T, ApiError>>,
    ) -> Reply<T> {
        let started = Instant::now();
        let result = in_method(method, f).await.map(Response::new).map_err(GrpcStatus::from);
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.note_refusal(method, code).await;
        self.metrics.observe(method, code, started.elapsed());
        result
    }

    /// An action on one subject by the verified caller, durable in the audit
    /// trail before the call answers.
    pub(crate) async fn record_subject(
        &self,
        action: &'static str,
        tenant: Uuid,
        subject: Uuid,
        detail: impl Into<String>,
    ) -> Result<(), ApiError> {
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
    /// checks write entries of their own).
    pub(crate) async fn note_refusal(&self, method: &'static str, code: tonic::Code) {
        if matches!(code, tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
            && !matches!(method, "Login" | "Introspect")
        {
            self.audit
                .note(
                    audit::Record::new("authz.refused", "caller", "refused")
                        .target(format!("rpc:{method}"))
                        .detail(format!("{code:?}")),
                )
                .await;
        }
    }

    pub(crate) async fn session_of(&self, tenant: Uuid, session: Uuid) -> Result<Executed<Session>, ApiError> {
        let s = self.registry.read::<Session>(tenant, session).await?;
        if s.state.id.is_none() {
            return Err(domain::Rejection::NotFound { what: "session" }.into_api());
        }
        Ok(s)
    }
}

trait IntoApi {
    fn into_api(self) -> ApiError;
}

impl IntoApi for domain::Rejection {
    fn into_api(self) -> ApiError {
        ApiError::Actor(actors::ActorError::Rejected(self))
    }
}

fn timers_in(field: &'static str, t: Option<pb::Timers>) -> Result<Option<Timers>, ApiError> {
    match t {
        None => Ok(None),
        Some(t) => Timers { inactive_after_secs: t.inactive_after_secs, close_after_secs: t.close_after_secs }
            .validate(field)
            .map(Some)
            .map_err(IntoApi::into_api),
    }
}

fn timers_out(t: Timers) -> pb::Timers {
    pb::Timers { inactive_after_secs: t.inactive_after_secs, close_after_secs: t.close_after_secs }
}

fn tenant_out(t: &Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.map(|i| i.to_string()).unwrap_or_default(),
        name: t.name.clone(),
        default_timers: Some(timers_out(t.settings.timers)),
        retention_days: t.settings.retention_days,
        region: t.settings.region.clone(),
        cancelled: t.cancelled,
    }
}

fn pype_out(p: &Pype) -> pb::Pype {
    pb::Pype {
        pype_id: p.id.map(|i| i.to_string()).unwrap_or_default(),
        name: p.name.clone(),
        description: p.description.clone(),
        agent_ids: p.agents.iter().map(Uuid::to_string).collect(),
        bot_ids: p.bots.iter().map(Uuid::to_string).collect(),
        timers: Some(timers_out(p.timers)),
        archived: p.archived,
    }
}

fn kind_out(k: ParticipantKind) -> i32 {
    (match k {
        ParticipantKind::EndUser => pb::ParticipantKind::EndUser,
        ParticipantKind::Agent => pb::ParticipantKind::Agent,
        ParticipantKind::Bot => pb::ParticipantKind::Bot,
    }) as i32
}

fn kind_in(field: &'static str, k: i32) -> Result<ParticipantKind, ApiError> {
    match pb::ParticipantKind::try_from(k) {
        Ok(pb::ParticipantKind::EndUser) => Ok(ParticipantKind::EndUser),
        Ok(pb::ParticipantKind::Agent) => Ok(ParticipantKind::Agent),
        Ok(pb::ParticipantKind::Bot) => Ok(ParticipantKind::Bot),
        _ => Err(ApiError::invalid(field, format!("{k} is not END_USER, AGENT or BOT"))),
    }
}

fn state_out(s: Status) -> i32 {
    (match s {
        Status::Active => pb::SessionState::Active,
        Status::Inactive => pb::SessionState::Inactive,
        Status::Closed => pb::SessionState::Closed,
    }) as i32
}

fn session_out(s: &Executed<Session>) -> pb::Session {
    let st = &s.state;
    pb::Session {
        session_id: st.id.map(|i| i.to_string()).unwrap_or_default(),
        pype_id: st.pype.to_string(),
        end_user_id: st.end_user.to_string(),
        state: state_out(st.status),
        participants: st
            .participants
            .iter()
            .map(|(id, p)| pb::Participant {
                participant_id: id.to_string(),
                kind: kind_out(p.kind),
                present: p.present,
                read_up_to: st.horizons.get(id).filter(|h| !h.private).map(|h| h.up_to),
            })
            .collect(),
        last_seq: st.last_seq,
        timers: Some(timers_out(st.timers)),
        version: s.version.unwrap_or_default(),
    }
}

pub(crate) fn subject_out(s: &Subject) -> pb::Subject {
    // While processing is restricted the profile is stored, not shown.
    let shown = |v: &String| if s.restricted { String::new() } else { v.clone() };
    pb::Subject {
        subject_id: s.id.map(|i| i.to_string()).unwrap_or_default(),
        username: shown(&s.username),
        email: shown(&s.email),
        phone: shown(&s.phone),
        status: (match s.status {
            Some(SubjectStatus::Invited) => pb::SubjectStatus::Invited,
            Some(SubjectStatus::Active) => pb::SubjectStatus::Active,
            Some(SubjectStatus::Deactivated) => pb::SubjectStatus::Deactivated,
            None => pb::SubjectStatus::Unspecified,
        }) as i32,
        restricted: s.restricted,
        consents: s
            .consents
            .iter()
            .map(|(purpose, c)| pb::Consent {
                purpose: purpose.clone(),
                granted: c.granted,
                policy_version: c.policy_version.clone(),
                at_micros: c.at_micros,
            })
            .collect(),
    }
}

fn reason_text(r: Reason) -> String {
    match r {
        Reason::Api => "api".into(),
        Reason::Timer => "timer".into(),
    }
}

fn event_out(session: Uuid, version: u64, recorded_at_micros: i64, e: SessionEvent) -> pb::SessionEvent {
    use pb::session_event::Event;
    let state =
        |s: Status, r: Reason| Event::StateChanged(pb::StateChange { state: state_out(s), reason: reason_text(r) });
    let event = match e {
        SessionEvent::Started { pype, end_user, timers, .. } => Event::Started(pb::SessionStarted {
            pype_id: pype.to_string(),
            end_user_id: end_user.to_string(),
            timers: Some(timers_out(timers)),
        }),
        SessionEvent::ParticipantJoined { participant, kind, .. } => {
            Event::Joined(pb::ParticipantChanged { participant_id: participant.to_string(), kind: kind_out(kind) })
        }
        SessionEvent::ParticipantLeft { participant, .. } => Event::Left(pb::ParticipantChanged {
            participant_id: participant.to_string(),
            kind: pb::ParticipantKind::Unspecified as i32,
        }),
        SessionEvent::MessagePosted { seq, sender, sent_at_micros, body, device, attachments } => {
            Event::Message(pb::Message {
                seq,
                sender_id: sender.to_string(),
                sent_at_micros,
                // A message has a body or attachments: neither means its key was shredded.
                erased: body.is_empty() && attachments.is_empty(),
                body,
                device: device.unwrap_or_default(),
                attachments: attachments.iter().map(|a| crate::media::attachment_out(session, a)).collect(),
            })
        }
        SessionEvent::MediaUploaded { media, meta } => {
            Event::MediaUploaded(crate::media::media_out(session, media, &meta))
        }
        SessionEvent::ReadHorizonAdvanced { participant, up_to, private } => Event::ReadHorizon(pb::ReadHorizon {
            participant_id: participant.to_string(),
            up_to: if private { 0 } else { up_to },
        }),
        SessionEvent::BecameInactive { reason, .. } => state(Status::Inactive, reason),
        SessionEvent::Reactivated { reason, .. } => state(Status::Active, reason),
        SessionEvent::Closed { reason, .. } => state(Status::Closed, reason),
        SessionEvent::Erased { .. } => {
            Event::StateChanged(pb::StateChange { state: state_out(Status::Closed), reason: "erasure".into() })
        }
        SessionEvent::ContentExpired { .. } => {
            Event::StateChanged(pb::StateChange { state: state_out(Status::Closed), reason: "retention".into() })
        }
        SessionEvent::Restricted { .. } => Event::Restriction(pb::Restriction { restricted: true }),
        SessionEvent::RestrictionLifted { .. } => Event::Restriction(pb::Restriction { restricted: false }),
        SessionEvent::LocationShared { participant, location, .. } => Event::Location(pb::Location {
            participant_id: participant.to_string(),
            location: if location.is_empty() { "[erased]".into() } else { location },
        }),
    };
    pb::SessionEvent { version, recorded_at_micros, event: Some(event) }
}

pub(crate) fn birth_in(date: &str, attested: bool) -> Result<Birth, ApiError> {
    match (date.is_empty(), attested) {
        (true, true) => Ok(Birth::AttestedAtLeast13),
        (true, false) => Err(ApiError::invalid("date_of_birth", "give a date of birth or set attested_at_least_13")),
        (false, _) => {
            let parts: Vec<&str> = date.split('-').collect();
            match parts.as_slice() {
                [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => match (y.parse(), m.parse(), d.parse()) {
                    (Ok(year), Ok(month), Ok(day)) => Ok(Birth::Date { year, month, day }),
                    _ => Err(ApiError::invalid("date_of_birth", "not YYYY-MM-DD")),
                },
                _ => Err(ApiError::invalid("date_of_birth", "not YYYY-MM-DD")),
            }
        }
    }
}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for Handle {
    async fn create_tenant(&self, request: Request<pb::CreateTenantRequest>) -> Reply<pb::CreateTenantResponse> {
        let api = &self.0;
        api.timed("CreateTenant", async {
            api.platform(request.metadata()).await?;
            let r = request.get_ref();
            let id = Uuid::now_v7();
            let settings = TenantSettings {
                timers: timers_in("default_timers", r.default_timers)?.unwrap_or_default(),
                retention_days: r.retention_days,
                region: if r.region.is_empty() { "eu".into() } else { r.region.clone() },
            };
            // The tenant and its first key are one append: never a tenant without a way in,
            // never a key handed out that was not recorded.
            let (key_id, token, hash) = auth::new_tenant_key(id)?;
            let cmd = TenantCommand::Create { tenant: id, name: r.name.clone(), settings, first_key: (key_id, hash) };
            let state = api.registry.execute::<Tenant>(id, id, cmd).await?.state;
            tracing::info!(tenant = %id, "tenant created");
            Ok(pb::CreateTenantResponse {
                tenant: Some(tenant_out(&state)),
                api_key: token,
                api_key_id: key_id.to_string(),
            })
        })
        .await
    }

    async fn get_tenant(&self, request: Request<pb::GetTenantRequest>) -> Reply<pb::Tenant> {
        let api = &self.0;
        api.timed("GetTenant", async {
            let wanted = parse_id("tenant_id", &request.get_ref().tenant_id)?;
            match api.caller(request.metadata()).await? {
                Caller::Tenant(t) if t != wanted => {
                    return Err(domain::Rejection::NotFound { what: "tenant" }.into_api());
                }
                Caller::Staff { id, role } => api.staff_may(id, role, Some(wanted)).await?,
                _ => {}
            }
            let t = api.registry.read::<Tenant>(wanted, wanted).await?.state;
            if t.id.is_none() {
                return Err(domain::Rejection::NotFound { what: "tenant" }.into_api());
            }
            Ok(tenant_out(&t))
        })
        .await
    }

    async fn create_api_key(&self, request: Request<pb::CreateApiKeyRequest>) -> Reply<pb::CreateApiKeyResponse> {
        let api = &self.0;
        api.timed("CreateApiKey", async {
            let tenant = api.tenant(request.metadata()).await?;
            let (key_id, token, hash) = auth::new_tenant_key(tenant)?;
            api.registry
                .execute::<Tenant>(tenant, tenant, TenantCommand::IssueApiKey { key_id, secret_sha256: hash })
                .await?;
            Ok(pb::CreateApiKeyResponse { api_key: token, api_key_id: key_id.to_string() })
        })
        .await
    }

    async fn set_retention(&self, request: Request<pb::SetRetentionRequest>) -> Reply<pb::SetRetentionResponse> {
        let api = &self.0;
        api.timed("SetRetention", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let t = api.registry.read::<Tenant>(tenant, tenant).await?.state;
            if r.pype_id.is_empty() {
                if r.inherit {
                    return Err(ApiError::invalid("inherit", "only for a Pype (give pype_id)"));
                }
                let settings = TenantSettings { retention_days: r.retention_days, ..t.settings.clone() };
                let done =
                    api.registry.execute::<Tenant>(tenant, tenant, TenantCommand::UpdateSettings { settings }).await?;
                api.audit
                    .record(
                        Record::new("privacy.retention_set", current_actor(), "ok")
                            .tenant(tenant)
                            .detail(format!("days={}", r.retention_days)),
                    )
                    .await?;
                return Ok(pb::SetRetentionResponse {
                    tenant_retention_days: done.state.settings.retention_days,
                    pype_retention_days: None,
                });
            }
            let pype = parse_id("pype_id", &r.pype_id)?;
            let days = if r.inherit { None } else { Some(r.retention_days) };
            let done = api.registry.execute::<Pype>(tenant, pype, PypeCommand::SetRetention { days }).await?;
            api.audit
                .record(
                    Record::new("privacy.retention_set", current_actor(), "ok")
                        .tenant(tenant)
                        .target(format!("pype:{pype}"))
                        .detail(days.map_or("inherit".to_string(), |d| format!("days={d}"))),
                )
                .await?;
            Ok(pb::SetRetentionResponse {
                tenant_retention_days: t.settings.retention_days,
                pype_retention_days: Some(done.state.retention_days.unwrap_or(t.settings.retention_days)),
            })
        })
        .await
    }

    async fn cancel_tenant(&self, request: Request<pb::CancelTenantRequest>) -> Reply<pb::Offboarding> {
        let api = &self.0;
        api.timed("CancelTenant", async {
            api.platform(request.metadata()).await?;
            let tenant = parse_id("tenant_id", &request.get_ref().tenant_id)?;
            let done = api.registry.execute::<Tenant>(tenant, tenant, TenantCommand::Cancel).await?;
            api.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|(t, _), _| *t != tenant);
            api.audit.record(Record::new("privacy.tenant_cancelled", current_actor(), "ok").tenant(tenant)).await?;
            Ok(offboarding_out(tenant, &done.state, api.offboarding_grace_days))
        })
        .await
    }

    async fn get_offboarding(&self, request: Request<pb::CancelTenantRequest>) -> Reply<pb::Offboarding> {
        let api = &self.0;
        api.timed("GetOffboarding", async {
            api.platform(request.metadata()).await?;
            let tenant = parse_id("tenant_id", &request.get_ref().tenant_id)?;
            let t = api.registry.read::<Tenant>(tenant, tenant).await?.state;
            if t.id.is_none() {
                return Err(domain::Rejection::NotFound { what: "tenant" }.into_api());
            }
            Ok(offboarding_out(tenant, &t, api.offboarding_grace_days))
        })
        .await
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Reply<pb::RevokeApiKeyResponse> {
        let api = &self.0;
        api.timed("RevokeApiKey", async {
            let tenant = api.tenant(request.metadata()).await?;
            let key_id = parse_id("api_key_id", &request.get_ref().api_key_id)?;
            api.registry.execute::<Tenant>(tenant, tenant, TenantCommand::RevokeApiKey { key_id }).await?;
            api.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&(tenant, key_id));
            Ok(pb::RevokeApiKeyResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::pype_service_server::PypeService for Handle {
    async fn create_pype(&self, request: Request<pb::CreatePypeRequest>) -> Reply<pb::Pype> {
        let api = &self.0;
        api.timed("CreatePype", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let t = api.registry.read::<Tenant>(tenant, tenant).await?.state;
            t.require_active().map_err(IntoApi::into_api)?;
            let timers = timers_in("timers", r.timers)?.unwrap_or(t.settings.timers);
            let id = Uuid::now_v7();
            let cmd = PypeCommand::Create {
                pype: id,
                tenant,
                name: r.name.clone(),
                description: r.description.clone(),
                timers,
            };
            Ok(pype_out(&api.registry.execute::<Pype>(tenant, id, cmd).await?.state))
        })
        .await
    }

    async fn get_pype(&self, request: Request<pb::GetPypeRequest>) -> Reply<pb::Pype> {
        let api = &self.0;
        api.timed("GetPype", async {
            let tenant = api.tenant(request.metadata()).await?;
            let id = parse_id("pype_id", &request.get_ref().pype_id)?;
            let p = api.registry.read::<Pype>(tenant, id).await?.state;
            if p.id.is_none() {
                return Err(domain::Rejection::NotFound { what: "pype" }.into_api());
            }
            Ok(pype_out(&p))
        })
        .await
    }

    async fn assign_member(&self, request: Request<pb::AssignMemberRequest>) -> Reply<pb::Pype> {
        let api = &self.0;
        api.timed("AssignMember", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let pype = parse_id("pype_id", &r.pype_id)?;
            let member = parse_id("member_id", &r.member_id)?;
            let cmd = match (kind_in("kind", r.kind)?, r.assigned) {
                (ParticipantKind::Agent, true) => PypeCommand::AssignAgent { agent: member },
                (ParticipantKind::Agent, false) => PypeCommand::UnassignAgent { agent: member },
                (ParticipantKind::Bot, true) => PypeCommand::AssignBot { bot: member },
                (ParticipantKind::Bot, false) => PypeCommand::UnassignBot { bot: member },
                (ParticipantKind::EndUser, _) => {
                    return Err(ApiError::invalid("kind", "only agents and bots are assigned to a pype"));
                }
            };
            Ok(pype_out(&api.registry.execute::<Pype>(tenant, pype, cmd).await?.state))
        })
        .await
    }

    async fn archive_pype(&self, request: Request<pb::ArchivePypeRequest>) -> Reply<pb::Pype> {
        let api = &self.0;
        api.timed("ArchivePype", async {
            let tenant = api.tenant(request.metadata()).await?;
            let pype = parse_id("pype_id", &request.get_ref().pype_id)?;
            Ok(pype_out(&api.registry.execute::<Pype>(tenant, pype, PypeCommand::Archive).await?.state))
        })
        .await
    }
}

impl Handle {
    /// Runs one command on a Session (the domain answers NOT_FOUND for a
    /// Session that does not exist, or belongs to another tenant).
    async fn session_command(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        session: &str,
        command: impl FnOnce() -> Result<SessionCommand, ApiError>,
    ) -> Reply<pb::Session> {
        let api = &self.0;
        api.timed(method, async {
            let tenant = api.tenant(metadata).await?;
            let id = parse_id("session_id", session)?;
            let cmd = command()?;
            Ok(session_out(&api.registry.execute::<Session>(tenant, id, cmd).await?))
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for Handle {
    async fn start_session(&self, request: Request<pb::StartSessionRequest>) -> Reply<pb::Session> {
        let api = &self.0;
        api.timed("StartSession", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let pype_id = parse_id("pype_id", &r.pype_id)?;
            let end_user = parse_id("end_user_id", &r.end_user_id)?;
            let timers = timers_in("timers", r.timers)?;
            let pype = api.registry.read::<Pype>(tenant, pype_id).await?.state;
            pype.require_open().map_err(IntoApi::into_api)?;
            let subject = api.registry.read::<Subject>(tenant, end_user).await?.state;
            if subject.erasure.is_some() {
                return Err(domain::Rejection::precondition("the end user's erasure was requested").into_api());
            }
            if subject.restricted {
                return Err(domain::Rejection::precondition(
                    "processing of the end user's data is restricted: no new sessions until it is lifted",
                )
                .into_api());
            }
            match subject.status {
                None => return Err(domain::Rejection::NotFound { what: "end user" }.into_api()),
                Some(SubjectStatus::Deactivated) => {
                    return Err(domain::Rejection::precondition("the end user is deactivated").into_api());
                }
                Some(SubjectStatus::Invited) => {
                    return Err(domain::Rejection::precondition("the end user has not onboarded yet").into_api());
                }
                Some(SubjectStatus::Active) => {}
            }
            let id = Uuid::now_v7();
            let cmd = SessionCommand::Start {
                session: id,
                tenant,
                pype: pype_id,
                end_user,
                pype_timers: pype.timers,
                timers,
            };
            Ok(session_out(&api.registry.execute::<Session>(tenant, id, cmd).await?))
        })
        .await
    }

    async fn post_message(&self, request: Request<pb::PostMessageRequest>) -> Reply<pb::PostMessageResponse> {
        let api = &self.0;
        api.timed("PostMessage", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.into_inner();
            let id = parse_id("session_id", &r.session_id)?;
            let sender = parse_id("sender_id", &r.sender_id)?;
            let device = (!r.device.is_empty()).then_some(r.device);
            if r.attachment_ids.len() > domain::session::MAX_ATTACHMENTS {
                return Err(ApiError::invalid(
                    "attachment_ids",
                    format!("{} attachments; at most {}", r.attachment_ids.len(), domain::session::MAX_ATTACHMENTS),
                ));
            }
            let attachments =
                r.attachment_ids.iter().map(|a| parse_id("attachment_ids", a)).collect::<Result<Vec<_>, _>>()?;
            let done = api
                .registry
                .execute::<Session>(
                    tenant,
                    id,
                    SessionCommand::PostMessage { sender, body: r.body, device, attachments },
                )
                .await?;
            let (seq, sent_at_micros) = done
                .events
                .iter()
                .find_map(|e| match e {
                    SessionEvent::MessagePosted { seq, sent_at_micros, .. } => Some((*seq, *sent_at_micros)),
                    _ => None,
                })
                .unwrap_or_default();
            Ok(pb::PostMessageResponse { seq, sent_at_micros, state: state_out(done.state.status) })
        })
        .await
    }

    async fn advance_read_horizon(&self, request: Request<pb::AdvanceReadHorizonRequest>) -> Reply<pb::Session> {
        let r = request.get_ref().clone();
        self.session_command("AdvanceReadHorizon", request.metadata(), &r.session_id, || {
            Ok(SessionCommand::AdvanceReadHorizon {
                participant: parse_id("participant_id", &r.participant_id)?,
                up_to: r.up_to,
                private: r.private,
            })
        })
        .await
    }

    async fn join_session(&self, request: Request<pb::JoinSessionRequest>) -> Reply<pb::Session> {
        let api = &self.0;
        api.timed("JoinSession", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let id = parse_id("session_id", &r.session_id)?;
            let participant = parse_id("participant_id", &r.participant_id)?;
            let kind = kind_in("kind", r.kind)?;
            let session = api.session_of(tenant, id).await?;
            // Agents and bots must be assigned to the Session's Pype.
            let pype = api.registry.read::<Pype>(tenant, session.state.pype).await?.state;
            let assigned = match kind {
                ParticipantKind::Agent => pype.agents.contains(&participant),
                ParticipantKind::Bot => pype.bots.contains(&participant),
                ParticipantKind::EndUser => true,
            };
            if !assigned {
                return Err(
                    domain::Rejection::precondition("the participant is not assigned to the session's pype").into_api()
                );
            }
            Ok(session_out(
                &api.registry.execute::<Session>(tenant, id, SessionCommand::Join { participant, kind }).await?,
            ))
        })
        .await
    }

    async fn leave_session(&self, request: Request<pb::LeaveSessionRequest>) -> Reply<pb::Session> {
        let r = request.get_ref().clone();
        self.session_command("LeaveSession", request.metadata(), &r.session_id, || {
            Ok(SessionCommand::Leave { participant: parse_id("participant_id", &r.participant_id)? })
        })
        .await
    }

    async fn share_location(&self, request: Request<pb::ShareLocationRequest>) -> Reply<pb::Session> {
        let api = &self.0;
        api.timed("ShareLocation", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let id = parse_id("session_id", &r.session_id)?;
            let participant = parse_id("participant_id", &r.participant_id)?;
            let e6 = |field: &'static str, v: f64| {
                if v.is_finite() {
                    Ok((v * 1e6).round() as i64)
                } else {
                    Err(ApiError::invalid(field, "is not a number"))
                }
            };
            let (latitude_e6, longitude_e6) = (e6("latitude", r.latitude)?, e6("longitude", r.longitude)?);
            // Consent is read now; a withdrawal that lands after this read
            // is caught by the second shred of `WithdrawConsent`.
            let subject = api.registry.read::<Subject>(tenant, participant).await?.state;
            let consented = !subject.restricted && subject.consents.get("geolocation").is_some_and(|c| c.granted);
            let cmd = SessionCommand::ShareLocation {
                participant,
                latitude_e6,
                longitude_e6,
                accuracy_m: r.accuracy_m,
                consented,
            };
            Ok(session_out(&api.registry.execute::<Session>(tenant, id, cmd).await?))
        })
        .await
    }

    async fn close_session(&self, request: Request<pb::CloseSessionRequest>) -> Reply<pb::Session> {
        let r = request.get_ref().clone();
        self.session_command("CloseSession", request.metadata(), &r.session_id, || Ok(SessionCommand::Close)).await
    }

    async fn get_session(&self, request: Request<pb::GetSessionRequest>) -> Reply<pb::Session> {
        let api = &self.0;
        api.timed("GetSession", async {
            let tenant = api.tenant(request.metadata()).await?;
            let id = parse_id("session_id", &request.get_ref().session_id)?;
            Ok(session_out(&api.session_of(tenant, id).await?))
        })
        .await
    }

    async fn list_sessions(&self, request: Request<pb::ListSessionsRequest>) -> Reply<pb::ListSessionsResponse> {
        let api = &self.0;
        api.timed("ListSessions", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let pype = parse_id("pype_id", &r.pype_id)?;
            let size = match r.page_size {
                0 => 50,
                n @ 1..=500 => n as usize,
                n => return Err(ApiError::invalid("page_size", format!("{n}; 1 to 500"))),
            };
            let cursor = match r.page_token.as_str() {
                "" => None,
                t => Some(
                    t.strip_prefix("c")
                        .and_then(|h| hex::decode(h).ok())
                        .filter(|c| c.len() == 56)
                        .ok_or_else(|| ApiError::invalid("page_token", "not a token this server issued"))?,
                ),
            };
            if api.registry.read::<Pype>(tenant, pype).await?.state.id.is_none() {
                return Err(domain::Rejection::NotFound { what: "pype" }.into_api());
            }
            // The Session ids come from the sessions view (start order); each
            // Session's state from its actor, like GetSession.
            let view = api.views.read(projections::sessions::NAME).await?;
            let rows = projections::sessions::list_sessions(&view, tenant, pype, cursor.as_deref(), size + 1)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            drop(view);
            let more = rows.len() > size;
            let mut sessions = Vec::with_capacity(size);
            let mut next = None;
            for (key, row) in rows.iter().take(size) {
                let id = Uuid::from_slice(&row.session_id).map_err(|e| ApiError::Internal(e.to_string()))?;
                sessions.push(session_out(&api.registry.read::<Session>(tenant, id).await?));
                next = Some(key.clone());
            }
            Ok(pb::ListSessionsResponse {
                sessions,
                next_page_token: match (more, next) {
                    (true, Some(k)) => format!("c{}", hex::encode(k)),
                    _ => String::new(),
                },
            })
        })
        .await
    }

    type WatchSessionStream = ReceiverStream<Result<pb::SessionEvent, GrpcStatus>>;

    async fn watch_session(&self, request: Request<pb::WatchSessionRequest>) -> Reply<Self::WatchSessionStream> {
        let api = self.0.clone();
        let started = Instant::now();
        let setup = async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.get_ref();
            let id = parse_id("session_id", &r.session_id)?;
            let session = api.session_of(tenant, id).await?;
            if session.state.restricted {
                return Err(domain::Rejection::precondition(
                    "processing of the end user's data is restricted: the session cannot be watched",
                )
                .into_api());
            }
            check_watch_start(r.from_version, session.version)?;
            Ok::<_, ApiError>((tenant, id, r.from_version))
        };
        let (tenant, id, from) = match in_method("WatchSession", setup).await {
            Ok(v) => v,
            Err(e) => {
                let status = GrpcStatus::from(e);
                api.note_refusal("WatchSession", status.code()).await;
                api.metrics.observe("WatchSession", status.code(), started.elapsed());
                return Err(status);
            }
        };
        api.metrics.observe("WatchSession", tonic::Code::Ok, started.elapsed());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(watch(api, tenant, id, from, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A watch may start at any version up to the Session's next one (the
/// resume point after the last event seen); a start past that names the
/// end instead of waiting for events that may never be written.
fn check_watch_start(from: u64, last_version: Option<u64>) -> Result<(), ApiError> {
    let next = last_version.map_or(0, |v| v + 1);
    if from > next {
        return Err(ApiError::OutOfRange(format!(
            "from_version {from} is past the session's end: it has {next} events, so resume from at most {next}"
        )));
    }
    Ok(())
}

/// Streams a Session's events from `from`, then follows the log until the
/// client goes away.
async fn watch(
    api: Arc<Api>,
    tenant: Uuid,
    session: Uuid,
    mut from: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::SessionEvent, GrpcStatus>>,
) {
    let stream = stream_name(Session::KIND, tenant, session);
    let mut head = api.log.watch_head();
    loop {
        let page = match api.log.read_stream(&stream, ReadFrom::Version(from), Direction::Forward, 256).await {
            Ok(page) => page,
            Err(LogError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => {
                let _ = tx.send(Err(ApiError::from(e).into())).await;
                return;
            }
        };
        for r in &page {
            let item = match <Session as Codec>::decode(r, &api.keyring).await {
                Ok(e) => Ok(event_out(session, r.version, r.recorded_at_micros, e)),
                Err(e) => Err(ApiError::Actor(e.into()).into()),
            };
            if tx.send(item).await.is_err() {
                return;
            }
            from = r.version + 1;
        }
        if page.is_empty() {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    }
}

#[tonic::async_trait]
impl pb::subject_service_server::SubjectService for Handle {
    async fn register_subject(&self, request: Request<pb::RegisterSubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("RegisterSubject", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.into_inner();
            api.registry.read::<Tenant>(tenant, tenant).await?.state.require_active().map_err(IntoApi::into_api)?;
            let birth = birth_in(&r.date_of_birth, r.attested_at_least_13)?;
            let password = password_hash_of(&r.password).await?;
            let id = Uuid::now_v7();
            let cmd = SubjectCommand::Register {
                subject: id,
                tenant,
                username: r.username,
                email: r.email,
                phone: r.phone,
                birth,
            };
            let mut done = api.registry.subject_with_username(tenant, id, cmd).await?;
            if let Some(hash) = password {
                done = api.registry.execute::<Subject>(tenant, id, SubjectCommand::SetPassword { hash }).await?;
            }
            tracing::info!(tenant = %tenant, subject = %id, "subject registered");
            Ok(subject_out(&done.state))
        })
        .await
    }

    async fn invite_subject(&self, request: Request<pb::InviteSubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("InviteSubject", async {
            let tenant = api.tenant(request.metadata()).await?;
            api.registry.read::<Tenant>(tenant, tenant).await?.state.require_active().map_err(IntoApi::into_api)?;
            let id = Uuid::now_v7();
            let cmd = SubjectCommand::Invite { subject: id, tenant, email: request.into_inner().email };
            Ok(subject_out(&api.registry.execute::<Subject>(tenant, id, cmd).await?.state))
        })
        .await
    }

    async fn onboard_subject(&self, request: Request<pb::OnboardSubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("OnboardSubject", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.into_inner();
            let id = parse_id("subject_id", &r.subject_id)?;
            let birth = birth_in(&r.date_of_birth, r.attested_at_least_13)?;
            let password = password_hash_of(&r.password).await?;
            let cmd = SubjectCommand::Onboard { username: r.username, phone: r.phone, birth };
            let mut done = api.registry.subject_with_username(tenant, id, cmd).await?;
            if let Some(hash) = password {
                done = api.registry.execute::<Subject>(tenant, id, SubjectCommand::SetPassword { hash }).await?;
            }
            Ok(subject_out(&done.state))
        })
        .await
    }

    async fn get_subject(&self, request: Request<pb::GetSubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("GetSubject", async {
            let tenant = api.tenant(request.metadata()).await?;
            let id = parse_id("subject_id", &request.get_ref().subject_id)?;
            let s = api.registry.read::<Subject>(tenant, id).await?.state;
            s.require_exists().map_err(IntoApi::into_api)?;
            Ok(subject_out(&s))
        })
        .await
    }

    async fn deactivate_subject(&self, request: Request<pb::DeactivateSubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("DeactivateSubject", async {
            let tenant = api.tenant(request.metadata()).await?;
            let id = parse_id("subject_id", &request.get_ref().subject_id)?;
            let done = api.registry.execute::<Subject>(tenant, id, SubjectCommand::Deactivate).await?;
            // The subject's new state refuses its auth sessions on every node.
            api.auth.revoke_subject(tenant, id);
            api.record_subject("access.deactivate", tenant, id, "auth_sessions=revoked").await?;
            Ok(subject_out(&done.state))
        })
        .await
    }

    async fn reactivate_subject(&self, request: Request<pb::ReactivateSubjectRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("ReactivateSubject", async {
            let tenant = api.tenant(request.metadata()).await?;
            let id = parse_id("subject_id", &request.get_ref().subject_id)?;
            let done = api.registry.execute::<Subject>(tenant, id, SubjectCommand::Reactivate).await?;
            api.record_subject("access.reactivate", tenant, id, "").await?;
            Ok(subject_out(&done.state))
        })
        .await
    }

    async fn set_password(&self, request: Request<pb::SetPasswordRequest>) -> Reply<pb::Subject> {
        let api = &self.0;
        api.timed("SetPassword", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.into_inner();
            let id = parse_id("subject_id", &r.subject_id)?;
            api.registry.read::<Subject>(tenant, id).await?.state.require_exists().map_err(IntoApi::into_api)?;
            let hash =
                password_hash_of(&r.password).await?.ok_or_else(|| ApiError::invalid("password", "is required"))?;
            let done = api.registry.execute::<Subject>(tenant, id, SubjectCommand::SetPassword { hash }).await?;
            // The subject's new state refuses its auth sessions on every node.
            api.auth.revoke_subject(tenant, id);
            api.record_subject("auth.password_set", tenant, id, "auth_sessions=revoked").await?;
            Ok(subject_out(&done.state))
        })
        .await
    }
}

/// Checks a password given in a request and hashes it (off the runtime);
/// `None` when none was given.
async fn password_hash_of(password: &str) -> Result<Option<String>, ApiError> {
    if password.is_empty() {
        return Ok(None);
    }
    domain::subject::check_password(password).map_err(IntoApi::into_api)?;
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || crate::end_user_auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))?
        .map(Some)
}

/// The subject a username names in `tenant`, as a login sees it.
async fn account_of(api: &Api, tenant: Uuid, username: &str) -> Result<Option<Account>, ApiError> {
    let Some((subject, _, _)) = api.registry.username_owner(tenant, username).await? else { return Ok(None) };
    let s = api.registry.read::<Subject>(tenant, subject).await?.state;
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

fn session_info(s: &AuthSession, c: &crate::end_user_auth::AuthConfig) -> pb::AuthSessionInfo {
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
        let api = &self.0;
        api.timed("Login", async {
            let tenant = api.tenant(request.metadata()).await?;
            let r = request.into_inner();
            let username = domain::subject::normalize_username(&r.username).map_err(IntoApi::into_api)?;
            if r.password.is_empty() || r.password.len() > 4096 {
                return Err(ApiError::invalid("password", "is required, at most 4096 bytes"));
            }
            let account = account_of(api, tenant, &username).await?;
            let known = account.as_ref().map(|a| a.subject);
            let actor = known.map_or_else(|| "anonymous".to_string(), |s| format!("subject:{s}"));
            let secret = api.keyring.tenant_index_secret(tenant).await?;
            let lockout = crate::end_user_auth::lockout_stream(secret.expose(), tenant, &username);
            let outcome = api.auth.login(tenant, &lockout, &r.password, account).await?;
            let (result, code) = match outcome {
                LoginOutcome::Ok { token, session } => {
                    Ok(pb::LoginResponse { token, session: Some(session_info(&session, &api.auth.config)) })
                        .map(|r| (r, "ok"))
                        .map_or_else(|e: ApiError| (Err(e), "failed"), |(r, c)| (Ok(r), c))
                }
                LoginOutcome::Failed => {
                    (Err(ApiError::Unauthenticated("the username or the password is wrong".into())), "failed")
                }
                LoginOutcome::Locked { retry_after_secs } => (
                    Err(ApiError::TooMany(format!(
                        "too many failed logins for this username; try again in {retry_after_secs} s"
                    ))),
                    "locked",
                ),
                LoginOutcome::Deactivated => (Err(ApiError::Forbidden("the account is deactivated".into())), "refused"),
            };
            // Unknown usernames are not written down (a username is personal data).
            api.audit.record(Record::new("auth.login", actor, code).tenant(tenant)).await?;
            result
        })
        .await
    }

    async fn introspect(&self, request: Request<pb::IntrospectRequest>) -> Reply<pb::AuthSessionInfo> {
        let api = &self.0;
        api.timed("Introspect", async {
            let tenant = api.tenant(request.metadata()).await?;
            let token = &request.get_ref().token;
            let invalid = || ApiError::Unauthenticated("the token is unknown, expired or revoked".into());
            let Some(session) = api.auth.touch(tenant, token).await? else {
                api.audit.note(Record::new("auth.token", "anonymous", "failed").tenant(tenant)).await;
                return Err(invalid());
            };
            // Another node may have deactivated the user or changed the
            // password: the subject's state (read fresh from the log)
            // decides, and what ended an auth session stays ended.
            let s = api.registry.read::<Subject>(tenant, session.subject).await?.state;
            let live = s.status == Some(SubjectStatus::Active)
                && !s.restricted
                && s.erasure.is_none()
                && s.logins_revoked_micros <= session.created_micros;
            if !live {
                api.auth.revoke_subject(tenant, session.subject);
                api.audit
                    .note(
                        Record::new("auth.token", format!("subject:{}", session.subject), "refused")
                            .tenant(tenant)
                            .detail("revoked"),
                    )
                    .await;
                return Err(invalid());
            }
            api.audit
                .note(Record::new("auth.token", format!("subject:{}", session.subject), "ok").tenant(tenant))
                .await;
            Ok(session_info(&session, &api.auth.config))
        })
        .await
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let api = &self.0;
        api.timed("Logout", async {
            let tenant = api.tenant(request.metadata()).await?;
            let ended = api.auth.logout(tenant, &request.get_ref().token).await?;
            api.audit
                .note(Record::new("auth.logout", current_actor(), if ended { "ok" } else { "failed" }).tenant(tenant))
                .await;
            Ok(pb::LogoutResponse { ended })
        })
        .await
    }
}

/// The tenant a staff member's call names in the `x-pypes-tenant` header.
fn staff_tenant(metadata: &tonic::metadata::MetadataMap) -> Result<Uuid, ApiError> {
    let value = metadata
        .get(TENANT_HEADER)
        .ok_or_else(|| ApiError::invalid("x-pypes-tenant", "staff calls name the tenant in this header"))?;
    let text = value.to_str().map_err(|_| ApiError::invalid("x-pypes-tenant", "is not text"))?;
    Uuid::parse_str(text.trim()).map_err(|_| ApiError::invalid("x-pypes-tenant", "is not a UUID"))
}
