//! `[[spc]]`: a statistical process control chart on a per-layer statistic, as written in the
//! topology (channel, statistic, chart kind and parameters, baseline, alert). Plain serde
//! structs with no logic: `crate::pipeline::spc_charts` runs them, `check` validates them.

use serde::Deserialize;

/// The per-layer channel that is not a sample channel.
pub const ENERGY_DENSITY_CHANNEL: &str = "energy_density_j_mm3";

/// The per-layer value a chart watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpcStatistic {
    /// The mean of the channel over the layer window (per laser).
    Mean,
    /// The sample standard deviation of the channel over the layer window (per laser).
    StdDev,
    /// The layer's volumetric energy density of the laser's main style (channel
    /// `energy_density_j_mm3`, which takes no other statistic).
    Value,
    /// The mean of each grid cell of the layer's grid map (all lasers merged, as the map
    /// merges them): one chart per cell. Only the grid map's channel (`[windows] grid_channel`).
    CellMean,
}

impl SpcStatistic {
    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            SpcStatistic::Mean => "mean",
            SpcStatistic::StdDev => "std_dev",
            SpcStatistic::Value => "value",
            SpcStatistic::CellMean => "cell_mean",
        }
    }
}

/// Chart kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpcChartKind {
    /// Shewhart individuals chart with the four Western Electric rules.
    Shewhart,
    /// EWMA with `lambda` and `l`.
    Ewma,
    /// Tabular CUSUM with `k` and `h`.
    Cusum,
}

/// Where the in-control centre and sigma come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpcBaselineKind {
    /// Phase I on the build's own first `baseline_layers` layers (per laser).
    FirstLayers,
    /// `centre` and `sigma` given here (for instance from a reference build).
    Given,
    /// The phase I of build `reference_build` as a results store holds it (`spc_baselines`),
    /// read when the engine starts and fixed for the run.
    Reference,
}

/// One chart (`[[spc]]`), run per build and laser.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpcConfig {
    /// Name, written in each signal (and in the alert's rule as `spc:<name>`).
    pub name: String,
    /// A sample channel, or `energy_density_j_mm3`.
    pub channel: String,
    /// The per-layer statistic: `mean` (default) or `std_dev` of a sample channel; `value` for
    /// `energy_density_j_mm3`.
    #[serde(default)]
    pub statistic: Option<SpcStatistic>,
    /// Chart kind (default `shewhart`).
    #[serde(default = "default_chart")]
    pub chart: SpcChartKind,
    /// EWMA weight λ, in (0, 1].
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// EWMA limit width L, in σ.
    #[serde(default = "default_l")]
    pub l: f64,
    /// CUSUM reference value k, in σ.
    #[serde(default = "default_k")]
    pub k: f64,
    /// CUSUM decision interval h, in σ.
    #[serde(default = "default_h")]
    pub h: f64,
    /// Baseline (default `first_layers`).
    #[serde(default = "default_baseline")]
    pub baseline: SpcBaselineKind,
    /// Layers of phase I (`baseline = "first_layers"`), at least 2.
    #[serde(default = "default_baseline_layers")]
    pub baseline_layers: u32,
    /// Centre (`baseline = "given"`).
    #[serde(default)]
    pub centre: Option<f64>,
    /// Sigma (`baseline = "given"`), positive.
    #[serde(default)]
    pub sigma: Option<f64>,
    /// The build whose stored phase I gives the baselines (`baseline = "reference"`).
    #[serde(default)]
    pub reference_build: Option<String>,
    /// Fewest samples a grid cell needs in a layer for its mean to be charted
    /// (`statistic = "cell_mean"`); a cell with fewer skips that layer.
    #[serde(default = "default_min_cell_samples")]
    pub min_cell_samples: u64,
    /// Also raise an anomaly (rule `spc:<name>`) for each signal.
    #[serde(default)]
    pub alert: bool,
}

impl SpcConfig {
    /// The statistic, its default filled in.
    pub fn statistic(&self) -> SpcStatistic {
        self.statistic.unwrap_or(if self.channel == ENERGY_DENSITY_CHANNEL { SpcStatistic::Value } else { SpcStatistic::Mean })
    }
}

fn default_chart() -> SpcChartKind {
    SpcChartKind::Shewhart
}

fn default_lambda() -> f64 {
    0.2
}

fn default_l() -> f64 {
    3.0
}

fn default_k() -> f64 {
    0.5
}

fn default_h() -> f64 {
    5.0
}

fn default_baseline() -> SpcBaselineKind {
    SpcBaselineKind::FirstLayers
}

fn default_baseline_layers() -> u32 {
    20
}

fn default_min_cell_samples() -> u64 {
    crate::analytics::grid::DEVIATION_MIN_COUNT
}
