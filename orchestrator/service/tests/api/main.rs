//! Orchestrator integration tests: real PostgreSQL, real Kafka-protocol broker, real gRPC.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod bulk;
mod changes;
mod children;
mod crash;
mod flow;
mod helpers;
mod jobs;
mod lifecycle;
mod operator;
mod queries;
mod start_saga;
mod transports;
mod waits;
