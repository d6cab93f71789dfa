//! One simulated machine as a state machine: layer start (with its laser parameters), blocks
//! laser by laser, layer end, recoat, build end, with machine-log records every 250 ms of event
//! time interleaved. Each step emits one record into the batch; the fleet decides which
//! machine steps next. The physics comes from `model`, the planted anomalies from `anomalies`.

use std::sync::Arc;

use crate::input::batch::{BlockColumns, RecordBatch};
use crate::input::event::{BuildId, Channel, LaserParams, LayerEvent, LayerPhase, LogRecord, TimeNs};

use super::anomalies::{drift_factor, plans_for, AnomalyKind, Columns, HotCell, InjectedAnomaly, O2Rise, Plan, PowerDropSpan, Region, Site, FOG_FACTOR, HOT_CELL_MM, O2_RISE_NS};
use crate::topology::sources::SimulatorConfig;
use super::ct::SimDefect;
use super::model::{model, Field, Raster, SplitMix, HATCH_MM, LOF_SPEED_MM_S, MS, NOMINAL_POWER_W, PD_OFF_PER_W, PD_ON_PER_W, SPEED_MM_S, TEMP_PER_W, THICKNESS_UM};

/// Period of the machine-log records.
pub(super) const LOG_PERIOD_NS: i64 = 250 * MS;
pub(super) const RANK_EVENT: u8 = 0;
pub(super) const RANK_BLOCK: u8 = 1;
/// Columns per sample the simulator emits.
pub(super) const N_SIM_COLS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    LayerStart,
    Blocks,
    LayerEnd,
    RecoatStart,
    RecoatEnd,
    BuildEnd,
    Done,
}

/// One laser's state for the current layer.
#[derive(Clone, Debug)]
pub(super) struct LaserLayer {
    pub(super) power_w: f32,
    pub(super) raster: Raster,
    pub(super) k_on: f32,
    pub(super) k_off: f32,
    pub(super) t_base: f32,
    pub(super) drop: Option<PowerDropSpan>,
    pub(super) hot: Option<HotCell>,
}

/// What a machine emits next.
pub(super) enum Item {
    Log(TimeNs),
    Stage(TimeNs),
}

/// Fleet-wide constants derived from the configuration.
#[derive(Debug)]
pub(super) struct Setup {
    pub(super) lasers: usize,
    pub(super) layers: u32,
    pub(super) layer_ns: i64,
    pub(super) recoat_ns: i64,
    pub(super) dt_ns: i64,
    pub(super) block_len: usize,
    pub(super) block_ns: i64,
    pub(super) samples_per_layer: u64,
    pub(super) blocks_per_layer: u64,
    pub(super) batch_blocks: usize,
    pub(super) noise: Vec<f32>,
    pub(super) log_keys: [Arc<str>; 4],
    pub(super) power_drift_pct_per_layer: f64,
    /// Chance that a block starts a burst of lost blocks (`block_loss_pct` ÷ the mean burst).
    pub(super) loss_start: f64,
}

/// One machine running one build.
#[derive(Debug)]
pub(super) struct Machine {
    pub(super) build: BuildId,
    pub(super) start_ns: TimeNs,
    pub(super) end_ns: TimeNs,
    pub(super) rng: SplitMix,
    pub(super) stage: Stage,
    pub(super) layer: u32,
    pub(super) block: u64,
    pub(super) laser: usize,
    pub(super) next_tick_ns: TimeNs,
    /// The O2 rises planned, in start order.
    pub(super) o2: Vec<O2Rise>,
    /// Photodiode factor of the current layer (fogging), 1 when clear.
    pub(super) fog: f32,
    /// Regions of the current layer whose melt reads differently (streaks, shadows).
    pub(super) regions: Vec<Region>,
    /// Generator of the CT defect list (apart from the samples').
    pub(super) ct_rng: SplitMix,
    /// The CT defect list so far.
    pub(super) ct: Vec<SimDefect>,
    /// Generator of the lost blocks (apart from the samples').
    pub(super) loss_rng: SplitMix,
    /// Per laser, blocks still to lose of its current burst.
    pub(super) losing: Vec<u32>,
    pub(super) plans: Vec<Plan>,
    pub(super) lasers: Vec<LaserLayer>,
}

