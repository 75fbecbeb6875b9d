//! The one Kafka consumer loop every service runs.
//!
//! The loop takes every message already received (up to `max_batch`) and hands the batch to the
//! handler, which applies it — usually in one database transaction — and returns a [`Verdict`] per
//! message: `Done`, or `Poison` (it can never be processed: it goes to the dead-letter topic with
//! the reason in its headers, and the loop moves on). A transient failure (database down, write
//! conflict) means nothing was applied: the same batch is retried with backoff and no offset is
//! stored, so a crash redelivers it. Offsets are stored only after the handler finished the batch
//! and every dead-letter copy was acknowledged; stored offsets are committed in the background and
//! once more on shutdown. Under light load a batch is one message; under heavy load batches grow
//! and the per-message cost (commits, round trips) shrinks.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::kafka::{Producer, Subscription};

/// A received message, decoupled from librdkafka's borrowed type.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Headers whose values are UTF-8 (others are skipped).
    pub headers: BTreeMap<String, String>,
}

impl<'a> Incoming<'a> {
    pub fn from_message(m: &'a BorrowedMessage<'a>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| {
                        let v = std::str::from_utf8(h.value?).ok()?;
                        Some((h.key.to_owned(), v.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key(),
            payload: m.payload(),
            headers,
        }
    }
}

impl Incoming<'_> {
    /// A consumer span for this message, continuing the trace of the publish that sent it. Handlers
    /// do each message's work inside its span, so batching never mixes traces.
    pub fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "consume",
            otel.name = %format!("process {}", self.topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.destination.name = self.topic,
            messaging.kafka.partition = self.partition,
            messaging.kafka.offset = self.offset,
            saga_id = tracing::field::Empty,
        );
        crate::trace::continue_from(&span, &self.headers);
        span
    }
}

/// The batch could not be processed now (database down, write conflict): nothing was applied, and
/// the batch is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transient failure: {0}")]
pub struct Transient(pub String);

impl Transient {
    pub fn new(reason: impl std::fmt::Display) -> Self {
        Self(reason.to_string())
    }
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Processed (applied, refused by a rule, or recognised as a repeat).
    Done,
    /// Can never be processed (undecodable, not for this service, …): copied to the dead-letter
    /// topic with this reason in its headers, and skipped.
    Poison(String),
}

/// One verdict per message of a batch, in order.
pub type Verdicts = Vec<Verdict>;

