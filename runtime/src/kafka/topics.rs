//! Topic creation (development and tests; in production topics come from the platform).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::{KafkaSettings, QuietContext};

impl KafkaSettings {
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
