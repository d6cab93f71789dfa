//! What every operator of a build shares: the build's settings (`build_settings`) and counters, and the
//! layer-event bookkeeping — which layer windows are open, kept for late updates or final, the
//! layer events applied to them, the watermark and the build's end. The chain
//! ([`BuildPipeline`]) drives it; operators read it and bump the counters, and keep the state of
//! their own concern to themselves.
//!
//! It must never emit a window twice with the same revision, never let a final layer reopen, and
//! never decide about a layer `end` differently for different batch boundaries.
//!
//! [`BuildPipeline`]: crate::pipeline::build_pipeline::BuildPipeline

use crate::input::build_info::BuildInfo;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::input::batch::BlockHeader;
pub use crate::pipeline::build_settings::BuildSettings;
use crate::topology::LatePolicy;
use crate::input::event::{BuildId, LayerEvent, LayerPhase, TimeNs, NO_LAYER};
use crate::input::reject::{DeadLetter, RejectReason};
use crate::windows::layer_window::LayerWindow;
use crate::offset_ledger::{Hold, HoldSet};
use crate::records::{DeadLetterRecord, Emitted, OutputRecord};
use crate::pipeline::decisions::{BuildDecisions, CooldownRun, LayerClose};

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

/// What a block is to its layer's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockLayer {
    /// The block names no layer.
    None,
    /// The layer's window is open: the block feeds it.
    Open,
    /// The layer's window was emitted and is kept for late updates: the block feeds it, late.
    Updating,
    /// The layer's window is final: the block is late and feeds no layer window.
    Final,
    /// A replayed block of a layer whose result is durable already (see
    /// [`crate::pipeline::decisions`]): it feeds no window and is not late.
    Replayed,
}

/// Where a record of a layer goes, by its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// An open or kept window, or a new one.
    Window,
    /// Nowhere: a replayed record of a durable result.
    Replayed,
    /// Nowhere: the layer is final.
    Final,
}

/// The shared state of one build.
#[derive(Debug)]
pub struct BuildBook {
    /// The build.
    pub build: BuildId,
    /// Its settings.
    pub settings: Arc<BuildSettings>,
    /// Running counts; operators add theirs.
    pub counters: BuildCounters,
    /// The build's description (`[build_info]`), when it has one.
    pub info: Option<Arc<BuildInfo>>,
    layers: BTreeMap<u32, LayerWindow>,
    max_closed_layer: Option<u32>,
    watermark: TimeNs,
    build_end_ns: Option<TimeNs>,
    ended_earlier: bool,
    /// Close decisions: those of earlier runs (a replay follows them) and this run's.
    decisions: BuildDecisions,
    /// Set when `decisions` changed since [`BuildBook::take_changed_decisions`].
    decisions_changed: bool,
    /// The offset this run started reading the build's partition at.
    replay_from: u64,
    /// The partition position: the end of the last batch processed.
    position: u64,
}

impl BuildBook {
    /// A build with no layer seen.
    pub fn new(build: BuildId, settings: Arc<BuildSettings>) -> BuildBook {
        BuildBook {
            build,
            settings,
            counters: BuildCounters::default(),
            info: None,
            layers: BTreeMap::new(),
            max_closed_layer: None,
            watermark: TimeNs::MIN,
            build_end_ns: None,
            ended_earlier: false,
            decisions: BuildDecisions::default(),
            decisions_changed: false,
            replay_from: 0,
            position: 0,
        }
    }

    /// Follows the decisions an earlier run recorded; this run reads the partition from
    /// `replay_from` on.
    pub fn resume(&mut self, decisions: BuildDecisions, replay_from: u64) {
        self.max_closed_layer = self.max_closed_layer.max(decisions.final_through);
        self.decisions = decisions;
        self.replay_from = replay_from;
        self.position = self.position.max(replay_from);
    }

    /// The decisions recorded so far, when they changed since the last call.
    pub fn take_changed_decisions(&mut self) -> Option<BuildDecisions> {
        std::mem::take(&mut self.decisions_changed).then(|| self.decisions.clone())
    }

    /// The partition position: the end of the last batch processed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the partition position to the end of a processed batch.
    pub fn advance_position(&mut self, next_offset: u64) {
        self.position = self.position.max(next_offset);
    }

