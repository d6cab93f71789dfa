//! The close decisions of a build, kept with the progress so that a replay takes the same ones.
//!
//! A layer window closes when the watermark passes its end, or on the wall clock (an idle build
//! whose last layer never got an `end`), or at the build's end. Which of the build's records
//! went into the result and which came late depends on where in the partition that happened.
//! So each close is recorded as a [`LayerClose`]: the layer, the offset of its first record and
//! the partition position `at` which it closed (every record of the build before `at` had been
//! processed, none after). A transactional sink stores the decisions of a partition with its
//! progress, in the same transaction as the records; a close is recorded before its result
//! leaves the build, so a stored result always comes with its decision.
//!
//! A replay from offset `R` (the stored resume offset) then treats a record of a recorded layer
//! at offset `o` as follows:
//! - `o ≥ at`: late, exactly as in the run it replaces (`drop`, `late_sink`, `update`);
//! - `o < at` and the layer's first record is before `R`: the record is in the result already
//!   made durable (the ledger let `R` pass the layer's first batch only once it was): it feeds no
//!   window (*replayed*); rule alerts are still evaluated, and sinks drop the ones they hold;
//! - `o < at` and the first record is at or after `R`: the window is rebuilt from its records
//!   and closed at `at` exactly, whatever the replay's watermark says.
//!
//! Decisions whose `at` is at or below every sink's stored resume offset can no longer meet a
//! replayed record before `at`: they are folded into `final_through` (every layer up to it is
//! final for a replay) to keep the stored state small.
//!
//! The watermark of a build is a function of its partition's records (`max_t − bound` before
//! each record), except when its input goes quiet: after the idle timeout (wall clock) the
//! watermark jumps ahead of the data. Such an advance is recorded as a [`WatermarkAdvance`] at
//! the build's partition position, and a replay applies it before its first record at or after
//! that position, so time windows, cooldowns and lateness follow the same watermark as the run
//! it replaces. Folded advances leave their highest value (`folded_watermark`), applied from the
//! start of a replay.

use serde::{Deserialize, Serialize};

use crate::input::event::TimeNs;

/// One recorded layer close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerClose {
    /// The layer.
    #[serde(rename = "l")]
    pub layer: u32,
    /// Offset of the layer's first record in the partition.
    #[serde(rename = "f")]
    pub first: u64,
    /// Partition position at which it closed.
    #[serde(rename = "a")]
    pub at: u64,
}

/// One recorded watermark advance taken on the wall clock (an idle input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkAdvance {
    /// Partition position at which it was applied (every record of the build before it
    /// processed, none after).
    #[serde(rename = "a")]
    pub at: u64,
    /// The watermark, ns.
    #[serde(rename = "w")]
    pub wm: TimeNs,
}

/// A rule cooldown, recorded from the alert that started it until the watermark ended it.
///
/// A running cooldown holds the batch of its alert, so a replay from before that batch derives
/// it again from the input. Once it ended, the resume offset may pass the alert while records
/// it suppressed are not durable yet; a replay from between the two meets them without the
/// cooldown. So a replay from `R` starts with every recorded cooldown that began before `R` and
/// ended after it (at most one per rule and laser; the progress board stores only those).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownRun {
    /// Rule and laser slot (the rules operator's numbering).
    #[serde(rename = "s")]
    pub slot: u32,
    /// Event time of the alert, ns.
    #[serde(rename = "t")]
    pub alert_ns: TimeNs,
    /// The alert's scope (its layer: a cooldown does not cross layers).
    #[serde(rename = "l")]
    pub scope: u32,
    /// Source offset of the alert's record.
    #[serde(rename = "f")]
    pub from: u64,
    /// Partition position at which it ended, once it did.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl CooldownRun {
    /// True when a replay from `r` must start with it.
    pub fn spans(&self, r: u64) -> bool {
        self.from < r && self.until.is_none_or(|u| u > r)
    }
}

