//! Shutdown is an argument: every loop takes a [`CancellationToken`] and stops when it fires;
//! [`drain`] then waits for them, bounded.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Waits for every task of `tasks` to finish (after their shutdown token fired), for at most
/// `within`; what is still running then is abandoned, and said so.
pub async fn drain(mut tasks: JoinSet<()>, within: Duration) {
    let drained = tokio::time::timeout(within, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!(error = %e, "a background loop panicked");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            still_running = tasks.len(),
            "background loops did not stop within {within:?}"
        );
        tasks.abort_all();
    }
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM (Kubernetes stopping the pod).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        fire.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
