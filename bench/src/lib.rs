//! Tools that drive and check the real stack from outside, through its public gRPC API and by
//! reading (never writing) the three databases.
//!
//! Layout:
//! - [`audit`]: the consistency check of the demo, load generator, chaos harness and end-to-end
//!   tests: the orchestrator's own audit (`RunAudit`), plus sagas counted by state.
//! - [`client`]: starting sagas and waiting for them to finish.
//! - [`browser`]: headless Chromium over WebDriver (dashboard tests and benchmark).
//! - [`database`]: the `--database-server` argument of the demo and the dashboard benchmark.
//! - [`otlp`]: an OTLP/gRPC span receiver (the conformance kit's and the end-to-end tests' traces).
//! - [`timing`]: percentiles and timed GETs (the benchmarks).
//! - `src/bin/demo.rs`: the README's demo; `src/bin/dashboard_bench.rs`: the dashboard at 100,000 sagas.

pub mod audit;
pub mod browser;
pub mod client;
pub mod database;
pub mod otlp;
pub mod timing;
