//! Output records: what sinks write. Units are in the field names; times are given both as
//! RFC 3339 strings and as integer nanoseconds. `docs/records.md` documents every field.
//!
//! Each record has a stable identity ([`OutputRecord::key`]) so that a repeated write of the
//! same result is recognisable and harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::offset_ledger::HoldSet;
use crate::analytics::stats::ChannelSummary;
use crate::topology::sinks::RecordKind;

mod quality_records;
mod spc_records;
pub use quality_records::{DataQuality, InputQuality, LaserQuality};
pub use spc_records::{SpcBaseline, SpcCell, SpcSignal};

/// Statistics of one layer and one laser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSummary {
    /// Build.
    pub build_id: String,
    /// Layer index.
    pub layer: u32,
    /// Laser (1-based; 0 when the input named none).
    pub laser: u8,
    /// 0 for the first result of the window, then 1, 2, … for updates by late records.
    pub revision: u32,
    /// Window start: the layer's `start` event, or its first sample.
    pub window_start: String,
    /// Window start, ns since the epoch.
    pub window_start_ns: i64,
    /// Window end: the layer's `end` event, or its last sample.
    pub window_end: String,
    /// Window end, ns since the epoch.
    pub window_end_ns: i64,
    /// Platform height of the layer, µm, when a layer event gave it.
    pub z_um: Option<i64>,
    /// Samples aggregated for this laser.
    pub sample_count: u64,
    /// Of those, samples merged after the first result (late, within the allowed lateness).
    pub late_count: u64,
    /// Volumetric energy density of the laser's main (core) style, J/mm³, when known.
    pub energy_density_j_mm3: Option<f64>,
    /// Energy density per build style, J/mm³.
    pub energy_density_by_style_j_mm3: BTreeMap<String, f64>,
    /// Statistics per channel present.
    pub channels: BTreeMap<String, ChannelSummary>,
    /// Number of samples that exceeded each sample rule's limit.
    pub rule_hits: BTreeMap<String, u64>,
}

/// One cell of a grid map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridCell {
    /// Column (x index, from 0 at x = 0 mm).
    pub ix: u32,
    /// Row (y index).
    pub iy: u32,
    /// Samples in the cell.
    pub count: u64,
    /// Mean of the grid channel.
    pub mean: f64,
}

/// Mean of a channel over an x/y grid of the build plate, for one layer (all lasers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridMap {
    /// Build.
    pub build_id: String,
    /// Layer.
    pub layer: u32,
    /// As in [`LayerSummary::revision`].
    pub revision: u32,
    /// Channel averaged.
    pub channel: String,
    /// Cell edge, mm.
    pub cell_mm: f64,
    /// Cells across the plate in x and in y.
    pub cells_per_side: u32,
    /// Samples whose x/y fell outside the plate.
    pub outside_count: u64,
    /// Non-empty cells, in row-major order.
    pub cells: Vec<GridCell>,
}

/// The result of one time window inside a build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowResult {
    /// Build.
    pub build_id: String,
    /// The window's name in the topology.
    pub window: String,
    /// `tumbling`, `sliding` or `session`.
    pub window_kind: String,
    /// Channel aggregated.
    pub channel: String,
    /// Start (inclusive).
    pub window_start: String,
    /// Start, ns.
    pub window_start_ns: i64,
    /// End (exclusive; for sessions, last sample + gap).
    pub window_end: String,
    /// End, ns.
    pub window_end_ns: i64,
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Sample standard deviation.
    pub std_dev: f64,
}

/// A rule hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Build.
    pub build_id: String,
    /// Layer, when known.
    pub layer: Option<u32>,
    /// Laser, when known.
    pub laser: Option<u8>,
    /// Event time of the sample (or log record, or layer end) that fired.
    pub time: String,
    /// Same, ns.
    pub time_ns: i64,
    /// The rule's name.
    pub rule: String,
    /// Channel the rule looks at.
    pub channel: String,
    /// The value that fired.
    pub value: f64,
    /// Comparison.
    pub op: String,
    /// The limit.
    pub limit: f64,
    /// x of the sample, mm, when known.
    pub x_mm: Option<f64>,
    /// y of the sample, mm, when known.
    pub y_mm: Option<f64>,
}