    /// The position at which an earlier run ended the build, if it did.
    pub fn recorded_end(&self) -> Option<u64> {
        self.decisions.ended_at
    }

    /// Records that the build ended at the current position.
    pub fn record_end(&mut self) {
        if self.decisions.ended_at.is_none() {
            self.decisions.ended_at = Some(self.position);
            self.decisions_changed = true;
        }
    }

    /// Records a rule cooldown started by the alert of the record at `from`.
    pub fn record_cooldown_start(&mut self, slot: u32, alert_ns: TimeNs, scope: u32, from: u64) {
        self.decisions.start_cooldown(slot, alert_ns, scope, from);
        self.decisions_changed = true;
    }

    /// Records that the running cooldown of `slot` ended at the current position.
    pub fn record_cooldown_end(&mut self, slot: u32) {
        self.decisions.end_cooldown(slot, self.position);
        self.decisions_changed = true;
    }

    /// The recorded cooldowns a replay starts with: begun before this run's first offset and
    /// still running there.
    pub fn resumed_cooldowns(&self) -> Vec<CooldownRun> {
        self.decisions.cooldowns.iter().filter(|c| c.spans(self.replay_from)).copied().collect()
    }

    /// Records operator `op`'s state after taking `layer`'s first result (for the operators
    /// whose state spans the build: a replay resumes it, see `crate::pipeline::decisions`).
    pub fn record_snapshot<T: serde::Serialize>(&mut self, op: &str, layer: u32, state: &T) {
        let json = serde_json::to_string(state).unwrap_or_default();
        self.decisions_changed |= self.decisions.record_snapshot(op, layer, json);
    }

    /// Operator `op`'s state a replay starts with (`BuildDecisions::snapshot_for_replay_from`);
    /// the default (nothing taken yet) when there is none, or when it does not parse (written by
    /// another version: the operator then starts over, as it would on a new build).
    pub fn resume_snapshot<T: serde::de::DeserializeOwned + Default>(&self, op: &str) -> T {
        self.decisions.snapshot_for_replay_from(op, self.replay_from).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }

    /// Records a watermark advance taken on the wall clock at the current position.
    pub fn record_advance(&mut self, wm: TimeNs) {
        let before = self.decisions.advances.len();
        self.decisions.record_advance(self.position, wm);
        self.decisions_changed |= self.decisions.advances.len() != before;
    }

    /// The highest watermark an earlier run recorded at or before the current position.
    pub fn recorded_watermark(&self) -> Option<TimeNs> {
        self.decisions.watermark_due(self.position)
    }

    /// Open layers whose recorded close is at or before the current position: a replay closes
    /// them there, as the run it replaces did.
    pub fn recorded_due(&self) -> Vec<u32> {
        self.layers.iter().filter(|(l, w)| w.emitted == 0 && self.decisions.close_of(**l).is_some_and(|c| c.at <= self.position)).map(|(l, _)| *l).collect()
    }

    fn slot(&self, layer: u32, offset: u64) -> Slot {
        if self.decisions.ended_at.is_some_and(|e| offset >= e) {
            return Slot::Final;
        }
        if self.layers.contains_key(&layer) {
            return Slot::Window;
        }
        if let Some(c) = self.decisions.close_of(layer) {
            return if offset >= c.at {
                Slot::Final
            } else if c.first < self.replay_from {
                Slot::Replayed
            } else {
                Slot::Window
            };
        }
        if self.max_closed_layer.is_some_and(|m| layer <= m) || self.decisions.final_at(layer, offset) {
            Slot::Final
        } else {
            Slot::Window
        }
    }

    /// Treats every layer as already final: for a build that ended, whose late records must
    /// not reopen windows.
    pub fn mark_ended(&mut self) {
        self.max_closed_layer = Some(NO_LAYER - 1);
        self.ended_earlier = true;
    }

    /// True for the processor of a build that ended under an earlier processor of this run
    /// ([`BuildBook::mark_ended`]): what the end emits (the build report) was emitted there.
    pub fn ended_earlier(&self) -> bool {
        self.ended_earlier
    }

    /// The watermark last applied.
    pub fn watermark(&self) -> TimeNs {
        self.watermark
    }

