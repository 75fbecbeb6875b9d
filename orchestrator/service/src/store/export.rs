//! The export format: one JSON document per saga, with everything recorded about it — the
//! saga's row, its business keys, its legal hold and its whole history. `sagactl export` writes
//! them as JSON lines, and retention's archive step writes the sagas it is about to remove in the
//! same format. Documented in `docs/OPERATIONS.md` ("Export and archive"); a change to it is a
//! new [`FORMAT`].

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{HistoryEntry, Hold, SAGA_COLUMNS, SagaRow, StoreError, StoredSaga};

/// The format's name and version, the first field of every document.
pub(crate) const FORMAT: &str = "saga-export/1";

/// The documents of the given sagas, in the order of `ids` (missing ones are left out): four
/// statements whatever the number of sagas.
pub(crate) async fn export_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Value>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<SagaRow> = sqlx::query_as(&format!("SELECT {SAGA_COLUMNS} FROM sagas WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut history: HashMap<Uuid, Vec<HistoryEntry>> = HashMap::new();
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT saga_id, id, at, kind, actor, data FROM saga_events WHERE saga_id = ANY($1) ORDER BY saga_id, id",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for e in events {
        history.entry(e.saga_id).or_default().push(e.entry);
    }
    let mut keys: HashMap<Uuid, Vec<Value>> = HashMap::new();
    let rows_keys: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT saga_id, name, value FROM saga_keys WHERE saga_id = ANY($1) ORDER BY saga_id, name, value",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for (saga, name, value) in rows_keys {
        keys.entry(saga)
            .or_default()
            .push(json!({"name": name, "value": value}));
    }
    let holds: HashMap<Uuid, Hold> =
        sqlx::query_as::<_, (Uuid, String, String, chrono::DateTime<chrono::Utc>)>(
            "SELECT saga_id, operator, reason, placed_at FROM saga_holds WHERE saga_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id, operator, reason, placed_at)| {
            (
                id,
                Hold {
                    operator,
                    reason,
                    placed_at,
                },
            )
        })
        .collect();
    let mut docs: HashMap<Uuid, Value> = HashMap::new();
    for row in rows {
        let stored = StoredSaga::try_from(row)?;
        let id = stored.saga.id.as_uuid();
        let doc = document(
            &stored,
            keys.remove(&id).unwrap_or_default(),
            holds.get(&id),
            history.remove(&id).unwrap_or_default(),
        );
        docs.insert(id, doc);
    }
    Ok(ids.iter().filter_map(|id| docs.remove(id)).collect())
}

/// A history event with the saga it belongs to.
#[derive(sqlx::FromRow)]
struct EventRow {
    saga_id: Uuid,
    #[sqlx(flatten)]
    entry: HistoryEntry,
}

/// One saga's document.
fn document(stored: &StoredSaga, keys: Vec<Value>, hold: Option<&Hold>, history: Vec<HistoryEntry>) -> Value {
    let s = &stored.saga;
    json!({
        "format": FORMAT,
        "saga_id": s.id,
        "saga_type": s.saga_type,
        "definition_version": s.definition_version,
        "state": s.state,
        "idempotency_key": stored.idempotency_key,
        "parent": s.parent.map(|p| json!({"saga_id": p.saga, "step": p.step})),
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "failure_reason": s.failure_reason,
        "context": s.context,
        "steps": s.steps,
        "search_keys": keys,
        "hold": hold,
        "history": history
            .iter()
            .map(|h| json!({"seq": h.id, "at": h.at, "kind": h.kind, "actor": h.actor, "data": h.data.0}))
            .collect::<Vec<_>>(),
    })
}
