//! A compiled `[[spc]]` chart: what it takes from a closed layer window (one point per laser, or
//! per grid cell), its chart kind and baseline (given, phase I, or a reference build's stored
//! phase I fixed at start). The charts themselves run in `crate::pipeline::spc_charts`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::analytics::spc::{Baseline, ChartKind};
use crate::input::event::Channel;
use crate::topology::{SpcBaselineKind, SpcChartKind, SpcConfig, SpcStatistic};
use crate::windows::layer_window::LayerWindow;

/// What a chart takes from a closed layer, per laser.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SpcTarget {
    /// A statistic of a sample channel.
    Channel(Channel, SpcStatistic),
    /// The energy density of the laser's main style.
    EnergyDensity,
    /// The mean of each grid cell of the layer's grid map (its channel), all lasers merged.
    Cell(Channel),
}

/// A reference build's stored baselines of one chart, by (laser, cell index): laser 0 and a
/// cell for a cell chart, a laser and no cell otherwise.
pub type ReferenceBaselines = BTreeMap<(u8, Option<u32>), Baseline>;

/// A compiled `[[spc]]` chart.
#[derive(Clone, Debug, PartialEq)]
pub struct SpcSpec {
    /// Name.
    pub name: String,
    /// What it charts.
    pub target: SpcTarget,
    /// Channel name in records.
    pub channel: String,
    /// Statistic name in records.
    pub statistic: &'static str,
    /// Chart kind with its parameters.
    pub kind: ChartKind,
    /// A given baseline, or `None` for phase I on the first `baseline_layers`.
    pub given: Option<Baseline>,
    /// Layers of phase I.
    pub baseline_layers: u32,
    /// The reference build (`baseline = "reference"`), whose baselines the engine reads at start.
    pub reference_build: Option<String>,
    /// The reference build's baselines as read at start (fixed for the run); a laser or cell
    /// without one goes through phase I on the build's own first layers.
    pub reference: Option<Arc<ReferenceBaselines>>,
    /// Fewest samples of a cell in a layer for it to be charted (cell charts).
    pub min_cell_samples: u64,
    /// Raise anomalies too.
    pub alert: bool,
}

impl SpcSpec {
    /// Compiles a checked `[[spc]]` entry.
    pub fn compile(c: &SpcConfig) -> SpcSpec {
        let statistic = c.statistic();
        let target = match Channel::parse(&c.channel) {
            Some(ch) if statistic == SpcStatistic::CellMean => SpcTarget::Cell(ch),
            Some(ch) => SpcTarget::Channel(ch, statistic),
            None => SpcTarget::EnergyDensity,
        };
        let kind = match c.chart {
            SpcChartKind::Shewhart => ChartKind::Shewhart,
            SpcChartKind::Ewma => ChartKind::Ewma { lambda: c.lambda, l: c.l },
            SpcChartKind::Cusum => ChartKind::Cusum { k: c.k, h: c.h },
        };
        let given = match (c.baseline, c.centre, c.sigma) {
            (SpcBaselineKind::Given, Some(centre), Some(sigma)) => Some(Baseline { centre, sigma }),
            _ => None,
        };
        let channel = match target {
            SpcTarget::Channel(ch, _) | SpcTarget::Cell(ch) => ch.name().to_owned(),
            SpcTarget::EnergyDensity => "energy_density_j_mm3".to_owned(),
        };
        let reference_build = c.reference_build.clone().filter(|_| c.baseline == SpcBaselineKind::Reference);
        SpcSpec {
            name: c.name.clone(),
            target,
            channel,
            statistic: statistic.name(),
            kind,
            given,
            baseline_layers: c.baseline_layers.max(2),
            reference_build,
            reference: None,
            min_cell_samples: c.min_cell_samples.max(1),
            alert: c.alert,
        }
    }

    /// Whether it charts grid cells.
    pub fn on_cells(&self) -> bool {
        matches!(self.target, SpcTarget::Cell(_))
    }

    /// The baseline a new track of `laser` (and `cell`) starts monitoring with: the given one,
    /// or the reference build's; `None`: phase I on the build's first layers.
    pub fn fixed_baseline(&self, laser: u8, cell: Option<u32>) -> Option<Baseline> {
        self.given.or_else(|| self.reference.as_ref().and_then(|r| r.get(&(laser, cell)).copied()))
    }

    /// The chart kind's name in records.
    pub fn chart_name(&self) -> &'static str {
        match self.kind {
            ChartKind::Shewhart => "shewhart",
            ChartKind::Ewma { .. } => "ewma",
            ChartKind::Cusum { .. } => "cusum",
        }
    }

    /// Laser `laser`'s point of layer window `w`, when it has one.
    pub fn point(&self, w: &LayerWindow, laser: usize, default_thickness_um: f64, plan: Option<&crate::input::build_info::BuildInfo>) -> Option<f64> {
        let v = match self.target {
            SpcTarget::Channel(ch, stat) => {
                let a = w.lasers.get(laser)?.channels[ch.index()].as_ref()?;
                match stat {
                    SpcStatistic::StdDev if a.stats.count() < 2 => return None,
                    SpcStatistic::StdDev => a.stats.std_dev(),
                    SpcStatistic::Mean | SpcStatistic::Value | SpcStatistic::CellMean => a.stats.mean(),
                }
            }
            SpcTarget::Cell(_) => return None,
            SpcTarget::EnergyDensity => {
                let by_style = w.energy_by_style(laser as u8, default_thickness_um, plan);
                by_style.get("core").or_else(|| by_style.values().next()).copied()?
            }
        };
        v.is_finite().then_some(v)
    }
}
