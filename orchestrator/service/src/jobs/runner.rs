//! The loop every replica runs: claim a running job nobody holds, work it item by item at its
//! pace (renewing the lease as it goes), complete it, or give it back when shutting down.

use std::sync::Arc;
use std::time::Duration;

use saga_engine::SagaId;
use saga_runtime::backoff::Backoff;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use saga_engine::{Command, EngineError, Input};

use super::store::{self, Handled};
use super::{Job, JobError, JobKind};
use crate::api::planned;
use crate::coordinator::{Acted, ApplyError, Coordinator};
use crate::store::{HoldChange, StoreError};

/// How the job runner of a replica works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Whether this replica works jobs (any replica may start them).
    pub enabled: bool,
    /// How often an idle runner looks for a job (a job started on this replica wakes it at once).
    pub poll_interval_ms: u64,
    /// How long a job stays with a replica that stops renewing it (killed, or cut off from the
    /// database) before another one may claim it.
    pub lease_ms: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_ms: 1_000,
            lease_ms: 15_000,
        }
    }
}

/// Wakes this replica's runner when a job was started here.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wake(Arc<Notify>);

impl Wake {
    pub(crate) fn job_started(&self) {
        self.0.notify_one();
    }
}

/// Sagas read per page while a job walks its filter.
const PAGE: u32 = 100;
/// Most times one item is tried again after losing an optimistic-concurrency race.
const CONFLICT_RETRIES: usize = 8;

pub(crate) struct JobRunner {
    coordinator: Arc<Coordinator>,
    settings: JobSettings,
    /// This process's name in `operator_jobs.owner`: unique per start, so a restarted replica
    /// never mistakes its predecessor's lease for its own.
    owner: String,
    wake: Wake,
}

/// What became of one item.
enum Item {
    Handled,
    /// The job was cancelled, or another replica holds it now.
    NotOurs,
}

/// Why a job stops being worked here.
enum Stop {
    Finished,
    ShuttingDown,
    NotOurs,
}

