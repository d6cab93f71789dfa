//! The window of one layer of one build: per laser and channel statistics, rule hit counts,
//! the grid map, the layer's events and parameters, and the batches it holds.
//!
//! A layer window closes when its `end` event has been seen and the watermark has passed it (or,
//! without an `end`, when the watermark is `layer_gap_timeout` past its last sample).

use std::collections::BTreeMap;

use crate::input::build_info::BuildInfo;
use crate::input::event::{Channel, LaserParams, TimeNs, N_CHANNELS};
use crate::analytics::grid::{Grid, GridSpec};
use crate::offset_ledger::HoldSet;
use crate::records::{LaserQuality, LayerSummary};
use crate::analytics::stats::ChannelAgg;
use crate::input::time::format_rfc3339;

/// Aggregates of one laser in one layer.
#[derive(Clone, Debug, Default)]
pub struct LaserAgg {
    /// Per channel, allocated on first use.
    pub channels: [Option<Box<ChannelAgg>>; N_CHANNELS],
    /// Exceedances per sample rule (indexed like the build's rules).
    pub rule_hits: Vec<u64>,
    /// Samples merged after the first result.
    pub late_count: u64,
    /// The shortest sample period of its blocks, ns (0: none known, e.g. one-sample messages):
    /// what the samples expected over the layer's exposure are counted in.
    pub dt_ns: i64,
    /// The sample intervals of its blocks, `[t0, t0 + len × dt)` (blocks with a known period):
    /// what data quality finds holes and overlaps in.
    pub spans: Vec<(TimeNs, TimeNs)>,
}

impl LaserAgg {
    /// Its data quality over the exposure `[start, end)`; `None` when the period is unknown.
    pub fn quality(&self, start: TimeNs, end: TimeNs) -> Option<LaserQuality> {
        let dt = self.dt_ns;
        if dt <= 0 || end <= start {
            return None;
        }
        let mut spans = self.spans.clone();
        spans.sort_unstable();
        let mut lens: Vec<i64> = spans.iter().map(|(a, b)| b - a).collect();
        lens.sort_unstable();
        let block = lens.get(lens.len() / 2).copied().unwrap_or(dt).max(dt);
        let (mut covered_to, mut dup_ns, mut gaps, mut gap_ns) = (start, 0i64, 0u32, 0i64);
        let mut hole = |from: i64, to: i64| {
            if to - from > 3 * block {
                gaps += 1;
                gap_ns += to - from;
            }
        };
        for &(a, b) in &spans {
            if a < covered_to {
                dup_ns += (b.min(covered_to) - a.max(start)).max(0);
            } else {
                hole(covered_to, a);
            }
            covered_to = covered_to.max(b);
        }
        hole(covered_to, end);
        let samples = self.sample_count();
        let expected = ((end - start) / dt).max(1) as u64;
        let duplicate_samples = (dup_ns / dt).max(0) as u64;
        let score = (samples.saturating_sub(duplicate_samples) as f64 / expected as f64).min(1.0);
        Some(LaserQuality { samples, expected, blocks: self.spans.len() as u64, duplicate_samples, gaps, gap_ms: gap_ns as f64 / 1e6, score })
    }

    /// Samples received against those expected over `span_ns` of exposure at its sample period,
    /// at most 1; `None` when the period is unknown.
    pub fn completeness(&self, span_ns: i64) -> Option<f64> {
        (self.dt_ns > 0 && span_ns > 0).then(|| (self.sample_count() as f64 / (span_ns / self.dt_ns).max(1) as f64).min(1.0))
    }

    /// Samples seen (the largest channel count: channels may be sparse).
    pub fn sample_count(&self) -> u64 {
        self.channels.iter().flatten().map(|c| c.stats.count()).max().unwrap_or(0)
    }
}

/// One layer's window.
#[derive(Clone, Debug, Default)]
pub struct LayerWindow {
    /// Lasers by number (index 0 is "laser not named").
    pub lasers: Vec<LaserAgg>,
    /// Grid map, allocated on the first sample with x/y.
    pub grid: Option<Grid>,
    /// `start` event time.
    pub start_event_ns: Option<TimeNs>,
    /// `end` event time.
    pub end_event_ns: Option<TimeNs>,
    /// First and last sample times.
    pub min_t: Option<TimeNs>,
    /// Last sample time.
    pub max_t: Option<TimeNs>,
    /// Platform height.
    pub z_um: Option<i64>,
    /// Parameters per laser and style.
    pub params: Vec<LaserParams>,
    /// Lowest batch per input feeding the window while it is open.
    pub hold: HoldSet,
    /// Offset of the window's first record in its partition.
    pub first_offset: Option<u64>,
    /// How many results were emitted (0 while open).
    pub emitted: u32,
    /// Changed since the last result.
    pub dirty: bool,
}

