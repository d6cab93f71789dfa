//! What every build of a topology computes, compiled once from the topology and shared by all
//! build pipelines.

use crate::analytics::grid::GridSpec;
use crate::analytics::rules::Rule;
use crate::analytics::spc_spec::SpcSpec;
use crate::input::event::Channel;
use crate::topology::{LatePolicy, Topology, VerdictConfig};
use crate::windows::time_window::TimeWindowSpec;

/// What every build of a topology computes; shared by all build pipelines.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    /// Late policy.
    pub late_policy: LatePolicy,
    /// Allowed lateness (with the update policy), ns.
    pub allowed_lateness_ns: i64,
    /// Gap after which a layer without an `end` event closes, ns.
    pub layer_gap_ns: i64,
    /// Grid geometry.
    pub grid: GridSpec,
    /// Channel of the grid map.
    pub grid_channel: Channel,
    /// Time windows.
    pub time_windows: Vec<TimeWindowSpec>,
    /// Rules.
    pub rules: Vec<Rule>,
    /// SPC charts on per-layer statistics.
    pub spc: Vec<SpcSpec>,
    /// How closed layers are judged.
    pub verdict: VerdictConfig,
    /// Default layer thickness, µm.
    pub default_thickness_um: f64,
    /// Where the builds' descriptions are (`[build_info] dir`, resolved), if anywhere.
    pub build_info_dir: Option<std::path::PathBuf>,
    /// Out-of-orderness bound of the watermark, ns: a build applies `max_t − bound` of its
    /// input record by record (see `RecordBatch::max_t_before`).
    pub watermark_bound_ns: i64,
    /// Window of the `input_quality` records, ns.
    pub input_quality_window_ns: i64,
    /// Test hook: a block whose first `temperature_c` equals this value panics the pipeline
    /// before it changes any state (a stand-in for a poison record hitting a bug).
    #[cfg(feature = "fault-injection")]
    pub fault_panic_on_temperature: Option<f32>,
}

impl BuildSettings {
    /// The settings of a checked topology.
    pub fn from_topology(t: &Topology) -> BuildSettings {
        let ms = 1_000_000i64;
        BuildSettings {
            late_policy: t.engine.late_policy,
            allowed_lateness_ns: t.engine.allowed_lateness_ms as i64 * ms,
            layer_gap_ns: t.engine.layer_gap_timeout_ms as i64 * ms,
            grid: GridSpec { cell_mm: t.windows.grid_cell_mm, plate_mm: t.windows.plate_mm, deviation_z: t.windows.grid_deviation_z },
            grid_channel: Channel::parse(&t.windows.grid_channel).unwrap_or(Channel::PhotodiodeOnAxis),
            time_windows: t.windows.time.iter().map(TimeWindowSpec::compile).collect(),
            rules: t.rules.iter().map(Rule::compile).collect(),
            spc: t.spc.iter().map(SpcSpec::compile).collect(),
            verdict: t.verdict.clone(),
            default_thickness_um: t.engine.default_layer_thickness_um,
            build_info_dir: t.build_info.dir.as_ref().map(|d| t.base_dir.join(d)),
            watermark_bound_ns: t.engine.watermark_bound_ms as i64 * ms,
            input_quality_window_ns: t.engine.input_quality_window_ms as i64 * ms,
            #[cfg(feature = "fault-injection")]
            fault_panic_on_temperature: None,
        }
    }
}
