//! The simulated fleet: deterministic PBF-LB/M machines that stream melt-pool sample blocks,
//! layer events and machine-log records, optionally with injected anomalies whose ground
//! truth is kept, so that what the engine reports can be checked against what was planted.
//!
//! # Model
//! Machine `i` (from 1) runs build `{build_prefix}{i:03}`, starting a few deterministic
//! milliseconds after `start_time` so that the machines interleave. Each layer is a `start`
//! event (with the laser parameters), `layer_ms` of exposure during which every laser emits
//! `sample_rate_hz` samples in blocks of `block_ms`, an `end` event, and a recoat
//! (`recoat_start`, `recoat_end`) before the next layer; the last layer is followed by
//! `build_end`. Machine-log records (`o2_ppm`, `chamber_pressure_mbar`, `gas_flow_m3_h`,
//! `plate_temp_c`) come every 250 ms of event time.
//!
//! Each laser scans its own field of the 400 × 400 mm plate (2 × 2 fields for 4 lasers) in a
//! serpentine raster at its scan speed (1.2 m/s: 12 µm per 10 µs sample). A real layer takes
//! minutes; so that a simulated layer of a few seconds still covers the whole field, the
//! layer's scan lines are spread over the field (line pitch = field height / lines per layer,
//! never less than the hatch spacing). Normal values stay well inside the demo rules:
//! `laser_power_w` ≈ 270–290 W, `photodiode_on_axis` ≈ 2000 (< 2300), `temperature_c` ≈ 1600
//! (< 1660), `o2_ppm` ≈ 200, energy density ≈ 70 J/mm³.
//!
//! # Anomalies
//! With `anomalies = true`, machine `i` gets anomaly kind `i mod 4` (hot spot, power drop, O2
//! rise, lack of fusion) on layer `min(1, layers - 1)`, and machine 1 also gets a hot spot on
//! another laser; lasers, regions and times are drawn from the seed. A 3-machine fleet thus
//! holds every kind. [`Simulator::ground_truth`] lists each anomaly once its first affected
//! record has been generated, with half-open times `[start_ns, end_ns)`.
//!
//! # Cost
//! Generating a block allocates nothing: the columns are computed into reusable scratch
//! buffers (then copied into the batch arena by `push_block`), and the noise is read from a
//! precomputed table at random offsets, so a sample costs a few multiply-adds.

pub mod r1;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::input::batch::{BlockColumns, BlockHeader, InputId, RecordBatch, SourceSpan, ABSENT, COL_X, COL_Y};
use crate::input::decode::NO_LAYER;
use crate::input::event::{BuildId, Channel, LaserParams, LayerEvent, LayerPhase, LogRecord, TimeNs};
use crate::input::time::parse_rfc3339_ns;
use crate::topology::SimulatorConfig;

const MS: i64 = 1_000_000;
/// Period of the machine-log records.
const LOG_PERIOD_NS: i64 = 250 * MS;
/// Duration of an O2 rise.
const O2_RISE_NS: i64 = 2_000 * MS;
/// Used when `start_time` does not parse (2024-01-15T10:30:00Z).
const DEFAULT_START_NS: TimeNs = 1_705_314_600_000_000_000;
const PLATE_MM: f64 = 400.0;
const MARGIN_MM: f64 = 5.0;
const HOT_CELL_MM: f64 = 20.0;
const SPEED_MM_S: f64 = 1200.0;
const LOF_SPEED_MM_S: f64 = 2800.0;
const HATCH_MM: f64 = 0.11;
const THICKNESS_UM: f64 = 30.0;
const NOMINAL_POWER_W: f64 = 280.0;
const DROP_POWER_W: f32 = 100.0;
const PD_ON_PER_W: f64 = 2000.0 / 280.0;
const PD_OFF_PER_W: f64 = 1200.0 / 280.0;
const TEMP_PER_W: f32 = 0.3;
// Peak noise amplitudes: the noise table lies in [-1, 1].
const AMP_POWER: f32 = 2.0;
const AMP_PD_ON: f32 = 150.0;
const AMP_PD_OFF: f32 = 100.0;
const AMP_TEMP: f32 = 40.0;
const HOT_PD_ON: f32 = 3400.0;
const HOT_PD_OFF: f32 = 1900.0;
const HOT_TEMP: f32 = 1800.0;
const RANK_EVENT: u8 = 0;
const RANK_BLOCK: u8 = 1;
/// Columns per sample the simulator emits.
const N_SIM_COLS: usize = 6;

/// Kind of an injected anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A 20 × 20 mm cell of one laser's layer melts too hot: `photodiode_on_axis` > 3200 and `temperature_c` > 1750 in it.
    HotSpot,
    /// One laser's power falls to ≈ 100 W for a fifth of a layer.
    PowerDrop,
    /// Chamber oxygen rises above 1500 ppm for 2 s.
    O2Rise,
    /// One laser scans a layer so fast (2.8 m/s) that its energy density falls below 35 J/mm³.
    LackOfFusion,
}

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

/// splitmix64: tiny, fast and good enough for simulated noise.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f64 {
        2.0 * self.unit() - 1.0
    }

    /// Uniform in [0, n); 0 when n is 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The rectangle a laser scans, margins excluded.
