//! The anomalies the simulator plants and the ground truth it keeps of them: which machine gets
//! which kind on which layer and laser (drawn from the seed), and how a power drop or a hot
//! cell rewrites a block the physical model already filled. An O2 rise and a lack of fusion
//! change the machine's log values and scan speed, so the machine applies those itself. Nothing
//! here schedules records; it never changes a sample outside its anomaly's span.

use crate::input::event::{BuildId, TimeNs};
use crate::topology::sources::SimulatorConfig;

use super::model::{model, SplitMix, AMP_PD_OFF, AMP_PD_ON, AMP_TEMP, MARGIN_MM, MS, PLATE_MM};

/// Duration of an O2 rise.
pub(super) const O2_RISE_NS: i64 = 2_000 * MS;
pub(super) const HOT_CELL_MM: f64 = 20.0;
pub(super) const DROP_POWER_W: f32 = 100.0;
pub(super) const HOT_PD_ON: f32 = 3400.0;
pub(super) const HOT_PD_OFF: f32 = 1900.0;
pub(super) const HOT_TEMP: f32 = 1800.0;

pub use super::kinds::AnomalyKind;

/// One injected anomaly: what, where, and when (event times, half-open `[start_ns, end_ns)`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct InjectedAnomaly {
    /// Build it was injected into.
    pub build_id: String,
    /// Layer it belongs to (for an O2 rise, the layer during which it starts).
    pub layer: u32,
    /// Laser, `None` for a machine-wide anomaly (O2 rise).
    pub laser: Option<u8>,
    /// What was injected.
    pub kind: AnomalyKind,
    /// Event time of the first affected sample or record.
    pub start_ns: i64,
    /// One past the event time of the last affected sample (the end of the interval).
    pub end_ns: i64,
    /// x range of the affected region in mm (hot spot only).
    pub x_mm: Option<(f64, f64)>,
    /// y range of the affected region in mm (hot spot only).
    pub y_mm: Option<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub(super) struct PowerDropSpan {
    /// Sample indices within the layer, half-open.
    pub(super) from: u64,
    pub(super) to: u64,
    pub(super) recorded: bool,
}

#[derive(Clone, Debug)]
pub(super) struct HotCell {
    pub(super) x0: f32,
    pub(super) x1: f32,
    pub(super) y0: f32,
    pub(super) y1: f32,
    /// Index of its entry in the ground truth, once a hot sample was generated.
    pub(super) truth: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub(super) kind: AnomalyKind,
    /// First layer.
    pub(super) layer: u32,
    /// 0 for a machine-wide kind.
    pub(super) laser: u8,
    /// Where a region kind lies, as fractions of the plate (drawn with the plan).
    pub(super) at: (f64, f64),
}

impl Plan {
    /// Whether it covers layer `k`.
    pub(super) fn covers(&self, k: u32) -> bool {
        (self.layer..self.layer.saturating_add(self.kind.layers())).contains(&k)
    }

    /// The region a region kind rewrites, in mm, with its effect.
    pub(super) fn region(&self) -> Option<Region> {
        let place = |w: f64, f: f64| MARGIN_MM + f * (PLATE_MM - 2.0 * MARGIN_MM - w);
        let r = match self.kind {
            AnomalyKind::RecoaterStreak => {
                let x0 = place(STREAK_MM, self.at.0);
                Region { x0: x0 as f32, x1: (x0 + STREAK_MM) as f32, y0: 0.0, y1: PLATE_MM as f32, pd: 0.55, temp: -150.0 }
            }
            AnomalyKind::GasFlowShadow => {
                let (x0, y0) = (place(SHADOW_MM.0, self.at.0), place(SHADOW_MM.1, self.at.1));
                Region { x0: x0 as f32, x1: (x0 + SHADOW_MM.0) as f32, y0: y0 as f32, y1: (y0 + SHADOW_MM.1) as f32, pd: 0.75, temp: -120.0 }
            }
            _ => return None,
        };
        Some(r)
    }
}

#[derive(Clone, Debug)]
pub(super) struct O2Rise {
    pub(super) layer: u32,
    pub(super) start_ns: TimeNs,
    pub(super) end_ns: TimeNs,
    /// Whether the extra log record at `start_ns` was emitted.
    pub(super) marker_sent: bool,
    pub(super) recorded: bool,
}

