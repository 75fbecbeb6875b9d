//! One request, two transports: every operator action refused for the same reason gets the same
//! status over gRPC and over the dashboard's HTTP API (mapped by the one table below), with the
//! same message wherever both name the field alike — and changes nothing.

use saga_proto::v1::{
    AbortSagaRequest, CancelJobRequest, DecideApprovalRequest, ReplayCompensationRequest,
    ReplayCompensationsRequest, RetryStepRequest, SagaFilter, SignalSagaRequest,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{Answer, OPERATOR_TOKEN, READER_TOKEN, TestApp, WAIT, authed, command, spawn_app};

/// The documented correspondence of gRPC codes and HTTP statuses (docs/ARCHITECTURE.md).
fn http_status_of(code: Code) -> u16 {
    match code {
        Code::InvalidArgument => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 409,
        Code::Unavailable => 503,
        other => panic!("no HTTP status agreed for {other:?}"),
    }
}

#[derive(Clone, Copy)]
enum Action {
    Replay,
    Retry,
    Abort,
    BulkReplay,
    CancelJob,
    Approve,
    Signal,
}

/// One bad request, as each transport carries it.
struct Case {
    action: Action,
    what: &'static str,
    token: Option<&'static str>,
    /// The saga (or job) id; the body's fields.
    target: String,
    body: Value,
    expected: Code,
    /// Whether both transports name the field at fault alike (a filter's fields are `type`,
    /// `step` over HTTP but `filter.saga_type`, `filter.current_step` over gRPC).
    same_message: bool,
}

fn wrap<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    match token {
        Some(t) => authed(message, t),
        None => tonic::Request::new(message),
    }
}

async fn grpc(app: &TestApp, case: &Case) -> tonic::Status {
    let mut c = app.client.clone();
    let s = |k: &str| case.body[k].as_str().unwrap_or_default().to_owned();
    let result = match case.action {
        Action::Replay => c
            .replay_compensation(wrap(
                case.token,
                ReplayCompensationRequest {
                    saga_id: case.target.clone(),
                    reason: s("reason"),
                    dry_run: false,
                },
            ))
            .await
            .map(|_| ()),
        Action::Retry => c
            .retry_step(wrap(
                case.token,
                RetryStepRequest {
                    saga_id: case.target.clone(),
                    step_index: case.body["step"].as_u64().map(|s| s as u32),
                    reason: s("reason"),
                },
            ))
            .await
            .map(|_| ()),
        Action::Abort => c
            .abort_saga(wrap(
                case.token,
                AbortSagaRequest {
                    saga_id: case.target.clone(),
                    reason: s("reason"),
                },
            ))
            .await
            .map(|_| ()),
        Action::BulkReplay => c
            .start_replay_job(wrap(
                case.token,
                ReplayCompensationsRequest {
                    filter: Some(SagaFilter {
                        saga_type: s("type"),
                        current_step: s("step"),
                        ..SagaFilter::default()
                    }),
                    reason: s("reason"),
                    dry_run: false,
                    rate_per_second: case.body["rate_per_second"].as_f64().unwrap_or(0.0),
                    limit: case.body["limit"].as_u64().unwrap_or(0) as u32,
                },
            ))
            .await
            .map(|_| ()),
        Action::CancelJob => c
            .cancel_job(wrap(
                case.token,
                CancelJobRequest {
                    job_id: case.target.clone(),
                    reason: s("reason"),
                },
            ))
            .await
            .map(|_| ()),
        Action::Approve => c
            .decide_approval(wrap(
                case.token,
                DecideApprovalRequest {
                    saga_id: case.target.clone(),
                    approved: true,
                    reason: s("reason"),
                    step_index: case.body["step"].as_u64().map(|s| s as u32),
                },
            ))
            .await
            .map(|_| ()),
        Action::Signal => c
            .signal_saga(wrap(
                case.token,
                SignalSagaRequest {
                    saga_id: case.target.clone(),
                    signal: s("signal"),
                    payload_json: if case.body["payload"].is_null() {
                        String::new()
                    } else {
                        case.body["payload"].to_string()
                    },
                    idempotency_key: s("idempotency_key"),
                },
            ))
            .await
            .map(|_| ()),
    };
    result.expect_err(case.what)
}

