//! The dedup window: how long the inbox keeps its records, and the pruning of older ones.
//!
//! The inbox answers a repeated command with the outcome it recorded, so a record must outlive
//! every copy of its command the orchestrator may still send. The orchestrator says how long that
//! is: its **reach** for this participant's topic (`GET /api/participants/{topic}/reach`), the
//! longest a saga of any definition with a step here can go on sending commands without an
//! operator. The kit keeps records of sagas created within `window_hours` and:
//!
//! - **refuses to start** when the orchestrator answers with a reach longer than the window (a
//!   late redelivery could be applied twice), with an error saying both;
//! - **prunes only what a check allows**: before every pass it asks again (the orchestrator's
//!   catalog may have changed), and prunes nothing while it cannot ask or the reach does not fit;
//! - records the horizon first (`inbox_pruning.pruned_before`, under an exclusive advisory lock
//!   every command batch takes shared), then deletes below it in bounded batches, oldest first;
//! - **never applies a command of a saga created before the horizon** (the inbox checks it in
//!   the batch's transaction): such a command is dead-lettered with the reason, because its
//!   earlier outcome may be gone. This holds whatever the clocks, the window's later changes or
//!   an operator's replay of an old saga (which starts a new budget the reach does not count).
//!
//! Saga ids are UUIDv7, so "created before" is a range of the inbox's primary key.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use saga_proto::ledger::{self, Reach};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// The advisory lock between the pruner (exclusive, while it moves the horizon) and command
/// batches (shared, while they read it and apply): `hashtextextended('saga.inbox_pruning', 0)`
/// would do as well; a constant is plainer.
pub(crate) const PRUNE_LOCK: i64 = 0x5a6a_5052_554e_4531; // "ZjPRUNE1"

/// `[dedup]` settings (`APP_DEDUP__…`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupSettings {
    /// Inbox records of sagas created within this many hours are kept; older ones are pruned.
    pub window_hours: f64,
    /// The orchestrator's HTTP address (its dashboard port), e.g. `http://orchestrator:8080`.
    /// Without one, nothing is ever pruned: the window cannot be checked.
    pub orchestrator_url: Option<String>,
    /// A reader's token, when the orchestrator protects reads.
    pub orchestrator_token: Option<SecretString>,
    /// How often to check and prune.
    pub interval_secs: u64,
    /// Records deleted per statement.
    pub batch: i64,
    /// Pause between two batches, so pruning never crowds out commands.
    pub pause_ms: u64,
    /// Timeout of one request to the orchestrator.
    pub request_timeout_ms: u64,
}

impl Default for DedupSettings {
    fn default() -> Self {
        Self {
            window_hours: 30.0 * 24.0,
            orchestrator_url: None,
            orchestrator_token: None,
            interval_secs: 300,
            batch: 1_000,
            pause_ms: 20,
            request_timeout_ms: 5_000,
        }
    }
}

impl DedupSettings {
    /// The window as a duration; the settings' own error when it is not a positive number of
    /// hours of at most ten years.
    pub fn window(&self) -> anyhow::Result<chrono::Duration> {
        let h = self.window_hours;
        anyhow::ensure!(
            h.is_finite() && h > 0.0 && h <= 10.0 * 365.0 * 24.0,
            "dedup.window_hours must be a positive number of hours up to ten years, not {h}"
        );
        Ok(chrono::Duration::milliseconds((h * 3_600_000.0) as i64))
    }
}

/// What asking the orchestrator told.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The reach fits in the window: pruning may go on.
    Fits(Reach),
    /// The reach is longer than the window: the message says both and what to do.
    TooShort(String),
    /// No URL configured: never prune.
    Unconfigured,
    /// The orchestrator could not be asked (the reason); prune nothing until it can.
    Unknown(String),
}

/// Asks the orchestrator for its reach on `topic` and compares it with the window.
pub struct Checker {
    settings: DedupSettings,
    window: chrono::Duration,
    topic: String,
    service: String,
    http: reqwest::Client,
}

