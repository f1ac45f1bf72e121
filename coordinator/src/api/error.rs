//! The client-API error: classified where it arises, turned into a
//! `tonic::Status` (gRPC) or an HTTP status (OpenAI API) only at the
//! boundary.

use tonic::{Code, Status};

use crate::CoordinatorError;

/// What went wrong, as both APIs classify it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Unauthenticated,
    NotFound,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Cancelled,
    Internal,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The HTTP status the OpenAI-compatible API answers with.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::DeadlineExceeded => 504,
            ErrorKind::Cancelled => 499,
            ErrorKind::Internal => 500,
        }
    }

    /// OpenAI's error `type` for this kind.
    pub fn openai_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidArgument => "invalid_request_error",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::ResourceExhausted => "rate_limit_error",
            ErrorKind::Unavailable => "service_unavailable_error",
            ErrorKind::DeadlineExceeded => "timeout_error",
            ErrorKind::Cancelled => "cancelled_error",
            ErrorKind::Internal => "internal_error",
        }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        ApiError::from(Status::from(e))
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let kind = match s.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                ErrorKind::InvalidArgument
            }
            Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthenticated,
            Code::NotFound => ErrorKind::NotFound,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::Unavailable | Code::Aborted => ErrorKind::Unavailable,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::Cancelled => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        };
        ApiError::new(kind, s.message())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match e.kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::Internal => Code::Internal,
        };
        Status::new(code, e.message)
    }
}
