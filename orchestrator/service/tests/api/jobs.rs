//! Bulk compensation replay as a durable job: exact counts and per-saga results, reads and
//! refusals, cancellation, and a job given back by a replica that shuts down and finished by
//! another, each saga replayed once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use saga_proto::v1::{
    CancelJobRequest, GetJobRequest, Job, JobItem, JobState, ListJobItemsRequest, ListJobsRequest,
    ReplayCompensationsRequest, ReplayOutcome, SagaFilter,
};
use tonic::Code;

use crate::helpers::{
    OPERATOR_TOKEN, READER_TOKEN, TestApp, WAIT, assert_status, authed, spawn_app, spawn_on,
};

fn bulk(rate: f64) -> ReplayCompensationsRequest {
    ReplayCompensationsRequest {
        filter: Some(SagaFilter {
            saga_type: "register_user".into(),
            ..SagaFilter::default()
        }),
        reason: "user-service is back".into(),
        dry_run: false,
        rate_per_second: rate,
        limit: 0,
    }
}

async fn start_job(app: &TestApp, rate: f64) -> Job {
    app.client
        .clone()
        .start_replay_job(authed(bulk(rate), OPERATOR_TOKEN))
        .await
        .expect("StartReplayJob")
        .into_inner()
}

async fn job(app: &TestApp, id: &str) -> Job {
    app.client
        .clone()
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .expect("GetJob")
        .into_inner()
}

/// The job's results, in the order it handled its sagas.
async fn items(app: &TestApp, id: &str) -> Vec<JobItem> {
    app.client
        .clone()
        .list_job_items(ListJobItemsRequest {
            job_id: id.into(),
            after_seq: 0,
            page_size: 0,
        })
        .await
        .expect("ListJobItems")
        .into_inner()
        .items
}

