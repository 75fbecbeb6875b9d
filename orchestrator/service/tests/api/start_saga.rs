//! StartSaga: the first command on the wire, idempotency keys, and every validation error.

use std::time::Duration;

use saga_proto::headers;
use saga_proto::v1::{Phase, SagaState};
use tonic::Code;

use crate::helpers::{WAIT, command, json, spawn_app};

#[tokio::test]
async fn start_saga_publishes_the_first_command_with_envelope_key_and_headers() {
    let app = spawn_app().await;
    let users = app.reader("user.commands").await;
    let id = app.register("ann@example.com").await;
    assert_eq!(
        id.parse::<uuid::Uuid>().unwrap().get_version_num(),
        7,
        "saga ids are UUIDv7"
    );

    let record = users.take(1, WAIT).await.remove(0);
    let env = command(&record);
    assert_eq!(env.saga_id, id);
    assert_eq!(env.saga_type, "register_user");
    assert_eq!(env.definition_version, 1);
    assert_eq!((env.step_index, env.step_name.as_str()), (0, "create_user"));
    assert_eq!((env.attempt, env.phase), (1, Phase::Action as i32));
    assert_eq!(env.command_type, "CreateUser");
    assert_eq!(env.idempotency_key, format!("{id}/0/action"));
    assert_eq!(env.reply_topic, app.kafka.topic("saga.replies"));
    assert_eq!(env.causation_id, format!("start/{id}"));
    assert!(
        env.deadline_unix_ms > chrono::Utc::now().timestamp_millis(),
        "deadline in the future"
    );
    let payload = json(&env.payload_json);
    assert_eq!(payload["email"], "ann@example.com");
    assert_eq!(payload["name"], "Test User");
    let user_id = payload["user_id"].as_str().expect("user_id generated");
    assert_eq!(user_id.parse::<uuid::Uuid>().unwrap().get_version_num(), 7);

    let h = &record.headers;
    assert_eq!(h.get(headers::MESSAGE_ID), Some(&env.message_id));
    assert_eq!(h.get(headers::SAGA_ID), Some(&id));
    assert_eq!(
        h.get(headers::SAGA_TYPE).map(String::as_str),
        Some("register_user")
    );
    assert_eq!(
        h.get(headers::COMMAND_TYPE).map(String::as_str),
        Some("CreateUser")
    );
    assert_eq!(h.get(headers::PHASE).map(String::as_str), Some("action"));
    assert_eq!(h.get(headers::ATTEMPT).map(String::as_str), Some("1"));
    assert_eq!(
        h.get(headers::CONTENT_TYPE).map(String::as_str),
        Some(headers::COMMAND_CONTENT_TYPE)
    );

    let got = app.get(&id).await;
    let view = got.saga.unwrap();
    assert_eq!(view.state, SagaState::Running as i32);
    assert_eq!(view.current_step, "create_user");
    let kinds: Vec<_> = got.history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["saga_started", "command_dispatched"]);
    assert!(got.history.iter().all(|e| e.actor == "client"));
    assert!(
        users.drain(Duration::from_millis(300)).await.is_empty(),
        "exactly one command"
    );
    assert_eq!(app.rows("outbox").await, 0, "published rows leave the outbox");
}