/// A rejected input record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The source's name.
    pub source: String,
    /// Input number (engine-internal: one per file, simulator or Kafka partition).
    pub input: u32,
    /// Kafka topic, for a Kafka source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka partition, for a Kafka source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Offset (line number from 0, Kafka offset).
    pub offset: u64,
    /// Stable reason label (`invalid_json`, `wrong_schema`, `out_of_range`, `too_large`,
    /// `future_timestamp`, `poison`, `unknown_build`).
    pub reason_kind: String,
    /// The reason in words.
    pub reason: String,
    /// The record's first bytes.
    pub raw_prefix: String,
}

impl DeadLetterRecord {
    /// The record of a dead letter from source `source`, read from Kafka partition `partition`
    /// (topic, partition) when it was.
    pub fn from_dead_letter(source: String, partition: Option<(String, i32)>, d: &crate::input::reject::DeadLetter) -> DeadLetterRecord {
        let (topic, partition) = partition.map_or((None, None), |(t, p)| (Some(t), Some(p)));
        DeadLetterRecord {
            source,
            input: crate::input::event::input_name(d.input),
            topic,
            partition,
            offset: d.offset,
            reason_kind: d.reason.label().into(),
            reason: d.reason.to_string(),
            raw_prefix: d.raw_prefix.clone(),
        }
    }
}

/// Samples that arrived after their window was final (`late_policy = "late_sink"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// Build.
    pub build_id: String,
    /// Layer (absent for time windows).
    pub layer: Option<u32>,
    /// Laser.
    pub laser: u8,
    /// Event time of the first late sample, ns.
    pub t0_ns: i64,
    /// Number of late samples in this block.
    pub sample_count: u64,
    /// Source offset of the record.
    pub offset: u64,
    /// The watermark when it arrived, ns.
    pub watermark_ns: i64,
}

/// The verdict on one closed layer of a build (all lasers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerVerdict {
    /// Build.
    pub build_id: String,
    /// Layer.
    pub layer: u32,
    /// `ok`, `warn` or `fail`.
    pub verdict: String,
    /// Why, one entry per cause (`rule overheat: 12 samples above 1700 on lasers 1, 3`,
    /// `spc pd_cusum: cusum_lower on laser 2`, `energy density lack_of_fusion: laser 4`); empty
    /// for `ok`.
    pub reasons: Vec<String>,
    /// End of the layer's window.
    pub time: String,
    /// Same, ns.
    pub time_ns: i64,
    /// Samples in the layer (all lasers).
    pub sample_count: u64,
    /// Exceedances per sample rule that had any.
    pub rule_hits: BTreeMap<String, u64>,
    /// SPC signals per chart that signalled.
    pub spc_signals: BTreeMap<String, u32>,
    /// Energy-density rule hits per rule that fired.
    pub energy_density_hits: BTreeMap<String, u32>,
    /// Data quality: the lowest score of its lasers (distinct samples received ÷ expected, see
    /// [`DataQuality`]; null when no laser's sample period is known, as with one-sample messages).
    pub data_quality: Option<f64>,
    /// Per laser, samples received against those expected from its sample period over the
    /// layer's exposure (`start` to `end`), at most 1.
    pub completeness: BTreeMap<String, f64>,
}

/// One of a build report's worst layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorstLayer {
    /// Layer.
    pub layer: u32,
    /// Its verdict.
    pub verdict: String,
    /// Its reasons.
    pub reasons: Vec<String>,
}

/// Minimum, mean and maximum of a per-layer value over a build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Layers (and lasers) it was known for.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

