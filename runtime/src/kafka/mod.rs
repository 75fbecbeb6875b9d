//! Kafka clients shared by every service: typed settings turned into librdkafka configuration in
//! one place, so the producer is always idempotent and consumers never commit an offset the
//! service has not finished with — and clients that heal when the brokers lose state: a
//! [`Producer`] that is rebuilt when librdkafka declares it fatally failed and that creates a
//! vanished topic again, and consumers ([`Subscription`]) that report whether their group is
//! joined, for `/readyz`.
//!
//! Layout (one job a file; [`KafkaSettings`] builds every client, each constructor living with
//! what it builds):
//! - `settings`: [`KafkaSettings`] and its security, → librdkafka `ClientConfig`.
//! - `context`: librdkafka's logs, errors and delivery reports; the group consumer's context.
//! - `raw_producer`: [`RawProducer`], one delivery future per record, served by a sleeping thread.
//! - `producer`: [`Producer`], the healing producer ([`KafkaSettings::producer`]).
//! - `subscription`: group consumers and the self-repairing [`Subscription`]
//!   ([`KafkaSettings::subscribe`]).
//! - `topics`: topic creation ([`KafkaSettings::ensure_topics`]).

mod context;
mod producer;
mod raw_producer;
mod settings;
mod subscription;
mod topics;

pub use context::{GroupContext, QuietContext};
pub use producer::Producer;
pub use raw_producer::{DeliveryFuture, RawProducer};
pub use settings::{KafkaSecurity, KafkaSettings, SaslMechanism, SecurityError, SecurityProtocol};
pub use subscription::{GroupConsumer, Subscription};
