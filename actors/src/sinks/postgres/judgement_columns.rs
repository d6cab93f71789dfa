//! The column buffers of the judgement tables (`layer_verdicts`, `build_reports`,
//! `data_quality`: a few key columns and the whole record as JSON; `input_quality`: columns
//! only, since its record names the topic). Part of `columns.rs`'s set; never any I/O.

use meltstream_engine::records::{BuildReport, DataQuality, InputQuality, LayerVerdict, OutputRecord};

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

columns! {
    /// Buffered `input_quality` rows.
    InputQualityColumns {
        source: String = "text",
        input: i32 = "int",
        topic: Option<String> = "text",
        partition: Option<i32> = "int",
        window_start_ns: i64 = "bigint",
        window_end_ns: i64 = "bigint",
        records: i64 = "bigint",
        samples: i64 = "bigint",
        dead_letters: i64 = "bigint",
        dead_letters_by_reason: String = "text",
        late_samples: i64 = "bigint",
        max_disorder_ms: f64 = "float8",
        score: f64 = "float8",
        below_threshold: bool = "bool",
    }
}

impl InputQualityColumns {
    pub(super) fn push(&mut self, q: &InputQuality) -> Result<(), String> {
        let input = int(q.input, "input")?;
        let (records, samples) = (bigint(q.records, "records")?, bigint(q.samples, "samples")?);
        let (dead, late) = (bigint(q.dead_letters, "dead_letters")?, bigint(q.late_samples, "late_samples")?);
        let by_reason = json_text(&q.dead_letters_by_reason)?;
        self.source.push(pg_text(&q.source));
        self.input.push(input);
        self.topic.push(q.topic.as_deref().map(pg_text));
        self.partition.push(q.partition);
        self.window_start_ns.push(q.window_start_ns);
        self.window_end_ns.push(q.window_end_ns);
        self.records.push(records);
        self.samples.push(samples);
        self.dead_letters.push(dead);
        self.dead_letters_by_reason.push(by_reason);
        self.late_samples.push(late);
        self.max_disorder_ms.push(q.max_disorder_ms);
        self.score.push(q.score);
        self.below_threshold.push(q.below_threshold);
        Ok(())
    }
}
