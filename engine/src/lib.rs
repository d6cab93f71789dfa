//! meltstream's pure core: event types and decoding, batches, windows and aggregates, watermark
//! logic, the offset ledger, rules, the simulator and the topology schema. No actors, no
//! sockets, no async: every piece is a plain struct with methods, tested without a runtime.
#![warn(missing_docs)]

pub mod analytics;
pub mod build_processor;
pub mod input;
pub mod offset_ledger;
pub mod operator;
pub mod records;
pub mod restart_budget;
pub mod simulator;
pub mod topology;
pub mod windows;
