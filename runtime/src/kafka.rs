//! Kafka client settings shared by every service: one place that turns typed settings into
//! librdkafka configuration, so the producer is always idempotent and consumers never commit an
//! offset the service has not finished with.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A group consumer that reports its partition assignment (see [`GroupContext`]).
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Consumer context that publishes how many partitions the group currently assigns to this
/// member, so a service can tell "ready to consume" apart from "still joining the group".
pub struct GroupContext {
    assigned: watch::Sender<usize>,
}

impl GroupContext {
    fn new() -> Self {
        Self {
            assigned: watch::Sender::new(0),
        }
    }

    /// Partitions assigned right now; changes on every rebalance.
    pub fn assigned(&self) -> watch::Receiver<usize> {
        self.assigned.subscribe()
    }
}

impl ClientContext for GroupContext {}

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

    /// Client configuration: the given role defaults, then the brokers, then the operator's
    /// `client` properties and those of the role (`extra`), which win over everything.
    fn config(&self, defaults: &[(&str, &str)], extra: &BTreeMap<String, String>) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        for (k, v) in defaults {
            cfg.set(*k, *v);
        }
        cfg.set("bootstrap.servers", &self.brokers);
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

    /// An idempotent producer: acks from all in-sync replicas, broker-side de-duplication of
    /// retries, per-partition order preserved.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        self.config(
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "2"),
                ("message.timeout.ms", "30000"),
            ],
            &self.producer,
        )
        .create()
    }

    /// A consumer in `group` (a deployed name, see [`KafkaSettings::group`]) that only commits offsets the service stored after finishing a
    /// message (`enable.auto.offset.store=false`); stored offsets are committed in the background.
    pub fn consumer(&self, group: &str) -> Result<GroupConsumer, KafkaError> {
        self.config(
            &[
                ("group.id", group),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "500"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("session.timeout.ms", "10000"),
                ("enable.partition.eof", "false"),
            ],
            &self.consumer,
        )
        .create_with_context(GroupContext::new())
    }

    /// Like [`KafkaSettings::ensure_topics`], bounded to 15 s and logging instead of failing: a
    /// service starts even while the broker is away (its outbox keeps what it has to send).
    pub async fn ensure_topics_or_warn(&self, topics: &[String]) {
        match tokio::time::timeout(Duration::from_secs(15), self.ensure_topics(topics)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, brokers = %self.brokers, "could not create topics; continuing")
            }
            Err(_) => {
                tracing::warn!(brokers = %self.brokers, "Kafka did not answer topic creation; continuing")
            }
        }
    }

    /// Creates the given (already prefixed) topics if they are missing. A no-op unless
    /// `create_topics` is set.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<(), KafkaError> {
        if !self.create_topics || topics.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.config(&[], &BTreeMap::new()).create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(self.replication)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(%topic, ?code, "could not create topic");
                    });
                }
            }
        }
        Ok(())
    }
}

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
}
