//! The one write path: a batch of decisions as rows, in the caller's transaction.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use saga_engine::{ChildEffect, Decision, Event, Input, Saga, SagaId, SagaState, StepRecord};
use saga_runtime::outbox::{Handoff, OutboxMessage};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::StoreError;

/// One saga's share of a batch of decisions: its row (inserted, updated from the version it was
/// read at, or left as it is), the history events the decisions recorded and the outbox rows of
/// the commands they issued (each already carrying the trace context it continues).
#[derive(Debug, Clone)]
pub(crate) struct SagaWrite<'a> {
    pub saga: &'a Saga,
    pub row: RowWrite<'a>,
    /// The name of the step the saga is at (for queries), if any.
    pub current_step: Option<String>,
    pub events: Vec<NewEvent<'a>>,
    pub messages: Vec<OutboxMessage>,
    /// What this saga's decisions owe other sagas (children to start or compensate).
    pub inputs: Vec<PendingInput>,
    /// Search key values to index (name, value); values already indexed are left as they are.
    pub keys: Vec<(&'a str, String)>,
}

/// An input one saga owes another, written with the decision that caused it (`saga_inputs`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingInput {
    pub saga_id: SagaId,
    pub kind: &'static str,
    pub body: Value,
}

impl PendingInput {
    /// Kind of a row that creates a child saga.
    pub(crate) const START_CHILD: &'static str = "start_child";
    /// Kind of a row that feeds an engine input to an existing saga.
    pub(crate) const INPUT: &'static str = "input";

    /// What a decision owes other sagas: its child effects.
    pub(crate) fn of(decision: &Decision) -> Vec<PendingInput> {
        decision
            .children
            .iter()
            .map(|effect| match effect {
                ChildEffect::Start {
                    step,
                    child,
                    saga_type,
                    input,
                } => PendingInput {
                    saga_id: *child,
                    kind: Self::START_CHILD,
                    body: serde_json::json!({
                        "parent": decision.saga.id,
                        "step": step,
                        "saga_type": saga_type,
                        "input": input,
                    }),
                },
                ChildEffect::Compensate { child, .. } => Self::input(
                    *child,
                    &Input::Compensate {
                        reason: format!("its parent {} is compensating", decision.saga.id),
                    },
                ),
            })
            .collect()
    }

    fn input(saga_id: SagaId, input: &Input) -> Self {
        PendingInput {
            saga_id,
            kind: Self::INPUT,
            body: serde_json::to_value(input).unwrap_or(Value::Null),
        }
    }

    /// A child that ended (or was parked) tells its parent.
    fn child_ended(saga: &Saga) -> Option<Self> {
        let parent = saga.parent?;
        matches!(
            saga.state,
            SagaState::Completed | SagaState::Compensated | SagaState::Failed
        )
        .then(|| {
            Self::input(
                parent.saga,
                &Input::ChildEnded {
                    step: parent.step,
                    child: saga.id,
                    state: saga.state,
                    reason: None,
                },
            )
        })
    }
}

/// What happens to a saga row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowWrite<'a> {
    /// A new saga, at version 1, unless its idempotency key is taken.
    Insert {
        idempotency_key: Option<&'a str>,
        request_hash: Option<&'a [u8]>,
        /// W3C trace context of the request that started it.
        trace_context: &'a BTreeMap<String, String>,
    },
    /// A changed saga, written only if its version is still the one it was read at.
    Update { expected_version: i64 },
    /// The decisions only recorded history (an ignored reply, a wake with nothing due).
    Unchanged,
}

/// A history event of a [`SagaWrite`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewEvent<'a> {
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub event: &'a Event,
}

