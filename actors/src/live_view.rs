//! The operator's live view: each build's recent results, kept in memory for the dashboard
//! (`/api/…` on the admin server). Fed where results leave the engine ([`crate::tree::outputs`]
//! observes every record it routes, whether or not a sink takes its kind), once per batch of
//! results — never per sample: results are per layer, per alert or per window.
//!
//! It must never hold the data path up: one short lock per batch of results, no I/O, no await.
//!
//! # Memory bound
//! At most [`MAX_BUILDS`] builds (the least recently updated goes first); per build the grid maps
//! of the last [`GRID_LAYERS`] layers (≈ 32 B per non-empty cell: a 20 × 20 map is 13 KiB, so
//! 650 KiB per build), the anomalies with a position of those layers (at most
//! [`ANOMALIES_PER_LAYER`] each), verdicts, data quality and SPC points of the last
//! [`LAYER_HISTORY`] layers (≈ 50 B per layer and chart and laser), the last
//! [`SIGNALS_PER_BUILD`] SPC signals; across builds the last [`ALERTS`] alerts. Older layers are
//! in the results store, when the topology has one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use meltstream_engine::records::{Emitted, GridMap, OutputRecord, SpcSignal};

/// Builds kept.
pub const MAX_BUILDS: usize = 64;
/// Layers whose grid maps (and positioned anomalies) are kept per build.
pub const GRID_LAYERS: usize = 50;
/// Layers whose verdicts, data quality and SPC points are kept per build.
pub const LAYER_HISTORY: usize = 1000;
/// SPC signals kept per build.
pub const SIGNALS_PER_BUILD: usize = 200;
/// Alerts kept across builds.
pub const ALERTS: usize = 200;
/// Positioned anomalies kept per layer of a build.
pub const ANOMALIES_PER_LAYER: usize = 100;

/// An SPC chart of the topology, as the dashboard draws it.
#[derive(Clone, Debug, Serialize)]
pub struct ChartSpec {
    /// Its name.
    pub name: String,
    /// `shewhart`, `ewma` or `cusum`.
    pub chart: String,
    /// Channel charted.
    pub channel: String,
    /// `mean`, `std_dev`, `value` or `cell_mean` (cell charts have no trend: too many points).
    pub statistic: String,
}

/// One item of the alert feed.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// Increases by one per alert: what a client has seen.
    pub seq: u64,
    /// `anomaly`, `spc` or `verdict`.
    pub kind: &'static str,
    /// Build.
    pub build_id: String,
    /// Layer, when known.
    pub layer: Option<u32>,
    /// Event time, RFC 3339.
    pub time: String,
    /// What fired (rule, chart, verdict).
    pub what: String,
    /// In words.
    pub detail: String,
    #[serde(skip)]
    key: String,
}

/// An anomaly placed on the layer map.
#[derive(Clone, Debug, Serialize)]
pub struct PlacedAnomaly {
    /// Rule.
    pub rule: String,
    /// Value that fired.
    pub value: f64,
    /// Position, mm.
    pub x_mm: f64,
    /// Same, y.
    pub y_mm: f64,
}

/// A layer's verdict, short.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictPoint {
    /// `ok`, `warn` or `fail`.
    pub verdict: String,
    /// Why.
    pub reasons: Vec<String>,
}

/// One chart's points for one laser: the statistic per layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trend {
    /// (layer, value), oldest first.
    pub points: VecDeque<(u32, f64)>,
    /// Phase I centre and sigma of the statistic, once known.
    pub baseline: Option<(f64, f64)>,
}

/// What the view keeps of one build.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LiveBuild {
    /// Machine (from the build's description), when known.
    pub machine: Option<String>,
    /// Highest layer with a result.
    pub latest_layer: Option<u32>,
    /// Verdict per layer.
    pub verdicts: BTreeMap<u32, VerdictPoint>,
    /// Data quality (0–1) per layer.
    pub data_quality: BTreeMap<u32, f64>,
    /// Anomalies seen.
    pub anomalies: u64,
    /// The build report arrived: the build ended.
    pub ended: bool,
    /// Grid map per layer (the last [`GRID_LAYERS`]).
    #[serde(skip)]
    pub grids: BTreeMap<u32, GridMap>,
    /// Positioned anomalies per layer (the last [`GRID_LAYERS`]).
    #[serde(skip)]
    pub placed: BTreeMap<u32, Vec<PlacedAnomaly>>,
    /// Per chart, per laser: the statistic per layer.
    #[serde(skip)]
    pub trends: BTreeMap<String, BTreeMap<u8, Trend>>,
    /// The last SPC signals.
    #[serde(skip)]
    pub signals: VecDeque<SpcSignal>,
    #[serde(skip)]
    touched: u64,
}

