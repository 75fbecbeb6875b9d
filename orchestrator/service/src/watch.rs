//! Live changes: one `LISTEN saga_changes` connection per orchestrator fans every saga change out
//! to the watchers of this replica (WatchSaga, WatchSagas, the dashboard). The statement-level
//! triggers of `migrations/orchestrator/0008_saga_changes_per_statement.sql` send each changed
//! saga's summary, so most watchers need no query of their own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::ListFilter;

pub const CHANNEL: &str = "saga_changes";

/// One saga change, as announced by the trigger.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
    pub id: Uuid,
    pub saga_type: String,
    pub state: String,
    pub current_step: Option<String>,
    pub failure_reason: Option<String>,
    pub idempotency_key: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Change {
    pub fn matches(&self, filter: &ListFilter) -> bool {
        filter.matches(
            self.id,
            &self.saga_type,
            &self.state,
            self.current_step.as_deref(),
            self.failure_reason.as_deref(),
            self.idempotency_key.as_deref(),
            self.created_at,
            self.updated_at,
        )
    }
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Changed(Box<Change>),
    /// Notifications may have been missed (the listener reconnected, or this watcher fell
    /// behind): re-read whatever you show.
    Resync,
}

/// The fan-out point.
#[derive(Clone)]
pub(crate) struct Changes {
    tx: broadcast::Sender<Event>,
}

impl Changes {
    pub(crate) fn new() -> Self {
        Self {
            tx: broadcast::Sender::new(4096),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Listens until `shutdown`, reconnecting (and announcing a resync) when the connection drops.
    pub(crate) async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        loop {
            let listener = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = tokio::select! {
                _ = shutdown.cancelled() => return,
                l = listener => match l {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for saga changes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let _ = self.tx.send(Event::Resync);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => n,
                };
                match next {
                    Ok(Some(n)) => match serde_json::from_str::<Change>(n.payload()) {
                        Ok(change) => {
                            let _ = self.tx.send(Event::Changed(Box::new(change)));
                        }
                        Err(e) => tracing::warn!(error = %e, "unreadable saga change notification"),
                    },
                    // The connection dropped; notifications in between are lost.
                    Ok(None) => {
                        let _ = self.tx.send(Event::Resync);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "saga change listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}
