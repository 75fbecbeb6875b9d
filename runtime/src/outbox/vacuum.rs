//! Vacuuming the outbox from the relay (see [`Vacuum`]).

use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Keeps the outbox small. Every published row is deleted, so the table is all dead tuples
/// unless something vacuums it, and every read and delete then wades through them: with
/// autovacuum off (or behind) a relay slowed to a crawl within a minute at 150 sagas/s. So the
/// relay vacuums the table itself after every `VACUUM_EVERY` deletes (at most every
/// `VACUUM_GAP`), on a pool connection in the background; `SKIP_LOCKED` lets a replica skip a
/// vacuum another one is running.
#[derive(Default)]
pub(super) struct Vacuum {
    deleted: usize,
    last: Option<Instant>,
    running: Option<tokio::task::JoinHandle<()>>,
}

const VACUUM_EVERY: usize = 2_000;
const VACUUM_GAP: Duration = Duration::from_secs(2);

impl Vacuum {
    pub(super) fn deleted(&mut self, rows: usize, pool: &PgPool) {
        self.deleted += rows;
        let due = self.deleted >= VACUUM_EVERY
            && self.last.is_none_or(|t| t.elapsed() >= VACUUM_GAP)
            && self.running.as_ref().is_none_or(|h| h.is_finished());
        if !due {
            return;
        }
        self.deleted = 0;
        self.last = Some(Instant::now());
        let pool = pool.clone();
        self.running = Some(tokio::spawn(async move {
            if let Err(e) = sqlx::query("VACUUM (SKIP_LOCKED) outbox").execute(&pool).await {
                tracing::warn!(error = %e, "could not vacuum the outbox; relying on autovacuum");
            }
        }));
    }
}
