//! Platform staff: the directory (one stream, `staff-directory`, decided
//! by `domain::staff`), staff API keys, and the access policy: which role
//! may call which RPC, and which calls read a tenant's content and so need
//! a break-glass grant. The table here is the one in docs/security.md; a
//! test holds the two together.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::staff::{Role, StaffCommand, StaffDirectory, StaffEvent};
use domain::{Aggregate, Ctx};
use eventlog::{Clock, Direction, EventLog, ExpectedVersion, LogError, NewEvent, ReadFrom, RecordedEvent};
use proto::Message;
use proto::events as ev;
use uuid::Uuid;

use crate::error::ApiError;

pub const STREAM: &str = events::stream::STAFF_DIRECTORY;
/// How old this node's copy of the directory may be before a check reads
/// what other nodes appended (a disabled key stops within this time).
const REFRESH: Duration = Duration::from_secs(5);

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
    // Content and personal data.
    ("ListMessages", [G, G, G]),
    ("WatchSession", [G, G, G]),
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
];

pub fn access(role: Role, method: &str) -> Access {
    let i = match role {
        Role::Support => 0,
        Role::PrivacyOfficer => 1,
        Role::Admin => 2,
    };
    POLICY.iter().find(|(m, _)| *m == method).map_or(Access::Denied, |(_, a)| a[i])
}

