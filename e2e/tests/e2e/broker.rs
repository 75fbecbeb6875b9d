//! The broker underneath misbehaving, on real Apache Kafka: each test runs a broker of its own
//! (`saga_runtime::testing::KafkaBroker`) so it can kill it, wipe its log or delete its topics,
//! while the three services run on as they would in production — nobody restarts them.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use saga_e2e::{Options, Stack, WAIT};
use saga_proto::v1::SagaState;
use saga_runtime::kafka::KafkaSettings;
use saga_runtime::testing::{KafkaBroker, kafka_settings_for};

/// A stack on `broker`, whose services call themselves unready after 2 s without progress.
async fn stack_on(broker: &KafkaBroker) -> Stack {
    Stack::start_with(Options {
        kafka: Some(KafkaSettings {
            unready_after_ms: 2_000,
            ..kafka_settings_for(&broker.brokers())
        }),
        ..Options::default()
    })
    .await
}

/// Waits (bounded) until the orchestrator's `/readyz` answers `status`; returns its body.
async fn readiness(stack: &Stack, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("{}/readyz", stack.http_url)).await
            && r.status().as_u16() == status
        {
            return r.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `n` register_user sagas, a few milliseconds apart, calling `midway` after half of them.
async fn register_many(stack: &Stack, tag: &str, n: usize, midway: impl FnOnce()) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut midway = Some(midway);
    for i in 0..n {
        ids.push(
            stack
                .register(&format!("{tag}{i}@example.com"), &format!("{tag} {i}"))
                .await,
        );
        if i == n / 2
            && let Some(f) = midway.take()
        {
            f();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

fn states(views: &[saga_proto::v1::SagaView]) -> Vec<i32> {
    let mut s: Vec<i32> = views.iter().map(|v| v.state).collect();
    s.dedup();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_in_flight_when_the_broker_is_killed_complete_once_it_is_back() {
    let mut broker = KafkaBroker::start().await;
    let stack = stack_on(&broker).await;
    assert_eq!(readiness(&stack, 200).await["work"], "ok");

    let ids = register_many(&stack, "kill", 40, || broker.kill()).await;
    // While the broker is away the orchestrator is alive but not ready, and says why.
    let body = readiness(&stack, 503).await;
    assert_ne!(body["broker"], "ok", "{body}");
    broker.restart().await;

    let views = stack.finish(&ids).await;
    assert_eq!(
        states(&views),
        [SagaState::Completed as i32],
        "every saga completed: {views:#?}"
    );
    assert_eq!(readiness(&stack, 200).await["work"], "ok");
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_log_still_sees_every_saga_end_consistently() {
    let mut broker = KafkaBroker::start().await;
    let stack = stack_on(&broker).await;
    let ids = register_many(&stack, "wipe", 40, || {
        broker.kill();
        broker.wipe();
    })
    .await;
    broker.restart().await;

    // The new broker has no topics, messages, offsets or producer ids: the services create their
    // topics again, rebuild their producers and rejoin their groups by themselves, deadlines send
    // again what was lost, and the participants' inboxes absorb what arrives twice.
    let views = stack.finish(&ids).await;
    assert!(
        views
            .iter()
            .all(|v| [SagaState::Completed as i32, SagaState::Compensated as i32].contains(&v.state)),
        "every saga completed or compensated: {views:#?}"
    );
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    // And traffic flows normally afterwards.
    let later = register_many(&stack, "after", 5, || {}).await;
    assert_eq!(states(&stack.finish(&later).await), [SagaState::Completed as i32]);
    assert_eq!(readiness(&stack, 200).await["work"], "ok");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_under_running_services_is_created_again_and_traffic_resumes() {
    let broker = KafkaBroker::start().await;
    let stack = stack_on(&broker).await;
    let before = register_many(&stack, "before", 3, || {}).await;
    assert_eq!(
        states(&stack.finish(&before).await),
        [SagaState::Completed as i32]
    );

    let admin: AdminClient<DefaultClientContext> = stack.kafka.reader_config("admin").create().unwrap();
    let topic = stack.kafka.topic("user.commands");
    let deleted = admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");

    let ids = register_many(&stack, "after", 10, || {}).await;
    assert_eq!(
        states(&stack.finish(&ids).await),
        [SagaState::Completed as i32],
        "the relay and the user service created {topic} again"
    );
    let report = stack.audit().await;
    assert!(report.consistent(), "{:?}", report.violations);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_stop_promptly_while_the_broker_is_away() {
    let mut broker = KafkaBroker::start().await;
    let stack = stack_on(&broker).await;
    let ids = register_many(&stack, "stop", 3, || {}).await;
    stack.finish(&ids).await;
    broker.kill();
    let _ = stack.register("unsent@example.com", "Unsent").await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), stack.stop())
        .await
        .expect("the services stopped within 30 s with the broker away");
    eprintln!("stopped in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_cannot_publish_makes_the_service_unready_until_it_can() {
    // Topics managed by the platform (create_topics off), as in production: the services cannot
    // create a lost topic again, so they must say so — the broker itself answers fine.
    let broker = KafkaBroker::start().await;
    let kafka = KafkaSettings {
        unready_after_ms: 2_000,
        ..kafka_settings_for(&broker.brokers())
    };
    let topics: Vec<String> = ["user.commands", "post.commands", "saga.replies"]
        .iter()
        .flat_map(|t| [kafka.topic(t), kafka.dead_letter_topic(t)])
        .collect();
    kafka.ensure_topics(&topics).await.unwrap();
    let stack = Stack::start_with(Options {
        kafka: Some(KafkaSettings {
            create_topics: false,
            ..kafka.clone()
        }),
        ..Options::default()
    })
    .await;
    assert_eq!(readiness(&stack, 200).await["work"], "ok");

    let admin: AdminClient<DefaultClientContext> = kafka.reader_config("admin").create().unwrap();
    let user_commands = kafka.topic("user.commands");
    admin
        .delete_topics(&[&user_commands], &AdminOptions::new())
        .await
        .unwrap();
    let id = stack.register("stuck@example.com", "Stuck").await;
    let body = readiness(&stack, 503).await;
    assert_eq!(body["broker"], "ok", "the broker answers: {body}");
    assert!(
        body["work"]
            .as_str()
            .is_some_and(|w| w.starts_with("outbox relay: ")),
        "{body}"
    );

    // The platform creates the topic again: the relay publishes, the saga completes, and the
    // service is ready again.
    kafka.ensure_topics(&[user_commands]).await.unwrap();
    assert_eq!(stack.finish_one(&id).await.state, SagaState::Completed as i32);
    assert_eq!(readiness(&stack, 200).await["work"], "ok");
    stack.stop().await;
}

/// The path production takes (and the Kubernetes overlays configure): the three services as
/// processes of their own, each with its own SCRAM-SHA-512 user, talking SASL_SSL to the broker
/// with certificates made here, configured only through their `APP_KAFKA__SECURITY__…` variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_runs_through_a_sasl_ssl_listener_with_the_services_own_settings() {
    use saga_e2e::{ServiceProcess, free_port};
    use saga_runtime::testing::{BrokerOptions, TestPki, fresh_database, unique};

    let pki = TestPki::generate();
    let keystore = pki.dir.join("broker-keystore.pem");
    let key = std::fs::read_to_string(&pki.server_key).unwrap();
    let cert = std::fs::read_to_string(&pki.server_cert).unwrap();
    std::fs::write(&keystore, format!("{key}{cert}")).unwrap();
    let users = ["orchestrator", "user-service", "post-service"];
    let password = |user: &str| format!("{user}-scram-password-{}", &unique("")[..6]);
    let passwords: Vec<String> = users.iter().map(|u| password(u)).collect();
    let sasl_port = free_port();
    let broker = KafkaBroker::start_with(BrokerOptions {
        listeners: vec![format!("SASL_SSL://127.0.0.1:{sasl_port}")],
        sets: vec![
            "sasl.enabled.mechanisms=SCRAM-SHA-512".into(),
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
             org.apache.kafka.common.security.scram.ScramLoginModule required;"
                .into(),
            "ssl.keystore.type=PEM".into(),
            format!("ssl.keystore.location={}", keystore.display()),
        ],
        format_args: users
            .iter()
            .zip(&passwords)
            .flat_map(|(u, p)| {
                [
                    "--add-scram".to_owned(),
                    format!("SCRAM-SHA-512=[name={u},password={p}]"),
                ]
            })
            .collect(),
    })
    .await;

    // Only the listener the services use is SASL_SSL; the prefix keeps this test's topics apart.
    let prefix = format!("{}.", unique("sasl"));
    let grpc = free_port();
    let (_, orchestrator_db) = fresh_database(&saga_orchestrator::MIGRATOR).await;
    let (users_pool, users_db) = fresh_database(&user_service::MIGRATOR).await;
    let (posts_pool, posts_db) = fresh_database(&post_service::MIGRATOR).await;
    let env = |user: &str, pw: &str, db: String| -> Vec<(String, String)> {
        [
            ("APP_KAFKA__BROKERS", format!("127.0.0.1:{sasl_port}")),
            ("APP_KAFKA__TOPIC_PREFIX", prefix.clone()),
            ("APP_KAFKA__SECURITY__PROTOCOL", "sasl_ssl".into()),
            ("APP_KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-512".into()),
            ("APP_KAFKA__SECURITY__USERNAME", user.into()),
            ("APP_KAFKA__SECURITY__PASSWORD", pw.into()),
            ("APP_KAFKA__SECURITY__CA_FILE", pki.ca.display().to_string()),
            ("APP_DATABASE__URL", db),
            ("OTEL_TRACES_EXPORTER", "none".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let mut orchestrator_env = env(users[0], &passwords[0], orchestrator_db);
    orchestrator_env.push(("APP_GRPC__LISTEN".into(), format!("127.0.0.1:{grpc}")));
    let mut services = vec![
        ServiceProcess::spawn("orchestrator", &orchestrator_env),
        ServiceProcess::spawn("user-service", &env(users[1], &passwords[1], users_db)),
        ServiceProcess::spawn("post-service", &env(users[2], &passwords[2], posts_db)),
    ];
    let client = saga_bench::client::Orchestrator::connect(&format!("http://127.0.0.1:{grpc}"), WAIT)
        .await
        .unwrap();
    let id = client
        .start(
            "register_user",
            serde_json::json!({"email": "scram@example.com", "name": "Scram"}),
            "",
        )
        .await
        .unwrap();
    let view = client
        .wait_terminal(std::slice::from_ref(&id), WAIT)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(view.state, SagaState::Completed as i32, "{view:#?}");
    let count = |pool: &sqlx::PgPool, sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count(&users_pool, "SELECT count(*) FROM users").await, 1);
    assert_eq!(count(&posts_pool, "SELECT count(*) FROM authors").await, 1);

    // The listener is really guarded: a wrong password gets nothing, not even metadata.
    let intruder = KafkaSettings {
        brokers: format!("127.0.0.1:{sasl_port}"),
        security: saga_runtime::kafka::KafkaSecurity {
            protocol: saga_runtime::kafka::SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(saga_runtime::kafka::SaslMechanism::ScramSha512),
            username: Some(users[0].into()),
            password: Some(secrecy::SecretString::from("not-the-password")),
            ca_file: Some(pki.ca.clone()),
        },
        ..KafkaSettings::default()
    };
    let producer = intruder.producer().unwrap().get();
    let metadata = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer as _;
        producer.client().fetch_metadata(None, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(metadata.is_err(), "a wrong password read the cluster's metadata");
    for s in &mut services {
        assert!(
            s.terminate().is_some_and(|st| st.success()),
            "{} stopped badly",
            s.name
        );
    }
    drop(broker);
}