/// Width of a recoater streak, mm.
pub(super) const STREAK_MM: f64 = 12.0;
/// Size of a gas-flow shadow, mm.
pub(super) const SHADOW_MM: (f64, f64) = (60.0, 40.0);
/// What a fogged window leaves of the photodiodes' signal.
pub(super) const FOG_FACTOR: f32 = 0.85;

/// A region of the plate whose melt reads differently in a layer: photodiodes × `pd`,
/// temperature + `temp`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Region {
    pub(super) x0: f32,
    pub(super) x1: f32,
    pub(super) y0: f32,
    pub(super) y1: f32,
    pub(super) pd: f32,
    pub(super) temp: f32,
}

impl Region {
    /// Rewrites the block's samples inside the region.
    pub(super) fn apply(&self, c: &mut Columns<'_>) {
        for i in 0..c.xs.len() {
            let (x, y) = (c.xs[i], c.ys[i]);
            if x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1 {
                c.on[i] *= self.pd;
                c.off[i] *= self.pd;
                c.temp[i] += self.temp;
            }
        }
    }
}

/// The anomalies planned for machine `i` (from 1) of the fleet `cfg`. With
/// `anomaly_rate_per_layer` = 0: kind `i mod 4` on layer `min(1, layers - 1)`, and for machine 1 a
/// second hot spot on another laser. Otherwise each layer from `anomaly_from_layer` on gets the
/// rate's integer part, plus one with the fraction as a chance, of kinds drawn from
/// `anomaly_kinds` (a kind already planned on that layer and laser is not planted twice).
pub(super) fn plans_for(i: u32, cfg: &SimulatorConfig, rng: &mut SplitMix) -> Vec<Plan> {
    let mut plans: Vec<Plan> = Vec::new();
    let rate = cfg.anomaly_rate_per_layer;
    if cfg.anomalies && cfg.layers > 0 && cfg.lasers > 0 && rate == 0.0 {
        let layer = cfg.layers.saturating_sub(1).min(1);
        let kind = match i % 4 {
            0 => AnomalyKind::HotSpot,
            1 => AnomalyKind::PowerDrop,
            2 => AnomalyKind::O2Rise,
            _ => AnomalyKind::LackOfFusion,
        };
        let laser = 1 + rng.below(u64::from(cfg.lasers)) as u8;
        plans.push(Plan { kind, layer, laser: if kind.machine_wide() { 0 } else { laser }, at: (0.0, 0.0) });
        if i == 1 {
            let other = if cfg.lasers > 1 { laser % cfg.lasers + 1 } else { laser };
            plans.push(Plan { kind: AnomalyKind::HotSpot, layer, laser: other, at: (0.0, 0.0) });
        }
    }
    if cfg.anomalies && cfg.lasers > 0 && rate > 0.0 && !cfg.anomaly_kinds.is_empty() {
        for layer in cfg.anomaly_from_layer..cfg.layers {
            let n = rate.floor() as u32 + u32::from(rng.unit() < rate.fract());
            for _ in 0..n {
                let kind = cfg.anomaly_kinds[rng.below(cfg.anomaly_kinds.len() as u64) as usize];
                let laser = if kind.machine_wide() { 0 } else { 1 + rng.below(u64::from(cfg.lasers)) as u8 };
                let at = (rng.unit(), rng.unit());
                // An O2 rise lasts 2 s: one per layer at most.
                if !plans.iter().any(|p| p.kind == kind && p.layer == layer && p.laser == laser) {
                    plans.push(Plan { kind, layer, laser, at });
                }
            }
        }
    }
    if cfg.power_drift_pct_per_layer > 0.0 && cfg.layers > 1 && cfg.lasers > 0 {
        let laser = 1 + rng.below(u64::from(cfg.lasers)) as u8;
        plans.push(Plan { kind: AnomalyKind::PowerDrift, layer: (cfg.layers / 2).max(1), laser, at: (0.0, 0.0) });
    }
    plans
}

/// The fraction of its power laser `laser` delivers in layer `layer`, by the drift `plans` hold.
pub(super) fn drift_factor(plans: &[Plan], cfg_pct_per_layer: f64, layer: u32, laser: u8) -> Option<f64> {
    let p = plans.iter().find(|p| p.kind == AnomalyKind::PowerDrift && p.laser == laser && p.layer <= layer)?;
    Some((1.0 - cfg_pct_per_layer / 100.0 * f64::from(layer - p.layer + 1)).max(0.05))
}

