//! End-to-end: the orchestrator and both participants on real PostgreSQL and a real broker.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod audit;
mod broker;
mod consistency;
mod constructs;
mod dashboard;
mod dedup;
mod failures;
mod faults;
mod observability;
mod paths;
mod processes;
