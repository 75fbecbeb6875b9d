//! The timer loop: wakes sagas whose deadline or retry time has come.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;
use crate::settings::TimerSettings;

pub async fn run(coordinator: Arc<Coordinator>, settings: TimerSettings, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(settings.interval_ms.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let batch = settings.batch_size.max(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
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
