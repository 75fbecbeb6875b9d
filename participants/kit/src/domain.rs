//! What a participant service implements: its commands, applied inside the kit's transaction.

use std::future::Future;

use serde_json::Value;
use sqlx::PgConnection;

use crate::command::Command;

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

/// A participant's business logic.
///
/// `apply` runs inside a savepoint of the kit's transaction: on `Ok` its writes commit together
/// with the inbox row and the reply; on `Rejected` they are rolled back. It is called at most once
/// per (saga, step, phase); for a compensation, only if the action was applied.
pub trait Domain: Send + Sync + 'static {
    /// The service's name, sent in replies (e.g. `user-service`).
    fn name(&self) -> &'static str;

    /// Whether this service understands `command_type`; other commands are dead-lettered.
    fn handles(&self, command_type: &str) -> bool;

    /// Applies the command and returns the reply payload (merged into the saga context on success).
    fn apply(
        &self,
        tx: &mut PgConnection,
        command: &Command,
    ) -> impl Future<Output = Result<Value, DomainError>> + Send;
}
