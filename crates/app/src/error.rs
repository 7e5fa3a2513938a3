//! The one error type of the application layer, and the one table from
//! what can go wrong to a [`Code`]: the gRPC adapter maps a code to a gRPC
//! status, the HTTP adapter to an HTTP status, both through
//! [`Code::grpc`] and [`Code::http`]. Bad input names the field; another
//! tenant's ids look exactly like unknown ones; internal failures are
//! logged with their cause and answered without it.

use actors::ActorError;
use domain::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error(transparent)]
    Actor(#[from] ActorError),
    /// Something that should not happen: logged with its cause, answered
    /// with an incident id.
    #[error("{0}")]
    Internal(String),
    /// Too many attempts (a login lockout); retry later.
    #[error("resource exhausted: {0}")]
    TooMany(String),
    /// The server's storage is full: writes wait for an operator to free
    /// space (the text says what could not be written).
    #[error("storage full: {0}")]
    StorageFull(String),
    /// Not ready yet (e.g. a view still building); worth a retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes are missing or do not match what the log recorded.
    #[error("data loss: {0}")]
    DataLoss(String),
    /// A range past the end (e.g. of a blob).
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The caller gave up (a stalled upload).
    #[error("deadline exceeded: {0}")]
    Deadline(String),
    /// Something named by the request that is not there (with a message
    /// that says what there is).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the current state (pausing a paused
    /// projection).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The tenant lives in another region, which a node of that region
    /// serves; the edges name the region apart (`pypes-region`) so a router
    /// can send the request on.
    #[error("failed precondition: {message}")]
    ElsewhereRegion { region: String, message: String },
    /// The request needs a state the system is not in (a move whose copy
    /// is behind); the message says what to do first.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
}

/// What a caller is told went wrong: one code per kind of failure, shared
/// by every edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Aborted,
    Unavailable,
    ResourceExhausted,
    DataLoss,
    OutOfRange,
    DeadlineExceeded,
    Internal,
}

/// The table: code → (gRPC status code number, HTTP status), as Google's
/// API design guide maps one to the other.
const TABLE: &[(Code, i32, u16)] = &[
    (Code::InvalidArgument, 3, 400),
    (Code::Unauthenticated, 16, 401),
    (Code::PermissionDenied, 7, 403),
    (Code::NotFound, 5, 404),
    (Code::AlreadyExists, 6, 409),
    (Code::FailedPrecondition, 9, 400),
    (Code::Aborted, 10, 409),
    (Code::Unavailable, 14, 503),
    (Code::ResourceExhausted, 8, 429),
    (Code::DataLoss, 15, 500),
    (Code::OutOfRange, 11, 400),
    (Code::DeadlineExceeded, 4, 504),
    (Code::Internal, 13, 500),
];

impl Code {
    fn row(self) -> (i32, u16) {
        TABLE.iter().find(|(c, _, _)| *c == self).map_or((13, 500), |(_, g, h)| (*g, *h))
    }

    /// The gRPC status code (its number, as `tonic::Code::from` takes it).
    pub fn grpc(self) -> i32 {
        self.row().0
    }

    /// The HTTP status.
    pub fn http(self) -> u16 {
        self.row().1
    }
}

/// The longest message an answer carries: gRPC clients cap the trailers at
/// 16 KiB (grpc-go, grpcio and tonic by default), and a longer message
/// turns the real error into RESOURCE_EXHAUSTED on their side.
const MAX_MESSAGE: usize = 2048;