/// The state of an operator whose state spans the build (SPC charts, layer verdicts) after it
/// took layer `layer`'s first result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSnapshot {
    /// The operator (`spc`, `verdict`).
    #[serde(rename = "o")]
    pub op: String,
    /// The layer last taken.
    #[serde(rename = "l")]
    pub layer: u32,
    /// Its state (JSON, floats as their bits).
    #[serde(rename = "s")]
    pub state: String,
}

/// The recorded decisions of one build.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDecisions {
    /// Every layer up to this one is final for any replayed record.
    #[serde(rename = "ft", default, skip_serializing_if = "Option::is_none")]
    pub final_through: Option<u32>,
    /// The build ended (its `build_end` passed the watermark) at this partition position.
    #[serde(rename = "end", default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Closes not folded yet, in the order they happened.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub closes: Vec<LayerClose>,
    /// Wall-clock watermark advances not folded yet, in the order they happened.
    #[serde(rename = "w", default, skip_serializing_if = "Vec::is_empty")]
    pub advances: Vec<WatermarkAdvance>,
    /// The highest folded advance: a replay starts with at least this watermark.
    #[serde(rename = "wf", default, skip_serializing_if = "Option::is_none")]
    pub folded_watermark: Option<TimeNs>,
    /// Rule cooldowns not folded yet.
    #[serde(rename = "cd", default, skip_serializing_if = "Vec::is_empty")]
    pub cooldowns: Vec<CooldownRun>,
    /// Snapshots of the operators whose state spans the build, in the order the layers were
    /// taken: per operator, one per layer whose close is not folded, and the last one of the
    /// folded layers.
    #[serde(rename = "snap", default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<LayerSnapshot>,
}

