//! Bulk operations by query, as durable jobs: a dry run with the count and a sample, an explicit
//! confirmation, holds, releases, aborts and retries of every saga a filter selects (by key,
//! version, state, failure text) with exact counts; a job paused, resumed, and given back by a
//! replica that shuts down and finished by another, each saga handled once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use saga_proto::v1::{
    BulkAction, BulkJobRequest, BulkPlan, CancelJobRequest, GetJobRequest, Job, JobState, KeyMatch,
    SagaFilter, SagaState,
};
use tonic::Code;

use crate::helpers::{OPERATOR_TOKEN, TestApp, WAIT, assert_status, authed, spawn_on, spawn_with_catalog};

const CATALOG: &str = r#"
[[saga]]
name = "ticket"
version = 1
input = [{ name = "code", kind = "string", max_len = 64 }]
search_keys = ["code"]
[[saga.steps]]
name = "await_done"
wait = { signal = "done", timeout_ms = 600000 }
"#;

async fn tickets(app: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let started = app
            .start("ticket", &format!(r#"{{"code":"{prefix}{i}"}}"#), "")
            .await
            .expect("started");
        ids.push(started.saga_id);
    }
    ids
}

fn request(action: BulkAction, filter: SagaFilter, rate: f64, confirmed: bool) -> BulkJobRequest {
    BulkJobRequest {
        action: action as i32,
        filter: Some(filter),
        reason: "incident 42".into(),
        rate_per_second: rate,
        limit: 0,
        confirmed,
    }
}

/// The tickets whose code starts with `prefix`.
fn by_prefix(prefix: &str) -> SagaFilter {
    SagaFilter {
        saga_type: "ticket".into(),
        keys: vec![KeyMatch {
            name: "code".into(),
            value: prefix.into(),
            prefix: true,
        }],
        ..SagaFilter::default()
    }
}

async fn plan(app: &TestApp, r: BulkJobRequest) -> Result<BulkPlan, tonic::Status> {
    app.client
        .clone()
        .plan_bulk_job(authed(r, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
}

async fn start(app: &TestApp, r: BulkJobRequest) -> Result<Job, tonic::Status> {
    app.client
        .clone()
        .start_bulk_job(authed(r, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
}

async fn job_until(app: &TestApp, id: &str, what: &str, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = app
            .client
            .clone()
            .get_job(GetJobRequest { job_id: id.into() })
            .await
            .expect("GetJob")
            .into_inner();
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never {what}: {job:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a confirmed job and waits for it to complete; returns its outcome counts.
async fn run(app: &TestApp, action: BulkAction, filter: SagaFilter) -> BTreeMap<String, u32> {
    let job = start(app, request(action, filter, 500.0, true))
        .await
        .expect("started");
    let done = job_until(app, &job.job_id, "completed", |j| {
        j.state == JobState::Completed as i32
    })
    .await;
    done.counts.into_iter().collect()
}

fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

#[tokio::test]
async fn bulk_jobs_act_on_exactly_what_their_query_selects_after_a_plan_and_a_confirmation() {
    let (app, _dir) = spawn_with_catalog(CATALOG, |_| {}).await;
    let picked = tickets(&app, "B-", 6).await;
    let others = tickets(&app, "Z-", 2).await;

    // The dry run: the count and a sample; nothing changes.
    let p = plan(&app, request(BulkAction::Hold, by_prefix("B-"), 0.0, false))
        .await
        .expect("plan");
    assert_eq!((p.count, p.capped, p.sample.len()), (6, false, 6));
    let mut sample: Vec<String> = p.sample.iter().map(|s| s.saga_id.clone()).collect();
    sample.sort();
    let mut expected = picked.clone();
    expected.sort();
    assert_eq!(sample, expected);
    assert_eq!(app.rows("saga_holds").await, 0, "a plan changes nothing");

    // Refusals: no confirmation, an empty filter, no action, a replay of running sagas.
    let err = start(&app, request(BulkAction::Hold, by_prefix("B-"), 0.0, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().starts_with("a bulk job needs confirmation"),
        "{}",
        err.message()
    );
    let err = plan(
        &app,
        request(BulkAction::Abort, SagaFilter::default(), 0.0, false),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("filter: an empty filter selects every saga"),
        "{}",
        err.message()
    );
    let err = plan(
        &app,
        request(BulkAction::Unspecified, by_prefix("B-"), 0.0, false),
    )
    .await
    .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "action: one of replay_compensation, abort, retry, hold, release",
    );
    let mut running = by_prefix("B-");
    running.state = SagaState::Running as i32;
    let err = plan(
        &app,
        request(BulkAction::ReplayCompensation, running.clone(), 0.0, false),
    )
    .await
    .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "filter.state: replay applies to failed sagas, not running ones",
    );
    let anonymous = app
        .client
        .clone()
        .plan_bulk_job(request(BulkAction::Hold, by_prefix("B-"), 0.0, false))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Hold, hold again, abort, retry (nothing to retry), release: exact counts.
    assert_eq!(
        run(&app, BulkAction::Hold, by_prefix("B-")).await,
        counts(&[("held", 6)])
    );
    assert_eq!(app.rows("saga_holds").await, 6);
    assert_eq!(
        run(&app, BulkAction::Hold, by_prefix("B-")).await,
        counts(&[("already_held", 6)])
    );
    assert_eq!(
        run(&app, BulkAction::Abort, running.clone()).await,
        counts(&[("aborted", 6)])
    );
    for id in &picked {
        let view = app.view(id).await;
        assert_eq!(view.state, SagaState::Compensated as i32, "{id}");
        assert!(view.hold.is_some(), "{id} keeps its hold");
    }
    for id in &others {
        assert_eq!(
            app.view(id).await.state,
            SagaState::Running as i32,
            "{id} was not selected"
        );
    }
    assert_eq!(
        run(&app, BulkAction::Retry, by_prefix("B-")).await,
        counts(&[("not_applicable", 6)])
    );
    assert_eq!(
        run(&app, BulkAction::Release, by_prefix("B-")).await,
        counts(&[("released", 6)])
    );
    assert_eq!(app.rows("saga_holds").await, 0);

    // Filters by failure text and by definition version.
    let mut failure = by_prefix("");
    failure.keys.clear();
    failure.failure_contains = "INCIDENT 42".into();
    let p = plan(&app, request(BulkAction::Hold, failure, 0.0, false))
        .await
        .expect("plan");
    assert_eq!(p.count, 6, "the aborted ones name the reason");
    let mut version = by_prefix("");
    version.keys.clear();
    version.definition_version = 2;
    let p = plan(&app, request(BulkAction::Hold, version, 0.0, false))
        .await
        .expect("plan");
    assert_eq!(p.count, 0, "no saga runs on version 2");

    // The dashboard's HTTP API: the same plan and start, the same refusals.
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("http://{}{path}", app.http_addr))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&body)
            .send()
    };
    let planned = post(
        "/api/bulk/plan",
        serde_json::json!({"action": "hold", "type": "ticket", "key": "code=Z-1", "reason": "check"}),
    )
    .await
    .expect("plan");
    assert_eq!(planned.status(), 200);
    let body: serde_json::Value = planned.json().await.expect("JSON");
    assert_eq!(body["plan"]["count"], 1);
    assert_eq!(body["plan"]["sample"][0]["id"], others[1].as_str());
    let unconfirmed = post(
        "/api/bulk",
        serde_json::json!({"action": "hold", "type": "ticket", "key": "code=Z-1", "reason": "check"}),
    )
    .await
    .expect("start");
    assert_eq!(unconfirmed.status(), 409);
    let unknown = post(
        "/api/bulk/plan",
        serde_json::json!({"action": "delete", "type": "ticket", "reason": "x"}),
    )
    .await
    .expect("plan");
    assert_eq!(unknown.status(), 400);
    let started = post(
        "/api/bulk",
        serde_json::json!({"action": "hold", "type": "ticket", "key": "code=Z-1", "reason": "check", "confirmed": true}),
    )
    .await
    .expect("start");
    assert_eq!(started.status(), 201);
    let job: serde_json::Value = started.json().await.expect("JSON");
    let id = job["job"]["id"].as_str().expect("job id").to_owned();
    job_until(&app, &id, "completed", |j| j.state == JobState::Completed as i32).await;
    assert!(app.view(&others[1]).await.hold.is_some());
    assert!(app.view(&others[0]).await.hold.is_none());

    // Every action is in the saga's history, by the operator, with the job's reason.
    let history = app.get(&picked[0]).await.history;
    let by_operator: Vec<&str> = history
        .iter()
        .filter(|e| e.actor == "operator:alice")
        .map(|e| e.kind.as_str())
        .collect();
    assert!(
        by_operator.contains(&"hold_placed") && by_operator.contains(&"hold_released"),
        "{by_operator:?}"
    );
    app.stop().await;
}

/// A hold job over 40 sagas at 20/s: paused (nothing more happens), resumed, given back by a
/// replica that shuts down, finished by the other — 40 holds, each placed once.
#[tokio::test]
async fn a_bulk_job_pauses_resumes_and_moves_to_another_replica_with_exact_counts() {
    let (first, dir) = spawn_with_catalog(CATALOG, |_| {}).await;
    let ids = tickets(&first, "P-", 40).await;
    let job = start(&first, request(BulkAction::Hold, by_prefix("P-"), 20.0, true))
        .await
        .expect("started");
    let id = job.job_id.clone();
    job_until(&first, &id, "made progress", |j| j.processed >= 5).await;

    let pause = |reason: &str| CancelJobRequest {
        job_id: id.clone(),
        reason: reason.into(),
    };
    let paused = first
        .client
        .clone()
        .pause_job(authed(pause("look at the first ones"), OPERATOR_TOKEN))
        .await
        .expect("paused")
        .into_inner();
    assert_eq!(paused.state, JobState::Paused as i32);
    assert_eq!(paused.paused_by, "alice");
    // Once paused, no item commits: every hold placed so far is one the job counted.
    let processed = first
        .client
        .clone()
        .get_job(GetJobRequest { job_id: id.clone() })
        .await
        .expect("GetJob")
        .into_inner()
        .processed;
    assert_eq!(first.rows("saga_holds").await, i64::from(processed));
    let again = first
        .client
        .clone()
        .pause_job(authed(pause("twice"), OPERATOR_TOKEN))
        .await
        .unwrap_err();
    assert_status(
        &again,
        Code::FailedPrecondition,
        &format!("job {id} is paused already"),
    );

    // A second replica; the first resumes the job, then shuts down while working it.
    let path = dir.path().join("sagas.toml");
    let second = spawn_on(
        first.pool.clone(),
        first.db_url.clone(),
        first.kafka.clone(),
        |s| {
            s.catalog_path = Some(path);
        },
    )
    .await;
    first
        .client
        .clone()
        .resume_job(authed(pause("go on"), OPERATOR_TOKEN))
        .await
        .expect("resumed");
    job_until(&first, &id, "went on", |j| j.processed >= processed + 3).await;
    first.stop().await;

    let done = job_until(&second, &id, "completed", |j| {
        j.state == JobState::Completed as i32
    })
    .await;
    assert_eq!(done.processed, 40);
    assert_eq!(done.counts.get("held"), Some(&40));
    assert_eq!(second.rows("saga_holds").await, 40);
    for saga in &ids {
        let placed = second
            .count(&format!(
                "SELECT count(*) FROM saga_events WHERE saga_id = '{saga}' AND kind = 'hold_placed'"
            ))
            .await;
        assert_eq!(placed, 1, "saga {saga} held once");
    }
    let items = second
        .count(&format!(
            "SELECT count(DISTINCT saga_id) FROM operator_job_items WHERE job_id = '{id}'"
        ))
        .await;
    assert_eq!(items, 40, "one result per saga");
    second.stop().await;
}
