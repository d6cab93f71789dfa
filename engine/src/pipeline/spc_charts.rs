//! Statistical process control on layer aggregates (`[[spc]]`, DESIGN §6): when a layer closes,
//! each configured chart takes one point per laser (the layer's mean or standard deviation of a
//! channel, or its energy density) or, for `cell_mean`, one point per grid cell of the layer's
//! grid map with enough samples (a cell without them skips the layer), through phase I (the
//! build's first layers, a baseline given in the topology, or a reference build's stored phase I)
//! into phase II, where out-of-control points become `spc_signal` records and, when the chart
//! asks, anomalies (rule `spc:<name>:<test>`). A phase I that completes emits an `spc_baseline`
//! record, what a later build's `baseline = "reference"` reads back.
//!
//! A cell chart's state is one small track per cell that ever had enough samples (phase I in
//! constant space, [`PhaseOneSums`]; then a chart with at most eight recent points), so the state
//! is bounded by the grid's cells.
//!
//! The charts' state decides what is emitted, and it spans the whole build, longer than the
//! offsets any ledger holds: it is recorded in the build's decisions after every layer it charts
//! (a snapshot, stored with the progress in the same transaction as the layer's results). A
//! replay resumes from the snapshot of the last layer whose result is durable (its first record
//! lies before the replay's first offset, or its close is folded) and charts again, in the same
//! order, the layers it rebuilds; see `crate::pipeline::decisions`.
//!
//! Only a layer's first result is charted: a revision by late samples (`late_policy = "update"`)
//! changes the layer's summary, not the chart. A layer that closes after a higher one (a layer
//! gap timeout) is not charted: the chart's order is the layers' order.
//!
//! It must never chart a layer twice, nor allocate per sample (it runs once per layer, and per
//! cell only when a cell first appears or signals).

use serde::{Deserialize, Serialize};

use crate::analytics::spc::{Baseline, Chart, PhaseOneSums, Signal};
use crate::analytics::spc_spec::SpcSpec;
use crate::input::batch::RecordBatch;
use crate::input::time::format_rfc3339;
use crate::pipeline::build_book::BuildBook;
use crate::pipeline::operator::{Ctx, LayerResult, Operator};
use crate::records::{Anomaly, Emitted, OutputRecord, SpcBaseline, SpcCell, SpcSignal};

/// One chart of one laser: collecting its baseline, or monitoring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Track {
    /// Phase I: the points so far, as (layer, bits of the value).
    #[serde(rename = "p1")]
    PhaseOne(Vec<(u32, u64)>),
    /// Phase II.
    #[serde(rename = "p2")]
    Monitoring(Chart),
}

/// One chart of one grid cell: phase I in constant space, or monitoring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CellTrack {
    #[serde(rename = "p1")]
    PhaseOne(PhaseOneSums),
    #[serde(rename = "p2")]
    Monitoring(Chart),
}

/// Every chart of a build: what a snapshot stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpcState {
    /// (chart name, laser, track), sorted. By name, so that a chart added to or removed from
    /// the topology between a crash and its replay leaves the others' state where it was.
    #[serde(rename = "t", default)]
    tracks: Vec<(String, u8, Track)>,
    /// (chart name, cell index, track) of the cell charts, sorted.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    cells: Vec<(String, u32, CellTrack)>,
    /// The last layer charted.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    last_layer: Option<u32>,
}

impl SpcState {
    fn track(&mut self, spec: &SpcSpec, laser: u8) -> &mut Track {
        let i = match self.tracks.binary_search_by(|t| (t.0.as_str(), t.1).cmp(&(spec.name.as_str(), laser))) {
            Ok(i) => i,
            Err(i) => {
                let t = match spec.fixed_baseline(laser, None) {
                    Some(b) => Track::Monitoring(Chart::new(spec.kind, b)),
                    None => Track::PhaseOne(Vec::with_capacity(spec.baseline_layers as usize)),
                };
                self.tracks.insert(i, (spec.name.clone(), laser, t));
                i
            }
        };
        &mut self.tracks[i].2
    }

    fn cell_track(&mut self, spec: &SpcSpec, cell: u32) -> &mut CellTrack {
        let i = match self.cells.binary_search_by(|t| (t.0.as_str(), t.1).cmp(&(spec.name.as_str(), cell))) {
            Ok(i) => i,
            Err(i) => {
                let t = match spec.fixed_baseline(0, Some(cell)) {
                    Some(b) => CellTrack::Monitoring(Chart::new(spec.kind, b)),
                    None => CellTrack::PhaseOne(PhaseOneSums::default()),
                };
                self.cells.insert(i, (spec.name.clone(), cell, t));
                i
            }
        };
        &mut self.cells[i].2
    }
}

/// What charting one point gave: the signals, the baseline they were judged against, and the
/// baseline phase I completed with at this point (with the points it used).
type Charted = (Vec<Signal>, Option<Baseline>, Option<(Baseline, u32)>);

/// Charts `x` (layer `layer`) on `track`: phase I collects until the baseline can be
/// estimated, phase II charts.
fn chart_point(track: &mut Track, spec: &SpcSpec, layer: u32, x: f64) -> Charted {
    match track {
        Track::Monitoring(chart) => {
            let s = chart.push(layer, x);
            (s, Some(chart.baseline()), None)
        }
        Track::PhaseOne(points) => {
            points.push((layer, x.to_bits()));
            let mut done = None;
            if points.len() >= spec.baseline_layers as usize {
                let values: Vec<f64> = points.iter().map(|p| f64::from_bits(p.1)).collect();
                match Baseline::estimate(&values) {
                    Some(b) => {
                        done = Some((b, values.len() as u32));
                        *track = Track::Monitoring(Chart::new(spec.kind, b));
                    }
                    // No variation yet (σ would be 0): phase I slides on over the latest layers.
                    None => {
                        points.remove(0);
                    }
                }
            }
            (Vec::new(), None, done)
        }
    }
}

