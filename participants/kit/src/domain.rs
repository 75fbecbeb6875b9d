//! What a participant service implements: its commands, applied inside the kit's transaction.

use std::future::Future;

use chrono::{DateTime, Utc};
use saga_proto::envelope::Command;
use saga_proto::ledger::{DomainFinding, Fact, LedgerEntry, UnclaimedCursor, UnclaimedEffect};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::DomainError;
use crate::tables::{EffectTable, FactSet, missing_effects, unclaimed_effects};

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

    /// The tables whose rows this service's actions create (e.g. `users`, by `CreateUser`). The
    /// default [`Domain::check`] and [`Domain::unclaimed`] read them; default: none.
    fn effects(&self) -> &'static [EffectTable] {
        &[]
    }

    /// The audit's domain check: whether the effects these inbox records claim still hold in the
    /// service's own data (e.g. the user a succeeded `CreateUser` created still exists). Called
    /// with each page of `GET /audit/ledger` on a read-only connection; `undone` lists, for the
    /// page's actions, whether the inbox also records their successful compensation. The
    /// default checks the rows of [`Domain::effects`] ([`missing_effects`]); a service with
    /// checks of its own calls that too.
    fn check(
        &self,
        conn: &mut PgConnection,
        entries: &[AuditedEntry<'_>],
    ) -> impl Future<Output = Result<Vec<DomainFinding>, sqlx::Error>> + Send {
        missing_effects(conn, entries, self.effects())
    }

    /// The audit's other direction: effects created in `[since, until)` in the service's own data
    /// that no inbox record claims — made outside any saga (e.g. by hand). One page: at most
    /// `limit` effects in (check name in byte order, id) order, all after `after`. The default
    /// reads the rows of [`Domain::effects`] ([`unclaimed_effects`]).
    fn unclaimed(
        &self,
        conn: &mut PgConnection,
        window: UnclaimedWindow<'_>,
    ) -> impl Future<Output = Result<Vec<Unclaimed>, sqlx::Error>> + Send {
        unclaimed_effects(conn, window, self.effects())
    }

    /// The fact sets this service publishes for the audit's cross-checks (see
    /// [`Domain::facts`]); their names are listed in the 404 of an unknown set. Default: none.
    fn fact_sets(&self) -> &'static [FactSet] {
        &[]
    }

    /// One page of the fact set `set`: at most `limit` (key, value) pairs with keys above
    /// `after`, in byte order of the keys (`ORDER BY key COLLATE "C"`, which is Rust's `str`
    /// order), so that the orchestrator can merge-join two services' sets page by page.
    /// `None`: the service publishes no such set. The default reads the set of that name in
    /// [`Domain::fact_sets`].
    fn facts(
        &self,
        conn: &mut PgConnection,
        set: &str,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Option<Vec<Fact>>, sqlx::Error>> + Send {
        let found = self.fact_sets().iter().find(|s| s.name == set);
        async move {
            match found {
                Some(set) => set.page(conn, after, limit).await.map(Some),
                None => Ok(None),
            }
        }
    }
}

/// What [`Domain::unclaimed`] is asked for.
#[derive(Debug, Clone, Copy)]
pub struct UnclaimedWindow<'a> {
    /// Effects created at or after this time …
    pub since: DateTime<Utc>,
    /// … and before this one (`None`: no end).
    pub until: Option<DateTime<Utc>>,
    /// The previous page's last effect: return only effects after it.
    pub after: Option<&'a UnclaimedCursor>,
    pub limit: i64,
}

/// An unclaimed effect and its place in the pages' order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unclaimed {
    /// (check, id): the effect's position, passed back as `after`.
    pub at: UnclaimedCursor,
    pub effect: UnclaimedEffect,
}

/// One ledger entry as a domain check sees it.
#[derive(Debug, Clone, Copy)]
pub struct AuditedEntry<'a> {
    pub entry: &'a LedgerEntry,
    /// For an action: the inbox also records a successful compensation of the same step, so
    /// its effect is expected to be gone.
    pub undone: bool,
}

impl AuditedEntry<'_> {
    /// A succeeded action of `command_type` whose effect should still be there.
    pub fn holds(&self, command_type: &str) -> bool {
        self.entry.phase == saga_proto::Phase::Action
            && self.entry.command_type == command_type
            && self.entry.outcome == saga_proto::ledger::LedgerOutcome::Succeeded
            && !self.undone
    }

    /// A UUID field of the recorded reply (`None` when absent or not a UUID).
    pub fn reply_uuid(&self, field: &str) -> Option<Uuid> {
        self.entry
            .reply
            .as_ref()?
            .get(field)?
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    /// A finding about this entry.
    pub fn finding(&self, check: &str, message: String) -> DomainFinding {
        DomainFinding {
            saga_id: self.entry.saga_id,
            step: self.entry.step,
            phase: self.entry.phase,
            check: check.to_owned(),
            message,
        }
    }
}
