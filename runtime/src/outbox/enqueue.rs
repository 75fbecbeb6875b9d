//! Writing messages into the outbox, inside the caller's transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::LANES;

/// A message to publish once the surrounding transaction commits.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The deployed topic name.
    pub topic: String,
    /// The record key; also decides the lane (per-key order is preserved).
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl OutboxMessage {
    /// The message, carrying the trace context `context` (unless it carries one already): for
    /// messages written in a batch whose work ran under different spans.
    pub fn in_trace(mut self, context: &BTreeMap<String, String>) -> Self {
        crate::trace::stamp(&mut self.headers, context);
        self
    }
}

/// The lane of a key: a stable FNV-1a hash, so every process agrees without coordination.
pub fn lane_of(key: &str) -> i16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % LANES as u32) as i16
}

/// Writes messages into the outbox as part of the caller's transaction: one statement for all.
pub async fn enqueue(conn: &mut PgConnection, messages: &[OutboxMessage]) -> sqlx::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    insert(conn, messages).await
}

/// The headers each row is written with: the message's own, and the trace context of the span
/// that writes it (the relay continues the trace from there).
fn stamped(messages: &[OutboxMessage]) -> Vec<BTreeMap<String, String>> {
    let context = crate::trace::current_headers();
    messages
        .iter()
        .map(|m| {
            let mut h = m.headers.clone();
            crate::trace::stamp(&mut h, &context);
            h
        })
        .collect()
}

// The transaction id is taken before the sequence values (the filter runs before the row's
// defaults): the relay's floor relies on it.
macro_rules! insert_sql {
    () => {
        "INSERT INTO outbox (lane, topic, key, payload, headers) \
         SELECT * FROM UNNEST($1::int2[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[]) \
         WHERE pg_current_xact_id() IS NOT NULL"
    };
}

fn bound<'q>(
    query: &'q str,
    messages: &'q [OutboxMessage],
    headers: &[BTreeMap<String, String>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let lanes: Vec<i16> = messages.iter().map(|m| lane_of(&m.key)).collect();
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<&str> = messages.iter().map(|m| m.key.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let headers: Vec<serde_json::Value> = headers
        .iter()
        .map(|h| serde_json::to_value(h).unwrap_or_default())
        .collect();
    sqlx::query(query)
        .bind(lanes)
        .bind(topics)
        .bind(keys)
        .bind(payloads)
        .bind(headers)
}

pub(super) async fn insert(conn: &mut PgConnection, messages: &[OutboxMessage]) -> sqlx::Result<()> {
    bound(insert_sql!(), messages, &stamped(messages))
        .execute(conn)
        .await?;
    Ok(())
}

/// A row [`insert_returning`] wrote: its id, `created_at`, key, and the transaction's id.
pub(super) type Written = (i64, DateTime<Utc>, String, i64);

/// Like [`insert`], returning what each row was given, in id order — the order of `messages`,
/// which the caller checks by the keys — and the headers each was written with.
pub(super) async fn insert_returning(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
) -> sqlx::Result<(Vec<Written>, Vec<BTreeMap<String, String>>)> {
    use sqlx::Row as _;
    let query = concat!(
        insert_sql!(),
        " RETURNING id, created_at, key, pg_current_xact_id()::text::int8"
    );
    let headers = stamped(messages);
    let rows = bound(query, messages, &headers).fetch_all(conn).await?;
    let mut written = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<sqlx::Result<Vec<Written>>>()?;
    written.sort_unstable_by_key(|w| w.0);
    Ok((written, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_stable_and_spread() {
        assert_eq!(
            lane_of("0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b"),
            lane_of("0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b")
        );
        let used: std::collections::HashSet<i16> = (0..1000)
            .map(|_| lane_of(&uuid::Uuid::now_v7().to_string()))
            .collect();
        assert_eq!(used.len(), LANES as usize, "uuids spread over every lane");
        assert!(used.iter().all(|l| (0..LANES).contains(l)));
    }
}
