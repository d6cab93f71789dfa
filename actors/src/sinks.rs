//! Sinks: the sink actor, which batches records and acknowledges them once durable, and the
//! writers it drives (file and null, PostgreSQL, SQLite, Kafka, Redis, webhook, Airflow); and the results
//! store those sinks keep, read back and written by CT fusion and the batch commands
//! (`results_store`).
//!
//! A sink knows the tree only through the messages in `ports`; it never imports `tree/`.

pub mod airflow;
pub mod file;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod redis;
pub mod results_store;
pub mod webhook;
pub mod sink_actor;
pub mod sqlite;
pub mod writer;

/// Every table holding rows of a pipeline in a results store (PostgreSQL and SQLite alike), in
/// the order `meltstream reset` empties them.
pub(crate) const PIPELINE_TABLES: [&str; 15] = [
    "layer_summaries",
    "grid_maps",
    "window_results",
    "anomalies",
    "dead_letters",
    "late_records",
    "spc_signals",
    "layer_verdicts",
    "build_reports",
    "data_quality",
    "input_quality",
    "spc_baselines",
    "fused_defects",
    "fusion_summaries",
    "progress",
];

/// A phase I baseline as a results store holds it (table `spc_baselines`), read back for a
/// chart with `baseline = "reference"`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBaseline {
    /// Laser (0 for a cell chart).
    pub laser: u8,
    /// Cell index, for a cell chart.
    pub cell: Option<u32>,
    /// Cell edge, mm, for a cell chart.
    pub cell_mm: Option<f64>,
    /// Centre.
    pub centre: f64,
    /// Sigma.
    pub sigma: f64,
}
