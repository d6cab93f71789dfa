//! Everything one build computes: its layer windows, time windows, grid maps and rules. The
//! build actor owns one `BuildProcessor` and feeds it batches and watermarks in arrival order;
//! all arithmetic lives here, free of actors and I/O.
//!
//! It must never emit a window twice with the same revision, never emit a partial layer window
//! (a layer closes only when its `end` event is behind the watermark, or by the gap timeout),
//! and never drop a late sample without counting it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::input::batch::{BlockHeader, RecordBatch, COL_X, COL_Y};
use crate::input::reject::{DeadLetter, RejectReason};
use crate::input::event::{BuildId, Channel, LayerEvent, LayerPhase, TimeNs, NO_LAYER};
use crate::analytics::grid::GridSpec;
use crate::windows::layer_window::LayerWindow;
use crate::offset_ledger::HoldSet;
use crate::operator::{Ctx, Operator};
use crate::records::{Anomaly, DeadLetterRecord, Emitted, LateRecord, OutputRecord};
use crate::analytics::rules::{Cooldown, Rule, RuleTarget};
use crate::input::time::format_rfc3339;
use crate::windows::time_window::{TimeWindowSpec, TimeWindowState};
use crate::topology::engine_config::LatePolicy;
use crate::topology::Topology;

/// Lasers per build for which rule cooldowns are tracked (laser numbers above share the last).
const MAX_LASERS: usize = 65;

/// What every build of a topology computes; shared by all build processors.
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
    /// Default layer thickness, µm.
    pub default_thickness_um: f64,
    /// Test hook: a block whose first `temperature_c` equals this value panics the processor
    /// before it changes any state (a stand-in for a poison record hitting a bug).
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
            grid: GridSpec { cell_mm: t.windows.grid_cell_mm, plate_mm: t.windows.plate_mm },
            grid_channel: Channel::parse(&t.windows.grid_channel).unwrap_or(Channel::PhotodiodeOnAxis),
            time_windows: t.windows.time.iter().map(TimeWindowSpec::compile).collect(),
            rules: t.rules.iter().map(Rule::compile).collect(),
            default_thickness_um: t.engine.default_layer_thickness_um,
            fault_panic_on_temperature: None,
        }
    }
}

/// Running counts of a build, for the terminal summary and the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildCounters {
    /// Samples processed.
    pub samples: u64,
    /// Anomalies emitted.
    pub anomalies: u64,
    /// Late samples (dropped, sent to the late sink or merged as updates).
    pub late_samples: u64,
    /// Highest layer seen.
    pub layer: Option<u32>,
    /// Layer windows closed.
    pub layers_closed: u64,
}

/// The state of one build.
#[derive(Debug)]
pub struct BuildProcessor {
    build: BuildId,
    s: Arc<BuildSettings>,
    layers: BTreeMap<u32, LayerWindow>,
    max_closed_layer: Option<u32>,
    time: Vec<TimeWindowState>,
    cooldowns: Vec<Cooldown>,
    hits: Vec<(Option<usize>, u64)>,
    watermark: TimeNs,
    build_end_ns: Option<TimeNs>,
    finished: bool,
    /// Running counts.
    pub counters: BuildCounters,
}

impl BuildProcessor {
    /// A new build.
    pub fn new(build: BuildId, s: Arc<BuildSettings>) -> BuildProcessor {
        let time = s.time_windows.iter().cloned().map(TimeWindowState::new).collect();
        let n_rules = s.rules.len();
        BuildProcessor {
            build,
            layers: BTreeMap::new(),
            max_closed_layer: None,
            time,
            cooldowns: vec![Cooldown::default(); n_rules * MAX_LASERS],
            hits: Vec::with_capacity(n_rules),
            watermark: TimeNs::MIN,
            build_end_ns: None,
            finished: false,
            counters: BuildCounters::default(),
            s,
        }
    }

    /// Treats every layer as already final: for a build that ended, whose late records must
    /// not reopen windows.
    pub fn mark_ended(&mut self) {
        self.max_closed_layer = Some(NO_LAYER - 1);
    }

    /// The build's id.
    pub fn build_id(&self) -> &BuildId {
        &self.build
    }

