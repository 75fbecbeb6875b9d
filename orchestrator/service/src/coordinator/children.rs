//! What sagas owe each other: a child to start, a child to compensate, a parent to tell that its
//! child ended. Each is a `saga_inputs` row written with the decision that caused it; the timer
//! loop applies them oldest first, each in the transaction that deletes it, so an input is
//! applied once even when a replica dies half-way (another takes the row: `SKIP LOCKED`).

use std::collections::BTreeMap;

use saga_engine::{Input, ParentRef, SagaId, SagaState, decide, start};
use serde::Deserialize;
use serde_json::Value;

use super::{ApplyError, Coordinator, current_step_name, fill_generated_ids, metrics, saga_span, write_of};
use crate::store::{self, NewEvent, PendingInput, RowWrite, SagaWrite};

/// The body of a `start_child` row.
#[derive(Deserialize)]
struct StartChild {
    parent: SagaId,
    step: usize,
    saga_type: String,
    input: Value,
}

impl Coordinator {
    /// Applies up to `limit` pending inputs in one transaction. Returns how many were handled.
    #[tracing::instrument(skip_all, fields(handled))]
    pub(crate) async fn apply_inputs(&self, limit: i64) -> Result<usize, ApplyError> {
        let mut tx = self.pool.begin().await?;
        let rows = store::lock_inputs(&mut tx, limit).await?;
        for row in &rows {
            let id = SagaId::from_uuid(row.saga_id);
            match row.kind.as_str() {
                PendingInput::START_CHILD => match serde_json::from_value::<StartChild>(row.body.0.clone()) {
                    Ok(body) => self.start_child(&mut tx, id, body).await?,
                    Err(e) => {
                        tracing::error!(row = row.id, error = %e, "unreadable start_child input dropped")
                    }
                },
                PendingInput::INPUT => match serde_json::from_value::<Input>(row.body.0.clone()) {
                    Ok(input) => self.feed(&mut tx, id, &input).await?,
                    Err(e) => tracing::error!(row = row.id, error = %e, "unreadable input dropped"),
                },
                other => tracing::error!(row = row.id, kind = other, "unknown input kind dropped"),
            }
            store::delete_input(&mut tx, row.id).await?;
        }
        tx.commit().await?;
        tracing::Span::current().record("handled", rows.len());
        Ok(rows.len())
    }

    /// Creates a child saga, linked to its parent's step. An input that does not fit the child's
    /// definition creates nothing: the parent hears at once that the child ended compensated, and
    /// why. A child that exists already (the row was applied before) is left as it is.
    async fn start_child(
        &self,
        tx: &mut sqlx::PgConnection,
        id: SagaId,
        body: StartChild,
    ) -> Result<(), ApplyError> {
        if store::load(&mut *tx, id).await?.is_some() {
            return Ok(());
        }
        let Some(def) = self.catalog.latest(&body.saga_type).cloned() else {
            return Err(ApplyError::DefinitionMissing {
                id,
                saga_type: body.saga_type,
                version: 0,
            });
        };
        let mut context = match def.validate_input(&body.input) {
            Ok(context) => context,
            Err(e) => {
                let ended = Input::ChildEnded {
                    step: body.step,
                    child: id,
                    state: SagaState::Compensated,
                    reason: Some(format!(
                        "its input does not fit {} v{}: {e}",
                        def.name, def.version
                    )),
                };
                return self.feed(tx, body.parent, &ended).await;
            }
        };
        fill_generated_ids(&def, &mut context);
        let now = self.clock.now();
        let mut decision = start(&def, id, context, now);
        decision.saga.parent = Some(ParentRef {
            saga: body.parent,
            step: body.step,
        });
        let trace = BTreeMap::new();
        let messages = self.messages(&decision, &format!("parent/{}", body.parent), &trace);
        let actor = format!("parent:{}", body.parent);
        let write = SagaWrite {
            saga: &decision.saga,
            row: RowWrite::Insert {
                idempotency_key: None,
                request_hash: None,
                trace_context: &trace,
            },
            current_step: current_step_name(&def, &decision.saga),
            events: decision
                .events
                .iter()
                .map(|event| NewEvent {
                    at: now,
                    actor: &actor,
                    event,
                })
                .collect(),
            messages,
            inputs: PendingInput::of(&decision),
            keys: def.search_key_values(&decision.saga.context, false),
        };
        store::commit(&mut *tx, &[write], &self.handoff).await?;
        metrics::observe(&def, &decision, now);
        tracing::info!(child = %id, parent = %body.parent, saga_type = %def.name, "child saga started");
        Ok(())
    }

    /// Feeds an input to a saga in `tx`. One the saga cannot take (it moved on, it is gone) is
    /// logged and dropped: the engine's answer is final for it.
    async fn feed(&self, tx: &mut sqlx::PgConnection, id: SagaId, input: &Input) -> Result<(), ApplyError> {
        let Some(stored) = store::lock_many(&mut *tx, &[id]).await?.into_iter().next() else {
            tracing::warn!(saga_id = %id, "input for a saga that does not exist dropped");
            return Ok(());
        };
        let def = self.definition(&stored)?;
        let now = self.clock.now();
        let decision = match decide(def, &stored.saga, input, now) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(saga_id = %id, error = %e, "input refused by the engine dropped");
                return Ok(());
            }
        };
        let trace = saga_span("child saga", &stored).in_scope(saga_runtime::trace::current_headers);
        let messages = self.messages(&decision, "saga-input", &trace);
        let actor = match input {
            Input::ChildEnded { child, .. } => format!("child:{child}"),
            _ => stored
                .saga
                .parent
                .map_or_else(|| "saga".to_owned(), |p| format!("parent:{}", p.saga)),
        };
        store::commit(
            &mut *tx,
            &[write_of(def, &stored, &decision, &actor, now, messages)],
            &self.handoff,
        )
        .await?;
        metrics::observe(def, &decision, now);
        Ok(())
    }
}