/// Commits a batch of decisions in the caller's transaction — the one way decisions become rows,
/// for new sagas, replies, operator actions and timers alike: one `INSERT` of new sagas, one
/// `UPDATE` of changed ones, one `INSERT` of history and one of outbox rows, whatever the batch's
/// size. Returns, per write, whether it was written: `false` only for a new saga whose
/// idempotency key was taken (by an earlier saga, or one earlier in the batch), whose events and
/// messages are then left out too. A changed saga whose version moved fails the whole batch with
/// [`StoreError::Conflict`]: the caller re-reads and decides again.
pub(crate) async fn commit(
    conn: &mut PgConnection,
    writes: &[SagaWrite<'_>],
    handoff: &Handoff,
) -> Result<Vec<bool>, StoreError> {
    let new: Vec<&SagaWrite<'_>> = writes
        .iter()
        .filter(|w| matches!(w.row, RowWrite::Insert { .. }))
        .collect();
    let inserted = insert_many(&mut *conn, &new).await?;
    update_many(&mut *conn, writes).await?;
    let written: Vec<bool> = writes
        .iter()
        .map(|w| !matches!(w.row, RowWrite::Insert { .. }) || inserted.contains(&w.saga.id.as_uuid()))
        .collect();
    let kept = || writes.iter().zip(&written).filter(|(_, ok)| **ok).map(|(w, _)| w);
    append_many(&mut *conn, kept()).await?;
    let messages: Vec<OutboxMessage> = kept().flat_map(|w| w.messages.iter().cloned()).collect();
    handoff.enqueue(&mut *conn, &messages).await?;
    let inputs: Vec<PendingInput> = kept()
        .flat_map(|w| {
            let ended = match w.row {
                RowWrite::Unchanged => None,
                _ => PendingInput::child_ended(w.saga),
            };
            w.inputs.iter().cloned().chain(ended)
        })
        .collect();
    enqueue_inputs(&mut *conn, &inputs).await?;
    index_keys(&mut *conn, kept()).await?;
    Ok(written)
}

/// Indexes the writes' search key values (one statement; none when there are none).
async fn index_keys<'w, 'a: 'w>(
    conn: &mut PgConnection,
    writes: impl Iterator<Item = &'w SagaWrite<'a>>,
) -> Result<(), StoreError> {
    let (mut ids, mut names, mut values) = (vec![], vec![], vec![]);
    for w in writes {
        for (name, value) in &w.keys {
            ids.push(w.saga.id.as_uuid());
            names.push(*name);
            values.push(value.as_str());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO saga_keys (saga_id, name, value) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(names)
    .bind(values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes what sagas owe each other (one statement; none when there is nothing).
async fn enqueue_inputs(conn: &mut PgConnection, inputs: &[PendingInput]) -> Result<(), StoreError> {
    if inputs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = inputs.iter().map(|i| i.saga_id.as_uuid()).collect();
    let kinds: Vec<&str> = inputs.iter().map(|i| i.kind).collect();
    let bodies: Vec<Json<&Value>> = inputs.iter().map(|i| Json(&i.body)).collect();
    sqlx::query(
        "INSERT INTO saga_inputs (saga_id, kind, body, created_at) \
         SELECT saga_id, kind, body, now() FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[]) \
              WITH ORDINALITY AS n(saga_id, kind, body, ord) ORDER BY ord",
    )
    .bind(ids)
    .bind(kinds)
    .bind(bodies)
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of `saga_inputs`, locked by the transaction that read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct InputRow {
    pub id: i64,
    pub saga_id: Uuid,
    pub kind: String,
    pub body: Json<Value>,
}

/// Up to `limit` pending inputs, oldest first, locked (`SKIP LOCKED`: replicas share the work).
pub(crate) async fn lock_inputs(conn: &mut PgConnection, limit: i64) -> Result<Vec<InputRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, saga_id, kind, body FROM saga_inputs ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

pub(crate) async fn delete_input(conn: &mut PgConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM saga_inputs WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts new sagas at version 1 (one statement for all); returns the ids inserted.
async fn insert_many(conn: &mut PgConnection, new: &[&SagaWrite<'_>]) -> Result<HashSet<Uuid>, StoreError> {
    if new.is_empty() {
        return Ok(HashSet::new());
    }
    let (mut keys, mut hashes, mut traces) = (vec![], vec![], vec![]);
    for w in new {
        if let RowWrite::Insert {
            idempotency_key,
            request_hash,
            trace_context,
        } = w.row
        {
            keys.push(idempotency_key);
            hashes.push(request_hash);
            traces.push(Json(trace_context));
        }
    }
    let ids: Vec<Uuid> = new.iter().map(|w| w.saga.id.as_uuid()).collect();
    let types: Vec<&str> = new.iter().map(|w| w.saga.saga_type.as_str()).collect();
    let versions: Vec<i32> = new.iter().map(|w| w.saga.definition_version as i32).collect();
    let states: Vec<&str> = new.iter().map(|w| w.saga.state.as_str()).collect();
    let contexts: Vec<Json<&Map<String, Value>>> = new.iter().map(|w| Json(&w.saga.context)).collect();
    let steps: Vec<Json<&Vec<StepRecord>>> = new.iter().map(|w| Json(&w.saga.steps)).collect();
    let current: Vec<Option<&str>> = new.iter().map(|w| w.current_step.as_deref()).collect();
    let reasons: Vec<Option<&str>> = new.iter().map(|w| w.saga.failure_reason.as_deref()).collect();
    let wakes: Vec<Option<DateTime<Utc>>> = new.iter().map(|w| w.saga.wake_at()).collect();
    let created: Vec<DateTime<Utc>> = new.iter().map(|w| w.saga.created_at).collect();
    let parents: Vec<Option<Uuid>> = new
        .iter()
        .map(|w| w.saga.parent.map(|p| p.saga.as_uuid()))
        .collect();
    let parent_steps: Vec<Option<i32>> = new.iter().map(|w| w.saga.parent.map(|p| p.step as i32)).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO sagas (id, saga_type, definition_version, state, version, idempotency_key, request_hash, \
         context, steps, current_step, failure_reason, wake_at, created_at, updated_at, trace_context, \
         parent_id, parent_step) \
         SELECT id, saga_type, definition_version, state, 1, idempotency_key, request_hash, context, steps, \
                current_step, failure_reason, wake_at, created_at, created_at, trace_context, parent_id, parent_step \
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::bytea[], $7::jsonb[], \
                     $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::jsonb[], \
                     $14::uuid[], $15::int4[]) \
              WITH ORDINALITY AS n(id, saga_type, definition_version, state, idempotency_key, request_hash, \
                     context, steps, current_step, failure_reason, wake_at, created_at, trace_context, \
                     parent_id, parent_step, ord) \
         ORDER BY ord \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(types)
    .bind(versions)
    .bind(states)
    .bind(keys)
    .bind(hashes)
    .bind(contexts)
    .bind(steps)
    .bind(current)
    .bind(reasons)
    .bind(wakes)
    .bind(created)
    .bind(traces)
    .bind(parents)
    .bind(parent_steps)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Writes every changed saga of `writes`, each only if its version is still the one it was read
/// at (one statement). A [`StoreError::Conflict`] names one saga that changed meanwhile.
async fn update_many(conn: &mut PgConnection, writes: &[SagaWrite<'_>]) -> Result<(), StoreError> {
    let updates: Vec<(&SagaWrite<'_>, i64)> = writes
        .iter()
        .filter_map(|w| match w.row {
            RowWrite::Update { expected_version } => Some((w, expected_version)),
            _ => None,
        })
        .collect();
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|(w, _)| w.saga.id.as_uuid()).collect();
    let versions: Vec<i64> = updates.iter().map(|(_, v)| *v).collect();
    let states: Vec<&str> = updates.iter().map(|(w, _)| w.saga.state.as_str()).collect();
    let contexts: Vec<Json<&Map<String, Value>>> =
        updates.iter().map(|(w, _)| Json(&w.saga.context)).collect();
    let steps: Vec<Json<&Vec<StepRecord>>> = updates.iter().map(|(w, _)| Json(&w.saga.steps)).collect();
    let current: Vec<Option<&str>> = updates.iter().map(|(w, _)| w.current_step.as_deref()).collect();
    let reasons: Vec<Option<&str>> = updates
        .iter()
        .map(|(w, _)| w.saga.failure_reason.as_deref())
        .collect();
    let wakes: Vec<Option<DateTime<Utc>>> = updates.iter().map(|(w, _)| w.saga.wake_at()).collect();
    let updated: Vec<DateTime<Utc>> = updates.iter().map(|(w, _)| w.saga.updated_at).collect();
    let written: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sagas s SET state = u.state, version = s.version + 1, context = u.context, steps = u.steps, \
         current_step = u.current_step, failure_reason = u.failure_reason, wake_at = u.wake_at, updated_at = u.updated_at \
         FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[], $7::text[], \
                     $8::timestamptz[], $9::timestamptz[]) \
              AS u(id, version, state, context, steps, current_step, failure_reason, wake_at, updated_at) \
         WHERE s.id = u.id AND s.version = u.version RETURNING s.id",
    )
    .bind(&ids)
    .bind(versions)
    .bind(states)
    .bind(contexts)
    .bind(steps)
    .bind(current)
    .bind(reasons)
    .bind(wakes)
    .bind(updated)
    .fetch_all(conn)
    .await?;
    if written.len() == ids.len() {
        return Ok(());
    }
    let missed = ids
        .iter()
        .find(|id| !written.contains(id))
        .copied()
        .unwrap_or_default();
    Err(StoreError::Conflict(SagaId::from_uuid(missed)))
}

/// Appends the history events of the writes, in order (one statement for all).
async fn append_many<'w, 'a: 'w>(
    conn: &mut PgConnection,
    writes: impl Iterator<Item = &'w SagaWrite<'a>>,
) -> Result<(), StoreError> {
    let (mut ids, mut ats, mut actors, mut kinds, mut data) = (vec![], vec![], vec![], vec![], vec![]);
    for w in writes {
        for e in &w.events {
            ids.push(w.saga.id.as_uuid());
            ats.push(e.at);
            actors.push(e.actor);
            kinds.push(e.event.kind());
            data.push(serde_json::to_value(e.event).unwrap_or_else(|_| Value::Object(Map::new())));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO saga_events (saga_id, at, actor, kind, data) \
         SELECT i, t, a, k, d FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::jsonb[]) \
         WITH ORDINALITY AS e(i, t, a, k, d, n) ORDER BY n",
    )
    .bind(ids)
    .bind(ats)
    .bind(actors)
    .bind(kinds)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}
