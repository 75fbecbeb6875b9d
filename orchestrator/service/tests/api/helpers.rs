//! `spawn_app()`: a real orchestrator on port 0 with its own database and topic prefix, plus a
//! participant stand-in that reads commands from Kafka and answers on the reply topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::producer::FutureRecord;
use saga_orchestrator::Settings;
use saga_orchestrator::ShiftedClock;
use saga_orchestrator::{Application, MIGRATOR};
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{
    CommandEnvelope, GetSagaRequest, GetSagaResponse, Outcome, ReplyEnvelope, SagaState, SagaView,
    StartSagaRequest, StartSagaResponse,
};
use saga_runtime::db::DatabaseSettings;
use saga_runtime::kafka::KafkaSettings;
use saga_runtime::testing::{Record, TopicReader, fresh_database, kafka_settings};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(20);
pub const OPERATOR_TOKEN: &str = "alice-operator-token-0001";
pub const READER_TOKEN: &str = "bob-reader-token-000000001";

/// Fails unless `err` is a status with `code` and exactly `message`.
#[track_caller]
pub fn assert_status(err: &tonic::Status, code: tonic::Code, message: &str) {
    assert_eq!((err.code(), err.message()), (code, message));
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    r
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// The HTTP port: metrics, health and the dashboard's API.
    pub http_addr: std::net::SocketAddr,
    pub client: SagaOrchestratorClient<Channel>,
    pub pool: PgPool,
    pub db_url: String,
    pub kafka: KafkaSettings,
    pub clock: Arc<ShiftedClock>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = saga_runtime::telemetry::init("test", saga_runtime::telemetry::LogFormat::Human);
    }
}

/// An orchestrator with every loop running.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An orchestrator whose settings the test adjusts first (e.g. relay off).
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (pool, db_url) = fresh_database(&MIGRATOR).await;
    spawn_on(pool, db_url, kafka_settings(), adjust).await
}

/// A catalog file holding `catalog` (TOML), kept while the returned directory lives.
pub fn catalog_file(catalog: &str) -> (std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sagas.toml");
    std::fs::write(&path, catalog).expect("catalog written");
    (path, dir)
}

/// An orchestrator on the saga catalog `catalog` (TOML) and settings the test adjusts.
pub async fn spawn_with_catalog(
    catalog: &str,
    adjust: impl FnOnce(&mut Settings),
) -> (TestApp, tempfile::TempDir) {
    let (path, dir) = catalog_file(catalog);
    let app = spawn_app_with(|s| {
        s.catalog_path = Some(path);
        adjust(s);
    })
    .await;
    (app, dir)
}

/// An orchestrator on an existing database and topic prefix (a restart, or a second replica).
pub async fn spawn_on(
    pool: PgPool,
    db_url: String,
    kafka: KafkaSettings,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    init_logs();
    let mut settings = Settings::default();
    settings.grpc.listen = "127.0.0.1:0".into();
    settings.http.listen = "127.0.0.1:0".into();
    settings.database = DatabaseSettings::with_url(&db_url);
    settings.kafka = kafka.clone();
    settings.timers.interval_ms = 20;
    settings.relay.poll_interval_ms = 200;
    settings
        .auth
        .operators
        .insert("alice".into(), secrecy::SecretString::from(OPERATOR_TOKEN));
    settings
        .auth
        .readers
        .insert("bob".into(), secrecy::SecretString::from(READER_TOKEN));
    if let Ok(d) = std::env::var("KDEBUG") {
        settings.kafka.client.insert("debug".into(), d);
    }
    adjust(&mut settings);
    let replies_enabled = settings.replies.enabled;
    let clock = Arc::new(ShiftedClock::default());
    let app = Application::build_with_clock(settings, clock.clone())
        .await
        .expect("orchestrator builds");
    let addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let mut assigned = app.reply_partitions();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = connect(addr).await;
    // Ready means consuming replies: wait for the consumer group to hand us partitions.
    if replies_enabled {
        tokio::time::timeout(WAIT, assigned.wait_for(|n| *n > 0))
            .await
            .expect("reply consumer joined its group in time")
            .expect("reply consumer alive");
    }
    TestApp {
        addr,
        http_addr,
        client,
        pool,
        db_url,
        kafka,
        clock,
        shutdown,
        task: Some(task),
    }
}

