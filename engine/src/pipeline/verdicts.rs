//! Layer verdicts and the build report. When a layer first closes, it is judged from what the
//! chain found in it: each sample rule's exceedances (from the layer window's counts, so exact
//! whatever the cooldowns), the energy-density alerts and the SPC signals the operators ahead
//! emitted for it, and its data quality (each laser's samples against those its sample period
//! gives over the layer's exposure; the lowest counts). A cause named in `[verdict] fail_rules` / `fail_spc`, or a data quality below
//! `fail_data_quality`, fails the layer, any other (or a quality below `min_data_quality`)
//! warns; a layer with none is `ok`. One `layer_verdict` record per layer; at the build's end (its
//! `build_end` behind the watermark) one `build_report` record sums the build.
//!
//! The tally behind the report spans the build, so it replays as the SPC charts do: a snapshot
//! after each judged layer is recorded with the progress, and a replay resumes from the last
//! durable layer's snapshot (`crate::pipeline::decisions`). Its floats are kept as their bits.
//! Machine-log rules (alerts without a layer) are not part of a layer's verdict.
//!
//! It must never judge a layer twice, nor emit a report for a build that did not end (a stop
//! emits open layers, not a report).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytics::grid::GRID_DEVIATION_RULE;
use crate::analytics::rules::RuleTarget;
use crate::input::batch::RecordBatch;
use crate::input::time::format_rfc3339;
use crate::offset_ledger::HoldSet;
use crate::pipeline::build_book::BuildBook;
use crate::pipeline::operator::{Ctx, LayerResult, Operator};
use crate::pipeline::threshold_rules::op_str;
use crate::records::{BuildReport, DataQuality, Emitted, LaserQuality, LayerVerdict, OutputRecord, Spread, WorstLayer};

const OK: u8 = 0;
const WARN: u8 = 1;
const FAIL: u8 = 2;

fn verdict_name(v: u8) -> &'static str {
    match v {
        OK => "ok",
        WARN => "warn",
        _ => "fail",
    }
}

/// A spread being summed: count and the bits of sum, min and max.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SpreadSum(u64, u64, u64, u64);

impl SpreadSum {
    fn add(&mut self, v: f64) {
        let (sum, min, max) = if self.0 == 0 { (v, v, v) } else { (f64::from_bits(self.1) + v, f64::from_bits(self.2).min(v), f64::from_bits(self.3).max(v)) };
        *self = SpreadSum(self.0 + 1, sum.to_bits(), min.to_bits(), max.to_bits());
    }

    fn spread(&self) -> Spread {
        Spread { count: self.0, mean: f64::from_bits(self.1) / self.0.max(1) as f64, min: f64::from_bits(self.2), max: f64::from_bits(self.3) }
    }
}

/// What the build report sums, as recorded after each judged layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    /// Layers judged per verdict (ok, warn, fail).
    per_verdict: [u32; 3],
    /// The worst layers so far: (severity, layer, reasons), worst first.
    worst: Vec<(u8, u32, Vec<String>)>,
    energy: BTreeMap<String, SpreadSum>,
    rule_hits: BTreeMap<String, u64>,
    layers_with_hits: BTreeMap<String, u32>,
    energy_hits: BTreeMap<String, u32>,
    spc: BTreeMap<String, u32>,
    samples: u64,
    last_layer: Option<u32>,
    /// End of the last judged layer's window, ns.
    last_end_ns: i64,
    quality: SpreadSum,
}

/// The verdicts of one build and its report.
#[derive(Debug, Default)]
pub struct LayerVerdicts {
    tally: Tally,
    /// The holds of the last layer judged: the report holds them too.
    last_hold: HoldSet,
    reported: bool,
}

