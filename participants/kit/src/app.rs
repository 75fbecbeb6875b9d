//! Building and running a participant service: settings, pool and migrations, topics, the command
//! consumer and the reply relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use saga_runtime::consumer::{self, DeadLetters};
use saga_runtime::db::{self, DatabaseSettings};
use saga_runtime::health::Health;
use saga_runtime::http::{self, HttpSettings};
use saga_runtime::kafka::{KafkaSettings, Subscription};
use saga_runtime::outbox::{Relay, RelaySettings};
use saga_runtime::telemetry::LogFormat;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dedup::{self, Check, Checker, DedupSettings};
use crate::domain::Domain;
use crate::inbox::Participant;

/// Per-service defaults for [`ParticipantSettings`].
pub trait ServiceDefaults {
    /// Default database URL, e.g. `postgres://postgres@127.0.0.1:5432/saga_users`.
    const DATABASE_URL: &'static str;
    /// Logical command topic, e.g. `user.commands`.
    const COMMANDS_TOPIC: &'static str;
    /// Consumer group, e.g. `user-service`.
    const GROUP: &'static str;
    /// Default address of the metrics/health port, e.g. `127.0.0.1:8081`.
    const HTTP_LISTEN: &'static str;
}

/// Settings of a participant service; `R` holds the service's own business settings (`APP_RULES__…`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParticipantSettings<R> {
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub relay: RelaySettings,
    /// Logical topic commands arrive on (the Kafka prefix is added).
    pub commands_topic: String,
    /// Logical reply topic.
    pub reply_topic: String,
    /// Consumer group (the Kafka prefix is added).
    pub group: String,
    pub log_format: LogFormat,
    /// The metrics/health port.
    pub http: HttpSettings,
    /// How long inbox records are kept, checked against the orchestrator (see [`crate::dedup`]).
    pub dedup: DedupSettings,
    pub rules: R,
}

impl<R: ServiceDefaults + Default> Default for ParticipantSettings<R> {
    fn default() -> Self {
        let mut database = DatabaseSettings::with_url(R::DATABASE_URL);
        database.create_if_missing = true;
        Self {
            database,
            kafka: KafkaSettings::default(),
            relay: RelaySettings::default(),
            commands_topic: R::COMMANDS_TOPIC.into(),
            reply_topic: "saga.replies".into(),
            group: R::GROUP.into(),
            log_format: LogFormat::default(),
            http: HttpSettings::on(R::HTTP_LISTEN),
            dedup: DedupSettings::default(),
            rules: R::default(),
        }
    }
}

/// Creates the database if configured to and applies `migrator` (the `migrate` command).
pub async fn migrate<R>(
    settings: &ParticipantSettings<R>,
    migrator: &'static Migrator,
) -> anyhow::Result<()> {
    let pool = db::connect(&settings.database)
        .await
        .context("connecting to the database")?;
    migrator.run(&pool).await.context("running migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}

/// A built participant service, ready to run.
pub struct ParticipantApp<D> {
    pool: PgPool,
    http: http::HttpListener,
    kafka: KafkaSettings,
    relay: RelaySettings,
    commands_topic: String,
    commands: Subscription,
    participant: Participant<D>,
    ledger: crate::audit::Ledger<D>,
    health: Health,
    dedup: (Checker, DedupSettings),
}

impl<D: Domain> ParticipantApp<D> {
    /// Connects and migrates the service's database, creates its topics and joins its group.
    pub async fn build<R>(
        settings: &ParticipantSettings<R>,
        domain: D,
        migrator: &'static Migrator,
    ) -> anyhow::Result<Self> {
        settings.kafka.security.validate()?;
        // The dedup window first: a window the orchestrator's budgets outlast is refused before
        // anything starts.
        let checker = Checker::new(&settings.dedup, &settings.commands_topic, domain.name())?;
        match checker.check().await {
            Check::TooShort(why) => anyhow::bail!(why),
            Check::Fits(reach) => tracing::info!(
                reach_ms = reach.reach_ms,
                window_hours = settings.dedup.window_hours,
                "the dedup window outlasts the orchestrator's reach; inbox records past it will be pruned"
            ),
            Check::Unknown(why) => tracing::warn!(
                %why,
                "cannot check the dedup window against the orchestrator yet; nothing is pruned until it can"
            ),
            Check::Unconfigured => tracing::info!(
                "no dedup.orchestrator_url: inbox records are kept (the window cannot be checked)"
            ),
        }
        let pool = db::connect(&settings.database)
            .await
            .with_context(|| format!("connecting to the {} database", domain.name()))?;
        migrator
            .run(&pool)
            .await
            .with_context(|| format!("running {} migrations", domain.name()))?;
        let kafka = settings.kafka.clone();
        let commands = kafka.topic(&settings.commands_topic);
        let replies = kafka.topic(&settings.reply_topic);
        let topics = [
            commands.clone(),
            kafka.dead_letter_topic(&settings.commands_topic),
            replies.clone(),
        ];
        kafka.ensure_topics_or_warn(&topics).await;
        let health = Health::new(Duration::from_millis(kafka.unready_after_ms));
        let commands = kafka.subscribe(
            &kafka.group(&settings.group),
            &[commands],
            health.check("command consumer"),
        )?;
        let domain = Arc::new(domain);
        let participant = Participant::new(pool.clone(), domain.clone(), replies);
        let ledger = crate::audit::Ledger {
            pool: pool.clone(),
            domain,
            commands_topic: settings.commands_topic.clone(),
        };
        let http = http::bind(&settings.http)
            .await
            .context("setting up the HTTP port")?;
        Ok(Self {
            pool,
            http,
            kafka,
            relay: settings.relay.clone(),
            commands_topic: settings.commands_topic.clone(),
            commands,
            participant,
            ledger,
            health,
            dedup: (checker, settings.dedup.clone()),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Where `/metrics`, `/healthz`, `/readyz` and the audit ledger (`/audit/ledger`) are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// Command-topic partitions currently assigned to this instance (0 while joining the group).
    pub fn assigned(&self) -> watch::Receiver<usize> {
        self.commands.assigned()
    }

    /// Consumes commands and relays replies until `shutdown`; then drains its loops (bounded).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // One producer for the process (relay, dead letters, readiness), as Kafka recommends.
        let producer = self.kafka.producer()?;
        let mut tasks = JoinSet::new();
        if self.relay.enabled {
            let relay = Relay::new(self.pool.clone(), producer.clone(), self.relay.clone())
                .reporting_to(self.health.check("outbox relay"))
                .with_handoff(self.participant.handoff().clone());
            tasks.spawn(relay.run(shutdown.clone()));
        }
        let (checker, dedup) = self.dedup;
        tasks.spawn(dedup::run(self.pool.clone(), checker, dedup, shutdown.clone()));
        let probes = http::Probes {
            pool: self.pool.clone(),
            producer: producer.clone(),
            health: self.health.clone(),
            samplers: Vec::new(),
        };
        tasks.spawn(http::serve(
            self.http,
            http::router(probes, crate::audit::router(self.ledger)),
            shutdown.clone(),
        ));
        let dead = DeadLetters::new(producer, self.kafka.dead_letter_topic(&self.commands_topic));
        consumer::run(self.commands, self.participant, dead, shutdown.clone()).await;
        shutdown.cancel();
        saga_runtime::shutdown::drain(tasks, Duration::from_secs(15)).await;
        self.pool.close().await;
        Ok(())
    }
}
