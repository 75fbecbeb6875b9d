//! Traces, metrics and health, observed from outside as an operator would: spans arrive at a real
//! OTLP receiver from three service processes, `/metrics` is scraped and parsed, `/readyz` asked.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use saga_bench::client::Orchestrator;
use saga_e2e::otlp::{ReceivedSpan, Receiver};
use saga_e2e::{Metrics, ServiceProcess, Stack, WAIT, free_port};
use saga_proto::v1::SagaState;
use saga_runtime::testing::{fresh_database, kafka_settings};
use serde_json::json;

/// The three services as processes of their own, exporting spans to `otlp_endpoint` (if any).
struct Processes {
    all: Vec<ServiceProcess>,
    client: Orchestrator,
    /// The orchestrator's metrics/health address.
    http_url: String,
    /// Every service's metrics/health address: orchestrator, user service, post service.
    http_urls: [String; 3],
}

async fn start_processes(otlp_endpoint: Option<&str>, extra: &[(&str, &str)]) -> Processes {
    let kafka = kafka_settings();
    let (_, orchestrator_db) = fresh_database(&saga_orchestrator::MIGRATOR).await;
    let (_, users_db) = fresh_database(&user_service::MIGRATOR).await;
    let (_, posts_db) = fresh_database(&post_service::MIGRATOR).await;
    let (grpc, http) = (free_port(), free_port());
    let (users_http, posts_http) = (free_port(), free_port());
    let mut common = ServiceProcess::kafka_env(&kafka);
    match otlp_endpoint {
        Some(endpoint) => {
            common.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()));
            common.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
        }
        None => common.push(("OTEL_TRACES_EXPORTER".into(), "none".into())),
    }
    for (k, v) in extra {
        common.push(((*k).into(), (*v).into()));
    }
    let with = |more: Vec<(&str, String)>| {
        let mut env = common.clone();
        env.extend(more.into_iter().map(|(k, v)| (k.to_owned(), v)));
        env
    };
    let all = vec![
        ServiceProcess::spawn(
            "orchestrator",
            &with(vec![
                ("APP_DATABASE__URL", orchestrator_db),
                ("APP_GRPC__LISTEN", format!("127.0.0.1:{grpc}")),
                ("APP_HTTP__LISTEN", format!("127.0.0.1:{http}")),
                ("APP_TIMERS__INTERVAL_MS", "50".into()),
            ]),
        ),
        ServiceProcess::spawn(
            "user-service",
            &with(vec![
                ("APP_DATABASE__URL", users_db),
                ("APP_HTTP__LISTEN", format!("127.0.0.1:{users_http}")),
            ]),
        ),
        ServiceProcess::spawn(
            "post-service",
            &with(vec![
                ("APP_DATABASE__URL", posts_db),
                ("APP_HTTP__LISTEN", format!("127.0.0.1:{posts_http}")),
            ]),
        ),
    ];
    let client = Orchestrator::connect(&format!("http://127.0.0.1:{grpc}"), WAIT)
        .await
        .unwrap();
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    Processes {
        all,
        client,
        http_url: url(http),
        http_urls: [url(http), url(users_http), url(posts_http)],
    }
}

impl Processes {
    /// One scrape of every service's `/metrics`, as one set of series (each process has a registry
    /// of its own, so nothing another test does shows up here).
    async fn metrics(&self) -> Metrics {
        let mut all = Metrics::default();
        for url in &self.http_urls {
            all.extend(Metrics::scrape(url).await);
        }
        all
    }
}

async fn register(client: &Orchestrator, email: &str, name: &str) -> String {
    let id = client
        .start("register_user", json!({"email": email, "name": name}), "")
        .await
        .unwrap();
    client
        .wait_terminal(std::slice::from_ref(&id), WAIT)
        .await
        .unwrap();
    id
}

/// The chain of spans from `span` up to its root.
fn ancestry<'a>(span: &'a ReceivedSpan, by_id: &HashMap<&str, &'a ReceivedSpan>) -> Vec<&'a ReceivedSpan> {
    let mut chain = vec![span];
    while let Some(parent) = by_id.get(chain.last().unwrap().parent_span_id.as_str()) {
        chain.push(parent);
        assert!(chain.len() < 200, "a cycle in the span tree");
    }
    chain
}

