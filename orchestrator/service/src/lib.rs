//! The saga orchestrator service: the gRPC API that starts and shows sagas, the PostgreSQL store
//! that keeps every decision, the outbox relay that publishes commands, the reply consumer that
//! feeds participants' answers to the engine, and the timers that fire deadlines and retries.
//!
//! Layout:
//! - [`startup`]: `Application::build(settings)` → `run_until_stopped(shutdown)`.
//! - [`api`]: the `saga.v1.SagaOrchestrator` gRPC service.
//! - [`coordinator`]: load → `decide` → commit, one file per entry point (start, replies,
//!   operator actions, timers) and the saga metrics.
//! - [`store`]: saga rows, history, optimistic concurrency.
//! - [`wire`]: engine commands ↔ Kafka envelopes.
//! - [`audit`]: the consistency audit — sagas against the participants' inbox ledgers.
//! - [`auth`]: operator and reader credentials.
//! - [`dashboard`]: the saga status dashboard (page and JSON API) on the HTTP port.
//! - [`watch`]: live saga changes (LISTEN/NOTIFY) for the Watch streams.
//! - [`catalog`], [`settings`], [`clock`]: definitions, configuration, time.

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod coordinator;
pub mod dashboard;
pub mod settings;
pub mod startup;
pub mod store;
pub mod watch;
pub mod wire;