#[tokio::test]
async fn the_same_key_and_request_return_the_same_saga() {
    let app = spawn_app().await;
    let first = app
        .start_registration("b@example.com", "B", "signup-b")
        .await
        .unwrap();
    assert!(first.created);
    // The same request with keys in another order, sequentially and concurrently.
    let again = app
        .start(
            "register_user",
            r#"{"name":"B","email":"b@example.com"}"#,
            "signup-b",
        )
        .await
        .unwrap();
    assert_eq!(
        (again.saga_id.as_str(), again.created),
        (first.saga_id.as_str(), false)
    );
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let app_client = app.client.clone();
            tokio::spawn(async move {
                let mut c = app_client;
                c.start_saga(saga_proto::v1::StartSagaRequest {
                    saga_type: "register_user".into(),
                    payload_json: r#"{"email":"b@example.com","name":"B"}"#.into(),
                    idempotency_key: "signup-b".into(),
                })
                .await
                .map(|r| r.into_inner().saga_id)
            })
        })
        .collect();
    for r in racers {
        assert_eq!(r.await.unwrap().unwrap(), first.saga_id);
    }
    assert_eq!(app.rows("sagas").await, 1);

    // Concurrent first requests with a fresh key also create exactly one saga.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let mut c = app.client.clone();
            tokio::spawn(async move {
                c.start_saga(saga_proto::v1::StartSagaRequest {
                    saga_type: "register_user".into(),
                    payload_json: r#"{"email":"c@example.com","name":"C"}"#.into(),
                    idempotency_key: "signup-c".into(),
                })
                .await
                .map(|r| r.into_inner())
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for r in racers {
        let resp = r.await.unwrap().unwrap();
        created += usize::from(resp.created);
        ids.insert(resp.saga_id);
    }
    assert_eq!((ids.len(), created), (1, 1));
    assert_eq!(app.rows("sagas").await, 2);
}

#[tokio::test]
async fn the_same_key_with_a_different_request_is_already_exists() {
    let app = spawn_app().await;
    let first = app.start_registration("d@example.com", "D", "k-1").await.unwrap();
    let err = app
        .start_registration("e@example.com", "D", "k-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        err.message(),
        format!(
            "idempotency_key `k-1` was already used for a different request (saga {})",
            first.saga_id
        )
    );
    let err = app.publish("t", "k-1").await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::AlreadyExists,
        "a key is not reusable across saga types either"
    );
    assert_eq!(app.rows("sagas").await, 1);
}

#[tokio::test]
async fn invalid_requests_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let user = uuid::Uuid::now_v7();
    let huge = format!(r#"{{"email":"a@b.co","name":"{}"}}"#, "x".repeat(70_000));
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "",
            "{}".into(),
            "".into(),
            "saga_type: required (one of: moderated_post, onboard_author, publish_post, register_user)",
        ),
        (
            "nope",
            "{}".into(),
            "".into(),
            "saga_type: unknown saga type `nope` (known: moderated_post, onboard_author, publish_post, register_user)",
        ),
        (
            "register_user",
            "{".into(),
            "".into(),
            "payload_json: not valid JSON: EOF while parsing an object at line 1 column 1",
        ),
        (
            "register_user",
            "[]".into(),
            "".into(),
            "payload_json.$: the payload must be a JSON object",
        ),
        (
            "register_user",
            r#"{"name":"A"}"#.into(),
            "".into(),
            "payload_json.email: is required",
        ),
        (
            "register_user",
            r#"{"email":"nope","name":"A"}"#.into(),
            "".into(),
            "payload_json.email: must be an e-mail address like name@example.com",
        ),
        (
            "register_user",
            r#"{"email":"a@b.co","name":7}"#.into(),
            "".into(),
            "payload_json.name: must be a string",
        ),
        (
            "register_user",
            r#"{"email":"a@b.co","name":"A","age":3}"#.into(),
            "".into(),
            "payload_json.age: is not an input of saga type `register_user`",
        ),
        (
            "register_user",
            format!(r#"{{"email":"a@b.co","name":"A","user_id":"{user}"}}"#),
            "".into(),
            "payload_json.user_id: is generated by the orchestrator and must not be sent",
        ),
        (
            "publish_post",
            r#"{"user_id":"u-1","title":"T"}"#.into(),
            "".into(),
            "payload_json.user_id: must be a UUID",
        ),
        (
            "register_user",
            r#"{"email":"a@b.co","name":"A"}"#.into(),
            "has space".into(),
            "idempotency_key: only printable ASCII without spaces is allowed",
        ),
        (
            "register_user",
            r#"{"email":"a@b.co","name":"A"}"#.into(),
            "k".repeat(201),
            "idempotency_key: 201 characters is over the limit of 200",
        ),
        (
            "register_user",
            huge,
            "".into(),
            "payload_json: 70028 bytes is over the 65536 byte limit",
        ),
    ];
    for (saga_type, payload, key, message) in cases {
        let err = app.start(saga_type, &payload, &key).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::InvalidArgument, message),
            "for {saga_type} {payload:.60}"
        );
    }
    assert_eq!(app.rows("sagas").await, 0, "no bad request created anything");
    assert_eq!(app.rows("saga_events").await, 0);
    assert_eq!(app.rows("outbox").await, 0);
}