async fn connect(addr: std::net::SocketAddr) -> SagaOrchestratorClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SagaOrchestratorClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("orchestrator not reachable at {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl TestApp {
    pub async fn start(
        &self,
        saga_type: &str,
        payload: &str,
        key: &str,
    ) -> Result<StartSagaResponse, tonic::Status> {
        let request = StartSagaRequest {
            saga_type: saga_type.into(),
            payload_json: payload.into(),
            idempotency_key: key.into(),
        };
        self.client
            .clone()
            .start_saga(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Starts a `register_user` saga, with idempotency key `key` ("" for none).
    pub async fn start_registration(
        &self,
        email: &str,
        name: &str,
        key: &str,
    ) -> Result<StartSagaResponse, tonic::Status> {
        let payload = format!(r#"{{"email":"{email}","name":"{name}"}}"#);
        self.start("register_user", &payload, key).await
    }

    /// Starts a `register_user` saga and returns its id.
    pub async fn register(&self, email: &str) -> String {
        self.start_registration(email, "Test User", "")
            .await
            .expect("saga starts")
            .saga_id
    }

    /// Starts a `publish_post` saga by a user no participant knows (a fresh id).
    pub async fn publish(&self, title: &str, key: &str) -> Result<StartSagaResponse, tonic::Status> {
        let user = uuid::Uuid::now_v7();
        let payload = format!(r#"{{"user_id":"{user}","title":"{title}"}}"#);
        self.start("publish_post", &payload, key).await
    }

    pub async fn get(&self, id: &str) -> GetSagaResponse {
        self.client
            .clone()
            .get_saga(GetSagaRequest { saga_id: id.into() })
            .await
            .expect("GetSaga")
            .into_inner()
    }

    pub async fn view(&self, id: &str) -> SagaView {
        self.get(id).await.saga.expect("saga view")
    }

    /// Moves time forward in `jump`s (each a missed deadline or a passed backoff) until the saga
    /// reaches `state`, e.g. until a budget that never gets an answer is spent.
    pub async fn jump_until(&self, id: &str, state: SagaState, jump: chrono::TimeDelta) -> SagaView {
        for _ in 0..60 {
            if self.view(id).await.state == state as i32 {
                break;
            }
            self.clock.advance(jump);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_for(id, state).await
    }

    /// Polls until the saga has moved on from step `step` (its reply was applied). Before moving
    /// time forward, a test waits for this: a jump while the reply is still on its way passes the
    /// step's deadline first, and the saga takes another path.
    pub async fn wait_past(&self, id: &str, step: &str) -> SagaView {
        self.wait_until(id, &format!("past {step}"), |v| v.current_step != step)
            .await
            .saga
            .expect("view")
    }

    /// Polls until the saga reaches `state`.
    pub async fn wait_for(&self, id: &str, state: SagaState) -> SagaView {
        self.wait_until(id, &format!("{state:?}"), |v| v.state == state as i32)
            .await
            .saga
            .expect("view")
    }

    /// Polls GetSaga until `done` holds, failing with `what` after [`WAIT`].
    pub async fn wait_until(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&SagaView) -> bool,
    ) -> GetSagaResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.get(id).await;
            if got.saga.as_ref().is_some_and(&done) {
                return got;
            }
            assert!(Instant::now() < deadline, "saga {id}: never {what}: {got:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `n` register_user sagas parked as failed: CreateAuthor refused, DeleteUser never
    /// answered until its hour of budget is spent (time is moved, not waited out). Returns their
    /// ids and a reader of user.commands past every DeleteUser attempt sent so far.
    pub async fn parked(&self, n: usize) -> (Vec<String>, TopicReader) {
        let (users, posts) = (
            self.reader("user.commands").await,
            self.reader("post.commands").await,
        );
        let participant = self.participant();
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(self.register(&format!("parked{i}@example.com")).await);
        }
        for record in users.take(n, WAIT).await {
            participant.answer(&command(&record), Answer::Ok("{}")).await;
        }
        for record in posts.take(n, WAIT).await {
            participant
                .answer(&command(&record), Answer::Business("pen name taken"))
                .await;
        }
        for id in &ids {
            self.wait_past(id, "create_author").await;
        }
        // Each jump in time is a missed deadline or a passed backoff of every DeleteUser, until
        // the compensations' budget of an hour is spent. Then every attempt sent is read, so the
        // reader holds only what comes after.
        let mut attempts = 0;
        for id in &ids {
            let view = self
                .jump_until(id, SagaState::Failed, chrono::TimeDelta::minutes(10))
                .await;
            attempts += view.steps[0].compensation.as_ref().expect("compensation").attempt as usize;
        }
        users.take(attempts, WAIT).await;
        (ids, users)
    }

    /// How many rows `table` holds.
    pub async fn rows(&self, table: &str) -> i64 {
        self.count(&format!("SELECT count(*) FROM {table}")).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }

    pub async fn reader(&self, logical_topic: &str) -> TopicReader {
        TopicReader::new(&self.kafka, &self.kafka.topic(logical_topic)).await
    }

    pub fn participant(&self) -> Participant {
        Participant {
            producer: self.kafka.producer().expect("producer").get(),
            reply_topic: self.kafka.topic("saga.replies"),
        }
    }

    /// Stops the service and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("orchestrator task")
                .expect("orchestrator stopped cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Decodes a command record, checking the record-level contract on the way.
pub fn command(record: &Record) -> CommandEnvelope {
    let env = CommandEnvelope::decode(record.payload.as_slice()).expect("record holds a CommandEnvelope");
    assert_eq!(
        record.key.as_deref(),
        Some(env.saga_id.as_str()),
        "record key is the saga id"
    );
    env
}

/// Plays a participant service: answers commands on the reply topic.
pub struct Participant {
    producer: saga_runtime::kafka::RawProducer,
    reply_topic: String,
}

pub enum Answer<'a> {
    Ok(&'a str),
    Business(&'a str),
    Technical(&'a str),
}

impl Participant {
    pub fn reply_for(&self, cmd: &CommandEnvelope, answer: Answer<'_>) -> ReplyEnvelope {
        let (outcome, reason, payload) = match answer {
            Answer::Ok(p) => (Outcome::Success, "", p),
            Answer::Business(r) => (Outcome::BusinessFailure, r, ""),
            Answer::Technical(r) => (Outcome::TechnicalFailure, r, ""),
        };
        ReplyEnvelope {
            message_id: uuid::Uuid::now_v7().to_string(),
            saga_id: cmd.saga_id.clone(),
            saga_type: cmd.saga_type.clone(),
            step_index: cmd.step_index,
            attempt: cmd.attempt,
            phase: cmd.phase,
            command_type: cmd.command_type.clone(),
            outcome: outcome as i32,
            reason: reason.into(),
            payload_json: payload.into(),
            causation_id: cmd.message_id.clone(),
            participant: "test-participant".into(),
        }
    }

    pub async fn send(&self, reply: &ReplyEnvelope) {
        self.send_raw(&reply.saga_id, &reply.encode_to_vec()).await;
    }

    pub async fn answer(&self, cmd: &CommandEnvelope, answer: Answer<'_>) -> ReplyEnvelope {
        let reply = self.reply_for(cmd, answer);
        self.send(&reply).await;
        reply
    }

    pub async fn send_raw(&self, key: &str, bytes: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(&self.reply_topic).key(key).payload(bytes),
                Duration::from_secs(10),
            )
            .await
            .expect("reply delivered");
    }
}

pub fn json(s: &str) -> Value {
    serde_json::from_str(s).expect("valid JSON")
}
