//! Waits over gRPC against real PostgreSQL: a saga that waits for a signal and then for an
//! approval, ended by the signal and an approval, by a rejection, and by its deadline; the precise
//! errors for bad signals; a signal sent twice applies once.

use saga_proto::v1::{DecideApprovalRequest, SagaState, SignalSagaRequest, StartSagaRequest};

use crate::helpers::{OPERATOR_TOKEN, TestApp, authed, spawn_with_catalog};

const CATALOG: &str = r#"
[[saga]]
name = "pay_order"
version = 1
input = [{ name = "amount", kind = "integer" }]

[[saga.steps]]
name = "await_payment"
wait = { signal = "payment_confirmed", timeout_ms = 60000, fields = [{ name = "payment_ref", kind = "string" }] }

[[saga.steps]]
name = "large_refund_check"
when = "amount > 100"
wait = { approval = true, timeout_ms = 60000 }
"#;

async fn app() -> (TestApp, tempfile::TempDir) {
    spawn_with_catalog(CATALOG, |_| {}).await
}

async fn start(app: &TestApp, amount: i64) -> String {
    app.client
        .clone()
        .start_saga(StartSagaRequest {
            saga_type: "pay_order".into(),
            payload_json: format!(r#"{{"amount": {amount}}}"#),
            idempotency_key: String::new(),
        })
        .await
        .expect("started")
        .into_inner()
        .saga_id
}

fn signal(saga: &str, name: &str, payload: &str, key: &str) -> SignalSagaRequest {
    SignalSagaRequest {
        saga_id: saga.into(),
        signal: name.into(),
        payload_json: payload.into(),
        idempotency_key: key.into(),
    }
}

#[tokio::test]
async fn a_signal_then_an_approval_complete_the_saga_and_a_repeated_signal_applies_once() {
    let (app, _dir) = app().await;
    let mut client = app.client.clone();
    let id = start(&app, 500).await;

    let e = client
        .signal_saga(signal(&id, "shipped", "{}", "k0"))
        .await
        .expect_err("undeclared");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("declares no signal `shipped`"),
        "{}",
        e.message()
    );
    let e = client
        .signal_saga(signal(&id, "payment_confirmed", r#"{"payment_ref": 5}"#, "k0"))
        .await
        .expect_err("bad payload");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("payment_ref"), "{}", e.message());
    let e = client
        .signal_saga(signal(
            &uuid::Uuid::now_v7().to_string(),
            "payment_confirmed",
            "{}",
            "",
        ))
        .await
        .expect_err("unknown saga");
    assert_eq!(e.code(), tonic::Code::NotFound);

    let good = signal(&id, "payment_confirmed", r#"{"payment_ref": "P-1"}"#, "pay-1");
    let first = client
        .signal_saga(good.clone())
        .await
        .expect("applied")
        .into_inner();
    let view = first.saga.expect("saga");
    assert_eq!(view.state(), SagaState::Running);
    let again = client
        .signal_saga(good)
        .await
        .expect("a repeat is OK")
        .into_inner();
    assert_eq!(again.saga.map(|s| s.state()), Some(SagaState::Running));
    let other_key = client
        .signal_saga(signal(
            &id,
            "payment_confirmed",
            r#"{"payment_ref": "P-2"}"#,
            "pay-2",
        ))
        .await
        .expect_err("not waiting any more");
    assert_eq!(other_key.code(), tonic::Code::FailedPrecondition, "{other_key:?}");
    let received: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM saga_events WHERE saga_id = $1::uuid AND kind = 'signal_received'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(received, 1, "the signal applied once");

    let unauthenticated = client
        .decide_approval(DecideApprovalRequest {
            saga_id: id.clone(),
            approved: true,
            reason: "refund checked".into(),
            step_index: None,
        })
        .await
        .expect_err("needs an operator");
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
    let approved = client
        .decide_approval(authed(
            DecideApprovalRequest {
                saga_id: id.clone(),
                approved: true,
                reason: "refund checked".into(),
                step_index: None,
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("approved")
        .into_inner();
    assert_eq!(approved.saga.map(|s| s.state()), Some(SagaState::Completed));
    let by: String = sqlx::query_scalar(
        "SELECT data->>'by' FROM saga_events WHERE saga_id = $1::uuid AND kind = 'approval_decided'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .expect("recorded");
    assert_eq!(by, "alice");
    let late = client
        .signal_saga(signal(
            &id,
            "payment_confirmed",
            r#"{"payment_ref": "P-3"}"#,
            "pay-3",
        ))
        .await
        .expect_err("finished");
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn a_false_condition_skips_the_approval_a_rejection_compensates_and_a_deadline_ends_the_wait() {
    let (app, _dir) = app().await;
    let mut client = app.client.clone();

    let small = start(&app, 50).await;
    client
        .signal_saga(signal(
            &small,
            "payment_confirmed",
            r#"{"payment_ref": "P-1"}"#,
            "",
        ))
        .await
        .expect("applied");
    app.wait_for(&small, SagaState::Completed).await;

    let rejected = start(&app, 500).await;
    client
        .signal_saga(signal(
            &rejected,
            "payment_confirmed",
            r#"{"payment_ref": "P-2"}"#,
            "",
        ))
        .await
        .expect("applied");
    let out = client
        .decide_approval(authed(
            DecideApprovalRequest {
                saga_id: rejected.clone(),
                approved: false,
                reason: "refund too large".into(),
                step_index: Some(1),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("rejected")
        .into_inner();
    let view = out.saga.expect("saga");
    assert_eq!(view.state(), SagaState::Compensated);
    assert!(
        view.failure_reason
            .contains("rejected by alice: refund too large"),
        "{}",
        view.failure_reason
    );

    let timed_out = start(&app, 500).await;
    app.clock.advance(chrono::TimeDelta::seconds(61));
    let view = app.wait_for(&timed_out, SagaState::Compensated).await;
    assert!(
        view.failure_reason
            .contains("no signal `payment_confirmed` within 60000 ms"),
        "{}",
        view.failure_reason
    );
}
