//! The call being served: which RPC (the staff policy is per RPC) and who
//! is making it, as the audit trail names them. Set by the edge around
//! each call ([`scope`]); read where an audit entry is written.

use std::cell::Cell;
use std::future::Future;

use uuid::Uuid;

tokio::task_local! {
    static METHOD: &'static str;
    static ACTOR: Cell<Actor>;
    static TENANT: Cell<Option<Uuid>>;
}

/// Who a call's verified key belongs to; made into text only when an audit
/// entry is written (not on every call).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Actor {
    #[default]
    Unknown,
    Admin,
    Staff(Uuid),
    TenantKey(Uuid),
}

/// One call: its RPC name and what its caller presented.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub credentials: crate::auth::Credentials,
}

/// Runs `f` as the RPC `method`.
pub async fn scope<T>(method: &'static str, f: impl Future<Output = T>) -> T {
    scope_noting(method, f).await.0
}

/// [`scope`], and the tenant the call was verified to act for (a tenant
/// key's, or the one a staff member's call was allowed to name), for the
/// request log.
pub async fn scope_noting<T>(method: &'static str, f: impl Future<Output = T>) -> (T, Option<Uuid>) {
    let noted = async {
        let out = f.await;
        (out, TENANT.with(Cell::get))
    };
    METHOD.scope(method, ACTOR.scope(Cell::new(Actor::Unknown), TENANT.scope(Cell::new(None), noted))).await
}

/// Notes the tenant the current call acts for (after it was verified).
pub(crate) fn set_tenant(tenant: Uuid) {
    let _ = TENANT.try_with(|t| t.set(Some(tenant)));
}

/// The RPC being served (`unknown` outside [`scope`]).
pub fn method() -> &'static str {
    METHOD.try_with(|m| *m).unwrap_or("unknown")
}

pub(crate) fn set_actor(actor: Actor) {
    let _ = ACTOR.try_with(|a| a.set(actor));
}

/// The verified caller of the current call, for audit entries.
pub fn current_actor() -> String {
    match ACTOR.try_with(Cell::get).unwrap_or_default() {
        Actor::Unknown => "unknown".into(),
        Actor::Admin => "admin".into(),
        Actor::Staff(id) => format!("staff:{id}"),
        Actor::TenantKey(id) => format!("tenant-key:{id}"),
    }
}
