//! Kafka client settings shared by every service: one place that turns typed settings into
//! librdkafka configuration, so the producer is always idempotent and consumers never commit an
//! offset the service has not finished with — and clients that heal when the brokers lose state:
//! a [`Producer`] that is rebuilt when librdkafka declares it fatally failed and that creates a
//! vanished topic again, and consumers ([`Subscription`]) that report whether their group is
//! joined, for `/readyz`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::statistics::Statistics;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::watch;

use crate::health::Check;

/// A group consumer that reports its partition assignment and its health (see [`GroupContext`]).
pub type GroupConsumer = StreamConsumer<GroupContext>;

pub use crate::producer::RawProducer;

/// librdkafka's log lines, into `tracing`. While a broker is away librdkafka logs every failed
/// connection attempt of every client (facility `FAIL`); those go to debug, since the health checks
/// report an outage once, when it lasts. Everything else keeps its level.
fn route_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    if facility == "FAIL" {
        tracing::debug!(target: "librdkafka", facility, "{message}");
        return;
    }
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// The context of the producers and admin clients: librdkafka's logs through [`route_log`], and
/// its error callbacks (connection failures, retried by librdkafka itself) at debug — a relay
/// that cannot publish reports that to its health check.
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        route_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

/// A client error callback, logged: credentials or certificates that the brokers refuse are a
/// configuration problem an operator must see (warned at every reconnect, so at most every few
/// seconds); the rest — connections lost and retried — is debug, reported by the health checks.
fn log_client_error(error: &KafkaError, reason: &str) {
    let refused = error.rdkafka_error_code().is_some_and(|c| {
        matches!(
            c,
            RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL
        )
    });
    if refused {
        tracing::warn!(%error, reason, "the Kafka brokers refused this client's credentials or certificate");
    } else {
        tracing::debug!(%error, reason, "kafka client error");
    }
}

/// Consumer context that publishes how many partitions the group currently assigns to this
/// member, so a service can tell "ready to consume" apart from "still joining the group", and
/// reports to a health [`Check`] whether the member can fetch: librdkafka's periodic statistics
/// say whether the group coordinator is up; its error callback says when a connection failed.
pub struct GroupContext {
    /// Shared with the consumers that replace this one (see [`Subscription::recover`]), so a
    /// watcher keeps following the member's assignment.
    assigned: Arc<watch::Sender<usize>>,
    health: Check,
    /// librdkafka met brokers of another cluster than the one it joined: see
    /// [`Subscription::recover`].
    cluster_changed: AtomicBool,
}

impl GroupContext {
    fn new(health: Check, assigned: Arc<watch::Sender<usize>>) -> Self {
        Self {
            assigned,
            health,
            cluster_changed: AtomicBool::new(false),
        }
    }

