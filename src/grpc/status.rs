//! One gRPC status per domain error, with a message naming the field and, for bad input, a
//! `google.rpc.BadRequest` detail that clients can read field by field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::core::CoreError;

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Status {
        let message = e.to_string();
        match e {
            CoreError::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            CoreError::NotFound { .. } => Status::not_found(message),
            CoreError::AlreadyExists { .. } => Status::already_exists(message),
            CoreError::Unauthenticated(_) => Status::unauthenticated(message),
            CoreError::PermissionDenied(_) => Status::permission_denied(message),
            CoreError::FailedPrecondition(_) => Status::failed_precondition(message),
            CoreError::ResourceExhausted(_) => Status::resource_exhausted(message),
            // RetryInfo tells gRPC clients with retry policies when to come back.
            CoreError::RateLimited { retry_after, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            CoreError::Unavailable(_) => Status::unavailable(message),
            // Details stay in the log; the client learns only that it was our fault.
            CoreError::Internal(_) => Status::internal("internal error; see the server log"),
        }
    }
}

/// The `google.rpc.Status` carried in-band by a Connect error frame: the same code, message
/// and details the unary call would have returned.
pub fn rpc_status(e: CoreError) -> tonic_types::pb::Status {
    use prost::Message;
    let status = Status::from(e);
    if !status.details().is_empty()
        && let Ok(rich) = tonic_types::pb::Status::decode(status.details())
    {
        return rich;
    }
    tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}

/// tonic answers a request larger than the decoding limit with OUT_OF_RANGE; gRPC clients
/// expect RESOURCE_EXHAUSTED for that, naming the limit. `None` for any other status.
pub fn too_large(status: &Status) -> Option<Status> {
    let detail = status
        .message()
        .strip_prefix("Error, decoded message length too large: ")?;
    (status.code() == tonic::Code::OutOfRange).then(|| {
        Status::resource_exhausted(format!(
            "request message too large ({detail}); see limits.max_request_bytes"
        ))
    })
}
