//! Operator actions — abort, compensation replay, retry — as engine inputs, written like any
//! other decision and recorded with the operator as the actor; and their dry runs.

use chrono::{DateTime, Utc};
use saga_engine::{Command, Decision, EngineError, Input, SagaDefinition, SagaId, SagaState, decide};
use sqlx::PgConnection;

use super::{Applied, ApplyError, Coordinator, metrics, retry_conflicts, saga_span, write_of};
use crate::store;

/// The outcome of a compensation replay for one saga.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReplayOutcome {
    Replayed,
    WouldReplay,
    AlreadyInProgress,
    AlreadyCompensated,
    NotReplayable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplayReport {
    pub saga_id: SagaId,
    pub outcome: ReplayOutcome,
    pub commands: Vec<Command>,
}

impl ReplayOutcome {
    /// The outcome as stored and shown (`replayed`, `already_in_progress`, …).
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::WouldReplay => "would_replay",
            Self::AlreadyInProgress => "already_in_progress",
            Self::AlreadyCompensated => "already_compensated",
            Self::NotReplayable(_) => "not_replayable",
        }
    }

    /// Why nothing was sent, when nothing was.
    pub(crate) fn detail(&self) -> &str {
        match self {
            Self::Replayed | Self::WouldReplay => "",
            Self::AlreadyInProgress => "compensation is already in progress",
            Self::AlreadyCompensated => "the saga is already compensated",
            Self::NotReplayable(why) => why,
        }
    }
}

/// An operator action decided and written in a transaction that is not committed yet: once the
/// caller commits, [`Acted::committed`] records its metrics and says what it did.
pub(crate) struct Acted<'c> {
    def: &'c SagaDefinition,
    decision: Decision,
    version: i64,
    now: DateTime<Utc>,
}

impl Acted<'_> {
    /// Whether the action changed the saga (else the engine found nothing to do).
    pub(crate) fn changed(&self) -> bool {
        self.decision.changed
    }

    /// The commands the action sends once committed.
    pub(crate) fn commands(&self) -> &[Command] {
        &self.decision.commands
    }

    pub(crate) fn committed(self) -> Applied {
        metrics::observe(self.def, &self.decision, self.now);
        Applied {
            changed: self.decision.changed,
            state: self.decision.saga.state,
            version: self.version + i64::from(self.decision.changed),
            saga: self.decision.saga,
            commands: self.decision.commands,
        }
    }
}

impl Coordinator {
    /// Applies an operator action; the operator is recorded as the actor of its history events.
    #[tracing::instrument(skip_all, fields(saga_id = %id, operator = operator))]
    pub(crate) async fn act(&self, id: SagaId, input: &Input, operator: &str) -> Result<Applied, ApplyError> {
        let applied = retry_conflicts(|| async {
            let mut tx = self.pool.begin().await?;
            let acted = self.act_in(&mut tx, id, input, operator).await?;
            tx.commit().await?;
            Ok(acted.committed())
        })
        .await?;
        tracing::info!(state = %applied.state, changed = applied.changed, "operator action applied");
        Ok(applied)
    }

