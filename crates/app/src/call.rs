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
    static OBJECT: Cell<Option<Object>>;
}

/// What a call reads or changes, when it names one Session or subject: a
/// staff member's access entry names it, so the breach scope and the
/// access alerts know whose data was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Object {
    Session(Uuid),
    Subject(Uuid),
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

/// What a call was verified to be, noted as it ends.
#[derive(Debug, Clone, Copy)]
pub struct Noted {
    /// The tenant the call acted for (a tenant key's, or the one a staff
    /// member's call was allowed to name), for the request log.
    pub tenant: Option<Uuid>,
    actor: Actor,
}

impl Noted {
    /// The verified caller as the audit trail names it (`None`: the call
    /// was refused before its key was verified).
    pub fn actor(&self) -> Option<String> {
        match self.actor {
            Actor::Unknown => None,
            a => Some(actor_text(a)),
        }
    }
}

/// [`scope`], and what the call was verified to be ([`Noted`]).
pub async fn scope_noting<T>(method: &'static str, f: impl Future<Output = T>) -> (T, Noted) {
    let noted = async {
        let out = f.await;
        (out, Noted { tenant: TENANT.with(Cell::get), actor: ACTOR.with(Cell::get) })
    };
    let call =
        ACTOR.scope(Cell::new(Actor::Unknown), TENANT.scope(Cell::new(None), OBJECT.scope(Cell::new(None), noted)));
    METHOD.scope(method, call).await
}

/// Notes the Session or subject the current call is about (before it is
/// authorised).
pub(crate) fn set_object(object: Object) {
    let _ = OBJECT.try_with(|o| o.set(Some(object)));
}

/// The Session or subject the current call is about, if it named one.
pub(crate) fn object() -> Option<Object> {
    OBJECT.try_with(Cell::get).ok().flatten()
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
    actor_text(ACTOR.try_with(Cell::get).unwrap_or_default())
}

fn actor_text(actor: Actor) -> String {
    match actor {
        Actor::Unknown => "unknown".into(),
        Actor::Admin => "admin".into(),
        Actor::Staff(id) => format!("staff:{id}"),
        Actor::TenantKey(id) => format!("tenant-key:{id}"),
    }
}