#[derive(Clone, Copy, Debug)]
struct Field {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

impl Field {
    /// Field of laser `j` (0-based) among `lasers`, on a near-square grid of the plate.
    fn of(j: usize, lasers: usize) -> Field {
        let lasers = lasers.max(1);
        let mut cols = 1;
        while cols * cols < lasers {
            cols += 1;
        }
        let rows = lasers.div_ceil(cols);
        let (qw, qh) = (PLATE_MM / cols as f64, PLATE_MM / rows as f64);
        let (qx, qy) = ((j % cols) as f64, (j / cols) as f64);
        Field { x0: qx * qw + MARGIN_MM, y0: qy * qh + MARGIN_MM, w: qw - 2.0 * MARGIN_MM, h: qh - 2.0 * MARGIN_MM }
    }
}

#[derive(Clone, Debug)]
struct PowerDropSpan {
    /// Sample indices within the layer, half-open.
    from: u64,
    to: u64,
    recorded: bool,
}

#[derive(Clone, Debug)]
struct HotCell {
    x0: f32,
    x1: f32,
    y0: f32,
    y1: f32,
    /// Index of its entry in the ground truth, once a hot sample was generated.
    truth: Option<usize>,
}

/// One laser's state for the current layer.
#[derive(Clone, Debug)]
struct LaserLayer {
    power_w: f32,
    field: Field,
    step_mm: f64,
    pitch_mm: f64,
    y_phase_mm: f64,
    k_on: f32,
    k_off: f32,
    t_base: f32,
    drop: Option<PowerDropSpan>,
    hot: Option<HotCell>,
}

impl LaserLayer {
    fn y_of(&self, line: f64) -> f64 {
        self.field.y0 + (self.y_phase_mm + line * self.pitch_mm).rem_euclid(self.field.h)
    }

    /// Position of sample `i` of the layer on the serpentine raster.
    fn position(&self, i: u64) -> (f64, f64) {
        let s = i as f64 * self.step_mm;
        let line = (s / self.field.w).floor();
        let u = s - line * self.field.w;
        let x = if (line as u64) & 1 == 0 { self.field.x0 + u } else { self.field.x0 + self.field.w - u };
        (x, self.y_of(line))
    }

