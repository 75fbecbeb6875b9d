//! One error type for every request, whatever the transport: a kind and a message in plain words.
//! Each domain error becomes an [`ApiError`] here, once; each transport maps the kind once — to a
//! gRPC status code ([`From<ApiError> for tonic::Status`]) and to an HTTP status with a JSON
//! `{"error": …}` body ([`IntoResponse`]) — so the same bad request gets the same answer over
//! gRPC and over HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use saga_engine::EngineError;
use tonic::{Code, Status};

use crate::audit::AuditError;
use crate::auth::Denied;
use crate::coordinator::{ApplyError, StartError};
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
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
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
    fn store_unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "saga store unavailable");
        Self::new(
            ErrorKind::Unavailable,
            "the saga store is unavailable; retry later",
        )
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.kind.grpc(), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.kind.http(),
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
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
            (Unavailable, Code::Unavailable, 503),
            (Internal, Code::Internal, 500),
        ] {
            assert_eq!(kind.grpc(), code, "{kind:?}");
            assert_eq!(kind.http().as_u16(), status, "{kind:?}");
        }
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
