//! The actor tree: the supervisor at its root, the router and the build actors it supervises,
//! the watermark and commit coordinators, the routing of results to the sinks, and the builder
//! that starts it all.
//!
//! The tree may use every other room (`sources`, `sinks`, `ports`); nothing below imports it.

pub mod build_actor;
pub mod build_queue;
pub mod commit_coordinator;
pub mod engine_builder;
pub mod outputs;
mod reference_baselines;
pub mod router;
pub mod supervisor;
pub mod watermark_coordinator;
