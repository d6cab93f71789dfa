//! meltstream's pure core: event types and decoding, batches, windows and aggregates, watermark
//! logic, the offset ledger, rules, the simulator and the topology schema. No actors, no
//! sockets, no async: every piece is a plain struct with methods, tested without a runtime.
#![warn(missing_docs)]

pub mod batch;
pub mod decode;
pub mod energy;
pub mod event;
pub mod grid;
pub mod layer_window;
pub mod offset_ledger;
pub mod pipeline;
pub mod r1;
pub mod records;
pub mod restart_budget;
pub mod rules;
pub mod simulator;
pub mod stats;
pub mod time;
pub mod time_window;
pub mod topology;
pub mod watermark;
