//! Breach scope: from the verified audit trail, every tenant, subject and
//! Session whose data one actor (a staff member or an API key) read or
//! changed in a time window, for a breach notification.
//!
//! What the trail can say, and so what the scope says:
//! - a staff member's every call is an entry; a call about one Session or
//!   subject names it (`rpc:<method> session:<id> subject:<id>`), a call
//!   over a whole tenant (ListEndUsers, SubscribeTenantEvents, ...) names
//!   only the RPC, and then the whole tenant is in scope;
//! - a tenant API key's successful calls are counted, not written one by
//!   one (the hot path), so a tenant key's scope is its whole tenant;
//! - privacy requests (export, erasure, rectification, ...) name their
//!   subject whoever made them.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::TrailEntry;

/// Calls about a whole tenant's personal data or content, not one Session
/// or subject: with one of these, the whole tenant is in scope.
const WHOLE_TENANT_RPCS: &[&str] = &["ListEndUsers", "SubscribeTenantEvents", "ExportTenant", "QueryAnalytics"];

/// What one actor reached in one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantScope {
    /// Why the whole tenant is in scope (empty: only what is listed).
    pub whole_tenant: BTreeSet<String>,
    pub subjects: BTreeSet<Uuid>,
    pub sessions: BTreeSet<Uuid>,
    /// The RPCs and actions seen, with how many times.
    pub actions: BTreeMap<String, u64>,
    /// Calls (attempts) that succeeded, and that were refused.
    pub calls: u64,
    pub refused: u64,
    pub first_micros: i64,
    pub last_micros: i64,
}

/// The breach scope of one actor over `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub actor: String,
    pub from_micros: i64,
    pub to_micros: i64,
    /// Entries of the actor in the window.
    pub entries: u64,
    pub tenants: BTreeMap<Uuid, TenantScope>,
    /// Successful calls that concern no tenant (platform calls).
    pub platform_calls: BTreeMap<String, u64>,
}

/// Whether `actor` is spelled as the trail names actors.
pub fn valid_actor(actor: &str) -> bool {
    let id = |p: &str| actor.strip_prefix(p).is_some_and(|id| Uuid::parse_str(id).is_ok());
    actor == "admin" || id("staff:") || id("tenant-key:") || id("subject:")
}

/// The actors a scope request means: as the trail spells them
/// (`staff:<id>`, `tenant-key:<id>`, `admin`), or a bare id, which may be
/// a staff member's or an API key's.
pub fn actors_for(actor: &str) -> Result<Vec<String>, String> {
    let actor = actor.trim();
    if valid_actor(actor) {
        return Ok(vec![actor.to_string()]);
    }
    match Uuid::parse_str(actor) {
        Ok(id) => Ok(vec![format!("staff:{id}"), format!("tenant-key:{id}")]),
        Err(_) => {
            Err(format!("{actor:?} is not an actor: staff:<id>, tenant-key:<id>, admin, or a bare staff or API key id"))
        }
    }
}

/// The scope of `actor` over `[from, to)` from `entries` (the verified
/// trail, any order).
pub fn scope_of<'a>(entries: impl IntoIterator<Item = &'a TrailEntry>, actor: &str, from: i64, to: i64) -> Scope {
    let mut scope = Scope { actor: actor.to_string(), from_micros: from, to_micros: to, ..Default::default() };
    for e in entries {
        if e.actor != actor || e.at_micros < from || e.at_micros >= to {
            continue;
        }
        scope.entries += 1;
        let ok = e.outcome == "ok";
        let rpc = e.target.split_whitespace().find_map(|t| t.strip_prefix("rpc:"));
        let what = rpc.map_or_else(|| e.action.clone(), |r| format!("{} {r}", e.action));
        let Some(tenant) = e.tenant else {
            if ok {
                *scope.platform_calls.entry(what).or_default() += e.count;
            }
            continue;
        };
        let t = scope.tenants.entry(tenant).or_insert_with(|| TenantScope {
            first_micros: e.at_micros,
            last_micros: e.at_micros,
            ..Default::default()
        });
        t.first_micros = t.first_micros.min(e.at_micros);
        t.last_micros = t.last_micros.max(e.at_micros);
        if !ok {
            t.refused += e.count;
            continue;
        }
        t.calls += e.count;
        *t.actions.entry(what).or_default() += e.count;
        let mut named = false;
        for token in e.target.split_whitespace() {
            if let Some(id) = token.strip_prefix("subject:").and_then(|i| Uuid::parse_str(i).ok()) {
                t.subjects.insert(id);
                named = true;
            } else if let Some(id) = token.strip_prefix("session:").and_then(|i| Uuid::parse_str(i).ok()) {
                t.sessions.insert(id);
                named = true;
            }
        }
        if e.action == "auth.api_key" {
            t.whole_tenant
                .insert("a tenant API key reaches all of its tenant's data (its calls are counted, not listed)".into());
        } else if e.action == "privacy.tenant_export" {
            t.whole_tenant.insert("the whole tenant was exported (ExportTenant)".into());
        } else if !named && let Some(r) = rpc.filter(|r| WHOLE_TENANT_RPCS.contains(r)) {
            t.whole_tenant.insert(format!("{r} reads across the tenant"));
        }
    }
    scope
}