/// [`chart_point`] for a cell's track.
fn chart_cell_point(track: &mut CellTrack, spec: &SpcSpec, layer: u32, x: f64) -> Charted {
    match track {
        CellTrack::Monitoring(chart) => {
            let s = chart.push(layer, x);
            (s, Some(chart.baseline()), None)
        }
        CellTrack::PhaseOne(sums) => {
            let done = sums.push(x, spec.baseline_layers);
            if let Some((b, _)) = done {
                *track = CellTrack::Monitoring(Chart::new(spec.kind, b));
            }
            (Vec::new(), None, done)
        }
    }
}

/// Where a point comes from, for its records.
#[derive(Clone, Copy)]
struct Point<'a> {
    spec: &'a SpcSpec,
    build: &'a str,
    laser: u8,
    cell: Option<SpcCell>,
    layer: u32,
    end_ns: i64,
    value: f64,
}

/// The records of one charted point: per signal an `spc_signal` (and an anomaly when the chart
/// alerts), and an `spc_baseline` when phase I completed. Returns the anomalies raised.
fn emit(p: Point<'_>, (signals, base, done): Charted, r: &LayerResult, out: &mut Vec<Emitted>) -> u64 {
    let mut push = |record| out.push(Emitted { record, hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
    let spec = p.spec;
    if let Some((b, used)) = done {
        push(OutputRecord::SpcBaseline(SpcBaseline {
            build_id: p.build.to_owned(),
            spc: spec.name.clone(),
            chart: spec.chart_name().into(),
            channel: spec.channel.clone(),
            statistic: spec.statistic.into(),
            laser: p.laser,
            cell: p.cell,
            layer: p.layer,
            time: format_rfc3339(p.end_ns),
            time_ns: p.end_ns,
            centre: b.centre,
            sigma: b.sigma,
            layers_used: used,
        }));
    }
    let Some(base) = base else { return 0 };
    let mut alerts = 0;
    for s in signals {
        if spec.alert {
            alerts += 1;
            let above = s.statistic > s.upper || (s.statistic >= s.centre && s.lower == s.upper);
            push(OutputRecord::Anomaly(Anomaly {
                build_id: p.build.to_owned(),
                layer: Some(p.layer),
                laser: p.cell.is_none().then_some(p.laser),
                time: format_rfc3339(p.end_ns),
                time_ns: p.end_ns,
                rule: format!("spc:{}:{}", spec.name, s.rule.name()),
                channel: spec.channel.clone(),
                value: s.statistic,
                op: if above { ">".into() } else { "<".into() },
                limit: if above { s.upper } else { s.lower },
                x_mm: p.cell.map(|c| c.x_mm),
                y_mm: p.cell.map(|c| c.y_mm),
            }));
        }
        push(OutputRecord::SpcSignal(SpcSignal {
            build_id: p.build.to_owned(),
            spc: spec.name.clone(),
            chart: spec.chart_name().into(),
            channel: spec.channel.clone(),
            statistic: spec.statistic.into(),
            laser: p.laser,
            cell: p.cell,
            layer: p.layer,
            time: format_rfc3339(p.end_ns),
            time_ns: p.end_ns,
            rule: s.rule.name().into(),
            value: p.value,
            charted: s.statistic,
            centre: s.centre,
            lower: s.lower,
            upper: s.upper,
            baseline_centre: base.centre,
            baseline_sigma: base.sigma,
            layers: s.layers,
        }));
    }
    alerts
}

/// The SPC charts of one build.
#[derive(Debug, Default)]
pub struct SpcCharts {
    state: SpcState,
}

impl Operator for SpcCharts {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_layer_result(&mut self, r: &LayerResult, book: &mut BuildBook, out: &mut Vec<Emitted>) {
        let settings = book.settings.clone();
        let specs = &settings.spc;
        if specs.is_empty() || !r.first() || self.state.last_layer.is_some_and(|l| r.layer <= l) {
            return;
        }
        let Some(w) = book.window(r.layer) else { return };
        let build = book.build.to_string();
        let end_ns = w.end_ns();
        let lasers: Vec<usize> = w.lasers.iter().enumerate().filter(|(_, a)| a.sample_count() > 0).map(|(l, _)| l).collect();
        let mut alerts = 0;
        for spec in specs {
            let at = |laser: u8, cell: Option<SpcCell>, value: f64| Point { spec, build: &build, laser, cell, layer: r.layer, end_ns, value };
            if spec.on_cells() {
                let Some(g) = w.grid.as_ref() else { continue };
                let (n, size) = (g.cells_per_side(), settings.grid.cell_mm);
                for (index, _, mean) in g.cell_means(spec.min_cell_samples).filter(|c| c.2.is_finite()) {
                    let charted = chart_cell_point(self.state.cell_track(spec, index), spec, r.layer, mean);
                    alerts += emit(at(0, Some(SpcCell::of(index, n, size)), mean), charted, r, out);
                }
                continue;
            }
            for &laser in &lasers {
                let Some(x) = spec.point(w, laser, settings.default_thickness_um, book.info.as_deref()) else { continue };
                let charted = chart_point(self.state.track(spec, laser as u8), spec, r.layer, x);
                alerts += emit(at(laser as u8, None, x), charted, r, out);
            }
        }
        book.counters.anomalies += alerts;
        self.state.last_layer = Some(r.layer);
        book.record_snapshot("spc", r.layer, &self.state);
    }

    fn resume(&mut self, book: &BuildBook) {
        self.state = book.resume_snapshot("spc");
    }
}