    /// Load → decide → write an operator action in the caller's transaction, without committing
    /// it: for work that must commit with the action (a job's progress). A lost
    /// optimistic-concurrency race is [`crate::store::StoreError::Conflict`]: roll back and try
    /// again.
    pub(crate) async fn act_in(
        &self,
        tx: &mut PgConnection,
        id: SagaId,
        input: &Input,
        operator: &str,
    ) -> Result<Acted<'_>, ApplyError> {
        let actor = format!("operator:{operator}");
        let causation = format!("operator/{operator}");
        let stored = store::load(&mut *tx, id)
            .await?
            .ok_or(ApplyError::UnknownSaga(id))?;
        let def = self.definition(&stored)?;
        let now = self.clock.now();
        let decision = decide(def, &stored.saga, input, now)?;
        // The commands continue the saga's own trace (an operator's call arrives without it).
        let trace = saga_span("operator action", &stored).in_scope(saga_runtime::trace::current_headers);
        let messages = self.messages(&decision, &causation, &trace);
        store::commit(
            &mut *tx,
            &[write_of(def, &stored, &decision, &actor, now, messages)],
            &self.handoff,
        )
        .await?;
        Ok(Acted {
            def,
            decision,
            version: stored.version,
            now,
        })
    }

    /// Whether a signal with idempotency key `key` was already applied to the saga.
    pub(crate) async fn signal_applied(&self, id: SagaId, key: &str) -> Result<bool, ApplyError> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::signal_applied(&mut conn, id, key).await?)
    }

    /// The saga as it stands, reported as an action that changed nothing (a repeated signal).
    pub(crate) async fn unchanged(&self, id: SagaId) -> Result<Applied, ApplyError> {
        let mut conn = self.pool.acquire().await?;
        let stored = store::load(&mut conn, id)
            .await?
            .ok_or(ApplyError::UnknownSaga(id))?;
        Ok(Applied {
            changed: false,
            state: stored.saga.state,
            saga: stored.saga,
            version: stored.version,
            commands: Vec::new(),
        })
    }

    /// What `input` would do to the saga now, computed but not written (dry runs).
    pub(crate) async fn plan(&self, id: SagaId, input: &Input) -> Result<Decision, ApplyError> {
        let mut conn = self.pool.acquire().await?;
        let stored = store::load(&mut conn, id)
            .await?
            .ok_or(ApplyError::UnknownSaga(id))?;
        let def = self.definition(&stored)?;
        Ok(decide(def, &stored.saga, input, self.clock.now())?)
    }

    /// Replays the compensation of one saga (or, with `dry_run`, says what a replay would send).
    pub(crate) async fn replay(
        &self,
        id: SagaId,
        reason: &str,
        dry_run: bool,
        operator: &str,
    ) -> Result<ReplayReport, ApplyError> {
        let input = replay_input(reason);
        let result = if dry_run {
            self.plan(id, &input)
                .await
                .map(|d| (d.changed, d.saga.state, d.commands))
        } else {
            self.act(id, &input, operator)
                .await
                .map(|a| (a.changed, a.state, a.commands))
        };
        replay_report(id, dry_run, result)
    }

    /// [`Coordinator::replay`] in the caller's transaction (see [`Coordinator::act_in`]): the
    /// report, and the action to confirm once committed (none when nothing was written).
    pub(crate) async fn replay_in<'c>(
        &'c self,
        tx: &mut PgConnection,
        id: SagaId,
        reason: &str,
        operator: &str,
    ) -> Result<(ReplayReport, Option<Acted<'c>>), ApplyError> {
        match self.act_in(tx, id, &replay_input(reason), operator).await {
            Ok(acted) => {
                let d = &acted.decision;
                let report = replay_report(id, false, Ok((d.changed, d.saga.state, d.commands.clone())))?;
                Ok((report, Some(acted)))
            }
            Err(e) => Ok((replay_report(id, false, Err(e))?, None)),
        }
    }
}

fn replay_input(reason: &str) -> Input {
    Input::ReplayCompensation {
        reason: reason.to_owned(),
    }
}

/// What a replay (or its dry run) came to, from what the engine decided.
fn replay_report(
    id: SagaId,
    dry_run: bool,
    result: Result<(bool, SagaState, Vec<Command>), ApplyError>,
) -> Result<ReplayReport, ApplyError> {
    let (outcome, commands) = match result {
        Ok((true, _, commands)) if dry_run => (ReplayOutcome::WouldReplay, commands),
        Ok((true, _, commands)) => (ReplayOutcome::Replayed, commands),
        Ok((false, SagaState::Compensated, _)) => (ReplayOutcome::AlreadyCompensated, vec![]),
        Ok((false, _, _)) => (ReplayOutcome::AlreadyInProgress, vec![]),
        Err(ApplyError::Engine(EngineError::NotAllowed(why))) => (ReplayOutcome::NotReplayable(why), vec![]),
        Err(e) => return Err(e),
    };
    Ok(ReplayReport {
        saga_id: id,
        outcome,
        commands,
    })
}