impl Scope {
    /// The scope as JSON for the notification process.
    pub fn json(&self) -> serde_json::Value {
        let time = crate::time::time_text;
        let tenants: Vec<_> = self
            .tenants
            .iter()
            .map(|(id, t)| {
                serde_json::json!({
                    "tenant_id": id.to_string(),
                    "whole_tenant": !t.whole_tenant.is_empty(),
                    "whole_tenant_because": t.whole_tenant,
                    "subjects": t.subjects.iter().map(Uuid::to_string).collect::<Vec<_>>(),
                    "sessions": t.sessions.iter().map(Uuid::to_string).collect::<Vec<_>>(),
                    "actions": t.actions,
                    "calls": t.calls,
                    "refused": t.refused,
                    "first": time(t.first_micros),
                    "last": time(t.last_micros),
                })
            })
            .collect();
        serde_json::json!({
            "actor": self.actor,
            "from": time(self.from_micros),
            "to": time(self.to_micros),
            "entries": self.entries,
            "tenants": tenants,
            "platform_calls": self.platform_calls,
        })
    }

    /// The scope as a table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let time = crate::time::time_text;
        let mut out = String::new();
        let _ =
            writeln!(out, "breach scope of {} from {} to {}", self.actor, time(self.from_micros), time(self.to_micros));
        let _ = writeln!(out, "  {} audit entries; {} tenants", self.entries, self.tenants.len());
        for (id, t) in &self.tenants {
            let _ = writeln!(
                out,
                "\ntenant {id}: {} calls, {} refused, {} to {}",
                t.calls,
                t.refused,
                time(t.first_micros),
                time(t.last_micros)
            );
            for why in &t.whole_tenant {
                let _ = writeln!(out, "  WHOLE TENANT: {why}");
            }
            let _ = writeln!(out, "  KIND     ID");
            for s in &t.subjects {
                let _ = writeln!(out, "  {:<8} {s}", "subject");
            }
            for s in &t.sessions {
                let _ = writeln!(out, "  {:<8} {s}", "session");
            }
            for (a, n) in &t.actions {
                let _ = writeln!(out, "  {:<8} {a} ×{n}", "action");
            }
        }
        for (a, n) in &self.platform_calls {
            let _ = writeln!(out, "\nplatform call {a} ×{n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(at: i64, actor: &str, action: &str, tenant: Option<Uuid>, target: &str, outcome: &str) -> TrailEntry {
        TrailEntry {
            at_micros: at,
            stream: "n".into(),
            seq: 0,
            action: action.into(),
            actor: actor.into(),
            tenant,
            target: target.into(),
            outcome: outcome.into(),
            detail: String::new(),
            count: 1,
        }
    }

    #[test]
    fn the_scope_lists_exactly_what_the_actor_reached_in_the_window() {
        let (t1, t2) = (Some(Uuid::from_u128(1)), Some(Uuid::from_u128(2)));
        let (s1, s2, s3) = (Uuid::from_u128(11), Uuid::from_u128(12), Uuid::from_u128(13));
        let (x1, x2) = (Uuid::from_u128(21), Uuid::from_u128(22));
        let me = "staff:00000000-0000-0000-0000-0000000000aa";
        let entries = [
            e(5, me, "staff.break_glass_access", t1, &format!("rpc:ListMessages session:{x1} subject:{s1}"), "ok"),
            // Outside the window, another actor, refused: not in scope.
            e(50, me, "staff.break_glass_access", t1, &format!("rpc:ListMessages subject:{s3}"), "ok"),
            e(
                6,
                "staff:00000000-0000-0000-0000-0000000000bb",
                "staff.break_glass_access",
                t1,
                &format!("subject:{s3}"),
                "ok",
            ),
            e(7, me, "staff.break_glass_access", t1, &format!("rpc:GetSubject subject:{s3}"), "refused"),
            e(8, me, "privacy.export", t2, &format!("subject:{s2}"), "ok"),
            e(9, me, "staff.break_glass_access", t2, &format!("rpc:WatchSession session:{x2}"), "ok"),
            e(9, me, "staff.access", None, "rpc:ListStaff", "ok"),
        ];
        let s = scope_of(&entries, me, 0, 10);
        assert_eq!(s.entries, 5);
        assert_eq!(s.tenants.len(), 2);
        let a = &s.tenants[&t1.unwrap()];
        assert_eq!(a.subjects, BTreeSet::from([s1]));
        assert_eq!(a.sessions, BTreeSet::from([x1]));
        assert_eq!((a.calls, a.refused), (1, 1));
        assert!(a.whole_tenant.is_empty());
        let b = &s.tenants[&t2.unwrap()];
        assert_eq!(b.subjects, BTreeSet::from([s2]));
        assert_eq!(b.sessions, BTreeSet::from([x2]));
        assert_eq!(s.platform_calls["staff.access ListStaff"], 1);
        let json = s.json();
        assert_eq!(json["tenants"][0]["subjects"][0], s1.to_string());
        assert!(s.table().contains(&format!("subject  {s1}")));
    }

    #[test]
    fn a_tenant_key_and_tenant_wide_calls_put_the_whole_tenant_in_scope() {
        let id = Uuid::from_u128(1);
        let t = Some(id);
        let key = "tenant-key:00000000-0000-0000-0000-0000000000cc";
        let s = scope_of(&[TrailEntry { count: 40, ..e(1, key, "auth.api_key", t, "", "ok") }], key, 0, 10);
        assert_eq!(s.tenants[&id].calls, 40);
        assert!(!s.tenants[&id].whole_tenant.is_empty());
        let staff = "staff:00000000-0000-0000-0000-0000000000aa";
        let s = scope_of(&[e(1, staff, "staff.break_glass_access", t, "rpc:ListEndUsers", "ok")], staff, 0, 10);
        assert!(s.tenants[&id].whole_tenant.iter().any(|w| w.contains("ListEndUsers")));
        assert!(valid_actor(staff) && valid_actor(key) && valid_actor("admin"));
        assert!(!valid_actor("staff:bob") && !valid_actor("caller"));
    }
}
