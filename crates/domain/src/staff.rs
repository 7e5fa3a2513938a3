//! Staff: the platform's operators, each with one role, and the
//! break-glass grants that let one of them read one tenant's content for a
//! stated reason until an expiry. One directory for the whole platform (one
//! stream); staff are known by opaque ids only (no names or emails: the
//! operator keeps who is who), their API keys by the SHA-256 of the secret.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::common::{Aggregate, Ctx, FieldClass, Rejection, check_text};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Helps tenants: sees metadata, not content (without a grant).
    Support,
    /// Runs privacy requests (erasure and what follows from it).
    PrivacyOfficer,
    /// Manages tenants and staff.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Support => "support",
            Role::PrivacyOfficer => "privacy_officer",
            Role::Admin => "admin",
        }
    }
}

/// What a staff role may do with one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Reads a tenant's content: only under a live break-glass grant.
    BreakGlass,
    Denied,
}

use Access::{Allowed as A, BreakGlass as G, Denied as D};

/// RPC → (support, privacy officer, admin). RPCs not listed are denied to
/// every staff role (tenants' own writes, their keys, end users' logins).
pub const POLICY: &[(&str, [Access; 3])] = &[
    // Tenants.
    ("CreateTenant", [D, D, A]),
    ("CancelTenant", [D, D, A]),
    ("GetOffboarding", [A, A, A]),
    ("GetTenant", [A, A, A]),
    // Metadata: ids, states, counts, times.
    ("GetPype", [A, A, A]),
    ("GetSession", [A, A, A]),
    ("ListSessions", [A, A, A]),
    ("GetSessionView", [A, A, A]),
    ("GetPypeOverview", [A, A, A]),
    ("QueryAnalytics", [A, A, A]),
    // Webhook endpoints and their delivery status (no secrets), for
    // support; the tenant manages them itself.
    ("GetWebhook", [A, A, A]),
    ("ListWebhooks", [A, A, A]),
    // Content and personal data.
    ("ListMessages", [G, G, G]),
    ("WatchSession", [G, G, G]),
    ("SubscribeTenantEvents", [G, G, G]),
    ("GetSubject", [G, G, G]),
    ("ListEndUsers", [G, G, G]),
    ("DownloadMedia", [G, G, G]),
    // Privacy requests.
    ("RequestErasure", [D, A, D]),
    ("GetErasure", [D, A, D]),
    ("ExportSubject", [D, A, D]),
    ("RectifySubject", [D, A, D]),
    ("RestrictProcessing", [D, A, D]),
    ("LiftRestriction", [D, A, D]),
    ("WithdrawConsent", [D, A, D]),
    // Staff management.
    ("AddStaff", [D, D, A]),
    ("RotateStaffKey", [D, D, A]),
    ("DisableStaff", [D, D, A]),
    ("ListStaff", [D, D, A]),
    ("OpenBreakGlass", [A, A, A]),
    ("CloseBreakGlass", [A, A, A]),
    // Breach scope from the audit trail.
    ("ScopeAccess", [D, A, A]),
    // The console's pages (docs/console.md): lists from the catalog view,
    // the verified audit trail, the node's own metrics.
    ("ListTenants", [A, A, A]),
    ("ListPypes", [A, A, A]),
    ("ListPrivacyRequests", [D, A, A]),
    ("ReadAuditTrail", [D, A, A]),
    ("ReadNodeMetrics", [D, D, A]),
];

pub fn access(role: Role, method: &str) -> Access {
    let i = match role {
        Role::Support => 0,
        Role::PrivacyOfficer => 1,
        Role::Admin => 2,
    };
    POLICY.iter().find(|(m, _)| *m == method).map_or(Access::Denied, |(_, a)| a[i])
}