impl Machine {
    /// Build `no` (from 1) of machine `i` (from 1), starting at `start_ns`, its generator `rng`:
    /// `<prefix><i>` for the first, `<prefix><i>-<no>` for the next ones.
    pub(super) fn build(cfg: &SimulatorConfig, setup: &Setup, i: u32, no: u32, start_ns: TimeNs, mut rng: SplitMix) -> Machine {
        let plans = plans_for(i, cfg, &mut rng);
        // The first build's side generators are seeded as they always were.
        let again = if no > 1 { u64::from(no).wrapping_mul(0xBF58_476D_1CE4_E5B9) } else { 0 };
        let build = if no > 1 { format!("{}{i:03}-{no}", cfg.build_prefix) } else { format!("{}{i:03}", cfg.build_prefix) };
        let mut m = Machine {
            build: Arc::from(build),
            start_ns,
            end_ns: start_ns,
            rng,
            stage: if cfg.layers > 0 { Stage::LayerStart } else { Stage::BuildEnd },
            layer: 0,
            block: 0,
            laser: 0,
            next_tick_ns: start_ns,
            o2: Vec::new(),
            fog: 1.0,
            regions: Vec::new(),
            ct_rng: SplitMix(cfg.seed ^ u64::from(i).wrapping_mul(0x9E6C_63D0_676A_9A99) ^ 0x4354 ^ again),
            ct: Vec::new(),
            loss_rng: SplitMix(cfg.seed ^ u64::from(i).wrapping_mul(0xA076_1D64_78BD_642F) ^ 0x4C4F_5353 ^ again),
            losing: Vec::new(),
            plans,
            lasers: Vec::with_capacity(setup.lasers),
        };
        let last_exposure_ns = if cfg.layers > 0 { setup.layer_ns } else { 0 };
        m.end_ns = m.layer_start_ns(setup, cfg.layers.saturating_sub(1)).saturating_add(last_exposure_ns);
        for p in m.plans.iter().filter(|p| p.kind == AnomalyKind::O2Rise) {
            let a = m.layer_start_ns(setup, p.layer);
            m.o2.push(O2Rise { layer: p.layer, start_ns: a, end_ns: a.saturating_add(O2_RISE_NS), marker_sent: false, recorded: false });
        }
        m.o2.sort_by_key(|o| o.start_ns);
        m
    }

    pub(super) fn layer_start_ns(&self, s: &Setup, k: u32) -> TimeNs {
        self.start_ns.saturating_add(i64::from(k).saturating_mul(s.layer_ns.saturating_add(s.recoat_ns)))
    }

