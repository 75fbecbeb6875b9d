//! PostgreSQL persistence of sagas and their history.
//!
//! A saga is one row: state columns for queries plus the engine's step records as JSONB, and a
//! `version` for optimistic concurrency: every update names the version it read and fails with
//! [`StoreError::Conflict`] if someone else wrote in between. Decisions become rows in one way,
//! [`commit`], inside the caller's transaction, so a saga's row, its history events and its
//! outbox rows commit together or not at all.
//!
//! Layout: this file reads sagas (and locks them for a decision); `write` is [`commit`], the one
//! write path; `list` is the filtered, paged listing and its [`ListFilter`]; `lifecycle` a saga's
//! keys, legal holds and retention; `export` the export format; `gauges` the scrape-time gauges
//! of the table.

mod export;
mod gauges;
mod lifecycle;
mod list;
mod write;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saga_engine::{ParentRef, Saga, SagaId, SagaState, StepRecord};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

pub(crate) use export::export_many;
pub(crate) use gauges::sample_gauges;
pub(crate) use lifecycle::{
    Expiry, Hold, HoldChange, Removed, delete_sagas, hold_of, keys_of, place_hold, release_hold,
    select_expired,
};
pub(crate) use list::{KeyFilter, ListFilter, SagaSummary, count, has_stored, id_range, list};
pub(crate) use write::{NewEvent, PendingInput, RowWrite, SagaWrite, commit, delete_input, lock_inputs};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// One error shared by every request of a group write (StartSaga's group commit).
    #[error("{0}")]
    Shared(std::sync::Arc<StoreError>),
    #[error("saga {0} was changed concurrently")]
    Conflict(SagaId),
    #[error("the idempotency key is already taken")]
    DuplicateKey,
    #[error("stored saga {id} cannot be read: {why}")]
    Corrupt { id: Uuid, why: String },
    /// Not tried: the store did not answer lately (`StartSaga`'s gate, coordinator/admission.rs).
    #[error("the saga store did not answer lately; not tried")]
    Down { retry_after: std::time::Duration },
}

/// A saga as loaded, with its concurrency token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredSaga {
    pub saga: Saga,
    pub version: i64,
    pub idempotency_key: Option<String>,
    /// W3C trace context (`traceparent`, `tracestate`) of the request that started the saga.
    pub trace_context: BTreeMap<String, String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct SagaRow {
    id: Uuid,
    saga_type: String,
    definition_version: i32,
    state: String,
    version: i64,
    idempotency_key: Option<String>,
    context: Json<Map<String, Value>>,
    steps: Json<Vec<StepRecord>>,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    trace_context: Json<BTreeMap<String, String>>,
    parent_id: Option<Uuid>,
    parent_step: Option<i32>,
}

pub(super) const SAGA_COLUMNS: &str = "id, saga_type, definition_version, state, version, idempotency_key, context, steps, \
                            failure_reason, created_at, updated_at, trace_context, parent_id, parent_step";

impl TryFrom<SagaRow> for StoredSaga {
    type Error = StoreError;

    fn try_from(r: SagaRow) -> Result<Self, StoreError> {
        let corrupt = |why: String| StoreError::Corrupt { id: r.id, why };
        let state = r.state.parse::<SagaState>().map_err(corrupt)?;
        let definition_version =
            u32::try_from(r.definition_version).map_err(|_| corrupt("negative definition version".into()))?;
        Ok(StoredSaga {
            saga: Saga {
                id: SagaId::from_uuid(r.id),
                saga_type: r.saga_type,
                definition_version,
                state,
                context: r.context.0,
                steps: r.steps.0,
                failure_reason: r.failure_reason,
                parent: match (r.parent_id, r.parent_step) {
                    (Some(saga), Some(step)) => Some(ParentRef {
                        saga: SagaId::from_uuid(saga),
                        step: usize::try_from(step).map_err(|_| corrupt("negative parent step".into()))?,
                    }),
                    _ => None,
                },
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            version: r.version,
            idempotency_key: r.idempotency_key,
            trace_context: r.trace_context.0,
        })
    }
}

/// Loads and locks the given sagas (in id order, so concurrent batches never deadlock). Missing
/// ids are simply absent from the result.
pub(crate) async fn lock_many(
    conn: &mut PgConnection,
    ids: &[SagaId],
) -> Result<Vec<StoredSaga>, StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|i| i.as_uuid()).collect();
    let rows: Vec<SagaRow> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(StoredSaga::try_from).collect()
}

/// Whether a signal with this idempotency key was applied to the saga (its history says so).
pub(crate) async fn signal_applied(
    conn: &mut PgConnection,
    id: SagaId,
    key: &str,
) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM saga_events WHERE saga_id = $1 AND kind = 'signal_received' AND data->>'key' = $2 LIMIT 1",
    )
    .bind(id.as_uuid())
    .bind(key)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