impl LayerWindow {
    /// The laser's aggregates, growing the table as needed.
    pub fn laser_mut(&mut self, laser: u8, n_rules: usize) -> &mut LaserAgg {
        let i = usize::from(laser);
        if self.lasers.len() <= i {
            self.lasers.resize_with(i + 1, LaserAgg::default);
        }
        let l = &mut self.lasers[i];
        if l.rule_hits.len() < n_rules {
            l.rule_hits.resize(n_rules, 0);
        }
        l
    }

    /// Extends the window's time range with a block.
    pub fn extend_time(&mut self, t0: TimeNs, t_last: TimeNs) {
        self.min_t = Some(self.min_t.map_or(t0, |m| m.min(t0)));
        self.max_t = Some(self.max_t.map_or(t_last, |m| m.max(t_last)));
    }

    /// Adds a grid sample set, allocating the grid on first use.
    pub fn grid_push(&mut self, spec: GridSpec, xs: &[f32], ys: &[f32], vs: &[f32]) {
        self.grid.get_or_insert_with(|| Grid::new(spec)).push(xs, ys, vs);
    }

    /// The window's start: its `start` event, else its first sample.
    pub fn start_ns(&self) -> TimeNs {
        self.start_event_ns.or(self.min_t).unwrap_or(0)
    }

    /// The window's end: its `end` event, else its last sample.
    pub fn end_ns(&self) -> TimeNs {
        self.end_event_ns.or(self.max_t).unwrap_or(self.start_ns())
    }

    /// True when watermark `wm` closes the window.
    pub fn closes_at(&self, wm: TimeNs, gap_ns: i64) -> bool {
        match (self.end_event_ns, self.max_t) {
            (Some(e), _) => wm >= e,
            (None, Some(m)) => wm >= m.saturating_add(gap_ns),
            (None, None) => self.start_event_ns.is_some_and(|s| wm >= s.saturating_add(gap_ns)),
        }
    }

    /// Energy density per style of `laser`, J/mm³, from the layer's parameters or, failing them,
    /// from the build's planned ones (`plan`) or, failing those, from the mean power, speed and
    /// hatch of the samples and the planned (else the default) thickness.
    pub fn energy_by_style(&self, laser: u8, default_thickness_um: f64, plan: Option<&BuildInfo>) -> BTreeMap<String, f64> {
        let default_thickness_um = plan.and_then(|p| p.layer_thickness_um).unwrap_or(default_thickness_um);
        let mut m = BTreeMap::new();
        for p in self.params.iter().filter(|p| p.laser == laser) {
            let e = p.energy_density_j_mm3();
            if e.is_finite() {
                m.insert(p.style.clone(), e);
            }
        }
        // No parameters in the layer's events: the build's planned ones, else the measured.
        if m.is_empty() {
            if let Some(p) = plan {
                m = p.planned_energy_by_style(laser, default_thickness_um);
            }
        }
        if m.is_empty() {
            if let Some(l) = self.lasers.get(usize::from(laser)) {
                let mean = |c: Channel| l.channels[c.index()].as_ref().map(|a| a.stats.mean());
                if let (Some(p), Some(v), Some(h)) = (mean(Channel::LaserPowerW), mean(Channel::ScanSpeedMmS), mean(Channel::HatchSpacingMm)) {
                    let e = crate::analytics::energy::energy_density_j_mm3(p, v, h, default_thickness_um / 1000.0);
                    if e.is_finite() {
                        m.insert("measured".to_owned(), e);
                    }
                }
            }
        }
        m
    }

    /// The summaries of every laser with samples.
    pub fn summaries(&self, build_id: &str, layer: u32, rule_names: &[&str], default_thickness_um: f64, plan: Option<&BuildInfo>) -> Vec<LayerSummary> {
        let (start, end) = (self.start_ns(), self.end_ns());
        let mut out = Vec::new();
        for (laser, agg) in self.lasers.iter().enumerate() {
            let count = agg.sample_count();
            if count == 0 {
                continue;
            }
            let by_style = self.energy_by_style(laser as u8, default_thickness_um, plan);
            let main = by_style.get("core").or_else(|| by_style.values().next()).copied();
            out.push(LayerSummary {
                build_id: build_id.to_owned(),
                layer,
                laser: laser as u8,
                revision: self.emitted,
                window_start: format_rfc3339(start),
                window_start_ns: start,
                window_end: format_rfc3339(end),
                window_end_ns: end,
                z_um: self.z_um,
                sample_count: count,
                late_count: agg.late_count,
                energy_density_j_mm3: main,
                energy_density_by_style_j_mm3: by_style,
                channels: Channel::ALL
                    .iter()
                    .filter_map(|c| agg.channels[c.index()].as_ref().map(|a| (c.name().to_owned(), a.summary())))
                    .collect(),
                rule_hits: rule_names.iter().zip(&agg.rule_hits).map(|(n, h)| ((*n).to_owned(), *h)).collect(),
            });
        }
        out
    }
}