async fn http(app: &TestApp, case: &Case) -> (u16, String) {
    let base = format!("http://{}", app.http_addr);
    let url = match case.action {
        Action::Replay => format!("{base}/api/sagas/{}/replay", case.target),
        Action::Retry => format!("{base}/api/sagas/{}/retry", case.target),
        Action::Abort => format!("{base}/api/sagas/{}/abort", case.target),
        Action::BulkReplay => format!("{base}/api/jobs"),
        Action::CancelJob => format!("{base}/api/jobs/{}/cancel", case.target),
        Action::Approve => format!("{base}/api/sagas/{}/approve", case.target),
        Action::Signal => format!("{base}/api/sagas/{}/signal", case.target),
    };
    let mut request = reqwest::Client::new().post(url).json(&case.body);
    if let Some(t) = case.token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    (status, body["error"].as_str().unwrap_or_default().to_owned())
}

/// A register_user saga driven to completion by the participant stand-in.
async fn completed_saga(app: &TestApp) -> String {
    let (users, posts) = (
        app.reader("user.commands").await,
        app.reader("post.commands").await,
    );
    let participant = app.participant();
    let id = app.register("done@example.com").await;
    participant
        .answer(&command(&users.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    participant
        .answer(&command(&posts.take(1, WAIT).await[0]), Answer::Ok("{}"))
        .await;
    app.wait_for(&id, saga_proto::v1::SagaState::Completed).await;
    id
}

#[tokio::test]
async fn the_same_bad_request_gets_the_same_status_over_grpc_and_http_for_every_operator_action() {
    let app = spawn_app().await;
    let done = completed_saga(&app).await;
    let missing = uuid::Uuid::now_v7().to_string();
    // A job that has ended: started with a filter that selects nothing.
    let ended = app
        .client
        .clone()
        .start_replay_job(authed(
            ReplayCompensationsRequest {
                filter: Some(SagaFilter {
                    saga_type: "publish_post".into(),
                    ..SagaFilter::default()
                }),
                reason: "nothing to do".into(),
                ..ReplayCompensationsRequest::default()
            },
            OPERATOR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let deadline = std::time::Instant::now() + WAIT;
    while app
        .count(&format!(
            "SELECT count(*) FROM operator_jobs WHERE id = '{ended}' AND state = 'completed'"
        ))
        .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty job never completed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let history_before = app.get(&done).await.history.len();

    let mut cases = Vec::new();
    let reason = json!({"reason": "ops"});
    for action in [Action::Replay, Action::Retry, Action::Abort] {
        let case = |what, token, target: &str, body: &Value, expected, same_message| Case {
            action,
            what,
            token,
            target: target.to_owned(),
            body: body.clone(),
            expected,
            same_message,
        };
        cases.extend([
            case("no credential", None, &done, &reason, Code::Unauthenticated, true),
            case(
                "an unknown token",
                Some("not-a-token-not-a-token"),
                &done,
                &reason,
                Code::Unauthenticated,
                true,
            ),
            case(
                "a reader's token",
                Some(READER_TOKEN),
                &done,
                &reason,
                Code::PermissionDenied,
                true,
            ),
            case(
                "no reason",
                Some(OPERATOR_TOKEN),
                &done,
                &json!({"reason": "  "}),
                Code::InvalidArgument,
                true,
            ),
            case(
                "a reason too long",
                Some(OPERATOR_TOKEN),
                &done,
                &json!({"reason": "x".repeat(501)}),
                Code::InvalidArgument,
                true,
            ),
            case(
                "a malformed saga id",
                Some(OPERATOR_TOKEN),
                "nope",
                &reason,
                Code::InvalidArgument,
                true,
            ),
            case(
                "an unknown saga",
                Some(OPERATOR_TOKEN),
                &missing,
                &reason,
                Code::NotFound,
                true,
            ),
            case(
                "a completed saga",
                Some(OPERATOR_TOKEN),
                &done,
                &reason,
                Code::FailedPrecondition,
                true,
            ),
        ]);
    }
    let bulk = |what, body: Value, expected, same_message| Case {
        action: Action::BulkReplay,
        what,
        token: Some(OPERATOR_TOKEN),
        target: String::new(),
        body,
        expected,
        same_message,
    };
    cases.extend([
        Case {
            token: None,
            ..bulk(
                "bulk: no credential",
                json!({"reason": "r"}),
                Code::Unauthenticated,
                true,
            )
        },
        Case {
            token: Some(READER_TOKEN),
            ..bulk(
                "bulk: a reader's token",
                json!({"reason": "r"}),
                Code::PermissionDenied,
                true,
            )
        },
        bulk("bulk: no reason", json!({}), Code::InvalidArgument, true),
        bulk(
            "bulk: an unknown saga type",
            json!({"reason": "r", "type": "nope"}),
            Code::InvalidArgument,
            false,
        ),
        bulk(
            "bulk: a step name too long",
            json!({"reason": "r", "step": "s".repeat(65)}),
            Code::InvalidArgument,
            false,
        ),
        bulk(
            "bulk: a rate too high",
            json!({"reason": "r", "rate_per_second": 10_000.0}),
            Code::InvalidArgument,
            true,
        ),
        bulk(
            "bulk: a limit too high",
            json!({"reason": "r", "limit": 1_000_000}),
            Code::InvalidArgument,
            true,
        ),
    ]);
    let cancel = |what, token, target: &str, body: Value, expected| Case {
        action: Action::CancelJob,
        what,
        token,
        target: target.to_owned(),
        body,
        expected,
        same_message: true,
    };
    cases.extend([
        cancel(
            "cancel: no credential",
            None,
            &ended,
            json!({"reason": "r"}),
            Code::Unauthenticated,
        ),
        cancel(
            "cancel: a reader's token",
            Some(READER_TOKEN),
            &ended,
            json!({"reason": "r"}),
            Code::PermissionDenied,
        ),
        cancel(
            "cancel: no reason",
            Some(OPERATOR_TOKEN),
            &ended,
            json!({}),
            Code::InvalidArgument,
        ),
        cancel(
            "cancel: a malformed job id",
            Some(OPERATOR_TOKEN),
            "nope",
            json!({"reason": "r"}),
            Code::InvalidArgument,
        ),
        cancel(
            "cancel: an unknown job",
            Some(OPERATOR_TOKEN),
            &missing,
            json!({"reason": "r"}),
            Code::NotFound,
        ),
        cancel(
            "cancel: an ended job",
            Some(OPERATOR_TOKEN),
            &ended,
            json!({"reason": "r"}),
            Code::FailedPrecondition,
        ),
    ]);

    let approve = |what, token, target: &str, body: Value, expected| Case {
        action: Action::Approve,
        what,
        token,
        target: target.to_owned(),
        body,
        expected,
        same_message: true,
    };
    cases.extend([
        approve(
            "approve: no credential",
            None,
            &done,
            json!({"reason": "r"}),
            Code::Unauthenticated,
        ),
        approve(
            "approve: a reader's token",
            Some(READER_TOKEN),
            &done,
            json!({"reason": "r"}),
            Code::PermissionDenied,
        ),
        approve(
            "approve: no reason",
            Some(OPERATOR_TOKEN),
            &done,
            json!({}),
            Code::InvalidArgument,
        ),
        approve(
            "approve: a malformed saga id",
            Some(OPERATOR_TOKEN),
            "nope",
            json!({"reason": "r"}),
            Code::InvalidArgument,
        ),
        approve(
            "approve: an unknown saga",
            Some(OPERATOR_TOKEN),
            &missing,
            json!({"reason": "r"}),
            Code::NotFound,
        ),
        approve(
            "approve: a saga type without an approval step",
            Some(OPERATOR_TOKEN),
            &done,
            json!({"reason": "r"}),
            Code::InvalidArgument,
        ),
    ]);
    let signal = |what, target: &str, body: Value, expected| Case {
        action: Action::Signal,
        what,
        token: None,
        target: target.to_owned(),
        body,
        expected,
        same_message: true,
    };
    cases.extend([
        signal(
            "signal: a malformed saga id",
            "nope",
            json!({"signal": "go"}),
            Code::InvalidArgument,
        ),
        signal(
            "signal: no signal name",
            &done,
            json!({"signal": " "}),
            Code::InvalidArgument,
        ),
        signal(
            "signal: an unknown saga",
            &missing,
            json!({"signal": "go"}),
            Code::NotFound,
        ),
        signal(
            "signal: a payload that is not an object",
            &done,
            json!({"signal": "go", "payload": [1]}),
            Code::InvalidArgument,
        ),
        signal(
            "signal: a signal the definition does not declare",
            &done,
            json!({"signal": "go"}),
            Code::InvalidArgument,
        ),
    ]);

    for case in &cases {
        let status = grpc(&app, case).await;
        assert_eq!(status.code(), case.expected, "gRPC, {}: {status:?}", case.what);
        let (http_status, message) = http(&app, case).await;
        assert_eq!(
            http_status,
            http_status_of(case.expected),
            "HTTP, {}: {message}",
            case.what
        );
        if case.same_message {
            assert_eq!(message, status.message(), "{}", case.what);
        }
        assert!(!message.is_empty(), "HTTP, {}: a message says why", case.what);
    }
    assert_eq!(
        app.get(&done).await.history.len(),
        history_before,
        "no refused action changed or recorded anything"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM operator_jobs").await,
        1,
        "no job started"
    );
    app.stop().await;
}
