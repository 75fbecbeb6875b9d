//! Why a participant did not apply a command.

use saga_proto::envelope::FieldError;

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A business rule refuses the command. Definite for an action (recorded and answered as a
    /// business failure); for a compensation it is answered but not recorded, so a retry can succeed.
    #[error("{0}")]
    Rejected(String),
    /// The database failed; the whole transaction is rolled back and the command retried.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A payload field that is missing or mistyped refuses the command: the saga cannot go on with
/// this payload, and retrying would not change it.
impl From<FieldError> for DomainError {
    fn from(e: FieldError) -> Self {
        Self::Rejected(e.0)
    }
}
