//! The hand-over from the task that commits outbox rows to its own process's relay (see
//! [`Handoff`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::enqueue::{OutboxMessage, insert, insert_returning};
use super::lane_of;
use super::lanes::Row;

/// Most transactions handed over and not yet taken by the relay; past it, rows take the
/// table's path (a bound on memory when notifications stop coming).
const CAPACITY: usize = 4096;

/// How long a hand-over waits for its transaction's notification before it is dropped (its
/// transaction rolled back, or this relay does not listen).
pub(super) const EXPIRY: Duration = Duration::from_secs(5);

/// Rows a transaction wrote, handed to this process's relay so that it publishes them without
/// reading them back from the table.
///
/// The writer registers the rows *before* its commit, under the transaction's id; the outbox
/// trigger's notification carries that id and arrives only once the transaction committed, in
/// commit order (PostgreSQL delivers notifications of different transactions in the order they
/// committed). The relay, going through the notifications in that order, publishes a
/// transaction's rows straight from here when it holds their lanes and has read everything
/// committed before; at the first notification it has no rows for (another process wrote, or a
/// hand-over was refused), it reads the table instead, which covers that transaction and every
/// later one. So a saga's messages keep leaving in the order they were written, and the table's
/// read stays what it always was: the complete path, now for rows of other processes and for
/// rows a crash left behind.
///
/// Cloned handles share one registry. It takes rows only while a relay runs with it
/// ([`super::Relay::with_handoff`]); otherwise [`Handoff::enqueue`] is [`super::enqueue`].
#[derive(Clone, Default)]
pub struct Handoff {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    active: AtomicBool,
    pending: Mutex<HashMap<u32, Pending>>,
    published: AtomicU64,
    refused: AtomicU64,
}

/// One transaction's rows, waiting for its notification.
pub(super) struct Pending {
    pub(super) rows: Vec<Handed>,
    at: Instant,
}

/// A row handed over, with its lane.
pub(super) struct Handed {
    pub(super) lane: i16,
    pub(super) row: Row,
}

/// What a hand-over did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffStats {
    /// Rows published straight from a hand-over.
    pub published: u64,
    /// Transactions handed over whose rows took the table's path after all.
    pub refused: u64,
}

