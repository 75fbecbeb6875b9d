//! Timers: every tick, what sagas owe each other is applied (`children.rs`), and the sagas whose
//! deadline or retry time has come are woken (`Input::Wake`)
//! and written together (a tick that finds none due costs one index lookup) — safe with several
//! replicas, which skip each other's rows.

use std::sync::Arc;
use std::time::Duration;

use saga_engine::{Input, decide};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{ApplyError, Coordinator, metrics, saga_span, write_of};
use crate::settings::TimerSettings;
use crate::store;

impl Coordinator {
    /// Wakes up to `limit` sagas whose deadline or retry time has come, in one transaction that
    /// locks the rows it takes (`SKIP LOCKED`, so replicas share the work). Returns how many.
    #[tracing::instrument(skip_all, fields(woken))]
    pub(crate) async fn wake_due(&self, limit: i64) -> Result<usize, ApplyError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let due = store::lock_due(&mut tx, now, limit).await?;
        let mut woken = Vec::with_capacity(due.len());
        for stored in &due {
            let decided = self
                .definition(stored)
                .and_then(|def| Ok((def, decide(def, &stored.saga, &Input::Wake, now)?)));
            match decided {
                Ok((def, decision)) => {
                    // Timers have no incoming trace: the commands continue the saga's own.
                    let trace = saga_span("timer", stored).in_scope(saga_runtime::trace::current_headers);
                    let messages = self.messages(&decision, "timer", &trace);
                    woken.push((def, stored, decision, messages));
                }
                // Leave it due: it is retried every tick and reported until the deployment is fixed.
                Err(e) => tracing::error!(saga_id = %stored.saga.id, error = %e, "cannot wake saga"),
            }
        }
        let writes: Vec<_> = woken
            .iter_mut()
            .map(|(def, stored, decision, messages)| {
                write_of(def, stored, decision, "timer", now, std::mem::take(messages))
            })
            .collect();
        store::commit(&mut tx, &writes, &self.handoff).await?;
        drop(writes);
        tx.commit().await?;
        for (def, _, decision, _) in &woken {
            metrics::observe(def, decision, now);
        }
        tracing::Span::current().record("woken", woken.len());
        Ok(woken.len())
    }
}

/// The timer loop: every `interval_ms`, wake what is due, batch after batch while they come back
/// full.
pub(crate) async fn run(coordinator: Arc<Coordinator>, settings: TimerSettings, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(settings.interval_ms.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let batch = settings.batch_size.max(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // What sagas owe each other (children to start or compensate, parents to tell).
        if let Ok(true) = store::any_inputs(&coordinator.pool).await {
            loop {
                match coordinator.apply_inputs(batch).await {
                    Ok(n) if n as i64 >= batch && !shutdown.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "saga inputs pass failed; retrying next tick");
                        break;
                    }
                }
            }
        }
        // Most ticks find nothing due: look before opening a transaction that locks.
        if let Ok(false) = store::any_due(&coordinator.pool, coordinator.clock.now()).await {
            continue;
        }
        // Keep waking while batches come back full.
        loop {
            match coordinator.wake_due(batch).await {
                Ok(n) if n as i64 >= batch && !shutdown.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "timer pass failed; retrying next tick");
                    break;
                }
            }
        }
    }
    tracing::info!("timer loop stopped");
}