    /// Partitions assigned right now; changes on every rebalance.
    pub fn assigned(&self) -> watch::Receiver<usize> {
        self.assigned.subscribe()
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "CLUSTERID" {
            self.cluster_changed.store(true, Ordering::Relaxed);
        }
        route_log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        // How far this member is behind each of its partitions (librdkafka: -1 until known); 0
        // for a partition it no longer consumes, so a partition that moved to another member
        // does not keep its last lag here.
        for topic in statistics.topics.values() {
            for p in topic.partitions.values().filter(|p| p.partition >= 0) {
                let lag = if p.desired { p.consumer_lag } else { 0 };
                if lag >= 0 {
                    metrics::gauge!("kafka_consumer_lag", "topic" => topic.topic.clone(),
                        "partition" => p.partition.to_string())
                    .set(lag as f64);
                }
            }
        }
        match statistics.cgrp {
            Some(group) if group.state == "up" => self.health.ok(),
            Some(group) => self
                .health
                .failing(format_args!("consumer group coordinator is {}", group.state)),
            None => {}
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries by itself; the health check (and /readyz) says when it lasts.
        log_client_error(&error, reason);
        self.health.failing(format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(
                    partitions = partitions.count(),
                    "consumer group assigned partitions"
                );
                self.assigned.send_replace(partitions.count());
            }
            Rebalance::Revoke(_) => {
                self.assigned.send_replace(0);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
    }
}

/// Where the brokers are and how topics are named.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub brokers: String,
    /// Prepended to every topic name (lets several deployments or tests share one cluster).
    pub topic_prefix: String,
    /// Create missing topics at start-up (dev and tests; in production topics come from the platform).
    pub create_topics: bool,
    /// Partitions for topics this service creates.
    pub partitions: i32,
    /// Replication factor for topics this service creates.
    pub replication: i32,
    /// Most messages a consumer hands to its handler at once (one transaction under load).
    pub max_batch: usize,
    /// Extra librdkafka properties applied to every client, e.g. `fetch.wait.max.ms`. Underscores
    /// are read as dots (`fetch_wait_max_ms`), since environment variable names cannot hold dots and
    /// no librdkafka property contains an underscore. Values may be written as numbers or booleans.
    #[serde(deserialize_with = "scalar_map")]
    pub client: BTreeMap<String, String>,
    /// Like `client`, for consumers only (e.g. `fetch_wait_max_ms`).
    #[serde(deserialize_with = "scalar_map")]
    pub consumer: BTreeMap<String, String>,
    /// Like `client`, for producers only (e.g. `linger_ms`).
    #[serde(deserialize_with = "scalar_map")]
    pub producer: BTreeMap<String, String>,
    /// How clients authenticate to the brokers and protect the connection.
    pub security: KafkaSecurity,
    /// `/readyz` turns unready when the relay cannot publish, or a consumer cannot fetch, for
    /// this long.
    pub unready_after_ms: u64,
    /// Static group membership (`group.instance.id`): a name unique to this replica that
    /// survives its restarts — in Kubernetes the pod's name (`POD_NAME`). A replica that restarts
    /// (SIGKILL, OOM kill) then takes its partitions back at once instead of waiting for the group
    /// to notice it died and rebalance. Two running replicas must never share one.
    pub instance_id: Option<String>,
}

/// `security.protocol`: plain text stays the local default; production uses `sasl_ssl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// `sasl.mechanism`: SCRAM (what Strimzi's `KafkaUser` issues) or PLAIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// Broker authentication and transport security (`APP_KAFKA__SECURITY__…`). The password is a
/// secret: it is never printed, and in a cluster it comes from a Secret.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// Required with `sasl_plaintext` / `sasl_ssl`.
    pub sasl_mechanism: Option<SaslMechanism>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// PEM file of the CA that signed the brokers' certificates (`ssl.ca.location`); without
    /// it, TLS trusts the system's CA store.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Settings that cannot work together, found before any client is created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    #[error("kafka.security.protocol = {0:?} needs kafka.security.{1} (APP_KAFKA__SECURITY__{2})")]
    Missing(SecurityProtocol, &'static str, &'static str),
    #[error("kafka.security.{0} is set, but protocol {1:?} does not use it")]
    Unused(&'static str, SecurityProtocol),
    #[error("kafka.security.ca_file {0} cannot be read: {1}")]
    CaFile(String, String),
}

impl KafkaSecurity {
    /// Checks that the settings are complete and consistent, and that the CA file is readable.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let p = self.protocol;
        if p.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                return Err(SecurityError::Missing(p, "sasl_mechanism", "SASL_MECHANISM"));
            }
            if self.username.as_deref().is_none_or(str::is_empty) {
                return Err(SecurityError::Missing(p, "username", "USERNAME"));
            }
            if self
                .password
                .as_ref()
                .is_none_or(|pw| pw.expose_secret().is_empty())
            {
                return Err(SecurityError::Missing(p, "password", "PASSWORD"));
            }
        } else {
            for (name, set) in [
                ("sasl_mechanism", self.sasl_mechanism.is_some()),
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
            ] {
                if set {
                    return Err(SecurityError::Unused(name, p));
                }
            }
        }
        match &self.ca_file {
            Some(_) if !p.uses_tls() => Err(SecurityError::Unused("ca_file", p)),
            Some(path) => std::fs::metadata(path)
                .map(|_| ())
                .map_err(|e| SecurityError::CaFile(path.display().to_string(), e.to_string())),
            None => Ok(()),
        }
    }

    /// The librdkafka properties for these settings.
    fn apply(&self, cfg: &mut ClientConfig) {
        cfg.set("security.protocol", self.protocol.librdkafka());
        if let Some(m) = self.sasl_mechanism {
            cfg.set("sasl.mechanism", m.librdkafka());
        }
        if let Some(u) = &self.username {
            cfg.set("sasl.username", u);
        }
        if let Some(pw) = &self.password {
            cfg.set("sasl.password", pw.expose_secret());
        }
        if let Some(ca) = &self.ca_file {
            cfg.set("ssl.ca.location", ca.display().to_string());
        }
    }
}

