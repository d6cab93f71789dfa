//! Statistical process control on layer aggregates (`[[spc]]`, DESIGN §6): when a layer closes,
//! each configured chart takes one point per laser (the layer's mean or standard deviation of a
//! channel, or its energy density), through phase I (the build's first layers, or a baseline
//! given in the topology) into phase II, where out-of-control points become `spc_signal` records
//! and, when the chart asks, anomalies (rule `spc:<name>:<test>`).
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
//! It must never chart a layer twice, nor allocate per sample (it runs once per layer).

use serde::{Deserialize, Serialize};

use crate::analytics::spc::{Baseline, Chart, Signal};
use crate::analytics::spc_spec::SpcSpec;
use crate::input::batch::RecordBatch;
use crate::input::time::format_rfc3339;
use crate::pipeline::build_book::BuildBook;
use crate::pipeline::operator::{Ctx, LayerResult, Operator};
use crate::records::{Anomaly, Emitted, OutputRecord, SpcSignal};

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

/// Every chart of a build: what a snapshot stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpcState {
    /// (chart name, laser, track), sorted. By name, so that a chart added to or removed from
    /// the topology between a crash and its replay leaves the others' state where it was.
    #[serde(rename = "t", default)]
    tracks: Vec<(String, u8, Track)>,
    /// The last layer charted.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    last_layer: Option<u32>,
}

impl SpcState {
    fn track(&mut self, spec: &SpcSpec, laser: u8) -> &mut Track {
        let i = match self.tracks.binary_search_by(|t| (t.0.as_str(), t.1).cmp(&(spec.name.as_str(), laser))) {
            Ok(i) => i,
            Err(i) => {
                let t = match spec.given {
                    Some(b) => Track::Monitoring(Chart::new(spec.kind, b)),
                    None => Track::PhaseOne(Vec::with_capacity(spec.baseline_layers as usize)),
                };
                self.tracks.insert(i, (spec.name.clone(), laser, t));
                i
            }
        };
        &mut self.tracks[i].2
    }

}

/// Charts `x` (layer `layer`) on `track`: phase I collects until the baseline can be
/// estimated, phase II charts. Returns the signals and the baseline judged against.
fn chart_point(track: &mut Track, spec: &SpcSpec, layer: u32, x: f64) -> (Vec<Signal>, Option<Baseline>) {
    match track {
        Track::Monitoring(chart) => {
            let s = chart.push(layer, x);
            (s, Some(chart.baseline()))
        }
        Track::PhaseOne(points) => {
            points.push((layer, x.to_bits()));
            if points.len() >= spec.baseline_layers as usize {
                let values: Vec<f64> = points.iter().map(|p| f64::from_bits(p.1)).collect();
                match Baseline::estimate(&values) {
                    Some(b) => *track = Track::Monitoring(Chart::new(spec.kind, b)),
                    // No variation yet (σ would be 0): phase I slides on over the latest layers.
                    None => {
                        points.remove(0);
                    }
                }
            }
            (Vec::new(), None)
        }
    }
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
        let end = w.end_ns();
        let lasers: Vec<usize> = w.lasers.iter().enumerate().filter(|(_, a)| a.sample_count() > 0).map(|(l, _)| l).collect();
        let mut alerts = 0;
        for spec in specs {
            for &laser in &lasers {
                let Some(x) = spec.point(w, laser, settings.default_thickness_um, book.info.as_deref()) else { continue };
                let track = self.state.track(spec, laser as u8);
                let (signals, base) = chart_point(track, spec, r.layer, x);
                let Some(base) = base else { continue };
                for s in signals {
                    if spec.alert {
                        alerts += 1;
                        let above = s.statistic > s.upper || (s.statistic >= s.centre && s.lower == s.upper);
                        out.push(Emitted {
                            record: OutputRecord::Anomaly(Anomaly {
                                build_id: book.build.to_string(),
                                layer: Some(r.layer),
                                laser: Some(laser as u8),
                                time: format_rfc3339(end),
                                time_ns: end,
                                rule: format!("spc:{}:{}", spec.name, s.rule.name()),
                                channel: spec.channel.clone(),
                                value: s.statistic,
                                op: if above { ">".into() } else { "<".into() },
                                limit: if above { s.upper } else { s.lower },
                                x_mm: None,
                                y_mm: None,
                            }),
                            hold: r.hold.clone(),
                            origin_wall_ns: r.origin_wall_ns,
                            position: None,
                        });
                    }
                    let record = SpcSignal {
                        build_id: book.build.to_string(),
                        spc: spec.name.clone(),
                        chart: spec.chart_name().into(),
                        channel: spec.channel.clone(),
                        statistic: spec.statistic.into(),
                        laser: laser as u8,
                        layer: r.layer,
                        time: format_rfc3339(end),
                        time_ns: end,
                        rule: s.rule.name().into(),
                        value: x,
                        charted: s.statistic,
                        centre: s.centre,
                        lower: s.lower,
                        upper: s.upper,
                        baseline_centre: base.centre,
                        baseline_sigma: base.sigma,
                        layers: s.layers,
                    };
                    out.push(Emitted { record: OutputRecord::SpcSignal(record), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
                }
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
