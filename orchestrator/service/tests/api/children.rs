//! Child sagas against real PostgreSQL and Kafka: a parent starts a child and waits for its end;
//! compensating the parent's step compensates the completed child; aborting the parent stops a
//! running child; a child whose input does not fit fails the parent's step with the reason.

use saga_proto::v1::{
    AbortSagaRequest, DecideApprovalRequest, GetSagaRequest, SagaState, SagaView, SignalSagaRequest,
    StartSagaRequest,
};

use crate::helpers::{OPERATOR_TOKEN, TestApp, authed, catalog_file, spawn_app_with, spawn_with_catalog};

const CATALOG: &str = r#"
[[saga]]
name = "kid"
version = 1
input = [{ name = "email", kind = "email" }]
[[saga.steps]]
name = "go"
wait = { signal = "go", timeout_ms = 600000 }

[[saga]]
name = "onboard"
version = 1
input = [{ name = "email", kind = "string" }]
[[saga.steps]]
name = "account"
child = { saga = "kid", input = { email = "email" } }
[[saga.steps]]
name = "review"
wait = { approval = true, timeout_ms = 600000 }
"#;

async fn app() -> (TestApp, tempfile::TempDir) {
    spawn_with_catalog(CATALOG, |_| {}).await
}

async fn start(app: &TestApp, email: &str) -> String {
    app.client
        .clone()
        .start_saga(StartSagaRequest {
            saga_type: "onboard".into(),
            payload_json: format!(r#"{{"email": "{email}"}}"#),
            idempotency_key: String::new(),
        })
        .await
        .expect("started")
        .into_inner()
        .saga_id
}

/// The child the parent's step 0 started, once it exists.
async fn child_of(app: &TestApp, parent: &str) -> SagaView {
    let view = app
        .wait_until(parent, "a child started", |v| {
            !v.steps[0].child_saga_id.is_empty()
        })
        .await
        .saga
        .expect("view");
    let child = view.steps[0].child_saga_id.clone();
    for _ in 0..200 {
        if let Ok(found) = app
            .client
            .clone()
            .get_saga(GetSagaRequest {
                saga_id: child.clone(),
            })
            .await
        {
            return found.into_inner().saga.expect("view");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("child saga {child} was never created");
}

async fn events(app: &TestApp, saga: &str, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM saga_events WHERE saga_id = $1::uuid AND kind = $2")
        .bind(saga)
        .bind(kind)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_completed_child_is_the_steps_success_and_is_compensated_with_its_parent() {
    let (app, _dir) = app().await;
    let mut client = app.client.clone();
    let parent = start(&app, "ann@example.com").await;
    let child = child_of(&app, &parent).await;
    assert_eq!(child.saga_type, "kid");
    assert_eq!(
        (child.parent_saga_id.as_str(), child.parent_step),
        (parent.as_str(), Some(0))
    );
    assert_eq!(child.state(), SagaState::Running);
    assert_eq!(app.view(&parent).await.steps[0].kind, "child");

    client
        .signal_saga(SignalSagaRequest {
            saga_id: child.saga_id.clone(),
            signal: "go".into(),
            payload_json: String::new(),
            idempotency_key: String::new(),
        })
        .await
        .expect("signal");
    app.wait_for(&child.saga_id, SagaState::Completed).await;
    app.wait_until(&parent, "at the review", |v| v.current_step == "review")
        .await;

    client
        .decide_approval(authed(
            DecideApprovalRequest {
                saga_id: parent.clone(),
                approved: false,
                reason: "not this one".into(),
                step_index: None,
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("rejected");
    let view = app.wait_for(&parent, SagaState::Compensated).await;
    let step = view.steps[0]
        .compensation
        .clone()
        .expect("a child step is compensable");
    assert_eq!(step.status(), saga_proto::v1::PhaseStatus::Succeeded);
    let kid = app.wait_for(&child.saga_id, SagaState::Compensated).await;
    assert!(
        kid.failure_reason.contains("compensated by its parent"),
        "{}",
        kid.failure_reason
    );
    assert_eq!(events(&app, &parent, "child_started").await, 1);
    assert_eq!(
        events(&app, &parent, "child_ended").await,
        2,
        "completed, then compensated"
    );
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_inputs")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(pending, 0, "every input was applied and removed");
}

#[tokio::test]
async fn aborting_the_parent_stops_its_running_child_and_a_child_that_cannot_start_fails_the_step() {
    let (app, _dir) = app().await;
    let mut client = app.client.clone();
    let parent = start(&app, "bob@example.com").await;
    let child = child_of(&app, &parent).await;
    client
        .abort_saga(authed(
            AbortSagaRequest {
                saga_id: parent.clone(),
                reason: "customer left".into(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("aborted");
    app.wait_for(&child.saga_id, SagaState::Compensated).await;
    app.wait_for(&parent, SagaState::Compensated).await;

    // The parent's input is a string; the child's is an e-mail address.
    let parent = start(&app, "not-an-address").await;
    let view = app.wait_for(&parent, SagaState::Compensated).await;
    assert!(
        view.failure_reason
            .contains("did not start: its input does not fit kid v1")
            && view.failure_reason.contains("email"),
        "{}",
        view.failure_reason
    );
    assert!(
        view.steps[0].child_saga_id.len() == 36,
        "the id it would have had is recorded"
    );
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE parent_id = $1::uuid")
        .bind(&parent)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(created, 0, "no child was created");
}

/// What sagas owe each other survives a stopped timer loop, and two replicas applying the same
/// rows at once start each child once.
#[tokio::test]
async fn a_child_owed_while_no_timer_runs_is_started_once_by_two_replicas_later() {
    let (path, _dir) = catalog_file(CATALOG);
    let catalog = path.clone();
    let app = spawn_app_with(|s| {
        s.catalog_path = Some(catalog);
        s.timers.enabled = false;
    })
    .await;
    let n = 20;
    let mut parents = Vec::new();
    for i in 0..n {
        parents.push(start(&app, &format!("p{i}@example.com")).await);
    }
    assert_eq!(app.count("SELECT count(*) FROM saga_inputs").await, n);
    assert_eq!(
        app.count("SELECT count(*) FROM sagas WHERE parent_id IS NOT NULL")
            .await,
        0,
        "no child starts without the loop that applies the inputs"
    );
    let (pool, db_url, kafka) = (app.pool.clone(), app.db_url.clone(), app.kafka.clone());
    app.stop().await;

    let with_timers = |s: &mut saga_orchestrator::Settings| {
        s.catalog_path = Some(path.clone());
        s.timers.batch_size = 3;
    };
    let first = crate::helpers::spawn_on(pool.clone(), db_url.clone(), kafka.clone(), with_timers).await;
    let second = crate::helpers::spawn_on(pool, db_url, kafka, with_timers).await;
    for parent in &parents {
        child_of(&first, parent).await;
    }
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    while first.count("SELECT count(*) FROM saga_inputs").await > 0 {
        assert!(std::time::Instant::now() < deadline, "inputs never drained");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        first
            .count("SELECT count(*) FROM sagas WHERE parent_id IS NOT NULL")
            .await,
        n,
        "one child per parent"
    );
    assert_eq!(
        first
            .count("SELECT count(*) FROM saga_events WHERE kind = 'saga_started' AND actor LIKE 'parent:%'")
            .await,
        n,
        "each child started once"
    );
    second.stop().await;
    first.stop().await;
}
