//! The participants' dedup window: checked against the orchestrator's reach at start, records
//! past it pruned, commands of sagas from before the horizon never applied, the audit aware.

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use saga_e2e::{Options, READER_TOKEN, Stack, WAIT};
use saga_participant::dedup::{self, Check, Checker};
use saga_participant::{ParticipantApp, ParticipantSettings};
use saga_proto::ledger::Reach;
use saga_proto::v1::SagaState;
use saga_runtime::db::DatabaseSettings;
use saga_runtime::testing::TopicReader;
use tokio_util::sync::CancellationToken;
use user_service::{UserRules, Users};

/// The user service's settings on the stack's database and broker, checking its window against
/// the stack's orchestrator.
fn users_settings(stack: &Stack, window_hours: f64) -> ParticipantSettings<UserRules> {
    let mut s = ParticipantSettings::<UserRules> {
        database: DatabaseSettings::with_url(&stack.users_url),
        kafka: stack.kafka.clone(),
        http: saga_runtime::http::HttpSettings::on("127.0.0.1:0"),
        ..Default::default()
    };
    s.dedup.orchestrator_url = Some(stack.http_url.clone());
    s.dedup.window_hours = window_hours;
    s
}

#[tokio::test]
async fn a_participant_prunes_past_its_window_never_applies_an_old_sagas_command_and_the_audit_knows() {
    let stack = Stack::start().await;
    let commands = TopicReader::new(&stack.kafka, &stack.kafka.topic("user.commands")).await;
    let dlq = TopicReader::new(&stack.kafka, &stack.kafka.dead_letter_topic("user.commands")).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            stack
                .register(&format!("window{i}@example.com"), &format!("Window {i}"))
                .await,
        );
    }
    for view in stack.finish(&ids).await {
        assert_eq!(view.state, SagaState::Completed as i32, "{view:#?}");
    }

    // The orchestrator's reach for the user service: register_user's budgets at least.
    let http = reqwest::Client::new();
    let reach: Reach = http
        .get(format!("{}/api/participants/user.commands/reach", stack.http_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reach.reach_ms >= 2 * 305_000 + 2 * 3_605_000, "{reach:?}");
    assert!(reach.saga.is_some(), "{reach:?}");
    let bad = http
        .get(format!("{}/api/participants/no%20such/reach", stack.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("is not a command topic name"));

    // A window shorter than the reach: the service refuses to start, saying why.
    let short = users_settings(&stack, 1.0);
    let refused = ParticipantApp::build(&short, Users::new(UserRules::default()), &user_service::MIGRATOR)
        .await
        .err()
        .expect("a window shorter than the reach is refused")
        .to_string();
    assert!(
        refused.contains(
            "user-service: the dedup window (dedup.window_hours = 1) is shorter than the orchestrator's reach for user.commands"
        ) && refused.contains("Raise APP_DEDUP__WINDOW_HOURS"),
        "{refused}"
    );
    // One that outlasts it passes.
    let long = users_settings(&stack, reach.reach_ms as f64 / 3_600_000.0 + 1.0);
    let checker = Checker::new(&long.dedup, "user.commands", "user-service").unwrap();
    assert_eq!(checker.check().await, Check::Fits(reach.clone()));

    // Prune everything created so far (a window of zero, in batches of two).
    let inbox = "SELECT count(*) FROM inbox";
    assert_eq!(Stack::scalar(&stack.dbs.users, inbox).await, 3);
    let pruned = dedup::prune(
        &stack.dbs.users,
        chrono::Duration::zero(),
        &reach,
        2,
        Duration::ZERO,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(pruned, 3);
    assert_eq!(Stack::scalar(&stack.dbs.users, inbox).await, 0);

    // The audit: the orchestrator's records of those steps have no ledger entry left, which is
    // pruning, not drift; the users they created are not "unclaimed" either.
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    assert_eq!(report.pruned_by_participants, 3);

    // The first saga's CreateUser delivered again: dead-lettered, not applied a second time.
    let sent = commands.take(3, WAIT).await;
    let first = sent
        .iter()
        .find(|r| r.key.as_deref() == Some(ids[0].as_str()))
        .expect("the first saga's CreateUser");
    let producer = stack.kafka.producer().unwrap().get();
    producer
        .send(
            FutureRecord::to(&stack.kafka.topic("user.commands"))
                .key(&ids[0])
                .payload(&first.payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let dead = dlq.take(1, WAIT).await;
    let reason = &dead[0].headers["dlq-reason"];
    assert!(
        reason.starts_with(&format!(
            "saga {} was created before this service's dedup horizon",
            ids[0]
        )) && reason.contains("CreateUser (action) is not applied"),
        "{reason}"
    );
    assert_eq!(
        Stack::scalar(
            &stack.dbs.users,
            "SELECT count(*) FROM users WHERE email = 'window0@example.com'"
        )
        .await,
        1
    );
    assert_eq!(
        Stack::scalar(&stack.dbs.users, inbox).await,
        0,
        "nothing recorded for it"
    );

    // Sagas started after the horizon are untouched by it.
    let later = stack.register("window.later@example.com", "Later").await;
    assert_eq!(stack.finish_one(&later).await.state, SagaState::Completed as i32);
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}

/// Where the orchestrator protects reads (as in prod), the participant shows a reader token to
/// learn the reach; without one it learns nothing, so it would prune nothing.
#[tokio::test]
async fn a_participant_shows_a_reader_token_where_reads_are_protected() {
    let stack = Stack::start_with(Options {
        protect_reads: true,
        ..Options::default()
    })
    .await;
    let mut settings = users_settings(&stack, 1_000.0);
    let without = Checker::new(&settings.dedup, "user.commands", "user-service").unwrap();
    match without.check().await {
        Check::Unknown(why) => assert!(why.contains("401"), "{why}"),
        other => panic!("a check without a token: {other:?}"),
    }
    settings.dedup.orchestrator_token = Some(READER_TOKEN.into());
    let with = Checker::new(&settings.dedup, "user.commands", "user-service").unwrap();
    match with.check().await {
        Check::Fits(reach) => assert!(reach.reach_ms > 0, "{reach:?}"),
        other => panic!("a check with a reader token: {other:?}"),
    }
}
