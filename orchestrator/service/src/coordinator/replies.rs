//! Participants' replies: the reply consumer's handler decodes a batch of `ReplyEnvelope`s, and the
//! coordinator applies them all through the engine in one transaction. The shared consumer loop
//! stores the Kafka offsets only after this returns, i.e. after the commit.

use std::collections::HashMap;
use std::sync::Arc;

use saga_engine::{Decision, Input, Saga, SagaDefinition, SagaId, decide};
use saga_runtime::consumer::{Handler, Incoming, Transient, Verdict, Verdicts};
use saga_runtime::outbox::OutboxMessage;

use super::{Applied, ApplyError, Coordinator, current_step_name, metrics, retry_conflicts};
use crate::store::{self, NewEvent, PendingInput, RowWrite, SagaWrite, StoredSaga};
use crate::wire::{self, IncomingReply};

impl Coordinator {
    /// Applies a batch of participant replies in one transaction: the sagas they name are loaded
    /// and locked with one statement (in id order, so concurrent batches cannot deadlock), each
    /// reply is decided in order (replies to the same saga see each other), and the sagas, their
    /// history and their commands are committed with one statement each. Duplicates and stale
    /// replies change nothing but are recorded. Each reply's work runs in the span paired with it.
    ///
    /// Returns one result per reply; a reply that can never apply (unknown saga, wrong type, an
    /// engine refusal) is an `Err` in its place and the others still apply. `Err` for the whole
    /// call means nothing was written and the batch should be retried (the database is
    /// unavailable, or a saga's definition is missing from the catalog).
    pub(crate) async fn apply_replies(
        &self,
        batch: &[(IncomingReply, tracing::Span)],
    ) -> Result<Vec<Result<Applied, ApplyError>>, ApplyError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        retry_conflicts(|| self.try_apply_replies(batch)).await
    }

    async fn try_apply_replies(
        &self,
        batch: &[(IncomingReply, tracing::Span)],
    ) -> Result<Vec<Result<Applied, ApplyError>>, ApplyError> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<SagaId> = batch.iter().map(|(r, _)| r.saga_id).collect();
        ids.sort_unstable();
        ids.dedup();
        // Each saga: as loaded (for the version), and as the replies so far left it.
        let mut sagas: HashMap<SagaId, (StoredSaga, Saga)> = store::lock_many(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|s| (s.saga.id, (s.clone(), s.saga)))
            .collect();
        let now = self.clock.now();
        let actors: Vec<String> = batch
            .iter()
            .map(|(r, _)| {
                if r.participant.is_empty() {
                    "participant".to_owned()
                } else {
                    format!("participant:{}", r.participant)
                }
            })
            .collect();
        let mut results = Vec::with_capacity(batch.len());
        // (reply index, definition, decision), and each decision's outbox rows.
        let mut decided: Vec<(usize, &SagaDefinition, Decision)> = Vec::new();
        let mut messages: Vec<Vec<OutboxMessage>> = Vec::new();
        for (i, (reply, span)) in batch.iter().enumerate() {
            let Some((stored, current)) = sagas.get_mut(&reply.saga_id) else {
                results.push(Err(ApplyError::UnknownSaga(reply.saga_id)));
                continue;
            };
            if !reply.saga_type.is_empty() && reply.saga_type != current.saga_type {
                results.push(Err(ApplyError::TypeMismatch {
                    id: current.id,
                    actual: current.saga_type.clone(),
                    claimed: reply.saga_type.clone(),
                }));
                continue;
            }
            let def = self.definition(stored)?;
            let decision = match decide(def, current, &Input::Reply(reply.reply.clone()), now) {
                Ok(d) => d,
                Err(e) => {
                    results.push(Err(e.into()));
                    continue;
                }
            };
            // Each command continues the trace of the reply that caused it.
            let trace = span.in_scope(saga_runtime::trace::current_headers);
            messages.push(self.messages(&decision, &reply.message_id, &trace));
            span.in_scope(|| {
                tracing::debug!(changed = decision.changed, state = %decision.saga.state, "reply decided");
            });
            if decision.changed {
                *current = decision.saga.clone();
            }
            results.push(Ok(Applied {
                changed: decision.changed,
                state: decision.saga.state,
                version: 0, // filled in below, once the number of writes per saga is known
                saga: decision.saga.clone(),
                commands: decision.commands.clone(),
            }));
            decided.push((i, def, decision));
        }

        // One write per saga the batch touched: its final state, every reply's history and
        // commands, in the order the replies came.
        let mut writes: Vec<SagaWrite<'_>> = Vec::new();
        let mut index: HashMap<SagaId, usize> = HashMap::new();
        for ((i, def, decision), messages) in decided.iter().zip(messages) {
            let id = decision.saga.id;
            let at = *index.entry(id).or_insert_with(|| {
                let (stored, current) = &sagas[&id];
                writes.push(SagaWrite {
                    saga: current,
                    row: if current == &stored.saga {
                        RowWrite::Unchanged
                    } else {
                        RowWrite::Update {
                            expected_version: stored.version,
                        }
                    },
                    current_step: current_step_name(def, current),
                    events: Vec::new(),
                    messages: Vec::new(),
                    inputs: Vec::new(),
                    keys: if current == &stored.saga {
                        Vec::new()
                    } else {
                        def.search_key_values(&current.context, true)
                    },
                });
                writes.len() - 1
            });
            let write = &mut writes[at];
            write.events.extend(decision.events.iter().map(|event| NewEvent {
                at: now,
                actor: &actors[*i],
                event,
            }));
            write.messages.extend(messages);
            write.inputs.extend(PendingInput::of(decision));
        }
        store::commit(&mut tx, &writes, &self.handoff).await?;
        tx.commit().await?;
        ::metrics::histogram!("reply_batch_seconds").record(started.elapsed().as_secs_f64());
        for (_, def, decision) in &decided {
            metrics::observe(def, decision, now);
        }
        // Versions as committed: all of a batch's changes to one saga are one row write, one step.
        for applied in results.iter_mut().flatten() {
            let (stored, current) = &sagas[&applied.saga.id];
            applied.version = stored.version + i64::from(current != &stored.saga);
        }
        Ok(results)
    }
}