impl AppError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { field, reason: reason.into() }
    }

    /// An internal failure with what was being done.
    pub fn internal(doing: &str, cause: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{doing}: {cause}"))
    }

    /// A rejection by the domain.
    pub fn rejected(r: Rejection) -> Self {
        Self::Actor(ActorError::Rejected(r))
    }

    /// A domain `NotFound`.
    pub fn not_found(what: &'static str) -> Self {
        Self::rejected(Rejection::NotFound { what })
    }

    /// The code and the message a caller is told (at most 2 KiB). An
    /// internal failure is logged here with an incident id, and only the
    /// id goes out.
    pub fn answer(self) -> (Code, String) {
        let (code, message, _) = self.answer_noting();
        (code, message)
    }

    /// [`Self::answer`], and the incident id an internal failure was
    /// logged under (for the request log).
    pub fn answer_noting(self) -> (Code, String, Option<uuid::Uuid>) {
        let (code, message, incident) = self.classify();
        if message.len() <= MAX_MESSAGE {
            return (code, message, incident);
        }
        // Every caller value is quoted through `domain::quote`; this only
        // guards against a message that grew some other way.
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        (code, format!("{}… (message cut)", &message[..cut]), incident)
    }

    /// The code alone (no logging).
    pub fn code(&self) -> Code {
        match self {
            AppError::Invalid { .. } => Code::InvalidArgument,
            AppError::Unauthenticated(_) => Code::Unauthenticated,
            AppError::Forbidden(_) => Code::PermissionDenied,
            AppError::Actor(ActorError::Rejected(r)) => match r {
                Rejection::InvalidArgument { .. } => Code::InvalidArgument,
                Rejection::NotFound { .. } => Code::NotFound,
                Rejection::AlreadyExists { .. } => Code::AlreadyExists,
                _ => Code::FailedPrecondition,
            },
            AppError::Actor(ActorError::Contended { .. }) => Code::Aborted,
            AppError::Actor(ActorError::Unavailable(_)) => Code::Unavailable,
            AppError::Actor(e) if e.is_storage_full() => Code::ResourceExhausted,
            AppError::Actor(e) if e.is_unreachable() => Code::Unavailable,
            AppError::Actor(_) | AppError::Internal(_) => Code::Internal,
            AppError::Unavailable(_) => Code::Unavailable,
            AppError::TooMany(_) | AppError::StorageFull(_) => Code::ResourceExhausted,
            AppError::DataLoss(_) => Code::DataLoss,
            AppError::OutOfRange(_) => Code::OutOfRange,
            AppError::Deadline(_) => Code::DeadlineExceeded,
            AppError::Conflict(_) => Code::Aborted,
            AppError::NotFound(_) => Code::NotFound,
            AppError::ElsewhereRegion { .. } | AppError::FailedPrecondition(_) => Code::FailedPrecondition,
        }
    }

    /// The region that serves the request, when it is another one.
    pub fn region(&self) -> Option<&str> {
        match self {
            AppError::ElsewhereRegion { region, .. } => Some(region),
            _ => None,
        }
    }

    fn classify(self) -> (Code, String, Option<uuid::Uuid>) {
        let code = self.code();
        let mut noted = None;
        let mut note_incident = |cause: String| {
            let (message, id) = incident(cause);
            noted = Some(id);
            message
        };
        let message = match self {
            AppError::Invalid { field, reason } => format!("{field}: {reason}"),
            AppError::Unauthenticated(m) | AppError::Forbidden(m) => m,
            AppError::Actor(ActorError::Rejected(r)) => match r {
                Rejection::InvalidArgument { field, reason } => format!("{field}: {reason}"),
                Rejection::NotFound { what } => format!("{what} not found"),
                Rejection::AlreadyExists { what } => format!("{what} already exists"),
                Rejection::FailedPrecondition { reason } => reason,
                other => other.to_string(),
            },
            AppError::Actor(ActorError::Contended { .. }) => {
                "the entity kept changing under concurrent writers; retry".into()
            }
            AppError::Actor(ActorError::Unavailable(m)) => {
                tracing::warn!(error = %m, "actor unavailable");
                "the node is shutting down or overloaded; retry".into()
            }
            AppError::Actor(e) if e.is_storage_full() => disk_full(e.full_store().unwrap_or("event log"), &e),
            AppError::Actor(e) if e.is_unreachable() => unreachable(&e),
            AppError::StorageFull(m) => disk_full("event log", &m),
            AppError::Actor(other) => note_incident(other.to_string()),
            AppError::Internal(m) => note_incident(m),
            AppError::Unavailable(m)
            | AppError::TooMany(m)
            | AppError::DataLoss(m)
            | AppError::OutOfRange(m)
            | AppError::Deadline(m)
            | AppError::Conflict(m)
            | AppError::NotFound(m)
            | AppError::FailedPrecondition(m) => m,
            AppError::ElsewhereRegion { message, .. } => message,
        };
        (code, message, noted)
    }
}

/// The answer to a write the full disk refused (the cause goes to the log).
fn disk_full(store: &str, cause: &dyn std::fmt::Display) -> String {
    tracing::error!(error = %cause, "a write failed: the {store}'s disk is full");
    format!(
        "the server's {store} disk is full: writes are refused until an operator frees space (reads still work); retry later"
    )
}

/// The answer to a call the unreachable database failed (the cause goes
/// to the log; the client hears to retry).
pub fn unreachable(cause: &dyn std::fmt::Display) -> String {
    tracing::warn!(error = %cause, "a call failed: the database is unreachable");
    "the server's database is unreachable for now (a failover or a network cut): retry in a few seconds".into()
}

fn incident(cause: String) -> (String, uuid::Uuid) {
    let incident = uuid::Uuid::now_v7();
    tracing::error!(%incident, error = %cause, "internal error");
    (format!("internal error (incident {incident}; see the server log)"), incident)
}

impl From<Rejection> for AppError {
    fn from(r: Rejection) -> Self {
        Self::rejected(r)
    }
}

impl From<keystore::KeyError> for AppError {
    fn from(e: keystore::KeyError) -> Self {
        Self::Actor(ActorError::Keys(e))
    }
}

impl From<media::BlobError> for AppError {
    fn from(e: media::BlobError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<eventlog::LogError> for AppError {
    fn from(e: eventlog::LogError) -> Self {
        Self::Actor(ActorError::Log(e))
    }
}

impl From<events::CodecError> for AppError {
    fn from(e: events::CodecError) -> Self {
        Self::Actor(e.into())
    }
}

impl From<audit::AuditError> for AppError {
    fn from(e: audit::AuditError) -> Self {
        match e {
            audit::AuditError::Unavailable(m) => Self::Unavailable(m.into()),
            audit::AuditError::Write(m) => Self::Internal(m),
            audit::AuditError::StorageFull(m) => Self::StorageFull(m),
            audit::AuditError::Unreachable(m) => Self::Unavailable(unreachable(&m)),
        }
    }
}

/// Parses a UUID field of a request.
pub fn parse_id(field: &'static str, value: &str) -> Result<uuid::Uuid, AppError> {
    if value.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(value).map_err(|_| AppError::invalid(field, "is not a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_row() {
        let all = [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DataLoss,
            Code::OutOfRange,
            Code::DeadlineExceeded,
            Code::Internal,
        ];
        for c in all {
            assert_eq!(TABLE.iter().filter(|(x, _, _)| *x == c).count(), 1, "{c:?}");
        }
        assert_eq!(TABLE.len(), all.len());
    }

    #[test]
    fn an_internal_cause_stays_in_the_log() {
        let (code, message) = AppError::Internal("disk /secret/path failed".into()).answer();
        assert_eq!(code, Code::Internal);
        assert!(message.starts_with("internal error (incident ") && !message.contains("secret"), "{message}");
        let (code, message) = AppError::invalid("x", "y".repeat(5000)).answer();
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.len() < 2100 && message.ends_with("(message cut)"));
    }
}
