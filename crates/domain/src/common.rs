//! What every entity shares: the context, the refusal type, field classes,
//! Session timers and input checks.

/// What a decision may know about the world: the time. (Ids of new things
/// come inside the command.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Microseconds since the Unix epoch, UTC.
    pub now_micros: i64,
}

/// Why a command was refused. Maps one to one onto gRPC codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Bad input: the field and what is wrong with it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The entity does not exist (or belongs to another tenant).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },
    /// The entity is in a state where the command cannot apply.
    #[error("{reason}")]
    FailedPrecondition { reason: String },
}

/// How much of a caller's value an error message may quote.
pub const QUOTE_CHARS: usize = 40;

/// A caller's value as an error message quotes it: in quotes, cut to
/// [`QUOTE_CHARS`] characters with its size named when longer, so that no
/// input makes an error (and the gRPC trailer carrying it) large.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

impl Rejection {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }

    pub fn precondition(reason: impl Into<String>) -> Self {
        Self::FailedPrecondition { reason: reason.into() }
    }
}

/// The group of a subject's personal data a field belongs to: each group
/// has its own key, so one can be erased alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PiiGroup {
    Profile,
    Device,
    Geo,
}

/// How an event field may be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldClass {
    /// Ids, enums, counts, coarse times: stored as they are.
    Clear,
    /// Personal data of a subject: sealed under the subject's key of the group.
    Pii(PiiGroup),
    /// Conversation content: sealed under the Session's content key.
    Content,
    /// A secret of the tenant (a webhook's signing secret): sealed under
    /// the tenant's own key, gone with the tenant.
    TenantSecret,
}

/// One entity type: its decisions and how its events fold into state.
pub trait Aggregate: Default + Clone + std::fmt::Debug + PartialEq {
    type Command;
    type Event: Clone + std::fmt::Debug + PartialEq;

    fn decide(&self, command: &Self::Command, ctx: &Ctx) -> Result<Vec<Self::Event>, Rejection>;
    fn evolve(&mut self, event: &Self::Event);

    /// The state after `events`, from nothing.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for e in events {
            state.evolve(e);
        }
        state
    }
}

/// Session timers: inactive after `inactive_after_secs` without activity,
/// closed `close_after_secs` after becoming inactive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timers {
    pub inactive_after_secs: u32,
    pub close_after_secs: u32,
}

impl Timers {
    /// Shortest accepted timer: shorter ones would close Sessions between
    /// two keystrokes.
    pub const MIN_SECS: u32 = 5;
    /// Longest accepted timer: 30 days.
    pub const MAX_SECS: u32 = 30 * 24 * 3600;
    pub const DEFAULT: Timers = Timers { inactive_after_secs: 15 * 60, close_after_secs: 24 * 3600 };

    pub fn validate(self, field: &'static str) -> Result<Self, Rejection> {
        for (name, v) in
            [("inactive_after_secs", self.inactive_after_secs), ("close_after_secs", self.close_after_secs)]
        {
            if !(Self::MIN_SECS..=Self::MAX_SECS).contains(&v) {
                return Err(Rejection::invalid(
                    field,
                    format!("{name} is {v}; it must be between {} and {}", Self::MIN_SECS, Self::MAX_SECS),
                ));
            }
        }
        Ok(self)
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Checks a text field: trimmed non-empty (if required), at most `max`
/// characters, no control characters.
pub fn check_text(field: &'static str, value: &str, max: usize, required: bool) -> Result<(), Rejection> {
    if required && value.trim().is_empty() {
        return Err(Rejection::invalid(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(Rejection::invalid(field, format!("{chars} characters; at most {max}")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Rejection::invalid(field, "contains control characters"));
    }
    Ok(())
}