/// CancelJob as the operator.
async fn cancel(app: &TestApp, id: &str, reason: &str) -> Result<Job, tonic::Status> {
    let request = CancelJobRequest {
        job_id: id.into(),
        reason: reason.into(),
    };
    app.client
        .clone()
        .cancel_job(authed(request, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
}

/// Polls the job until `done` holds.
async fn job_until(app: &TestApp, id: &str, what: &str, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = Instant::now() + WAIT;
    loop {
        let j = job(app, id).await;
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id}: never {what}: {j:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counts(pairs: &[(&str, u32)]) -> std::collections::HashMap<String, u32> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// How many times each saga's compensation was replayed, by its history.
async fn replays(app: &TestApp) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT saga_id::text, count(*) FROM saga_events WHERE kind = 'compensation_replayed' GROUP BY saga_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn a_bulk_replay_job_handles_each_failed_saga_once_and_records_every_result() {
    let app = spawn_app().await;
    let (ids, users) = app.parked(3).await;

    let started = start_job(&app, 50.0).await;
    assert_eq!(started.state, JobState::Running as i32);
    assert_eq!((started.operator.as_str(), started.limit), ("alice", 1000));
    assert_eq!(started.filter.as_ref().unwrap().state, 5, "failed sagas only");
    let done = job_until(&app, &started.job_id, "completed", |j| {
        j.state == JobState::Completed as i32
    })
    .await;
    assert_eq!(done.processed, 3);
    assert_eq!(done.counts, counts(&[("replayed", 3)]));
    assert!(done.owner.is_empty() && done.finished_at.is_some());
    // Each replay sent one DeleteUser, and each saga's history names the operator and reason.
    assert_eq!(users.take(3, WAIT).await.len(), 3);
    let replayed = replays(&app).await;
    assert_eq!(replayed.len(), 3);
    assert!(ids.iter().all(|id| replayed.get(id) == Some(&1)), "{replayed:?}");

    // The results, in the order handled: newest saga first.
    let items = items(&app, &started.job_id).await;
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let sagas: Vec<&str> = items
        .iter()
        .map(|i| i.result.as_ref().unwrap().saga_id.as_str())
        .collect();
    assert_eq!(sagas, ids.iter().rev().map(String::as_str).collect::<Vec<_>>());
    for item in &items {
        let r = item.result.as_ref().unwrap();
        assert_eq!(r.outcome, ReplayOutcome::Replayed as i32);
        assert_eq!(r.commands.len(), 1);
        assert_eq!(r.commands[0].command_type, "DeleteUser");
    }

    // The same replay again: no saga is failed any more (their compensations are in flight), so
    // it selects none and sends nothing.
    let again = start_job(&app, 50.0).await;
    let again = job_until(&app, &again.job_id, "completed", |j| {
        j.state == JobState::Completed as i32
    })
    .await;
    assert_eq!((again.processed, again.counts.len()), (0, 0));
    assert_eq!(replays(&app).await, replayed, "nothing replayed twice");

    // Jobs list newest first; reads need no operator.
    let listed = app
        .client
        .clone()
        .list_jobs(authed(ListJobsRequest::default(), READER_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        [again.job_id.as_str(), started.job_id.as_str()]
    );

    // Refusals: an ended job cannot be cancelled; an unknown one is not found; a dry run starts
    // no job.
    let err = cancel(&app, &started.job_id, "too late").await.unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        &format!("job {} is completed already", started.job_id),
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let err = app
        .client
        .clone()
        .get_job(GetJobRequest {
            job_id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, &format!("no job {missing}"));
    let mut dry = bulk(10.0);
    dry.dry_run = true;
    let err = app
        .client
        .clone()
        .start_replay_job(authed(dry, OPERATOR_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = app
        .client
        .clone()
        .start_replay_job(authed(bulk(10.0), READER_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(app.rows("operator_jobs").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_stops_before_its_next_saga_and_keeps_what_it_did() {
    let app = spawn_app().await;
    let (ids, _users) = app.parked(4).await;
    // One saga a second: the first goes at once, the next waits.
    let started = start_job(&app, 1.0).await;
    job_until(&app, &started.job_id, "handled a saga", |j| j.processed >= 1).await;
    let cancelled = cancel(&app, &started.job_id, "wrong filter").await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled as i32);
    assert_eq!(
        (cancelled.cancelled_by.as_str(), cancelled.cancel_reason.as_str()),
        ("alice", "wrong filter")
    );
    let kept = cancelled.processed;
    assert!(kept < ids.len() as u32, "cancelled before the end: {kept}");

    // The runner moves on: a job started now is worked by the same runner, so once it is done,
    // the cancelled one's runner had stopped with it.
    let next = start_job(&app, 50.0).await;
    let next = job_until(&app, &next.job_id, "completed", |j| {
        j.state == JobState::Completed as i32
    })
    .await;
    // It finds only the sagas still failed: those the cancelled job did not reach.
    assert_eq!(next.processed + kept, ids.len() as u32);
    let after = job(&app, &started.job_id).await;
    assert_eq!((after.state, after.processed), (JobState::Cancelled as i32, kept));
    let items = items(&app, &started.job_id).await;
    assert_eq!(items.len() as u32, kept, "no result recorded after the cancel");
    // Every saga was replayed exactly once, by one job or the other.
    let replayed = replays(&app).await;
    assert!(ids.iter().all(|id| replayed.get(id) == Some(&1)), "{replayed:?}");
    assert_eq!(next.counts, counts(&[("replayed", ids.len() as u32 - kept)]));
    app.stop().await;
}

#[tokio::test]
async fn a_job_given_back_at_shutdown_is_finished_by_another_replica_with_exact_counts() {
    let first = spawn_app().await;
    let (ids, _users) = first.parked(6).await;
    let (pool, db_url, kafka) = (first.pool.clone(), first.db_url.clone(), first.kafka.clone());
    let started = start_job(&first, 4.0).await;
    let held = job_until(&first, &started.job_id, "two sagas handled", |j| j.processed >= 2).await;
    assert!(!held.owner.is_empty());
    // A graceful stop gives the job back at once...
    first.stop().await;
    let given_back = {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query_as::<_, (Option<String>, String, i32)>(
            "SELECT owner, state, processed FROM operator_jobs WHERE id = $1::uuid",
        )
        .bind(&started.job_id)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
    };
    assert_eq!(given_back.0, None, "released, not left to a lease");
    assert_eq!(given_back.1, "running");
    assert!(given_back.2 < ids.len() as i32, "stopped mid-way: {given_back:?}");

    // ...and a second replica goes on from where it stopped.
    let second = spawn_on(pool, db_url, kafka, |_| {}).await;
    let done = job_until(&second, &started.job_id, "completed", |j| {
        j.state == JobState::Completed as i32
    })
    .await;
    assert_eq!(done.processed, ids.len() as u32);
    assert_eq!(done.counts, counts(&[("replayed", ids.len() as u32)]));
    let replayed = replays(&second).await;
    assert!(ids.iter().all(|id| replayed.get(id) == Some(&1)), "{replayed:?}");
    assert_eq!(
        second
            .count("SELECT count(DISTINCT saga_id) FROM operator_job_items")
            .await,
        ids.len() as i64
    );
    second.stop().await;
}
