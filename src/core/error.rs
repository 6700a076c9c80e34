//! The domain's typed errors; the grpc layer maps each variant to exactly one status code.

use std::fmt;

/// Result of a domain operation.
pub type CoreResult<T> = Result<T, CoreError>;

/// What went wrong, with the field it concerns where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A request field is malformed or out of its limits.
    InvalidArgument {
        /// The offending field, as named in the proto.
        field: &'static str,
        /// What is expected of it.
        reason: String,
    },
    /// The referenced resource does not exist (or is not the caller's to see).
    NotFound {
        /// The field holding the reference.
        field: &'static str,
        /// What was not found.
        reason: String,
    },
    /// The resource being created exists already.
    AlreadyExists {
        /// The field holding the conflicting value.
        field: &'static str,
        /// What exists already.
        reason: String,
    },
    /// No or unknown credentials.
    Unauthenticated(String),
    /// Valid credentials that may not do this.
    PermissionDenied(String),
    /// The request is valid but not in this state (e.g. a second `subscribe` on one Connect).
    FailedPrecondition(String),
    /// Too much of something: a full queue, a rate limit.
    ResourceExhausted(String),
    /// A rate limit: try again after this long.
    RateLimited {
        /// What is limited and by which setting.
        what: String,
        /// When a retry can succeed.
        retry_after: std::time::Duration,
    },
    /// The server is shutting down or a component is gone.
    Unavailable(String),
    /// A bug or a storage failure; details are logged, not sent.
    Internal(String),
}

impl CoreError {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// A `NotFound` for `field`.
    pub fn not_found(field: &'static str, reason: impl Into<String>) -> Self {
        CoreError::NotFound {
            field,
            reason: reason.into(),
        }
    }

    /// An `AlreadyExists` for `field`.
    pub fn exists(field: &'static str, reason: impl Into<String>) -> Self {
        CoreError::AlreadyExists {
            field,
            reason: reason.into(),
        }
    }

    /// An `Internal` error from anything displayable.
    pub fn internal(e: impl fmt::Display) -> Self {
        CoreError::Internal(e.to_string())
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument { field, reason }
            | CoreError::NotFound { field, reason }
            | CoreError::AlreadyExists { field, reason } => write!(f, "{field}: {reason}"),
            CoreError::RateLimited { what, retry_after } => write!(
                f,
                "{what}; retry after {} ms",
                retry_after.as_millis().max(1)
            ),
            CoreError::Unauthenticated(m)
            | CoreError::PermissionDenied(m)
            | CoreError::FailedPrecondition(m)
            | CoreError::ResourceExhausted(m)
            | CoreError::Unavailable(m)
            | CoreError::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CoreError {}

impl From<rusqlite::Error> for CoreError {
    fn from(e: rusqlite::Error) -> Self {
        CoreError::Internal(format!("storage: {e}"))
    }
}

impl From<fjall::Error> for CoreError {
    fn from(e: fjall::Error) -> Self {
        CoreError::Internal(format!("storage: {e}"))
    }
}