    /// True once the build's `build_end` event is behind the watermark: the actor may stop.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The watermark last applied.
    pub fn watermark(&self) -> TimeNs {
        self.watermark
    }

    /// The lowest batch per input that feeds a window still open (the build's window holds).
    pub fn holds(&self) -> HoldSet {
        let mut acc = HoldSet::default();
        for w in self.layers.values().filter(|w| w.emitted == 0) {
            acc.merge(&w.hold);
        }
        for t in &self.time {
            t.holds_into(&mut acc);
        }
        acc
    }

    /// Number of windows open or kept for late updates.
    pub fn open_windows(&self) -> usize {
        self.layers.len() + self.time.iter().map(TimeWindowState::open_count).sum::<usize>()
    }

    fn emit(&self, out: &mut Vec<Emitted>, record: OutputRecord, hold: HoldSet, origin_wall_ns: i64) {
        out.push(Emitted { record, hold, origin_wall_ns, position: None });
    }

    fn rule_names(&self) -> Vec<&str> {
        self.s.rules.iter().map(|r| r.name.as_str()).collect()
    }

    fn handle_layer_event(&mut self, batch: &RecordBatch, ev: &LayerEvent, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if ev.phase == LayerPhase::BuildEnd {
            self.build_end_ns = Some(self.build_end_ns.map_or(ev.t_ns, |e| e.max(ev.t_ns)));
            return;
        }
        if !matches!(ev.phase, LayerPhase::Start | LayerPhase::End) {
            return;
        }
        if ev.phase == LayerPhase::End && !self.layers.contains_key(&ev.layer) && !self.opened_before(batch, ev.source_offset, Some(ev.layer)) {
            self.reject_unmatched_end(batch, ev, ctx, out);
            return;
        }
        let Some(w) = self.window_for(ev.layer) else {
            // A start for a layer already emitted: nothing to update.
            return;
        };
        if let Some(h) = ctx.hold {
            w.hold.add(h);
        }
        match ev.phase {
            LayerPhase::Start => {
                w.start_event_ns = Some(ev.t_ns);
                w.z_um = ev.z_um.or(w.z_um);
                for p in &ev.params {
                    if !w.params.contains(p) {
                        w.params.push(p.clone());
                    }
                }
            }
            _ => w.end_event_ns = Some(ev.t_ns),
        }
        w.dirty = true;
        self.counters.layer = Some(self.counters.layer.map_or(ev.layer, |l| l.max(ev.layer)));
    }

    /// Dead-letters a layer `end` that matches no window: the layer was never started and has
    /// no samples before it, or its window is already final. The reason depends only on the
    /// windows open at the event's offset, which a replay from the stored offsets rebuilds, so a
    /// replay decides the same way:
    /// `unknown_build` when nothing of the build is open (its first record, or a build whose
    /// layers are all closed), else `unknown_layer`.
    fn reject_unmatched_end(&mut self, batch: &RecordBatch, ev: &LayerEvent, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let what = format!("layer {} `end` of build {}", ev.layer, self.build);
        let reason = if self.layers.values().any(|w| w.emitted == 0) || self.opened_before(batch, ev.source_offset, None) {
            RejectReason::UnknownLayer(format!("{what}: that layer has no open window"))
        } else {
            RejectReason::UnknownBuild(format!("{what}, which has no open layer"))
        };
        let raw = format!(
            r#"{{"type":"layer","build_id":{},"layer":{},"phase":"end","t_ns":{}}}"#,
            serde_json::to_string(&*self.build).unwrap_or_default(),
            ev.layer,
            ev.t_ns
        );
        let input = ctx.hold.map_or(0, |(input, _)| input);
        let d = DeadLetter::new(input, ev.source_offset, reason, raw.as_bytes());
        // Source name and partition are filled in by the actor, which knows them.
        let record = DeadLetterRecord::from_dead_letter(String::new(), None, &d);
        out.push(Emitted { record: OutputRecord::DeadLetter(record), hold: hold_of(ctx), origin_wall_ns: ctx.origin_wall_ns, position: position_of(ctx, ev.source_offset) });
    }