impl Handoff {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `messages` into the outbox as part of the caller's transaction, like
    /// [`super::enqueue`], and hands them to the relay, which publishes them once the
    /// transaction's commit is announced. The caller commits as usual; a rollback leaves an
    /// entry that expires unused.
    pub async fn enqueue(&self, conn: &mut PgConnection, messages: &[OutboxMessage]) -> sqlx::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        if !self.inner.active.load(Ordering::Relaxed) {
            return insert(conn, messages).await;
        }
        let (written, headers) = insert_returning(conn, messages).await?;
        let Some(&(_, _, _, txid)) = written.first() else {
            return Ok(());
        };
        // Rows take their ids in the order they are inserted, which is the order of `messages`;
        // should that ever not hold, the rows are left to the table's path.
        let in_order =
            written.len() == messages.len() && written.iter().zip(messages).all(|(w, m)| w.2 == m.key);
        if !in_order {
            self.refused(1);
            return Ok(());
        }
        let rows = messages
            .iter()
            .zip(written)
            .zip(headers)
            .map(|((m, (id, created_at, key, _)), headers)| Handed {
                lane: lane_of(&m.key),
                row: Row {
                    id,
                    topic: m.topic.clone(),
                    key,
                    payload: m.payload.clone(),
                    headers: sqlx::types::Json(headers),
                    created_at,
                    xmin: txid,
                },
            })
            .collect();
        self.register(txid, rows);
        Ok(())
    }

    /// What hand-overs did so far.
    pub fn stats(&self) -> HandoffStats {
        HandoffStats {
            published: self.inner.published.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u32, Pending>> {
        // The map is consistent after any panic: every operation is one insert or removal.
        self.inner.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, txid: i64, mut rows: Vec<Handed>) {
        let mut pending = self.pending();
        // One transaction can write the outbox more than once: its rows gather under its id.
        if let Some(p) = pending.get_mut(&short(txid)) {
            p.rows.append(&mut rows);
            return;
        }
        if pending.len() >= CAPACITY {
            drop(pending);
            self.refused(1);
            return;
        }
        pending.insert(
            short(txid),
            Pending {
                rows,
                at: Instant::now(),
            },
        );
    }

    /// The relay starts (or stops) taking rows; stopping drops what was handed over.
    pub(super) fn set_active(&self, active: bool) {
        self.inner.active.store(active, Ordering::Relaxed);
        if !active {
            self.pending().clear();
        }
    }

    /// The rows of the transaction a notification announced (its payload: the transaction id).
    pub(super) fn take(&self, payload: &str) -> Option<Pending> {
        let txid: i64 = payload.parse().ok()?;
        self.pending().remove(&short(txid))
    }

    /// The table's read returned rows these transactions wrote (by `xmin`): their hand-overs are
    /// not needed any more.
    pub(super) fn forget(&self, xmins: impl IntoIterator<Item = i64>) {
        let mut pending = self.pending();
        if pending.is_empty() {
            return;
        }
        for xmin in xmins {
            pending.remove(&short(xmin));
        }
    }

    /// Drops hand-overs older than `age` (their transaction rolled back, or no notification came).
    pub(super) fn expire(&self, age: Duration, now: Instant) {
        let mut pending = self.pending();
        let before = pending.len();
        pending.retain(|_, p| now.duration_since(p.at) < age);
        let gone = before - pending.len();
        drop(pending);
        if gone > 0 {
            self.refused(gone as u64);
        }
    }

    pub(super) fn published(&self, rows: usize) {
        self.inner.published.fetch_add(rows as u64, Ordering::Relaxed);
        metrics::counter!("outbox_handed_published_total").increment(rows as u64);
    }

    pub(super) fn refused(&self, transactions: u64) {
        self.inner.refused.fetch_add(transactions, Ordering::Relaxed);
        metrics::counter!("outbox_handed_refused_total").increment(transactions);
    }
}

/// A transaction id as a row's `xmin` shows it: its low 32 bits. Hand-overs live seconds, ids
/// repeat after four billion transactions.
fn short(txid: i64) -> u32 {
    txid as u32
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn handed(id: i64, txid: i64) -> Handed {
        Handed {
            lane: 0,
            row: Row {
                id,
                topic: "t".into(),
                key: "k".into(),
                payload: Vec::new(),
                headers: sqlx::types::Json(Default::default()),
                created_at: Utc::now(),
                xmin: txid,
            },
        }
    }

    #[test]
    fn a_transaction_is_taken_once_by_its_notification() {
        let h = Handoff::new();
        h.register(7, vec![handed(1, 7)]);
        h.register(7, vec![handed(2, 7)]);
        assert!(h.take("8").is_none(), "another transaction");
        assert!(h.take("not a transaction id").is_none());
        let rows: Vec<i64> = h
            .take("7")
            .map(|p| p.rows.iter().map(|r| r.row.id).collect())
            .unwrap_or_default();
        assert_eq!(rows, [1, 2], "both statements' rows, in order");
        assert!(h.take("7").is_none(), "taken");
    }

    #[test]
    fn ids_match_a_rows_xmin_across_the_32_bit_wrap() {
        let h = Handoff::new();
        let txid = (3_i64 << 32) + 41;
        h.register(txid, vec![handed(1, txid)]);
        h.forget([41]);
        assert!(h.take(&txid.to_string()).is_none(), "read back: forgotten");
    }

    #[test]
    fn hand_overs_expire_and_are_bounded() {
        let h = Handoff::new();
        h.register(1, vec![handed(1, 1)]);
        let later = Instant::now() + EXPIRY;
        h.expire(EXPIRY, later);
        assert!(h.take("1").is_none());
        assert_eq!(h.stats().refused, 1);
        for t in 0..CAPACITY as i64 + 1 {
            h.register(100 + t, vec![handed(t, 100 + t)]);
        }
        assert_eq!(h.pending().len(), CAPACITY);
        assert_eq!(
            h.stats().refused,
            2,
            "the one past capacity takes the table's path"
        );
    }
}