impl JobRunner {
    /// `replica` names this replica to operators (the pod's name: `kafka.instance_id`, else the
    /// host's name); a fresh suffix makes the owner unique to this start.
    pub(crate) fn new(
        coordinator: Arc<Coordinator>,
        settings: JobSettings,
        replica: Option<&str>,
        wake: Wake,
    ) -> Self {
        let replica = replica
            .map(str::to_owned)
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "orchestrator".into());
        Self {
            coordinator,
            settings,
            owner: format!("{replica}/{}", Uuid::now_v7()),
            wake,
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.settings.lease_ms.max(1_000))
    }

    /// Claims and works jobs until `shutdown`; a job in hand is given back then.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let pool = self.coordinator.pool().clone();
        while !shutdown.is_cancelled() {
            match store::claim(&pool, &self.owner, self.lease()).await {
                Ok(Some(job)) => {
                    let id = job.id;
                    let span = tracing::info_span!("job", job_id = %id, kind = %job.kind);
                    let stop = tracing::Instrument::instrument(self.work(job, &shutdown), span).await;
                    match stop {
                        Stop::Finished | Stop::NotOurs => continue,
                        Stop::ShuttingDown => {
                            if let Err(e) = store::release(&pool, id, &self.owner).await {
                                tracing::warn!(job_id = %id, error = %e, "could not give the job back; another replica takes it when the lease lapses");
                            } else {
                                tracing::info!(job_id = %id, "shutting down: gave the job back");
                            }
                            break;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not look for jobs"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.0.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        tracing::info!("job runner stopped");
    }

    /// Works one claimed job: pages of the sagas its filter selects after its cursor, one item
    /// per tick of its pace, until its filter is exhausted or its limit reached.
    async fn work(&self, job: Job, shutdown: &CancellationToken) -> Stop {
        tracing::info!(processed = job.processed, "working job");
        let pool = self.coordinator.pool().clone();
        let lease = self.lease();
        let mut pace = Pace::new(job.params.rate_per_second);
        let mut renewed = Instant::now();
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut processed = job.processed;
        let mut cursor = job.cursor;
        loop {
            if processed >= job.params.limit {
                return self.complete(&job).await;
            }
            let mut filter = job.params.filter.clone();
            filter.cursor = cursor.map(SagaId::from_uuid);
            let page = PAGE.min(job.params.limit - processed);
            let listed = async {
                let mut conn = pool.acquire().await?;
                crate::store::list(&mut conn, &filter, i64::from(page)).await
            };
            let sagas = match listed.await {
                Ok(sagas) => sagas,
                Err(e) => {
                    if let Some(stop) = self.held_up(&job, &e, &mut retry, shutdown).await {
                        return stop;
                    }
                    continue;
                }
            };
            if sagas.is_empty() {
                return self.complete(&job).await;
            }
            for saga in sagas {
                // Wait for the pace, renewing the lease while waiting long.
                loop {
                    let now = Instant::now();
                    if now.duration_since(renewed) >= lease / 3 {
                        match store::renew(&pool, job.id, &self.owner, lease).await {
                            Ok(true) => renewed = now,
                            Ok(false) => return Stop::NotOurs,
                            Err(e) => tracing::debug!(error = %e, "could not renew the job's lease"),
                        }
                    }
                    let Some(wait) = pace.wait(now) else { break };
                    tokio::select! {
                        _ = shutdown.cancelled() => return Stop::ShuttingDown,
                        _ = tokio::time::sleep(wait.min(lease / 3)) => {}
                    }
                }
                if shutdown.is_cancelled() {
                    return Stop::ShuttingDown;
                }
                match self.item(&job, SagaId::from_uuid(saga.id), processed).await {
                    Ok(Item::Handled) => {
                        processed += 1;
                        cursor = Some(saga.id);
                        renewed = Instant::now();
                        pace.took(renewed);
                        retry.reset();
                    }
                    Ok(Item::NotOurs) => {
                        tracing::info!("the job was cancelled or moved to another replica; stopping here");
                        return Stop::NotOurs;
                    }
                    Err(e) => {
                        // Read the page again from the last item handled.
                        if let Some(stop) = self.held_up(&job, &e, &mut retry, shutdown).await {
                            return stop;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Handles one saga in one transaction: the job row locked (still ours, still running), the
    /// action decided and written, the item and the job's progress recorded — all or nothing.
    async fn item(&self, job: &Job, saga: SagaId, processed: u32) -> Result<Item, JobError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_item(job, saga, processed).await {
                Err(JobError::Store(StoreError::Conflict(id))) if tries < CONFLICT_RETRIES => {
                    tracing::debug!(saga_id = %id, "write conflict; re-reading");
                }
                other => return other,
            }
        }
    }

    async fn try_item(&self, job: &Job, saga: SagaId, processed: u32) -> Result<Item, JobError> {
        let pool = self.coordinator.pool();
        let mut tx = pool.begin().await?;
        let Some(done) = store::fence(&mut tx, job.id, &self.owner).await? else {
            return Ok(Item::NotOurs);
        };
        if u32::try_from(done).ok() != Some(processed) {
            // Another replica handled items while this one thought it held the job.
            return Ok(Item::NotOurs);
        }
        let now = self.coordinator.now();
        let (outcome, detail, commands, acted) = match JobKind::parse(&job.kind) {
            Some(JobKind::ReplayCompensations) => {
                match self
                    .coordinator
                    .replay_in(&mut tx, saga, &job.reason, &job.operator)
                    .await
                {
                    Ok((report, acted)) => (
                        report.outcome.as_str(),
                        report.outcome.detail().to_owned(),
                        report.commands,
                        acted,
                    ),
                    Err(e) => not_acted(e)?,
                }
            }
            Some(kind @ (JobKind::Abort | JobKind::Retry)) => {
                let (input, done) = match kind {
                    JobKind::Abort => (
                        Input::Abort {
                            reason: job.reason.clone(),
                        },
                        "aborted",
                    ),
                    _ => (
                        Input::RetryStep {
                            step: None,
                            reason: job.reason.clone(),
                        },
                        "retried",
                    ),
                };
                match self
                    .coordinator
                    .act_in(&mut tx, saga, &input, &job.operator)
                    .await
                {
                    Ok(acted) if acted.changed() => {
                        (done, String::new(), acted.commands().to_vec(), Some(acted))
                    }
                    Ok(_) => ("not_applicable", "nothing to do".to_owned(), Vec::new(), None),
                    Err(e) => not_acted(e)?,
                }
            }
            Some(kind @ (JobKind::Hold | JobKind::Release)) => {
                let changed = if kind == JobKind::Hold {
                    crate::store::place_hold(&mut tx, saga, &job.operator, &job.reason, now).await?
                } else {
                    crate::store::release_hold(&mut tx, saga, &job.operator, &job.reason, now).await?
                };
                let outcome = match (kind, changed) {
                    (_, HoldChange::NoSaga) => "gone",
                    (JobKind::Hold, HoldChange::Done(_)) => "held",
                    (JobKind::Hold, HoldChange::Unchanged(_)) => "already_held",
                    (_, HoldChange::Done(_)) => "released",
                    (_, HoldChange::Unchanged(_)) => "not_held",
                };
                (outcome, String::new(), Vec::new(), None)
            }
            None => (
                "failed",
                format!("unknown job kind `{}`", job.kind),
                Vec::new(),
                None,
            ),
        };
        let commands = planned(&commands, self.coordinator.topic_prefix());
        let item = Handled {
            seq: done + 1,
            saga_id: saga.as_uuid(),
            outcome,
            detail: &detail,
            commands: serde_json::to_value(&commands).unwrap_or_default(),
        };
        store::record(&mut tx, job.id, item, self.lease()).await?;
        tx.commit().await?;
        if let Some(acted) = acted {
            acted.committed();
        }
        metrics::counter!("operator_job_items_total", "kind" => job.kind.clone(), "outcome" => outcome)
            .increment(1);
        Ok(Item::Handled)
    }

    async fn complete(&self, job: &Job) -> Stop {
        match store::complete(self.coordinator.pool(), job.id, &self.owner).await {
            Ok(true) => {
                tracing::info!("job completed");
                Stop::Finished
            }
            Ok(false) => Stop::NotOurs,
            Err(e) => {
                // The lease lapses and a replica (this one, most likely) claims it again: it
                // finds nothing left and completes it then.
                tracing::warn!(error = %e, "could not mark the job completed");
                Stop::NotOurs
            }
        }
    }

    /// An error held the job up: note it on the job, wait (growing), and say whether to stop.
    async fn held_up(
        &self,
        job: &Job,
        error: &(dyn std::fmt::Display + Sync),
        retry: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<Stop> {
        let message = error.to_string();
        tracing::warn!(error = %message, "job held up; retrying");
        let _ = store::note_error(self.coordinator.pool(), job.id, &self.owner, &message).await;
        tokio::select! {
            _ = shutdown.cancelled() => Some(Stop::ShuttingDown),
            _ = tokio::time::sleep(retry.next_wait()) => None,
        }
    }
}

/// The result of an action the saga could not take (the engine refused it, the saga is gone, its
/// definition is missing): an outcome for the operator, not a reason to stop the job. A store
/// error is one: the item is tried again.
#[allow(clippy::type_complexity)]
fn not_acted<'c>(e: ApplyError) -> Result<(&'static str, String, Vec<Command>, Option<Acted<'c>>), JobError> {
    match e {
        ApplyError::Store(e) => Err(e.into()),
        ApplyError::UnknownSaga(_) => Ok(("gone", e.to_string(), Vec::new(), None)),
        ApplyError::Engine(EngineError::NotAllowed(why) | EngineError::Invalid(why)) => {
            Ok(("not_applicable", why, Vec::new(), None))
        }
        e => Ok(("failed", e.to_string(), Vec::new(), None)),
    }
}

/// A job's pace: one item per `1 / rate` seconds, never bursting to catch up after a wait.
#[derive(Debug)]
struct Pace {
    every: Duration,
    next: Option<Instant>,
}

impl Pace {
    fn new(rate_per_second: f64) -> Self {
        let every = if rate_per_second.is_finite() && rate_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / rate_per_second)
        } else {
            Duration::ZERO
        };
        Self { every, next: None }
    }

    /// How long until the next item may go, if it may not go now.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.next.filter(|&t| t > now).map(|t| t - now)
    }

    /// An item went at `now`.
    fn took(&mut self, now: Instant) {
        self.next = Some(match self.next {
            // On time, or a little late: the next keeps the schedule (the average rate holds).
            Some(t) if t + self.every > now => t + self.every,
            // Far behind (a slow item, a pause): a full interval from now, not a burst.
            _ => now + self.every,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spaces_items_and_does_not_burst_after_a_pause() {
        let start = Instant::now();
        let mut pace = Pace::new(10.0);
        assert_eq!(pace.wait(start), None, "the first item goes at once");
        pace.took(start);
        assert_eq!(pace.wait(start), Some(Duration::from_millis(100)));
        let later = start + Duration::from_millis(100);
        assert_eq!(pace.wait(later), None);
        pace.took(later);
        // A long pause (a slow item): the next one waits a full interval, not zero.
        let slow = later + Duration::from_secs(5);
        assert_eq!(pace.wait(slow), None);
        pace.took(slow);
        assert_eq!(pace.wait(slow), Some(Duration::from_millis(100)));
    }
}
