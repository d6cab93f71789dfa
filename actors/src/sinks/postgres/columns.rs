//! The PostgreSQL sink's column buffers: one struct per table holding one `Vec` per column,
//! filled by `write` and bound as arrays by `flush` (`INSERT … SELECT … FROM UNNEST(…)`). Values
//! are checked and converted here (a value that does not fit its column is refused before it is
//! buffered); never any I/O.

use tokio_postgres::types::ToSql;

use meltstream_engine::records::{Anomaly, DeadLetterRecord, GridMap, LateRecord, LayerSummary, OutputRecord, WindowResult};

use super::judgement_columns::{BuildReportColumns, DataQualityColumns, InputQualityColumns, LayerVerdictColumns};
use super::spc_columns::{SpcBaselineColumns, SpcSignalColumns};

/// A statement parameter.
pub(super) type Param<'a> = &'a (dyn ToSql + Sync);

/// Declares the buffered columns of one table: one `Vec` per column, pushed to by `write` and
/// bound as arrays by `flush`. Each column names the PostgreSQL element type it is sent as;
/// `unnest()` lists them in declaration order as parameters `$2, $3, …` (`$1` is the pipeline),
/// which is also the order of `params()`.
macro_rules! columns {
    ($(#[$doc:meta])* $name:ident { $first:ident: $fty:ty = $fsql:literal $(, $field:ident: $ty:ty = $sql:literal)* $(,)? }) => {
        $(#[$doc])*
        #[derive(Default)]
        pub(super) struct $name {
            $first: Vec<$fty>,
            $($field: Vec<$ty>,)*
        }

        impl $name {
            pub(super) fn len(&self) -> usize {
                self.$first.len()
            }

            pub(super) fn append(&mut self, other: &mut $name) {
                self.$first.append(&mut other.$first);
                $(self.$field.append(&mut other.$field);)*
            }

            pub(super) fn clear(&mut self) {
                self.$first.clear();
                $(self.$field.clear();)*
            }

            /// `UNNEST($2::type[], …) AS u(column, …)`.
            pub(super) fn unnest() -> String {
                let cols: &[(&str, &str)] = &[(stringify!($first), $fsql) $(, (stringify!($field), $sql))*];
                let args: Vec<String> = cols.iter().enumerate().map(|(i, (_, ty))| format!("${}::{}[]", i + 2, ty)).collect();
                let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
                format!("UNNEST({}) AS u({})", args.join(", "), names.join(", "))
            }

            /// The parameters of the insert: the pipeline, then every column.
            pub(super) fn params<'a>(&'a self, pipeline: &'a String) -> Vec<Param<'a>> {
                vec![pipeline as Param<'a>, &self.$first $(, &self.$field)*]
            }
        }
    };
}

columns! {
    /// Buffered `layer_summaries` rows.
    LayerSummaryColumns {
        build_id: String = "text",
        layer: i32 = "int",
        laser: i32 = "int",
        revision: i32 = "int",
        window_start_ns: i64 = "bigint",
        window_end_ns: i64 = "bigint",
        z_um: Option<i64> = "bigint",
        sample_count: i64 = "bigint",
        late_count: i64 = "bigint",
        energy_density_j_mm3: Option<f64> = "float8",
        energy_density_by_style: String = "text",
        channels: String = "text",
        rule_hits: String = "text",
        record: String = "text",
    }
}

columns! {
    /// Buffered `grid_maps` rows.
    GridMapColumns {
        build_id: String = "text",
        layer: i32 = "int",
        revision: i32 = "int",
        channel: String = "text",
        cell_mm: f64 = "float8",
        cells_per_side: i32 = "int",
        outside_count: i64 = "bigint",
        cells: String = "text",
    }
}

columns! {
    /// Buffered `window_results` rows.
    WindowResultColumns {
        build_id: String = "text",
        window_name: String = "text",
        window_kind: String = "text",
        channel: String = "text",
        window_start_ns: i64 = "bigint",
        window_end_ns: i64 = "bigint",
        sample_count: i64 = "bigint",
        mean: f64 = "float8",
        min_value: f64 = "float8",
        max_value: f64 = "float8",
        std_dev: f64 = "float8",
    }
}

columns! {
    /// Buffered `anomalies` rows.
    AnomalyColumns {
        build_id: String = "text",
        layer: Option<i32> = "int",
        laser: Option<i32> = "int",
        time_ns: i64 = "bigint",
        rule: String = "text",
        channel: String = "text",
        value: f64 = "float8",
        op: String = "text",
        limit_value: f64 = "float8",
        x_mm: Option<f64> = "float8",
        y_mm: Option<f64> = "float8",
    }
}

columns! {
    /// Buffered `dead_letters` rows.
    DeadLetterColumns {
        source: String = "text",
        input: i32 = "int",
        topic: Option<String> = "text",
        partition: Option<i32> = "int",
        kafka_offset: i64 = "bigint",
        reason_kind: String = "text",
        reason: String = "text",
        raw_prefix: String = "text",
    }
}

columns! {
    /// Buffered `late_records` rows.
    LateRecordColumns {
        build_id: String = "text",
        layer: Option<i32> = "int",
        laser: i32 = "int",
        t0_ns: i64 = "bigint",
        sample_count: i64 = "bigint",
        source_offset: i64 = "bigint",
        watermark_ns: i64 = "bigint",
    }
}

/// Text as PostgreSQL accepts it: `text` cannot hold NUL characters.
pub(super) fn pg_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

/// JSON text as `jsonb` accepts it: `\u0000` is refused, so NULs in strings and keys are
/// replaced (only when there are any).
pub(super) fn json_text<T: serde::Serialize>(value: &T) -> Result<String, String> {
    let text = serde_json::to_string(value).map_err(|e| format!("cannot encode JSON: {e}"))?;
    if !text.contains("\\u0000") {
        return Ok(text);
    }
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = pg_text(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            serde_json::Value::Object(o) => {
                let old = std::mem::take(o);
                for (k, mut x) in old {
                    scrub(&mut x);
                    o.insert(pg_text(&k), x);
                }
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value).map_err(|e| format!("cannot encode JSON: {e}"))?;
    scrub(&mut v);
    serde_json::to_string(&v).map_err(|e| format!("cannot encode JSON: {e}"))
}

pub(super) fn int(v: u32, what: &str) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{what} {v} does not fit a PostgreSQL int"))
}

pub(super) fn bigint(v: u64, what: &str) -> Result<i64, String> {
    i64::try_from(v).map_err(|_| format!("{what} {v} does not fit a PostgreSQL bigint"))
}

impl LayerSummaryColumns {
    fn push(&mut self, s: &LayerSummary, record: &OutputRecord) -> Result<(), String> {
        let (layer, revision) = (int(s.layer, "layer")?, int(s.revision, "revision")?);
        let (sample_count, late_count) = (bigint(s.sample_count, "sample_count")?, bigint(s.late_count, "late_count")?);
        let by_style = json_text(&s.energy_density_by_style_j_mm3)?;
        let channels = json_text(&s.channels)?;
        let rule_hits = json_text(&s.rule_hits)?;
        let record = json_text(record)?;
        self.build_id.push(pg_text(&s.build_id));
        self.layer.push(layer);
        self.laser.push(i32::from(s.laser));
        self.revision.push(revision);
        self.window_start_ns.push(s.window_start_ns);
        self.window_end_ns.push(s.window_end_ns);
        self.z_um.push(s.z_um);
        self.sample_count.push(sample_count);
        self.late_count.push(late_count);
        self.energy_density_j_mm3.push(s.energy_density_j_mm3);
        self.energy_density_by_style.push(by_style);
        self.channels.push(channels);
        self.rule_hits.push(rule_hits);
        self.record.push(record);
        Ok(())
    }
}

impl GridMapColumns {
    fn push(&mut self, g: &GridMap) -> Result<(), String> {
        let (layer, revision) = (int(g.layer, "layer")?, int(g.revision, "revision")?);
        let cells_per_side = int(g.cells_per_side, "cells_per_side")?;
        let outside_count = bigint(g.outside_count, "outside_count")?;
        let cells = json_text(&g.cells)?;
        self.build_id.push(pg_text(&g.build_id));
        self.layer.push(layer);
        self.revision.push(revision);
        self.channel.push(pg_text(&g.channel));
        self.cell_mm.push(g.cell_mm);
        self.cells_per_side.push(cells_per_side);
        self.outside_count.push(outside_count);
        self.cells.push(cells);
        Ok(())
    }
}

impl WindowResultColumns {
    fn push(&mut self, w: &WindowResult) -> Result<(), String> {
        let count = bigint(w.count, "count")?;
        self.build_id.push(pg_text(&w.build_id));
        self.window_name.push(pg_text(&w.window));
        self.window_kind.push(pg_text(&w.window_kind));
        self.channel.push(pg_text(&w.channel));
        self.window_start_ns.push(w.window_start_ns);
        self.window_end_ns.push(w.window_end_ns);
        self.sample_count.push(count);
        self.mean.push(w.mean);
        self.min_value.push(w.min);
        self.max_value.push(w.max);
        self.std_dev.push(w.std_dev);
        Ok(())
    }
}

impl AnomalyColumns {
    fn push(&mut self, a: &Anomaly) -> Result<(), String> {
        let layer = a.layer.map(|l| int(l, "layer")).transpose()?;
        self.build_id.push(pg_text(&a.build_id));
        self.layer.push(layer);
        self.laser.push(a.laser.map(i32::from));
        self.time_ns.push(a.time_ns);
        self.rule.push(pg_text(&a.rule));
        self.channel.push(pg_text(&a.channel));
        self.value.push(a.value);
        self.op.push(pg_text(&a.op));
        self.limit_value.push(a.limit);
        self.x_mm.push(a.x_mm);
        self.y_mm.push(a.y_mm);
        Ok(())
    }
}

impl DeadLetterColumns {
    fn push(&mut self, d: &DeadLetterRecord) -> Result<(), String> {
        let (input, offset) = (int(d.input, "input")?, bigint(d.offset, "offset")?);
        self.source.push(pg_text(&d.source));
        self.input.push(input);
        self.topic.push(d.topic.as_deref().map(pg_text));
        self.partition.push(d.partition);
        self.kafka_offset.push(offset);
        self.reason_kind.push(pg_text(&d.reason_kind));
        self.reason.push(pg_text(&d.reason));
        self.raw_prefix.push(pg_text(&d.raw_prefix));
        Ok(())
    }
}

impl LateRecordColumns {
    fn push(&mut self, l: &LateRecord) -> Result<(), String> {
        let layer = l.layer.map(|v| int(v, "layer")).transpose()?;
        let (sample_count, offset) = (bigint(l.sample_count, "sample_count")?, bigint(l.offset, "offset")?);
        self.build_id.push(pg_text(&l.build_id));
        self.layer.push(layer);
        self.laser.push(i32::from(l.laser));
        self.t0_ns.push(l.t0_ns);
        self.sample_count.push(sample_count);
        self.source_offset.push(offset);
        self.watermark_ns.push(l.watermark_ns);
        Ok(())
    }
}

/// Rows written but not yet flushed, per table.
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) layer_summaries: LayerSummaryColumns,
    pub(super) grid_maps: GridMapColumns,
    pub(super) window_results: WindowResultColumns,
    pub(super) anomalies: AnomalyColumns,
    pub(super) dead_letters: DeadLetterColumns,
    pub(super) late_records: LateRecordColumns,
    pub(super) spc_signals: SpcSignalColumns,
    pub(super) layer_verdicts: LayerVerdictColumns,
    pub(super) build_reports: BuildReportColumns,
    pub(super) data_quality: DataQualityColumns,
    pub(super) input_quality: InputQualityColumns,
    pub(super) spc_baselines: SpcBaselineColumns,
}

impl Buffers {
    pub(super) fn push(&mut self, record: &OutputRecord) -> Result<(), String> {
        match record {
            OutputRecord::LayerSummary(s) => self.layer_summaries.push(s, record),
            OutputRecord::Grid(g) => self.grid_maps.push(g),
            OutputRecord::Window(w) => self.window_results.push(w),
            OutputRecord::Anomaly(a) => self.anomalies.push(a),
            OutputRecord::DeadLetter(d) => self.dead_letters.push(d),
            OutputRecord::Late(l) => self.late_records.push(l),
            OutputRecord::SpcSignal(s) => self.spc_signals.push(s),
            OutputRecord::LayerVerdict(v) => self.layer_verdicts.push(v, record),
            OutputRecord::BuildReport(r) => self.build_reports.push(r, record),
            OutputRecord::DataQuality(q) => self.data_quality.push(q, record),
            OutputRecord::InputQuality(q) => self.input_quality.push(q),
            OutputRecord::SpcBaseline(b) => self.spc_baselines.push(b),
        }
    }

    pub(super) fn append(&mut self, other: &mut Buffers) {
        self.layer_summaries.append(&mut other.layer_summaries);
        self.grid_maps.append(&mut other.grid_maps);
        self.window_results.append(&mut other.window_results);
        self.anomalies.append(&mut other.anomalies);
        self.dead_letters.append(&mut other.dead_letters);
        self.late_records.append(&mut other.late_records);
        self.spc_signals.append(&mut other.spc_signals);
        self.layer_verdicts.append(&mut other.layer_verdicts);
        self.build_reports.append(&mut other.build_reports);
        self.data_quality.append(&mut other.data_quality);
        self.input_quality.append(&mut other.input_quality);
        self.spc_baselines.append(&mut other.spc_baselines);
    }

    pub(super) fn clear(&mut self) {
        self.layer_summaries.clear();
        self.grid_maps.clear();
        self.window_results.clear();
        self.anomalies.clear();
        self.dead_letters.clear();
        self.late_records.clear();
        self.spc_signals.clear();
        self.layer_verdicts.clear();
        self.build_reports.clear();
        self.data_quality.clear();
        self.input_quality.clear();
        self.spc_baselines.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.layer_summaries.len() == 0
            && self.grid_maps.len() == 0
            && self.window_results.len() == 0
            && self.anomalies.len() == 0
            && self.dead_letters.len() == 0
            && self.late_records.len() == 0
            && self.spc_signals.len() == 0
            && self.layer_verdicts.len() == 0
            && self.build_reports.len() == 0
            && self.data_quality.len() == 0
            && self.input_quality.len() == 0
            && self.spc_baselines.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnest_lists_columns_in_parameter_order() {
        assert_eq!(
            DeadLetterColumns::unnest(),
            "UNNEST($2::text[], $3::int[], $4::text[], $5::int[], $6::bigint[], $7::text[], $8::text[], $9::text[]) AS u(source, input, topic, partition, kafka_offset, reason_kind, reason, raw_prefix)"
        );
        let cols = DeadLetterColumns::default();
        let pipeline = String::from("p");
        assert_eq!(cols.params(&pipeline).len(), 9);
    }

    #[test]
    fn nuls_are_replaced() {
        assert_eq!(json_text(&serde_json::json!({"a\u{0}": "x\u{0}"})).ok().as_deref(), Some("{\"a\u{FFFD}\":\"x\u{FFFD}\"}"));
    }
}
