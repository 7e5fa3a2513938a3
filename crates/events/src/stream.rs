//! Stream names. An entity's stream is `<kind>-<tenant>-<id>` (opaque ids
//! only, never personal data); streams named for a piece of personal text
//! (a username) carry a keyed hash of it instead. docs/events.md lists them.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The kinds of entity that own a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tenant,
    Pype,
    Session,
    Subject,
    /// The platform's staff directory: one stream, [`STAFF_DIRECTORY`],
    /// whatever the tenant and id (both nil).
    Staff,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Tenant, Kind::Pype, Kind::Session, Kind::Subject, Kind::Staff];

    /// The kind as it starts a stream name: `session`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant",
            Kind::Pype => "pype",
            Kind::Session => "session",
            Kind::Subject => "subject",
            Kind::Staff => "staff",
        }
    }

    /// The prefix every stream of this kind starts with (for `$all`
    /// filters): `session-`.
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant-",
            Kind::Pype => "pype-",
            Kind::Session => "session-",
            Kind::Subject => "subject-",
            Kind::Staff => "staff-",
        }
    }

    /// The prefix every stream of this kind of one tenant starts with (for
    /// `$all` filters): `session-<tenant>-`.
    pub fn tenant_prefix(self, tenant: Uuid) -> String {
        format!("{}{tenant}-", self.prefix())
    }

    /// Whether `stream` is of this kind (by its prefix).
    pub fn owns(self, stream: &str) -> bool {
        stream.starts_with(self.prefix())
    }
}

/// The stream of one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamName {
    pub kind: Kind,
    pub tenant: Uuid,
    pub id: Uuid,
}

impl StreamName {
    pub const fn new(kind: Kind, tenant: Uuid, id: Uuid) -> Self {
        Self { kind, tenant, id }
    }

    /// Parses any entity stream's name; `None` for other streams.
    pub fn parse(stream: &str) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.owns(stream)).and_then(|k| Self::parse_as(stream, k))
    }

    /// Parses `stream` as a stream of `kind`: `None` when it is not one.
    pub fn parse_as(stream: &str, kind: Kind) -> Option<Self> {
        if kind == Kind::Staff {
            return (stream == STAFF_DIRECTORY).then_some(Self { kind, tenant: Uuid::nil(), id: Uuid::nil() });
        }
        let rest = stream.strip_prefix(kind.prefix())?;
        if rest.len() != 73 || rest.as_bytes()[36] != b'-' {
            return None;
        }
        Some(Self { kind, tenant: Uuid::parse_str(&rest[..36]).ok()?, id: Uuid::parse_str(&rest[37..]).ok()? })
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == Kind::Staff {
            return f.write_str(STAFF_DIRECTORY);
        }
        write!(f, "{}{}-{}", self.kind.prefix(), self.tenant, self.id)
    }
}

/// The stream of an entity, as text.
pub fn stream_name(kind: Kind, tenant: Uuid, id: Uuid) -> String {
    StreamName::new(kind, tenant, id).to_string()
}

/// The reservation stream of a username: `username-<tenant>-<hex of
/// SHA-256(label ‖ tenant secret ‖ tenant ‖ username)>`; without the tenant's
/// secret the name says nothing about the username.
pub fn username_stream(secret: &[u8; 32], tenant: Uuid, username: &str) -> String {
    keyed_stream("username", b"pypes/username/v1", secret, tenant, username)
}

/// The stream of a username's failed logins: `loginfail-<tenant>-<hex of
/// SHA-256(label ‖ tenant secret ‖ tenant ‖ username)>`.
pub fn lockout_stream(secret: &[u8; 32], tenant: Uuid, username: &str) -> String {
    keyed_stream("loginfail", b"pypes/lockout/v2", secret, tenant, username)
}

/// The stream of the end-user auth session a token stands for:
/// `authsession-<tenant>-<hex of SHA-256(label ‖ token)>`.
pub fn auth_session_stream(tenant: Uuid, token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"pypes/authsession/v1");
    h.update(token.as_bytes());
    format!("authsession-{tenant}-{}", hex(&h.finalize()))
}

/// The platform's staff directory (one stream).
pub const STAFF_DIRECTORY: &str = "staff-directory";

/// The stream where a process that follows the log keeps its checkpoint:
/// `process-<name>`.
pub fn process_stream(name: &str) -> String {
    format!("process-{name}")
}