/// A configuration value that librdkafka wants as text, whatever type the config source gave it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            create_topics: true,
            partitions: 8,
            replication: 1,
            max_batch: 256,
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            security: KafkaSecurity::default(),
            unready_after_ms: 15_000,
            instance_id: None,
        }
    }
}

impl KafkaSettings {
    /// The deployed name of a logical topic.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.topic_prefix, name)
    }

    /// The deployed name of a consumer group: prefixed like topics, so deployments sharing a
    /// cluster never join each other's groups.
    pub fn group(&self, name: &str) -> String {
        format!("{}{}", self.topic_prefix, name)
    }

    /// The dead-letter topic that goes with a logical topic.
    pub fn dead_letter_topic(&self, name: &str) -> String {
        self.topic(&format!("{name}.dlq"))
    }

    /// Client configuration: the given role defaults, then the brokers and security, then the operator's
    /// `client` properties and those of the role (`extra`), which win over everything.
    fn config(&self, defaults: &[(&str, &str)], extra: &BTreeMap<String, String>) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        cfg.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut cfg);
        for (k, v) in self.client.iter().chain(extra) {
            cfg.set(k.replace('_', "."), v);
        }
        cfg
    }

    /// Configuration for a plain consumer (no offset commits), e.g. a test reader or a tool.
    pub fn reader_config(&self, group: &str) -> ClientConfig {
        self.config(
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
            &self.consumer,
        )
    }

    /// An idempotent producer that heals (see [`Producer`]).
    pub fn producer(&self) -> Result<Producer, KafkaError> {
        Producer::new(self.clone())
    }

    /// An idempotent producer: acks from all in-sync replicas, broker-side de-duplication of
    /// retries, per-partition order preserved.
    fn raw_producer(&self) -> Result<RawProducer, KafkaError> {
        let config = self.config(
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Send at once: every saga step is a round trip through the broker, and a wait
                // here is paid four times by a two-step saga (measured: p50 at 5 sagas/s 28 ms
                // with 2 ms, 20 ms with 0). Under load, messages queued while a request is in
                // flight still leave together.
                ("linger.ms", "0"),
                ("message.timeout.ms", "30000"),
            ],
            &self.producer,
        );
        RawProducer::new(&config)
    }

    /// A consumer in `group` (a deployed name, see [`KafkaSettings::group`]) that only commits offsets the service stored after finishing a
    /// message (`enable.auto.offset.store=false`); stored offsets are committed in the background.
    /// It reports to `health` whether it can fetch.
    pub fn consumer(&self, group: &str, health: Check) -> Result<GroupConsumer, KafkaError> {
        self.consumer_with(group, health, Arc::new(watch::Sender::new(0)))
    }

    fn consumer_with(
        &self,
        group: &str,
        health: Check,
        assigned: Arc<watch::Sender<usize>>,
    ) -> Result<GroupConsumer, KafkaError> {
        let mut defaults = vec![
            ("group.id", group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "500"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // How often the group's state reaches the health check.
            ("statistics.interval.ms", "5000"),
        ];
        // The classic protocol's session is the client's to set; under Kafka 4's consumer
        // protocol (`group.protocol=consumer`) the broker owns it, and setting it is an error.
        if !self.uses_consumer_protocol() {
            defaults.push(("session.timeout.ms", "10000"));
        }
        if let Some(id) = self.instance_id.as_deref().filter(|id| !id.is_empty()) {
            defaults.push(("group.instance.id", id));
        }
        self.config(&defaults, &self.consumer)
            .create_with_context(GroupContext::new(health, assigned))
    }

    /// Whether consumers use Kafka 4's consumer group protocol (KIP-848).
    fn uses_consumer_protocol(&self) -> bool {
        self.client
            .iter()
            .chain(&self.consumer)
            .any(|(k, v)| k.replace('_', ".") == "group.protocol" && v.eq_ignore_ascii_case("consumer"))
    }

    /// A consumer of `group` subscribed to `topics` (deployed names), reporting to `health`.
    pub fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        health: Check,
    ) -> Result<Subscription, KafkaError> {
        let consumer = self.consumer(group, health)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        Ok(Subscription {
            consumer,
            group: group.to_owned(),
            topics: topics.to_vec(),
            settings: self.clone(),
            last_repair: None,
            last_rebuild: None,
        })
    }

    /// Like [`KafkaSettings::ensure_topics`], bounded to 15 s and logging instead of failing: a
    /// service starts even while the broker is away (its outbox keeps what it has to send).
    pub async fn ensure_topics_or_warn(&self, topics: &[String]) {
        match tokio::time::timeout(Duration::from_secs(15), self.ensure_topics(topics)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, brokers = %self.brokers, "could not create topics; continuing")
            }
            Err(_) => {
                tracing::warn!(brokers = %self.brokers, "Kafka did not answer topic creation; continuing")
            }
        }
    }

    /// Creates the given (already prefixed) topics if they are missing; returns those it created.
    /// A no-op unless `create_topics` is set.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<Vec<String>, KafkaError> {
        if !self.create_topics || topics.is_empty() {
            return Ok(Vec::new());
        }
        let admin: AdminClient<QuietContext> = self
            .config(&[], &BTreeMap::new())
            .create_with_context(QuietContext)?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(self.replication)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let mut created = Vec::new();
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(topic) => created.push(topic),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(%topic, ?code, "could not create topic");
                    });
                }
            }
        }
        Ok(created)
    }
}