// Multi-threaded: the receiver keeps serving while the test waits for the processes to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_saga_is_one_trace_across_the_three_services() {
    let receiver = Receiver::start().await;
    let mut stack = start_processes(Some(&receiver.endpoint), &[]).await;
    let first = register(&stack.client, "pen@example.com", "Pen Name").await;
    // Same pen name: CreateAuthor is refused, DeleteUser compensates.
    let id = register(&stack.client, "other.pen@example.com", "pen name").await;
    assert_eq!(
        stack.client.get(&id).await.unwrap().state,
        SagaState::Compensated as i32
    );
    for p in &mut stack.all {
        assert!(
            p.terminate().is_some_and(|s| s.success()),
            "{} did not stop cleanly",
            p.name
        );
    }

    let spans = receiver.spans();
    let start = spans
        .iter()
        .find(|s| s.attributes.get("saga_id") == Some(&id))
        .unwrap_or_else(|| panic!("no span names saga {id}; got {} spans", spans.len()));
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == start.trace_id).collect();
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["orchestrator", "post-service", "user-service"])
    );

    // One root — the StartSaga call — and every other span's parent is in the same trace.
    let by_id: HashMap<&str, &ReceivedSpan> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let roots: Vec<_> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(roots[0].name, "saga.v1.SagaOrchestrator/StartSaga");
    assert_eq!(roots[0].service, "orchestrator");
    for s in &trace {
        assert!(
            s.parent_span_id.is_empty() || by_id.contains_key(s.parent_span_id.as_str()),
            "orphan: {s:#?}"
        );
    }

    // The compensation hangs off the refusal, which hangs off the first step: walk it to the root.
    let named = |service: &str, name: &str| {
        trace
            .iter()
            .copied()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {service} span `{name}` in {:#?}",
                    trace.iter().map(|s| (&s.service, &s.name)).collect::<Vec<_>>()
                )
            })
    };
    let delete = named("user-service", "handle DeleteUser");
    assert_eq!(
        delete.attributes.get("phase").map(String::as_str),
        Some("compensation")
    );
    let chain: Vec<(&str, &str)> = ancestry(delete, &by_id)
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    let expected_in_order = [
        ("user-service", "handle DeleteUser"),
        ("orchestrator", "publish"),
        ("post-service", "handle CreateAuthor"),
        ("orchestrator", "publish"),
        ("user-service", "handle CreateUser"),
        ("orchestrator", "publish"),
        ("orchestrator", "saga.v1.SagaOrchestrator/StartSaga"),
    ];
    let mut rest = chain.iter();
    for (service, name) in expected_in_order {
        assert!(
            rest.any(|(s, n)| *s == service && n.starts_with(name)),
            "`{service}: {name}` missing or out of order in the chain {chain:#?}"
        );
    }
    // Each participant's handling has its database transaction beneath it.
    for handle in trace.iter().filter(|s| s.name.starts_with("handle ")) {
        assert!(
            trace
                .iter()
                .any(|s| s.name == "db.transaction" && s.parent_span_id == handle.span_id),
            "no db.transaction under {handle:#?}"
        );
    }
    // The other saga is a trace of its own.
    let other = spans
        .iter()
        .find(|s| s.attributes.get("saga_id") == Some(&first))
        .unwrap();
    assert_ne!(other.trace_id, start.trace_id);
}

#[tokio::test]
async fn an_unreachable_collector_drops_counted_spans_and_sagas_go_on() {
    // A collector that accepts connections and never answers: exports hang until they time out.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", blackhole.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let mut open = Vec::new();
        for conn in blackhole.incoming().take(50).flatten() {
            open.push(conn);
        }
    });
    let mut stack = start_processes(
        Some(&endpoint),
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(
            stack
                .client
                .start(
                    "register_user",
                    json!({"email": format!("d{i}@example.com"), "name": format!("D {i}")}),
                    "",
                )
                .await
                .unwrap(),
        );
    }
    let views = stack.client.wait_terminal(&ids, WAIT).await.unwrap();
    assert!(
        views.iter().all(|v| v.state == SagaState::Completed as i32),
        "sagas go on without the collector"
    );

    let m = Metrics::scrape(&stack.http_url).await;
    let dropped = m.sum("otel_spans_dropped_total", &[]);
    let queued = m.sum("otel_spans_queued", &[]);
    assert!(dropped > 0.0, "spans beyond the queue are dropped and counted");
    assert!(queued <= 16.0, "the export queue stays bounded, holds {queued}");
    for p in &mut stack.all {
        p.kill();
    }
    drop(holder);
}