    pub(super) fn stage_ns(&self, s: &Setup) -> Option<TimeNs> {
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

    pub(super) fn log_ns(&self) -> Option<TimeNs> {
        let mut t = self.next_tick_ns;
        if let Some(o) = self.o2.iter().find(|o| !o.marker_sent) {
            t = t.min(o.start_ns);
        }
        (t <= self.end_ns).then_some(t)
    }

    pub(super) fn next_item(&self, s: &Setup) -> Option<Item> {
        let st = self.stage_ns(s)?;
        match self.log_ns() {
            Some(lt) if lt <= st => Some(Item::Log(lt)),
            _ => Some(Item::Stage(st)),
        }
    }

    /// Queue key: time, then events before blocks.
    pub(super) fn next_key(&self, s: &Setup) -> Option<(TimeNs, u8)> {
        Some(match self.next_item(s)? {
            Item::Log(t) => (t, RANK_EVENT),
            Item::Stage(t) => (t, if self.stage == Stage::Blocks { RANK_BLOCK } else { RANK_EVENT }),
        })
    }

    pub(super) fn has_plan(&self, kind: AnomalyKind, layer: u32, laser: u8) -> bool {
        self.plans.iter().any(|p| p.kind == kind && p.layer == layer && p.laser == laser)
    }

    pub(super) fn truth(&self, kind: AnomalyKind, layer: u32, laser: Option<u8>, start_ns: i64, end_ns: i64) -> InjectedAnomaly {
        InjectedAnomaly { build_id: self.build.to_string(), layer, laser, kind, start_ns, end_ns, x_mm: None, y_mm: None }
    }

    /// Emits the machine's next record into `batch` at source offset `offset`.
    pub(super) fn emit(
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

    pub(super) fn emit_log(&mut self, s: &Setup, truth: &mut Vec<InjectedAnomaly>, batch: &mut RecordBatch, t: TimeNs, offset: u64) {
        if t == self.next_tick_ns {
            self.next_tick_ns = self.next_tick_ns.saturating_add(LOG_PERIOD_NS);
        }
        let mut o2 = 200.0 + 30.0 * self.rng.sym();
        let mut records = Vec::new();
        for r in &mut self.o2 {
            if t == r.start_ns {
                r.marker_sent = true;
            }
            if (r.start_ns..r.end_ns).contains(&t) {
                o2 = 1600.0 + 100.0 * self.rng.sym();
                if !r.recorded {
                    r.recorded = true;
                    records.push((r.layer, r.start_ns, r.end_ns));
                }
            }
        }
        for (layer, a, b) in records {
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

    pub(super) fn start_layer(&mut self, s: &Setup, truth: &mut Vec<InjectedAnomaly>, batch: &mut RecordBatch, t: TimeNs, offset: u64) {
        let k = self.layer;
        let n = s.samples_per_layer;
        let dt_s = s.dt_ns as f64 * 1e-9;
        let mut params = Vec::with_capacity(s.lasers);
        let mut drift_factors = Vec::with_capacity(s.lasers);
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
            // A degrading laser delivers less than it is commanded (the parameters keep the command).
            let factor = drift_factor(&self.plans, s.power_drift_pct_per_layer, k, laser);
            drift_factors.push(factor);
            let delivered = match factor {
                Some(f) => {
                    truth.push(self.truth(AnomalyKind::PowerDrift, k, Some(laser), t, t.saturating_add(s.layer_ns)));
                    power * f
                }
                None => power,
            };
            let mut ll = LaserLayer {
                power_w: delivered as f32,
                raster: Raster { field, step_mm, pitch_mm, y_phase_mm: if k % 2 == 1 { pitch_mm / 2.0 } else { 0.0 } },
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
                let (x, y) = ll.raster.position(i);
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
        self.plan_layer_effects(s, truth, t);
        self.plan_ct(s, &drift_factors);
        let z_um = (i64::from(k) + 1) * THICKNESS_UM as i64;
        batch.push_layer(LayerEvent { build: self.build.clone(), layer: k, phase: LayerPhase::Start, t_ns: t, z_um: Some(z_um), params, source_offset: offset });
        self.block = 0;
        self.laser = 0;
        self.stage = if s.blocks_per_layer > 0 && s.lasers > 0 { Stage::Blocks } else { Stage::LayerEnd };
    }

    /// Whether laser `j`'s block is lost on the way (`block_loss_pct`): a burst of 1 to 10 of
    /// its blocks starts with the configured chance.
    fn lose_block(&mut self, s: &Setup, j: usize) -> bool {
        if s.loss_start <= 0.0 {
            return false;
        }
        if self.losing.len() <= j {
            self.losing.resize(j + 1, 0);
        }
        if self.losing[j] > 0 {
            self.losing[j] -= 1;
            return true;
        }
        if self.loss_rng.unit() < s.loss_start {
            self.losing[j] = self.loss_rng.below(10) as u32;
            return true;
        }
        false
    }

    /// The current layer's machine-wide effects (fogging, streaks, shadows), each recorded in
    /// the ground truth for the layer.
    fn plan_layer_effects(&mut self, s: &Setup, truth: &mut Vec<InjectedAnomaly>, t: TimeNs) {
        let k = self.layer;
        self.fog = 1.0;
        self.regions.clear();
        let end = t.saturating_add(s.layer_ns);
        for p in self.plans.iter().filter(|p| p.covers(k) && matches!(p.kind, AnomalyKind::Fogging | AnomalyKind::RecoaterStreak | AnomalyKind::GasFlowShadow)) {
            let mut gt = InjectedAnomaly { build_id: self.build.to_string(), layer: k, laser: None, kind: p.kind, start_ns: t, end_ns: end, x_mm: None, y_mm: None };
            match p.region() {
                Some(r) => {
                    gt.x_mm = Some((f64::from(r.x0), f64::from(r.x1)));
                    gt.y_mm = Some((f64::from(r.y0), f64::from(r.y1)));
                    self.regions.push(r);
                }
                None => self.fog = FOG_FACTOR,
            }
            truth.push(gt);
        }
    }

    pub(super) fn emit_block(
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
        ll.raster.path(first, xs, ys);
        // Four noise streams from one draw: 16-bit fractions of the table's free span.
        let span = (s.noise.len() - n + 1) as u64;
        let r = self.rng.next();
        let o = |k: u32| ((((r >> (16 * k)) & 0xFFFF) * span) >> 16) as usize;
        let (o0, o1, o2, o3) = (o(0), o(1), o(2), o(3));
        let nz = [&s.noise[o0..o0 + n], &s.noise[o1..o1 + n], &s.noise[o2..o2 + n], &s.noise[o3..o3 + n]];
        model(ll.power_w, ll.k_on, ll.k_off, ll.t_base, nz, power, on, off, temp);
        let dt = s.dt_ns;
        let site = Site { build: &self.build, layer: self.layer, laser: (j + 1) as u8, first, t0, dt };
        let mut c = Columns { power: &mut *power, on: &mut *on, off: &mut *off, temp: &mut *temp, xs: &*xs, ys: &*ys };
        if let Some(d) = &mut ll.drop {
            d.apply(&site, (ll.k_on, ll.k_off, ll.t_base), nz, &mut c, truth);
        }
        if let Some(h) = &mut ll.hot {
            h.apply(&site, nz, &mut c, truth);
        }
        for r in &self.regions {
            r.apply(&mut c);
        }
        if self.fog != 1.0 {
            c.on.iter_mut().chain(c.off.iter_mut()).for_each(|v| *v *= self.fog);
        }
        let mut cols = BlockColumns::default();
        cols.channels[Channel::TemperatureC.index()] = Some(temp);
        cols.channels[Channel::PhotodiodeOnAxis.index()] = Some(on);
        cols.channels[Channel::PhotodiodeOffAxis.index()] = Some(off);
        cols.channels[Channel::LaserPowerW.index()] = Some(power);
        cols.x_mm = Some(xs);
        cols.y_mm = Some(ys);
        if !self.lose_block(s, j) {
            batch.push_block(&self.build, self.layer, (j + 1) as u8, t0, dt, n as u32, cols, offset);
        }
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
