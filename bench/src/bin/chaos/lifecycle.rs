//! The lifecycle under faults: retention removes finished sagas half a minute after they end
//! (archiving each batch first), the harness places legal holds on some sagas as it starts them,
//! and every 10 s it starts a bulk job that holds the `publish_post` sagas of a window and one
//! that releases an earlier window's — all through the same faults as the workload.
//!
//! Afterwards it checks what users rely on: a saga retention removed is in the archive with its
//! end state (so "lost" still means absent from both), no archived saga was held when it was
//! removed, every saga the harness held is still there with its hold, and every bulk job ended
//! completed with no saga failed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{BulkAction, BulkJobRequest, GetJobRequest, HoldSagaRequest, JobState, SagaFilter};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

use super::{MODERATOR_TOKEN, Shared, lock, on_either};

/// How often a bulk hold job starts (and a release of the window two before).
const BULK_EVERY: Duration = Duration::from_secs(10);

/// What the harness did to the lifecycle, for the checks.
#[derive(Default)]
pub struct Lifecycle {
    /// Sagas the harness held one by one (never released).
    pub held: Vec<Uuid>,
    /// Holds the orchestrator never accepted within the harness's patience.
    pub hold_failed: u64,
    /// Bulk jobs started: their ids and actions.
    pub jobs: Vec<(String, BulkAction)>,
    /// Bulk jobs the orchestrator never accepted within the harness's patience.
    pub job_start_failed: u64,
}

/// The harness holds these requests' sagas as soon as they are accepted: a few of every kind but
/// `publish_post`, which the bulk jobs hold and release.
pub fn held_request(n: usize) -> bool {
    matches!(n % 40, 0 | 15 | 19)
}

/// An operator's request (the harness's own credential).
pub fn as_operator<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {MODERATOR_TOKEN}")
            .parse()
            .expect("a valid header value"),
    );
    request
}

/// Places a legal hold on a saga just accepted. Placing one again is harmless (the hold stays).
pub async fn hold(clients: &[SagaOrchestratorClient<Channel>], shared: &Shared, id: Uuid) {
    let held = on_either(clients, 0, |mut c| async move {
        c.hold_saga(as_operator(HoldSagaRequest {
            saga_id: id.to_string(),
            reason: "chaos: kept".into(),
        }))
        .await
    })
    .await;
    let mut l = lock(&shared.lifecycle);
    match held {
        Ok(_) => l.held.push(id),
        Err(_) => l.hold_failed += 1,
    }
}

/// Every [`BULK_EVERY`]: a bulk hold of the `publish_post` sagas created in the last window, and
/// a bulk release of the window held two rounds ago. A start whose answer is lost is
/// tried again, so a window may get two jobs; the second finds its sagas held (or released).
pub async fn bulk_jobs(
    clients: Vec<SagaOrchestratorClient<Channel>>,
    shared: std::sync::Arc<Shared>,
    stop: CancellationToken,
) {
    let mut windows: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(BULK_EVERY) => {}
        }
        let now = chrono::Utc::now();
        // Windows follow one another, each a round long, ending 5 s ago.
        let window = (
            now - chrono::Duration::seconds(15),
            now - chrono::Duration::seconds(5),
        );
        windows.push(window);
        let mut round = vec![(BulkAction::Hold, window)];
        if windows.len() > 2 {
            round.push((BulkAction::Release, windows[windows.len() - 3]));
        }
        for (action, (after, before)) in round {
            let request = BulkJobRequest {
                action: action as i32,
                filter: Some(SagaFilter {
                    saga_type: "publish_post".into(),
                    created_after: Some(timestamp(after)),
                    created_before: Some(timestamp(before)),
                    ..SagaFilter::default()
                }),
                reason: format!("chaos: {action:?} of a window"),
                confirmed: true,
                ..BulkJobRequest::default()
            };
            let job = on_either(&clients, 0, |mut c| {
                let request = request.clone();
                async move { c.start_bulk_job(as_operator(request)).await }
            })
            .await;
            let mut l = lock(&shared.lifecycle);
            match job {
                Ok(job) => l.jobs.push((job.job_id, action)),
                Err(_) => l.job_start_failed += 1,
            }
        }
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A saga as retention archived it.
pub struct Archived {
    pub state: String,
    pub failure_reason: Option<String>,
    pub seconds: f64,
    /// It was held when it was removed (must never be).
    pub held: bool,
}