    /// Advances the watermark; false (and nothing changes) when `wm` is not ahead of it.
    pub fn advance_watermark(&mut self, wm: TimeNs) -> bool {
        if wm <= self.watermark {
            return false;
        }
        self.watermark = wm;
        true
    }

    /// True when a `build_end` event was seen (it ends the build once behind the watermark).
    pub fn end_pending(&self) -> bool {
        self.build_end_ns.is_some()
    }

    /// True once the build's `build_end` event is at or behind `wm`, and (in a replay) the
    /// position at which the run it replaces ended the build is reached.
    pub fn ends_by(&self, wm: TimeNs) -> bool {
        self.build_end_ns.is_some_and(|e| wm >= e) && self.decisions.ended_at.is_none_or(|e| self.position >= e)
    }

    /// The window of `layer`, open or kept for updates.
    pub fn window(&self, layer: u32) -> Option<&LayerWindow> {
        self.layers.get(&layer)
    }

    /// The window of `layer`, open or kept for updates, to add a block's samples to.
    pub fn window_mut(&mut self, layer: u32) -> Option<&mut LayerWindow> {
        self.layers.get_mut(&layer)
    }

    /// Layer windows open or kept for late updates.
    pub fn open_windows(&self) -> usize {
        self.layers.len()
    }

    /// Adds the holds of the layer windows still open, and with the `update` policy of those
    /// kept for late updates too: a replay rebuilds a kept window from its records, so that a
    /// late sample after a restart still makes its next revision.
    pub fn holds_into(&self, acc: &mut HoldSet) {
        let kept = self.settings.late_policy == LatePolicy::Update;
        for w in self.layers.values().filter(|w| w.emitted == 0 || kept) {
            acc.merge(&w.hold);
        }
    }

    /// Applies a layer event of `batch`; dead-letters (into `out`) an `end` that matches no
    /// window.
    pub fn apply_layer_event(&mut self, ev: &LayerEvent, hold: Option<Hold>, origin_wall_ns: i64, out: &mut Vec<Emitted>) {
        if ev.phase == LayerPhase::BuildEnd {
            self.build_end_ns = Some(self.build_end_ns.map_or(ev.t_ns, |e| e.max(ev.t_ns)));
            return;
        }
        if !matches!(ev.phase, LayerPhase::Start | LayerPhase::End) {
            return;
        }
        if self.slot(ev.layer, ev.source_offset) == Slot::Replayed {
            // Part of a result already durable.
            return;
        }
        if ev.phase == LayerPhase::End && !self.layers.get(&ev.layer).is_some_and(|w| w.emitted == 0) && self.decisions.closed(ev.layer) {
            // The `end` of a layer that already closed (by its gap timeout): late, and ignored.
            // Whether its window is still kept for updates at this point is not something a
            // replay can know (it does not rebuild a window whose result is durable), so an
            // `end` neither revises a kept window nor becomes a dead letter.
            return;
        }
        if ev.phase == LayerPhase::End && !self.layers.contains_key(&ev.layer) {
            self.reject_unmatched_end(ev, hold, origin_wall_ns, out);
            return;
        }
        let Some(w) = self.window_for(ev.layer, ev.source_offset) else {
            // A start for a layer already emitted: nothing to update.
            return;
        };
        if let Some(h) = hold {
            w.hold.add(h);
        }
        w.first_offset = Some(w.first_offset.map_or(ev.source_offset, |f| f.min(ev.source_offset)));
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
        self.see_layer(ev.layer);
    }

