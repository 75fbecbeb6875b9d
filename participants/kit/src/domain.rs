//! What a participant service implements: its commands, applied inside the kit's transaction.

use std::future::Future;

use saga_proto::envelope::Command;
use serde_json::Value;
use sqlx::PgConnection;

use crate::error::DomainError;

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
