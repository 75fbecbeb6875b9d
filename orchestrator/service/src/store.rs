//! PostgreSQL persistence of sagas and their history.
//!
//! A saga is one row: state columns for queries plus the engine's step records as JSONB, and a
//! `version` for optimistic concurrency: every update names the version it read and fails with
//! [`StoreError::Conflict`] if someone else wrote in between. Writes take the caller's transaction,
//! so the saga row, its history events and its outbox rows commit together or not at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use saga_engine::{Event, Saga, SagaId, SagaState, StepRecord};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A database error shared by every request of a group write.
    #[error("database error: {0}")]
    Shared(std::sync::Arc<sqlx::Error>),
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

/// What a new saga row needs besides the saga itself.
#[derive(Debug, Clone, Copy)]
pub struct NewSaga<'a> {
    pub saga: &'a Saga,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a [u8]>,
    pub current_step: Option<&'a str>,
    pub trace_context: &'a BTreeMap<String, String>,
}

/// Inserts new sagas at version 1 (one statement for all). Returns, per saga, whether it was
/// inserted: `false` means its idempotency key was taken (by an earlier saga, or by one earlier in
/// the same list).
pub async fn insert_many(conn: &mut PgConnection, new: &[NewSaga<'_>]) -> Result<Vec<bool>, StoreError> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = new.iter().map(|n| n.saga.id.as_uuid()).collect();
    let types: Vec<&str> = new.iter().map(|n| n.saga.saga_type.as_str()).collect();
    let versions: Vec<i32> = new.iter().map(|n| n.saga.definition_version as i32).collect();
    let states: Vec<&str> = new.iter().map(|n| n.saga.state.as_str()).collect();
    let keys: Vec<Option<&str>> = new.iter().map(|n| n.idempotency_key).collect();
    let hashes: Vec<Option<&[u8]>> = new.iter().map(|n| n.request_hash).collect();
    let contexts: Vec<Json<&Map<String, Value>>> = new.iter().map(|n| Json(&n.saga.context)).collect();
    let steps: Vec<Json<&Vec<StepRecord>>> = new.iter().map(|n| Json(&n.saga.steps)).collect();
    let current: Vec<Option<&str>> = new.iter().map(|n| n.current_step).collect();
    let reasons: Vec<Option<&str>> = new.iter().map(|n| n.saga.failure_reason.as_deref()).collect();
    let wakes: Vec<Option<DateTime<Utc>>> = new.iter().map(|n| n.saga.wake_at()).collect();
    let created: Vec<DateTime<Utc>> = new.iter().map(|n| n.saga.created_at).collect();
    let traces: Vec<Json<&BTreeMap<String, String>>> = new.iter().map(|n| Json(n.trace_context)).collect();
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
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    Ok(ids.iter().map(|id| inserted.contains(id)).collect())
}

/// Writes the saga if its version is still `expected_version`; returns the new version.
pub async fn update(
    conn: &mut PgConnection,
    saga: &Saga,
    expected_version: i64,
    current_step: Option<&str>,
) -> Result<i64, StoreError> {
    let new_version: Option<i64> = sqlx::query_scalar(
        "UPDATE sagas SET state = $3, version = version + 1, context = $4, steps = $5, current_step = $6, \
         failure_reason = $7, wake_at = $8, updated_at = $9 \
         WHERE id = $1 AND version = $2 RETURNING version",
    )
    .bind(saga.id.as_uuid())
    .bind(expected_version)
    .bind(saga.state.as_str())
    .bind(Json(&saga.context))
    .bind(Json(&saga.steps))
    .bind(current_step)
    .bind(&saga.failure_reason)
    .bind(saga.wake_at())
    .bind(saga.updated_at)
    .fetch_optional(conn)
    .await?;
    new_version.ok_or(StoreError::Conflict(saga.id))
}

/// Writes several sagas, each only if its version is still the one given; one statement. A
/// [`StoreError::Conflict`] names one saga that changed (the caller retries the whole batch).
pub async fn update_many(conn: &mut PgConnection, updates: &[SagaUpdate<'_>]) -> Result<(), StoreError> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.saga.id.as_uuid()).collect();
    let versions: Vec<i64> = updates.iter().map(|u| u.expected_version).collect();
    let states: Vec<&str> = updates.iter().map(|u| u.saga.state.as_str()).collect();
    let contexts: Vec<Json<&Map<String, Value>>> = updates.iter().map(|u| Json(&u.saga.context)).collect();
    let steps: Vec<Json<&Vec<StepRecord>>> = updates.iter().map(|u| Json(&u.saga.steps)).collect();
    let current: Vec<Option<&str>> = updates.iter().map(|u| u.current_step).collect();
    let reasons: Vec<Option<&str>> = updates.iter().map(|u| u.saga.failure_reason.as_deref()).collect();
    let wakes: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.saga.wake_at()).collect();
    let updated: Vec<DateTime<Utc>> = updates.iter().map(|u| u.saga.updated_at).collect();
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

/// One saga of [`update_many`].
#[derive(Debug, Clone, Copy)]
pub struct SagaUpdate<'a> {
    pub saga: &'a Saga,
    pub expected_version: i64,
    pub current_step: Option<&'a str>,
}

/// A history event to append with [`append_many`].
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub saga: SagaId,
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub event: &'a Event,
}

/// Appends the history events of several sagas, in the order given (one statement for all).
pub async fn append_many(conn: &mut PgConnection, events: &[NewEvent<'_>]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.saga.as_uuid()).collect();
    let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.at).collect();
    let actors: Vec<&str> = events.iter().map(|e| e.actor).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.kind()).collect();
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e.event).unwrap_or_else(|_| Value::Object(Map::new())))
        .collect();
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

/// Appends history events (one statement for all).
pub async fn append_events(
    conn: &mut PgConnection,
    saga: SagaId,
    at: DateTime<Utc>,
    actor: &str,
    events: &[Event],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or_else(|_| Value::Object(Map::new())))
        .collect();
    sqlx::query(
        "INSERT INTO saga_events (saga_id, at, actor, kind, data) \
         SELECT $1, $2, $3, k, d FROM UNNEST($4::text[], $5::jsonb[]) WITH ORDINALITY AS e(k, d, n) ORDER BY n",
    )
    .bind(saga.as_uuid())
    .bind(at)
    .bind(actor)
    .bind(kinds)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn load(conn: &mut PgConnection, id: SagaId) -> Result<Option<StoredSaga>, StoreError> {
    let row: Option<SagaRow> = sqlx::query_as(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = $1"))
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    row.map(StoredSaga::try_from).transpose()
}

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