pub fn role_of(name: &str) -> Option<Role> {
    match name {
        "support" => Some(Role::Support),
        "privacy_officer" => Some(Role::PrivacyOfficer),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

fn id_bytes(id: Uuid) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(id.as_bytes())
}

fn encode(e: &StaffEvent) -> NewEvent {
    let (kind, payload) = match e {
        StaffEvent::Added { staff, role, key_sha256, at_micros } => (
            events::types::STAFF_ADDED,
            ev::StaffAdded {
                staff_id: id_bytes(*staff),
                role: role.name().into(),
                key_sha256: bytes::Bytes::copy_from_slice(key_sha256),
                at_micros: *at_micros,
            }
            .encode_to_vec(),
        ),
        StaffEvent::KeyRotated { staff, key_sha256, at_micros } => (
            events::types::STAFF_KEY_ROTATED,
            ev::StaffKeyRotated {
                staff_id: id_bytes(*staff),
                key_sha256: bytes::Bytes::copy_from_slice(key_sha256),
                at_micros: *at_micros,
            }
            .encode_to_vec(),
        ),
        StaffEvent::Disabled { staff, at_micros } => (
            events::types::STAFF_DISABLED,
            ev::StaffDisabled { staff_id: id_bytes(*staff), at_micros: *at_micros }.encode_to_vec(),
        ),
        StaffEvent::BreakGlassOpened { grant, staff, tenant, reason, at_micros, expires_micros } => (
            events::types::BREAK_GLASS_OPENED,
            ev::BreakGlassOpened {
                grant_id: id_bytes(*grant),
                staff_id: id_bytes(*staff),
                tenant_id: id_bytes(*tenant),
                reason: reason.clone(),
                at_micros: *at_micros,
                expires_micros: *expires_micros,
            }
            .encode_to_vec(),
        ),
        StaffEvent::BreakGlassClosed { grant, by, at_micros } => (
            events::types::BREAK_GLASS_CLOSED,
            ev::BreakGlassClosed { grant_id: id_bytes(*grant), by_staff_id: id_bytes(*by), at_micros: *at_micros }
                .encode_to_vec(),
        ),
    };
    NewEvent::new(kind, payload)
}

fn decode(r: &RecordedEvent) -> Result<StaffEvent, String> {
    let bad = |what: &str| format!("{STREAM} event {} ({}): {what}", r.version, r.event_type());
    let id = |b: &[u8], field: &str| Uuid::from_slice(b).map_err(|_| bad(&format!("{field} is not a uuid")));
    let key = |b: &[u8]| <[u8; 32]>::try_from(b).map_err(|_| bad("key_sha256 is not 32 bytes"));
    let p = r.event.payload.clone();
    let dec = |e: prost::DecodeError| bad(&e.to_string());
    Ok(match r.event_type() {
        events::types::STAFF_ADDED => {
            let m = ev::StaffAdded::decode(p).map_err(dec)?;
            StaffEvent::Added {
                staff: id(&m.staff_id, "staff_id")?,
                role: role_of(&m.role).ok_or_else(|| bad(&format!("unknown role {:?}", m.role)))?,
                key_sha256: key(&m.key_sha256)?,
                at_micros: m.at_micros,
            }
        }
        events::types::STAFF_KEY_ROTATED => {
            let m = ev::StaffKeyRotated::decode(p).map_err(dec)?;
            StaffEvent::KeyRotated {
                staff: id(&m.staff_id, "staff_id")?,
                key_sha256: key(&m.key_sha256)?,
                at_micros: m.at_micros,
            }
        }
        events::types::STAFF_DISABLED => {
            let m = ev::StaffDisabled::decode(p).map_err(dec)?;
            StaffEvent::Disabled { staff: id(&m.staff_id, "staff_id")?, at_micros: m.at_micros }
        }
        events::types::BREAK_GLASS_OPENED => {
            let m = ev::BreakGlassOpened::decode(p).map_err(dec)?;
            StaffEvent::BreakGlassOpened {
                grant: id(&m.grant_id, "grant_id")?,
                staff: id(&m.staff_id, "staff_id")?,
                tenant: id(&m.tenant_id, "tenant_id")?,
                reason: m.reason,
                at_micros: m.at_micros,
                expires_micros: m.expires_micros,
            }
        }
        events::types::BREAK_GLASS_CLOSED => {
            let m = ev::BreakGlassClosed::decode(p).map_err(dec)?;
            StaffEvent::BreakGlassClosed {
                grant: id(&m.grant_id, "grant_id")?,
                by: id(&m.by_staff_id, "by_staff_id")?,
                at_micros: m.at_micros,
            }
        }
        other => return Err(bad(&format!("unknown event type {other:?}"))),
    })
}

struct Loaded {
    state: StaffDirectory,
    /// Version of the last event folded in.
    version: Option<u64>,
    read_at: Instant,
}

/// This node's copy of the staff directory, and the one writer of it here.
pub struct Staff {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    loaded: tokio::sync::Mutex<Loaded>,
}

impl Staff {
    pub async fn open(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>) -> Result<Self, ApiError> {
        let staff = Self {
            log,
            clock,
            loaded: tokio::sync::Mutex::new(Loaded {
                state: StaffDirectory::default(),
                version: None,
                read_at: Instant::now(),
            }),
        };
        staff.catch_up(&mut *staff.loaded.lock().await).await?;
        Ok(staff)
    }

    async fn catch_up(&self, l: &mut Loaded) -> Result<(), ApiError> {
        loop {
            let from = l.version.map_or(0, |v| v + 1);
            let page = match self.log.read_stream(STREAM, ReadFrom::Version(from), Direction::Forward, 1024).await {
                Ok(p) => p,
                Err(LogError::StreamNotFound { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for r in &page {
                l.state.evolve(&decode(r).map_err(ApiError::Internal)?);
                l.version = Some(r.version);
            }
            if page.len() < 1024 {
                break;
            }
        }
        l.read_at = Instant::now();
        Ok(())
    }

    /// `f` of the directory, no older than [`REFRESH`] (without copying it:
    /// every staff call looks its member up here).
    pub async fn with<R>(&self, f: impl FnOnce(&StaffDirectory) -> R) -> Result<R, ApiError> {
        let mut l = self.loaded.lock().await;
        if l.read_at.elapsed() >= REFRESH {
            self.catch_up(&mut l).await?;
        }
        Ok(f(&l.state))
    }

    /// The whole directory (listing).
    pub async fn directory(&self) -> Result<StaffDirectory, ApiError> {
        self.with(StaffDirectory::clone).await
    }

    pub fn now_micros(&self) -> i64 {
        self.clock.now_micros()
    }

    /// Decides and appends `command` (one writer per node; across nodes
    /// the expected version decides, and a loser catches up and retries).
    pub async fn execute(&self, command: StaffCommand) -> Result<(Vec<StaffEvent>, StaffDirectory), ApiError> {
        let mut l = self.loaded.lock().await;
        for _ in 0..5 {
            let events = l
                .state
                .decide(&command, &Ctx { now_micros: self.clock.now_micros() })
                .map_err(|r| ApiError::Actor(actors::ActorError::Rejected(r)))?;
            if events.is_empty() {
                return Ok((events, l.state.clone()));
            }
            let expected = l.version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match self.log.append(STREAM, expected, events.iter().map(encode).collect()).await {
                Ok(done) => {
                    for e in &events {
                        l.state.evolve(e);
                    }
                    l.version = Some(done.next_expected_version);
                    return Ok((events, l.state.clone()));
                }
                Err(LogError::WrongExpectedVersion { .. }) => self.catch_up(&mut l).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Actor(actors::ActorError::Contended { stream: STREAM.into(), attempts: 5 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
