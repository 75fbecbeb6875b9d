//! The librdkafka client contexts: its log lines and error callbacks routed into `tracing`, the
//! delivery reports of [`super::RawProducer`] handed to their senders, and the group consumer's
//! context that publishes its partition assignment and reports its health.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use tokio::sync::{oneshot, watch};

use crate::health::Check;

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

/// A delivery report on its way to whoever sent the record (see [`super::RawProducer`]).
pub(super) type Report = oneshot::Sender<OwnedDeliveryResult>;

impl ProducerContext for QuietContext {
    type DeliveryOpaque = Box<Report>;

    fn delivery(&self, result: &DeliveryResult<'_>, report: Box<Report>) {
        let owned = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp(),
            }),
            Err((e, m)) => Err((e.clone(), m.detach())),
        };
        // The sender may have stopped waiting; nothing to tell then.
        let _ = report.send(owned);
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
    /// Shared with the consumers that replace this one (see [`super::Subscription::recover`]), so a
    /// watcher keeps following the member's assignment.
    pub(super) assigned: Arc<watch::Sender<usize>>,
    pub(super) health: Check,
    /// librdkafka met brokers of another cluster than the one it joined: see
    /// [`super::Subscription::recover`].
    pub(super) cluster_changed: AtomicBool,
}

impl GroupContext {
    pub(super) fn new(health: Check, assigned: Arc<watch::Sender<usize>>) -> Self {
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
