//! Operator actions: authorisation, abort, compensation replay (single, dry run, idempotent), retry,
//! filters and watch streams — each recorded in the saga's history with who and why.

use std::time::Duration;

use chrono::TimeDelta;
use saga_proto::v1::{
    AbortSagaRequest, ListSagasRequest, OperatorActionResponse, Phase, PhaseStatus,
    ReplayCompensationRequest, ReplayOutcome, RetryStepRequest, SagaFilter, SagaState, WatchSagaRequest,
    WatchSagasRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::{
    Answer, OPERATOR_TOKEN, READER_TOKEN, TestApp, WAIT, assert_status, authed, command, json, spawn_app,
    spawn_app_with,
};

/// A register_user saga parked as failed: CreateAuthor refused, DeleteUser never answered.
async fn parked_saga(app: &TestApp) -> (String, saga_runtime::testing::TopicReader) {
    let (mut ids, users) = app.parked(1).await;
    (ids.remove(0), users)
}

/// How many attempts the parked compensation of step 0 made.
async fn compensation_attempts(app: &TestApp, id: &str) -> u32 {
    app.view(id).await.steps[0].compensation.as_ref().unwrap().attempt
}

/// AbortSaga as the operator.
async fn abort(app: &TestApp, id: &str, reason: &str) -> Result<OperatorActionResponse, tonic::Status> {
    let request = AbortSagaRequest {
        saga_id: id.into(),
        reason: reason.into(),
    };
    app.client
        .clone()
        .abort_saga(authed(request, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
}

fn replay(id: &str, reason: &str, dry_run: bool) -> ReplayCompensationRequest {
    ReplayCompensationRequest {
        saga_id: id.into(),
        reason: reason.into(),
        dry_run,
    }
}

#[tokio::test]
async fn operator_actions_without_an_operator_credential_change_nothing() {
    let app = spawn_app_with(|s| s.relay.enabled = false).await;
    let id = app.register("guarded@example.com").await;
    let before = app.get(&id).await;
    let mut c = app.client.clone();
    let not_allowed = || AbortSagaRequest {
        saga_id: id.clone(),
        reason: "not allowed".into(),
    };

    let err = c.abort_saga(not_allowed()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        err.message(),
        "operator actions need `authorization: Bearer <operator token>`"
    );
    let err = c
        .abort_saga(authed(not_allowed(), "wrong-token-wrong-token"))
        .await
        .unwrap_err();
    assert_status(&err, Code::Unauthenticated, "authorization: unknown credential");
    let err = c
        .abort_saga(authed(not_allowed(), READER_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .replay_compensation(authed(replay(&id, "x", false), READER_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .retry_step(RetryStepRequest {
            saga_id: id.clone(),
            step_index: None,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // A missing reason is refused before anything happens, too.
    let err = abort(&app, &id, "  ").await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "reason: required; it is recorded in the saga's history",
    );

    assert_eq!(app.get(&id).await, before, "nothing changed, nothing recorded");
    assert_eq!(app.rows("outbox").await, 1, "no command was added");
}

#[tokio::test]
async fn abort_compensates_a_running_saga_and_records_who_and_why() {
    let app = spawn_app().await;
    let users = app.reader("user.commands").await;
    let participant = app.participant();
    let id = app.register("abort@example.com").await;
    participant
        .answer(&command(&users.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    app.wait_until(&id, "at create_author", |v| v.current_step == "create_author")
        .await;

    let response = abort(&app, &id, "customer withdrew").await.unwrap();
    let view = response.saga.unwrap();
    assert_eq!(view.state, SagaState::Compensating as i32);
    assert_eq!(view.failure_reason, "aborted: customer withdrew");
    assert_eq!(
        view.steps[1].action.as_ref().unwrap().status,
        PhaseStatus::Abandoned as i32
    );
    // Both steps may have taken effect: undo the abandoned one first, then the first.
    assert_eq!(response.commands.len(), 1);
    assert_eq!(
        (
            response.commands[0].command_type.as_str(),
            response.commands[0].phase
        ),
        ("DeleteAuthor", Phase::Compensation as i32)
    );
    assert_eq!(response.commands[0].topic, app.kafka.topic("post.commands"));

    let history = app.get(&id).await.history;
    let aborted = history
        .iter()
        .find(|e| e.kind == "saga_aborted")
        .expect("abort recorded");
    assert_eq!(aborted.actor, "operator:alice");
    assert_eq!(json(&aborted.data_json)["reason"], "customer withdrew");

    let err = abort(&app, &id, "again").await.unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "only a running saga can be aborted; this one is compensating",
    );
    let missing = uuid::Uuid::now_v7().to_string();
    let err = abort(&app, &missing, "x").await.unwrap_err();
    assert_status(&err, Code::NotFound, &format!("no saga {missing}"));
}

#[tokio::test]
async fn replaying_a_parked_compensation_is_dry_runnable_idempotent_and_audited() {
    let app = spawn_app().await;
    let (id, users) = parked_saga(&app).await;
    let participant = app.participant();
    let mut c = app.client.clone();
    let before = app.get(&id).await;
    let next = compensation_attempts(&app, &id).await + 1;

    // Dry run: says what would be sent, changes nothing.
    let dry = c
        .replay_compensation(authed(replay(&id, "user-service is back", true), OPERATOR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.outcome, ReplayOutcome::WouldReplay as i32);
    assert_eq!(
        (dry.commands[0].command_type.as_str(), dry.commands[0].attempt),
        ("DeleteUser", next)
    );
    assert_eq!(app.get(&id).await, before, "a dry run changes nothing");
    assert!(users.drain(Duration::from_millis(300)).await.is_empty());

    let done = c
        .replay_compensation(authed(replay(&id, "user-service is back", false), OPERATOR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.outcome, ReplayOutcome::Replayed as i32);
    let resent = command(&users.take(1, WAIT).await[0]);
    assert_eq!(
        (resent.command_type.as_str(), resent.attempt, resent.phase),
        ("DeleteUser", next, Phase::Compensation as i32)
    );

    // Replaying again while it is in flight sends nothing new.
    let again = c
        .replay_compensation(authed(replay(&id, "double click", false), OPERATOR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, ReplayOutcome::AlreadyInProgress as i32);
    assert!(users.drain(Duration::from_millis(300)).await.is_empty());

    // A late answer to an old attempt is ignored; the replayed attempt's answer ends the saga.
    let mut stale = participant.reply_for(&resent, Answer::Ok("{}"));
    stale.attempt = next - 1;
    participant.send(&stale).await;
    participant.answer(&resent, Answer::Ok("{}")).await;
    app.wait_for(&id, SagaState::Compensated).await;
    let last = c
        .replay_compensation(authed(replay(&id, "triple click", false), OPERATOR_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.outcome, ReplayOutcome::AlreadyCompensated as i32);

    let history = app.get(&id).await.history;
    let by_alice: Vec<_> = history
        .iter()
        .filter(|e| e.actor == "operator:alice")
        .map(|e| (e.kind.as_str(), json(&e.data_json)["reason"].clone()))
        .collect();
    assert_eq!(
        by_alice[0],
        ("compensation_replayed", "user-service is back".into())
    );
    assert!(by_alice.contains(&("replay_skipped", "double click".into())));
    assert!(by_alice.contains(&("replay_skipped", "triple click".into())));
    assert!(history.iter().any(|e| {
        e.kind == "reply_ignored"
            && e.data_json
                .contains(&format!("stale: answers attempt {}", next - 1))
    }));

    // Replay does not apply to a running saga.
    let running = app.register("running@example.com").await;
    let err = c
        .replay_compensation(authed(replay(&running, "x", false), OPERATOR_TOKEN))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "the saga is running and has not failed; abort it to compensate",
    );
}

#[tokio::test]
async fn retry_step_resends_a_pivot_that_never_answered() {
    let app = spawn_app().await;
    let (users, posts) = (
        app.reader("user.commands").await,
        app.reader("post.commands").await,
    );
    let participant = app.participant();
    let id = app.publish("T", "").await.unwrap().saga_id;
    participant
        .answer(&command(&users.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    let create_post = command(&posts.take(1, WAIT).await[0]);
    let at = app.view(&id).await.current_step;
    participant.answer(&create_post, Answer::Ok("{}")).await;
    app.wait_past(&id, &at).await;
    // ConfirmPost (the pivot) never answers: its 15-minute budget is spent, then the saga parks
    // instead of compensating.
    let view = app
        .jump_until(&id, SagaState::Failed, TimeDelta::minutes(2))
        .await;
    assert!(
        view.failure_reason
            .contains("the outcome of this pivot step is unknown"),
        "{}",
        view.failure_reason
    );
    let sent = view.steps[2].action.as_ref().unwrap().attempt as usize;
    assert!(sent > 2, "the pivot was retried for its whole budget: {sent}");
    let confirms = users.take(sent, WAIT).await;
    assert!(confirms.iter().all(|c| command(c).command_type == "ConfirmPost"));

    let mut c = app.client.clone();
    let err = c
        .retry_step(authed(
            RetryStepRequest {
                saga_id: id.clone(),
                step_index: Some(0),
                reason: "x".into(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "step 0 is not the step to retry; step 2 (`confirm_post`) is"
    );
    let response = c
        .retry_step(authed(
            RetryStepRequest {
                saga_id: id.clone(),
                step_index: Some(2),
                reason: "user-service fixed".into(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.saga.unwrap().state, SagaState::Running as i32);
    let confirm = command(&users.take(1, WAIT).await[0]);
    assert_eq!(
        (confirm.command_type.as_str(), confirm.attempt),
        ("ConfirmPost", sent as u32 + 1)
    );
    participant.answer(&confirm, Answer::Ok("{}")).await;
    app.wait_for(&id, SagaState::Completed).await;
    let retried = app
        .get(&id)
        .await
        .history
        .into_iter()
        .find(|e| e.kind == "step_retried")
        .unwrap();
    assert_eq!(retried.actor, "operator:alice");
    assert_eq!(json(&retried.data_json)["reason"], "user-service fixed");
}

#[tokio::test]
async fn list_filters_and_watch_streams_follow_sagas() {
    let app = spawn_app().await;
    let users = app.reader("user.commands").await;
    let posts = app.reader("post.commands").await;
    let participant = app.participant();
    let mut c = app.client.clone();
    let mut all = c
        .watch_sagas(WatchSagasRequest {
            filter: Some(SagaFilter {
                state: SagaState::Completed as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let key_saga = app
        .start_registration("w@example.com", "W", "watch-key")
        .await
        .unwrap()
        .saga_id;
    let mut one = c
        .watch_saga(WatchSagaRequest {
            saga_id: key_saga.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = one.next().await.unwrap().unwrap();
    assert_eq!(
        (first.state, first.current_step.as_str()),
        (SagaState::Running as i32, "create_user")
    );

    participant
        .answer(&command(&users.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    let next = tokio::time::timeout(WAIT, one.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.current_step, "create_author");
    assert!(next.version > first.version);
    participant
        .answer(&command(&posts.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    let last = tokio::time::timeout(WAIT, one.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(last.state, SagaState::Completed as i32);
    let done = tokio::time::timeout(WAIT, all.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.saga_id.as_str(), done.state),
        (key_saga.as_str(), SagaState::Completed as i32)
    );

    let other = app.register("other@example.com").await;
    let list = |filter: SagaFilter| {
        let mut c = app.client.clone();
        async move {
            c.list_sagas(ListSagasRequest {
                filter: Some(filter),
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner()
                    .sagas
                    .into_iter()
                    .map(|s| s.saga_id)
                    .collect::<Vec<_>>()
            })
        }
    };
    assert_eq!(
        list(SagaFilter {
            idempotency_key: "watch-key".into(),
            ..Default::default()
        })
        .await
        .unwrap(),
        vec![key_saga.clone()]
    );
    assert_eq!(
        list(SagaFilter {
            current_step: "create_user".into(),
            ..Default::default()
        })
        .await
        .unwrap(),
        vec![other.clone()]
    );
    assert_eq!(
        list(SagaFilter {
            id_prefix: other[..13].into(),
            ..Default::default()
        })
        .await
        .unwrap(),
        vec![other.clone()]
    );
    let now = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 60,
        nanos: 0,
    };
    assert!(
        list(SagaFilter {
            created_after: Some(now),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        list(SagaFilter {
            created_before: Some(now),
            ..Default::default()
        })
        .await
        .unwrap()
        .len(),
        2
    );
    let err = list(SagaFilter {
        id_prefix: "xyz".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "filter.id_prefix: `xyz` is not the start of a saga id (1-32 hex digits)",
    );
}

#[tokio::test]
async fn reads_can_be_protected() {
    let app = spawn_app_with(|s| {
        s.relay.enabled = false;
        s.auth.protect_reads = true;
    })
    .await;
    let mut c = app.client.clone();
    let err = c.list_sagas(ListSagasRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        c.list_sagas(authed(ListSagasRequest::default(), READER_TOKEN))
            .await
            .is_ok()
    );
    assert!(
        c.list_sagas(authed(ListSagasRequest::default(), OPERATOR_TOKEN))
            .await
            .is_ok()
    );
}