/// How often a missing topic is created again, at most.
const REPAIR_GAP: Duration = Duration::from_secs(5);

/// An idempotent producer that heals. When the brokers lose their state (a broker restarted with
/// an empty log, a topic deleted), librdkafka cannot recover by itself: an idempotent producer
/// whose producer id the cluster forgot is in a *fatal* state and fails every record from then
/// on, and records for a topic that no longer exists fail until someone creates it. After a
/// failed delivery, [`Producer::recover`] replaces a fatally failed producer with a new one and
/// creates the record's topic again (when `create_topics` is on), each at most every few seconds
/// and logged once. Records still in the old producer fail and are retried by their owner.
/// Cheap to clone; clones share the current producer.
#[derive(Clone)]
pub struct Producer {
    settings: Arc<KafkaSettings>,
    current: Arc<Mutex<RawProducer>>,
    /// When each topic was last created again.
    repaired: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Producer {
    fn new(settings: KafkaSettings) -> Result<Self, KafkaError> {
        let producer = settings.raw_producer()?;
        Ok(Self {
            settings: Arc::new(settings),
            current: Arc::new(Mutex::new(producer)),
            repaired: Arc::default(),
        })
    }

    /// The producer to send with now.
    pub fn get(&self) -> RawProducer {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Repairs what a failed delivery of a record for `topic` shows to be broken: a fatally
    /// failed producer is replaced, a missing topic created again.
    pub async fn recover(&self, topic: &str, error: &KafkaError) {
        self.replace_if_fatal();
        if error.rdkafka_error_code().is_some_and(|c| {
            matches!(
                c,
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            )
        }) {
            self.recreate(topic).await;
        }
    }

    /// Replaces the producer if librdkafka declared it fatally failed. True if it did.
    pub fn replace_if_fatal(&self) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some((code, reason)) = current.client().fatal_error() else {
            return false;
        };
        match self.settings.raw_producer() {
            Ok(fresh) => {
                tracing::warn!(?code, %reason, "the Kafka producer failed fatally; replaced it with a new one");
                *current = fresh;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, ?code, %reason, "the Kafka producer failed fatally and cannot be rebuilt");
                false
            }
        }
    }

