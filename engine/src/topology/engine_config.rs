//! `[engine]`: the engine-wide settings (watermark bound and timeouts, late policy, queue and
//! memory bounds, restart intensity, admin address) with their documented defaults. A plain
//! serde struct; its bounds are checked in `check`, never here.

use serde::Deserialize;

/// What to do with a record that arrives after its window was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Count it (metric `meltstream_late_samples_total`) and drop it.
    Drop,
    /// Send it, as a `late` record, to the sinks that take `late` records.
    LateSink,
    /// Merge it into the window and emit the result again, as long as the watermark is no more
    /// than `allowed_lateness_ms` past the window's end; later than that, drop and count.
    Update,
}

/// What a source does when the engine cannot take more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait (backpressure); nothing is lost.
    Block,
    /// Drop the newest batch and count it (only when the topology asks).
    DropNewest,
}

/// Engine-wide settings (`[engine]`).
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Bounded out-of-orderness of every input, ms.
    pub watermark_bound_ms: u64,
    /// An input without data for this long stops holding the watermark back, ms.
    pub input_idle_timeout_ms: u64,
    /// How often the watermark coordinator checks idleness and publishes, ms.
    pub watermark_interval_ms: u64,
    /// A build without events for this long is flushed and its actor stopped, ms.
    pub build_idle_timeout_ms: u64,
    /// A layer with no `end` event closes once the watermark is this far past its last sample, ms.
    pub layer_gap_timeout_ms: u64,
    /// Late-record policy.
    pub late_policy: LatePolicy,
    /// With `late_policy = "update"`: how long after a window's end it may still be updated, ms.
    pub allowed_lateness_ms: u64,
    /// Budget for batches in flight between the router and the build actors, MiB.
    pub memory_budget_mb: u64,
    /// Capacity of the queue from the sources to the router, in batches.
    pub source_queue_batches: usize,
    /// Capacity of each sink's queue, in records.
    pub sink_queue_records: usize,
    /// What sources do when the engine is full.
    pub when_full: WhenFull,
    /// Supervision: at most this many restarts …
    pub max_restarts: u32,
    /// … within this many seconds; beyond, the engine stops with an error.
    pub max_restart_window_s: u64,
    /// Largest accepted record, bytes.
    pub max_record_bytes: usize,
    /// How far ahead of the wall clock an event time may be, s.
    pub max_future_s: u64,
    /// Period of the terminal summary, ms (0: none).
    pub summary_interval_ms: u64,
    /// Address of the HTTP admin API (`/metrics`, `/health`, `/builds`), empty for none.
    pub admin_addr: String,
    /// Default layer thickness when no layer event gives one, µm.
    pub default_layer_thickness_um: f64,
    /// `/health/ready`: records may wait this long to become durable, s.
    pub ready_max_commit_age_s: u64,
    /// `/health/ready`: an input's watermark may stand this far behind its data, s.
    pub ready_max_watermark_lag_s: u64,
    /// Window of event time of the `input_quality` records, ms (computed only when a sink takes
    /// them).
    pub input_quality_window_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            watermark_bound_ms: 50,
            input_idle_timeout_ms: 5_000,
            watermark_interval_ms: 20,
            build_idle_timeout_ms: 600_000,
            layer_gap_timeout_ms: 30_000,
            late_policy: LatePolicy::Drop,
            allowed_lateness_ms: 0,
            memory_budget_mb: 256,
            source_queue_batches: 16,
            sink_queue_records: 65_536,
            when_full: WhenFull::Block,
            max_restarts: 5,
            max_restart_window_s: 60,
            max_record_bytes: 1 << 20,
            max_future_s: 86_400,
            summary_interval_ms: 1_000,
            admin_addr: String::new(),
            default_layer_thickness_um: 30.0,
            ready_max_commit_age_s: 30,
            ready_max_watermark_lag_s: 60,
            input_quality_window_ms: 60_000,
        }
    }
}
