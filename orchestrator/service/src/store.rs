//! PostgreSQL persistence of sagas and their history.
//!
//! A saga is one row: state columns for queries plus the engine's step records as JSONB, and a
//! `version` for optimistic concurrency: every update names the version it read and fails with
//! [`StoreError::Conflict`] if someone else wrote in between. Decisions become rows in one way,
//! [`commit`], inside the caller's transaction, so a saga's row, its history events and its
//! outbox rows commit together or not at all.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use saga_engine::{Event, Saga, SagaId, SagaState, StepRecord};
use saga_runtime::outbox::{self, OutboxMessage};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
}

/// A saga as loaded, with its concurrency token.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSaga {
    pub saga: Saga,
    pub version: i64,
    pub idempotency_key: Option<String>,
    /// W3C trace context (`traceparent`, `tracestate`) of the request that started the saga.
    pub trace_context: BTreeMap<String, String>,
}

#[derive(sqlx::FromRow)]
struct SagaRow {
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
}

const SAGA_COLUMNS: &str = "id, saga_type, definition_version, state, version, idempotency_key, context, steps, \
                            failure_reason, created_at, updated_at, trace_context";

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
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            version: r.version,
            idempotency_key: r.idempotency_key,
            trace_context: r.trace_context.0,
        })
    }
}

/// One saga's share of a batch of decisions: its row (inserted, updated from the version it was
/// read at, or left as it is), the history events the decisions recorded and the outbox rows of
/// the commands they issued (each already carrying the trace context it continues).
#[derive(Debug, Clone)]
pub struct SagaWrite<'a> {
    pub saga: &'a Saga,
    pub row: RowWrite<'a>,
    /// The name of the step the saga is at (for queries), if any.
    pub current_step: Option<String>,
    pub events: Vec<NewEvent<'a>>,
    pub messages: Vec<OutboxMessage>,
}

/// What happens to a saga row.
#[derive(Debug, Clone, Copy)]
pub enum RowWrite<'a> {
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
pub struct NewEvent<'a> {
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
pub async fn commit(conn: &mut PgConnection, writes: &[SagaWrite<'_>]) -> Result<Vec<bool>, StoreError> {
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
    outbox::enqueue(&mut *conn, &messages).await?;
    Ok(written)
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
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO sagas (id, saga_type, definition_version, state, version, idempotency_key, request_hash, \
         context, steps, current_step, failure_reason, wake_at, created_at, updated_at, trace_context) \
         SELECT id, saga_type, definition_version, state, 1, idempotency_key, request_hash, context, steps, \
                current_step, failure_reason, wake_at, created_at, created_at, trace_context \
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::bytea[], $7::jsonb[], \
                     $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::jsonb[]) \
              WITH ORDINALITY AS n(id, saga_type, definition_version, state, idempotency_key, request_hash, \
                     context, steps, current_step, failure_reason, wake_at, created_at, trace_context, ord) \
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

/// Loads and locks the given sagas (in id order, so concurrent batches never deadlock). Missing
/// ids are simply absent from the result.
pub async fn lock_many(conn: &mut PgConnection, ids: &[SagaId]) -> Result<Vec<StoredSaga>, StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|i| i.as_uuid()).collect();
    let rows: Vec<SagaRow> = sqlx::query_as(&format!(
        "SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(StoredSaga::try_from).collect()
}

pub async fn load(conn: &mut PgConnection, id: SagaId) -> Result<Option<StoredSaga>, StoreError> {
    let row: Option<SagaRow> = sqlx::query_as(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"))
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    row.map(StoredSaga::try_from).transpose()
}

/// Whether any saga's wake-up time has come: one lookup in the `wake_at` index, no transaction
/// and no lock, so the timer's idle ticks cost one round trip.
pub async fn any_due(pool: &sqlx::PgPool, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(ANY_DUE).bind(now).fetch_one(pool).await?)
}

/// [`any_due`]'s statement: the earliest wake-up by the `wake_at` index, compared after. Written
/// as `EXISTS (… WHERE wake_at <= $1)`, a table not yet analyzed was read whole (1.7 ms a tick at
/// 3,000 sagas, `pg_stat_statements`); an ordered `LIMIT 1` takes the index whatever the
/// statistics (tested in tests/api/plans.rs).
pub const ANY_DUE: &str = "SELECT coalesce((SELECT wake_at FROM sagas WHERE wake_at IS NOT NULL \
                           ORDER BY wake_at LIMIT 1) <= $1, false)";

/// Locks up to `limit` sagas whose wake-up time has come, skipping those another replica holds.
pub async fn lock_due(
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
pub async fn find_by_key(
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

/// Scrape-time gauges of the saga table: `sagas_by_state{saga_type,state}` for the states that
/// can still need attention (running, compensating, parked as failed) and
/// `saga_oldest_in_state_seconds{state}`, how long the least recently changed running or
/// compensating saga has been waiting. Both read indexes (`sagas_state_id`); a failed read leaves
/// the last values.
pub async fn sample_gauges(pool: sqlx::PgPool) {
    let counts: Result<Vec<(String, String, i64)>, _> = sqlx::query_as(
        "SELECT saga_type, state, count(*) FROM sagas \
         WHERE state IN ('running', 'compensating', 'failed') GROUP BY saga_type, state",
    )
    .fetch_all(&pool)
    .await;
    if let Ok(counts) = counts {
        // States with no saga left must read 0, not keep their last count.
        let mut seen = std::collections::HashSet::new();
        for (saga_type, state, n) in counts {
            seen.insert((saga_type.clone(), state.clone()));
            metrics::gauge!("sagas_by_state", "saga_type" => saga_type, "state" => state).set(n as f64);
        }
        let mut known = KNOWN_GAUGES.lock().unwrap_or_else(|e| e.into_inner());
        for (saga_type, state) in known.iter().filter(|k| !seen.contains(*k)) {
            metrics::gauge!("sagas_by_state", "saga_type" => saga_type.clone(), "state" => state.clone())
                .set(0.0);
        }
        known.extend(seen);
    }
    let oldest: Result<Vec<(String, f64)>, _> = sqlx::query_as(
        "SELECT s.state, COALESCE((SELECT extract(epoch FROM clock_timestamp() - min(updated_at))::float8 \
                                   FROM sagas WHERE state = s.state), 0) \
         FROM unnest(ARRAY['running', 'compensating']) AS s(state)",
    )
    .fetch_all(&pool)
    .await;
    if let Ok(oldest) = oldest {
        for (state, secs) in oldest {
            metrics::gauge!("saga_oldest_in_state_seconds", "state" => state).set(secs);
        }
    }
}

/// Every (type, state) `sagas_by_state` has reported, so one that empties is set back to 0.
static KNOWN_GAUGES: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// One history entry.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HistoryEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub actor: String,
    pub data: Json<Value>,
}

pub async fn history(conn: &mut PgConnection, id: SagaId) -> Result<Vec<HistoryEntry>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, at, kind, actor, data FROM saga_events WHERE saga_id = $1 ORDER BY id")
            .bind(id.as_uuid())
            .fetch_all(conn)
            .await?,
    )
}

