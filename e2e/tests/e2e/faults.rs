//! Faults of the orchestrator and its database, with every service a process of its own: an
//! orchestrator killed after publishing and before deleting what it published, its database
//! connections terminated under load, and two replicas whose timers both fire while one of them
//! is killed.

use std::time::{Duration, Instant};

use saga_bench::audit::Databases;
use saga_bench::client::Orchestrator;
use saga_e2e::DEMO_CROSS_CHECKS;
use saga_e2e::{ServiceProcess, WAIT, free_port};
use saga_proto::v1::SagaState;
use saga_runtime::kafka::KafkaSettings;
use saga_runtime::testing::{fresh_database, kafka_settings};
use serde_json::json;
use sqlx::PgPool;

/// The three services' databases and processes; orchestrator replicas share one database.
struct Cluster {
    kafka: KafkaSettings,
    dbs: Databases,
    urls: [String; 3],
    /// The HTTP (metrics, health, audit) ports of user-service and post-service.
    http_ports: [u16; 2],
    /// When the cluster started: the consistency audit covers the sagas created since.
    started_at: chrono::DateTime<chrono::Utc>,
    orchestrators: Vec<(Option<ServiceProcess>, u16)>,
    users: Option<ServiceProcess>,
    posts: Option<ServiceProcess>,
    /// Talks to replica 0.
    client: Option<Orchestrator>,
}