#[derive(Default)]
struct State {
    charts: Vec<ChartSpec>,
    builds: BTreeMap<String, LiveBuild>,
    alerts: VecDeque<Alert>,
    next_seq: u64,
    /// Dead letters routed to the sinks, per reason (a sink's own `unwritable` ones are only in
    /// the metric).
    dead_letters: BTreeMap<String, u64>,
    /// Increases on every change: what the event stream compares.
    version: u64,
}

/// The live view (see the module docs).
#[derive(Default)]
pub struct LiveView {
    state: Mutex<State>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView").field("builds", &self.lock().builds.len()).finish_non_exhaustive()
    }
}

fn trim_front<K: Ord + Copy, V>(m: &mut BTreeMap<K, V>, keep: usize) {
    while m.len() > keep {
        let Some(&k) = m.keys().next() else { break };
        m.remove(&k);
    }
}

impl LiveView {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the topology's SPC charts (the engine does, as it starts).
    pub fn set_charts(&self, charts: Vec<ChartSpec>) {
        self.lock().charts = charts;
    }

    /// The charts.
    pub fn charts(&self) -> Vec<ChartSpec> {
        self.lock().charts.clone()
    }

    /// Names `build`'s machine.
    pub fn set_machine(&self, build: &str, machine: Option<String>) {
        if machine.is_some() {
            let mut s = self.lock();
            s.version += 1;
            Self::build(&mut s, build).machine = machine;
        }
    }