/// Where a webhook endpoint's delivery checkpoints are kept:
/// `process-webhook-<id>`.
pub fn webhook_process_stream(webhook: Uuid) -> String {
    process_stream(&format!("webhook-{webhook}"))
}

/// Where a webhook endpoint's redelivery is recorded:
/// `process-webhook-redelivery-<id>`.
pub fn webhook_redelivery_stream(webhook: Uuid) -> String {
    process_stream(&format!("webhook-redelivery-{webhook}"))
}

/// The privileged-access alerts raised over the audit trail (one stream).
pub const ALERTS: &str = "alerts";

/// Where the access-alert rules keep their checkpoint.
pub fn alerts_process_stream() -> String {
    process_stream("alerts")
}

/// Where an alert webhook (named in the config) keeps the version of the
/// last alert it delivered: `process-alert-hook-<name>`.
pub fn alert_hook_stream(name: &str) -> String {
    process_stream(&format!("alert-hook-{name}"))
}

/// Where the old region of a moved tenant keeps the move's record:
/// `moved-<tenant>` (docs/residency.md).
pub fn moved_stream(tenant: Uuid) -> String {
    format!("{MOVED_PREFIX}{tenant}")
}

/// The prefix of every move record's stream.
pub const MOVED_PREFIX: &str = "moved-";

/// The tenant whose move record `stream` is (`None`: not a move record).
pub fn moved_tenant(stream: &str) -> Option<Uuid> {
    Uuid::try_parse(stream.strip_prefix(MOVED_PREFIX)?).ok()
}

/// Where an entity's snapshot is kept: `snapshot-<entity stream>`.
pub fn snapshot_stream(entity_stream: &str) -> String {
    format!("snapshot-{entity_stream}")
}

/// Every node's audit trail is a stream `audit-<node>`.
pub const AUDIT_PREFIX: &str = "audit-";

/// The audit trail of `node`.
pub fn audit_stream(node: &str) -> String {
    format!("{AUDIT_PREFIX}{node}")
}

/// The node an audit trail's stream belongs to (`None`: not an audit trail).
pub fn audit_node(stream: &str) -> Option<&str> {
    stream.strip_prefix(AUDIT_PREFIX)
}

/// A stream named for a piece of personal text without revealing it:
/// `<kind>-<tenant>-<hex of SHA-256(label ‖ tenant secret ‖ tenant ‖ text)>`.
fn keyed_stream(kind: &str, label: &[u8], secret: &[u8; 32], tenant: Uuid, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(label);
    h.update(secret);
    h.update(tenant.as_bytes());
    h.update(text.as_bytes());
    format!("{kind}-{tenant}-{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entity_stream_name_parses_back() {
        let (t, i) = (Uuid::now_v7(), Uuid::now_v7());
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Staff) {
            let name = StreamName::new(kind, t, i);
            let text = name.to_string();
            assert!(text.starts_with(kind.prefix()));
            assert_eq!(StreamName::parse(&text), Some(name));
            assert_eq!(StreamName::parse_as(&text, kind), Some(name));
            assert!(text.starts_with(&kind.tenant_prefix(t)));
        }
        assert_eq!(StreamName::parse_as(&stream_name(Kind::Session, t, i), Kind::Subject), None);
        assert_eq!(StreamName::parse(&username_stream(&[7; 32], t, "ann")), None);
        assert_eq!(StreamName::parse("session-not-a-uuid"), None);
        let staff = StreamName::new(Kind::Staff, Uuid::nil(), Uuid::nil());
        assert_eq!(staff.to_string(), STAFF_DIRECTORY);
        assert_eq!(StreamName::parse(STAFF_DIRECTORY), Some(staff));
        assert_eq!(StreamName::parse(&format!("session-{t}-{i}x")), None);
    }

    #[test]
    fn keyed_names_do_not_show_the_text() {
        let t = Uuid::now_v7();
        let a = username_stream(&[1; 32], t, "ann");
        assert!(!a.contains("ann") && a.starts_with(&format!("username-{t}-")));
        assert_ne!(a, username_stream(&[2; 32], t, "ann"), "the name depends on the tenant's secret");
        assert_ne!(lockout_stream(&[1; 32], t, "ann"), a);
        assert_eq!(audit_node(&audit_stream("n1")), Some("n1"));
    }
}