impl Checker {
    pub fn new(settings: &DedupSettings, topic: &str, service: &str) -> anyhow::Result<Self> {
        let window = settings.window()?;
        if let Some(url) = &settings.orchestrator_url {
            let parsed = reqwest::Url::parse(url)
                .with_context(|| format!("dedup.orchestrator_url `{url}` is not a URL"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "dedup.orchestrator_url `{url}` is not an http(s) URL"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .build()
            .context("building the HTTP client for the dedup window's check")?;
        Ok(Self {
            settings: settings.clone(),
            window,
            topic: topic.to_owned(),
            service: service.to_owned(),
            http,
        })
    }

    pub fn window(&self) -> chrono::Duration {
        self.window
    }

    pub async fn check(&self) -> Check {
        let Some(base) = &self.settings.orchestrator_url else {
            return Check::Unconfigured;
        };
        let url = format!(
            "{}{}",
            base.trim_end_matches('/'),
            ledger::REACH_PATH.replace("{topic}", &self.topic)
        );
        let mut request = self.http.get(&url);
        if let Some(token) = &self.settings.orchestrator_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let reach: Reach = match request.send().await {
            Err(e) => return Check::Unknown(format!("{url}: {}", saga_proto::innermost_cause(&e))),
            Ok(r) if !r.status().is_success() => {
                let status = r.status();
                let body: String = r.text().await.unwrap_or_default().chars().take(300).collect();
                return Check::Unknown(format!("{url} answered {status}: {body}"));
            }
            Ok(r) => match r.json().await {
                Ok(reach) => reach,
                Err(e) => return Check::Unknown(format!("{url}: unreadable answer: {e}")),
            },
        };
        if i128::from(reach.reach_ms) > i128::from(self.window.num_milliseconds()) {
            let by = match (&reach.saga, reach.version) {
                (Some(s), Some(v)) => format!(" (saga {s} v{v})"),
                _ => String::new(),
            };
            return Check::TooShort(format!(
                "{service}: the dedup window (dedup.window_hours = {hours}) is shorter than the \
                 orchestrator's reach for {topic}: {reach} after a saga starts{by}, it may still \
                 send commands that a pruned inbox would apply twice. Raise APP_DEDUP__WINDOW_HOURS \
                 to at least {need} or shorten the definition's budgets.",
                service = self.service,
                hours = self.settings.window_hours,
                topic = self.topic,
                reach = human(reach.reach_ms),
                need = (reach.reach_ms as f64 / 3_600_000.0 * 100.0).ceil() / 100.0,
            ));
        }
        Check::Fits(reach)
    }
}

/// `93784000` → `26h 3m 4s`.
fn human(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

/// The recorded horizon: records of sagas created before it may be gone.
pub(crate) async fn horizon(conn: &mut PgConnection) -> Result<Option<(DateTime<Utc>, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT pruned_before, reach_ms FROM inbox_pruning")
        .fetch_optional(conn)
        .await
}

/// One pass: moves the horizon to `window` before the database's now (never back) and deletes
/// the records below it, `batch` at a time. Returns the records deleted.
pub async fn prune(
    pool: &PgPool,
    window: chrono::Duration,
    reach: &Reach,
    batch: i64,
    pause: Duration,
    shutdown: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Waits for the command batches in flight; new ones wait for this transaction, then see the
    // new horizon.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK)
        .execute(&mut *tx)
        .await?;
    let (before,): (DateTime<Utc>,) = sqlx::query_as(
        "INSERT INTO inbox_pruning (pruned_before, reach_ms) \
         VALUES (now() - make_interval(secs => $1), $2) \
         ON CONFLICT (singleton) DO UPDATE SET \
           pruned_before = greatest(inbox_pruning.pruned_before, excluded.pruned_before), \
           reach_ms = excluded.reach_ms, updated_at = now() \
         RETURNING pruned_before",
    )
    .bind(window.num_milliseconds() as f64 / 1000.0)
    .bind(i64::try_from(reach.reach_ms).unwrap_or(i64::MAX))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let below = ledger::first_id_at(before);
    let mut removed = 0u64;
    while !shutdown.is_cancelled() {
        let n = sqlx::query(
            "DELETE FROM inbox WHERE (saga_id, step_index, phase) IN \
             (SELECT saga_id, step_index, phase FROM inbox WHERE saga_id < $1 ORDER BY saga_id LIMIT $2)",
        )
        .bind(below)
        .bind(batch.max(1))
        .execute(pool)
        .await?
        .rows_affected();
        removed += n;
        metrics::counter!("participant_inbox_pruned_total").increment(n);
        if n < batch.max(1) as u64 {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    Ok(removed)
}

/// Checks and prunes every `interval_secs` until `shutdown`. A failed check or pass is logged
/// and tried again next time.
pub async fn run(pool: PgPool, checker: Checker, settings: DedupSettings, shutdown: CancellationToken) {
    let interval = Duration::from_secs(settings.interval_secs.max(1));
    let pause = Duration::from_millis(settings.pause_ms);
    loop {
        match checker.check().await {
            Check::Fits(reach) => {
                match prune(&pool, checker.window(), &reach, settings.batch, pause, &shutdown).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "pruned inbox records past the dedup window"),
                    Err(e) => tracing::warn!(error = %e, "pruning the inbox failed; trying again later"),
                }
            }
            Check::TooShort(why) => tracing::error!("{why} Nothing is pruned until this is fixed."),
            Check::Unknown(why) => {
                tracing::warn!(%why, "cannot check the dedup window against the orchestrator; nothing is pruned")
            }
            Check::Unconfigured => return,
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_checked_and_durations_read_well() {
        let mut s = DedupSettings::default();
        assert_eq!(s.window().expect("valid").num_hours(), 720);
        for bad in [0.0, -1.0, f64::NAN, 1e9] {
            s.window_hours = bad;
            assert!(s.window().is_err(), "{bad}");
        }
        assert_eq!(human(4_000), "4s");
        assert_eq!(human(125_000), "2m 5s");
        assert_eq!(human(93_784_000), "26h 3m 4s");
    }
}
