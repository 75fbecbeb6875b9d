//! Sagas driven to the end by a participant stand-in over real Kafka: success, compensation,
//! duplicates and stale replies, deadlines, and poison replies.

use std::time::Duration;

use chrono::TimeDelta;
use saga_proto::v1::{Phase, PhaseStatus, SagaState};

use crate::helpers::{Answer, WAIT, command, json, spawn_app};

#[tokio::test]
async fn success_replies_complete_the_saga() {
    let app = spawn_app().await;
    let (users, posts) = (
        app.reader("user.commands").await,
        app.reader("post.commands").await,
    );
    let participant = app.participant();
    let id = app.register("ok@example.com").await;

    let create_user = command(&users.take(1, WAIT).await[0]);
    let reply = participant
        .answer(&create_user, Answer::Ok(r#"{"user_number": 42}"#))
        .await;
    let create_author = command(&posts.take(1, WAIT).await[0]);
    assert_eq!(
        (create_author.step_index, create_author.command_type.as_str()),
        (1, "CreateAuthor")
    );
    assert_eq!(
        json(&create_author.payload_json)["user_number"],
        42,
        "replies feed later steps"
    );
    assert_eq!(
        create_author.causation_id, reply.message_id,
        "the reply caused the next command"
    );
    participant.answer(&create_author, Answer::Ok("{}")).await;

    let view = app.wait_for(&id, SagaState::Completed).await;
    assert_eq!(view.current_step, "");
    assert!(
        view.steps
            .iter()
            .all(|s| s.action.as_ref().unwrap().status == PhaseStatus::Succeeded as i32)
    );
    assert_eq!(
        view.steps[0].action.as_ref().unwrap().reply_payload_json,
        r#"{"user_number":42}"#
    );
    let history = app.get(&id).await.history;
    assert_eq!(history.last().map(|e| e.kind.as_str()), Some("saga_completed"));
    assert!(history.iter().any(|e| e.actor == "participant:test-participant"));
}

#[tokio::test]
async fn a_failure_at_step_two_compensates_step_one() {
    let app = spawn_app().await;
    let (users, posts) = (
        app.reader("user.commands").await,
        app.reader("post.commands").await,
    );
    let participant = app.participant();
    let id = app.register("comp@example.com").await;

    let create_user = command(&users.take(1, WAIT).await[0]);
    participant.answer(&create_user, Answer::Ok("{}")).await;
    let create_author = command(&posts.take(1, WAIT).await[0]);
    participant
        .answer(&create_author, Answer::Business("author name is taken"))
        .await;

    let delete_user = command(&users.take(1, WAIT).await[0]);
    assert_eq!(delete_user.command_type, "DeleteUser");
    assert_eq!(
        (delete_user.step_index, delete_user.phase, delete_user.attempt),
        (0, Phase::Compensation as i32, 1)
    );
    assert_eq!(delete_user.idempotency_key, format!("{id}/0/compensation"));
    assert_eq!(
        json(&delete_user.payload_json)["user_id"],
        json(&create_user.payload_json)["user_id"]
    );
    assert_eq!(app.view(&id).await.state, SagaState::Compensating as i32);
    participant.answer(&delete_user, Answer::Ok("{}")).await;

    let view = app.wait_for(&id, SagaState::Compensated).await;
    assert_eq!(
        view.failure_reason,
        "step `create_author` was rejected: author name is taken"
    );
    assert_eq!(
        view.steps[1].action.as_ref().unwrap().status,
        PhaseStatus::Rejected as i32
    );
    assert_eq!(
        view.steps[1].compensation.as_ref().unwrap().status,
        PhaseStatus::Pending as i32,
        "rejected step not undone"
    );
    assert!(
        posts.drain(Duration::from_millis(300)).await.is_empty(),
        "nothing else sent to the post service"
    );
}

#[tokio::test]
async fn duplicate_and_stale_replies_change_nothing() {
    let app = spawn_app().await;
    let (users, posts) = (
        app.reader("user.commands").await,
        app.reader("post.commands").await,
    );
    let participant = app.participant();
    let id = app.register("dup@example.com").await;

    let create_user = command(&users.take(1, WAIT).await[0]);
    let reply = participant.answer(&create_user, Answer::Ok("{}")).await;
    let create_author = command(&posts.take(1, WAIT).await[0]);
    let version = app.view(&id).await.version;

    // The same reply redelivered, a fresh duplicate, and answers for attempts that never were current.
    participant.send(&reply).await;
    participant
        .answer(&create_user, Answer::Business("late refusal"))
        .await;
    let mut stale = participant.reply_for(&create_author, Answer::Business("stale"));
    stale.attempt = 2;
    participant.send(&stale).await;
    stale.attempt = 0;
    participant.send(&stale).await;

    let mut reasons = vec![];
    for _ in 0..1000 {
        reasons = app
            .get(&id)
            .await
            .history
            .iter()
            .filter(|e| e.kind == "reply_ignored")
            .map(|e| json(&e.data_json)["reason"].as_str().unwrap().to_owned())
            .collect();
        if reasons.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reasons.len(), 4, "every ignored reply is recorded: {reasons:?}");
    assert!(
        reasons[0].starts_with("duplicate: the action is already succeeded"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("duplicate: the action is already succeeded"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], "stale: answers attempt 2, attempt 1 is current");
    assert_eq!(reasons[3], "stale: answers attempt 0, attempt 1 is current");
    let view = app.view(&id).await;
    assert_eq!(
        (view.version, view.state),
        (version, SagaState::Running as i32),
        "state untouched"
    );
    assert!(
        posts.drain(Duration::from_millis(300)).await.is_empty(),
        "no second CreateAuthor"
    );
    assert!(
        users.drain(Duration::from_millis(100)).await.is_empty(),
        "no compensation sent"
    );

    participant.answer(&create_author, Answer::Ok("{}")).await;
    app.wait_for(&id, SagaState::Completed).await;
    participant.answer(&create_author, Answer::Ok("{}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.view(&id).await.state,
        SagaState::Completed as i32,
        "a duplicate after the end changes nothing"
    );
}

#[tokio::test]
async fn a_missed_deadline_retries_the_step_with_the_same_idempotency_key() {
    let app = spawn_app().await;
    let users = app.reader("user.commands").await;
    let participant = app.participant();
    let id = app.register("slow@example.com").await;
    let first = command(&users.take(1, WAIT).await[0]);

    app.clock.advance(TimeDelta::seconds(6)); // past the 5 s deadline; retry after ~200 ms backoff
    let view = app
        .wait_until(&id, "scheduled a retry", |v| {
            v.steps[0].action.as_ref().unwrap().status == PhaseStatus::RetryScheduled as i32
        })
        .await
        .saga
        .unwrap();
    assert_eq!(
        view.steps[0].action.as_ref().unwrap().last_error,
        "no reply within the 5000 ms deadline"
    );
    app.clock.advance(TimeDelta::seconds(1));
    let second = command(&users.take(1, WAIT).await[0]);
    assert_eq!(
        (second.attempt, second.idempotency_key.as_str()),
        (2, first.idempotency_key.as_str())
    );
    assert_ne!(
        second.message_id, first.message_id,
        "each attempt is a distinct message"
    );
    assert_eq!(second.causation_id, "timer");

    participant.answer(&first, Answer::Ok("{}")).await; // the old attempt answers late: stale
    participant.answer(&second, Answer::Ok("{}")).await;
    let got = app
        .wait_until(&id, "moved to create_author", |v| {
            v.current_step == "create_author"
        })
        .await;
    let kinds: Vec<_> = got.history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "saga_started",
            "command_dispatched",
            "deadline_missed",
            "attempt_failed",
            "command_dispatched",
            "reply_ignored",
            "step_succeeded",
            "command_dispatched"
        ]
    );
    assert!(
        got.history
            .iter()
            .filter(|e| e.kind == "deadline_missed")
            .all(|e| e.actor == "timer")
    );
}

#[tokio::test]
async fn poison_replies_are_dead_lettered_and_later_replies_still_apply() {
    let app = spawn_app().await;
    let users = app.reader("user.commands").await;
    let dlq = app.reader("saga.replies.dlq").await;
    let participant = app.participant();
    let id = app.register("poison@example.com").await;
    let create_user = command(&users.take(1, WAIT).await[0]);

    participant.send_raw(&id, b"\x08\xff\xff garbage").await;
    let mut unknown = participant.reply_for(&create_user, Answer::Ok("{}"));
    unknown.saga_id = uuid::Uuid::now_v7().to_string();
    participant.send(&unknown).await;
    participant.answer(&create_user, Answer::Ok("{}")).await;

    // The two poison records have different keys, so they may land in either order.
    let mut dead = dlq.take(2, WAIT).await;
    dead.sort_by_key(|r| r.headers["dlq-reason"].starts_with("no saga"));
    assert!(
        dead[0].headers["dlq-reason"].starts_with("not a saga.v1.ReplyEnvelope"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(
        dead[0].payload, b"\x08\xff\xff garbage",
        "the original bytes are kept"
    );
    assert_eq!(
        dead[1].headers["dlq-reason"],
        format!("no saga {}", unknown.saga_id)
    );
    assert_eq!(
        dead[1].headers["dlq-source-topic"],
        app.kafka.topic("saga.replies")
    );
    app.wait_until(&id, "applied the good reply behind the poison", |v| {
        v.current_step == "create_author"
    })
    .await;
}

#[tokio::test]
async fn a_technical_failure_retries_after_backoff_then_a_rejection_ends_the_saga() {
    let app = spawn_app().await;
    let users = app.reader("user.commands").await;
    let participant = app.participant();
    let id = app.register("flaky@example.com").await;

    let first = command(&users.take(1, WAIT).await[0]);
    participant
        .answer(&first, Answer::Technical("users database unavailable"))
        .await;
    let second = command(&users.take(1, WAIT).await[0]); // after the ~200 ms backoff
    assert_eq!(
        (second.attempt, second.idempotency_key.as_str()),
        (2, first.idempotency_key.as_str())
    );
    participant
        .answer(&second, Answer::Business("e-mail already registered"))
        .await;

    let view = app.wait_for(&id, SagaState::Compensated).await;
    assert_eq!(
        view.failure_reason,
        "step `create_user` was rejected: e-mail already registered"
    );
    let action = view.steps[0].action.as_ref().unwrap();
    assert_eq!((action.status, action.attempt), (PhaseStatus::Rejected as i32, 2));
    assert!(
        users.drain(Duration::from_millis(300)).await.is_empty(),
        "a rejected first step needs no undo"
    );
}

#[tokio::test]
async fn a_compensation_that_never_succeeds_parks_the_saga_as_failed() {
    let app = spawn_app().await;
    let (users, posts) = (
        app.reader("user.commands").await,
        app.reader("post.commands").await,
    );
    let participant = app.participant();
    let id = app.register("parked@example.com").await;
    participant
        .answer(&command(&users.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    let create_author = command(&posts.take(1, WAIT).await[0]);
    let at = app.view(&id).await.current_step;
    participant
        .answer(&create_author, Answer::Business("pen name taken"))
        .await;
    app.wait_past(&id, &at).await;

    // The user service never answers DeleteUser: each jump in time is a missed deadline or a
    // passed backoff, and the compensation keeps trying until its budget of an hour is spent.
    let view = app
        .jump_until(&id, SagaState::Failed, TimeDelta::minutes(10))
        .await;
    let comp = view.steps[0].compensation.as_ref().unwrap();
    assert_eq!(comp.status, PhaseStatus::Exhausted as i32);
    let n = comp.attempt;
    assert!(n >= 3, "retried for the whole hour: {n} attempts");
    let deletes: Vec<_> = users.take(n as usize, WAIT).await.iter().map(command).collect();
    assert!(
        deletes
            .iter()
            .enumerate()
            .all(|(i, c)| c.attempt == i as u32 + 1 && c.command_type == "DeleteUser")
    );
    let reason = &view.failure_reason;
    assert!(
        reason.starts_with(&format!(
            "compensation of step `create_user` gave up after {n} attempts in "
        )) && reason.ends_with(" (last: no reply within the 5000 ms deadline); needs an operator"),
        "{reason}"
    );
    // Parked: nothing more is sent, however much time passes. A timer pass that certainly ran
    // after the jump (it woke another saga past its deadline) left the parked saga untouched.
    let events = app.get(&id).await.history.len();
    app.clock.advance(TimeDelta::hours(2));
    let other = app.register("after-parking@example.com").await;
    users.take(1, WAIT).await;
    app.clock.advance(TimeDelta::seconds(6));
    app.wait_until(&other, "a missed deadline", |v| {
        v.steps[0].action.as_ref().is_some_and(|a| a.attempt == 2)
    })
    .await;
    assert_eq!(
        app.get(&id).await.history.len(),
        events,
        "the parked saga did nothing"
    );
    let history = app.get(&id).await.history;
    assert_eq!(history.last().map(|e| e.kind.as_str()), Some("saga_failed"));
}
