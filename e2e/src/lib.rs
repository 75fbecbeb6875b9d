//! The end-to-end harness: the orchestrator and both participant services running as in production
//! (each with its own database, all on one broker under a test-unique topic prefix), started
//! in-process so tests can stop and restart them, plus helpers to drive and inspect sagas.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed unwrap is a failed test

pub use saga_bench::otlp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use saga_bench::audit::{AuditReport, Databases, audit};
use saga_bench::client::Orchestrator;
use saga_orchestrator::Settings as OrchestratorSettings;
use saga_orchestrator::ShiftedClock;
use saga_orchestrator::{Application, MIGRATOR as ORCHESTRATOR_MIGRATOR};
use saga_participant::{Domain, ParticipantApp, ParticipantSettings, ServiceDefaults};
use saga_proto::v1::{SagaEvent, SagaView};
use saga_runtime::db::DatabaseSettings;
use saga_runtime::kafka::KafkaSettings;
use saga_runtime::testing::{fresh_database, kafka_settings};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use user_service::UserRules;

pub const WAIT: Duration = Duration::from_secs(60);
/// The demo's cross-checks (`[audit.cross_checks]`), as `scripts/dev.sh` and the Kubernetes
/// manifests configure them.
pub const DEMO_CROSS_CHECKS: [(&str, &str); 2] = [
    ("authors_replicate_users", "users.users = posts.authors"),
    ("post_counts_agree", "users.post_counts = posts.post_counts"),
];
/// The operator credential the stack's orchestrator accepts (operator `ops`).
pub const OPERATOR_TOKEN: &str = "e2e-operator-token-000001";
/// The reader token of a stack whose reads are protected ([`Options::protect_reads`]).
pub const READER_TOKEN: &str = "e2e-reader-token-0000001";

/// A service task and the token that stops it.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    http: std::net::SocketAddr,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("service task")
            .expect("service stopped cleanly");
    }
}

#[derive(Clone, Default)]
pub struct Options {
    pub post_quota: Option<i32>,
    /// Do not start user-service in-process (a test runs it as a process of its own).
    pub external_users: bool,
    /// Kafka settings for every service (default: the shared test broker, a fresh topic prefix).
    pub kafka: Option<KafkaSettings>,
    /// Run the orchestrator's periodic consistency audit this often (default: off).
    pub audit_interval_secs: Option<u64>,
    /// Sagas, ledger entries and facts the audit reads per page (default: the orchestrator's).
    pub audit_page_size: Option<u32>,
    /// Retention's age for every saga type, in days, looked at every 20 ms (default: the
    /// orchestrator's, 30 days, looked at every minute).
    pub retention_days: Option<f64>,
    /// Reads need a token: [`READER_TOKEN`] (reader `participants`) or [`OPERATOR_TOKEN`].
    pub protect_reads: bool,
}

/// The three services and their databases.
pub struct Stack {
    pub kafka: KafkaSettings,
    /// The orchestrator's gRPC address, e.g. `http://127.0.0.1:40123`.
    pub grpc_url: String,
    /// The orchestrator's metrics/health address, e.g. `http://127.0.0.1:40124`.
    pub http_url: String,
    pub dbs: Databases,
    pub users_url: String,
    pub posts_url: String,
    pub clock: Arc<ShiftedClock>,
    pub client: Orchestrator,
    rules: UserRules,
    /// Where user-service and post-service serve HTTP (kept across their restarts).
    http_addrs: [Option<std::net::SocketAddr>; 2],
    orchestrator: Option<Running>,
    users: Option<Running>,
    posts: Option<Running>,
}

/// Logs of the services running in the test process: with `TEST_LOG` set, and always under
/// cargo-nextest, which captures each test process's output and shows it only when the test
/// fails — so a failure in CI comes with what the services said.
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() || std::env::var_os("NEXTEST").is_some() {
        let _ = saga_runtime::telemetry::init("test", saga_runtime::telemetry::LogFormat::Human);
    }
}

