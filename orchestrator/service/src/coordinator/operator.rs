//! Operator actions — abort, compensation replay, retry — as engine inputs, written like any
//! other decision and recorded with the operator as the actor; and their dry runs.

use saga_engine::{Command, Decision, EngineError, Input, SagaId, SagaState, decide};

use super::{Applied, ApplyError, Coordinator, metrics, retry_conflicts, saga_span, write_of};
use crate::store;

/// The outcome of a compensation replay for one saga.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    Replayed,
    WouldReplay,
    AlreadyInProgress,
    AlreadyCompensated,
    NotReplayable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    pub saga_id: SagaId,
    pub outcome: ReplayOutcome,
    pub commands: Vec<Command>,
}

impl Coordinator {
    /// Applies an operator action; the operator is recorded as the actor of its history events.
    #[tracing::instrument(skip_all, fields(saga_id = %id, operator = operator))]
    pub async fn act(&self, id: SagaId, input: &Input, operator: &str) -> Result<Applied, ApplyError> {
        let actor = format!("operator:{operator}");
        let causation = format!("operator/{operator}");
        let applied = retry_conflicts(|| self.try_act(id, input, &actor, &causation)).await?;
        tracing::info!(state = %applied.state, changed = applied.changed, "operator action applied");
        Ok(applied)
    }

    /// Load → decide → commit, once.
    async fn try_act(
        &self,
        id: SagaId,
        input: &Input,
        actor: &str,
        causation: &str,
    ) -> Result<Applied, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let stored = store::load(&mut tx, id)
            .await?
            .ok_or(ApplyError::UnknownSaga(id))?;
        let def = self.definition(&stored)?;
        let now = self.clock.now();
        let decision = decide(def, &stored.saga, input, now)?;
        // The commands continue the saga's own trace (an operator's call arrives without it).
        let trace = saga_span("operator action", &stored).in_scope(saga_runtime::trace::current_headers);
        let messages = self.messages(&decision, causation, &trace);
        store::commit(
            &mut tx,
            &[write_of(def, &stored, &decision, actor, now, messages)],
        )
        .await?;
        tx.commit().await?;
        metrics::observe(def, &decision, now);
        Ok(Applied {
            changed: decision.changed,
            state: decision.saga.state,
            version: stored.version + i64::from(decision.changed),
            saga: decision.saga,
            commands: decision.commands,
        })
    }

    /// What `input` would do to the saga now, computed but not written (dry runs).
    pub async fn plan(&self, id: SagaId, input: &Input) -> Result<Decision, ApplyError> {
        let mut conn = self.pool.acquire().await?;
        let stored = store::load(&mut conn, id)
            .await?
            .ok_or(ApplyError::UnknownSaga(id))?;
        let def = self.definition(&stored)?;
        Ok(decide(def, &stored.saga, input, self.clock.now())?)
    }

    /// Replays the compensation of one saga (or, with `dry_run`, says what a replay would send).
    pub async fn replay(
        &self,
        id: SagaId,
        reason: &str,
        dry_run: bool,
        operator: &str,
    ) -> Result<ReplayReport, ApplyError> {
        let input = Input::ReplayCompensation {
            reason: reason.to_owned(),
        };
        let result = if dry_run {
            self.plan(id, &input)
                .await
                .map(|d| (d.changed, d.saga.state, d.commands))
        } else {
            self.act(id, &input, operator)
                .await
                .map(|a| (a.changed, a.state, a.commands))
        };
        let (outcome, commands) = match result {
            Ok((true, _, commands)) if dry_run => (ReplayOutcome::WouldReplay, commands),
            Ok((true, _, commands)) => (ReplayOutcome::Replayed, commands),
            Ok((false, SagaState::Compensated, _)) => (ReplayOutcome::AlreadyCompensated, vec![]),
            Ok((false, _, _)) => (ReplayOutcome::AlreadyInProgress, vec![]),
            Err(ApplyError::Engine(EngineError::NotAllowed(why))) => {
                (ReplayOutcome::NotReplayable(why), vec![])
            }
            Err(e) => return Err(e),
        };
        Ok(ReplayReport {
            saga_id: id,
            outcome,
            commands,
        })
    }
}
