//! Building and running the orchestrator: `Application::build(settings)` connects, migrates and
//! binds; `run_until_stopped(shutdown)` serves gRPC and runs the relay, reply consumer and timers
//! until the token fires. Tests use the same builder with port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use saga_proto::v1::saga_orchestrator_server::SagaOrchestratorServer;
use saga_runtime::consumer::{self, DeadLetters};
use saga_runtime::health::Health;
use saga_runtime::kafka::Subscription;
use saga_runtime::outbox::Relay;
use saga_runtime::{db, http};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;

use crate::api::Api;
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::coordinator::replies::ReplyHandler;
use crate::coordinator::{Coordinator, StartWriter, timers};
use crate::dashboard::{self, Dashboard};
use crate::grpc::SagaApi;
use crate::jobs::{self, JobRunner};
use crate::settings::Settings;
use crate::watch::Changes;
use crate::wire::Routing;

/// The whole program: logs and span export, the orchestrator until SIGINT/SIGTERM, then a bounded
/// flush of the spans still buffered.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let telemetry = saga_runtime::telemetry::init("orchestrator", settings.log_format);
    let result = async {
        let app = Application::build(settings).await?;
        tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "orchestrator ready");
        app.run_until_stopped(saga_runtime::shutdown::on_signals()).await
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "orchestrator stopped with an error");
    }
    telemetry.shutdown(Duration::from_secs(5));
    result
}

/// `orchestrator migrate`: create the database if configured to, apply the migrations, exit (the
/// Kubernetes migration Job runs this before the Deployment rolls out).
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let _telemetry = saga_runtime::telemetry::init("orchestrator", settings.log_format);
    migrated_pool(&settings).await?;
    tracing::info!("orchestrator migrations applied");
    Ok(())
}

/// A pool on the orchestrator database, its migrations applied.
async fn migrated_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = db::connect(&settings.database)
        .await
        .context("connecting to the orchestrator database")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("running orchestrator migrations")?;
    Ok(pool)
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/orchestrator");

pub struct Application {
    settings: Settings,
    grpc_tls: Option<ServerTlsConfig>,
    auth: Arc<Authenticator>,
    listener: TcpListener,
    http: http::HttpListener,
    pool: PgPool,
    coordinator: Arc<Coordinator>,
    starts: StartWriter,
    replies: Option<Subscription>,
    health: Health,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let auth = Arc::new(Authenticator::new(&settings.auth)?);
        settings.kafka.security.validate()?;
        let grpc_tls = settings.grpc.tls.server_config()?;
        if let Some(tls) = &grpc_tls {
            // Builds the TLS acceptor once now, so a key that does not match its certificate or
            // an unparsable client CA stops start-up instead of the first handshake.
            tonic::transport::Server::builder()
                .tls_config(tls.clone())
                .context("gRPC TLS")?;
        }
        let catalog = match &settings.catalog_path {
            Some(path) => Catalog::from_file(path)?,
            None => Catalog::builtin()?,
        };
        settings.retention.validate(&catalog)?;
        settings.admission.validate(&catalog)?;
        let pool = migrated_pool(&settings).await?;

        let kafka = &settings.kafka;
        let mut topics: Vec<String> = catalog
            .participant_topics()
            .into_iter()
            .map(|t| kafka.topic(t))
            .collect();
        topics.push(kafka.topic(&settings.replies.topic));
        topics.push(kafka.dead_letter_topic(&settings.replies.topic));
        kafka.ensure_topics_or_warn(&topics).await;