impl BuildDecisions {
    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.final_through.is_none() && self.ended_at.is_none() && self.closes.is_empty() && self.advances.is_empty() && self.folded_watermark.is_none() && self.cooldowns.is_empty() && self.snapshots.is_empty()
    }

    /// Records operator `op`'s state after taking `layer` (the first snapshot of a layer counts).
    pub fn record_snapshot(&mut self, op: &str, layer: u32, state: String) -> bool {
        if self.snapshots.iter().any(|s| s.op == op && s.layer == layer) {
            return false;
        }
        self.snapshots.push(LayerSnapshot { op: op.to_owned(), layer, state });
        true
    }

    /// The state of operator `op` a replay from `r` starts with: its snapshot of the last layer
    /// taken whose result is durable (folded, or its first record before `r`); the layers after
    /// it are rebuilt by the replay and taken again.
    pub fn snapshot_for_replay_from(&self, op: &str, r: u64) -> Option<&str> {
        self.snapshot_at(op, r).map(|s| s.state.as_str())
    }

    fn snapshot_at(&self, op: &str, r: u64) -> Option<&LayerSnapshot> {
        let durable = |l: u32| self.final_through.is_some_and(|f| l <= f) || self.close_of(l).is_some_and(|c| c.first < r);
        // An operator takes layers in increasing order (never one at or below the last), so the
        // highest layer is the latest snapshot, whatever order a merge left them in.
        self.snapshots.iter().filter(|s| s.op == op && durable(s.layer)).max_by_key(|s| s.layer)
    }

    /// Records a wall-clock watermark advance to `wm` at partition position `at`.
    pub fn record_advance(&mut self, at: u64, wm: TimeNs) {
        if self.watermark_due(u64::MAX).is_none_or(|w| wm > w) {
            self.advances.push(WatermarkAdvance { at, wm });
        }
    }

    /// Records a cooldown started by the alert at `from`; the slot's earlier one, if still
    /// running, ends there.
    pub fn start_cooldown(&mut self, slot: u32, alert_ns: TimeNs, scope: u32, from: u64) {
        self.end_cooldown(slot, from);
        self.cooldowns.push(CooldownRun { slot, alert_ns, scope, from, until: None });
    }

    /// Records that the running cooldown of `slot` ended at partition position `at`.
    pub fn end_cooldown(&mut self, slot: u32, at: u64) {
        for c in self.cooldowns.iter_mut().filter(|c| c.slot == slot && c.until.is_none()) {
            c.until = Some(at.max(c.from + 1));
        }
    }

    /// The decisions a replay from `r` needs: the cooldowns running at `r` and started before
    /// it, per operator the one snapshot it resumes from, the rest as recorded.
    pub fn for_replay_from(&self, r: u64) -> BuildDecisions {
        // Built field by field: the snapshots a replay from `r` does not resume (most of them)
        // are not copied, and this runs for every build at every checkpoint.
        let mut ops: Vec<&str> = self.snapshots.iter().map(|s| s.op.as_str()).collect();
        ops.sort_unstable();
        ops.dedup();
        BuildDecisions {
            final_through: self.final_through,
            ended_at: self.ended_at,
            closes: self.closes.clone(),
            advances: self.advances.clone(),
            folded_watermark: self.folded_watermark,
            cooldowns: self.cooldowns.iter().filter(|c| c.spans(r)).copied().collect(),
            snapshots: ops.iter().filter_map(|op| self.snapshot_at(op, r).cloned()).collect(),
        }
    }

    /// The highest recorded advance at or before partition position `position`.
    pub fn watermark_due(&self, position: u64) -> Option<TimeNs> {
        self.advances.iter().filter(|a| a.at <= position).map(|a| a.wm).chain(self.folded_watermark).max()
    }

    /// True when `layer` closed (its close is recorded, or folded).
    pub fn closed(&self, layer: u32) -> bool {
        self.close_of(layer).is_some() || self.final_through.is_some_and(|f| layer <= f)
    }

    /// The recorded close of `layer`.
    pub fn close_of(&self, layer: u32) -> Option<&LayerClose> {
        self.closes.iter().find(|c| c.layer == layer)
    }

    /// Records a close (the first one of a layer counts).
    pub fn record(&mut self, c: LayerClose) {
        if self.close_of(c.layer).is_none() {
            self.closes.push(c);
        }
    }

    /// True when a record of `layer` at `offset` meets a final layer whatever its window: the
    /// build ended before it, the layer is folded, or a layer at least as high closed before it.
    pub fn final_at(&self, layer: u32, offset: u64) -> bool {
        self.ended_at.is_some_and(|e| offset >= e) || self.final_through.is_some_and(|f| layer <= f) || self.closes.iter().any(|c| c.at <= offset && c.layer >= layer)
    }

    /// Folds the closes at or below `through` (every sink's stored resume offset).
    pub fn fold(&mut self, through: u64) {
        fold_max(&mut self.closes, &mut self.final_through, |c| (c.at <= through).then_some(c.layer));
        fold_max(&mut self.advances, &mut self.folded_watermark, |a| (a.at <= through).then_some(a.wm));
        self.cooldowns.retain(|c| c.until.is_none_or(|u| u > through));
        // Of an operator's snapshots of folded layers, only the last one can still start a replay.
        if let Some(ft) = self.final_through {
            let mut last: Vec<(String, u32)> = Vec::new();
            for s in self.snapshots.iter().filter(|s| s.layer <= ft) {
                match last.iter_mut().find(|(op, _)| *op == s.op) {
                    Some(e) => e.1 = e.1.max(s.layer),
                    None => last.push((s.op.clone(), s.layer)),
                }
            }
            self.snapshots.retain(|s| s.layer > ft || last.iter().any(|(op, l)| *op == s.op && *l == s.layer));
        }
    }

    /// Adds what `other` recorded (a union: every recorded decision is one the run took).
    pub fn merge(&mut self, other: &BuildDecisions) {
        self.final_through = self.final_through.max(other.final_through);
        self.ended_at = match (self.ended_at, other.ended_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for c in &other.closes {
            self.record(*c);
        }
        for a in &other.advances {
            if !self.advances.contains(a) {
                self.advances.push(*a);
            }
        }
        self.advances.sort_by_key(|a| (a.at, a.wm));
        self.folded_watermark = self.folded_watermark.max(other.folded_watermark);
        for c in &other.cooldowns {
            match self.cooldowns.iter_mut().find(|m| m.slot == c.slot && m.from == c.from) {
                Some(m) => m.until = m.until.or(c.until),
                None => self.cooldowns.push(*c),
            }
        }
        for s in &other.snapshots {
            self.record_snapshot(&s.op, s.layer, s.state.clone());
        }
    }
}

