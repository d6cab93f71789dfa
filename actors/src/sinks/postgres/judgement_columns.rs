//! The column buffers of the judgement tables (`layer_verdicts`, `build_reports`,
//! `data_quality`): each keeps a few key columns and the whole record as JSON. Part of
//! `columns.rs`'s set; never any I/O.

use meltstream_engine::records::{BuildReport, DataQuality, LayerVerdict, OutputRecord};

use super::columns::{bigint, int, json_text, pg_text, Param};

columns! {
    /// Buffered `layer_verdicts` rows.
    LayerVerdictColumns {
        build_id: String = "text",
        layer: i32 = "int",
        verdict: String = "text",
        reasons: String = "text",
        time_ns: i64 = "bigint",
        sample_count: i64 = "bigint",
        record: String = "text",
    }
}

impl LayerVerdictColumns {
    pub(super) fn push(&mut self, v: &LayerVerdict, record: &OutputRecord) -> Result<(), String> {
        let (layer, samples) = (int(v.layer, "layer")?, bigint(v.sample_count, "sample_count")?);
        let (reasons, record) = (json_text(&v.reasons)?, json_text(record)?);
        self.build_id.push(pg_text(&v.build_id));
        self.layer.push(layer);
        self.verdict.push(pg_text(&v.verdict));
        self.reasons.push(reasons);
        self.time_ns.push(v.time_ns);
        self.sample_count.push(samples);
        self.record.push(record);
        Ok(())
    }
}

columns! {
    /// Buffered `build_reports` rows.
    BuildReportColumns {
        build_id: String = "text",
        time_ns: i64 = "bigint",
        layers: i32 = "int",
        layers_ok: i32 = "int",
        layers_warn: i32 = "int",
        layers_fail: i32 = "int",
        record: String = "text",
    }
}

impl BuildReportColumns {
    pub(super) fn push(&mut self, r: &BuildReport, record: &OutputRecord) -> Result<(), String> {
        let counts = [int(r.layers, "layers")?, int(r.layers_ok, "layers_ok")?, int(r.layers_warn, "layers_warn")?, int(r.layers_fail, "layers_fail")?];
        let record = json_text(record)?;
        self.build_id.push(pg_text(&r.build_id));
        self.time_ns.push(r.time_ns);
        self.layers.push(counts[0]);
        self.layers_ok.push(counts[1]);
        self.layers_warn.push(counts[2]);
        self.layers_fail.push(counts[3]);
        self.record.push(record);
        Ok(())
    }
}

columns! {
    /// Buffered `data_quality` rows.
    DataQualityColumns {
        build_id: String = "text",
        layer: i32 = "int",
        time_ns: i64 = "bigint",
        score: f64 = "float8",
        record: String = "text",
    }
}

impl DataQualityColumns {
    pub(super) fn push(&mut self, q: &DataQuality, record: &OutputRecord) -> Result<(), String> {
        let (layer, record) = (int(q.layer, "layer")?, json_text(record)?);
        self.build_id.push(pg_text(&q.build_id));
        self.layer.push(layer);
        self.time_ns.push(q.time_ns);
        self.score.push(q.score);
        self.record.push(record);
        Ok(())
    }
}