// The services run as processes of their own: the metrics registry is global to a process, and
// other tests of this binary run sagas at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_the_right_amounts() {
    let mut stack = start_processes(None, &[]).await;
    register(&stack.client, "metric.taken@example.com", "Metric").await;
    let before = stack.metrics().await;

    let mut ids = Vec::new();
    let start = |email: String, name: String| {
        let client = &stack.client;
        async move {
            client
                .start("register_user", json!({"email": email, "name": name}), "")
                .await
                .unwrap()
        }
    };
    for i in 0..3 {
        ids.push(start(format!("m{i}@example.com"), format!("M {i}")).await);
    }
    for i in 0..2 {
        ids.push(start(format!("clash{i}@example.com"), "metric".into()).await);
    }
    stack.client.wait_terminal(&ids, WAIT).await.unwrap();
    let after = stack.metrics().await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);

    let rt = ("saga_type", "register_user");
    assert_eq!(delta("saga_started_total", &[rt]), 5.0);
    assert_eq!(delta("saga_finished_total", &[rt, ("state", "completed")]), 3.0);
    assert_eq!(delta("saga_finished_total", &[rt, ("state", "compensated")]), 2.0);
    assert_eq!(delta("saga_compensations_total", &[rt]), 2.0);
    assert_eq!(delta("saga_duration_seconds_count", &[rt]), 5.0);
    assert_eq!(
        delta(
            "saga_step_duration_seconds_count",
            &[rt, ("step", "create_author"), ("outcome", "rejected")]
        ),
        2.0
    );
    let cmd = |c: &str, o: &str| delta("participant_commands_total", &[("command", c), ("outcome", o)]);
    assert_eq!(
        (cmd("CreateUser", "applied"), cmd("CreateAuthor", "applied")),
        (5.0, 3.0)
    );
    assert_eq!(
        (cmd("CreateAuthor", "rejected"), cmd("DeleteUser", "applied")),
        (2.0, 2.0)
    );
    // 5 + 5 + 2 commands and as many replies went through the outboxes and consumers.
    assert_eq!(delta("outbox_published_total", &[]), 24.0);
    assert_eq!(delta("consumer_messages_total", &[("outcome", "handled")]), 24.0);
    assert_eq!(delta("outbox_publish_lag_seconds_count", &[]), 24.0);
    for gauge in [
        "outbox_backlog",
        "outbox_oldest_age_seconds",
        "db_pool_connections",
        "db_pool_max_connections",
    ] {
        assert!(after.has(gauge), "{gauge} missing");
    }
    assert_eq!(after.sum("consumer_dead_lettered_total", &[]), 0.0);
    for p in &mut stack.all {
        p.terminate();
    }
}

#[tokio::test]
async fn health_is_live_and_readiness_checks_database_and_broker() {
    let stack = Stack::start().await;
    let live = reqwest::get(format!("{}/healthz", stack.http_url)).await.unwrap();
    assert_eq!(
        (live.status().as_u16(), live.text().await.unwrap()),
        (200, "ok\n".to_owned())
    );
    let ready = reqwest::get(format!("{}/readyz", stack.users_http_url().unwrap()))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap(),
        json!({"database": "ok", "broker": "ok", "work": "ok"})
    );

    // A participant whose broker is unreachable is alive but not ready, and says why.
    let defaults = user_service::Settings::default();
    let settings = user_service::Settings {
        database: saga_runtime::db::DatabaseSettings::with_url(&stack.users_url),
        kafka: saga_runtime::kafka::KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            create_topics: false,
            ..defaults.kafka.clone()
        },
        http: saga_runtime::http::HttpSettings::on("127.0.0.1:0"),
        ..defaults
    };
    let app = saga_participant::ParticipantApp::build(
        &settings,
        user_service::Users::new(settings.rules.clone()),
        &user_service::MIGRATOR,
    )
    .await
    .unwrap();
    let url = format!("http://{}", app.http_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await {
            answer = Some((r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = answer.expect("the HTTP port answers");
    assert_eq!(status, 503);
    assert_eq!(body["database"], "ok");
    assert_ne!(body["broker"], "ok");
    assert_eq!(
        reqwest::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    shutdown.cancel();
    let _ = task.await;
    stack.stop().await;
}

/// The alerts and the Grafana dashboard (`k8s/components/monitoring`) name only metrics, labels
/// and label values the services really export: `k8s/tools/check_metrics.py` checks every PromQL
/// expression in them against scrapes of the three running services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_the_dashboard_use_only_metrics_the_services_export() {
    let receiver = Receiver::start().await;
    let mut stack = start_processes(Some(&receiver.endpoint), &[]).await;
    // A completed saga and one compensated by a business rule: step histograms of both outcomes.
    register(&stack.client, "alert.ann@example.com", "Alert Ann").await;
    register(&stack.client, "alert.bob@example.com", "alert ann").await;
    // Consumer lag comes from librdkafka's statistics, every 5 s: wait until every service has it.
    let deadline = std::time::Instant::now() + WAIT;
    let scrapes = loop {
        let mut texts = Vec::new();
        for url in &stack.http_urls {
            let text = reqwest::get(format!("{url}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            texts.push(text);
        }
        if texts.iter().all(|t| t.contains("kafka_consumer_lag{")) {
            break texts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kafka_consumer_lag in every scrape"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let dir = std::env::temp_dir().join(saga_runtime::testing::unique("scrapes-"));
    std::fs::create_dir_all(&dir).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(format!("{root}/k8s/tools/check_metrics.py"));
    for (i, text) in scrapes.iter().enumerate() {
        let path = dir.join(format!("service-{i}.prom"));
        std::fs::write(&path, text).unwrap();
        cmd.arg("--scrape").arg(path);
    }
    cmd.arg(format!("{root}/k8s/components/monitoring/prometheusrule.yaml"))
        .arg(format!(
            "{root}/k8s/components/monitoring/dashboards/saga-coordinator.json"
        ));
    let out = cmd.output().expect("python3 runs k8s/tools/check_metrics.py");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &mut stack.all {
        p.terminate();
    }
}