/// Removes the items of `v` that `folded` gives a value for, keeping the highest in `top`.
fn fold_max<T, V: Ord + Copy>(v: &mut Vec<T>, top: &mut Option<V>, folded: impl Fn(&T) -> Option<V>) {
    v.retain(|x| match folded(x) {
        Some(val) => {
            *top = Some(top.map_or(val, |t| t.max(val)));
            false
        }
        None => true,
    });
}

/// What a partition's replay needs besides its offsets, as stored with the progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The largest event time of the partition's records before the resume offset (`MIN` when
    /// unknown): the replay's watermark starts from it, as the original's stood there.
    #[serde(rename = "mt", default = "min_time", skip_serializing_if = "is_min_time")]
    pub max_t: TimeNs,
    /// Per build.
    #[serde(rename = "b", default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub builds: std::collections::BTreeMap<String, BuildDecisions>,
    /// The partition's open `input_quality` window at the resume offset, when a sink takes
    /// those records.
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub input_quality: Option<crate::pipeline::input_quality::QualitySnapshot>,
}

fn min_time() -> TimeNs {
    TimeNs::MIN
}

fn is_min_time(t: &TimeNs) -> bool {
    *t == TimeNs::MIN
}

impl PartitionState {
    /// Adds what `other` stored.
    pub fn merge(&mut self, other: &PartitionState) {
        self.max_t = self.max_t.max(other.max_t);
        // The snapshot at the lowest offset: where a replay of both starts.
        if let Some(q) = &other.input_quality {
            if self.input_quality.as_ref().is_none_or(|mine| q.at < mine.at) {
                self.input_quality = Some(q.clone());
            }
        }
        for (b, d) in &other.builds {
            self.builds.entry(b.clone()).or_default().merge(d);
        }
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses [`PartitionState::to_json`]'s output.
    pub fn from_json(s: &str) -> Result<PartitionState, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_resumes_layer_snapshots_after_the_last_durable_layer() {
        let mut d = BuildDecisions::default();
        for (l, first, at) in [(0, 0, 10), (1, 8, 20), (2, 18, 30)] {
            d.record(LayerClose { layer: l, first, at });
            assert!(d.record_snapshot("spc", l, format!("s{l}")));
        }
        assert!(d.record_snapshot("verdict", 0, "v0".into()));
        assert!(!d.record_snapshot("spc", 2, "again".into()), "a layer is taken once");
        assert_eq!(d.snapshot_for_replay_from("spc", 5), Some("s0"), "layer 1 is rebuilt from offset 8");
        assert_eq!(d.snapshot_for_replay_from("spc", 0), None, "nothing durable: the charts start empty");
        assert_eq!(d.snapshot_for_replay_from("spc", 19), Some("s2"));
        assert_eq!(d.snapshot_for_replay_from("verdict", 19), Some("v0"));
        let stored = d.for_replay_from(19);
        assert_eq!(stored.snapshots.iter().map(|s| (s.op.as_str(), s.layer)).collect::<Vec<_>>(), vec![("spc", 2), ("verdict", 0)], "only what a replay from 19 resumes");
        d.fold(20);
        let kept: Vec<(&str, u32)> = d.snapshots.iter().map(|s| (s.op.as_str(), s.layer)).collect();
        assert_eq!((d.final_through, kept), (Some(1), vec![("spc", 1), ("spc", 2), ("verdict", 0)]), "one folded snapshot per operator is kept");
        assert_eq!(d.snapshot_for_replay_from("spc", 18), Some("s1"));
        let back = PartitionState { max_t: 1, builds: [("b".to_owned(), d.clone())].into(), input_quality: None };
        assert_eq!(PartitionState::from_json(&back.to_json()).unwrap(), back);
        let mut m = BuildDecisions::default();
        m.merge(&d);
        m.merge(&d);
        assert_eq!(m.snapshots, d.snapshots);
    }

    #[test]
    fn fold_and_finality() {
        let mut d = BuildDecisions::default();
        d.record(LayerClose { layer: 0, first: 0, at: 10 });
        d.record(LayerClose { layer: 1, first: 5, at: 30 });
        d.record(LayerClose { layer: 1, first: 5, at: 99 });
        assert_eq!(d.closes.len(), 2, "the first close of a layer counts");
        assert!(!d.final_at(1, 20), "layer 1 still open at 20");
        assert!(d.final_at(0, 20) && d.final_at(1, 30));
        d.fold(20);
        assert_eq!((d.final_through, d.closes.len()), (Some(0), 1));
        let s = PartitionState { max_t: 7, builds: [("b".to_owned(), d.clone())].into(), input_quality: None };
        assert_eq!(PartitionState::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(PartitionState::from_json("{}").unwrap(), PartitionState { max_t: TimeNs::MIN, builds: Default::default(), input_quality: None });
        let mut m = BuildDecisions { ended_at: Some(50), ..Default::default() };
        m.merge(&d);
        assert_eq!((m.final_through, m.ended_at, m.closes.len()), (Some(0), Some(50), 1));
        assert!(m.final_at(7, 50));
    }

    #[test]
    fn watermark_advances_apply_from_their_position_and_fold_to_their_maximum() {
        let mut d = BuildDecisions::default();
        d.record_advance(10, 100);
        d.record_advance(12, 90);
        d.record_advance(20, 200);
        assert_eq!(d.advances.len(), 2, "an advance below a recorded one is no advance");
        assert_eq!((d.watermark_due(9), d.watermark_due(10), d.watermark_due(25)), (None, Some(100), Some(200)));
        d.fold(15);
        assert_eq!((d.folded_watermark, d.advances.len(), d.watermark_due(0)), (Some(100), 1, Some(100)));
        let back = PartitionState { max_t: 1, builds: [("b".to_owned(), d.clone())].into(), input_quality: None };
        assert_eq!(PartitionState::from_json(&back.to_json()).unwrap(), back);
        let mut m = BuildDecisions::default();
        m.merge(&d);
        m.merge(&d);
        assert_eq!(m, d);
    }

    #[test]
    fn cooldowns_spanning_the_resume_offset_are_kept_for_a_replay() {
        let mut d = BuildDecisions::default();
        d.start_cooldown(3, 1_000, 7, 10);
        d.end_cooldown(3, 40);
        d.start_cooldown(3, 9_000, 7, 50);
        d.start_cooldown(4, 9_500, 7, 55);
        assert_eq!((d.cooldowns[0].until, d.cooldowns[1].until), (Some(40), None), "slot 3's second one still runs");
        assert_eq!(d.cooldowns.len(), 3);
        let at = |r: u64| d.for_replay_from(r).cooldowns.iter().map(|c| c.from).collect::<Vec<_>>();
        assert_eq!((at(10), at(20), at(40), at(60)), (vec![], vec![10], vec![], vec![50, 55]));
        d.fold(40);
        assert_eq!(d.cooldowns.iter().map(|c| c.from).collect::<Vec<_>>(), vec![50, 55], "ended at or below the fold");
        let back = PartitionState { max_t: 1, builds: [("b".to_owned(), d.clone())].into(), input_quality: None };
        assert_eq!(PartitionState::from_json(&back.to_json()).unwrap(), back);
    }
}
