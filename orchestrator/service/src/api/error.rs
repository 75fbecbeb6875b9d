//! One error type for every request, whatever the transport: a kind and a message in plain words.
//! Each domain error becomes an [`ApiError`] here, once; each transport maps the kind once — to a
//! gRPC status code ([`From<ApiError> for tonic::Status`]) and to an HTTP status with a JSON
//! `{"error": …}` body ([`IntoResponse`]) — so the same bad request gets the same answer over
//! gRPC and over HTTP.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use saga_engine::EngineError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::audit::AuditError;
use crate::auth::Denied;
use crate::coordinator::{ApplyError, StartError, admission};
use crate::jobs::JobError;
use crate::store::StoreError;

/// What went wrong, in the terms both transports have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The request itself is wrong: a field missing, malformed or out of range.
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    /// The request is well-formed, but does not apply to the thing as it is now.
    FailedPrecondition,
    /// A concurrent change won; trying again may succeed.
    Aborted,
    Unimplemented,
    /// Too much work in flight (admission control); retry later.
    ResourceExhausted,
    /// A dependency (the database, a participant) cannot be reached now; retry later.
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub(crate) fn grpc(self) -> Code {
        match self {
            Self::InvalidArgument => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::Aborted => Code::Aborted,
            Self::Unimplemented => Code::Unimplemented,
            Self::ResourceExhausted => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// HTTP's nearest status. A request that does not apply to the saga as it is now, like one
    /// that lost a race, is 409 Conflict: the resource's state conflicts with it.
    pub(crate) fn http(self) -> StatusCode {
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::FailedPrecondition | Self::Aborted => StatusCode::CONFLICT,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The answer when the saga store cannot be reached (the cause is logged, not answered).
const STORE_UNAVAILABLE: &str = "the saga store is unavailable; retry later";

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// When trying again makes sense: a gRPC `google.rpc.RetryInfo` detail, an HTTP
    /// `Retry-After` header.
    pub(crate) retry_after: Option<Duration>,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn retry_after(self, delay: Duration) -> Self {
        Self {
            retry_after: Some(delay),
            ..self
        }
    }

    /// The request is wrong; `message` names the field at fault.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub(crate) fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, message)
    }

    /// The same error with `field: ` in front of its message.
    pub(crate) fn in_field(self, field: &str) -> Self {
        Self {
            message: format!("{field}: {}", self.message),
            ..self
        }
    }

    /// The store cannot be reached: logged here with the cause, answered without it.
    fn store_unavailable(cause: &StoreError) -> Self {
        tracing::error!(error = %cause, "saga store unavailable");
        let e = Self::new(ErrorKind::Unavailable, STORE_UNAVAILABLE);
        if admission::unreachable(cause) {
            e.retry_after(admission::RETRY_AFTER_DOWN)
        } else {
            e
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e.retry_after {
            Some(delay) => Status::with_error_details(
                e.kind.grpc(),
                e.message,
                ErrorDetails::with_retry_info(Some(delay)),
            ),
            None => Status::new(e.kind.grpc(), e.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message }));
        match self.retry_after {
            // Whole seconds, rounded up (RFC 9110: delay-seconds).
            Some(delay) => {
                let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
                (self.kind.http(), [(header::RETRY_AFTER, secs.to_string())], body).into_response()
            }
            None => (self.kind.http(), body).into_response(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => Self::new(ErrorKind::Unauthenticated, m),
            Denied::PermissionDenied(m) => Self::new(ErrorKind::PermissionDenied, m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => Self::new(ErrorKind::Aborted, e.to_string()),
            StoreError::DuplicateKey => Self::new(ErrorKind::AlreadyExists, e.to_string()),
            StoreError::Shared(_) | StoreError::Database(_) => Self::store_unavailable(&e),
            // Refused without trying: no error to log per request (the gate logged the outage).
            StoreError::Down { retry_after } => {
                Self::new(ErrorKind::Unavailable, STORE_UNAVAILABLE).retry_after(retry_after)
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt saga row");
                Self::new(ErrorKind::Internal, e.to_string())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::MissingType { .. }
            | StartError::UnknownType { .. }
            | StartError::PayloadJson(_)
            | StartError::PayloadField { .. }
            | StartError::BadKey(_) => Self::invalid(e.to_string()),
            StartError::KeyReused { .. } => Self::new(ErrorKind::AlreadyExists, e.to_string()),
            StartError::Busy(busy) => {
                let retry_after = busy.retry_after;
                Self::new(ErrorKind::ResourceExhausted, busy.to_string()).retry_after(retry_after)
            }
            StartError::Store(s) => s.into(),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::UnknownSaga(id) => Self::not_found(format!("no saga {id}")),
            ApplyError::Engine(EngineError::NotAllowed(why)) => Self::precondition(why),
            ApplyError::Engine(EngineError::Invalid(why)) => Self::invalid(why),
            ApplyError::Engine(e @ EngineError::DefinitionMismatch { .. }) => {
                Self::new(ErrorKind::Internal, e.to_string())
            }
            e @ (ApplyError::DefinitionMissing { .. } | ApplyError::TypeMismatch { .. }) => {
                Self::precondition(e.to_string())
            }
            ApplyError::Store(s) => s.into(),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::InvalidRequest(m) => Self::invalid(m),
            AuditError::Ledger(e) => Self::new(
                ErrorKind::Unavailable,
                format!("cannot read a participant's ledger: {e}"),
            ),
            e @ AuditError::Database(_) => Self::new(ErrorKind::Unavailable, e.to_string()),
            e @ AuditError::Corrupt(..) => Self::new(ErrorKind::Internal, e.to_string()),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound(id) => Self::not_found(format!("no job {id}")),
            e @ JobError::Finished { .. } => Self::precondition(e.to_string()),
            JobError::Store(s) => s.into(),
            e @ JobError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt job row");
                Self::new(ErrorKind::Internal, e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_grpc_code_and_an_http_status_that_agree() {
        use ErrorKind::*;
        for (kind, code, status) in [
            (InvalidArgument, Code::InvalidArgument, 400),
            (Unauthenticated, Code::Unauthenticated, 401),
            (PermissionDenied, Code::PermissionDenied, 403),
            (NotFound, Code::NotFound, 404),
            (AlreadyExists, Code::AlreadyExists, 409),
            (FailedPrecondition, Code::FailedPrecondition, 409),
            (Aborted, Code::Aborted, 409),
            (Unimplemented, Code::Unimplemented, 501),
            (ResourceExhausted, Code::ResourceExhausted, 429),
            (Unavailable, Code::Unavailable, 503),
            (Internal, Code::Internal, 500),
        ] {
            assert_eq!(kind.grpc(), code, "{kind:?}");
            assert_eq!(kind.http().as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn a_retry_hint_travels_as_retry_info_and_as_retry_after() {
        let e = ApiError::new(ErrorKind::ResourceExhausted, "busy").retry_after(Duration::from_millis(1500));
        let status = Status::from(e.clone());
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(1500))
        );
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"2"[..]),
            "whole seconds, rounded up"
        );
    }

    #[test]
    fn a_refused_operator_action_is_a_failed_precondition_and_a_missing_definition_too() {
        let e = ApiError::from(ApplyError::Engine(EngineError::NotAllowed("no".into())));
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::FailedPrecondition, "no")
        );
        let e = ApiError::from(ApplyError::DefinitionMissing {
            id: saga_engine::SagaId::new_v7(),
            saga_type: "t".into(),
            version: 9,
        });
        assert_eq!(e.kind, ErrorKind::FailedPrecondition, "not an internal error");
    }
}
