//! The transactional outbox: messages are written in the same PostgreSQL transaction as the state
//! change that causes them, and a relay publishes them to Kafka afterwards.
//!
//! Ordering and concurrency: every row belongs to one of [`LANES`] lanes, chosen by hashing the
//! record key (the saga id), so all messages of one saga share a lane. A relay owns lanes through
//! session-level advisory locks held by a connection of its own, and runs every read of the outbox
//! on that connection, so a read that succeeds proves the lanes are still its own. Two relays (two
//! replicas) therefore never publish the same lane at once, and a saga's messages leave in the
//! order they were written (the idempotent producer keeps per-partition order). A relay that dies
//! releases its lanes with its connection; the others pick free lanes up every poll interval.
//!
//! The relay is pipelined: it reads committed rows in id order, hands them to the producer and
//! reads again without waiting; acknowledged rows are deleted in batches, rows whose delivery
//! failed are read and published again (at-least-once; the message id in each envelope makes a
//! repeat detectable). A row is deleted only after the broker acknowledged it.
//!
//! Rows a process writes reach its own relay without that read: the writer hands them over
//! ([`Handoff`]) and the relay publishes them once the outbox notification announces their
//! transaction's commit, in commit order. Reading the table is then the path for rows of other
//! processes and for rows a crash left behind; see `handoff` for why order is kept.
//!
//! The schema lives in each service's migrations (`outbox`, and a statement-level trigger that
//! sends `NOTIFY outbox` on insert, naming the transaction).
//!
//! Layout:
//! - `enqueue`: [`OutboxMessage`], [`lane_of`], [`enqueue`] — the write side.
//! - `handoff`: [`Handoff`] — rows a writer hands to its own process's relay.
//! - `lanes`: the relay's session — lane locks, the floor, reads and deletes.
//! - `pipeline`: the relay's bookkeeping between round trips, pure, with its tests.
//! - `vacuum`: the relay's own vacuum of the table.
//! - `relay`: [`Relay`] — `run` (pipelined) and `relay_once` (one batch).

mod enqueue;
mod handoff;
mod lanes;
mod pipeline;
mod relay;
mod vacuum;

pub use enqueue::{OutboxMessage, enqueue, lane_of};
pub use handoff::{Handoff, HandoffStats};
pub use lanes::SESSION_NAME;
pub use relay::{BatchReport, Relay, RelayError, RelaySettings};

/// Number of lanes: each is one session advisory lock a relay can hold.
pub const LANES: i16 = 16;

/// The notification channel the outbox trigger signals.
pub const CHANNEL: &str = "outbox";
