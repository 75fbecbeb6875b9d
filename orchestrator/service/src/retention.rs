//! Retention: finished sagas are removed once they are older than their type's age, with their
//! history and keys, by bounded batches (`store::remove_expired`) paced by a pause, so writers
//! are never blocked for longer than one small transaction and autovacuum reuses the space.
//! Running, failed and held sagas, and children of a saga that stays, are never removed.
//! Any number of replicas may run it: a batch skips the rows another one has locked. With an
//! archive directory, each batch is written there (the export format) before it is removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::coordinator::Coordinator;
use crate::store::{self, Expiry, Removed};

/// The longest age retention accepts (a hundred years: effectively "keep").
const MAX_AGE_DAYS: f64 = 36_500.0;

/// `APP_RETENTION__…`: how long finished sagas are kept, and how fast they are removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Whether this replica removes expired sagas.
    pub enabled: bool,
    /// How long a finished (completed or compensated) saga is kept, in days; fractions allowed.
    pub max_age_days: f64,
    /// Ages of their own, in days, by saga type (`APP_RETENTION__BY_TYPE__REGISTER_USER=7`).
    pub by_type: BTreeMap<String, f64>,
    /// Saga families removed per transaction.
    pub batch: u32,
    /// The pause between two batches while there is more to remove.
    pub pause_ms: u64,
    /// How often to look for expired sagas once there are none left.
    pub interval_ms: u64,
    /// When set, every batch is first written to a new file here (JSON lines in the export
    /// format, synced to disk) and removed only once written.
    pub archive_dir: Option<PathBuf>,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age_days: 30.0,
            by_type: BTreeMap::new(),
            batch: 500,
            pause_ms: 50,
            interval_ms: 60_000,
            archive_dir: None,
        }
    }
}

impl RetentionSettings {
    /// Checks the ages and that every saga type named is one the catalog defines (a typo would
    /// otherwise silently keep the default).
    pub(crate) fn validate(&self, catalog: &Catalog) -> anyhow::Result<()> {
        let check = |what: &str, days: f64| {
            if !(days > 0.0 && days <= MAX_AGE_DAYS) {
                anyhow::bail!("retention.{what}: {days} is not a number of days in (0, {MAX_AGE_DAYS}]");
            }
            Ok(())
        };
        check("max_age_days", self.max_age_days)?;
        for (saga_type, days) in &self.by_type {
            if catalog.latest(saga_type).is_none() {
                anyhow::bail!(
                    "retention.by_type: unknown saga type `{saga_type}` (known: {})",
                    catalog.names().join(", ")
                );
            }
            check(&format!("by_type.{saga_type}"), *days)?;
        }
        if self.batch == 0 || self.batch > 10_000 {
            anyhow::bail!("retention.batch: {} is not within 1..=10000", self.batch);
        }
        if let Some(dir) = &self.archive_dir
            && !dir.is_dir()
        {
            anyhow::bail!(
                "retention.archive_dir: {} is not a directory (create it, writable by the orchestrator)",
                dir.display()
            );
        }
        Ok(())
    }

    /// Sagas created before this, at `now`, may have been removed (the shortest age of all).
    pub(crate) fn horizon(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let shortest = self.by_type.values().copied().fold(self.max_age_days, f64::min);
        now - TimeDelta::milliseconds((shortest * 86_400_000.0) as i64)
    }

    /// The cutoffs at `now`.
    pub(crate) fn expiry(&self, now: DateTime<Utc>) -> Expiry {
        let cutoff = |days: f64| now - TimeDelta::milliseconds((days * 86_400_000.0) as i64);
        Expiry {
            default_cutoff: cutoff(self.max_age_days),
            by_type: self
                .by_type
                .iter()
                .map(|(t, d)| (t.clone(), cutoff(*d)))
                .collect(),
        }
    }
}

/// Removes expired sagas until there are none, then waits `interval_ms`; until `shutdown`.
pub(crate) async fn run(
    coordinator: Arc<Coordinator>,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    tracing::info!(
        max_age_days = settings.max_age_days,
        by_type = ?settings.by_type,
        "retention started"
    );
    // A pass walks the expired sagas in order of end time, batch after batch, then rests.
    let mut after = None;
    loop {
        let wait = match sweep_once(&coordinator, &settings, after).await {
            Ok((_, last)) => {
                after = last;
                Duration::from_millis(if after.is_some() {
                    settings.pause_ms
                } else {
                    settings.interval_ms
                })
            }
            Err(e) => {
                after = None;
                ::metrics::counter!("retention_errors_total").increment(1);
                tracing::warn!(error = %e, "retention batch failed; retrying");
                Duration::from_millis(settings.interval_ms.min(5_000))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("retention stopped");
}

/// One batch of a pass: removes up to `batch` expired saga families after `after` — archived
/// first when an archive directory is set. Returns what it removed and where it stopped.
async fn sweep_once(
    coordinator: &Coordinator,
    settings: &RetentionSettings,
    after: Option<(DateTime<Utc>, uuid::Uuid)>,
) -> anyhow::Result<(Removed, Option<(DateTime<Utc>, uuid::Uuid)>)> {
    let expiry = settings.expiry(coordinator.now());
    let mut tx = coordinator.pool().begin().await?;
    let expired = store::select_expired(&mut tx, &expiry, after, i64::from(settings.batch)).await?;
    if expired.doomed.is_empty() {
        return Ok((Removed::default(), expired.last));
    }
    if let Some(dir) = &settings.archive_dir {
        let docs = store::export_many(&mut tx, &expired.doomed).await?;
        archive(dir, &docs).await?;
    }
    let removed = store::delete_sagas(&mut tx, &expired.doomed).await?;
    tx.commit().await?;
    ::metrics::counter!("sagas_removed_total").increment(removed.sagas);
    ::metrics::counter!("saga_events_removed_total").increment(removed.events);
    tracing::debug!(
        sagas = removed.sagas,
        events = removed.events,
        keys = removed.keys,
        "expired sagas removed"
    );
    Ok((removed, expired.last))
}

/// Writes documents to a new file of `dir`, one JSON line each, synced before it returns: the
/// sagas are removed only after this. Written as `.partial` and renamed when complete, so a
/// reader never sees half a file. At least once: a batch whose removal then fails is written
/// again by the next pass (the same saga ids in two files).
async fn archive(dir: &Path, docs: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for doc in docs {
        text.push_str(&doc.to_string());
        text.push('\n');
    }
    let name = format!(
        "sagas-{}-{}.jsonl",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        uuid::Uuid::now_v7()
    );
    let (partial, done) = (dir.join(format!("{name}.partial")), dir.join(&name));
    let write = async {
        let mut file = tokio::fs::File::create(&partial).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await?;
        file.sync_all().await?;
        tokio::fs::rename(&partial, &done).await?;
        // The rename itself is durable once the directory is synced.
        tokio::fs::File::open(dir).await?.sync_all().await
    };
    write
        .await
        .with_context(|| format!("archiving {} saga(s) to {}", docs.len(), done.display()))?;
    ::metrics::counter!("sagas_archived_total").increment(docs.len() as u64);
    Ok(())
}