/// The summary of a build, emitted once when it ends (its `build_end` behind the watermark).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    /// Build.
    pub build_id: String,
    /// End of its last judged layer's window.
    pub time: String,
    /// Same, ns.
    pub time_ns: i64,
    /// Layers judged.
    pub layers: u32,
    /// Of those, `ok`.
    pub layers_ok: u32,
    /// `warn`.
    pub layers_warn: u32,
    /// `fail`.
    pub layers_fail: u32,
    /// The worst layers: failed ones first, then warned ones, each by layer number (at most
    /// `[verdict] worst_layers`).
    pub worst_layers: Vec<WorstLayer>,
    /// Energy density per build style over the layers and lasers, J/mm³.
    pub energy_density_by_style_j_mm3: BTreeMap<String, Spread>,
    /// Exceedances per sample rule over the build.
    pub rule_hits: BTreeMap<String, u64>,
    /// Layers with at least `min_rule_hits` exceedances, per sample rule.
    pub layers_with_rule_hits: BTreeMap<String, u32>,
    /// Energy-density rule hits per rule (layer and laser).
    pub energy_density_hits: BTreeMap<String, u32>,
    /// SPC signals per chart.
    pub spc_signals: BTreeMap<String, u32>,
    /// Samples in the judged layers.
    pub sample_count: u64,
    /// Data quality over the layers that have one.
    pub data_quality: Option<Spread>,
    /// Energy density per style as planned in the build's description, J/mm³ (empty without
    /// one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub planned_energy_density_by_style_j_mm3: BTreeMap<String, f64>,
    /// The build's description (`[build_info]`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_info: Option<crate::input::build_info::BuildInfo>,
}

/// Any output record, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputRecord {
    /// Per layer and laser statistics.
    LayerSummary(LayerSummary),
    /// Per layer grid map.
    Grid(GridMap),
    /// Time-window result.
    Window(WindowResult),
    /// Rule hit.
    Anomaly(Anomaly),
    /// Rejected input.
    DeadLetter(DeadLetterRecord),
    /// Late samples.
    Late(LateRecord),
    /// SPC out-of-control point.
    SpcSignal(SpcSignal),
    /// The phase I baseline of an SPC chart, once estimated.
    SpcBaseline(SpcBaseline),
    /// Verdict on a closed layer.
    LayerVerdict(LayerVerdict),
    /// Summary of an ended build.
    BuildReport(BuildReport),
    /// Data quality of a closed layer.
    DataQuality(DataQuality),
    /// Data quality of an input over a window of event time.
    InputQuality(InputQuality),
}

