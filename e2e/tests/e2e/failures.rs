//! Participants failing: stopped for a while, killed mid-message, fed poison.

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use prost::Message;
use rdkafka::producer::FutureRecord;
use saga_e2e::{Options, ServiceProcess, Stack, WAIT, dispatched};
use saga_proto::v1::SagaState;
use saga_runtime::testing::TopicReader;

#[tokio::test]
async fn sagas_wait_out_a_stopped_participant_and_complete_when_it_returns() {
    let mut stack = Stack::start().await;
    stack.stop_posts().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            stack
                .register(&format!("patient{i}@example.com"), &format!("Patient {i}"))
                .await,
        );
    }
    for id in &ids {
        stack
            .wait_event(id, "CreateAuthor dispatched", |e| {
                e.kind == "command_dispatched" && e.data_json.contains("CreateAuthor")
            })
            .await;
    }
    // The post service stays away past the 5 s deadline: every saga retries its step.
    stack.clock.advance(TimeDelta::seconds(6));
    for id in &ids {
        stack
            .wait_event(id, "a second CreateAuthor attempt", |e| {
                e.kind == "command_dispatched" && e.data_json.contains("\"attempt\":2")
            })
            .await;
    }
    stack.start_posts().await;

    let views = stack.finish(&ids).await;
    assert!(
        views.iter().all(|v| v.state == SagaState::Completed as i32),
        "{views:#?}"
    );
    for id in &ids {
        let kinds: Vec<_> = stack.history(id).await.into_iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&"deadline_missed".to_owned()), "{kinds:?}");
    }
    // Both attempts reached the post service; the second was answered from its inbox.
    let repeats = Stack::scalar(&stack.dbs.posts, "SELECT sum(duplicates)::bigint FROM inbox").await;
    assert!(
        repeats >= 10,
        "each retried command answered from the inbox, got {repeats}"
    );
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    assert_eq!(report.authors, 10, "no author created twice");
    stack.stop().await;
}

/// The real user-service in a process of its own.
fn spawn_user_service(stack: &Stack, commit_offsets: bool) -> ServiceProcess {
    let mut env = ServiceProcess::kafka_env(&stack.kafka);
    env.push(("APP_DATABASE__URL".into(), stack.users_url.clone()));
    if !commit_offsets {
        // Offsets are stored after each DB commit but not committed to Kafka for ten minutes.
        env.push((
            "APP_KAFKA__CONSUMER__AUTO_COMMIT_INTERVAL_MS".into(),
            "600000".into(),
        ));
    }
    ServiceProcess::spawn("user-service", &env)
}

#[tokio::test]
async fn a_participant_killed_after_its_commit_does_not_apply_the_redelivered_command_twice() {
    let stack = Stack::start_with(Options {
        external_users: true,
        ..Options::default()
    })
    .await;
    let mut first = spawn_user_service(&stack, false);
    let id = stack.register("sigkill@example.com", "Kill Me").await;

    // The moment CreateUser is committed in the users database, SIGKILL the service: its Kafka
    // offset was never committed, so the command will be delivered again.
    let deadline = Instant::now() + WAIT;
    while Stack::scalar(
        &stack.dbs.users,
        "SELECT count(*) FROM users WHERE email = 'sigkill@example.com'",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "CreateUser never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill(); // SIGKILL

    let _second = spawn_user_service(&stack, true);
    let view = stack.finish_one(&id).await;
    assert_eq!(view.state, SagaState::Completed as i32, "{view:#?}");
    assert_eq!(
        Stack::scalar(
            &stack.dbs.users,
            "SELECT count(*) FROM users WHERE email = 'sigkill@example.com'"
        )
        .await,
        1
    );
    // The saga may finish first (the new process relays the reply its predecessor left in the
    // outbox); the redelivered command arrives once the new process has joined the group.
    let q = format!(
        "SELECT duplicates::bigint FROM inbox WHERE saga_id = '{id}' AND step_index = 0 AND phase = 'action'"
    );
    let deadline = Instant::now() + WAIT;
    while Stack::scalar(&stack.dbs.users, &q).await == 0 {
        assert!(Instant::now() < deadline, "CreateUser was never redelivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        Stack::scalar(
            &stack.dbs.users,
            "SELECT count(*) FROM users WHERE email = 'sigkill@example.com'"
        )
        .await,
        1,
        "the redelivered CreateUser was answered from the inbox, not applied again"
    );
    assert_eq!(
        dispatched(&stack.history(&id).await)[..2],
        [(0, "action".to_owned()), (1, "action".to_owned())]
    );
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
}

#[tokio::test]
async fn poison_commands_are_dead_lettered_and_traffic_behind_them_flows() {
    let stack = Stack::start().await;
    let dlq = TopicReader::new(&stack.kafka, &stack.kafka.dead_letter_topic("user.commands")).await;
    let producer = stack.kafka.producer().unwrap().get();
    let topic = stack.kafka.topic("user.commands");
    // Garbage, and a well-formed command the user service does not know; same key, so they sit in
    // front of the saga's own commands in that partition.
    let key = uuid::Uuid::now_v7().to_string();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&b"\x0a\xff\xff not protobuf"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let unknown = saga_proto::v1::CommandEnvelope {
        message_id: "m".into(),
        saga_id: key.clone(),
        phase: saga_proto::v1::Phase::Action as i32,
        command_type: "Frobnicate".into(),
        payload_json: "{}".into(),
        reply_topic: stack.kafka.topic("saga.replies"),
        ..Default::default()
    };
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&unknown.encode_to_vec()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    let id = stack.register("after.poison@example.com", "After Poison").await;
    assert_eq!(stack.finish_one(&id).await.state, SagaState::Completed as i32);
    let dead = dlq.take(2, WAIT).await;
    let reasons: Vec<_> = dead.iter().map(|r| r.headers["dlq-reason"].clone()).collect();
    assert!(
        reasons[0].starts_with("not a saga.v1.CommandEnvelope"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        "user-service does not handle command type `Frobnicate`"
    );
    assert!(dead.iter().all(|r| r.headers["dlq-source-topic"] == topic));
    stack.stop().await;
}