pub(crate) async fn load(conn: &mut PgConnection, id: SagaId) -> Result<Option<StoredSaga>, StoreError> {
    let row: Option<SagaRow> = sqlx::query_as(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"))
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    row.map(StoredSaga::try_from).transpose()
}

/// Whether any saga owes another an input (a cheap look before a transaction that locks).
pub(crate) async fn any_inputs(pool: &sqlx::PgPool) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM saga_inputs)")
        .fetch_one(pool)
        .await?)
}

/// Whether any saga's wake-up time has come: one lookup in the `wake_at` index, no transaction
/// and no lock, so the timer's idle ticks cost one round trip.
pub(crate) async fn any_due(pool: &sqlx::PgPool, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(ANY_DUE).bind(now).fetch_one(pool).await?)
}

/// [`any_due`]'s statement: the earliest wake-up by the `wake_at` index, compared after. Written
/// as `EXISTS (… WHERE wake_at <= $1)`, a table not yet analyzed was read whole (1.7 ms a tick at
/// 3,000 sagas, `pg_stat_statements`); an ordered `LIMIT 1` takes the index whatever the
/// statistics (tested below, `plans`).
pub(crate) const ANY_DUE: &str = "SELECT coalesce((SELECT wake_at FROM sagas WHERE wake_at IS NOT NULL \
                           ORDER BY wake_at LIMIT 1) <= $1, false)";

/// Locks up to `limit` sagas whose wake-up time has come, skipping those another replica holds.
pub(crate) async fn lock_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<StoredSaga>, StoreError> {
    let rows: Vec<SagaRow> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM sagas WHERE wake_at <= $1 ORDER BY wake_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(StoredSaga::try_from).collect()
}

/// The saga holding an idempotency key, with the hash of the request that created it.
pub(crate) async fn find_by_key(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<(SagaId, Vec<u8>)>, StoreError> {
    let row: Option<(Uuid, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT id, request_hash FROM sagas WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(id, hash)| (SagaId::from_uuid(id), hash.unwrap_or_default())))
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(crate) struct HistoryEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub actor: String,
    pub data: Json<Value>,
}

pub(crate) async fn history(conn: &mut PgConnection, id: SagaId) -> Result<Vec<HistoryEntry>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, at, kind, actor, data FROM saga_events WHERE saga_id = $1 ORDER BY id")
            .bind(id.as_uuid())
            .fetch_all(conn)
            .await?,
    )
}

/// Query plans that must not depend on statistics, against a real database: statements that run
/// all the time read by an index even on a table PostgreSQL has not analyzed yet (a new
/// deployment's first minutes, or a table that grew faster than autovacuum looks).
#[cfg(test)]
mod plans {
    use super::{ANY_DUE, any_due};
    use crate::startup::MIGRATOR;
    use chrono::Utc;
    use saga_runtime::testing::{assert_never_analyzed, fresh_database};
    use serde_json::Value;

    /// Node types of a JSON plan, depth first.
    fn node_types(plan: &Value, out: &mut Vec<String>) {
        if let Some(t) = plan.get("Node Type").and_then(Value::as_str) {
            out.push(t.to_owned());
        }
        for child in plan.get("Plans").and_then(Value::as_array).into_iter().flatten() {
            node_types(child, out);
        }
    }

    #[tokio::test]
    async fn the_timer_tick_reads_the_wake_index_on_a_table_never_analyzed() {
        let (pool, _) = fresh_database(&MIGRATOR).await;
        // No autovacuum (so no autoanalyze) on this table: the planner only knows its size on disk.
        sqlx::query("ALTER TABLE sagas SET (autovacuum_enabled = false)")
            .execute(&pool)
            .await
            .unwrap();
        // 3,000 finished sagas (no wake-up) and 30 waiting, with step records of a realistic size.
        sqlx::query(
            "INSERT INTO sagas (id, saga_type, definition_version, state, version, context, steps, \
                                wake_at, created_at, updated_at) \
             SELECT gen_random_uuid(), 'register_user', 1, \
                    CASE WHEN g % 100 = 0 THEN 'running' ELSE 'completed' END, 1, '{}', \
                    (SELECT jsonb_agg(repeat('x', 100)) FROM generate_series(1, 10)), \
                    CASE WHEN g % 100 = 0 THEN now() + interval '1 hour' END, now(), now() \
             FROM generate_series(1, 3000) AS g",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert_never_analyzed(&pool, "sagas").await;

        let explained: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {}", ANY_DUE))
            .bind(Utc::now())
            .fetch_one(&pool)
            .await
            .unwrap();
        let mut nodes = Vec::new();
        node_types(&explained[0]["Plan"], &mut nodes);
        assert!(
            nodes.iter().any(|n| n.starts_with("Index")) && !nodes.iter().any(|n| n == "Seq Scan"),
            "the timer's tick must read the wake_at index, not the table: {nodes:?}"
        );
        assert!(!any_due(&pool, Utc::now()).await.unwrap(), "nothing is due yet");
        assert!(
            any_due(&pool, Utc::now() + chrono::Duration::hours(2))
                .await
                .unwrap(),
            "due once the hour has passed"
        );
    }
}