impl OutputRecord {
    /// Its kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            OutputRecord::LayerSummary(_) => RecordKind::LayerSummary,
            OutputRecord::Grid(_) => RecordKind::Grid,
            OutputRecord::Window(_) => RecordKind::Window,
            OutputRecord::Anomaly(_) => RecordKind::Anomaly,
            OutputRecord::DeadLetter(_) => RecordKind::DeadLetter,
            OutputRecord::Late(_) => RecordKind::Late,
            OutputRecord::SpcSignal(_) => RecordKind::SpcSignal,
            OutputRecord::SpcBaseline(_) => RecordKind::SpcBaseline,
            OutputRecord::LayerVerdict(_) => RecordKind::LayerVerdict,
            OutputRecord::BuildReport(_) => RecordKind::BuildReport,
            OutputRecord::DataQuality(_) => RecordKind::DataQuality,
            OutputRecord::InputQuality(_) => RecordKind::InputQuality,
        }
    }

    /// Bytes it owns on the heap, roughly (strings and grid cells): what it costs while it
    /// waits for a sink.
    pub fn approx_heap_bytes(&self) -> usize {
        match self {
            OutputRecord::Grid(g) => 64 + g.cells.len() * std::mem::size_of::<GridCell>(),
            OutputRecord::DeadLetter(d) => 128 + d.raw_prefix.len() + d.reason.len(),
            OutputRecord::SpcSignal(s) => 224 + s.layers.len() * 4,
            OutputRecord::SpcBaseline(_) => 192,
            OutputRecord::LayerVerdict(v) => 192 + v.reasons.iter().map(|r| r.len() + 24).sum::<usize>() + 48 * (v.rule_hits.len() + v.spc_signals.len()),
            OutputRecord::BuildReport(r) => 512 + 96 * r.worst_layers.len() + 64 * (r.rule_hits.len() + r.spc_signals.len() + r.energy_density_by_style_j_mm3.len()),
            OutputRecord::DataQuality(q) => 192 + 128 * q.lasers.len(),
            OutputRecord::InputQuality(q) => 256 + 48 * q.dead_letters_by_reason.len(),
            OutputRecord::LayerSummary(_) | OutputRecord::Window(_) | OutputRecord::Anomaly(_) | OutputRecord::Late(_) => 128,
        }
    }

    /// A stable identity: the same result always has the same key.
    pub fn key(&self) -> String {
        match self {
            OutputRecord::LayerSummary(s) => format!("layer_summary/{}/{}/{}/{}", s.build_id, s.layer, s.laser, s.revision),
            OutputRecord::Grid(g) => format!("grid/{}/{}/{}", g.build_id, g.layer, g.revision),
            OutputRecord::Window(w) => format!("window/{}/{}/{}", w.build_id, w.window, w.window_start_ns),
            OutputRecord::Anomaly(a) => format!("anomaly/{}/{}/{:?}/{}", a.build_id, a.rule, a.laser, a.time_ns),
            OutputRecord::DeadLetter(d) => format!("dead_letter/{}/{}/{}", d.source, d.input, d.offset),
            OutputRecord::Late(l) => format!("late/{}/{}/{}", l.build_id, l.offset, l.t0_ns),
            OutputRecord::SpcSignal(s) => match &s.cell {
                None => format!("spc_signal/{}/{}/{}/{}/{}", s.build_id, s.spc, s.laser, s.layer, s.rule),
                Some(c) => format!("spc_signal/{}/{}/{}/{}/{}/{}", s.build_id, s.spc, s.laser, s.layer, s.rule, c.index),
            },
            OutputRecord::SpcBaseline(b) => match &b.cell {
                None => format!("spc_baseline/{}/{}/{}", b.build_id, b.spc, b.laser),
                Some(c) => format!("spc_baseline/{}/{}/{}/{}", b.build_id, b.spc, b.laser, c.index),
            },
            OutputRecord::LayerVerdict(v) => format!("layer_verdict/{}/{}", v.build_id, v.layer),
            OutputRecord::BuildReport(r) => format!("build_report/{}", r.build_id),
            OutputRecord::DataQuality(q) => format!("data_quality/{}/{}", q.build_id, q.layer),
            OutputRecord::InputQuality(q) => format!("input_quality/{}/{}/{}", q.source, q.input, q.window_start_ns),
        }
    }

    /// The build it belongs to, if any.
    pub fn build_id(&self) -> Option<&str> {
        match self {
            OutputRecord::LayerSummary(s) => Some(&s.build_id),
            OutputRecord::Grid(g) => Some(&g.build_id),
            OutputRecord::Window(w) => Some(&w.build_id),
            OutputRecord::Anomaly(a) => Some(&a.build_id),
            OutputRecord::Late(l) => Some(&l.build_id),
            OutputRecord::SpcSignal(s) => Some(&s.build_id),
            OutputRecord::SpcBaseline(b) => Some(&b.build_id),
            OutputRecord::LayerVerdict(v) => Some(&v.build_id),
            OutputRecord::BuildReport(r) => Some(&r.build_id),
            OutputRecord::DataQuality(q) => Some(&q.build_id),
            OutputRecord::DeadLetter(_) | OutputRecord::InputQuality(_) => None,
        }
    }
}

/// A record on its way to the sinks, with the batch it holds until durable.
#[derive(Clone, Debug)]
pub struct Emitted {
    /// The record.
    pub record: OutputRecord,
    /// The batches whose offsets may not be committed before this record is durable.
    pub hold: HoldSet,
    /// Wall-clock time (ns) its latency is measured from: the sample's arrival for anomalies,
    /// the watermark's arrival for window results.
    pub origin_wall_ns: i64,
    /// Source position (input, offset) of the one record that produced it: set for anomalies
    /// raised by a sample or a log record, late records and dead letters; `None` for window
    /// results, which many records produce. On a replay after a crash, a transactional sink
    /// drops a positioned record whose offset lies below the "emitted through" offset it stored
    /// with its last transaction (it is already durable there).
    pub position: Option<(crate::input::event::InputId, u64)>,
}