impl Operator for LayerVerdicts {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_layer_result(&mut self, r: &LayerResult, book: &mut BuildBook, out: &mut Vec<Emitted>) {
        if !r.first() || self.tally.last_layer.is_some_and(|l| r.layer <= l) {
            return;
        }
        let settings = book.settings.clone();
        let v = &settings.verdict;
        let Some(w) = book.window(r.layer) else { return };
        let build = book.build.to_string();
        let mut severity = OK;
        let mut reasons = Vec::new();
        let mut judge = |fail: bool, why: String, severity: &mut u8| {
            *severity = (*severity).max(if fail { FAIL } else { WARN });
            reasons.push(why);
        };
        // Sample rules: the window's exact exceedance counts.
        let mut rule_hits = BTreeMap::new();
        for (i, rule) in settings.rules.iter().enumerate() {
            let RuleTarget::Sample(_) = rule.target else { continue };
            let per_laser: Vec<(usize, u64)> = w.lasers.iter().enumerate().map(|(l, a)| (l, a.rule_hits.get(i).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect();
            let total: u64 = per_laser.iter().map(|(_, n)| n).sum();
            if total == 0 {
                continue;
            }
            rule_hits.insert(rule.name.clone(), total);
            if total >= v.min_rule_hits {
                let lasers: Vec<String> = per_laser.iter().map(|(l, _)| l.to_string()).collect();
                let why = format!("rule {}: {total} samples {} {} on laser {}", rule.name, op_str(rule), rule.limit, lasers.join(", "));
                judge(v.fail_rules.contains(&rule.name), why, &mut severity);
            }
        }
        // What the operators ahead emitted for this layer: energy-density alerts, SPC signals.
        let mut energy_hits: BTreeMap<String, u32> = BTreeMap::new();
        let mut spc: BTreeMap<String, u32> = BTreeMap::new();
        for e in out.iter() {
            match &e.record {
                OutputRecord::Anomaly(a) if a.build_id == build && a.layer == Some(r.layer) && a.channel == "energy_density_j_mm3" && !a.rule.starts_with("spc:") => {
                    *energy_hits.entry(a.rule.clone()).or_default() += 1;
                    let why = format!("energy density {}: laser {} at {:.1} J/mm³ ({} {})", a.rule, a.laser.unwrap_or(0), a.value, a.op, a.limit);
                    judge(v.fail_rules.contains(&a.rule), why, &mut severity);
                }
                OutputRecord::Anomaly(a) if a.build_id == build && a.layer == Some(r.layer) && a.rule == GRID_DEVIATION_RULE => {
                    *energy_hits.entry(a.rule.clone()).or_default() += 1;
                    let (x, y) = (a.x_mm.unwrap_or(f64::NAN), a.y_mm.unwrap_or(f64::NAN));
                    let why = format!("grid deviation: {} at ({x:.0}, {y:.0}) mm is {:.1} σ from its layer", a.channel, a.value);
                    judge(v.fail_rules.contains(&a.rule), why, &mut severity);
                }
                OutputRecord::SpcSignal(s) if s.build_id == build && s.layer == r.layer => {
                    *spc.entry(s.spc.clone()).or_default() += 1;
                    let on = match &s.cell {
                        Some(c) => format!("cell ({:.0}, {:.0}) mm", c.x_mm, c.y_mm),
                        None => format!("laser {}", s.laser),
                    };
                    let why = format!("spc {}: {} on {on} ({} {} = {:.4})", s.spc, s.rule, s.channel, s.statistic, s.value);
                    judge(v.fail_spc.contains(&s.spc), why, &mut severity);
                }
                _ => {}
            }
        }
        // Data quality: each laser's distinct samples against those expected over the exposure.
        let (start, end) = (w.start_ns(), w.end_ns());
        let lasers: BTreeMap<String, LaserQuality> = w.lasers.iter().enumerate().filter(|(_, a)| a.sample_count() > 0).filter_map(|(l, a)| a.quality(start, end).map(|q| (l.to_string(), q))).collect();
        let completeness: BTreeMap<String, f64> = w.lasers.iter().enumerate().filter(|(_, a)| a.sample_count() > 0).filter_map(|(l, a)| a.completeness(end - start).map(|c| (l.to_string(), c))).collect();
        let quality = lasers.values().map(|q| q.score).reduce(f64::min);
        if let Some(q) = quality.filter(|q| *q < v.min_data_quality) {
            let worst: Vec<String> = lasers
                .iter()
                .filter(|(_, x)| x.score < v.min_data_quality)
                .map(|(l, x)| format!("laser {l} {:.1} % ({} gaps, {} duplicate samples)", x.score * 100.0, x.gaps, x.duplicate_samples))
                .collect();
            judge(q < v.fail_data_quality, format!("data quality {q:.3} < {}: distinct samples received of those expected: {}", v.min_data_quality, worst.join(", ")), &mut severity);
        }
        if let Some(score) = quality {
            let dq = DataQuality { build_id: build.clone(), layer: r.layer, time: format_rfc3339(end), time_ns: end, exposure_ms: (end - start) as f64 / 1e6, score, below_threshold: score < v.min_data_quality, lasers };
            out.push(Emitted { record: OutputRecord::DataQuality(dq), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
        }
        let sample_count: u64 = w.lasers.iter().map(|a| a.sample_count()).sum();
        // The tally for the report.
        let t = &mut self.tally;
        for (laser, _) in w.lasers.iter().enumerate().filter(|(_, a)| a.sample_count() > 0) {
            for (style, e) in w.energy_by_style(laser as u8, settings.default_thickness_um, book.info.as_deref()) {
                t.energy.entry(style).or_default().add(e);
            }
        }
        t.per_verdict[severity as usize] += 1;
        t.samples += sample_count;
        for (k, n) in &rule_hits {
            *t.rule_hits.entry(k.clone()).or_default() += n;
            if *n >= v.min_rule_hits {
                *t.layers_with_hits.entry(k.clone()).or_default() += 1;
            }
        }
        for (k, n) in &energy_hits {
            *t.energy_hits.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &spc {
            *t.spc.entry(k.clone()).or_default() += n;
        }
        if severity > OK {
            t.worst.push((severity, r.layer, reasons.clone()));
            t.worst.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            t.worst.truncate(v.worst_layers);
        }
        t.last_layer = Some(r.layer);
        t.last_end_ns = end;
        if let Some(q) = quality {
            t.quality.add(q);
        }
        let record = LayerVerdict {
            build_id: build,
            layer: r.layer,
            verdict: verdict_name(severity).into(),
            reasons,
            time: format_rfc3339(end),
            time_ns: end,
            sample_count,
            rule_hits,
            spc_signals: spc,
            energy_density_hits: energy_hits,
            data_quality: quality,
            completeness,
        };
        out.push(Emitted { record: OutputRecord::LayerVerdict(record), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
        self.last_hold = r.hold.clone();
        book.record_snapshot("verdict", r.layer, &self.tally);
    }

    fn on_close(&mut self, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let t = &self.tally;
        if self.reported || book.recorded_end().is_none() || book.ended_earlier() || t.last_layer.is_none() {
            return;
        }
        self.reported = true;
        let end = t.last_end_ns;
        let report = BuildReport {
            build_id: book.build.to_string(),
            time: format_rfc3339(end),
            time_ns: end,
            layers: t.per_verdict.iter().sum(),
            layers_ok: t.per_verdict[0],
            layers_warn: t.per_verdict[1],
            layers_fail: t.per_verdict[2],
            worst_layers: t.worst.iter().map(|(s, l, r)| WorstLayer { layer: *l, verdict: verdict_name(*s).into(), reasons: r.clone() }).collect(),
            energy_density_by_style_j_mm3: t.energy.iter().map(|(k, s)| (k.clone(), s.spread())).collect(),
            rule_hits: t.rule_hits.clone(),
            layers_with_rule_hits: t.layers_with_hits.clone(),
            energy_density_hits: t.energy_hits.clone(),
            spc_signals: t.spc.clone(),
            sample_count: t.samples,
            data_quality: (t.quality.0 > 0).then(|| t.quality.spread()),
            planned_energy_density_by_style_j_mm3: book.info.as_ref().map(|i| i.planned_energy(book.settings.default_thickness_um)).unwrap_or_default(),
            build_info: book.info.as_deref().cloned(),
        };
        let mut hold = self.last_hold.clone();
        for h in ctx.hold_set().iter() {
            hold.add(*h);
        }
        out.push(Emitted { record: OutputRecord::BuildReport(report), hold, origin_wall_ns: ctx.origin_wall_ns, position: None });
    }

    fn resume(&mut self, book: &BuildBook) {
        self.tally = book.resume_snapshot("verdict");
    }
}
