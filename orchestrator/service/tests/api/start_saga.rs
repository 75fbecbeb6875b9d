//! StartSaga: the first command on the wire, idempotency keys, and every validation error.

use std::time::Duration;

use saga_proto::headers;
use saga_proto::v1::{Phase, SagaState};
use tonic::Code;

use crate::helpers::{WAIT, assert_status, command, json, spawn_app};

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

/// PostgreSQL stops answering (its port refuses connections, its sessions are gone): StartSaga
/// refuses at once with UNAVAILABLE and a retry hint — not after the pool's 5-s wait or the
/// client's own deadline — writes nothing, and takes sagas again by itself once the database is
/// back.
#[tokio::test]
async fn while_the_database_is_unreachable_starts_are_refused_at_once_and_resume_after() {
    use saga_orchestrator::MIGRATOR;
    use saga_runtime::testing::{CuttableProxy, fresh_database, kafka_settings};
    use std::str::FromStr;
    use tonic_types::StatusExt;

    let (pool, db_url) = fresh_database(&MIGRATOR).await;
    let direct = sqlx::postgres::PgConnectOptions::from_str(&db_url).unwrap();
    let target = format!("{}:{}", direct.get_host(), direct.get_port());
    let proxy = CuttableProxy::start(&target).await;
    let proxied = db_url.replacen(&target, &proxy.addr().to_string(), 1);
    assert_ne!(proxied, db_url, "the test database URL names host and port");
    let app = crate::helpers::spawn_on(pool, proxied, kafka_settings(), |_| {}).await;
    let users = app.reader("user.commands").await;
    let before = app.register("before@example.com").await;

    proxy.cut();
    let mut waits = Vec::new();
    for i in 0..20 {
        // With an idempotency key (looked up first) and without (straight to the writer).
        let key = if i % 2 == 0 {
            format!("down-{i}")
        } else {
            String::new()
        };
        let began = std::time::Instant::now();
        let err = app
            .start_registration(&format!("down{i}@example.com"), "D", &key)
            .await
            .expect_err("refused while the database is unreachable");
        waits.push(began.elapsed());
        assert_status(
            &err,
            Code::Unavailable,
            "the saga store is unavailable; retry later",
        );
        assert_eq!(
            err.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(1)),
            "a retry hint"
        );
    }
    let slowest = waits.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(2500),
        "a refusal waits for a connection at most about a second (slowest {slowest:?})"
    );
    let at_once = waits.iter().filter(|w| **w < Duration::from_millis(250)).count();
    assert!(
        at_once >= 10,
        "once the store is known to be down, refusals need no wait ({waits:?})"
    );

    proxy.restore().await;
    let deadline = std::time::Instant::now() + WAIT;
    let after = loop {
        match app.start_registration("after@example.com", "A", "after").await {
            Ok(started) => break started.saga_id,
            Err(e) if e.code() == Code::Unavailable && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the database is back, but StartSaga still fails: {e:?}"),
        }
    };
    // Both sagas' commands go out (the first one's perhaps only now, from the table, or twice:
    // published, its outbox row's delete cut off, published again — at least once, the same
    // message), in no particular order between the two sagas.
    let mut sent = std::collections::BTreeMap::new();
    while !(sent.contains_key(&before) && sent.contains_key(&after)) {
        let cmd = command(&users.take(1, WAIT).await[0]);
        sent.entry(cmd.saga_id.clone())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(cmd.message_id);
    }
    assert_eq!(
        sent.keys().cloned().collect::<Vec<_>>(),
        {
            let mut ids = vec![before.clone(), after.clone()];
            ids.sort();
            ids
        },
        "the sagas before and after the outage went on, and no other"
    );
    assert!(
        sent.values().all(|ids| ids.len() == 1),
        "one command each: {sent:?}"
    );
    assert_eq!(
        app.rows("sagas").await,
        2,
        "nothing of a refused start was written"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sagas WHERE idempotency_key LIKE 'down-%'")
            .await,
        0
    );
}

/// A request over gRPC's 4 MiB message limit is refused with RESOURCE_EXHAUSTED, the gRPC
/// convention (tonic's own answer is OUT_OF_RANGE), and the service goes on.
#[tokio::test]
async fn a_request_over_the_message_limit_is_resource_exhausted() {
    let app = spawn_app().await;
    let huge = format!(
        r#"{{"email":"big@example.com","name":"{}"}}"#,
        "x".repeat(5 << 20)
    );
    let err = app
        .start("register_user", &huge, "")
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    app.register("small@example.com").await;
    assert_eq!(app.rows("sagas").await, 1);
}

/// Admission control: past a saga type's limit of sagas in flight, StartSaga refuses new sagas
/// of that type with RESOURCE_EXHAUSTED and a retry hint; a repeat of an admitted request and
/// other types are not refused; a saga that ends makes room again.
#[tokio::test]
async fn past_the_limit_of_sagas_in_flight_starts_are_refused_with_a_retry_hint() {
    use crate::helpers::{Answer, spawn_app_with};
    use tonic_types::StatusExt;

    let app = spawn_app_with(|s| {
        s.admission.max_in_flight = 0;
        s.admission.per_type.insert("register_user".into(), 3);
        s.admission.refresh_ms = 50;
    })
    .await;
    let users = app.reader("user.commands").await;
    let mut admitted = Vec::new();
    for i in 0..3 {
        let started = app
            .start_registration(&format!("in{i}@example.com"), "In", &format!("in-{i}"))
            .await
            .expect("admitted");
        admitted.push(started.saga_id);
    }
    let err = app
        .start_registration("over@example.com", "Over", "over")
        .await
        .expect_err("over the limit");
    assert_status(
        &err,
        Code::ResourceExhausted,
        "3 sagas of type `register_user` are in flight, at the limit of 3; retry later",
    );
    assert_eq!(
        err.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );
    let again = app
        .start_registration("in0@example.com", "In", "in-0")
        .await
        .expect("a repeat is no new saga");
    assert_eq!(again.saga_id, admitted[0]);
    app.publish("Another type", "")
        .await
        .expect("publish_post has no limit of its own");

    // One of them ends (its first step refused): once counted, there is room for one more.
    // (publish_post's first command goes to the user service too.)
    let first = loop {
        let cmd = command(&users.take(1, WAIT).await[0]);
        if cmd.saga_type == "register_user" {
            break cmd;
        }
    };
    app.participant()
        .answer(&first, Answer::Business("no such user"))
        .await;
    app.wait_for(&first.saga_id, SagaState::Compensated).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match app.start_registration("over@example.com", "Over", "over").await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a saga ended, yet the next is refused: {e:?}"),
        }
    }
    let err = app
        .start_registration("over2@example.com", "Over", "over-2")
        .await
        .expect_err("at the limit again");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        app.count("SELECT count(*) FROM sagas WHERE saga_type = 'register_user'")
            .await,
        4,
        "nothing of a refused start was written"
    );
}