    /// Dead-letters a layer `end` that matches no window: the layer was never started and has
    /// no samples before it, or its window is already final. The reason depends only on the
    /// windows open at the event's offset, which a replay from the stored offsets rebuilds, so a
    /// replay decides the same way:
    /// `unknown_build` when nothing of the build is open (its first record, or a build whose
    /// layers are all closed), else `unknown_layer`.
    fn reject_unmatched_end(&mut self, ev: &LayerEvent, hold: Option<Hold>, origin_wall_ns: i64, out: &mut Vec<Emitted>) {
        let what = format!("layer {} `end` of build {}", ev.layer, self.build);
        let reason = if self.layers.values().any(|w| w.emitted == 0) {
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
        let input = hold.map_or(0, |(input, _)| input);
        let d = DeadLetter::new(input, ev.source_offset, reason, raw.as_bytes());
        // Source name and partition are filled in by the actor, which knows them.
        let record = DeadLetterRecord::from_dead_letter(String::new(), None, &d);
        out.push(Emitted {
            record: OutputRecord::DeadLetter(record),
            hold: hold.map(HoldSet::one).unwrap_or_default(),
            origin_wall_ns,
            position: hold.map(|(input, _)| (input, ev.source_offset)),
        });
    }

    /// The window a record of `layer` at `offset` goes to: open or kept for updates, or a new
    /// one if the layer was never closed; `None` when the layer is final (or replayed).
    fn window_for(&mut self, layer: u32, offset: u64) -> Option<&mut LayerWindow> {
        if self.slot(layer, offset) != Slot::Window {
            return None;
        }
        Some(self.layers.entry(layer).or_default())
    }

    fn see_layer(&mut self, layer: u32) {
        self.counters.layer = Some(self.counters.layer.map_or(layer, |l| l.max(layer)));
    }

    /// Places a block in its layer's window (opening it if the layer was never closed), before
    /// any operator sees the block: extends the window's time range and holds its batch.
    pub fn admit_block(&mut self, h: &BlockHeader, hold: Option<Hold>) -> BlockLayer {
        if h.layer == NO_LAYER {
            return BlockLayer::None;
        }
        self.see_layer(h.layer);
        match self.slot(h.layer, h.source_offset) {
            Slot::Window => {}
            Slot::Replayed => return BlockLayer::Replayed,
            Slot::Final => return BlockLayer::Final,
        }
        let Some(w) = self.window_for(h.layer, h.source_offset) else { return BlockLayer::Final };
        let updating = w.emitted > 0;
        w.extend_time(h.t0_ns, h.t_last_ns());
        if let Some(hold) = hold {
            w.hold.add(hold);
        }
        w.first_offset = Some(w.first_offset.map_or(h.source_offset, |f| f.min(h.source_offset)));
        w.dirty = true;
        if updating {
            BlockLayer::Updating
        } else {
            BlockLayer::Open
        }
    }

    /// Open layers that watermark `wm` closes (all open layers with `force`), in layer order. A
    /// layer whose close an earlier run recorded closes at its recorded position instead
    /// ([`BuildBook::recorded_due`]).
    pub fn due_layers(&self, wm: TimeNs, force: bool) -> Vec<u32> {
        let gap = self.settings.layer_gap_ns;
        self.layers
            .iter()
            .filter(|(l, w)| w.emitted == 0 && (force || (w.closes_at(wm, gap) && self.decisions.close_of(**l).is_none())))
            .map(|(l, _)| *l)
            .collect()
    }

    /// Emitted layers that late samples changed since their last result, in layer order.
    pub fn updated_layers(&self) -> Vec<u32> {
        self.layers.iter().filter(|(_, w)| w.emitted > 0 && w.dirty).map(|(l, _)| *l).collect()
    }

    /// Records that a result of `layer` was emitted; its first closes the layer.
    pub fn mark_emitted(&mut self, layer: u32) {
        let Some(w) = self.layers.get_mut(&layer) else { return };
        let first = w.emitted == 0;
        w.emitted += 1;
        w.dirty = false;
        if first {
            let c = LayerClose { layer, first: w.first_offset.unwrap_or(self.position), at: self.position };
            if self.decisions.close_of(layer).is_none() {
                self.decisions.record(c);
                self.decisions_changed = true;
            }
            self.counters.layers_closed += 1;
            self.max_closed_layer = Some(self.max_closed_layer.map_or(layer, |m| m.max(layer)));
        }
    }

    /// Drops windows that are final: emitted, and past their allowed lateness at `wm` (all
    /// emitted ones with `force`).
    pub fn drop_final(&mut self, wm: TimeNs, force: bool) {
        let keep_ns = if self.settings.late_policy == LatePolicy::Update { self.settings.allowed_lateness_ns } else { -1 };
        self.layers.retain(|_, w| w.emitted == 0 || (!force && keep_ns >= 0 && wm <= w.end_ns().saturating_add(keep_ns)));
    }
}
