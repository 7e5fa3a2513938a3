//! The one table from what can go wrong to a gRPC status. Bad input names
//! the field; another tenant's ids look exactly like unknown ones; internal
//! failures are logged with their cause and answered without it.

use actors::ActorError;
use domain::Rejection;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error(transparent)]
    Actor(#[from] ActorError),
    #[error("{0}")]
    Internal(String),
    /// Too many attempts (a login lockout); retry later.
    #[error("resource exhausted: {0}")]
    TooMany(String),
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
}

impl ApiError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { field, reason: reason.into() }
    }
}

impl From<keystore::KeyError> for ApiError {
    fn from(e: keystore::KeyError) -> Self {
        Self::Actor(ActorError::Keys(e))
    }
}

impl From<media::BlobError> for ApiError {
    fn from(e: media::BlobError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<eventlog::LogError> for ApiError {
    fn from(e: eventlog::LogError) -> Self {
        Self::Actor(ActorError::Log(e))
    }
}

/// The longest message a status carries: clients cap the trailers at
/// 16 KiB (grpc-go, grpcio and tonic by default), and a longer message
/// turns the real error into RESOURCE_EXHAUSTED on their side.
const MAX_STATUS_MESSAGE: usize = 2048;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let status = status_of(e);
        if status.message().len() <= MAX_STATUS_MESSAGE {
            return status;
        }
        // Every caller value is quoted through `domain::quote`; this only
        // guards against a message that grew some other way.
        let mut cut = MAX_STATUS_MESSAGE;
        while !status.message().is_char_boundary(cut) {
            cut -= 1;
        }
        Status::new(status.code(), format!("{}… (message cut)", &status.message()[..cut]))
    }
}

fn status_of(e: ApiError) -> Status {
    {
        match e {
            ApiError::Invalid { field, reason } => Status::invalid_argument(format!("{field}: {reason}")),
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::Forbidden(m) => Status::permission_denied(m),
            ApiError::Actor(ActorError::Rejected(r)) => match r {
                Rejection::InvalidArgument { field, reason } => Status::invalid_argument(format!("{field}: {reason}")),
                Rejection::NotFound { what } => Status::not_found(format!("{what} not found")),
                Rejection::AlreadyExists { what } => Status::already_exists(format!("{what} already exists")),
                Rejection::FailedPrecondition { reason } => Status::failed_precondition(reason),
                other => Status::failed_precondition(other.to_string()),
            },
            ApiError::Actor(ActorError::Contended { .. }) => {
                Status::aborted("the entity kept changing under concurrent writers; retry")
            }
            ApiError::Actor(ActorError::Unavailable(m)) => {
                tracing::warn!(error = %m, "actor unavailable");
                Status::unavailable("the node is shutting down or overloaded; retry")
            }
            ApiError::Actor(other) => internal(other.to_string()),
            ApiError::Internal(m) => internal(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::TooMany(m) => Status::resource_exhausted(m),
            ApiError::DataLoss(m) => Status::data_loss(m),
            ApiError::OutOfRange(m) => Status::out_of_range(m),
            ApiError::Deadline(m) => Status::deadline_exceeded(m),
        }
    }
}

fn internal(cause: String) -> Status {
    let incident = uuid::Uuid::now_v7();
    tracing::error!(%incident, error = %cause, "internal error");
    Status::new(Code::Internal, format!("internal error (incident {incident}; see the server log)"))
}

/// Parses a UUID field of a request.
pub fn parse_id(field: &'static str, value: &str) -> Result<uuid::Uuid, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(value).map_err(|_| ApiError::invalid(field, "is not a UUID"))
}

impl From<events::CodecError> for ApiError {
    fn from(e: events::CodecError) -> Self {
        Self::Actor(e.into())
    }
}

impl From<audit::AuditError> for ApiError {
    fn from(e: audit::AuditError) -> Self {
        match e {
            audit::AuditError::Unavailable(m) => Self::Unavailable(m.into()),
            audit::AuditError::Write(m) => Self::Internal(m),
        }
    }
}
