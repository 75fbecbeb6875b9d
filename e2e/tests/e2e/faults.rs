//! Faults of the orchestrator and its database, with every service a process of its own: an
//! orchestrator killed after publishing and before deleting what it published, its database
//! connections terminated under load, and two replicas whose timers both fire while one of them
//! is killed.

use std::time::{Duration, Instant};

use saga_bench::audit::Databases;
use saga_bench::client::Orchestrator;
use saga_e2e::DEMO_CROSS_CHECKS;
use saga_e2e::{ServiceProcess, WAIT, free_port};
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{
    GetJobRequest, Job, JobState, ListJobItemsRequest, ReplayCompensationsRequest, SagaFilter, SagaState,
};
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
    /// Settings every orchestrator replica starts with (e.g. a catalog of its own).
    orchestrator_env: Vec<(String, String)>,
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
        Self::start_with(replicas, &[]).await
    }

    /// A cluster whose orchestrator replicas all start with `orchestrator_env`.
    async fn start_with(replicas: usize, orchestrator_env: &[(&str, &str)]) -> Self {
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
            orchestrator_env: orchestrator_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
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
        env.extend(self.orchestrator_env.iter().cloned());
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

/// The built-in catalog with one change: a `register_user` saga whose DeleteUser is not answered
/// gives up after about a second and a half, so sagas park as failed in real time (a test's
/// stand-in for an hour of outage).
fn catalog_with_short_compensation_budget() -> std::path::PathBuf {
    let builtin = include_str!("../../../orchestrator/sagas.toml");
    let anchor = "compensation = \"DeleteUser\"\n";
    assert!(builtin.contains(anchor), "the built-in catalog changed");
    let changed = builtin.replacen(
        anchor,
        &format!("{anchor}compensation_retry = {{ give_up_after_ms = 1500, initial_backoff_ms = 100, max_backoff_ms = 300 }}\n"),
        1,
    );
    let changed = changed.replacen("deadline_ms = 5000", "deadline_ms = 1000", 1);
    let path = std::env::temp_dir().join(format!("saga-catalog-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(&path, changed).expect("write the catalog");
    path
}

const OPERATOR: &str = "faults-operator-token-0001";

async fn job(client: &mut SagaOrchestratorClient<tonic::transport::Channel>, id: &str) -> Job {
    client
        .get_job(GetJobRequest { job_id: id.into() })
        .await
        .expect("GetJob")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_interrupted_by_sigterm_resumes_on_the_other_replica_with_exact_counts() {
    const N: usize = 30;
    let catalog = catalog_with_short_compensation_budget();
    let catalog_path = catalog.display().to_string();
    let mut c = Cluster::start_with(
        2,
        &[
            ("APP_CATALOG_PATH", catalog_path.as_str()),
            ("APP_AUTH__OPERATORS__OPS", OPERATOR),
        ],
    )
    .await;
    // N sagas parked the way it happens in production: each new user's pen name is taken, so
    // CreateAuthor is refused, and the user service is away for longer than DeleteUser's budget.
    let taken = c
        .client()
        .start(
            "register_user",
            json!({"email": "taken@example.com", "name": "Taken"}),
            "",
        )
        .await
        .unwrap();
    c.all_completed(std::slice::from_ref(&taken)).await;
    c.posts.take().unwrap().kill();
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(
            c.client()
                .start(
                    "register_user",
                    json!({"email": format!("p{i}@example.com"), "name": "Taken"}),
                    "",
                )
                .await
                .unwrap(),
        );
    }
    until_at_least(
        &c.dbs.users,
        "SELECT count(*) FROM users",
        N as i64 + 1,
        "every user created",
    )
    .await;
    c.users.take().unwrap().terminate();
    c.start_posts().await;
    until_at_least(
        &c.dbs.orchestrator,
        "SELECT count(*) FROM sagas WHERE state = 'failed'",
        N as i64,
        "every saga parked",
    )
    .await;
    c.start_users().await;
    // The replicas start again with the built-in catalog: budgets may be tuned in place, and a
    // replayed compensation gets the catalog's budget of an hour — so replies held up by the
    // stopped replica's partitions (static membership keeps them until its session times out)
    // cannot park a saga again.
    c.orchestrator_env = vec![("APP_AUTH__OPERATORS__OPS".into(), OPERATOR.into())];
    for i in 0..2 {
        c.orchestrators[i].0.take().unwrap().terminate();
        c.start_orchestrator(i).await;
    }
    // The user service consumes again once a new saga gets through it.
    let probe = c
        .client()
        .start(
            "register_user",
            json!({"email": "probe@example.com", "name": "Probe"}),
            "",
        )
        .await
        .unwrap();
    let probe = c.client().wait_terminal(&[probe], WAIT).await.unwrap();
    assert_eq!(
        probe[0].state,
        SagaState::Completed as i32,
        "the user service is back"
    );

    // The bulk replay, paced at 10 sagas a second, started on replica 0.
    let url = format!("http://127.0.0.1:{}", c.orchestrators[0].1);
    let mut client = SagaOrchestratorClient::connect(url).await.unwrap();
    let mut request = tonic::Request::new(ReplayCompensationsRequest {
        filter: Some(SagaFilter {
            saga_type: "register_user".into(),
            ..SagaFilter::default()
        }),
        reason: "user-service is back".into(),
        dry_run: false,
        rate_per_second: 10.0,
        limit: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {OPERATOR}").parse().unwrap());
    let id = client
        .start_replay_job(request)
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // Whichever replica works it is stopped with SIGTERM a few sagas in.
    let deadline = Instant::now() + WAIT;
    let working = loop {
        let j = job(&mut client, &id).await;
        if j.processed >= 5 && !j.owner.is_empty() {
            break j;
        }
        assert!(Instant::now() < deadline, "the job never got going: {j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let owner = (0..2)
        .find(|i| working.owner.starts_with(&format!("orchestrator-{i}/")))
        .unwrap_or_else(|| panic!("owner {} is no replica of this cluster", working.owner));
    let status = c.orchestrators[owner].0.take().unwrap().terminate();
    assert!(status.is_some_and(|s| s.success()), "a clean stop: {status:?}");
    let handed_over: (i32, String) =
        sqlx::query_as("SELECT processed, state FROM operator_jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&c.dbs.orchestrator)
            .await
            .unwrap();
    assert!(
        handed_over.0 < N as i32 && handed_over.1 == "running",
        "stopped mid-way: {handed_over:?}"
    );

    // The other replica goes on from where it stopped and ends with exact counts.
    let other = 1 - owner;
    let mut client =
        SagaOrchestratorClient::connect(format!("http://127.0.0.1:{}", c.orchestrators[other].1))
            .await
            .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut owners = std::collections::BTreeSet::new();
    let done = loop {
        let j = job(&mut client, &id).await;
        if !j.owner.is_empty() {
            owners.insert(j.owner.split('/').next().unwrap_or_default().to_owned());
        }
        if j.state != JobState::Running as i32 {
            break j;
        }
        assert!(Instant::now() < deadline, "the job never ended: {j:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.state, JobState::Completed as i32);
    assert_eq!(
        owners,
        [format!("orchestrator-{other}")].into(),
        "finished by the other replica"
    );
    assert_eq!(done.processed, N as u32);
    assert_eq!(done.counts, [("replayed".to_owned(), N as u32)].into());
    let items = client
        .list_job_items(ListJobItemsRequest {
            job_id: id.clone(),
            after_seq: 0,
            page_size: 500,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        items.iter().map(|i| i.seq).collect::<Vec<_>>(),
        (1..=N as u32).collect::<Vec<_>>()
    );
    let replayed: std::collections::BTreeSet<String> = items
        .iter()
        .map(|i| i.result.as_ref().unwrap().saga_id.clone())
        .collect();
    assert_eq!(replayed, ids.iter().cloned().collect(), "each parked saga once");
    let replays = scalar(
        &c.dbs.orchestrator,
        "SELECT count(*) FROM saga_events WHERE kind = 'compensation_replayed'",
    )
    .await;
    assert_eq!(replays, N as i64, "no saga replayed twice");
    // Every replay reaches the user service, now back: every saga ends compensated.
    let client = Orchestrator::connect(&format!("http://127.0.0.1:{}", c.orchestrators[other].1), WAIT)
        .await
        .unwrap();
    let views = client.wait_terminal(&ids, WAIT).await.unwrap();
    assert!(views.iter().all(|v| v.state == SagaState::Compensated as i32));
    assert_eq!(
        scalar(&c.dbs.users, "SELECT count(*) FROM users").await,
        2,
        "only the pen name's holder and the probe"
    );
    let _ = std::fs::remove_file(&catalog);
}
