//! Tools that drive and check the real stack from outside, through its public gRPC API and by
//! reading (never writing) the three databases.
//!
//! Layout:
//! - [`audit`]: the consistency audit of DESIGN.md's invariants across the three databases.
//! - [`client`]: starting sagas and waiting for them to finish.
//! - [`browser`]: headless Chromium over WebDriver (dashboard tests and benchmark).
//! - `src/bin/demo.rs`: the README's demo; `src/bin/dashboard_bench.rs`: the dashboard at 100,000 sagas.

pub mod audit;
pub mod browser;
pub mod client;