        crate::coordinator::metrics::register(&catalog);
        let routing = Routing {
            topic_prefix: kafka.topic_prefix.clone(),
            reply_topic: kafka.topic(&settings.replies.topic),
        };
        let (coordinator, starts) = Coordinator::new(
            pool.clone(),
            Arc::new(catalog),
            routing,
            clock,
            settings.grpc.max_payload_bytes,
            settings.admission.clone(),
        );
        let coordinator = Arc::new(coordinator);
        let health = Health::new(Duration::from_millis(kafka.unready_after_ms));
        let replies = if settings.replies.enabled {
            Some(kafka.subscribe(
                &kafka.group(&settings.replies.group),
                &[kafka.topic(&settings.replies.topic)],
                health.check("reply consumer"),
            )?)
        } else {
            None
        };
        let listener = TcpListener::bind(&settings.grpc.listen)
            .await
            .with_context(|| format!("binding the gRPC address {}", settings.grpc.listen))?;
        let http = http::bind(&settings.http)
            .await
            .context("setting up the HTTP port")?;
        Ok(Self {
            settings,
            grpc_tls,
            auth,
            listener,
            http,
            pool,
            coordinator,
            starts,
            replies,
            health,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// Reply-topic partitions assigned to this replica (0 while joining the consumer group, or
    /// when the reply consumer is disabled).
    pub fn reply_partitions(&self) -> watch::Receiver<usize> {
        match &self.replies {
            Some(s) => s.assigned(),
            None => watch::Sender::new(0).subscribe(),
        }
    }

    /// Serves until `shutdown` fires, then drains the background loops (bounded).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Taken apart field by field (moves out of `self`): each piece goes to the task that owns it.
        let settings = self.settings;
        let (pool, coordinator, auth, health) = (self.pool, self.coordinator, self.auth, self.health);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.grpc_tls {
            server = server.tls_config(tls).context("gRPC TLS")?;
        }
        let kafka = &settings.kafka;
        // One producer for the process (relay, dead letters, readiness), as Kafka recommends.
        let producer = kafka.producer()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(self.starts.run(coordinator.clone(), shutdown.clone()));
        if settings.relay.enabled {
            let relay = Relay::new(pool.clone(), producer.clone(), settings.relay.clone())
                .reporting_to(health.check("outbox relay"))
                .with_handoff(coordinator.handoff().clone());
            tasks.spawn(relay.run(shutdown.clone()));
        }
        if let Some(subscription) = self.replies {
            let dead = DeadLetters::new(producer.clone(), kafka.dead_letter_topic(&settings.replies.topic));
            let handler = ReplyHandler::new(coordinator.clone());
            tasks.spawn(consumer::run(subscription, handler, dead, shutdown.clone()));
        }
        if settings.timers.enabled {
            tasks.spawn(timers::run(
                coordinator.clone(),
                settings.timers.clone(),
                shutdown.clone(),
            ));
        }

        if settings.retention.enabled {
            tasks.spawn(crate::retention::run(
                coordinator.clone(),
                settings.retention.clone(),
                shutdown.clone(),
            ));
        }

        let retention = settings.retention.enabled.then(|| settings.retention.clone());
        let auditor =
            Arc::new(Auditor::new(coordinator.clone(), settings.audit.clone())?.with_retention(retention));
        if settings.audit.interval_secs > 0 {
            tasks.spawn(auditor.clone().run_periodically(shutdown.clone()));
        }

        let changes = Changes::new();
        tasks.spawn(changes.clone().run(pool.clone(), shutdown.clone()));
        let sagas = pool.clone();
        let probes = http::Probes {
            pool: pool.clone(),
            producer,
            health,
            samplers: vec![Arc::new(move || {
                Box::pin(crate::store::sample_gauges(sagas.clone()))
            })],
        };
        let wake = jobs::Wake::default();
        if settings.jobs.enabled {
            let replica = settings.kafka.instance_id.as_deref().filter(|id| !id.is_empty());
            let runner = JobRunner::new(coordinator.clone(), settings.jobs.clone(), replica, wake.clone());
            tasks.spawn(runner.run(shutdown.clone()));
        }
        let api = Api::new(coordinator, auth, settings.operator.clone(), wake);
        let board = dashboard::router(Dashboard {
            api: api.clone(),
            changes: changes.clone(),
            shutdown: shutdown.clone(),
            auditor: auditor.clone(),
        });
        tasks.spawn(http::serve(
            self.http,
            http::router(probes, board),
            shutdown.clone(),
        ));
        let api = SagaApi::new(api, changes, shutdown.clone()).with_auditor(auditor);

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<SagaOrchestratorServer<SagaApi>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(saga_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let served = server
            .layer(tower::util::MapResponseLayer::new(
                crate::grpc::message_too_large_is_resource_exhausted::<tonic::body::Body>,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(SagaOrchestratorServer::new(api))
            .serve_with_incoming_shutdown(
                // TCP_NODELAY on every accepted connection (tonic sets it only on listeners it
                // binds itself): without it a response written in more than one piece waits for
                // the client's delayed ACK — 40 ms per ListSagas of three sagas (scripts/scale.sh).
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            )
            .await;
        shutdown.cancel();
        saga_runtime::shutdown::drain(tasks, Duration::from_secs(15)).await;
        pool.close().await;
        served.context("gRPC server failed")
    }
}