    fn build<'a>(s: &'a mut State, id: &str) -> &'a mut LiveBuild {
        let touched = s.version;
        if !s.builds.contains_key(id) && s.builds.len() >= MAX_BUILDS {
            let oldest = s.builds.iter().min_by_key(|(_, b)| (!b.ended, b.touched)).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                s.builds.remove(&k);
            }
        }
        let b = s.builds.entry(id.to_owned()).or_default();
        b.touched = touched;
        b
    }

    fn alert(s: &mut State, kind: &'static str, build_id: &str, layer: Option<u32>, time: &str, what: String, detail: String, key: String) {
        if s.alerts.iter().any(|a| a.key == key) {
            return; // a replayed result
        }
        s.next_seq += 1;
        s.alerts.push_back(Alert { seq: s.next_seq, kind, build_id: build_id.to_owned(), layer, time: time.to_owned(), what, detail, key });
        while s.alerts.len() > ALERTS {
            s.alerts.pop_front();
        }
    }

    /// Takes in a batch of results on their way to the sinks.
    pub fn observe(&self, records: &[Emitted]) {
        if records.is_empty() {
            return;
        }
        let mut s = self.lock();
        s.version += 1;
        for e in records {
            Self::observe_one(&mut s, &e.record);
        }
    }

    fn observe_one(s: &mut State, r: &OutputRecord) {
        match r {
            OutputRecord::Grid(g) => {
                let b = Self::build(s, &g.build_id);
                b.latest_layer = b.latest_layer.max(Some(g.layer));
                if b.grids.get(&g.layer).is_none_or(|old| old.revision <= g.revision) {
                    b.grids.insert(g.layer, g.clone());
                }
                trim_front(&mut b.grids, GRID_LAYERS);
            }
            OutputRecord::Anomaly(a) => {
                let b = Self::build(s, &a.build_id);
                b.anomalies += 1;
                if let (Some(layer), Some(x), Some(y)) = (a.layer, a.x_mm, a.y_mm) {
                    let v = b.placed.entry(layer).or_default();
                    if v.len() < ANOMALIES_PER_LAYER {
                        v.push(PlacedAnomaly { rule: a.rule.clone(), value: a.value, x_mm: x, y_mm: y });
                    }
                    trim_front(&mut b.placed, GRID_LAYERS);
                }
                let laser = a.laser.map_or(String::new(), |l| format!(" laser {l}"));
                let detail = format!("{} {:.2} {} {}{laser}", a.channel, a.value, a.op, a.limit);
                Self::alert(s, "anomaly", &a.build_id, a.layer, &a.time, a.rule.clone(), detail, r.key());
            }
            OutputRecord::LayerSummary(l) => {
                let charts: Vec<(String, String, String)> = s.charts.iter().filter(|c| c.statistic != "cell_mean").map(|c| (c.name.clone(), c.channel.clone(), c.statistic.clone())).collect();
                let b = Self::build(s, &l.build_id);
                b.latest_layer = b.latest_layer.max(Some(l.layer));
                for (name, channel, statistic) in charts {
                    let v = match statistic.as_str() {
                        "mean" => l.channels.get(&channel).map(|c| c.mean),
                        "std_dev" => l.channels.get(&channel).map(|c| c.std_dev),
                        _ => l.energy_density_j_mm3,
                    };
                    let Some(v) = v.filter(|v| v.is_finite()) else { continue };
                    let t = b.trends.entry(name).or_default().entry(l.laser).or_default();
                    match t.points.iter_mut().rev().find(|(layer, _)| *layer == l.layer) {
                        Some(p) => p.1 = v,
                        None => {
                            let at = t.points.iter().rposition(|(layer, _)| *layer < l.layer).map_or(0, |i| i + 1);
                            t.points.insert(at, (l.layer, v));
                        }
                    }
                    while t.points.len() > LAYER_HISTORY {
                        t.points.pop_front();
                    }
                }
            }
            OutputRecord::SpcBaseline(bl) if bl.cell.is_none() => {
                let b = Self::build(s, &bl.build_id);
                b.trends.entry(bl.spc.clone()).or_default().entry(bl.laser).or_default().baseline = Some((bl.centre, bl.sigma));
            }
            OutputRecord::SpcSignal(sig) => {
                let b = Self::build(s, &sig.build_id);
                if sig.cell.is_none() {
                    let t = b.trends.entry(sig.spc.clone()).or_default().entry(sig.laser).or_default();
                    t.baseline.get_or_insert((sig.baseline_centre, sig.baseline_sigma));
                }
                b.signals.push_back(sig.clone());
                while b.signals.len() > SIGNALS_PER_BUILD {
                    b.signals.pop_front();
                }
                let at = match &sig.cell {
                    Some(c) => format!("cell {} ({:.0}, {:.0}) mm", c.index, c.x_mm, c.y_mm),
                    None => format!("laser {}", sig.laser),
                };
                let detail = format!("{} {} {}: {} = {:.4} (limits {:.4} – {:.4})", sig.chart, sig.rule, at, sig.statistic, sig.value, sig.lower, sig.upper);
                Self::alert(s, "spc", &sig.build_id, Some(sig.layer), &sig.time, sig.spc.clone(), detail, r.key());
            }
            OutputRecord::LayerVerdict(v) => {
                let b = Self::build(s, &v.build_id);
                b.latest_layer = b.latest_layer.max(Some(v.layer));
                b.verdicts.insert(v.layer, VerdictPoint { verdict: v.verdict.clone(), reasons: v.reasons.clone() });
                trim_front(&mut b.verdicts, LAYER_HISTORY);
                if let Some(q) = v.data_quality {
                    b.data_quality.insert(v.layer, q);
                    trim_front(&mut b.data_quality, LAYER_HISTORY);
                }
                if v.verdict == "fail" {
                    Self::alert(s, "verdict", &v.build_id, Some(v.layer), &v.time, "fail".into(), v.reasons.join("; "), r.key());
                }
            }
            OutputRecord::DataQuality(q) => {
                let b = Self::build(s, &q.build_id);
                b.data_quality.insert(q.layer, q.score);
                trim_front(&mut b.data_quality, LAYER_HISTORY);
            }
            OutputRecord::BuildReport(rep) => {
                let b = Self::build(s, &rep.build_id);
                b.ended = true;
                if b.machine.is_none() {
                    b.machine = rep.build_info.as_ref().and_then(|i| i.machine.clone());
                }
            }
            OutputRecord::DeadLetter(d) => {
                if s.dead_letters.len() < 64 || s.dead_letters.contains_key(&d.reason_kind) {
                    *s.dead_letters.entry(d.reason_kind.clone()).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// Dead letters routed so far, per reason.
    pub fn dead_letters_by_reason(&self) -> BTreeMap<String, u64> {
        self.lock().dead_letters.clone()
    }

    /// Cells per side of `build`'s latest map.
    pub fn grid_side(&self, build: &str) -> Option<u32> {
        self.lock().builds.get(build)?.grids.values().next_back().map(|g| g.cells_per_side)
    }

    /// Increases on every change.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// `build`'s latest verdict and latest data quality, each with its layer.
    pub fn latest(&self, build: &str) -> (Option<(u32, VerdictPoint)>, Option<(u32, f64)>) {
        let s = self.lock();
        let Some(b) = s.builds.get(build) else { return (None, None) };
        (b.verdicts.iter().next_back().map(|(l, v)| (*l, v.clone())), b.data_quality.iter().next_back().map(|(l, q)| (*l, *q)))
    }

    /// Every build's summary (no maps, trends or signals).
    pub fn builds(&self) -> BTreeMap<String, LiveBuild> {
        self.lock()
            .builds
            .iter()
            .map(|(k, b)| {
                let short = LiveBuild { machine: b.machine.clone(), latest_layer: b.latest_layer, anomalies: b.anomalies, ended: b.ended, ..Default::default() };
                (k.clone(), short)
            })
            .collect()
    }

    /// A summary of `build`: its latest verdict and data quality, and the layers it has maps of.
    pub fn build_detail(&self, build: &str) -> Option<serde_json::Value> {
        let s = self.lock();
        let b = s.builds.get(build)?;
        Some(serde_json::json!({
            "build_id": build,
            "machine": b.machine,
            "latest_layer": b.latest_layer,
            "anomalies": b.anomalies,
            "ended": b.ended,
            "verdicts": b.verdicts,
            "data_quality": b.data_quality,
            "grid_layers": b.grids.keys().collect::<Vec<_>>(),
        }))
    }

    /// `build`'s grid map of `layer` (the latest revision), with the anomalies placed on it.
    pub fn grid(&self, build: &str, layer: u32) -> Option<(GridMap, Vec<PlacedAnomaly>)> {
        let s = self.lock();
        let b = s.builds.get(build)?;
        let g = b.grids.get(&layer)?.clone();
        Some((g, b.placed.get(&layer).cloned().unwrap_or_default()))
    }

    /// `build`'s SPC charts: per chart and laser the points and baseline; the last signals.
    pub fn spc(&self, build: &str) -> Option<serde_json::Value> {
        let s = self.lock();
        let b = s.builds.get(build)?;
        Some(serde_json::json!({ "charts": s.charts, "trends": b.trends, "signals": b.signals }))
    }

    /// The alerts after `after_seq`, oldest first.
    pub fn alerts_after(&self, after_seq: u64) -> Vec<Alert> {
        self.lock().alerts.iter().filter(|a| a.seq > after_seq).cloned().collect()
    }

    /// The highest alert number so far.
    pub fn last_alert_seq(&self) -> u64 {
        self.lock().next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meltstream_engine::records::{Anomaly, GridCell};

    fn emitted(r: OutputRecord) -> Emitted {
        Emitted { record: r, hold: Default::default(), origin_wall_ns: 0, position: None }
    }

    fn grid(layer: u32) -> OutputRecord {
        OutputRecord::Grid(GridMap { build_id: "b".into(), layer, revision: 0, channel: "pd".into(), cell_mm: 20.0, cells_per_side: 2, outside_count: 0, cells: vec![GridCell { ix: 0, iy: 1, count: 3, mean: 1.5 }] })
    }

    #[test]
    fn grids_and_alerts_stay_bounded_and_replays_do_not_repeat_alerts() {
        let v = LiveView::default();
        let recs: Vec<Emitted> = (0..(GRID_LAYERS as u32 + 10)).map(|l| emitted(grid(l))).collect();
        v.observe(&recs);
        assert!(v.grid("b", 9).is_none(), "the oldest layers went");
        assert_eq!(v.grid("b", GRID_LAYERS as u32 + 9).map(|(g, _)| g.cells.len()), Some(1));
        let anomaly = |t: i64| {
            emitted(OutputRecord::Anomaly(Anomaly { build_id: "b".into(), layer: Some(3), laser: Some(1), time: String::new(), time_ns: t, rule: "hot".into(), channel: "pd".into(), value: 2.0, op: ">".into(), limit: 1.0, x_mm: Some(1.0), y_mm: Some(2.0) }))
        };
        let many: Vec<Emitted> = (0..(ALERTS as i64 + 50)).map(anomaly).collect();
        v.observe(&many);
        v.observe(&many[ALERTS + 49..]);
        let alerts = v.alerts_after(0);
        assert_eq!(alerts.len(), ALERTS);
        assert_eq!(v.last_alert_seq(), ALERTS as u64 + 50, "the replayed alert was not counted again");
        assert!(alerts.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