/// Filters for [`list`]. Results are newest first. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    pub saga_type: Option<String>,
    pub state: Option<SagaState>,
    pub current_step: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub updated_after: Option<DateTime<Utc>>,
    pub updated_before: Option<DateTime<Utc>>,
    /// Inclusive id range (from an id prefix; see [`id_range`]).
    pub ids: Option<(Uuid, Uuid)>,
    pub idempotency_key: Option<String>,
    /// Continue after this saga (the cursor): older ones when newest first, newer ones when oldest first.
    pub cursor: Option<SagaId>,
    /// Oldest first instead of newest first.
    pub ascending: bool,
}

impl ListFilter {
    /// Whether a saga with these attributes matches (everything but the cursor and order).
    #[allow(clippy::too_many_arguments)]
    pub fn matches(
        &self,
        id: Uuid,
        saga_type: &str,
        state: &str,
        current_step: Option<&str>,
        idempotency_key: Option<&str>,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> bool {
        self.saga_type.as_deref().is_none_or(|t| t == saga_type)
            && self.state.is_none_or(|s| s.as_str() == state)
            && self
                .current_step
                .as_deref()
                .is_none_or(|s| Some(s) == current_step)
            && self.created_after.is_none_or(|t| created_at >= t)
            && self.created_before.is_none_or(|t| created_at < t)
            && self.updated_after.is_none_or(|t| updated_at >= t)
            && self.updated_before.is_none_or(|t| updated_at < t)
            && self.ids.is_none_or(|(lo, hi)| lo <= id && id <= hi)
            && self
                .idempotency_key
                .as_deref()
                .is_none_or(|k| Some(k) == idempotency_key)
    }
}

/// The smallest UUIDv7 minted at or after `t` (ids sort by their creation millisecond).
fn first_id_at(t: DateTime<Utc>) -> Uuid {
    Uuid::from_u128(u128::from(t.timestamp_millis().max(0) as u64) << 80)
}

/// The inclusive range of ids starting with `prefix` (hex digits, dashes ignored), so a prefix
/// search is an index range scan.
pub fn id_range(prefix: &str) -> Result<(Uuid, Uuid), String> {
    let hex: String = prefix.chars().filter(|c| *c != '-').collect();
    if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{}` is not the start of a saga id (1-32 hex digits)",
            prefix.chars().take(40).collect::<String>()
        ));
    }
    let pad = |fill: char| {
        let full = format!("{hex}{}", fill.to_string().repeat(32 - hex.len()));
        Uuid::parse_str(&full).map_err(|e| e.to_string())
    };
    Ok((pad('0')?, pad('f')?))
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct SagaSummary {
    pub id: Uuid,
    pub saga_type: String,
    pub state: String,
    pub current_step: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter,
    limit: i64,
) -> Result<Vec<SagaSummary>, StoreError> {
    let mut q = QueryBuilder::new(
        "SELECT id, saga_type, state, current_step, failure_reason, created_at, updated_at FROM sagas WHERE true",
    );
    if let Some(t) = &filter.saga_type {
        q.push(" AND saga_type = ").push_bind(t);
    }
    if let Some(s) = filter.state {
        q.push(" AND state = ").push_bind(s.as_str());
    }
    if let Some(step) = &filter.current_step {
        q.push(" AND current_step = ").push_bind(step);
    }
    // Creation times bound the (time-ordered) ids too, so a time range is an index range scan.
    if let Some(t) = filter.created_after {
        q.push(" AND created_at >= ").push_bind(t);
        q.push(" AND id >= ")
            .push_bind(first_id_at(t - chrono::TimeDelta::seconds(1)));
    }
    if let Some(t) = filter.created_before {
        q.push(" AND created_at < ").push_bind(t);
        q.push(" AND id < ")
            .push_bind(first_id_at(t + chrono::TimeDelta::seconds(1)));
    }
    if let Some(t) = filter.updated_after {
        q.push(" AND updated_at >= ").push_bind(t);
    }
    if let Some(t) = filter.updated_before {
        q.push(" AND updated_at < ").push_bind(t);
    }
    if let Some((lo, hi)) = filter.ids {
        q.push(" AND id BETWEEN ")
            .push_bind(lo)
            .push(" AND ")
            .push_bind(hi);
    }
    if let Some(k) = &filter.idempotency_key {
        q.push(" AND idempotency_key = ").push_bind(k);
    }
    match (filter.cursor, filter.ascending) {
        (Some(c), false) => {
            q.push(" AND id < ").push_bind(c.as_uuid());
        }
        (Some(c), true) => {
            q.push(" AND id > ").push_bind(c.as_uuid());
        }
        (None, _) => {}
    }
    q.push(if filter.ascending {
        " ORDER BY id ASC"
    } else {
        " ORDER BY id DESC"
    });
    q.push(" LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_prefixes_become_inclusive_ranges() {
        let (lo, hi) = id_range("01a2-003c").expect("valid");
        assert_eq!(lo.to_string(), "01a2003c-0000-0000-0000-000000000000");
        assert_eq!(hi.to_string(), "01a2003c-ffff-ffff-ffff-ffffffffffff");
        assert!(id_range("xyz").is_err());
        assert!(id_range("").is_err());
        assert!(id_range(&"a".repeat(33)).is_err());
    }

    #[test]
    fn creation_times_bound_v7_ids() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let before = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64 - 1,
            999_000_000,
        ));
        let at = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            t.timestamp() as u64,
            0,
        ));
        assert!(before < first_id_at(t) && first_id_at(t) <= at);
    }

    #[test]
    fn filters_match_in_memory_like_in_sql() {
        let now = Utc::now();
        let id = Uuid::now_v7();
        let f = ListFilter {
            saga_type: Some("register_user".into()),
            state: Some(SagaState::Failed),
            current_step: Some("create_user".into()),
            ..ListFilter::default()
        };
        assert!(f.matches(id, "register_user", "failed", Some("create_user"), None, now, now));
        assert!(!f.matches(
            id,
            "register_user",
            "failed",
            Some("create_author"),
            None,
            now,
            now
        ));
        assert!(!f.matches(id, "publish_post", "failed", Some("create_user"), None, now, now));
        let later = ListFilter {
            created_after: Some(now + chrono::TimeDelta::seconds(1)),
            ..ListFilter::default()
        };
        assert!(!later.matches(id, "x", "running", None, None, now, now));
    }
}
