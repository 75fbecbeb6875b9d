//! Group consumers: created from the settings, reporting their partition assignment and health,
//! and a [`Subscription`] that repairs itself when the brokers lose a topic or their state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::watch;

use super::producer::REPAIR_GAP;
use super::{GroupContext, KafkaSettings};
use crate::health::Check;

/// A group consumer that reports its partition assignment and its health (see [`GroupContext`]).
pub type GroupConsumer = StreamConsumer<GroupContext>;

impl KafkaSettings {
    /// A consumer in `group` (a deployed name, see [`KafkaSettings::group`]) that only commits
    /// offsets the service stored after finishing a message; it reports to `health` whether it
    /// can fetch.
    pub fn consumer(&self, group: &str, health: Check) -> Result<GroupConsumer, KafkaError> {
        self.consumer_with(group, health, Arc::new(watch::Sender::new(0)))
    }

    fn consumer_with(
        &self,
        group: &str,
        health: Check,
        assigned: Arc<watch::Sender<usize>>,
    ) -> Result<GroupConsumer, KafkaError> {
        self.consumer_config(group)
            .create_with_context(GroupContext::new(health, assigned))
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
