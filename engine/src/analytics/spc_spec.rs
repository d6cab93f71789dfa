//! A compiled `[[spc]]` chart: what it takes from a closed layer window (one point per laser),
//! its chart kind and baseline. The charts themselves run in `crate::pipeline::spc_charts`.

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
}

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
    /// Raise anomalies too.
    pub alert: bool,
}

impl SpcSpec {
    /// Compiles a checked `[[spc]]` entry.
    pub fn compile(c: &SpcConfig) -> SpcSpec {
        let statistic = c.statistic();
        let target = match Channel::parse(&c.channel) {
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
            SpcTarget::Channel(ch, _) => ch.name().to_owned(),
            SpcTarget::EnergyDensity => "energy_density_j_mm3".to_owned(),
        };
        SpcSpec { name: c.name.clone(), target, channel, statistic: statistic.name(), kind, given, baseline_layers: c.baseline_layers.max(2), alert: c.alert }
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
                    SpcStatistic::Mean | SpcStatistic::Value => a.stats.mean(),
                }
            }
            SpcTarget::EnergyDensity => {
                let by_style = w.energy_by_style(laser as u8, default_thickness_um, plan);
                by_style.get("core").or_else(|| by_style.values().next()).copied()?
            }
        };
        v.is_finite().then_some(v)
    }
}