/// A role by its name (`support`, `privacy_officer`, `admin`).
pub fn role_of(name: &str) -> Option<Role> {
    match name {
        "support" => Some(Role::Support),
        "privacy_officer" => Some(Role::PrivacyOfficer),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// Shortest and longest break-glass grant.
pub const MIN_GRANT_SECS: i64 = 60;
pub const MAX_GRANT_SECS: i64 = 4 * 3600;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaffCommand {
    Add {
        staff: Uuid,
        role: Role,
        key_sha256: [u8; 32],
    },
    RotateKey {
        staff: Uuid,
        key_sha256: [u8; 32],
    },
    Disable {
        staff: Uuid,
    },
    /// A staff member opens a grant for themselves.
    OpenBreakGlass {
        grant: Uuid,
        staff: Uuid,
        tenant: Uuid,
        reason: String,
        duration_secs: i64,
    },
    /// Closes a grant early (its holder, or an admin).
    CloseBreakGlass {
        grant: Uuid,
        by: Uuid,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaffEvent {
    Added { staff: Uuid, role: Role, key_sha256: [u8; 32], at_micros: i64 },
    KeyRotated { staff: Uuid, key_sha256: [u8; 32], at_micros: i64 },
    Disabled { staff: Uuid, at_micros: i64 },
    BreakGlassOpened { grant: Uuid, staff: Uuid, tenant: Uuid, reason: String, at_micros: i64, expires_micros: i64 },
    BreakGlassClosed { grant: Uuid, by: Uuid, at_micros: i64 },
}

/// The reason is an operational note (a ticket reference): Clear, and the
/// API says it must not hold personal data.
pub const FIELDS: &[(&str, &str, FieldClass)] = &[
    ("Added", "key_sha256", FieldClass::Clear),
    ("KeyRotated", "key_sha256", FieldClass::Clear),
    ("BreakGlassOpened", "reason", FieldClass::Clear),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    pub key_sha256: [u8; 32],
    pub disabled: bool,
    pub added_micros: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub staff: Uuid,
    pub tenant: Uuid,
    pub reason: String,
    pub opened_micros: i64,
    pub expires_micros: i64,
    pub closed_micros: Option<i64>,
}

impl Grant {
    pub fn live(&self, now: i64) -> bool {
        self.closed_micros.is_none() && now < self.expires_micros
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaffDirectory {
    pub members: BTreeMap<Uuid, Member>,
    pub grants: BTreeMap<Uuid, Grant>,
}

impl StaffDirectory {
    fn member(&self, staff: Uuid) -> Result<&Member, Rejection> {
        match self.members.get(&staff) {
            Some(m) if !m.disabled => Ok(m),
            Some(_) => Err(Rejection::precondition("the staff member is disabled")),
            None => Err(Rejection::NotFound { what: "staff member" }),
        }
    }

    /// A live grant of `staff` for `tenant`, if any.
    pub fn live_grant(&self, staff: Uuid, tenant: Uuid, now: i64) -> Option<(Uuid, &Grant)> {
        self.grants.iter().find(|(_, g)| g.staff == staff && g.tenant == tenant && g.live(now)).map(|(id, g)| (*id, g))
    }
}

impl Aggregate for StaffDirectory {
    type Command = StaffCommand;
    type Event = StaffEvent;

    fn decide(&self, command: &StaffCommand, ctx: &Ctx) -> Result<Vec<StaffEvent>, Rejection> {
        let now = ctx.now_micros;
        match command {
            StaffCommand::Add { staff, role, key_sha256 } => {
                if self.members.contains_key(staff) {
                    return Err(Rejection::AlreadyExists { what: "staff member" });
                }
                Ok(vec![StaffEvent::Added { staff: *staff, role: *role, key_sha256: *key_sha256, at_micros: now }])
            }
            StaffCommand::RotateKey { staff, key_sha256 } => {
                self.member(*staff)?;
                Ok(vec![StaffEvent::KeyRotated { staff: *staff, key_sha256: *key_sha256, at_micros: now }])
            }
            StaffCommand::Disable { staff } => match self.members.get(staff) {
                None => Err(Rejection::NotFound { what: "staff member" }),
                Some(m) if m.disabled => Ok(vec![]),
                Some(_) => Ok(vec![StaffEvent::Disabled { staff: *staff, at_micros: now }]),
            },
            StaffCommand::OpenBreakGlass { grant, staff, tenant, reason, duration_secs } => {
                self.member(*staff)?;
                if self.grants.contains_key(grant) {
                    return Err(Rejection::AlreadyExists { what: "break-glass grant" });
                }
                check_text("reason", reason, 300, true)?;
                if reason.trim().chars().count() < 10 {
                    return Err(Rejection::invalid("reason", "at least 10 characters: say why (e.g. a ticket)"));
                }
                if !(MIN_GRANT_SECS..=MAX_GRANT_SECS).contains(duration_secs) {
                    return Err(Rejection::invalid(
                        "duration_secs",
                        format!("{duration_secs}; {MIN_GRANT_SECS} to {MAX_GRANT_SECS}"),
                    ));
                }
                Ok(vec![StaffEvent::BreakGlassOpened {
                    grant: *grant,
                    staff: *staff,
                    tenant: *tenant,
                    reason: reason.trim().to_string(),
                    at_micros: now,
                    expires_micros: now + duration_secs * 1_000_000,
                }])
            }
            StaffCommand::CloseBreakGlass { grant, by } => {
                let g = self.grants.get(grant).ok_or(Rejection::NotFound { what: "break-glass grant" })?;
                let closer = self.member(*by)?;
                if g.staff != *by && closer.role != Role::Admin {
                    return Err(Rejection::precondition("only the grant's holder or an admin can close it"));
                }
                Ok(if g.live(now) {
                    vec![StaffEvent::BreakGlassClosed { grant: *grant, by: *by, at_micros: now }]
                } else {
                    vec![]
                })
            }
        }
    }

    fn evolve(&mut self, event: &StaffEvent) {
        match event {
            StaffEvent::Added { staff, role, key_sha256, at_micros } => {
                self.members.insert(
                    *staff,
                    Member { role: *role, key_sha256: *key_sha256, disabled: false, added_micros: *at_micros },
                );
            }
            StaffEvent::KeyRotated { staff, key_sha256, .. } => {
                if let Some(m) = self.members.get_mut(staff) {
                    m.key_sha256 = *key_sha256;
                }
            }
            StaffEvent::Disabled { staff, at_micros } => {
                if let Some(m) = self.members.get_mut(staff) {
                    m.disabled = true;
                }
                // A disabled member's grants end with them.
                for g in self.grants.values_mut().filter(|g| g.staff == *staff && g.closed_micros.is_none()) {
                    g.closed_micros = Some(*at_micros);
                }
            }
            StaffEvent::BreakGlassOpened { grant, staff, tenant, reason, at_micros, expires_micros } => {
                self.grants.insert(
                    *grant,
                    Grant {
                        staff: *staff,
                        tenant: *tenant,
                        reason: reason.clone(),
                        opened_micros: *at_micros,
                        expires_micros: *expires_micros,
                        closed_micros: None,
                    },
                );
            }
            StaffEvent::BreakGlassClosed { grant, at_micros, .. } => {
                if let Some(g) = self.grants.get_mut(grant) {
                    g.closed_micros = Some(*at_micros);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    /// docs/security.md holds the same table: one row per RPC.
    #[test]
    fn the_documented_table_is_the_enforced_one() {
        let doc = include_str!("../../../docs/security.md");
        let cell = |a: Access| match a {
            Access::Allowed => "yes",
            Access::BreakGlass => "break-glass",
            Access::Denied => "no",
        };
        for (method, row) in POLICY {
            let line = format!("| `{method}` | {} | {} | {} |", cell(row[0]), cell(row[1]), cell(row[2]));
            assert!(doc.contains(&line), "docs/security.md lacks the row {line}");
        }
    }

    #[test]
    fn unlisted_rpcs_are_denied_to_every_role() {
        for role in [Role::Support, Role::PrivacyOfficer, Role::Admin] {
            for m in ["PostMessage", "CreateApiKey", "Login", "SetPassword", "DeactivateSubject", "Nope"] {
                assert_eq!(access(role, m), Access::Denied, "{role:?} {m}");
            }
        }
    }

    use super::*;

    fn run(d: &mut StaffDirectory, c: StaffCommand, now: i64) -> Result<(), Rejection> {
        for e in d.decide(&c, &Ctx { now_micros: now })? {
            d.evolve(&e);
        }
        Ok(())
    }

    #[test]
    fn grants_need_a_reason_a_bounded_duration_and_end() {
        let mut d = StaffDirectory::default();
        let (s, t, g) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        run(&mut d, StaffCommand::Add { staff: s, role: Role::Support, key_sha256: [1; 32] }, 0).unwrap();
        let open = |reason: &str, secs| StaffCommand::OpenBreakGlass {
            grant: g,
            staff: s,
            tenant: t,
            reason: reason.into(),
            duration_secs: secs,
        };
        assert!(matches!(run(&mut d, open("", 600), 0), Err(Rejection::InvalidArgument { field: "reason", .. })));
        assert!(matches!(
            run(&mut d, open("because", 600), 0),
            Err(Rejection::InvalidArgument { field: "reason", .. })
        ));
        assert!(matches!(
            run(&mut d, open("ticket SUP-1234", 5 * 3600), 0),
            Err(Rejection::InvalidArgument { field: "duration_secs", .. })
        ));
        run(&mut d, open("ticket SUP-1234", 600), 0).unwrap();
        assert!(d.live_grant(s, t, 599_999_999).is_some());
        assert!(d.live_grant(s, t, 600_000_000).is_none(), "expired");
        assert!(d.live_grant(s, Uuid::from_u128(9), 1).is_none(), "other tenant");
        // Disabling the member ends the grant.
        run(&mut d, StaffCommand::Disable { staff: s }, 10).unwrap();
        assert!(d.live_grant(s, t, 11).is_none());
        assert!(run(&mut d, StaffCommand::RotateKey { staff: s, key_sha256: [2; 32] }, 12).is_err());
    }

    #[test]
    fn only_the_holder_or_an_admin_closes_a_grant() {
        let mut d = StaffDirectory::default();
        let (a, b, admin, t, g) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4), Uuid::from_u128(5));
        for (s, role) in [(a, Role::Support), (b, Role::Support), (admin, Role::Admin)] {
            run(&mut d, StaffCommand::Add { staff: s, role, key_sha256: [0; 32] }, 0).unwrap();
        }
        let open = StaffCommand::OpenBreakGlass {
            grant: g,
            staff: a,
            tenant: t,
            reason: "ticket SUP-77 outage".into(),
            duration_secs: 600,
        };
        run(&mut d, open, 0).unwrap();
        assert!(run(&mut d, StaffCommand::CloseBreakGlass { grant: g, by: b }, 1).is_err());
        run(&mut d, StaffCommand::CloseBreakGlass { grant: g, by: admin }, 1).unwrap();
        assert!(d.live_grant(a, t, 2).is_none());
    }
}