    /// True when a block of `batch` read before `offset` opens or feeds a window (of `layer`, or
    /// of any layer). Layer events are handled before the batch's blocks; this keeps a decision
    /// about an event the one that reading in offset order gives, whatever the batch boundaries.
    fn opened_before(&self, batch: &RecordBatch, offset: u64, layer: Option<u32>) -> bool {
        batch.blocks.iter().any(|h| {
            h.source_offset < offset
                && h.layer != NO_LAYER
                && layer.is_none_or(|l| l == h.layer)
                && (self.layers.contains_key(&h.layer) || self.max_closed_layer.is_none_or(|m| h.layer > m))
        })
    }

    /// The window of `layer` if it is open or kept for updates; a new one if the layer was never
    /// closed; `None` when the layer is final.
    fn window_for(&mut self, layer: u32) -> Option<&mut LayerWindow> {
        if !self.layers.contains_key(&layer) && self.max_closed_layer.is_some_and(|m| layer <= m) {
            return None;
        }
        Some(self.layers.entry(layer).or_default())
    }

    fn log_rules(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        for rec in &batch.logs {
            for (ri, rule) in self.s.rules.iter().enumerate() {
                let RuleTarget::Log(name) = &rule.target else { continue };
                for (k, v) in rec.values.iter().filter(|(k, _)| &**k == name.as_str()) {
                    if rule.op.fires(*v, rule.limit) && self.cooldowns[ri * MAX_LASERS].admit(rec.t_ns, rule.cooldown_ns, NO_LAYER) {
                        self.counters.anomalies += 1;
                        let a = Anomaly {
                            build_id: self.build.to_string(),
                            layer: None,
                            laser: None,
                            time: format_rfc3339(rec.t_ns),
                            time_ns: rec.t_ns,
                            rule: rule.name.clone(),
                            channel: k.to_string(),
                            value: *v,
                            op: op_str(rule),
                            limit: rule.limit,
                            x_mm: None,
                            y_mm: None,
                        };
                        out.push(Emitted { record: OutputRecord::Anomaly(a), hold: hold_of(ctx), origin_wall_ns: ctx.origin_wall_ns, position: position_of(ctx, rec.source_offset) });
                    }
                }
            }
        }
    }

