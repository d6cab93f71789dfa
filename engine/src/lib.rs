//! meltstream's pure core: event types and decoding, batches, windows and aggregates, watermark
//! logic, the offset ledger, rules, the simulator and the topology schema. No actors, no
//! sockets, no async: every piece is a plain struct with methods, tested without a runtime.
//!
//! Rooms by role: [`input`] (where a sample enters: events, batches, time, decoding and
//! encoding), [`windows`] (layer and time windows, watermarks), [`analytics`] (statistics,
//! grid, energy density, rules), [`topology`] (the schema, its loading and checking), and
//! [`simulator`] (the simulated fleet and the R1 generator). At the top: the output
//! [`records`], the [`offset_ledger`] and the [`restart_budget`]; [`pipeline`] is what a build runs:
//! a chain of operators, one per concern.
#![warn(missing_docs)]

pub mod analytics;
pub mod fusion;
pub mod input;
pub mod offset_ledger;
pub mod pipeline;
pub mod records;
pub mod restart_budget;
pub mod simulator;
pub mod topology;
pub mod windows;
