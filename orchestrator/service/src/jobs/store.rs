//! The job tables. Times are the database's (`now()`), so replicas with skewed clocks agree on
//! when a lease lapsed.

use std::time::Duration;

use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Job, JobError, JobItem, JobParams, JobState};

const JOB_COLUMNS: &str = "id, kind, state, operator, reason, params, cursor, processed, counts, owner, \
                           lease_until, last_error, cancelled_by, cancel_reason, paused_by, pause_reason, \
                           created_at, updated_at, finished_at";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    kind: String,
    state: String,
    operator: String,
    reason: String,
    params: Json<serde_json::Value>,
    cursor: Option<Uuid>,
    processed: i32,
    counts: Json<std::collections::BTreeMap<String, u32>>,
    owner: Option<String>,
    lease_until: Option<chrono::DateTime<chrono::Utc>>,
    last_error: Option<String>,
    cancelled_by: Option<String>,
    cancel_reason: Option<String>,
    paused_by: Option<String>,
    pause_reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TryFrom<JobRow> for Job {
    type Error = JobError;

    fn try_from(r: JobRow) -> Result<Self, JobError> {
        let corrupt = |why: String| JobError::Corrupt { id: r.id, why };
        let state = JobState::parse(&r.state).ok_or_else(|| corrupt(format!("state `{}`", r.state)))?;
        let params: JobParams =
            serde_json::from_value(r.params.0.clone()).map_err(|e| corrupt(format!("params: {e}")))?;
        Ok(Job {
            id: r.id,
            kind: r.kind,
            state,
            operator: r.operator,
            reason: r.reason,
            params,
            cursor: r.cursor,
            processed: u32::try_from(r.processed).unwrap_or(0),
            counts: r.counts.0,
            owner: r.owner,
            lease_until: r.lease_until,
            last_error: r.last_error,
            cancelled_by: r.cancelled_by,
            cancel_reason: r.cancel_reason,
            paused_by: r.paused_by,
            pause_reason: r.pause_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

fn job(row: Option<JobRow>) -> Result<Option<Job>, JobError> {
    row.map(Job::try_from).transpose()
}

/// A new running job, not yet claimed by any replica.
pub(crate) async fn create(
    pool: &PgPool,
    kind: &str,
    operator: &str,
    reason: &str,
    params: &JobParams,
) -> Result<Job, JobError> {
    let params = serde_json::to_value(params).map_err(|e| JobError::Corrupt {
        id: Uuid::nil(),
        why: format!("params: {e}"),
    })?;
    let row: JobRow = sqlx::query_as(&format!(
        "INSERT INTO operator_jobs (id, kind, state, operator, reason, params, created_at, updated_at) \
         VALUES ($1, $2, 'running', $3, $4, $5, now(), now()) RETURNING {JOB_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(operator)
    .bind(reason)
    .bind(Json(params))
    .fetch_one(pool)
    .await?;
    row.try_into()
}

pub(crate) async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Job, JobError> {
    let row = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM operator_jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    job(row)?.ok_or(JobError::NotFound(id))
}

/// Jobs newest first, after `before` (the cursor) when given.
pub(crate) async fn list(
    conn: &mut PgConnection,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Job>, JobError> {
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM operator_jobs WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Job::try_from).collect()
}

/// A job's items after `after` (a sequence number), in the order handled.
pub(crate) async fn items(
    conn: &mut PgConnection,
    id: Uuid,
    after: i32,
    limit: i64,
) -> Result<Vec<JobItem>, JobError> {
    Ok(sqlx::query_as(
        "SELECT seq, saga_id, outcome, detail, commands, at FROM operator_job_items \
         WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Cancels a running or paused job. The replica working it stops before its next item (that
/// item's transaction finds the job cancelled and rolls back).
pub(crate) async fn cancel(pool: &PgPool, id: Uuid, operator: &str, reason: &str) -> Result<Job, JobError> {
    let row = sqlx::query_as(&format!(
        "UPDATE operator_jobs SET state = 'cancelled', cancelled_by = $2, cancel_reason = $3, \
         owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND state IN ('running', 'paused') RETURNING {JOB_COLUMNS}"
    ))
    .bind(id)
    .bind(operator)
    .bind(reason)
    .fetch_optional(pool)
    .await?;
    settled(pool, id, job(row)?).await
}

/// Pauses a running job (`pause`) or resumes a paused one. A paused job keeps its place: the
/// replica that claims it after it is resumed goes on after the last item handled.
pub(crate) async fn pause(
    pool: &PgPool,
    id: Uuid,
    pause: bool,
    operator: &str,
    reason: &str,
) -> Result<Job, JobError> {
    let (from, to) = if pause {
        ("running", "paused")
    } else {
        ("paused", "running")
    };
    let row = sqlx::query_as(&format!(
        "UPDATE operator_jobs SET state = $4, paused_by = $2, pause_reason = $3, \
         owner = NULL, lease_until = NULL, updated_at = now() \
         WHERE id = $1 AND state = $5 RETURNING {JOB_COLUMNS}"
    ))
    .bind(id)
    .bind(operator)
    .bind(reason)
    .bind(to)
    .bind(from)
    .fetch_optional(pool)
    .await?;
    settled(pool, id, job(row)?).await
}

/// The job a state change returned, or why there was none: no such job, or one in another state.
async fn settled(pool: &PgPool, id: Uuid, changed: Option<Job>) -> Result<Job, JobError> {
    match changed {
        Some(job) => Ok(job),
        None => {
            let existing = get(&mut *pool.acquire().await?, id).await?;
            Err(JobError::Finished {
                id,
                state: existing.state,
            })
        }
    }
}

/// Takes the oldest running job nobody holds (or whose holder's lease lapsed) for `owner`.
pub(crate) async fn claim(pool: &PgPool, owner: &str, lease: Duration) -> Result<Option<Job>, JobError> {
    let row = sqlx::query_as(&format!(
        "UPDATE operator_jobs SET owner = $1, lease_until = now() + $2 * interval '1 millisecond', \
         updated_at = now() \
         WHERE id = (SELECT id FROM operator_jobs \
                     WHERE state = 'running' AND (lease_until IS NULL OR lease_until < now()) \
                     ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(owner)
    .bind(millis(lease))
    .fetch_optional(pool)
    .await?;
    job(row)
}

/// Extends `owner`'s lease; false if the job is no longer its own (cancelled, or claimed by
/// another replica after the lease lapsed).
pub(crate) async fn renew(pool: &PgPool, id: Uuid, owner: &str, lease: Duration) -> Result<bool, JobError> {
    let renewed = sqlx::query(
        "UPDATE operator_jobs SET lease_until = now() + $3 * interval '1 millisecond' \
         WHERE id = $1 AND owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(millis(lease))
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Gives the job back (a replica shutting down): another replica may claim it at once.
pub(crate) async fn release(pool: &PgPool, id: Uuid, owner: &str) -> Result<(), JobError> {
    sqlx::query(
        "UPDATE operator_jobs SET owner = NULL, lease_until = NULL, updated_at = now() \
         WHERE id = $1 AND owner = $2",
    )
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the job completed, if it is still `owner`'s and running.
pub(crate) async fn complete(pool: &PgPool, id: Uuid, owner: &str) -> Result<bool, JobError> {
    let done = sqlx::query(
        "UPDATE operator_jobs SET state = 'completed', owner = NULL, lease_until = NULL, \
         finished_at = now(), updated_at = now() \
         WHERE id = $1 AND owner = $2 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records what holds the job up (it is retried).
pub(crate) async fn note_error(pool: &PgPool, id: Uuid, owner: &str, error: &str) -> Result<(), JobError> {
    sqlx::query("UPDATE operator_jobs SET last_error = $3, updated_at = now() WHERE id = $1 AND owner = $2")
        .bind(id)
        .bind(owner)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// In an item's transaction, before its effect: locks the job row if it is still `owner`'s and
/// running, and returns how many items it handled. `None`: the job was cancelled or moved to
/// another replica — the item must not be handled here.
pub(crate) async fn fence(tx: &mut PgConnection, id: Uuid, owner: &str) -> Result<Option<i32>, JobError> {
    Ok(sqlx::query_scalar(
        "SELECT processed FROM operator_jobs WHERE id = $1 AND owner = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(tx)
    .await?)
}

/// One handled item, in its transaction after its effect: the item's row, and the job's
/// progress (count, cursor, outcome counts) with its lease renewed.
pub(crate) struct Handled<'a> {
    pub(crate) seq: i32,
    pub(crate) saga_id: Uuid,
    pub(crate) outcome: &'a str,
    pub(crate) detail: &'a str,
    pub(crate) commands: serde_json::Value,
}

pub(crate) async fn record(
    tx: &mut PgConnection,
    id: Uuid,
    item: Handled<'_>,
    lease: Duration,
) -> Result<(), JobError> {
    sqlx::query(
        "WITH item AS (INSERT INTO operator_job_items (job_id, seq, saga_id, outcome, detail, commands, at) \
                       VALUES ($1, $2, $3, $4, $5, $6, now())) \
         UPDATE operator_jobs SET processed = $2, cursor = $3, \
             counts = counts || jsonb_build_object($4::text, coalesce((counts ->> $4::text)::int, 0) + 1), \
             lease_until = now() + $7 * interval '1 millisecond', last_error = NULL, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(item.seq)
    .bind(item.saga_id)
    .bind(item.outcome)
    .bind(item.detail)
    .bind(Json(item.commands))
    .bind(millis(lease))
    .execute(tx)
    .await?;
    Ok(())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