    /// Positions of samples `first..first + xs.len()`.
    fn path(&self, first: u64, xs: &mut [f32], ys: &mut [f32]) {
        let n = xs.len();
        let w = self.field.w;
        let s0 = first as f64 * self.step_mm;
        let line = (s0 / w).floor();
        let u = s0 - line * w;
        if n > 0 && u + self.step_mm * ((n - 1) as f64) < w {
            // The whole block lies on one scan line: x is linear, y constant.
            let (x_start, slope) = if (line as u64) & 1 == 0 {
                (self.field.x0 + u, self.step_mm)
            } else {
                (self.field.x0 + w - u, -self.step_mm)
            };
            let (x_start, slope) = (x_start as f32, slope as f32);
            for (i, x) in xs.iter_mut().enumerate() {
                *x = x_start + slope * i as f32;
            }
            ys.fill(self.y_of(line) as f32);
        } else {
            for (i, (x, y)) in xs.iter_mut().zip(ys.iter_mut()).enumerate() {
                let (px, py) = self.position(first + i as u64);
                *x = px as f32;
                *y = py as f32;
            }
        }
    }
}

/// The per-sample model over one range: power, both photodiodes and temperature.
#[allow(clippy::too_many_arguments)]
#[inline]
fn model(
    p: f32,
    k_on: f32,
    k_off: f32,
    t_base: f32,
    noise: [&[f32]; 4],
    power: &mut [f32],
    on: &mut [f32],
    off: &mut [f32],
    temp: &mut [f32],
) {
    let n = power.len();
    let (on, off, temp) = (&mut on[..n], &mut off[..n], &mut temp[..n]);
    let (n_p, n_on, n_off, n_t) = (&noise[0][..n], &noise[1][..n], &noise[2][..n], &noise[3][..n]);
    for i in 0..n {
        let pw = p + AMP_POWER * n_p[i];
        power[i] = pw;
        on[i] = k_on * pw + AMP_PD_ON * n_on[i];
        off[i] = k_off * pw + AMP_PD_OFF * n_off[i];
        temp[i] = t_base + TEMP_PER_W * pw + AMP_TEMP * n_t[i];
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    LayerStart,
    Blocks,
    LayerEnd,
    RecoatStart,
    RecoatEnd,
    BuildEnd,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    kind: AnomalyKind,
    layer: u32,
    laser: u8,
}

#[derive(Clone, Debug)]
struct O2Rise {
    layer: u32,
    start_ns: TimeNs,
    end_ns: TimeNs,
    /// Whether the extra log record at `start_ns` was emitted.
    marker_sent: bool,
    recorded: bool,
}

/// What a machine emits next.
enum Item {
    Log(TimeNs),
    Stage(TimeNs),
}

/// Fleet-wide constants derived from the configuration.
#[derive(Debug)]
struct Setup {
    lasers: usize,
    layers: u32,
    layer_ns: i64,
    recoat_ns: i64,
    dt_ns: i64,
    block_len: usize,
    block_ns: i64,
    samples_per_layer: u64,
    blocks_per_layer: u64,
    batch_blocks: usize,
    noise: Vec<f32>,
    log_keys: [Arc<str>; 4],
}

/// One machine running one build.
#[derive(Debug)]
struct Machine {
    build: BuildId,
    start_ns: TimeNs,
    end_ns: TimeNs,
    rng: SplitMix,
    stage: Stage,
    layer: u32,
    block: u64,
    laser: usize,
    next_tick_ns: TimeNs,
    o2: Option<O2Rise>,
    plans: Vec<Plan>,
    lasers: Vec<LaserLayer>,
}

impl Machine {
    fn layer_start_ns(&self, s: &Setup, k: u32) -> TimeNs {
        self.start_ns.saturating_add(i64::from(k).saturating_mul(s.layer_ns.saturating_add(s.recoat_ns)))
    }

    fn stage_ns(&self, s: &Setup) -> Option<TimeNs> {
        let start = self.layer_start_ns(s, self.layer);
        let end = start.saturating_add(s.layer_ns);
        Some(match self.stage {
            Stage::LayerStart => start,
            Stage::Blocks => start.saturating_add((self.block as i64).saturating_mul(s.block_ns)),
            Stage::LayerEnd | Stage::RecoatStart => end,
            Stage::RecoatEnd => end.saturating_add(s.recoat_ns),
            Stage::BuildEnd => self.end_ns,
            Stage::Done => return None,
        })
    }

    fn log_ns(&self) -> Option<TimeNs> {
        let mut t = self.next_tick_ns;
        if let Some(o) = &self.o2 {
            if !o.marker_sent {
                t = t.min(o.start_ns);
            }
        }
        (t <= self.end_ns).then_some(t)
    }

    fn next_item(&self, s: &Setup) -> Option<Item> {
        let st = self.stage_ns(s)?;
        match self.log_ns() {
            Some(lt) if lt <= st => Some(Item::Log(lt)),
            _ => Some(Item::Stage(st)),
        }
    }

    /// Queue key: time, then events before blocks.
    fn next_key(&self, s: &Setup) -> Option<(TimeNs, u8)> {
        Some(match self.next_item(s)? {
            Item::Log(t) => (t, RANK_EVENT),
            Item::Stage(t) => (t, if self.stage == Stage::Blocks { RANK_BLOCK } else { RANK_EVENT }),
        })
    }

    fn has_plan(&self, kind: AnomalyKind, layer: u32, laser: u8) -> bool {
        self.plans.iter().any(|p| p.kind == kind && p.layer == layer && p.laser == laser)
    }

    fn truth(&self, kind: AnomalyKind, layer: u32, laser: Option<u8>, start_ns: i64, end_ns: i64) -> InjectedAnomaly {
        InjectedAnomaly { build_id: self.build.to_string(), layer, laser, kind, start_ns, end_ns, x_mm: None, y_mm: None }
    }

    /// Emits the machine's next record into `batch` at source offset `offset`.
    fn emit(
        &mut self,
        s: &Setup,
        scratch: &mut [Vec<f32>; N_SIM_COLS],
        truth: &mut Vec<InjectedAnomaly>,
        batch: &mut RecordBatch,
        offset: u64,
    ) {
        let Some(item) = self.next_item(s) else { return };
        let t = match item {
            Item::Log(t) => return self.emit_log(s, truth, batch, t, offset),
            Item::Stage(t) => t,
        };
        let layer = self.layer;
        let event = |phase: LayerPhase, build: &BuildId| LayerEvent {
            build: build.clone(),
            layer,
            phase,
            t_ns: t,
            z_um: None,
            params: Vec::new(),
            source_offset: offset,
        };
        match self.stage {
            Stage::LayerStart => self.start_layer(s, truth, batch, t, offset),
            Stage::Blocks => self.emit_block(s, scratch, truth, batch, t, offset),
            Stage::LayerEnd => {
                batch.push_layer(event(LayerPhase::End, &self.build));
                self.stage = if self.layer + 1 < s.layers { Stage::RecoatStart } else { Stage::BuildEnd };
            }
            Stage::RecoatStart => {
                batch.push_layer(event(LayerPhase::RecoatStart, &self.build));
                self.stage = Stage::RecoatEnd;
            }
            Stage::RecoatEnd => {
                batch.push_layer(event(LayerPhase::RecoatEnd, &self.build));
                self.layer += 1;
                self.stage = Stage::LayerStart;
            }
            Stage::BuildEnd => {
                batch.push_layer(event(LayerPhase::BuildEnd, &self.build));
                self.stage = Stage::Done;
            }
            Stage::Done => {}
        }
    }

    fn emit_log(&mut self, s: &Setup, truth: &mut Vec<InjectedAnomaly>, batch: &mut RecordBatch, t: TimeNs, offset: u64) {
        if t == self.next_tick_ns {
            self.next_tick_ns = self.next_tick_ns.saturating_add(LOG_PERIOD_NS);
        }
        let mut o2 = 200.0 + 30.0 * self.rng.sym();
        let mut record = None;
        if let Some(r) = &mut self.o2 {
            if t == r.start_ns {
                r.marker_sent = true;
            }
            if (r.start_ns..r.end_ns).contains(&t) {
                o2 = 1600.0 + 100.0 * self.rng.sym();
                if !r.recorded {
                    r.recorded = true;
                    record = Some((r.layer, r.start_ns, r.end_ns));
                }
            }
        }
        if let Some((layer, a, b)) = record {
            truth.push(self.truth(AnomalyKind::O2Rise, layer, None, a, b));
        }
        // Rounded as a machine reports them (which also keeps the JSON round trip exact).
        let round = |v: f64, scale: f64| (v * scale).round() / scale;
        let values = vec![
            (s.log_keys[0].clone(), round(1012.0 + 3.0 * self.rng.sym(), 100.0)),
            (s.log_keys[1].clone(), round(60.0 + 1.0 * self.rng.sym(), 100.0)),
            (s.log_keys[2].clone(), round(o2, 10.0)),
            (s.log_keys[3].clone(), round(80.0 + 0.5 * self.rng.sym(), 10.0)),
        ];
        batch.push_log(LogRecord { build: self.build.clone(), t_ns: t, values, source_offset: offset });
    }

    fn start_layer(&mut self, s: &Setup, truth: &mut Vec<InjectedAnomaly>, batch: &mut RecordBatch, t: TimeNs, offset: u64) {
        let k = self.layer;
        let n = s.samples_per_layer;
        let dt_s = s.dt_ns as f64 * 1e-9;
        let mut params = Vec::with_capacity(s.lasers);
        self.lasers.clear();
        for j in 0..s.lasers {
            let laser = (j + 1) as u8;
            let lof = self.has_plan(AnomalyKind::LackOfFusion, k, laser);
            let power = NOMINAL_POWER_W - 10.0 + 5.0 * (j % 5) as f64;
            let speed = if lof { LOF_SPEED_MM_S } else { SPEED_MM_S };
            let field = Field::of(j, s.lasers);
            let step_mm = speed * dt_s;
            let lines = (step_mm * n as f64 / field.w).ceil().max(1.0);
            let pitch_mm = (field.h / lines).max(HATCH_MM);
            // Melt-pool brightness and temperature fall with the energy input.
            let g = 0.5 + 0.5 * SPEED_MM_S / speed;
            let drift = 10.0 * self.rng.sym();
            let mut ll = LaserLayer {
                power_w: power as f32,
                field,
                step_mm,
                pitch_mm,
                y_phase_mm: if k % 2 == 1 { pitch_mm / 2.0 } else { 0.0 },
                k_on: (PD_ON_PER_W * g) as f32,
                k_off: (PD_OFF_PER_W * g) as f32,
                t_base: (1600.0 + drift - f64::from(TEMP_PER_W) * NOMINAL_POWER_W - 300.0 * (1.0 - g)) as f32,
                drop: None,
                hot: None,
            };
            if n > 0 && self.has_plan(AnomalyKind::PowerDrop, k, laser) {
                let len = (n / 5).max(1);
                let lo = n / 10;
                let hi = n.saturating_sub(len + n / 10).max(lo);
                let from = lo + self.rng.below(hi - lo + 1);
                ll.drop = Some(PowerDropSpan { from, to: (from + len).min(n), recorded: false });
            }
            if n > 0 && self.has_plan(AnomalyKind::HotSpot, k, laser) {
                // A cell the path crosses: the one holding a sample drawn from the middle of the layer.
                let i = (n / 5 + self.rng.below(n / 5 * 3 + 1)).min(n - 1);
                let (x, y) = ll.position(i);
                let cx = (x / HOT_CELL_MM).floor() * HOT_CELL_MM;
                let cy = (y / HOT_CELL_MM).floor() * HOT_CELL_MM;
                let (x1, y1) = (cx + HOT_CELL_MM, cy + HOT_CELL_MM);
                ll.hot = Some(HotCell { x0: cx as f32, x1: x1 as f32, y0: cy as f32, y1: y1 as f32, truth: None });
            }
            if lof {
                truth.push(self.truth(AnomalyKind::LackOfFusion, k, Some(laser), t, t.saturating_add(s.layer_ns)));
            }
            params.push(LaserParams {
                laser,
                style: "core".to_string(),
                power_w: power,
                scan_speed_mm_s: speed,
                hatch_spacing_mm: HATCH_MM,
                layer_thickness_um: THICKNESS_UM,
            });
            self.lasers.push(ll);
        }
        let z_um = (i64::from(k) + 1) * THICKNESS_UM as i64;
        batch.push_layer(LayerEvent { build: self.build.clone(), layer: k, phase: LayerPhase::Start, t_ns: t, z_um: Some(z_um), params, source_offset: offset });
        self.block = 0;
        self.laser = 0;
        self.stage = if s.blocks_per_layer > 0 && s.lasers > 0 { Stage::Blocks } else { Stage::LayerEnd };
    }

    fn emit_block(
        &mut self,
        s: &Setup,
        scratch: &mut [Vec<f32>; N_SIM_COLS],
        truth: &mut Vec<InjectedAnomaly>,
        batch: &mut RecordBatch,
        t0: TimeNs,
        offset: u64,
    ) {
        let j = self.laser;
        let first = self.block * s.block_len as u64;
        let n = s.samples_per_layer.saturating_sub(first).min(s.block_len as u64) as usize;
        let Some(ll) = self.lasers.get_mut(j) else { return };
        let [temp, on, off, power, xs, ys] = scratch;
        let (temp, on, off, power, xs, ys) = (&mut temp[..n], &mut on[..n], &mut off[..n], &mut power[..n], &mut xs[..n], &mut ys[..n]);
        ll.path(first, xs, ys);
        // Four noise streams from one draw: 16-bit fractions of the table's free span.
        let span = (s.noise.len() - n + 1) as u64;
        let r = self.rng.next();
        let o = |k: u32| ((((r >> (16 * k)) & 0xFFFF) * span) >> 16) as usize;
        let (o0, o1, o2, o3) = (o(0), o(1), o(2), o(3));
        let nz = [&s.noise[o0..o0 + n], &s.noise[o1..o1 + n], &s.noise[o2..o2 + n], &s.noise[o3..o3 + n]];
        model(ll.power_w, ll.k_on, ll.k_off, ll.t_base, nz, power, on, off, temp);
        let dt = s.dt_ns;
        if let Some(d) = &mut ll.drop {
            let lo = d.from.max(first);
            let hi = d.to.min(first + n as u64);
            if lo < hi {
                let (a, b) = ((lo - first) as usize, (hi - first) as usize);
                let nz2 = [&nz[0][a..b], &nz[1][a..b], &nz[2][a..b], &nz[3][a..b]];
                model(DROP_POWER_W, ll.k_on, ll.k_off, ll.t_base, nz2, &mut power[a..b], &mut on[a..b], &mut off[a..b], &mut temp[a..b]);
                if !d.recorded {
                    d.recorded = true;
                    let layer_start = t0 - first as i64 * dt;
                    let (from, to) = (d.from as i64, d.to as i64);
                    let gt = InjectedAnomaly {
                        build_id: self.build.to_string(),
                        layer: self.layer,
                        laser: Some((j + 1) as u8),
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
        if let Some(h) = &mut ll.hot {
            let mut hits: Option<(usize, usize)> = None;
            for i in 0..n {
                let (x, y) = (xs[i], ys[i]);
                if x >= h.x0 && x < h.x1 && y >= h.y0 && y < h.y1 {
                    on[i] = HOT_PD_ON + AMP_PD_ON * nz[1][i];
                    off[i] = HOT_PD_OFF + AMP_PD_OFF * nz[2][i];
                    temp[i] = HOT_TEMP + AMP_TEMP * nz[3][i];
                    hits = Some(hits.map_or((i, i), |(a, _)| (a, i)));
                }
            }
            if let Some((a, b)) = hits {
                let (start, end) = (t0 + a as i64 * dt, t0 + (b as i64 + 1) * dt);
                match h.truth.and_then(|k| truth.get_mut(k)) {
                    Some(gt) => gt.end_ns = end,
                    None => {
                        h.truth = Some(truth.len());
                        truth.push(InjectedAnomaly {
                            build_id: self.build.to_string(),
                            layer: self.layer,
                            laser: Some((j + 1) as u8),
                            kind: AnomalyKind::HotSpot,
                            start_ns: start,
                            end_ns: end,
                            x_mm: Some((f64::from(h.x0), f64::from(h.x1))),
                            y_mm: Some((f64::from(h.y0), f64::from(h.y1))),
                        });
                    }
                }
            }
        }
        let mut cols = BlockColumns::default();
        cols.channels[Channel::TemperatureC.index()] = Some(temp);
        cols.channels[Channel::PhotodiodeOnAxis.index()] = Some(on);
        cols.channels[Channel::PhotodiodeOffAxis.index()] = Some(off);
        cols.channels[Channel::LaserPowerW.index()] = Some(power);
        cols.x_mm = Some(xs);
        cols.y_mm = Some(ys);
        batch.push_block(&self.build, self.layer, (j + 1) as u8, t0, dt, n as u32, cols, offset);
        self.laser += 1;
        if self.laser >= s.lasers {
            self.laser = 0;
            self.block += 1;
            if self.block >= s.blocks_per_layer {
                self.stage = Stage::LayerEnd;
            }
        }
    }
}

/// A deterministic fleet of simulated machines, producing batches in event-time order.
pub struct Simulator {
    input: InputId,
    setup: Setup,
    machines: Vec<Machine>,
    queue: BinaryHeap<Reverse<(TimeNs, u8, u32)>>,
    scratch: [Vec<f32>; N_SIM_COLS],
    truth: Vec<InjectedAnomaly>,
    seq: u64,
    offset: u64,
    generated_ns: TimeNs,
    total_samples: u64,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("input", &self.input)
            .field("machines", &self.machines.len())
            .field("seq", &self.seq)
            .field("offset", &self.offset)
            .field("generated_ns", &self.generated_ns)
            .field("total_samples", &self.total_samples)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator of the fleet `cfg` feeding input `input`. Never panics: an unparsable
    /// `start_time` falls back to 2024-01-15T10:30:00Z and zero rates or sizes count as one.
    pub fn new(cfg: &SimulatorConfig, input: InputId) -> Simulator {
        let ms_to_ns = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(MS);
        let rate = u64::from(cfg.sample_rate_hz.max(1));
        let dt_ns = (1_000_000_000 / rate).max(1) as i64;
        let samples_per_layer = rate.saturating_mul(cfg.layer_ms) / 1000;
        let block_len = (rate.saturating_mul(cfg.block_ms) / 1000).clamp(1, samples_per_layer.max(1)) as usize;
        let setup = Setup {
            lasers: usize::from(cfg.lasers),
            layers: cfg.layers,
            layer_ns: ms_to_ns(cfg.layer_ms),
            recoat_ns: ms_to_ns(cfg.recoat_ms),
            dt_ns,
            block_len,
            block_ns: dt_ns.saturating_mul(block_len as i64),
            samples_per_layer,
            blocks_per_layer: samples_per_layer.div_ceil(block_len as u64),
            batch_blocks: cfg.batch_blocks.max(1),
            noise: noise_table(cfg.seed, (2 * block_len).max(8192)),
            log_keys: ["chamber_pressure_mbar", "gas_flow_m3_h", "o2_ppm", "plate_temp_c"].map(Arc::from),
        };
        let start = parse_rfc3339_ns(&cfg.start_time).unwrap_or(DEFAULT_START_NS);
        let mut machines = Vec::with_capacity(cfg.machines as usize);
        for i in 1..=cfg.machines {
            let mut rng = SplitMix(cfg.seed ^ u64::from(i).wrapping_mul(0xD1B5_4A32_D192_ED03));
            rng.next();
            let start_ns = start.saturating_add(i64::from(i - 1) * 3 * MS + rng.below(1000) as i64 * 1000);
            let mut plans = Vec::new();
            if cfg.anomalies && cfg.layers > 0 && cfg.lasers > 0 {
                let layer = cfg.layers.saturating_sub(1).min(1);
                let kind = match i % 4 {
                    0 => AnomalyKind::HotSpot,
                    1 => AnomalyKind::PowerDrop,
                    2 => AnomalyKind::O2Rise,
                    _ => AnomalyKind::LackOfFusion,
                };
                let laser = 1 + rng.below(u64::from(cfg.lasers)) as u8;
                plans.push(Plan { kind, layer, laser: if kind == AnomalyKind::O2Rise { 0 } else { laser } });
                if i == 1 {
                    let other = if cfg.lasers > 1 { laser % cfg.lasers + 1 } else { laser };
                    plans.push(Plan { kind: AnomalyKind::HotSpot, layer, laser: other });
                }
            }
            let mut m = Machine {
                build: Arc::from(format!("{}{i:03}", cfg.build_prefix)),
                start_ns,
                end_ns: start_ns,
                rng,
                stage: if cfg.layers > 0 { Stage::LayerStart } else { Stage::BuildEnd },
                layer: 0,
                block: 0,
                laser: 0,
                next_tick_ns: start_ns,
                o2: None,
                plans,
                lasers: Vec::with_capacity(setup.lasers),
            };
            let last_exposure_ns = if cfg.layers > 0 { setup.layer_ns } else { 0 };
            m.end_ns = m.layer_start_ns(&setup, cfg.layers.saturating_sub(1)).saturating_add(last_exposure_ns);
            if let Some(p) = m.plans.iter().find(|p| p.kind == AnomalyKind::O2Rise) {
                let a = m.layer_start_ns(&setup, p.layer);
                let end_ns = a.saturating_add(O2_RISE_NS);
                m.o2 = Some(O2Rise { layer: p.layer, start_ns: a, end_ns, marker_sent: false, recorded: false });
            }
            machines.push(m);
        }
        let mut queue = BinaryHeap::with_capacity(machines.len());
        for (i, m) in machines.iter().enumerate() {
            if let Some((t, r)) = m.next_key(&setup) {
                queue.push(Reverse((t, r, i as u32)));
            }
        }
        let total_samples = u64::from(cfg.machines)
            .saturating_mul(u64::from(cfg.lasers))
            .saturating_mul(u64::from(cfg.layers))
            .saturating_mul(samples_per_layer);
        let generated_ns = machines.iter().map(|m| m.start_ns).min().unwrap_or(start);
        Simulator {
            input,
            scratch: std::array::from_fn(|_| vec![0.0; setup.block_len]),
            setup,
            machines,
            queue,
            truth: Vec::new(),
            seq: 0,
            offset: 0,
            generated_ns,
            total_samples,
        }
    }

    /// The next batch in event-time order across the fleet, or None when every build has ended.
    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.queue.is_empty() {
            return None;
        }
        let s = &self.setup;
        let mut batch = RecordBatch::with_capacity(0);
        batch.data.reserve(s.batch_blocks * s.block_len * N_SIM_COLS);
        batch.blocks.reserve(s.batch_blocks);
        let first = self.offset;
        let mut blocks = 0usize;
        while let Some(&Reverse((t, rank, mi))) = self.queue.peek() {
            // Once full, take only the events that fall inside the span already covered.
            if blocks >= s.batch_blocks && (rank == RANK_BLOCK || t > batch.max_t_ns) {
                break;
            }
            self.queue.pop();
            let Some(m) = self.machines.get_mut(mi as usize) else { continue };
            m.emit(s, &mut self.scratch, &mut self.truth, &mut batch, self.offset);
            self.offset += 1;
            if rank == RANK_BLOCK {
                blocks += 1;
            }
            if let Some((t, r)) = m.next_key(s) {
                self.queue.push(Reverse((t, r, mi)));
            }
        }
        batch.span = SourceSpan { input: self.input, seq: self.seq, first_offset: first, next_offset: self.offset };
        batch.records = self.offset - first;
        self.seq += 1;
        self.generated_ns = self.generated_ns.max(batch.max_t_ns);
        Some(batch)
    }

    /// Event time the simulator has generated up to (for real-time pacing).
    pub fn event_time_ns(&self) -> i64 {
        self.generated_ns
    }

    /// The injected anomalies so far (ground truth).
    pub fn ground_truth(&self) -> &[InjectedAnomaly] {
        &self.truth
    }

    /// Total samples a full run produces (for progress/bench): machines*lasers*layers*samples per layer.
    pub fn total_samples(&self) -> u64 {
        self.total_samples
    }
}

/// Bounded, roughly bell-shaped noise in [-1, 1] (mean of four uniforms), `len` values.
fn noise_table(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix(seed ^ 0x6E6F_6973_655F_7462);
    (0..len)
        .map(|_| {
            let sum: f64 = (0..4).map(|_| rng.unit()).sum();
            (sum / 2.0 - 1.0) as f32
        })
        .collect()
}

/// Writes a batch as JSON lines in the decoder's wire format (blocks as {"type":"block",...}, layer events as {"type":"layer",...}, logs as {"type":"log",...}); appends to `out`.
///
/// Records are merged by event time (logs, then layer events, then blocks at equal times).
/// Dead letters are not written.
pub fn write_json_lines(batch: &RecordBatch, out: &mut String) {
    let (mut bi, mut li, mut gi) = (0, 0, 0);
    loop {
        let kg = batch.logs.get(gi).map(|r| (r.t_ns, 0u8));
        let kl = batch.layers.get(li).map(|e| (e.t_ns, 1u8));
        let kb = batch.blocks.get(bi).map(|h| (h.t0_ns, 2u8));
        let Some((_, which)) = [kg, kl, kb].into_iter().flatten().min() else { break };
        match which {
            0 => {
                write_log(&batch.logs[gi], out);
                gi += 1;
            }
            1 => {
                write_layer(&batch.layers[li], out);
                li += 1;
            }
            _ => {
                write_block(batch, &batch.blocks[bi], out);
                bi += 1;
            }
        }
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_f64(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

fn write_block(batch: &RecordBatch, h: &BlockHeader, out: &mut String) {
    let name = batch.builds.get(h.build as usize).map(|b| &**b).unwrap_or("");
    out.push_str("{\"type\":\"block\",");
    match name.strip_prefix("sensor:") {
        Some(sensor) if h.layer == NO_LAYER => {
            out.push_str("\"sensor_id\":");
            push_json_str(out, sensor);
        }
        _ => {
            out.push_str("\"build_id\":");
            push_json_str(out, name);
            if h.layer != NO_LAYER {
                let _ = write!(out, ",\"layer\":{}", h.layer);
            }
        }
    }
    let _ = write!(out, ",\"laser\":{},\"t0_ns\":{},\"dt_ns\":{}", h.laser, h.t0_ns, h.dt_ns);
    let names = Channel::ALL.iter().map(|c| (c.index(), c.name())).chain([(COL_X, "x_mm"), (COL_Y, "y_mm")]);
    for (slot, col) in names {
        if h.offsets[slot] == ABSENT {
            continue;
        }
        let Some(vals) = batch.column(h, slot) else { continue };
        let _ = write!(out, ",\"{col}\":[");
        for (i, v) in vals.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if v.is_finite() {
                let _ = write!(out, "{v}");
            } else {
                out.push_str("null");
            }
        }
        out.push(']');
    }
    out.push_str("}\n");
}

fn write_layer(e: &LayerEvent, out: &mut String) {
    let phase = match e.phase {
        LayerPhase::Start => "start",
        LayerPhase::End => "end",
        LayerPhase::RecoatStart => "recoat_start",
        LayerPhase::RecoatEnd => "recoat_end",
        LayerPhase::BuildEnd => "build_end",
    };
    out.push_str("{\"type\":\"layer\",\"build_id\":");
    push_json_str(out, &e.build);
    let _ = write!(out, ",\"layer\":{},\"phase\":\"{phase}\",\"t_ns\":{}", e.layer, e.t_ns);
    if let Some(z) = e.z_um {
        let _ = write!(out, ",\"z_um\":{z}");
    }
    if !e.params.is_empty() {
        out.push_str(",\"params\":[");
        for (i, p) in e.params.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"laser\":{},\"style\":", p.laser);
            push_json_str(out, &p.style);
            out.push_str(",\"power_w\":");
            push_f64(out, p.power_w);
            out.push_str(",\"scan_speed_mm_s\":");
            push_f64(out, p.scan_speed_mm_s);
            out.push_str(",\"hatch_spacing_mm\":");
            push_f64(out, p.hatch_spacing_mm);
            out.push_str(",\"layer_thickness_um\":");
            push_f64(out, p.layer_thickness_um);
            out.push('}');
        }
        out.push(']');
    }
    out.push_str("}\n");
}

fn write_log(r: &LogRecord, out: &mut String) {
    out.push_str("{\"type\":\"log\",\"build_id\":");
    push_json_str(out, &r.build);
    let _ = write!(out, ",\"t_ns\":{},\"values\":{{", r.t_ns);
    for (i, (k, v)) in r.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, k);
        out.push(':');
        push_f64(out, *v);
    }
    out.push_str("}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::decode::{DecodeLimits, Decoder};

    fn fleet(seed: u64, layer_ms: u64) -> SimulatorConfig {
        SimulatorConfig {
            machines: 3,
            lasers: 4,
            sample_rate_hz: 100_000,
            layers: 4,
            layer_ms,
            recoat_ms: 10,
            block_ms: 1,
            seed,
            anomalies: true,
            batch_blocks: 64,
            ..SimulatorConfig::default()
        }
    }

    fn run(cfg: &SimulatorConfig) -> (Vec<RecordBatch>, Vec<InjectedAnomaly>) {
        let mut sim = Simulator::new(cfg, 7);
        let mut out = Vec::new();
        while let Some(b) = sim.next_batch() {
            out.push(b);
        }
        (out, sim.ground_truth().to_vec())
    }

    fn json(batches: &[RecordBatch]) -> String {
        let mut s = String::new();
        for b in batches {
            write_json_lines(b, &mut s);
        }
        s
    }

    fn pd_sum(batches: &[RecordBatch]) -> f64 {
        let ch = Channel::PhotodiodeOnAxis.index();
        batches.iter().flat_map(|b| b.blocks.iter().flat_map(move |h| b.column(h, ch).unwrap_or(&[]).iter())).map(|v| f64::from(*v)).sum()
    }

    #[test]
    fn deterministic_complete_ordered_and_every_kind() {
        let cfg = fleet(42, 40);
        let (a, truth) = run(&cfg);
        let (b, truth_b) = run(&cfg);
        assert_eq!(json(&a), json(&b));
        assert_eq!(truth, truth_b);
        let spans = |v: &[RecordBatch]| v.iter().map(|b| b.span).collect::<Vec<_>>();
        assert_eq!(spans(&a), spans(&b));
        let (c, _) = run(&fleet(43, 40));
        assert_ne!(json(&a), json(&c));

        let sim = Simulator::new(&cfg, 7);
        let total: u64 = a.iter().map(RecordBatch::sample_count).sum();
        assert_eq!(total, sim.total_samples());
        assert_eq!(total, 3 * 4 * 4 * 4000);

        let block_ns = 1_000_000;
        let mut prev_max = i64::MIN;
        let mut next_offset = 0;
        for (i, b) in a.iter().enumerate() {
            assert_eq!(b.span.seq, i as u64);
            assert_eq!(b.span.input, 7);
            assert_eq!(b.span.first_offset, next_offset);
            next_offset = b.span.next_offset;
            assert_eq!(b.records, (b.blocks.len() + b.layers.len() + b.logs.len()) as u64);
            assert_eq!(b.records, b.span.next_offset - b.span.first_offset);
            assert!(b.blocks.len() <= 64);
            assert!(b.dead.is_empty());
            for h in &b.blocks {
                assert!((b.span.first_offset..b.span.next_offset).contains(&h.source_offset));
                assert!(h.t0_ns >= prev_max.saturating_sub(block_ns), "batch {i}: {} < {prev_max}", h.t0_ns);
                assert_eq!(h.len, 100);
            }
            assert!(b.blocks.windows(2).all(|w| w[0].t0_ns <= w[1].t0_ns));
            assert!(b.layers.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
            assert!(b.logs.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
            prev_max = prev_max.max(b.max_t_ns);
        }
        for m in 1..=3 {
            let name = format!("sim-{m:03}");
            let evs: Vec<&LayerEvent> = a.iter().flat_map(|b| b.layers.iter()).filter(|e| *e.build == *name).collect();
            assert_eq!(evs.len(), 4 * 3 + 3, "{name}");
            assert_eq!(evs.last().map(|e| e.phase), Some(LayerPhase::BuildEnd));
            assert!(evs.iter().any(|e| e.phase == LayerPhase::Start && e.layer == 3 && e.z_um == Some(120)));
        }
        for kind in [AnomalyKind::HotSpot, AnomalyKind::PowerDrop, AnomalyKind::O2Rise, AnomalyKind::LackOfFusion] {
            assert!(truth.iter().any(|t| t.kind == kind), "{kind:?} missing from {truth:?}");
        }
        let none = SimulatorConfig { anomalies: false, ..cfg };
        assert!(run(&none).1.is_empty());
    }

    #[test]
    fn json_lines_decode_back() {
        let (batches, _) = run(&fleet(7, 20));
        let text = json(&batches);
        let mut dec = Decoder::new(0, DecodeLimits::default());
        let mut back = RecordBatch::with_capacity(1 << 16);
        for (i, line) in text.lines().enumerate() {
            dec.decode(line.as_bytes(), i as u64, i64::MAX / 2, &mut back);
        }
        assert!(back.dead.is_empty(), "{:?}", back.dead.first());
        let back = vec![back];
        let total: u64 = batches.iter().map(RecordBatch::sample_count).sum();
        assert_eq!(back[0].sample_count(), total);
        assert_eq!(pd_sum(&back), pd_sum(&batches));
        let layers: Vec<LayerEvent> = batches.iter().flat_map(|b| b.layers.iter().cloned()).collect();
        assert_eq!(back[0].layers, layers);
        let logs: Vec<LogRecord> = batches.iter().flat_map(|b| b.logs.iter().cloned()).collect();
        assert_eq!(back[0].logs, logs);
    }

    #[test]
    fn anomalies_cross_the_demo_thresholds_and_normal_data_does_not() {
        let (batches, truth) = run(&fleet(42, 40));
        fn matching<'a>(
            truth: &'a [InjectedAnomaly],
            kind: AnomalyKind,
            build: &'a str,
            layer: u32,
            laser: Option<u8>,
        ) -> impl Iterator<Item = &'a InjectedAnomaly> + 'a {
            truth.iter().filter(move |t| t.kind == kind && t.build_id == build && t.layer == layer && t.laser == laser)
        }
        let find = |kind, build, layer, laser| matching(&truth, kind, build, layer, laser);
        let (mut hot, mut dropped, mut normal) = (0u64, 0u64, 0u64);
        for b in &batches {
            for h in &b.blocks {
                let build = &*b.builds[h.build as usize];
                let col = |c: Channel| b.column(h, c.index()).unwrap_or(&[]);
                let (xs, ys) = (b.column(h, COL_X).unwrap_or(&[]), b.column(h, COL_Y).unwrap_or(&[]));
                let (on, temp, power) = (col(Channel::PhotodiodeOnAxis), col(Channel::TemperatureC), col(Channel::LaserPowerW));
                for i in 0..h.len as usize {
                    let t = h.t0_ns + h.dt_ns * i as i64;
                    let (x, y) = (f64::from(xs[i]), f64::from(ys[i]));
                    let in_hot = find(AnomalyKind::HotSpot, build, h.layer, Some(h.laser)).any(|g| {
                        let ((x0, x1), (y0, y1)) = (g.x_mm.unwrap_or_default(), g.y_mm.unwrap_or_default());
                        x >= x0 && x < x1 && y >= y0 && y < y1
                    });
                    if in_hot {
                        hot += 1;
                        assert!(on[i] > 3200.0 && temp[i] > 1750.0, "hot sample {} {}", on[i], temp[i]);
                        assert!(find(AnomalyKind::HotSpot, build, h.layer, Some(h.laser)).any(|g| (g.start_ns..g.end_ns).contains(&t)));
                    } else {
                        assert!(on[i] <= 3000.0 && temp[i] <= 1700.0, "{build} layer {} laser {}: {} {}", h.layer, h.laser, on[i], temp[i]);
                    }
                    if find(AnomalyKind::PowerDrop, build, h.layer, Some(h.laser)).any(|g| (g.start_ns..g.end_ns).contains(&t)) {
                        dropped += 1;
                        assert!(power[i] < 150.0);
                    } else {
                        normal += 1;
                        assert!(power[i] >= 150.0);
                    }
                }
            }
            for r in &b.logs {
                let o2 = r.values.iter().find(|(k, _)| &**k == "o2_ppm").map(|(_, v)| *v).unwrap_or(f64::NAN);
                let rise = find(AnomalyKind::O2Rise, &*r.build, 1, None).any(|g| (g.start_ns..g.end_ns).contains(&r.t_ns));
                assert!(if rise { o2 > 1500.0 } else { o2 <= 1000.0 }, "o2 {o2} at {}", r.t_ns);
            }
            for e in &b.layers {
                for p in &e.params {
                    let lof = find(AnomalyKind::LackOfFusion, &*e.build, e.layer, Some(p.laser)).count() > 0;
                    let ed = p.energy_density_j_mm3();
                    assert!(if lof { ed < 35.0 } else { ed >= 40.0 }, "E = {ed}");
                }
            }
        }
        assert!(hot > 100, "{hot} hot samples");
        assert_eq!(dropped, 4000 / 5);
        assert!(normal > 0);
    }
}
