//! The records of the SPC charts (`[[spc]]`): out-of-control points and phase I baselines.
//! `docs/records.md` documents every field.

use serde::{Deserialize, Serialize};

/// A grid cell a chart watches: where it lies, so that evidence can be placed (CT fusion).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpcCell {
    /// Index in the grid map: `iy × cells_per_side + ix`.
    pub index: u32,
    /// Centre of the cell, mm.
    pub x_mm: f64,
    /// Same, y.
    pub y_mm: f64,
    /// Edge of the cell, mm.
    pub size_mm: f64,
}

impl SpcCell {
    /// Cell `index` of a grid of `cells_per_side` cells of `size_mm`.
    pub fn of(index: u32, cells_per_side: usize, size_mm: f64) -> SpcCell {
        let n = cells_per_side.max(1) as u32;
        let (ix, iy) = (index % n, index / n);
        SpcCell { index, x_mm: (f64::from(ix) + 0.5) * size_mm, y_mm: (f64::from(iy) + 0.5) * size_mm, size_mm }
    }
}

/// An out-of-control point of a statistical process control chart (`[[spc]]`) on a per-layer
/// statistic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpcSignal {
    /// Build.
    pub build_id: String,
    /// The chart's name in the topology.
    pub spc: String,
    /// `shewhart`, `ewma` or `cusum`.
    pub chart: String,
    /// Channel charted (`energy_density_j_mm3` for energy density).
    pub channel: String,
    /// Statistic charted: `mean`, `std_dev` or `value`.
    pub statistic: String,
    /// Laser (0 for a cell chart: its cells merge the lasers).
    pub laser: u8,
    /// The grid cell charted (`statistic = "cell_mean"`); absent for a laser's chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<SpcCell>,
    /// The layer whose point signalled.
    pub layer: u32,
    /// End of that layer's window.
    pub time: String,
    /// Same, ns.
    pub time_ns: i64,
    /// The test that signalled (`we1_beyond_3_sigma`, `we2_2_of_3_beyond_2_sigma`,
    /// `we3_4_of_5_beyond_1_sigma`, `we4_8_on_one_side`, `ewma`, `cusum_upper`, `cusum_lower`).
    pub rule: String,
    /// The layer's value of the statistic.
    pub value: f64,
    /// What the test judged: the value (Shewhart), the EWMA statistic z, or the CUSUM sum.
    pub charted: f64,
    /// The chart's centre line μ₀ (for CUSUM, whose sums are judged against `lower` and
    /// `upper`, the centre of the statistic).
    pub centre: f64,
    /// Lower limit of the test's zone.
    pub lower: f64,
    /// Upper limit of the test's zone.
    pub upper: f64,
    /// Phase I centre of the statistic.
    pub baseline_centre: f64,
    /// Phase I sigma of the statistic.
    pub baseline_sigma: f64,
    /// The layers whose points make the pattern, oldest first.
    pub layers: Vec<u32>,
}

/// The phase I baseline of one chart of one build's laser (or cell), emitted once, when phase I
/// completes: what a later build's `baseline = "reference"` reads back (table `spc_baselines`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpcBaseline {
    /// Build.
    pub build_id: String,
    /// The chart's name in the topology.
    pub spc: String,
    /// `shewhart`, `ewma` or `cusum`.
    pub chart: String,
    /// Channel charted.
    pub channel: String,
    /// Statistic charted.
    pub statistic: String,
    /// Laser (0 for a cell chart).
    pub laser: u8,
    /// The grid cell, for a cell chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<SpcCell>,
    /// The layer whose point completed phase I.
    pub layer: u32,
    /// End of that layer's window.
    pub time: String,
    /// Same, ns.
    pub time_ns: i64,
    /// Centre μ₀.
    pub centre: f64,
    /// σ̂ = MR̄ / d₂.
    pub sigma: f64,
    /// Points (layers) phase I used.
    pub layers_used: u32,
}