/// The reply consumer's handler.
pub(crate) struct ReplyHandler {
    coordinator: Arc<Coordinator>,
}

impl ReplyHandler {
    pub(crate) fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

impl Handler for ReplyHandler {
    async fn handle(&self, batch: &[Incoming<'_>]) -> Result<Verdicts, Transient> {
        // Undecodable records are poison; the rest are applied together.
        let mut verdicts: Verdicts = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            let decoded = m
                .payload
                .ok_or_else(|| "empty record: expected a saga.v1.ReplyEnvelope".to_owned())
                .and_then(|bytes| wire::decode_reply(bytes).map_err(|e| e.0));
            match decoded {
                Ok(reply) => {
                    let span = m.span();
                    span.record("saga_id", tracing::field::display(reply.saga_id));
                    replies.push((reply, span));
                    positions.push(i);
                    verdicts.push(Verdict::Done);
                }
                Err(reason) => verdicts.push(Verdict::Poison(reason)),
            }
        }
        let results = match self.coordinator.apply_replies(&replies).await {
            Ok(r) => r,
            // The database is down, writers keep colliding, or the catalog lacks a version that a
            // redeploy will bring back: retry without losing the replies.
            Err(e) => return Err(Transient::new(e)),
        };
        for ((i, result), (reply, span)) in positions.into_iter().zip(results).zip(&replies) {
            match result {
                Ok(applied) => span.in_scope(|| {
                    tracing::debug!(saga_id = %reply.saga_id, changed = applied.changed, state = %applied.state,
                        "reply applied");
                }),
                // The reply can never apply: keep it for inspection and move on.
                Err(e @ (ApplyError::UnknownSaga(_) | ApplyError::TypeMismatch { .. } | ApplyError::Engine(_))) => {
                    verdicts[i] = Verdict::Poison(e.to_string());
                }
                Err(e) => return Err(Transient::new(e)),
            }
        }
        Ok(verdicts)
    }
}
