//! The PostgreSQL sink's schema: its tables (migration 1; migration 2 adds the progress epoch,
//! migration 3 the replay state, migration 4 the SPC signals, migration 5 layer verdicts and
//! build reports, migration 6 the CT fusion results, migration 7 data quality, migration 8 the SPC
//! baselines and the cell of an SPC signal), the statements that insert into them
//! and store and read the progress, and the names `reset_pipeline` empties. Statements are
//! built once per schema name; nothing here talks to the server.

use super::columns::{AnomalyColumns, DeadLetterColumns, GridMapColumns, LateRecordColumns, LayerSummaryColumns, WindowResultColumns};
use super::spc_columns::{SpcBaselineColumns, SpcSignalColumns};
use super::judgement_columns::{BuildReportColumns, DataQualityColumns, InputQualityColumns, LayerVerdictColumns};

/// Key of the advisory lock that serialises schema migrations across engines.
pub(super) const MIGRATION_LOCK: i64 = 0x6d65_6c74_7374_7265; // "meltstre"

pub(super) use crate::sinks::PIPELINE_TABLES as TABLES;

/// `schema` quoted as an SQL identifier.
pub(super) fn quote_ident(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// SQL turning integer nanoseconds (column `ns`) into a `timestamptz`, exact to the microsecond.
fn ts(ns: &str) -> String {
    format!("(TIMESTAMPTZ 'epoch' + ({ns} / 1000) * INTERVAL '1 microsecond')")
}

/// `INSERT INTO <schema>.<target> SELECT $1, <select> FROM <unnest> ON CONFLICT DO NOTHING`: one
/// multi-row insert of a table's buffered columns (`$1` is the pipeline) that skips rows whose
/// key is already there.
fn insert(s: &str, target: &str, select: &str, unnest: String) -> String {
    format!("INSERT INTO {s}.{target} SELECT $1, {select} FROM {unnest} ON CONFLICT DO NOTHING")
}

/// The statements of one schema.
pub(super) struct Sql {
    /// Creates the schema and the version table.
    pub(super) bootstrap: String,
    /// The migrations in order: version, what it adds (for the log), its statements. Each
    /// inserts its version into `schema_version`.
    pub(super) migrations: Vec<(i32, &'static str, String)>,
    /// Whether migration `$1` is applied.
    pub(super) has_version: String,
    /// Claims the next epoch of partitions (`$2` topics, `$3` partitions) for a new owner;
    /// returns topic, partition, epoch.
    pub(super) claim_epochs: String,
    pub(super) insert_layer_summaries: String,
    pub(super) insert_grid_maps: String,
    pub(super) insert_window_results: String,
    pub(super) insert_anomalies: String,
    pub(super) insert_dead_letters: String,
    pub(super) insert_late_records: String,
    pub(super) insert_spc_signals: String,
    pub(super) insert_layer_verdicts: String,
    pub(super) insert_build_reports: String,
    pub(super) insert_data_quality: String,
    pub(super) insert_input_quality: String,
    pub(super) insert_spc_baselines: String,
    pub(super) upsert_progress: String,
    pub(super) select_progress: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Sql {
        let s = quote_ident(schema);
        let bootstrap = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (
                 version int PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        );
        let has_version = format!("SELECT version FROM {s}.schema_version WHERE version = $1");
        let v1 = format!(
            "CREATE TABLE {s}.layer_summaries (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 layer int NOT NULL,
                 laser int NOT NULL,
                 revision int NOT NULL,
                 window_start timestamptz NOT NULL,
                 window_start_ns bigint NOT NULL,
                 window_end timestamptz NOT NULL,
                 window_end_ns bigint NOT NULL,
                 z_um bigint,
                 sample_count bigint NOT NULL,
                 late_count bigint NOT NULL,
                 energy_density_j_mm3 double precision,
                 energy_density_by_style_j_mm3 jsonb NOT NULL,
                 channels jsonb NOT NULL,
                 rule_hits jsonb NOT NULL,
                 record jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, layer, laser, revision)
             );
             CREATE TABLE {s}.grid_maps (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 layer int NOT NULL,
                 revision int NOT NULL,
                 channel text NOT NULL,
                 cell_mm double precision NOT NULL,
                 cells_per_side int NOT NULL,
                 outside_count bigint NOT NULL,
                 cells jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, layer, revision)
             );
             CREATE TABLE {s}.window_results (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 \"window\" text NOT NULL,
                 window_kind text NOT NULL,
                 channel text NOT NULL,
                 window_start timestamptz NOT NULL,
                 window_start_ns bigint NOT NULL,
                 window_end timestamptz NOT NULL,
                 window_end_ns bigint NOT NULL,
                 count bigint NOT NULL,
                 mean double precision NOT NULL,
                 min double precision NOT NULL,
                 max double precision NOT NULL,
                 std_dev double precision NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, \"window\", window_start_ns)
             );
             CREATE TABLE {s}.anomalies (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 layer int,
                 laser int,
                 laser_key int NOT NULL,
                 time timestamptz NOT NULL,
                 time_ns bigint NOT NULL,
                 rule text NOT NULL,
                 channel text NOT NULL,
                 value double precision NOT NULL,
                 op text NOT NULL,
                 limit_value double precision NOT NULL,
                 x_mm double precision,
                 y_mm double precision,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, rule, laser_key, time_ns)
             );
             CREATE TABLE {s}.dead_letters (
                 pipeline text NOT NULL,
                 source text NOT NULL,
                 input int NOT NULL,
                 topic text,
                 partition int,
                 kafka_offset bigint NOT NULL,
                 reason_kind text NOT NULL,
                 reason text NOT NULL,
                 raw_prefix text NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, source, input, kafka_offset)
             );
             CREATE TABLE {s}.late_records (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 layer int,
                 laser int NOT NULL,
                 t0_ns bigint NOT NULL,
                 sample_count bigint NOT NULL,
                 source_offset bigint NOT NULL,
                 watermark_ns bigint NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, source_offset, t0_ns, laser)
             );
             CREATE TABLE {s}.progress (
                 pipeline text NOT NULL,
                 topic text NOT NULL,
                 partition int NOT NULL,
                 resume_offset bigint NOT NULL,
                 emitted_through bigint NOT NULL,
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, topic, partition)
             );
             INSERT INTO {s}.schema_version (version) VALUES (1);"
        );
        let v3 = format!(
            "ALTER TABLE {s}.progress ADD COLUMN state text NOT NULL DEFAULT '{{}}';
             INSERT INTO {s}.schema_version (version) VALUES (3);"
        );
        let v2 = format!(
            "ALTER TABLE {s}.progress ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
             INSERT INTO {s}.schema_version (version) VALUES (2);"
        );
        let v4 = format!(
            "CREATE TABLE {s}.spc_signals (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 spc text NOT NULL,
                 chart text NOT NULL,
                 channel text NOT NULL,
                 statistic text NOT NULL,
                 laser int NOT NULL,
                 layer int NOT NULL,
                 time timestamptz NOT NULL,
                 time_ns bigint NOT NULL,
                 rule text NOT NULL,
                 value double precision NOT NULL,
                 charted double precision NOT NULL,
                 centre double precision NOT NULL,
                 lower_limit double precision NOT NULL,
                 upper_limit double precision NOT NULL,
                 baseline_centre double precision NOT NULL,
                 baseline_sigma double precision NOT NULL,
                 layers int[] NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, spc, laser, layer, rule)
             );
             INSERT INTO {s}.schema_version (version) VALUES (4);"
        );
        let v5 = format!(
            "CREATE TABLE {s}.layer_verdicts (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 layer int NOT NULL,
                 verdict text NOT NULL,
                 reasons jsonb NOT NULL,
                 time timestamptz NOT NULL,
                 time_ns bigint NOT NULL,
                 sample_count bigint NOT NULL,
                 record jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, layer)
             );
             CREATE TABLE {s}.build_reports (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 time timestamptz NOT NULL,
                 time_ns bigint NOT NULL,
                 layers int NOT NULL,
                 layers_ok int NOT NULL,
                 layers_warn int NOT NULL,
                 layers_fail int NOT NULL,
                 record jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id)
             );
             INSERT INTO {s}.schema_version (version) VALUES (5);"
        );
        let v6 = format!(
            "CREATE TABLE {s}.fused_defects (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 defect_id text NOT NULL,
                 layer int NOT NULL,
                 x_mm double precision NOT NULL,
                 y_mm double precision NOT NULL,
                 z_mm double precision NOT NULL,
                 diameter_um double precision,
                 type text NOT NULL,
                 detectable boolean NOT NULL,
                 detected boolean NOT NULL,
                 evidence_count int NOT NULL,
                 record jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, defect_id)
             );
             CREATE TABLE {s}.fusion_summaries (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 defects int NOT NULL,
                 detectable int NOT NULL,
                 detected int NOT NULL,
                 flags int NOT NULL,
                 confirmed_flags int NOT NULL,
                 recall double precision NOT NULL,
                 precision double precision NOT NULL,
                 record jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id)
             );
             INSERT INTO {s}.schema_version (version) VALUES (6);"
        );
        let v7 = format!(
            "CREATE TABLE {s}.data_quality (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 layer int NOT NULL,
                 time timestamptz NOT NULL,
                 time_ns bigint NOT NULL,
                 score double precision NOT NULL,
                 record jsonb NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, build_id, layer)
             );
             INSERT INTO {s}.schema_version (version) VALUES (7);"
        );
        // A signal of a cell chart is one per cell: the key takes the cell (null for a laser's
        // chart, hence a unique index on an expression rather than a primary key).
        let v8 = format!(
            "ALTER TABLE {s}.spc_signals
                 ADD COLUMN cell int,
                 ADD COLUMN cell_x_mm double precision,
                 ADD COLUMN cell_y_mm double precision,
                 ADD COLUMN cell_mm double precision,
                 DROP CONSTRAINT spc_signals_pkey;
             CREATE UNIQUE INDEX spc_signals_key ON {s}.spc_signals (pipeline, build_id, spc, laser, layer, rule, (coalesce(cell, -1)));
             CREATE TABLE {s}.spc_baselines (
                 pipeline text NOT NULL,
                 build_id text NOT NULL,
                 spc text NOT NULL,
                 chart text NOT NULL,
                 channel text NOT NULL,
                 statistic text NOT NULL,
                 laser int NOT NULL,
                 cell int,
                 cell_x_mm double precision,
                 cell_y_mm double precision,
                 cell_mm double precision,
                 layer int NOT NULL,
                 time timestamptz NOT NULL,
                 time_ns bigint NOT NULL,
                 centre double precision NOT NULL,
                 sigma double precision NOT NULL,
                 layers_used int NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now()
             );
             CREATE UNIQUE INDEX spc_baselines_key ON {s}.spc_baselines (pipeline, build_id, spc, laser, (coalesce(cell, -1)));
             INSERT INTO {s}.schema_version (version) VALUES (8);"
        );
        let v9 = format!(
            "CREATE TABLE {s}.input_quality (
                 pipeline text NOT NULL,
                 source text NOT NULL,
                 input int NOT NULL,
                 topic text,
                 partition int,
                 window_start timestamptz NOT NULL,
                 window_start_ns bigint NOT NULL,
                 window_end_ns bigint NOT NULL,
                 records bigint NOT NULL,
                 samples bigint NOT NULL,
                 dead_letters bigint NOT NULL,
                 dead_letters_by_reason jsonb NOT NULL,
                 late_samples bigint NOT NULL,
                 max_disorder_ms double precision NOT NULL,
                 score double precision NOT NULL,
                 below_threshold boolean NOT NULL,
                 written_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, source, input, window_start_ns)
             );
             INSERT INTO {s}.schema_version (version) VALUES (9);"
        );
        let claim_epochs = format!(
            "INSERT INTO {s}.progress AS p (pipeline, topic, partition, resume_offset, emitted_through, epoch)
             SELECT $1, u.topic, u.partition, 0, 0, 1
             FROM UNNEST($2::text[], $3::int[]) AS u(topic, partition)
             ON CONFLICT (pipeline, topic, partition) DO UPDATE SET epoch = p.epoch + 1, updated_at = now()
             RETURNING topic, partition, epoch"
        );
        let insert_layer_summaries = insert(
            &s,
            "layer_summaries (pipeline, build_id, layer, laser, revision, window_start, window_start_ns, window_end, window_end_ns, z_um, sample_count, late_count, energy_density_j_mm3, energy_density_by_style_j_mm3, channels, rule_hits, record)",
            &format!("u.build_id, u.layer, u.laser, u.revision, {}, u.window_start_ns, {}, u.window_end_ns, u.z_um, u.sample_count, u.late_count, u.energy_density_j_mm3, u.energy_density_by_style::jsonb, u.channels::jsonb, u.rule_hits::jsonb, u.record::jsonb", ts("u.window_start_ns"), ts("u.window_end_ns")),
            LayerSummaryColumns::unnest(),
        );
        let insert_grid_maps = insert(
            &s,
            "grid_maps (pipeline, build_id, layer, revision, channel, cell_mm, cells_per_side, outside_count, cells)",
            "u.build_id, u.layer, u.revision, u.channel, u.cell_mm, u.cells_per_side, u.outside_count, u.cells::jsonb",
            GridMapColumns::unnest(),
        );
        let insert_window_results = insert(
            &s,
            "window_results (pipeline, build_id, \"window\", window_kind, channel, window_start, window_start_ns, window_end, window_end_ns, count, mean, min, max, std_dev)",
            &format!("u.build_id, u.window_name, u.window_kind, u.channel, {}, u.window_start_ns, {}, u.window_end_ns, u.sample_count, u.mean, u.min_value, u.max_value, u.std_dev", ts("u.window_start_ns"), ts("u.window_end_ns")),
            WindowResultColumns::unnest(),
        );
        let insert_anomalies = insert(
            &s,
            "anomalies (pipeline, build_id, layer, laser, laser_key, time, time_ns, rule, channel, value, op, limit_value, x_mm, y_mm)",
            &format!("u.build_id, u.layer, u.laser, coalesce(u.laser, -1), {}, u.time_ns, u.rule, u.channel, u.value, u.op, u.limit_value, u.x_mm, u.y_mm", ts("u.time_ns")),
            AnomalyColumns::unnest(),
        );
        let insert_dead_letters = insert(
            &s,
            "dead_letters (pipeline, source, input, topic, partition, kafka_offset, reason_kind, reason, raw_prefix)",
            "u.source, u.input, u.topic, u.partition, u.kafka_offset, u.reason_kind, u.reason, u.raw_prefix",
            DeadLetterColumns::unnest(),
        );
        let insert_late_records = insert(
            &s,
            "late_records (pipeline, build_id, layer, laser, t0_ns, sample_count, source_offset, watermark_ns)",
            "u.build_id, u.layer, u.laser, u.t0_ns, u.sample_count, u.source_offset, u.watermark_ns",
            LateRecordColumns::unnest(),
        );
        // Only the owner of a partition's current epoch moves its progress: a row whose epoch
        // moved on (another process claimed the partition) is left alone, and the caller,
        // counting fewer rows than it sent, rolls the whole transaction back.
        let insert_spc_signals = insert(
            &s,
            "spc_signals (pipeline, build_id, spc, chart, channel, statistic, laser, layer, time, time_ns, rule, value, charted, centre, lower_limit, upper_limit, baseline_centre, baseline_sigma, layers, cell, cell_x_mm, cell_y_mm, cell_mm)",
            &format!("u.build_id, u.spc, u.chart, u.channel, u.statistic, u.laser, u.layer, {}, u.time_ns, u.rule, u.value, u.charted, u.centre, u.lower_limit, u.upper_limit, u.baseline_centre, u.baseline_sigma, ARRAY(SELECT jsonb_array_elements_text(u.layers::jsonb)::int), u.cell, u.cell_x_mm, u.cell_y_mm, u.cell_mm", ts("u.time_ns")),
            SpcSignalColumns::unnest(),
        );
        let insert_spc_baselines = insert(
            &s,
            "spc_baselines (pipeline, build_id, spc, chart, channel, statistic, laser, cell, cell_x_mm, cell_y_mm, cell_mm, layer, time, time_ns, centre, sigma, layers_used)",
            &format!("u.build_id, u.spc, u.chart, u.channel, u.statistic, u.laser, u.cell, u.cell_x_mm, u.cell_y_mm, u.cell_mm, u.layer, {}, u.time_ns, u.centre, u.sigma, u.layers_used", ts("u.time_ns")),
            SpcBaselineColumns::unnest(),
        );
        let insert_layer_verdicts = insert(
            &s,
            "layer_verdicts (pipeline, build_id, layer, verdict, reasons, time, time_ns, sample_count, record)",
            &format!("u.build_id, u.layer, u.verdict, u.reasons::jsonb, {}, u.time_ns, u.sample_count, u.record::jsonb", ts("u.time_ns")),
            LayerVerdictColumns::unnest(),
        );
        let insert_build_reports = insert(
            &s,
            "build_reports (pipeline, build_id, time, time_ns, layers, layers_ok, layers_warn, layers_fail, record)",
            &format!("u.build_id, {}, u.time_ns, u.layers, u.layers_ok, u.layers_warn, u.layers_fail, u.record::jsonb", ts("u.time_ns")),
            BuildReportColumns::unnest(),
        );
        let insert_data_quality = insert(
            &s,
            "data_quality (pipeline, build_id, layer, time, time_ns, score, record)",
            &format!("u.build_id, u.layer, {}, u.time_ns, u.score, u.record::jsonb", ts("u.time_ns")),
            DataQualityColumns::unnest(),
        );
        let insert_input_quality = insert(
            &s,
            "input_quality (pipeline, source, input, topic, partition, window_start, window_start_ns, window_end_ns, records, samples, dead_letters, dead_letters_by_reason, late_samples, max_disorder_ms, score, below_threshold)",
            &format!(
                "u.source, u.input, u.topic, u.partition, {}, u.window_start_ns, u.window_end_ns, u.records, u.samples, u.dead_letters, u.dead_letters_by_reason::jsonb, u.late_samples, u.max_disorder_ms, u.score, u.below_threshold",
                ts("u.window_start_ns")
            ),
            InputQualityColumns::unnest(),
        );
        let upsert_progress = format!(
            "INSERT INTO {s}.progress AS p (pipeline, topic, partition, resume_offset, emitted_through, epoch, state)
             SELECT $1, u.topic, u.partition, u.resume_offset, u.emitted_through, u.epoch, u.state
             FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[]) AS u(topic, partition, resume_offset, emitted_through, epoch, state)
             ON CONFLICT (pipeline, topic, partition) DO UPDATE
             SET resume_offset = EXCLUDED.resume_offset, emitted_through = EXCLUDED.emitted_through, state = EXCLUDED.state, updated_at = now()
             WHERE p.epoch = EXCLUDED.epoch"
        );
        let select_progress = format!("SELECT topic, partition, resume_offset, emitted_through, state FROM {s}.progress WHERE pipeline = $1");
        Sql {
            bootstrap,
            migrations: vec![(1, "created the PostgreSQL tables", v1), (2, "added the progress epoch", v2), (3, "added the progress replay state", v3), (4, "added the SPC signals table", v4), (5, "added the layer verdicts and build reports", v5), (6, "added the CT fusion tables", v6), (7, "added the data quality table", v7), (8, "added the SPC baselines table and the cell of an SPC signal", v8), (9, "added the input quality table", v9)],
            has_version,
            claim_epochs,
            insert_layer_summaries,
            insert_grid_maps,
            insert_window_results,
            insert_anomalies,
            insert_dead_letters,
            insert_late_records,
            insert_spc_signals,
            insert_layer_verdicts,
            insert_build_reports,
            insert_data_quality,
            insert_input_quality,
            insert_spc_baselines,
            upsert_progress,
            select_progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
