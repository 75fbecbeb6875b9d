//! The saga orchestrator service: the gRPC API that starts and shows sagas, the PostgreSQL store
//! that keeps every decision, the outbox relay that publishes commands, the reply consumer that
//! feeds participants' answers to the engine, and the timers that fire deadlines and retries.
//!
//! Layout:
//! - `startup`: [`Application::build`] → [`Application::run_until_stopped`]; [`serve`], [`migrate`].
//! - `api`: the operations callers have, whatever the transport — requests parsed once, one
//!   error type mapped once to gRPC and once to HTTP.
//! - `grpc`: the `saga.v1.SagaOrchestrator` service; `dashboard`: the saga status dashboard (page
//!   and JSON API) on the HTTP port. Both are thin: parse, call `api`, answer.
//! - `coordinator`: load → `decide` → commit, one file per entry point (start, replies,
//!   operator actions, timers) and the saga metrics.
//! - `jobs`: operator bulk work as durable jobs, claimed and resumed by any replica.
//! - `store`: saga rows, history, optimistic concurrency.
//! - `wire`: engine commands ↔ Kafka envelopes.
//! - `audit`: the consistency audit — sagas against the participants' inbox ledgers.
//! - `auth`: operator and reader credentials.
//! - `watch`: live saga changes (LISTEN/NOTIFY) for the Watch streams.
//! - `catalog`, `settings`, `clock`: definitions, configuration, time.
//!
//! The public surface is what tests and tools need: the application and its settings, the
//! migrations, the clocks tests move, and the change feed's channel and payload.

#![warn(unreachable_pub)]

mod api;
mod audit;
mod auth;
mod catalog;
mod clock;
mod coordinator;
mod dashboard;
mod grpc;
mod jobs;
mod retention;
mod settings;
mod startup;
mod store;
mod watch;
mod wire;

pub use clock::{Clock, ShiftedClock, SystemClock};
pub use settings::Settings;
pub use startup::{Application, MIGRATOR, migrate, serve};
pub use watch::{CHANNEL as CHANGES_CHANNEL, Change};
