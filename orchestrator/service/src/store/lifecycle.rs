//! A saga's life after its end: its business keys as indexed, legal holds, and retention (the
//! removal of finished sagas with everything recorded about them).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use saga_engine::SagaId;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::StoreError;

/// A saga's indexed business keys (name, value), by name.
pub(crate) async fn keys_of(
    conn: &mut PgConnection,
    id: SagaId,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT name, value FROM saga_keys WHERE saga_id = $1 ORDER BY name, value")
            .bind(id.as_uuid())
            .fetch_all(conn)
            .await?,
    )
}

/// A legal hold: who placed it, when and why.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub(crate) struct Hold {
    pub operator: String,
    pub reason: String,
    pub placed_at: DateTime<Utc>,
}

pub(crate) async fn hold_of(conn: &mut PgConnection, id: SagaId) -> Result<Option<Hold>, StoreError> {
    Ok(
        sqlx::query_as("SELECT operator, reason, placed_at FROM saga_holds WHERE saga_id = $1")
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await?,
    )
}

/// What placing or releasing a hold did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HoldChange {
    /// Done and recorded in the saga's history; the hold placed or released.
    Done(Hold),
    /// Nothing to do: a hold is already placed (this one), or there is none to release.
    Unchanged(Option<Hold>),
    /// No such saga (never was, or retention removed it).
    NoSaga,
}

/// Places a legal hold on a saga, recorded in its history. The saga row is locked first (`FOR KEY
/// SHARE`), so a hold and retention never pass each other: retention skips a saga locked here,
/// and re-checks holds after locking its batch (see [`remove_expired`]).
pub(crate) async fn place_hold(
    conn: &mut PgConnection,
    id: SagaId,
    operator: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<HoldChange, StoreError> {
    let mut tx = conn.begin().await?;
    if !lock_saga(&mut tx, id).await? {
        return Ok(HoldChange::NoSaga);
    }
    let placed: Option<Hold> = sqlx::query_as(
        "INSERT INTO saga_holds (saga_id, operator, reason, placed_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (saga_id) DO NOTHING RETURNING operator, reason, placed_at",
    )
    .bind(id.as_uuid())
    .bind(operator)
    .bind(reason)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(hold) = placed else {
        let existing = hold_of(&mut tx, id).await?;
        return Ok(HoldChange::Unchanged(existing));
    };
    record(
        &mut tx,
        id,
        at,
        "hold_placed",
        &format!("operator:{operator}"),
        json!({ "reason": reason }),
    )
    .await?;
    tx.commit().await?;
    Ok(HoldChange::Done(hold))
}

/// Releases a saga's legal hold, recorded in its history (with the hold it ends).
pub(crate) async fn release_hold(
    conn: &mut PgConnection,
    id: SagaId,
    operator: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<HoldChange, StoreError> {
    let mut tx = conn.begin().await?;
    if !lock_saga(&mut tx, id).await? {
        return Ok(HoldChange::NoSaga);
    }
    let released: Option<Hold> =
        sqlx::query_as("DELETE FROM saga_holds WHERE saga_id = $1 RETURNING operator, reason, placed_at")
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(hold) = released else {
        return Ok(HoldChange::Unchanged(None));
    };
    let data = json!({
        "reason": reason,
        "hold": { "operator": hold.operator, "reason": hold.reason, "placed_at": hold.placed_at },
    });
    record(
        &mut tx,
        id,
        at,
        "hold_released",
        &format!("operator:{operator}"),
        data,
    )
    .await?;
    tx.commit().await?;
    Ok(HoldChange::Done(hold))
}

/// Locks a saga's row against removal (not against the engine's updates); false if it is gone.
async fn lock_saga(conn: &mut PgConnection, id: SagaId) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM sagas WHERE id = $1 FOR KEY SHARE")
        .bind(id.as_uuid())
        .fetch_optional(conn)
        .await?;
    Ok(found.is_some())
}

/// Appends one history event written by the store itself (not by an engine decision).
async fn record(
    conn: &mut PgConnection,
    id: SagaId,
    at: DateTime<Utc>,
    kind: &str,
    actor: &str,
    data: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO saga_events (saga_id, at, kind, actor, data) VALUES ($1, $2, $3, $4, $5)")
        .bind(id.as_uuid())
        .bind(at)
        .bind(kind)
        .bind(actor)
        .bind(sqlx::types::Json(data))
        .execute(conn)
        .await?;
    Ok(())
}

/// Which finished sagas retention removes: those that ended before a cutoff, per saga type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expiry {
    /// Sagas of a type without a cutoff of its own that ended before this.
    pub default_cutoff: DateTime<Utc>,
    /// Saga types with a cutoff of their own.
    pub by_type: Vec<(String, DateTime<Utc>)>,
}

/// A batch of expired sagas, locked in the caller's transaction ([`select_expired`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Every saga to remove: whole families, roots and the sagas below them.
    pub doomed: Vec<Uuid>,
    /// Where the batch stopped (the last candidate's end time and id): the next batch of the
    /// same pass goes on after it. `None`: no candidates were left; the pass is over.
    pub last: Option<(DateTime<Utc>, Uuid)>,
}