    /// Creates `topic` again if it is missing, at most every few seconds.
    async fn recreate(&self, topic: &str) {
        self.ensure(std::iter::once(topic)).await;
    }

    /// Creates whichever of `topics` the brokers lack (when `create_topics` is on), looking at
    /// each at most every few seconds; each topic created is logged. For a relay whose records go
    /// unacknowledged: a deleted topic fails deliveries only after librdkafka's metadata
    /// propagation timeout (30 s), so the relay asks sooner.
    pub async fn ensure<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        if !self.settings.create_topics {
            return;
        }
        let mut due: Vec<String> = Vec::new();
        {
            let mut repaired = self.repaired.lock().unwrap_or_else(|e| e.into_inner());
            for topic in topics {
                if repaired.get(topic).is_none_or(|at| at.elapsed() >= REPAIR_GAP) {
                    repaired.insert(topic.to_owned(), Instant::now());
                    due.push(topic.to_owned());
                }
            }
        }
        if due.is_empty() {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(15), self.settings.ensure_topics(&due)).await {
            Ok(Ok(created)) => {
                for topic in created {
                    tracing::warn!(%topic, "the brokers had lost a topic this service writes to; created it again");
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not check the topics"),
            Err(_) => tracing::debug!("the brokers did not answer a topic check"),
        }
    }
}

/// A group consumer and the topics it follows. When the brokers report a subscribed topic
/// missing (deleted, or lost with the broker's log), [`Subscription::repair`] creates the topics
/// again (when `create_topics` is on) and subscribes anew, so the consumer picks them up at once
/// instead of at the next metadata refresh.
pub struct Subscription {
    consumer: GroupConsumer,
    group: String,
    topics: Vec<String>,
    settings: KafkaSettings,
    last_repair: Option<Instant>,
    last_rebuild: Option<Instant>,
}

impl Subscription {
    pub fn consumer(&self) -> &GroupConsumer {
        &self.consumer
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Partitions assigned to this member right now (0 while joining the group).
    pub fn assigned(&self) -> watch::Receiver<usize> {
        self.consumer.context().assigned()
    }

    /// Most messages handed to a handler at once.
    pub fn max_batch(&self) -> usize {
        self.settings.max_batch.max(1)
    }

    /// Reacts to a receive error: a missing topic is created again and subscribed anew (at most
    /// every few seconds); anything else is reported to the health check. True if it repaired.
    pub async fn repair(&mut self, error: &KafkaError) -> bool {
        self.consumer.context().health.failing(error);
        let missing = error.rdkafka_error_code().is_some_and(|c| {
            matches!(
                c,
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            )
        });
        if !missing || self.last_repair.is_some_and(|t| t.elapsed() < REPAIR_GAP) {
            return false;
        }
        self.last_repair = Some(Instant::now());
        tracing::warn!(topics = ?self.topics, %error, "a subscribed topic is missing; creating it again and resubscribing");
        self.settings.ensure_topics_or_warn(&self.topics).await;
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.consumer.subscribe(&names) {
            tracing::warn!(error = %e, "could not subscribe again");
        }
        true
    }

    /// Replaces a consumer that cannot go on with a new one subscribed to the same topics, at
    /// most every few seconds. True if it replaced it. Two cases:
    ///
    /// - librdkafka declared it fatally failed — e.g. a static member told its instance id is
    ///   still held by its predecessor (`UNRELEASED_INSTANCE_ID`, Kafka 4's group protocol) or
    ///   fenced by a replica sharing the id (`FENCED_INSTANCE_ID`). A fatal consumer receives
    ///   nothing for ever.
    /// - The brokers now belong to another cluster (librdkafka's `CLUSTERID` warning): a broker
    ///   that came back with an empty log is formatted anew. Everything the client knew is stale
    ///   — topic ids, fetch positions in logs that no longer exist, its group generation — and
    ///   librdkafka does not start over by itself: a member that rejoined before another service
    ///   created its topic again stayed with no partitions and received nothing for minutes (one
    ///   run in five of the broker-wipe test on a loaded machine). A new consumer starts from the
    ///   new cluster's state: no committed offsets, so the beginning of the new logs.
    pub fn recover(&mut self) -> bool {
        let reason = if let Some((_, reason)) = self.consumer.client().fatal_error() {
            format!("the consumer failed fatally: {reason}")
        } else if self.consumer.context().cluster_changed.load(Ordering::Relaxed) {
            "the brokers belong to another cluster than the one this consumer joined (a broker lost its state)".to_owned()
        } else {
            return false;
        };
        let health = self.consumer.context().health.clone();
        health.failing(&reason);
        if self.last_rebuild.is_some_and(|t| t.elapsed() < REPAIR_GAP) {
            return false;
        }
        self.last_rebuild = Some(Instant::now());
        let assigned = self.consumer.context().assigned.clone();
        assigned.send_replace(0);
        let fresh = self
            .settings
            .consumer_with(&self.group, health, assigned)
            .and_then(|c| {
                let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                c.subscribe(&names).map(|()| c)
            });
        match fresh {
            Ok(consumer) => {
                tracing::warn!(%reason, "replaced the Kafka consumer with a new one");
                // The old one may block leaving its group: drop it off the async threads.
                let failed = std::mem::replace(&mut self.consumer, consumer);
                let _ = std::thread::Builder::new()
                    .name("kafka-consumer-drop".into())
                    .spawn(move || drop(failed));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, %reason, "the Kafka consumer cannot be rebuilt");
                false
            }
        }
    }