/// The block an anomaly is applied to: which build, layer and laser (for the ground truth),
/// the index of its first sample in the layer, its start time and sample spacing.
pub(super) struct Site<'a> {
    pub(super) build: &'a BuildId,
    pub(super) layer: u32,
    pub(super) laser: u8,
    pub(super) first: u64,
    pub(super) t0: TimeNs,
    pub(super) dt: i64,
}

/// A block's sample columns, already filled by the normal model.
pub(super) struct Columns<'a> {
    pub(super) power: &'a mut [f32],
    pub(super) on: &'a mut [f32],
    pub(super) off: &'a mut [f32],
    pub(super) temp: &'a mut [f32],
    pub(super) xs: &'a [f32],
    pub(super) ys: &'a [f32],
}

impl PowerDropSpan {
    /// Re-models the block's samples inside the drop at [`DROP_POWER_W`]; records the ground
    /// truth (the whole span) the first time the drop is reached.
    pub(super) fn apply(&mut self, site: &Site<'_>, melt: (f32, f32, f32), nz: [&[f32]; 4], c: &mut Columns<'_>, truth: &mut Vec<InjectedAnomaly>) {
        let (first, t0, dt) = (site.first, site.t0, site.dt);
        let n = c.power.len();
        let (power, on, off, temp) = (&mut *c.power, &mut *c.on, &mut *c.off, &mut *c.temp);
        let lo = self.from.max(first);
        let hi = self.to.min(first + n as u64);
        if lo < hi {
            let (a, b) = ((lo - first) as usize, (hi - first) as usize);
            let nz2 = [&nz[0][a..b], &nz[1][a..b], &nz[2][a..b], &nz[3][a..b]];
            model(DROP_POWER_W, melt.0, melt.1, melt.2, nz2, &mut power[a..b], &mut on[a..b], &mut off[a..b], &mut temp[a..b]);
            if !self.recorded {
                self.recorded = true;
                let layer_start = t0 - first as i64 * dt;
                let (from, to) = (self.from as i64, self.to as i64);
                let gt = InjectedAnomaly {
                    build_id: site.build.to_string(),
                    layer: site.layer,
                    laser: Some(site.laser),
                    kind: AnomalyKind::PowerDrop,
                    start_ns: layer_start + from * dt,
                    end_ns: layer_start + to * dt,
                    x_mm: None,
                    y_mm: None,
                };
                truth.push(gt);
            }
        }
    }
}

impl HotCell {
    /// Overwrites the signals of the block's samples inside the cell with hot values; opens
    /// the ground truth on the first hot sample and extends its end on every later one.
    pub(super) fn apply(&mut self, site: &Site<'_>, nz: [&[f32]; 4], c: &mut Columns<'_>, truth: &mut Vec<InjectedAnomaly>) {
        let (t0, dt) = (site.t0, site.dt);
        let n = c.power.len();
        let (on, off, temp, xs, ys) = (&mut *c.on, &mut *c.off, &mut *c.temp, c.xs, c.ys);
        let mut hits: Option<(usize, usize)> = None;
        for i in 0..n {
            let (x, y) = (xs[i], ys[i]);
            if x >= self.x0 && x < self.x1 && y >= self.y0 && y < self.y1 {
                on[i] = HOT_PD_ON + AMP_PD_ON * nz[1][i];
                off[i] = HOT_PD_OFF + AMP_PD_OFF * nz[2][i];
                temp[i] = HOT_TEMP + AMP_TEMP * nz[3][i];
                hits = Some(hits.map_or((i, i), |(a, _)| (a, i)));
            }
        }
        if let Some((a, b)) = hits {
            let (start, end) = (t0 + a as i64 * dt, t0 + (b as i64 + 1) * dt);
            match self.truth.and_then(|k| truth.get_mut(k)) {
                Some(gt) => gt.end_ns = end,
                None => {
                    self.truth = Some(truth.len());
                    truth.push(InjectedAnomaly {
                        build_id: site.build.to_string(),
                        layer: site.layer,
                        laser: Some(site.laser),
                        kind: AnomalyKind::HotSpot,
                        start_ns: start,
                        end_ns: end,
                        x_mm: Some((f64::from(self.x0), f64::from(self.x1))),
                        y_mm: Some((f64::from(self.y0), f64::from(self.y1))),
                    });
                }
            }
        }
    }
}