/// What [`delete_sagas`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    pub sagas: u64,
    pub events: u64,
    pub keys: u64,
}

/// Locks up to `limit` expired saga families after `after` (in order of end time), in the
/// caller's transaction, for [`delete_sagas`]: a saga that ended
/// (completed or compensated) before its type's cutoff, is not a child (a child goes with its
/// parent), and neither it nor any saga below it is running, failed, held or owed an input —
/// with its descendants. Failed sagas are never removed: they wait for an operator.
///
/// Candidates are locked `FOR UPDATE SKIP LOCKED` (a saga being decided on, or being held right
/// now, is skipped, never waited for); the delete then re-checks every condition in a new
/// statement, which sees whatever committed before the locks were taken — a hold placed, an
/// operator's action — so nothing that stopped qualifying is removed. A family kept (a saga
/// below the root is held, or busy) is passed over: the pass goes on after it rather than
/// finding it first again.
pub(crate) async fn select_expired(
    tx: &mut PgConnection,
    expiry: &Expiry,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Expired, StoreError> {
    let (types, cutoffs): (Vec<String>, Vec<DateTime<Utc>>) = expiry.by_type.iter().cloned().unzip();
    // The first bound on `updated_at` (the latest cutoff of all) lets the scan read the
    // `sagas_finished` index; the second is the saga's own type's.
    let (after_at, after_id) = after.unzip();
    let candidates: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT s.id, s.updated_at FROM sagas s \
             LEFT JOIN UNNEST($2::text[], $3::timestamptz[]) AS t(saga_type, cutoff) ON t.saga_type = s.saga_type \
         WHERE s.state IN ('completed', 'compensated') \
           AND s.updated_at < (SELECT greatest($1, max(c)) FROM UNNEST($3::timestamptz[]) AS c) \
           AND s.updated_at < coalesce(t.cutoff, $1) AND s.parent_id IS NULL \
           AND ($5::timestamptz IS NULL OR (s.updated_at, s.id) > ($5, $6)) \
           AND NOT EXISTS (SELECT 1 FROM saga_holds h WHERE h.saga_id = s.id) \
         ORDER BY s.updated_at, s.id LIMIT $4 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(expiry.default_cutoff)
    .bind(&types)
    .bind(&cutoffs)
    .bind(limit)
    .bind(after_at)
    .bind(after_id)
    .fetch_all(&mut *tx)
    .await?;
    let last = candidates.last().map(|(id, at)| (*at, *id));
    if candidates.is_empty() {
        return Ok(Expired::default());
    }
    let roots: Vec<Uuid> = candidates.iter().map(|(id, _)| *id).collect();
    // Every saga of the candidates' families (a root and the sagas below it), each with whether
    // it may go. A new statement: it sees what committed while the roots were being locked.
    let family: Vec<(Uuid, Uuid, bool)> = sqlx::query_as(
        "WITH RECURSIVE fam(root, id) AS ( \
             SELECT id, id FROM sagas WHERE id = ANY($1) \
             UNION ALL SELECT fam.root, s.id FROM sagas s JOIN fam ON s.parent_id = fam.id) \
         SELECT fam.root, fam.id, \
                s.state IN ('completed', 'compensated') \
                AND NOT EXISTS (SELECT 1 FROM saga_holds h WHERE h.saga_id = s.id) \
                AND NOT EXISTS (SELECT 1 FROM saga_inputs i WHERE i.saga_id = s.id) \
         FROM fam JOIN sagas s ON s.id = fam.id",
    )
    .bind(&roots)
    .fetch_all(&mut *tx)
    .await?;
    let blocked: HashSet<Uuid> = family
        .iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(root, _, _)| *root)
        .collect();
    let members: Vec<Uuid> = family
        .iter()
        .filter(|(root, _, _)| !blocked.contains(root))
        .map(|(_, id, _)| *id)
        .collect();
    // Lock the sagas below the roots too, re-checking them; one that is busy or stopped
    // qualifying keeps its whole family.
    let locked: HashSet<Uuid> = sqlx::query_scalar::<_, Uuid>(
        "SELECT id FROM sagas WHERE id = ANY($1) AND state IN ('completed', 'compensated') \
           AND NOT EXISTS (SELECT 1 FROM saga_holds h WHERE h.saga_id = sagas.id) \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(&members)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let kept: HashSet<Uuid> = family
        .iter()
        .filter(|(root, id, _)| blocked.contains(root) || !locked.contains(id))
        .map(|(root, _, _)| *root)
        .collect();
    let doomed: Vec<Uuid> = family
        .iter()
        .filter(|(root, _, _)| !kept.contains(root))
        .map(|(_, id, _)| *id)
        .collect();
    Ok(Expired { doomed, last })
}

/// Deletes sagas with their history and keys, in the caller's transaction (retention, after
/// [`select_expired`] locked them).
pub(crate) async fn delete_sagas(tx: &mut PgConnection, ids: &[Uuid]) -> Result<Removed, StoreError> {
    let sagas = sqlx::query("DELETE FROM sagas WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let events = sqlx::query("DELETE FROM saga_events WHERE saga_id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let keys = sqlx::query("DELETE FROM saga_keys WHERE saga_id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(Removed { sagas, events, keys })
}
