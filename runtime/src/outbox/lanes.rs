//! The relay's own database session: the lanes it holds (session advisory locks), the floor
//! below which no row can still appear, and every read and delete of the outbox.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};

use super::LANES;

/// An outbox row, as a read returns it.
#[derive(sqlx::FromRow)]
pub(super) struct Row {
    pub(super) id: i64,
    pub(super) topic: String,
    pub(super) key: String,
    pub(super) payload: Vec<u8>,
    pub(super) headers: sqlx::types::Json<BTreeMap<String, String>>,
    pub(super) created_at: DateTime<Utc>,
    /// The transaction that wrote it (`xmin`, 32 bits).
    pub(super) xmin: i64,
}

/// The `application_name` of a relay's lane-holding session.
pub const SESSION_NAME: &str = "saga-outbox-relay";

/// Key space of the lane locks: `pg_try_advisory_lock(LOCK_SPACE, lane)`.
const LOCK_SPACE: i32 = 0x0b0c_5a6a;

/// The relay's own database session: it holds the lane locks, and every read runs on it.
///
/// It also keeps a **floor**: an id below which no row can still appear, so reads skip the rows
/// deleted since (a queue table's dead tuples are what makes naive polling slow). Ids are taken
/// from a sequence when a row is inserted but become visible at commit, so a row with a low id can
/// commit after higher ids were read. Before each read the relay notes the sequence's position;
/// once every transaction that was running then has finished (the snapshot's `xmin` has passed a
/// transaction id the next read takes), a complete read sees every row up to that position, and
/// the floor may move up to it (never past a row still in flight). `enqueue` takes the
/// transaction id before it takes sequence values, which is what makes the bound hold.
pub(super) struct Session {
    conn: PgConnection,
    lanes: Vec<i16>,
    floor: i64,
    /// The sequence position noted before the last read.
    last_seq: Option<i64>,
    /// (sequence position, a transaction id taken after it was noted), oldest first.
    candidates: VecDeque<(i64, i64)>,
}

