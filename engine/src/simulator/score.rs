//! How well a run found what the simulator planted, at layer resolution (DESIGN §6): the units
//! are (build, layer) pairs. A truth unit is a layer that carries at least one injected anomaly;
//! a flagged unit is a layer with at least one detection (an `anomaly` or an `spc_signal`
//! record). A detection matches an injected anomaly of its build when it names the anomaly's
//! layer or its event time lies inside the anomaly's `[start_ns, end_ns)` (an O2 rise outlasts
//! its layer). Recall = truth units with a matching detection ÷ truth units; precision = flagged
//! units with a matching detection ÷ flagged units. A detection without a layer (a machine-log
//! rule) counts for the layer whose window started last before its time.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::records::OutputRecord;

use super::anomalies::InjectedAnomaly;
use super::kinds::AnomalyKind;

/// One in-situ detection, reduced to what scoring needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Build.
    pub build_id: String,
    /// Layer (resolved for layer-less records).
    pub layer: u32,
    /// Event time.
    pub time_ns: i64,
    /// What raised it: the rule, or `spc:<chart>`.
    pub what: String,
}

/// The scores of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LayerScore {
    /// Layers carrying an injected anomaly.
    pub truth_layers: usize,
    /// Of those, the layers found.
    pub found_layers: usize,
    /// Layers flagged by any detection.
    pub flagged_layers: usize,
    /// Of those, the layers whose flag matches an injected anomaly.
    pub confirmed_layers: usize,
    /// found ÷ truth (1 when nothing was planted).
    pub recall: f64,
    /// confirmed ÷ flagged (1 when nothing was flagged).
    pub precision: f64,
    /// Per kind: (layers found, layers carrying it).
    pub per_kind: BTreeMap<AnomalyKind, (usize, usize)>,
    /// Truth units not found: (build, layer, kinds).
    pub missed: Vec<(String, u32, Vec<AnomalyKind>)>,
    /// Flagged units without an injected anomaly: (build, layer, what flagged it).
    pub false_flags: Vec<(String, u32, Vec<String>)>,
}

/// The detections among `records`: anomalies and SPC signals, layer-less ones placed by the
/// layer windows' starts found in the layer summaries.
pub fn detections(records: &[OutputRecord]) -> Vec<Detection> {
    let mut starts: BTreeMap<&str, BTreeMap<i64, u32>> = BTreeMap::new();
    for r in records {
        if let OutputRecord::LayerSummary(s) = r {
            let e = starts.entry(s.build_id.as_str()).or_default();
            let t = e.iter().find(|(_, l)| **l == s.layer).map(|(t, _)| *t);
            if t.is_none_or(|t| s.window_start_ns < t) {
                e.retain(|_, l| *l != s.layer);
                e.insert(s.window_start_ns, s.layer);
            }
        }
    }
    let layer_at = |build: &str, t: i64| starts.get(build).and_then(|m| m.range(..=t).next_back()).map(|(_, l)| *l);
    records
        .iter()
        .filter_map(|r| match r {
            OutputRecord::Anomaly(a) => {
                let layer = a.layer.or_else(|| layer_at(&a.build_id, a.time_ns))?;
                Some(Detection { build_id: a.build_id.clone(), layer, time_ns: a.time_ns, what: a.rule.clone() })
            }
            OutputRecord::SpcSignal(s) => Some(Detection { build_id: s.build_id.clone(), layer: s.layer, time_ns: s.time_ns, what: format!("spc:{}", s.spc) }),
            _ => None,
        })
        .collect()
}

/// Scores `found` against the ground truth `truth`.
pub fn score(truth: &[InjectedAnomaly], found: &[Detection]) -> LayerScore {
    let matches = |d: &Detection, g: &InjectedAnomaly| d.build_id == g.build_id && (d.layer == g.layer || (g.start_ns..g.end_ns).contains(&d.time_ns));
    let mut units: BTreeMap<(String, u32), Vec<&InjectedAnomaly>> = BTreeMap::new();
    for g in truth {
        units.entry((g.build_id.clone(), g.layer)).or_default().push(g);
    }
    let mut s = LayerScore { truth_layers: units.len(), ..LayerScore::default() };
    for ((build, layer), gs) in &units {
        let hit = gs.iter().any(|g| found.iter().any(|d| matches(d, g)));
        let kinds: BTreeSet<AnomalyKind> = gs.iter().map(|g| g.kind).collect();
        for k in &kinds {
            let e = s.per_kind.entry(*k).or_default();
            e.1 += 1;
            e.0 += usize::from(hit);
        }
        if hit {
            s.found_layers += 1;
        } else {
            s.missed.push((build.clone(), *layer, kinds.into_iter().collect()));
        }
    }
    let mut flagged: BTreeMap<(String, u32), Vec<&Detection>> = BTreeMap::new();
    for d in found {
        flagged.entry((d.build_id.clone(), d.layer)).or_default().push(d);
    }
    s.flagged_layers = flagged.len();
    for ((build, layer), ds) in &flagged {
        if ds.iter().any(|d| truth.iter().any(|g| matches(d, g))) {
            s.confirmed_layers += 1;
        } else {
            let whats: BTreeSet<String> = ds.iter().map(|d| d.what.clone()).collect();
            s.false_flags.push((build.clone(), *layer, whats.into_iter().collect()));
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    s.recall = ratio(s.found_layers, s.truth_layers);
    s.precision = ratio(s.confirmed_layers, s.flagged_layers);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(layer: u32, kind: AnomalyKind, t: (i64, i64)) -> InjectedAnomaly {
        InjectedAnomaly { build_id: "b".into(), layer, laser: None, kind, start_ns: t.0, end_ns: t.1, x_mm: None, y_mm: None }
    }

    fn d(layer: u32, t: i64) -> Detection {
        Detection { build_id: "b".into(), layer, time_ns: t, what: "r".into() }
    }

    #[test]
    fn layers_are_matched_by_number_or_by_time() {
        let truth = [g(2, AnomalyKind::HotSpot, (20, 30)), g(5, AnomalyKind::O2Rise, (50, 70)), g(8, AnomalyKind::Fogging, (80, 90))];
        // Layer 2 by number, the O2 rise by time in layer 6, a false flag on layer 4; layer 8 missed.
        let found = [d(2, 25), d(6, 61), d(4, 41), d(4, 42)];
        let s = score(&truth, &found);
        assert_eq!((s.truth_layers, s.found_layers, s.flagged_layers, s.confirmed_layers), (3, 2, 3, 2));
        assert_eq!(s.missed, vec![("b".to_string(), 8, vec![AnomalyKind::Fogging])]);
        assert_eq!(s.false_flags, vec![("b".to_string(), 4, vec!["r".to_string()])]);
        assert!((s.recall - 2.0 / 3.0).abs() < 1e-12 && (s.precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.per_kind[&AnomalyKind::O2Rise], (1, 1));
    }
}