/// Waits until a service answers `/healthz` on `port`.
async fn serving(port: u16, what: &str) {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client");
    let deadline = Instant::now() + WAIT;
    while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "{what} never served {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    async fn start(replicas: usize) -> Self {
        let kafka = kafka_settings();
        let (orchestrator, orchestrator_url) = fresh_database(&saga_orchestrator::MIGRATOR).await;
        let (users, users_url) = fresh_database(&user_service::MIGRATOR).await;
        let (posts, posts_url) = fresh_database(&post_service::MIGRATOR).await;
        let mut cluster = Self {
            kafka,
            dbs: Databases {
                orchestrator,
                users,
                posts,
            },
            urls: [orchestrator_url, users_url, posts_url],
            http_ports: [free_port(), free_port()],
            started_at: chrono::Utc::now() - chrono::Duration::seconds(5),
            orchestrators: (0..replicas).map(|_| (None, free_port())).collect(),
            users: None,
            posts: None,
            client: None,
        };
        for i in 0..replicas {
            cluster.start_orchestrator(i).await;
        }
        cluster.start_users().await;
        cluster.start_posts().await;
        let url = format!("http://127.0.0.1:{}", cluster.orchestrators[0].1);
        cluster.client = Some(Orchestrator::connect(&url, WAIT).await.unwrap());
        cluster
    }

    fn client(&self) -> &Orchestrator {
        self.client.as_ref().expect("connected in start")
    }

    fn env(&self, db: usize, instance: &str) -> Vec<(String, String)> {
        let mut env = ServiceProcess::kafka_env(&self.kafka);
        env.push(("APP_DATABASE__URL".into(), self.urls[db].clone()));
        env.push(("APP_KAFKA__INSTANCE_ID".into(), instance.into()));
        env.push(("OTEL_TRACES_EXPORTER".into(), "none".into()));
        env
    }

    async fn start_orchestrator(&mut self, i: usize) {
        self.start_orchestrator_with(i, &[]).await;
    }

    /// Starts replica `i` and waits until its gRPC port takes connections.
    async fn start_orchestrator_with(&mut self, i: usize, extra: &[(&str, &str)]) {
        let mut env = self.env(0, &format!("orchestrator-{i}"));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env.push((
            "APP_GRPC__LISTEN".into(),
            format!("127.0.0.1:{}", self.orchestrators[i].1),
        ));
        env.push(("APP_TIMERS__INTERVAL_MS".into(), "50".into()));
        // The consistency audit, as the demo configures it.
        for (name, port) in [("USERS", self.http_ports[0]), ("POSTS", self.http_ports[1])] {
            env.push((
                format!("APP_AUDIT__PARTICIPANTS__{name}"),
                format!("http://127.0.0.1:{port}"),
            ));
        }
        for (name, pair) in DEMO_CROSS_CHECKS {
            env.push((
                format!("APP_AUDIT__CROSS_CHECKS__{}", name.to_uppercase()),
                pair.to_owned(),
            ));
        }
        self.orchestrators[i].0 = Some(ServiceProcess::spawn("orchestrator", &env));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.orchestrators[i].1));
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "orchestrator {i} never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the user service and waits until it serves HTTP, which it does only once its
    /// database is migrated: a test that cuts connections must not cut those of the start-up
    /// (which ends the process, as a failed start-up should).
    async fn start_users(&mut self) {
        let mut env = self.env(1, "user-service");
        env.push((
            "APP_HTTP__LISTEN".into(),
            format!("127.0.0.1:{}", self.http_ports[0]),
        ));
        self.users = Some(ServiceProcess::spawn("user-service", &env));
        serving(self.http_ports[0], "user-service").await;
    }

    /// Like [`Cluster::start_users`], for the post service.
    async fn start_posts(&mut self) {
        let mut env = self.env(2, "post-service");
        env.push((
            "APP_HTTP__LISTEN".into(),
            format!("127.0.0.1:{}", self.http_ports[1]),
        ));
        self.posts = Some(ServiceProcess::spawn("post-service", &env));
        serving(self.http_ports[1], "post-service").await;
    }

    /// Like [`Cluster::register`], but as a client that meets a connection cut: an UNAVAILABLE
    /// answer ("retry later") is retried with the same idempotency key, so a retry can never
    /// start a second saga. Each retry is printed (`start_retrying`).
    async fn register_retrying(&self, n: usize, tag: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let id = self
                .client()
                .start_retrying(
                    "register_user",
                    json!({"email": format!("{tag}{i}@example.com"), "name": format!("{tag} {i}")}),
                    &format!("{tag}{i}"),
                    WAIT,
                )
                .await
                .unwrap();
            ids.push(id);
        }
        ids
    }

    async fn register(&self, n: usize, tag: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(
                self.client()
                    .start(
                        "register_user",
                        json!({"email": format!("{tag}{i}@example.com"), "name": format!("{tag} {i}")}),
                        "",
                    )
                    .await
                    .unwrap(),
            );
        }
        ids
    }

    async fn all_completed(&self, ids: &[String]) {
        let views = self.client().wait_terminal(ids, WAIT).await.unwrap();
        for v in &views {
            assert_eq!(
                v.state,
                SagaState::Completed as i32,
                "{}",
                saga_bench::client::describe(v)
            );
        }
        let url = format!("http://127.0.0.1:{}", self.orchestrators[0].1);
        let report = saga_bench::audit::audit(&url, &self.dbs, self.started_at)
            .await
            .unwrap();
        assert!(report.consistent(), "{:?}", report.violations);
        assert_eq!(report.participants, ["posts", "users"], "both ledgers audited");
        assert!(report.sagas_checked >= ids.len() as u64);
    }
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Waits (bounded) until `sql` returns at least `n`.
async fn until_at_least(pool: &PgPool, sql: &str, n: i64, what: &str) {
    let deadline = Instant::now() + WAIT;
    while scalar(pool, sql).await < n {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_killed_between_publishing_and_deleting_sends_again_and_participants_absorb_it() {
    let mut c = Cluster::start(1).await;
    // Twenty sagas wait in the outbox of an orchestrator whose relay is off...
    c.orchestrators[0].0.take().unwrap().terminate();
    c.start_orchestrator_with(0, &[("APP_RELAY__ENABLED", "false")])
        .await;
    let ids = c.register(20, "held").await;
    assert_eq!(
        scalar(&c.dbs.orchestrator, "SELECT count(*) FROM outbox").await,
        20
    );
    c.orchestrators[0].0.take().unwrap().terminate();
    // ...then a relay publishes them all, and its DELETE of what the broker acknowledged hangs,
    // as if the process were stopped right there.
    for statement in [
        "CREATE FUNCTION hold_outbox_deletes() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(600); RETURN NULL; END $$",
        "CREATE TRIGGER hold_outbox_deletes BEFORE DELETE ON outbox \
         FOR EACH STATEMENT EXECUTE FUNCTION hold_outbox_deletes()",
    ] {
        sqlx::query(statement).execute(&c.dbs.orchestrator).await.unwrap();
    }
    c.start_orchestrator(0).await;
    // Every CreateUser was published and applied (the user service answered), yet its outbox row
    // is still there: the orchestrator dies now.
    until_at_least(&c.dbs.users, "SELECT count(*) FROM users", 20, "20 users created").await;
    assert!(scalar(&c.dbs.orchestrator, "SELECT count(*) FROM outbox").await >= 20);
    c.orchestrators[0].0.take().unwrap().kill();
    // The dead process's backend sleeps on; end it, and let deletes through again.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE '%DELETE FROM outbox%' AND pid <> pg_backend_pid()",
    )
    .execute(&c.dbs.orchestrator)
    .await
    .unwrap();
    sqlx::query("DROP TRIGGER hold_outbox_deletes ON outbox")
        .execute(&c.dbs.orchestrator)
        .await
        .unwrap();

    c.start_orchestrator(0).await;
    c.all_completed(&ids).await;
    // The new relay sent every CreateUser again: the user service answered each from its inbox.
    until_at_least(
        &c.dbs.users,
        "SELECT COALESCE(sum(duplicates), 0)::int8 FROM inbox WHERE command_type = 'CreateUser'",
        20,
        "every CreateUser answered again from the inbox",
    )
    .await;
    assert_eq!(scalar(&c.dbs.users, "SELECT count(*) FROM users").await, 20);
    assert_eq!(scalar(&c.dbs.posts, "SELECT count(*) FROM authors").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_complete_while_every_database_connection_is_terminated_again_and_again() {
    let c = Cluster::start(1).await;
    let pools = [&c.dbs.orchestrator, &c.dbs.users, &c.dbs.posts];
    let mut ids = Vec::new();
    for round in 0..5 {
        // A request right after a cut may meet a connection the server is still closing (the
        // cut only signals the backends) and gets UNAVAILABLE; a client retries that.
        ids.extend(c.register_retrying(10, &format!("cut{round}.")).await);
        // Every connection of every service — pools, the relays' lane-lock sessions, the
        // LISTEN connections — cut at once. A service reconnects when it next needs its database
        // (a relay's listener within a poll interval, 500 ms), so one whose last connection was
        // cut in the previous round may not be back yet: each is cut once it is.
        for (pool, name) in pools.into_iter().zip(["orchestrator", "users", "posts"]) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let cut: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND backend_type = 'client backend' \
                     AND application_name <> $1) AS t",
                )
                .bind(saga_runtime::testing::TEST_SESSION_NAME)
                .fetch_one(pool)
                .await
                .unwrap();
                if cut > 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the {name} database's service never connected again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c.all_completed(&ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_deadline_once_and_one_of_them_can_die() {
    let mut c = Cluster::start(2).await;
    c.posts.take().unwrap().kill();
    let ids = c.register(20, "twin").await;
    // CreateAuthor goes unanswered: each saga misses its 5 s deadline at least twice, the misses
    // handled by whichever replica's timer takes the saga first.
    let missed = "SELECT count(*) FROM (SELECT saga_id FROM saga_events WHERE kind = 'deadline_missed' \
                  GROUP BY saga_id HAVING count(*) >= 2) AS s";
    until_at_least(&c.dbs.orchestrator, missed, 20, "every saga missed two deadlines").await;
    c.orchestrators[1].0.take().unwrap().kill();
    c.start_posts().await;
    c.all_completed(&ids).await;

    // Each deadline was handled once: per saga and step, attempts were sent 1, 2, 3, … and each
    // attempt's deadline missed at most once — never by both replicas.
    let dispatched: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT saga_id::text, (data->>'step')::int8, (data->>'attempt')::int8 FROM saga_events \
         WHERE kind = 'command_dispatched' ORDER BY saga_id, id",
    )
    .fetch_all(&c.dbs.orchestrator)
    .await
    .unwrap();
    let mut expected = std::collections::HashMap::new();
    for (saga, step, attempt) in dispatched {
        let next = expected.entry((saga.clone(), step)).or_insert(1);
        assert_eq!(
            attempt, *next,
            "saga {saga} step {step}: attempts out of sequence"
        );
        *next += 1;
    }
    let twice = scalar(
        &c.dbs.orchestrator,
        "SELECT count(*) FROM (SELECT 1 FROM saga_events WHERE kind = 'deadline_missed' \
         GROUP BY saga_id, data->>'step', data->>'attempt' HAVING count(*) > 1) AS d",
    )
    .await;
    assert_eq!(twice, 0, "a deadline was handled twice");
}
