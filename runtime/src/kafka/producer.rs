//! The producer every service publishes with: idempotent, and healing when the brokers lose
//! state (a fatally failed producer replaced, a vanished topic created again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;

use super::{KafkaSettings, RawProducer};

impl KafkaSettings {
    /// An idempotent producer that heals (see [`Producer`]).
    pub fn producer(&self) -> Result<Producer, KafkaError> {
        Producer::new(self.clone())
    }
}

/// How often a missing topic is created again, at most.
pub(super) const REPAIR_GAP: Duration = Duration::from_secs(5);

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
        let producer = RawProducer::new(&settings.producer_config())?;
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
        match RawProducer::new(&self.settings.producer_config()) {
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
