//! The saga language end to end, against the real broker and the real participants: a parallel
//! group with one branch refused while the other is in flight; an approval given, refused and left
//! to its deadline, and skipped by a condition; a child saga compensated by its parent; a signal to
//! a finished saga. Every run ends with the orchestrator's audit: the databases agree.

use saga_e2e::{OPERATOR_TOKEN, Stack, WAIT, data, dispatched};
use saga_proto::v1::{SagaState, SignalSagaRequest};
use serde_json::json;

async fn moderated(stack: &Stack, user: &str, title: &str, trusted: bool) -> String {
    stack
        .client
        .start(
            "moderated_post",
            json!({"user_id": user, "title": title, "body": "text", "trusted": trusted}),
            "",
        )
        .await
        .expect("moderated_post starts")
}

async fn user(stack: &Stack, email: &str, name: &str) -> String {
    let id = stack.register(email, name).await;
    stack.finish_one(&id).await;
    stack.context(&id, "user_id").await
}

/// The order of the first dispatches of compensations, by step.
fn compensation_order(history: &[saga_proto::v1::SagaEvent]) -> Vec<u64> {
    dispatched(history)
        .into_iter()
        .filter(|(_, phase)| phase == "compensation")
        .map(|(step, _)| step)
        .collect()
}

/// The order in which actions ended well, by step.
fn completion_order(history: &[saga_proto::v1::SagaEvent]) -> Vec<u64> {
    history
        .iter()
        .filter(|e| e.kind == "step_succeeded" && data(e)["phase"] == "action")
        .map(|e| data(e)["step"].as_u64().expect("a step"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_branch_waits_for_the_branch_in_flight_then_compensates_exactly_what_ran() {
    let mut stack = Stack::start().await;
    let ann = user(&stack, "ann@example.com", "Ann").await;
    // The user service is away: ReservePostQuota stays in flight while CreatePost, run at the same
    // time, is refused (an empty title is against the post service's rules).
    stack.stop_users().await;
    let id = moderated(&stack, &ann, "   ", false).await;
    stack
        .wait_event(&id, "create_post refused", |e| e.kind == "step_rejected")
        .await;
    let view = stack.client.get(&id).await.expect("saga");
    assert_eq!(view.state, SagaState::Compensating as i32);
    let history = stack.history(&id).await;
    assert_eq!(
        dispatched(&history),
        [(0, "action".to_owned()), (1, "action".to_owned())],
        "both branches were sent; nothing is undone while the quota reservation is in flight"
    );
    stack.start_users().await;
    let done = stack.finish_one(&id).await;
    assert_eq!(
        done.state,
        SagaState::Compensated as i32,
        "{}",
        done.failure_reason
    );
    assert!(
        done.failure_reason.contains("create_post"),
        "{}",
        done.failure_reason
    );
    let history = stack.history(&id).await;
    assert_eq!(
        compensation_order(&history),
        [0],
        "only the reservation is undone (the refused post applied nothing), once"
    );
    assert!(
        !history.iter().any(|e| e.kind == "wait_started"),
        "the moderation never started"
    );
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_approves_rejects_or_lets_the_wait_run_out_and_a_trusted_author_skips_it() {
    let stack = Stack::start().await;
    let bo = user(&stack, "bo@example.com", "Bo").await;
    let cy = user(&stack, "cy@example.com", "Cy").await;
    let approved = moderated(&stack, &bo, "Approved", false).await;
    let rejected = moderated(&stack, &cy, "Rejected", false).await;
    let ignored = moderated(&stack, &bo, "Ignored", false).await;
    let trusted = moderated(&stack, &cy, "Trusted", true).await;
    for id in [&approved, &rejected, &ignored] {
        stack
            .client
            .wait_at_step(id, "moderate", WAIT)
            .await
            .expect("waits for the moderator");
    }
    stack
        .client
        .decide_approval(&approved, true, "fine", OPERATOR_TOKEN)
        .await
        .expect("approved");
    stack
        .client
        .decide_approval(&rejected, false, "spam", OPERATOR_TOKEN)
        .await
        .expect("rejected");
    // The moderation wait is 20 s: move the orchestrator's clock past it.
    stack.clock.advance(chrono::TimeDelta::seconds(21));
    let views = stack
        .finish(&[
            approved.clone(),
            rejected.clone(),
            ignored.clone(),
            trusted.clone(),
        ])
        .await;
    let states: Vec<i32> = views.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            SagaState::Completed as i32,
            SagaState::Compensated as i32,
            SagaState::Compensated as i32,
            SagaState::Completed as i32
        ]
    );
    assert!(
        views[1].failure_reason.contains("rejected by ops: spam"),
        "{}",
        views[1].failure_reason
    );
    assert!(
        views[2].failure_reason.contains("no approval within 20000 ms"),
        "{}",
        views[2].failure_reason
    );
    for id in [&rejected, &ignored] {
        let history = stack.history(id).await;
        let mut undone = compensation_order(&history);
        let mut ended = completion_order(&history);
        ended.retain(|s| *s < 2);
        ended.reverse();
        assert_eq!(undone, ended, "compensated in reverse order of completion");
        undone.sort_unstable();
        assert_eq!(undone, [0, 1], "both branches undone, once each");
    }
    let skipped = stack.history(&trusted).await;
    assert!(
        skipped.iter().any(|e| e.kind == "step_skipped"),
        "the trusted author skips moderation"
    );
    // A signal to a finished saga is refused precisely.
    let e = stack
        .client
        .raw()
        .signal_saga(SignalSagaRequest {
            saga_id: approved.clone(),
            signal: "anything".into(),
            payload_json: String::new(),
            idempotency_key: String::new(),
        })
        .await
        .expect_err("moderated_post declares no signal");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_saga_is_compensated_by_its_parent() {
    let stack = Stack::start().await;
    let parent = stack
        .client
        .start(
            "onboard_author",
            json!({"email": "dee@example.com", "name": "Dee"}),
            "",
        )
        .await
        .expect("onboard_author starts");
    let waiting = stack
        .client
        .wait_at_step(&parent, "welcome", WAIT)
        .await
        .expect("the child registered the author");
    let child = waiting.steps[0].child_saga_id.clone();
    let kid = stack.client.get(&child).await.expect("the child exists");
    assert_eq!(
        (kid.saga_type.as_str(), kid.state),
        ("register_user", SagaState::Completed as i32)
    );
    assert_eq!(kid.parent_saga_id, parent);
    let users = || {
        Stack::scalar(
            &stack.dbs.users,
            "SELECT count(*) FROM users WHERE email = 'dee@example.com'",
        )
    };
    assert_eq!(users().await, 1);
    stack
        .client
        .decide_approval(&parent, false, "not an author after all", OPERATOR_TOKEN)
        .await
        .expect("rejected");
    let done = stack.finish(&[parent.clone(), child.clone()]).await;
    assert_eq!(
        done[0].state,
        SagaState::Compensated as i32,
        "{}",
        done[0].failure_reason
    );
    assert_eq!(
        done[1].state,
        SagaState::Compensated as i32,
        "{}",
        done[1].failure_reason
    );
    assert_eq!(users().await, 0, "the child's user was deleted again");
    let authors = Stack::scalar(
        &stack.dbs.posts,
        "SELECT count(*) FROM authors WHERE name = 'Dee'",
    )
    .await;
    assert_eq!(authors, 0, "and its author replica");
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}
