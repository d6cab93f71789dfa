//! meltstream's runtime: the ractor supervision tree around the pure core in
//! `meltstream-engine`, in rooms by role:
//!
//! - `tree/`: the supervisor, the router, one build actor per build, the watermark and commit
//!   coordinators, and [`EngineBuilder`], which turns a checked topology into a running tree;
//! - `sources/`: file, simulator (and R1), Kafka;
//! - `sinks/`: the sink actor and its writer trait; file and null, PostgreSQL, Kafka;
//! - below them all, `ports` (the messages and contexts that cross rooms), `progress` (the
//!   exactly-once handoff of source progress into the sinks), `engine_stats` (live counters, with
//!   `health`: what readiness is judged on) and `retry` (backoff for transient failures).
//!
//! Imports flow one way: `tree` → `sources`, `sinks` → `ports`, `progress`, `engine_stats`,
//! `retry`. A source or a sink never imports the tree.
//!
//! Where a sample enters: `sources/file.rs` (or `simulator.rs`, `kafka.rs`) → `tree/router.rs`.
//! Where it is aggregated: `tree/build_actor.rs` (around `BuildProcessor`). Where it becomes
//! durable: `sinks/sink_actor.rs`. Where its offset is committed: `tree/commit_coordinator.rs`.
#![warn(missing_docs)]

pub mod engine_gauges;
pub mod engine_stats;
pub mod health;
pub mod live_view;
pub mod log_limit;
pub mod memory_budget;
pub mod ports;
pub mod progress;
pub mod retry;
pub mod sinks;
pub mod sources;
#[cfg(feature = "test_util")]
pub mod test_util;
pub mod tree;

pub use tree::engine_builder::{EngineBuilder, EngineError, EngineHandle};