/// Processes messages. Must be idempotent: a message may be delivered more than once.
pub trait Handler: Send + Sync {
    /// Handles `batch` (in order within each partition) and returns one verdict per message, in
    /// the same order. `Err` means nothing was applied and the whole batch is retried.
    fn handle(&self, batch: &[Incoming<'_>]) -> impl Future<Output = Result<Verdicts, Transient>> + Send;
}

impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle(&self, batch: &[Incoming<'_>]) -> impl Future<Output = Result<Verdicts, Transient>> + Send {
        (**self).handle(batch)
    }
}

/// Publishes poison messages to `<topic>.dlq`-style topics with the reason in the headers.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Producer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: Producer, topic: String) -> Self {
        Self { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies the message (key, payload, headers) to the dead-letter topic and adds `dlq-reason`,
    /// `dlq-source-topic`, `dlq-source-partition` and `dlq-source-offset`. Returns once acknowledged.
    pub async fn send(&self, m: &Incoming<'_>, reason: &str) -> Result<(), rdkafka::error::KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 4);
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let partition = m.partition.to_string();
        let offset = m.offset.to_string();
        for (k, v) in [
            ("dlq-reason", reason),
            ("dlq-source-topic", m.topic),
            ("dlq-source-partition", partition.as_str()),
            ("dlq-source-offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = m.key {
            record = record.key(k);
        }
        if let Some(p) = m.payload {
            record = record.payload(p);
        }
        let sent = self.producer.get().send(record, Duration::from_secs(10)).await;
        match sent {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                self.producer.recover(&self.topic, &e).await;
                Err(e)
            }
        }
    }
}

/// Runs `handler` over every message of the subscription, in batches of at most its
/// `max_batch`, until `shutdown`. A receive error is reported to the subscription's health check,
/// and a missing topic is created again ([`Subscription::repair`]).
pub async fn run<H: Handler>(
    mut subscription: Subscription,
    handler: H,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
) {
    let max_batch = subscription.max_batch();
    // Every series exists from the start, at 0 (a counter first seen at 1 hides its first event
    // from rate() and increase()).
    for topic in subscription.topics() {
        for outcome in ["handled", "dead_lettered"] {
            metrics::counter!("consumer_messages_total", "topic" => topic.clone(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("consumer_dead_lettered_total", "topic" => topic.clone()).increment(0);
        metrics::counter!("consumer_errors_total", "topic" => topic.clone()).increment(0);
    }
    // A consumer that failed fatally receives nothing, not even an error: look every second.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = check.tick() => {
                subscription.recover();
                continue;
            }
            m = subscription.consumer().recv() => m,
        };
        let first = match received {
            Ok(m) => m,
            Err(e) => {
                if !subscription.repair(&e).await {
                    tracing::debug!(error = %e, "kafka receive error");
                }
                if !pause(&shutdown, Duration::from_millis(200)).await {
                    break;
                }
                continue;
            }
        };
        subscription.fetched();
        let consumer = subscription.consumer();
        // Everything already here joins the batch; nothing is waited for.
        let mut messages = vec![first];
        while messages.len() < max_batch {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => messages.push(m),
                // Seen again (and handled) by the next receive.
                Some(Err(_)) => break,
                None => break,
            }
        }
        let batch: Vec<Incoming<'_>> = messages.iter().map(Incoming::from_message).collect();
        metrics::histogram!("consumer_batch_size").record(batch.len() as f64);
        if !process(&handler, &dead_letters, &batch, &shutdown).await {
            break; // shutting down mid-retry: leave the offsets unstored so the batch is redelivered
        }
        for message in &messages {
            if let Err(e) = consumer.store_offset_from_message(message) {
                tracing::warn!(error = %e, "could not store consumer offset; the message may be redelivered");
            }
        }
    }
    subscription.close().await;
    tracing::info!("consumer stopped");
}

/// Handles one batch until it is finished and its poison dead-lettered. False only when shutting
/// down first.
async fn process<H: Handler>(
    handler: &H,
    dlq: &DeadLetters,
    batch: &[Incoming<'_>],
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let verdicts = loop {
        match handler.handle(batch).await {
            Ok(v) => break v,
            Err(Transient(reason)) => {
                let first = &batch[0];
                metrics::counter!("consumer_errors_total", "topic" => first.topic.to_owned()).increment(1);
                tracing::warn!(topic = first.topic, partition = first.partition, offset = first.offset,
                    messages = batch.len(), error = %reason, retry_in_ms = backoff.peek().as_millis() as u64,
                    "batch processing failed; retrying");
            }
        }
        if !pause(shutdown, backoff.next_wait()).await {
            return false;
        }
    };
    for (i, m) in batch.iter().enumerate() {
        let topic = m.topic.to_owned();
        match verdicts.get(i).cloned().unwrap_or(Verdict::Done) {
            Verdict::Done => {
                metrics::counter!("consumer_messages_total", "topic" => topic, "outcome" => "handled")
                    .increment(1);
            }
            Verdict::Poison(reason) => {
                let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
                while let Err(e) = dlq.send(m, &reason).await {
                    tracing::warn!(error = %e, %reason, "could not dead-letter a message; retrying");
                    if !pause(shutdown, backoff.next_wait()).await {
                        return false;
                    }
                }
                metrics::counter!("consumer_messages_total", "topic" => topic.clone(), "outcome" => "dead_lettered")
                    .increment(1);
                metrics::counter!("consumer_dead_lettered_total", "topic" => topic).increment(1);
                tracing::warn!(topic = m.topic, partition = m.partition, offset = m.offset, %reason,
                    dead_letter_topic = dlq.topic(), "dead-lettered a message");
            }
        }
    }
    true
}

/// Waits `wait`, unless shutdown comes first (then false).
async fn pause(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}