async fn ready(mut assigned: watch::Receiver<usize>, what: &str) {
    tokio::time::timeout(WAIT, assigned.wait_for(|n| *n > 0))
        .await
        .unwrap_or_else(|_| panic!("{what} never got its partitions"))
        .expect("consumer alive");
}

/// A participant's settings; its HTTP port is `http` (the orchestrator's audit reads it there, so
/// a restarted service takes its old port again), a free one when `None`.
fn participant_settings<R: ServiceDefaults + Default>(
    kafka: &KafkaSettings,
    url: &str,
    rules: R,
    http: Option<std::net::SocketAddr>,
) -> ParticipantSettings<R> {
    let defaults = ParticipantSettings::<R>::default();
    ParticipantSettings {
        database: DatabaseSettings::with_url(url),
        kafka: kafka.clone(),
        relay: saga_runtime::outbox::RelaySettings {
            poll_interval_ms: 200,
            ..defaults.relay.clone()
        },
        http: saga_runtime::http::HttpSettings::on(
            &http.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()),
        ),
        rules,
        ..defaults
    }
}

async fn spawn_participant<D: Domain, R>(
    settings: ParticipantSettings<R>,
    domain: D,
    migrator: &'static sqlx::migrate::Migrator,
) -> Running {
    let app = ParticipantApp::build(&settings, domain, migrator)
        .await
        .expect("participant builds");
    let http = app.http_addr();
    let assigned = app.assigned();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    ready(assigned, "participant").await;
    Running { shutdown, task, http }
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        init_logs();
        let kafka = options.kafka.clone().unwrap_or_else(kafka_settings);
        let (orchestrator_pool, orchestrator_url) = fresh_database(&ORCHESTRATOR_MIGRATOR).await;
        let (users_pool, users_url) = fresh_database(&user_service::MIGRATOR).await;
        let (posts_pool, posts_url) = fresh_database(&post_service::MIGRATOR).await;
        let rules = UserRules {
            default_post_quota: options
                .post_quota
                .unwrap_or(UserRules::default().default_post_quota),
        };

        let users = if options.external_users {
            None
        } else {
            Some(
                spawn_participant(
                    participant_settings(&kafka, &users_url, rules.clone(), None),
                    user_service::Users::new(rules.clone()),
                    &user_service::MIGRATOR,
                )
                .await,
            )
        };
        let posts = Some(
            spawn_participant(
                participant_settings(&kafka, &posts_url, post_service::PostRules::default(), None),
                post_service::Posts,
                &post_service::MIGRATOR,
            )
            .await,
        );
        let mut settings = OrchestratorSettings::default();
        settings.grpc.listen = "127.0.0.1:0".into();
        settings.http.listen = "127.0.0.1:0".into();
        settings.database = DatabaseSettings::with_url(&orchestrator_url);
        settings.kafka = kafka.clone();
        settings.timers.interval_ms = 20;
        // The consistency audit reads the participants' ledgers on their HTTP ports.
        for (name, running) in [("users", &users), ("posts", &posts)] {
            if let Some(r) = running {
                settings
                    .audit
                    .participants
                    .insert(name.into(), format!("http://{}", r.http));
            }
        }
        // The demo's cross-checks, as every demo stack runs them (both participants in-process).
        if users.is_some() && posts.is_some() {
            for (name, pair) in DEMO_CROSS_CHECKS {
                settings.audit.cross_checks.insert(
                    name.into(),
                    pair.to_owned().try_into().expect("a valid cross-check"),
                );
            }
        }
        settings.audit.interval_secs = options.audit_interval_secs.unwrap_or(0);
        if let Some(n) = options.audit_page_size {
            settings.audit.page_size = n;
        }
        if let Some(days) = options.retention_days {
            settings.retention.max_age_days = days;
            settings.retention.interval_ms = 20;
        }
        settings.relay.poll_interval_ms = 200;
        settings
            .auth
            .operators
            .insert("ops".into(), secrecy::SecretString::from(OPERATOR_TOKEN));
        if options.protect_reads {
            settings.auth.protect_reads = true;
            settings
                .auth
                .readers
                .insert("participants".into(), secrecy::SecretString::from(READER_TOKEN));
        }
        let clock = Arc::new(ShiftedClock::default());
        let app = Application::build_with_clock(settings, clock.clone())
            .await
            .expect("orchestrator builds");
        let addr = app.grpc_addr();
        let http = app.http_addr();
        let assigned = app.reply_partitions();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let orchestrator = Running { shutdown, task, http };

        ready(assigned, "orchestrator").await;

        let url = format!("http://{addr}");
        let client = Orchestrator::connect(&url, Duration::from_secs(10))
            .await
            .expect("orchestrator reachable");
        Stack {
            kafka,
            grpc_url: url,
            http_url: format!("http://{http}"),
            dbs: Databases {
                orchestrator: orchestrator_pool,
                users: users_pool,
                posts: posts_pool,
            },
            users_url,
            posts_url,
            clock,
            client,
            rules,
            http_addrs: [users.as_ref().map(|r| r.http), posts.as_ref().map(|r| r.http)],
            orchestrator: Some(orchestrator),
            users,
            posts,
        }
    }

    pub async fn stop_posts(&mut self) {
        if let Some(p) = self.posts.take() {
            p.stop().await;
        }
    }

    pub async fn start_posts(&mut self) {
        let settings = participant_settings(
            &self.kafka,
            &self.posts_url,
            post_service::PostRules::default(),
            self.http_addrs[1],
        );
        self.posts = Some(spawn_participant(settings, post_service::Posts, &post_service::MIGRATOR).await);
    }

    pub async fn stop_users(&mut self) {
        if let Some(u) = self.users.take() {
            u.stop().await;
        }
    }

    pub async fn start_users(&mut self) {
        let settings = participant_settings(
            &self.kafka,
            &self.users_url,
            self.rules.clone(),
            self.http_addrs[0],
        );
        self.users = Some(
            spawn_participant(
                settings,
                user_service::Users::new(self.rules.clone()),
                &user_service::MIGRATOR,
            )
            .await,
        );
    }

    /// Starts a `register_user` saga the way a client should: with an idempotency key of its own,
    /// repeated while the orchestrator answers UNAVAILABLE (see [`Orchestrator::start_retrying`]).
    pub async fn register(&self, email: &str, name: &str) -> String {
        self.start_keyed("register_user", json!({"email": email, "name": name}))
            .await
    }

    /// Starts a `publish_post` saga, like [`Stack::register`].
    pub async fn publish(&self, user_id: &str, title: &str) -> String {
        self.start_keyed(
            "publish_post",
            json!({"user_id": user_id, "title": title, "body": "text"}),
        )
        .await
    }

    async fn start_keyed(&self, saga_type: &str, payload: Value) -> String {
        let key = format!("e2e-{}", uuid::Uuid::now_v7());
        self.client
            .start_retrying(saga_type, payload, &key, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{saga_type} starts: {e}"))
    }

    pub async fn finish(&self, ids: &[String]) -> Vec<SagaView> {
        self.client.wait_terminal(ids, WAIT).await.expect("sagas finish")
    }

    pub async fn finish_one(&self, id: &str) -> SagaView {
        self.finish(&[id.to_owned()]).await.remove(0)
    }

    /// A field of the saga's context (e.g. the generated `user_id`).
    pub async fn context(&self, id: &str, field: &str) -> String {
        let view = self.client.get(id).await.expect("saga exists");
        let context: Value = serde_json::from_str(&view.context_json).expect("context is JSON");
        context[field].as_str().expect("field present").to_owned()
    }

    pub async fn history(&self, id: &str) -> Vec<SagaEvent> {
        self.client.get_with_history(id).await.expect("GetSaga").1
    }

    /// Polls the history until an event matches.
    pub async fn wait_event(&self, id: &str, what: &str, matches: impl Fn(&SagaEvent) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.history(id).await.iter().any(&matches) {
                return;
            }
            assert!(Instant::now() < deadline, "saga {id}: never saw {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Parks `n` register_user sagas as failed, the way it happens in production: each new user's
    /// pen name is taken, so CreateAuthor is refused, and the user service is away for longer than
    /// the DeleteUser compensation's retry budget (time is moved forward instead of waited out).
    /// The user service is running again afterwards. Returns the parked sagas' ids.
    pub async fn park_register_sagas(&mut self, n: usize) -> Vec<String> {
        let taken = self.register("taken@example.com", "Taken").await;
        self.finish_one(&taken).await;
        self.stop_posts().await;
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(self.register(&format!("parked{i}@example.com"), "taken").await);
        }
        for id in &ids {
            self.wait_event(id, "CreateAuthor dispatched", |e| {
                e.kind == "command_dispatched" && e.data_json.contains("CreateAuthor")
            })
            .await;
        }
        self.stop_users().await;
        self.start_posts().await;
        // Every CreateAuthor refused, every DeleteUser waiting: only now may time jump, or steps
        // still being processed would time out and take another (legitimate) path.
        let waiting =
            "SELECT count(*) FROM sagas WHERE state = 'compensating' AND current_step = 'create_user'";
        let deadline = Instant::now() + WAIT;
        while Self::scalar(&self.dbs.orchestrator, waiting).await < n as i64 {
            assert!(
                Instant::now() < deadline,
                "CreateAuthor was not refused for every saga"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Each jump passes a deadline or a backoff; the compensation's budget is an hour.
        let parked = "SELECT count(*) FROM sagas WHERE state = 'failed'";
        for _ in 0..200 {
            if Self::scalar(&self.dbs.orchestrator, parked).await == n as i64 {
                break;
            }
            self.clock.advance(chrono::TimeDelta::minutes(10));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(
            Self::scalar(&self.dbs.orchestrator, parked).await,
            n as i64,
            "sagas never parked"
        );
        self.start_users().await;
        ids
    }

    /// The metrics/health address of the running user service, if it runs in-process.
    pub fn users_http_url(&self) -> Option<String> {
        self.users.as_ref().map(|r| format!("http://{}", r.http))
    }

    /// The metrics/health address of the running post service.
    pub fn posts_http_url(&self) -> Option<String> {
        self.posts.as_ref().map(|r| format!("http://{}", r.http))
    }

    /// The orchestrator's consistency audit (`RunAudit`) of the last day's sagas, with its
    /// cross-checks, and the sagas counted by state (see [`saga_bench::audit`]).
    pub async fn audit(&self) -> AuditReport {
        let since = chrono::Utc::now() - chrono::Duration::days(1);
        let report = audit(&self.grpc_url, &self.dbs, since).await.expect("audit runs");
        if self.http_addrs.iter().all(Option::is_some) {
            assert_eq!(report.participants, ["posts", "users"], "both ledgers audited");
        }
        report
    }

    pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.expect("query")
    }

    pub async fn stop(mut self) {
        self.stop_users().await;
        self.stop_posts().await;
        if let Some(o) = self.orchestrator.take() {
            o.stop().await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for r in [&self.orchestrator, &self.users, &self.posts]
            .into_iter()
            .flatten()
        {
            r.shutdown.cancel();
        }
    }
}

/// The data of a history event.
pub fn data(e: &SagaEvent) -> Value {
    serde_json::from_str(&e.data_json).expect("event data is JSON")
}

/// The (step, phase) of every command the saga dispatched, in order.
pub fn dispatched(history: &[SagaEvent]) -> Vec<(u64, String)> {
    history
        .iter()
        .filter(|e| e.kind == "command_dispatched")
        .map(|e| {
            let d = data(e);
            (
                d["step"].as_u64().expect("event has a step"),
                d["phase"].as_str().expect("event has a phase").to_owned(),
            )
        })
        .collect()
}

/// A service running as a process of its own: the test binary re-executes itself into the ignored
/// test `processes::service_process`, which runs the service's real `serve` (what its binary runs),
/// configured by `APP_…` and `OTEL_…` variables.
///
/// Its log (stdout, at `RUST_LOG=warn` unless `CHILD_LOG` says otherwise) goes to a file in the
/// system's temporary directory, deleted when the process is dropped — unless the test is failing:
/// then its last lines are printed, and the file is kept. (`CHILD_LOG=<filter>` sends the log to
/// the test's own output instead.) Panics go to stderr, which the test shares.
pub struct ServiceProcess {
    pub name: &'static str,
    child: std::process::Child,
    log: Option<std::path::PathBuf>,
}

impl ServiceProcess {
    pub fn spawn(name: &'static str, env: &[(String, String)]) -> Self {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary path"));
        cmd.args([
            "--exact",
            "processes::service_process",
            "--ignored",
            "--nocapture",
        ])
        .env("E2E_SERVICE", name)
        .env("APP_HTTP__LISTEN", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = if std::env::var_os("CHILD_LOG").is_none() {
            static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let dir = std::env::temp_dir().join("saga-e2e-logs");
            std::fs::create_dir_all(&dir).expect("create the service log directory");
            let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("{name}-{}-{n}.log", std::process::id()));
            cmd.stdout(std::fs::File::create(&path).expect("create a service log file"));
            Some(path)
        } else {
            None
        };
        Self {
            name,
            child: cmd.spawn().expect("spawn service process"),
            log,
        }
    }

    /// `APP_KAFKA__…` variables for `kafka` (brokers, prefix, consumer overrides).
    pub fn kafka_env(kafka: &KafkaSettings) -> Vec<(String, String)> {
        let mut env = vec![
            ("APP_KAFKA__BROKERS".to_owned(), kafka.brokers.clone()),
            ("APP_KAFKA__TOPIC_PREFIX".to_owned(), kafka.topic_prefix.clone()),
            ("APP_RELAY__POLL_INTERVAL_MS".to_owned(), "200".to_owned()),
        ];
        for (k, v) in &kafka.consumer {
            env.push((
                format!("APP_KAFKA__CONSUMER__{}", k.replace('.', "_").to_uppercase()),
                v.clone(),
            ));
        }
        env
    }

    /// SIGKILL: no chance to flush, leave the group or commit offsets.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
        let Some(path) = &self.log else { return };
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(path);
            return;
        }
        const LINES: usize = 40;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LINES)..];
        eprintln!(
            "--- {} (pid {}): last {} of {} log lines; the whole log is kept in {} ---",
            self.name,
            self.child.id(),
            tail.len(),
            lines.len(),
            path.display()
        );
        for line in tail {
            eprintln!("{line}");
        }
    }
}

pub use saga_runtime::testing::free_port;

/// A scrape of a Prometheus `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub async fn scrape(base_url: &str) -> Self {
        let text = reqwest::get(format!("{base_url}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        Self::parse(&text)
    }

    /// Parses the text exposition format (`name{k="v",…} value` lines; comments skipped).
    pub fn parse(text: &str) -> Self {
        let mut series = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.trim_end_matches('}');
                    let labels = body
                        .split("\",")
                        .filter_map(|kv| kv.split_once("=\""))
                        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').to_owned()))
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (key.to_owned(), BTreeMap::new()),
            };
            series.push((name, labels, value));
        }
        Self { series }
    }

    /// The sum over the series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.series.iter().any(|(n, _, _)| n == name)
    }

    /// Adds another scrape's series (e.g. another service's).
    pub fn extend(&mut self, other: Metrics) {
        self.series.extend(other.series);
    }
}