    /// Processes block `i` of `batch`. Public so that the actor can process a batch block by
    /// block and set aside the one block that made it fail.
    pub fn process_block(&mut self, batch: &RecordBatch, i: usize, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let h: BlockHeader = batch.blocks[i];
        if let Some(bad) = self.s.fault_panic_on_temperature {
            if batch.column(&h, Channel::TemperatureC.index()).and_then(|v| v.first()) == Some(&bad) {
                panic!("fault injection: poison temperature {bad} in build {} layer {}", self.build, h.layer);
            }
        }
        let n = u64::from(h.len);
        self.counters.samples += n;
        let t_last = h.t_last_ns();
        // Rules first: alerts do not wait for windows.
        self.hits.clear();
        for (ri, rule) in self.s.rules.iter().enumerate() {
            let RuleTarget::Sample(ch) = rule.target else {
                self.hits.push((None, 0));
                continue;
            };
            let Some(vs) = batch.column(&h, ch.index()) else {
                self.hits.push((None, 0));
                continue;
            };
            let (first, count) = rule.scan(vs);
            self.hits.push((first, count));
            if let Some(j) = first {
                let t = h.t0_ns + h.dt_ns * j as i64;
                let slot = ri * MAX_LASERS + usize::from(h.laser).min(MAX_LASERS - 1);
                if self.cooldowns[slot].admit(t, rule.cooldown_ns, h.layer) {
                    self.counters.anomalies += 1;
                    let xy = |c: usize| batch.column(&h, c).map(|v| f64::from(v[j]));
                    let a = Anomaly {
                        build_id: self.build.to_string(),
                        layer: (h.layer != NO_LAYER).then_some(h.layer),
                        laser: (h.laser != 0).then_some(h.laser),
                        time: format_rfc3339(t),
                        time_ns: t,
                        rule: rule.name.clone(),
                        channel: ch.name().to_owned(),
                        value: f64::from(vs[j]),
                        op: op_str(rule),
                        limit: rule.limit,
                        x_mm: xy(COL_X),
                        y_mm: xy(COL_Y),
                    };
                    out.push(Emitted { record: OutputRecord::Anomaly(a), hold: hold_of(ctx), origin_wall_ns: ctx.origin_wall_ns, position: position_of(ctx, h.source_offset) });
                }
            }
        }
        let mut late = 0u64;
        for tw in &mut self.time {
            if let Some(vs) = batch.column(&h, tw.spec().channel.index()) {
                late += tw.push(h.t0_ns, h.dt_ns, vs, ctx.hold);
            }
        }
        if h.layer != NO_LAYER {
            self.counters.layer = Some(self.counters.layer.map_or(h.layer, |l| l.max(h.layer)));
            let n_rules = self.s.rules.len();
            let grid_spec = self.s.grid;
            let grid_ch = self.s.grid_channel.index();
            let hits = std::mem::take(&mut self.hits);
            match self.window_for(h.layer) {
                Some(w) => {
                    let updating = w.emitted > 0;
                    w.extend_time(h.t0_ns, t_last);
                    if let Some(hold) = ctx.hold {
                        w.hold.add(hold);
                    }
                    w.dirty = true;
                    let la = w.laser_mut(h.laser, n_rules);
                    for c in Channel::ALL {
                        if let Some(vs) = batch.column(&h, c.index()) {
                            la.channels[c.index()].get_or_insert_with(Default::default).push_slice(vs);
                        }
                    }
                    for (ri, (_, count)) in hits.iter().enumerate() {
                        la.rule_hits[ri] += count;
                    }
                    if updating {
                        la.late_count += n;
                        late += n;
                    }
                    if let (Some(xs), Some(ys), Some(vs)) = (batch.column(&h, COL_X), batch.column(&h, COL_Y), batch.column(&h, grid_ch)) {
                        w.grid_push(grid_spec, xs, ys, vs);
                    }
                }
                None => {
                    late += n;
                    if self.s.late_policy == LatePolicy::LateSink {
                        let r = LateRecord {
                            build_id: self.build.to_string(),
                            layer: Some(h.layer),
                            laser: h.laser,
                            t0_ns: h.t0_ns,
                            sample_count: n,
                            offset: h.source_offset,
                            watermark_ns: self.watermark,
                        };
                        out.push(Emitted { record: OutputRecord::Late(r), hold: hold_of(ctx), origin_wall_ns: ctx.origin_wall_ns, position: position_of(ctx, h.source_offset) });
                    }
                }
            }
            self.hits = hits;
        }
        self.counters.late_samples += late;
    }

    /// Emits a new revision of every kept window that late data changed.
    fn emit_updates(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let layers: Vec<u32> = self.layers.iter().filter(|(_, w)| w.emitted > 0 && w.dirty).map(|(l, _)| *l).collect();
        for l in layers {
            self.emit_layer(l, hold_of(ctx), ctx.now_wall_ns, out);
        }
    }

    fn emit_layer(&mut self, layer: u32, hold: HoldSet, origin: i64, out: &mut Vec<Emitted>) {
        let names = self.rule_names().iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let Some(w) = self.layers.get(&layer) else { return };
        let sums = w.summaries(&self.build, layer, &name_refs, self.s.default_thickness_um);
        let grid = w.grid.as_ref().map(|g| g.to_record(&self.build, layer, w.emitted, self.s.grid_channel.name(), self.s.grid.cell_mm));
        let end = w.end_ns();
        let first = w.emitted == 0;
        for s in &sums {
            // Energy-density rules judge the layer once, on its first result.
            for rule in self.s.rules.iter().filter(|r| first && r.target == RuleTarget::EnergyDensity) {
                if let Some(e) = s.energy_density_j_mm3 {
                    if rule.op.fires(e, rule.limit) {
                        self.counters.anomalies += 1;
                        let a = Anomaly {
                            build_id: self.build.to_string(),
                            layer: Some(layer),
                            laser: Some(s.laser),
                            time: format_rfc3339(end),
                            time_ns: end,
                            rule: rule.name.clone(),
                            channel: "energy_density_j_mm3".into(),
                            value: e,
                            op: op_str(rule),
                            limit: rule.limit,
                            x_mm: None,
                            y_mm: None,
                        };
                        out.push(Emitted { record: OutputRecord::Anomaly(a), hold: hold.clone(), origin_wall_ns: origin, position: None });
                    }
                }
            }
        }
        for s in sums {
            self.emit(out, OutputRecord::LayerSummary(s), hold.clone(), origin);
        }
        if let Some(g) = grid {
            self.emit(out, OutputRecord::Grid(g), hold.clone(), origin);
        }
        if let Some(w) = self.layers.get_mut(&layer) {
            w.emitted += 1;
            w.dirty = false;
        }
        if first {
            self.counters.layers_closed += 1;
            self.max_closed_layer = Some(self.max_closed_layer.map_or(layer, |m| m.max(layer)));
        }
    }