/// Every saga in the archive directory's complete files (`.partial` ones are being written). A
/// saga may be in two files (archiving is at least once); the last read wins, and they agree.
pub fn read_archive(dir: &Path) -> anyhow::Result<BTreeMap<Uuid, Archived>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let doc: serde_json::Value = serde_json::from_str(line)?;
            let at = |field: &str| {
                doc[field]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            };
            let seconds = at("updated_at")
                .zip(at("created_at"))
                .map(|(u, c)| (u - c).as_seconds_f64())
                .unwrap_or(f64::NAN);
            let id: Uuid = doc["saga_id"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: a saga_id that is not a uuid: {e}", path.display()))?;
            out.insert(
                id,
                Archived {
                    state: doc["state"].as_str().unwrap_or_default().to_lowercase(),
                    failure_reason: doc["failure_reason"].as_str().map(str::to_owned),
                    seconds,
                    held: !doc["hold"].is_null(),
                },
            );
        }
    }
    Ok(out)
}

/// The checks after quiet; prints them and returns whether all hold.
pub async fn check(
    clients: &[SagaOrchestratorClient<Channel>],
    lifecycle: &Lifecycle,
    archive: &BTreeMap<Uuid, Archived>,
    orchestrator: &PgPool,
) -> anyhow::Result<bool> {
    let held_at_removal = archive.values().filter(|a| a.held).count();
    let still_held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sagas s JOIN saga_holds h ON h.saga_id = s.id WHERE s.id = ANY($1)",
    )
    .bind(&lifecycle.held)
    .fetch_one(orchestrator)
    .await?;
    println!(
        "retention: {} sagas removed and archived, {held_at_removal} of them held when removed; \
         holds: {} placed one by one, {still_held} still there with their hold, {} not accepted",
        archive.len(),
        lifecycle.held.len(),
        lifecycle.hold_failed
    );
    // Bulk jobs must end; those that work through the last faults may need a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ended: BTreeMap<String, u64> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (id, _) in &lifecycle.jobs {
        loop {
            let job = on_either(clients, 0, |mut c| {
                let job_id = id.clone();
                async move { c.get_job(GetJobRequest { job_id }).await }
            })
            .await;
            match job {
                Ok(job) if job.state != JobState::Running as i32 || Instant::now() >= deadline => {
                    *ended
                        .entry(
                            JobState::try_from(job.state)
                                .map_or("unknown".into(), |s| format!("{s:?}").to_lowercase()),
                        )
                        .or_default() += 1;
                    for (outcome, n) in job.counts {
                        *counts.entry(outcome).or_default() += u64::from(n);
                    }
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(_) => {
                    *ended.entry("unreadable".into()).or_default() += 1;
                    break;
                }
            }
        }
    }
    let completed = ended.get("completed").copied().unwrap_or(0);
    let n = |outcome: &str| counts.get(outcome).copied().unwrap_or(0);
    // Jobs that changed nothing would prove nothing: the windows are full of sagas.
    let did_work = lifecycle.jobs.is_empty() || (n("held") > 0 && n("released") > 0);
    println!(
        "bulk jobs: {} started ({} holds, {} releases), {} not accepted; ended: {}; sagas: {}",
        lifecycle.jobs.len(),
        lifecycle
            .jobs
            .iter()
            .filter(|(_, a)| *a == BulkAction::Hold)
            .count(),
        lifecycle
            .jobs
            .iter()
            .filter(|(_, a)| *a == BulkAction::Release)
            .count(),
        lifecycle.job_start_failed,
        describe(&ended),
        describe(&counts),
    );
    Ok(held_at_removal == 0
        && still_held == lifecycle.held.len() as i64
        && lifecycle.hold_failed == 0
        && lifecycle.job_start_failed == 0
        && completed == lifecycle.jobs.len() as u64
        && n("failed") == 0
        && did_work)
}

fn describe(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
