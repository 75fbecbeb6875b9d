//! What the three services of the saga coordinator share, written once.
//!
//! Layout:
//! - [`kafka`]: typed Kafka settings → idempotent producer, offset-safe consumer, topic creation.
//! - [`outbox`]: [`outbox::enqueue`] inside a transaction, and the [`outbox::Relay`] that publishes.
//! - [`consumer`]: the consume → handle → store-offset loop with dead-lettering and retries.
//! - [`db`]: PostgreSQL settings and pool construction; [`config`]: settings loading.
//! - [`http`]: the metrics/health HTTP port every service serves (plain or TLS, see [`tls`]);
//!   [`health`]: the background loops' reports behind `/readyz`.
//! - [`shutdown`], [`telemetry`], [`trace`]: signals and draining; logs, spans and OTLP export;
//!   trace-context propagation through gRPC, outbox rows and Kafka headers.
//! - [`backoff`]: the doubling wait of every retrying loop.
//! - `testing` (feature `test-util`): throwaway databases and topic readers for integration tests.

#![warn(unreachable_pub)]

pub mod backoff;
pub mod config;
pub mod consumer;
pub mod db;
pub mod health;
pub mod http;
pub mod kafka;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls;
pub mod trace;