    /// Closes what `wm` completes; `force` closes everything (end of input, idle build).
    fn close(&mut self, wm: TimeNs, force: bool, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let gap = self.s.layer_gap_ns;
        let due: Vec<u32> = self.layers.iter().filter(|(_, w)| w.emitted == 0 && (force || w.closes_at(wm, gap))).map(|(l, _)| *l).collect();
        for l in due {
            let hold = self.layers.get(&l).map(|w| w.hold.clone()).unwrap_or_default();
            self.emit_layer(l, hold, ctx.now_wall_ns, out);
        }
        // Drop windows that are final: emitted, and past their allowed lateness.
        let keep_ns = if self.s.late_policy == LatePolicy::Update { self.s.allowed_lateness_ns } else { -1 };
        self.layers.retain(|_, w| w.emitted == 0 || (!force && keep_ns >= 0 && wm <= w.end_ns().saturating_add(keep_ns)));
        let twm = if force { TimeNs::MAX } else { wm };
        let mut results = Vec::new();
        for tw in &mut self.time {
            tw.close(twm, &self.build, &mut results);
        }
        for (r, hold) in results {
            self.emit(out, OutputRecord::Window(r), hold, ctx.now_wall_ns);
        }
    }
}

fn position_of(ctx: &Ctx, offset: u64) -> Option<(crate::input::event::InputId, u64)> {
    ctx.hold.map(|(input, _)| (input, offset))
}

fn hold_of(ctx: &Ctx) -> HoldSet {
    ctx.hold.map(HoldSet::one).unwrap_or_default()
}

fn op_str(rule: &Rule) -> String {
    match rule.op {
        crate::analytics::rules::CmpOp::Gt => ">",
        crate::analytics::rules::CmpOp::Ge => ">=",
        crate::analytics::rules::CmpOp::Lt => "<",
        crate::analytics::rules::CmpOp::Le => "<=",
    }
    .to_owned()
}

impl Operator for BuildProcessor {
    fn process(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.process_events(batch, ctx, out);
        for i in 0..batch.blocks.len() {
            self.process_block(batch, i, ctx, out);
        }
        self.finish_batch(ctx, out);
    }

    fn on_watermark(&mut self, wm: TimeNs, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if wm <= self.watermark {
            return;
        }
        self.watermark = wm;
        self.close(wm, false, ctx, out);
        if self.build_end_ns.is_some_and(|e| wm >= e) {
            self.close(wm, true, ctx, out);
            self.finished = true;
        }
    }

    fn on_close(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.close(self.watermark, true, ctx, out);
        self.finished = true;
    }
}

impl BuildProcessor {
    /// The non-sample part of a batch: layer events and machine-log rules.
    pub fn process_events(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        for ev in &batch.layers {
            self.handle_layer_event(batch, ev, ctx, out);
        }
        self.log_rules(batch, ctx, out);
    }