impl Session {
    pub(super) async fn open(pool: &PgPool) -> sqlx::Result<Self> {
        // Named, so operators (and tests) can tell the lane-holding session in pg_stat_activity.
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(SESSION_NAME);
        let mut conn = PgConnection::connect_with(&options).await?;
        // This session only reads rows and deletes published ones. A delete lost in a crash
        // means the row is published again — which at-least-once delivery (with the message id
        // to spot repeats) already allows — so its commit need not wait for the WAL flush. At
        // low load that is one flush per acknowledged message saved.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        Ok(Self {
            conn,
            lanes: Vec::new(),
            floor: 0,
            last_seq: None,
            candidates: VecDeque::new(),
        })
    }

    /// Whether this session holds `lane`.
    pub(super) fn holds(&self, lane: i16) -> bool {
        self.lanes.binary_search(&lane).is_ok()
    }

    /// Every row at or below it was read (and published) or deleted.
    pub(super) fn floor(&self) -> i64 {
        self.floor
    }

    /// Takes every lane no other relay holds; whether it took any.
    pub(super) async fn claim(&mut self) -> sqlx::Result<bool> {
        if self.lanes.len() == LANES as usize {
            return Ok(false);
        }
        let mut got: Vec<i16> = sqlx::query_scalar(
            "SELECT lane::int2 FROM generate_series(0, $1 - 1) AS lane \
             WHERE lane <> ALL($2::int4[]) AND pg_try_advisory_lock($3, lane)",
        )
        .bind(i32::from(LANES))
        .bind(self.lanes.iter().map(|&l| i32::from(l)).collect::<Vec<_>>())
        .bind(LOCK_SPACE)
        .fetch_all(&mut self.conn)
        .await?;
        if !got.is_empty() {
            tracing::debug!(lanes = ?got, "outbox relay took lanes");
            // The floor speaks for the lanes held when it was set. A lane taken over may still
            // hold rows below it (its previous holder had not published or deleted them): read
            // from the start again, or those rows would wait for this session's end and the
            // rows after them would go out first.
            self.floor = 0;
            self.last_seq = None;
            self.candidates.clear();
        }
        let took = !got.is_empty();
        self.lanes.append(&mut got);
        self.lanes.sort_unstable();
        self.lanes.dedup();
        Ok(took)
    }

    /// The oldest rows of this session's lanes above the floor, skipping those in flight; moves
    /// the floor up when it safely can. The first of its two statements also deletes `done`
    /// (acknowledged rows the pipeline already counts as finished).
    pub(super) async fn read(
        &mut self,
        skip: &HashSet<i64>,
        done: &[i64],
        limit: i64,
    ) -> sqlx::Result<Vec<Row>> {
        if self.lanes.is_empty() {
            self.delete(done).await?;
            return Ok(Vec::new());
        }
        // The bound is a transaction id taken now, not the snapshot's `xmax`: that is only the
        // latest *completed* id + 1, so a writer that took its id and its sequence values and has
        // not committed can be at or above it — and the floor then moved past its rows
        // (`relays_whose_sessions_are_terminated_hand_lanes_over_and_keep_every_key_in_order`,
        // about 1 run in 10 on a 2-core machine). Ids are handed out in order, so every writer
        // that took sequence values before this statement read the position holds a lower one.
        const POSITION: &str = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END, \
                                pg_snapshot_xmin(pg_current_snapshot())::text::int8, \
                                pg_current_xact_id()::text::int8 \
                                FROM outbox_id_seq";
        // Only with something to delete: a `DELETE` of nothing is still a statement to plan (and
        // fires statement triggers).
        let (seq, xmin, bound): (i64, i64, i64) = if done.is_empty() {
            sqlx::query_as(POSITION).fetch_one(&mut self.conn).await?
        } else {
            sqlx::query_as(&format!(
                "WITH gone AS (DELETE FROM outbox WHERE id = ANY($1)) {POSITION}"
            ))
            .bind(done)
            .fetch_one(&mut self.conn)
            .await?
        };
        if let Some(previous) = self.last_seq.replace(seq) {
            self.candidates.push_back((previous, bound));
            if self.candidates.len() > 1024 {
                self.candidates.pop_front(); // a long transaction holds the floor: keep memory bounded
            }
        }
        // `done` is gone already (its delete committed with the statement above), so only the rows
        // in flight are skipped. Holding every lane — one relay per service, the usual case — the
        // lane filter would select nothing out, and the planner, which plans this statement at
        // every read, estimates `lane = ANY(…)` element by element: a quarter of its planning time.
        let skipped: Vec<i64> = skip.iter().copied().collect();
        let every_lane = self.lanes.len() == LANES as usize;
        let mut query = sqlx::query_as(if every_lane {
            "SELECT id, topic, key, payload, headers, created_at, xmin::text::int8 AS xmin FROM outbox \
             WHERE id > $1 AND id <> ALL($2) ORDER BY id LIMIT $3"
        } else {
            "SELECT id, topic, key, payload, headers, created_at, xmin::text::int8 AS xmin FROM outbox \
             WHERE id > $1 AND id <> ALL($2) AND lane = ANY($4) ORDER BY id LIMIT $3"
        })
        .bind(self.floor)
        .bind(&skipped)
        .bind(limit);
        if !every_lane {
            query = query.bind(&self.lanes);
        }
        let rows: Vec<Row> = query.fetch_all(&mut self.conn).await?;
        if (rows.len() as i64) < limit {
            // Complete: every visible row above the floor is in `rows` or in flight.
            let mut settled = None;
            while let Some(&(position, bound)) = self.candidates.front() {
                if bound > xmin {
                    break;
                }
                settled = Some(position);
                self.candidates.pop_front();
            }
            if let Some(position) = settled {
                let open = skip.iter().copied().chain(rows.iter().map(|r| r.id)).min();
                let floor = open.map_or(position, |lowest| position.min(lowest - 1));
                self.floor = self.floor.max(floor);
            }
        }
        Ok(rows)
    }

    pub(super) async fn delete(&mut self, ids: &[i64]) -> sqlx::Result<()> {
        if !ids.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(ids)
                .execute(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    /// Ends the session, and with it the lanes it holds.
    pub(super) async fn close(self) {
        let _ = self.conn.close().await;
    }
}