    /// The consumer received a message: it can fetch.
    pub fn fetched(&self) {
        self.consumer.context().health.ok();
    }

    /// Commits the stored offsets and leaves the group — on a thread of its own, since both block
    /// until the coordinator answers — and waits for that at most [`CLOSE_WAIT`]: with the brokers
    /// away, a service must still stop promptly (the thread is detached, so neither the runtime
    /// nor the process waits for it). Offsets not committed are only redelivered, and the inbox
    /// answers a redelivered command from its record.
    pub async fn close(self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-consumer-close".into())
            .spawn(move || {
                if let Err(e) = self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                    tracing::debug!(error = %e, "final offset commit failed (nothing stored, or rebalancing)");
                }
                drop(self.consumer); // leaves the group
                let _ = done.send(());
            });
        if spawned.is_err() || tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
            tracing::warn!(
                "the consumer could not commit its offsets and leave its group within {CLOSE_WAIT:?}; \
                 the last messages will be delivered again"
            );
        }
    }
}

/// The longest a consumer waits for the brokers when it stops.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_get_the_prefix() {
        let s = KafkaSettings {
            topic_prefix: "dev.".into(),
            ..KafkaSettings::default()
        };
        assert_eq!(s.topic("saga.replies"), "dev.saga.replies");
        assert_eq!(s.dead_letter_topic("user.commands"), "dev.user.commands.dlq");
        assert_eq!(s.group("saga-orchestrator"), "dev.saga-orchestrator");
    }

    #[test]
    fn extra_client_properties_override_defaults() {
        let mut s = KafkaSettings::default();
        s.client.insert("linger.ms".into(), "0".into());
        s.client.insert("fetch_wait_max_ms".into(), "10".into());
        s.producer.insert("linger_ms".into(), "5".into());
        let cfg = s.config(&[("linger.ms", "2"), ("acks", "all")], &s.producer);
        assert_eq!(cfg.get("linger.ms"), Some("5"), "role properties win");
        assert_eq!(cfg.get("acks"), Some("all"));
        assert_eq!(cfg.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(cfg.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    fn sasl_ssl(ca: &std::path::Path) -> KafkaSettings {
        KafkaSettings {
            security: KafkaSecurity {
                protocol: SecurityProtocol::SaslSsl,
                sasl_mechanism: Some(SaslMechanism::ScramSha512),
                username: Some("orchestrator".into()),
                password: Some(SecretString::from("s3cret")),
                ca_file: Some(ca.to_path_buf()),
            },
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn sasl_ssl_settings_reach_librdkafka_and_the_password_is_never_printed() {
        let pki = crate::testing::TestPki::generate();
        let ca = pki.ca.clone();
        let s = sasl_ssl(&ca);
        assert_eq!(s.security.validate(), Ok(()));
        for cfg in [
            s.reader_config("g"),
            s.config(&[], &s.producer),
            s.config(&[("group.id", "g")], &s.consumer),
        ] {
            assert_eq!(cfg.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(cfg.get("sasl.username"), Some("orchestrator"));
            assert_eq!(cfg.get("sasl.password"), Some("s3cret"));
            assert_eq!(cfg.get("ssl.ca.location"), ca.to_str());
        }
        assert!(!format!("{s:?}").contains("s3cret"), "{s:?}");
        // librdkafka accepts them: it was built with TLS and SASL (SCRAM needs OpenSSL). Creating
        // a client does not connect, so no SASL-capable broker is needed for this.
        let producer = s.producer();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn plain_text_is_the_default_and_sets_no_credentials() {
        let s = KafkaSettings::default();
        assert_eq!(s.security.validate(), Ok(()));
        let cfg = s.reader_config("g");
        assert_eq!(cfg.get("security.protocol"), Some("plaintext"));
        assert_eq!(cfg.get("sasl.username"), None);
        assert_eq!(cfg.get("ssl.ca.location"), None);
    }

    #[test]
    fn incomplete_or_contradictory_security_is_refused_with_the_setting_named() {
        let pki = crate::testing::TestPki::generate();
        let ca = pki.ca.clone();
        let mut s = sasl_ssl(&ca).security;
        s.password = None;
        assert_eq!(
            s.validate().map_err(|e| e.to_string()),
            Err("kafka.security.protocol = SaslSsl needs kafka.security.password (APP_KAFKA__SECURITY__PASSWORD)".into())
        );
        let mut s = sasl_ssl(&ca).security;
        s.sasl_mechanism = None;
        assert!(matches!(
            s.validate(),
            Err(SecurityError::Missing(_, "sasl_mechanism", _))
        ));
        let mut s = sasl_ssl(&ca).security;
        s.protocol = SecurityProtocol::Plaintext;
        assert!(matches!(
            s.validate(),
            Err(SecurityError::Unused("sasl_mechanism", _))
        ));
        let s = KafkaSecurity {
            ca_file: Some(ca.clone()),
            ..KafkaSecurity::default()
        };
        assert!(matches!(s.validate(), Err(SecurityError::Unused("ca_file", _))));
        let s = KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..KafkaSecurity::default()
        };
        assert!(matches!(s.validate(), Err(SecurityError::CaFile(..))));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's signature
    fn security_settings_are_read_from_app_kafka_security_variables() {
        #[derive(Deserialize)]
        struct Service {
            kafka: KafkaSettings,
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("APP_KAFKA__SECURITY__PROTOCOL", "sasl_ssl");
            jail.set_env("APP_KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-256");
            jail.set_env("APP_KAFKA__SECURITY__USERNAME", "user-service");
            jail.set_env("APP_KAFKA__SECURITY__PASSWORD", "pw");
            let s: Service = crate::config::load("absent.toml").map_err(|e| e.to_string())?;
            let sec = s.kafka.security;
            assert_eq!(sec.protocol, SecurityProtocol::SaslSsl);
            assert_eq!(sec.sasl_mechanism, Some(SaslMechanism::ScramSha256));
            assert_eq!(sec.username.as_deref(), Some("user-service"));
            assert_eq!(
                sec.password.map(|p| p.expose_secret().to_owned()).as_deref(),
                Some("pw")
            );
            jail.set_env("APP_KAFKA__SECURITY__PROTOCOL", "SASL-SSL");
            let bad = crate::config::load::<Service>("absent.toml")
                .err()
                .map(|e| e.to_string());
            assert!(bad.as_deref().is_some_and(|e| e.contains("SASL-SSL")), "{bad:?}");
            Ok(())
        });
    }
}