    /// After the blocks of a batch: updates of kept windows.
    pub fn finish_batch(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if self.s.late_policy == LatePolicy::Update {
            self.emit_updates(ctx, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::decode::{DecodeLimits, Decoder};

    const NOW: TimeNs = 1_800_000_000_000_000_000;

    /// Lines of one build: samples of layer 0, a stray end of layer 5, layer 0's end, samples
    /// of layer 1 and its end; then a build never seen that ends a layer.
    fn lines() -> Vec<String> {
        let t = |ms: u32| format!("2024-01-15T10:30:00.{ms:03}Z");
        vec![
            format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1600.0}}"#, t(1)),
            format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1610.0}}"#, t(2)),
            format!(r#"{{"type": "layer", "build_id": "b", "layer": 5, "phase": "end", "timestamp": "{}"}}"#, t(3)),
            format!(r#"{{"type": "layer", "build_id": "b", "layer": 0, "phase": "end", "timestamp": "{}"}}"#, t(4)),
            format!(r#"{{"build_id": "b", "layer": 1, "timestamp": "{}", "temperature": 1620.0}}"#, t(5)),
            format!(r#"{{"type": "layer", "build_id": "b", "layer": 1, "phase": "end", "timestamp": "{}"}}"#, t(6)),
        ]
    }

    /// Dead letters (offset, reason) and layer ends (layer, end time).
    type Outcome = (Vec<(u64, String)>, Vec<(u32, i64)>);

    /// The outcome with the input cut into batches at `cuts`.
    fn run(cuts: &[usize]) -> Outcome {
        let topo = crate::topology::load(crate::topology::DEMO_TOML, "demo.toml", std::path::Path::new(".")).expect("demo topology");
        let mut p = BuildProcessor::new(BuildId::from("b"), Arc::new(BuildSettings::from_topology(&topo)));
        let mut d = Decoder::new(0, DecodeLimits::default());
        let lines = lines();
        let mut out = Vec::new();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(lines.len());
        for (seq, w) in bounds.windows(2).enumerate() {
            let mut batch = RecordBatch::with_capacity(16);
            for (i, l) in lines.iter().enumerate().take(w[1]).skip(w[0]) {
                d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
            }
            let ctx = Ctx { hold: Some((0, seq as u64)), now_wall_ns: NOW, origin_wall_ns: NOW };
            p.process(&batch, &ctx, &mut out);
        }
        p.on_close(&Ctx { hold: None, now_wall_ns: NOW, origin_wall_ns: NOW }, &mut out);
        let mut dead = Vec::new();
        let mut ends = Vec::new();
        for e in out {
            match e.record {
                OutputRecord::DeadLetter(r) => {
                    assert_eq!(e.position, Some((0, r.offset)), "positioned, so a replay does not write it twice");
                    dead.push((r.offset, r.reason_kind));
                }
                OutputRecord::LayerSummary(s) => ends.push((s.layer, s.window_end_ns)),
                _ => {}
            }
        }
        (dead, ends)
    }

    #[test]
    fn an_end_without_a_window_is_dead_lettered_whatever_the_batch_boundaries() {
        let whole = run(&[]);
        assert_eq!(whole.0, vec![(2, "unknown_layer".to_string())], "only the stray end of layer 5");
        let ms = |m: i64| 1_705_314_600_000_000_000 + m * 1_000_000;
        assert_eq!(whole.1, vec![(0, ms(4)), (1, ms(6))], "the ends close their layers");
        for a in 1..lines().len() {
            assert_eq!(run(&[a]), whole, "cut at {a}");
            for b in a + 1..lines().len() {
                assert_eq!(run(&[a, b]), whole, "cuts at {a}, {b}");
            }
        }
    }

    #[test]
    fn an_end_for_a_build_with_nothing_open_is_an_unknown_build() {
        let topo = crate::topology::load(crate::topology::DEMO_TOML, "demo.toml", std::path::Path::new(".")).expect("demo topology");
        let mut p = BuildProcessor::new(BuildId::from("ghost"), Arc::new(BuildSettings::from_topology(&topo)));
        let mut batch = RecordBatch::with_capacity(4);
        Decoder::new(0, DecodeLimits::default()).decode(br#"{"type": "layer", "build_id": "ghost", "layer": 7, "phase": "end", "t_ns": 5}"#, 42, NOW, &mut batch);
        let mut out = Vec::new();
        p.process(&batch, &Ctx { hold: Some((0, 0)), now_wall_ns: NOW, origin_wall_ns: NOW }, &mut out);
        let [Emitted { record: OutputRecord::DeadLetter(r), .. }] = &out[..] else { panic!("one dead letter: {out:?}") };
        assert_eq!((r.offset, r.reason_kind.as_str()), (42, "unknown_build"));
        assert_eq!(r.raw_prefix, r#"{"type":"layer","build_id":"ghost","layer":7,"phase":"end","t_ns":5}"#);
        assert_eq!(p.open_windows(), 0, "no window opened for it");
    }
}
