//! The SQLite sink's schema: its tables (the PostgreSQL sink's, in SQLite types), the migrations
//! that create them, and the statements that insert rows, store the progress and read it back.
//! Statements are text built once; running them is `database.rs`'s, and nothing here touches a
//! file.
//!
//! Types: `INTEGER` for integers and nanosecond times, `REAL` for floats, `TEXT` for strings,
//! for the RFC 3339 times PostgreSQL keeps as `timestamptz` (UTC, microseconds, as the records
//! write them) and for JSON (PostgreSQL's `jsonb` columns and `spc_signals.layers`, an `int[]`
//! there: a JSON array here). The tables are ordinary (not `STRICT`) so that any sqlite3 shell
//! or Python of the last years can read them.

/// One table of results: its name and the columns a buffered row fills, in order, after
/// `pipeline` (the insert binds the pipeline as `?1`, the row's values as `?2`, `?3`, …).
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) columns: &'static [&'static str],
}

/// The result tables, indexed as `rows.rs` buffers them (layer summaries 0, …, data quality 9,
/// SPC baselines 10, input quality 11).
pub(super) const TABLES: [Table; 12] = [
    Table {
        name: "layer_summaries",
        columns: &[
            "build_id", "layer", "laser", "revision", "window_start", "window_start_ns", "window_end", "window_end_ns", "z_um", "sample_count", "late_count", "energy_density_j_mm3",
            "energy_density_by_style_j_mm3", "channels", "rule_hits", "record",
        ],
    },
    Table { name: "grid_maps", columns: &["build_id", "layer", "revision", "channel", "cell_mm", "cells_per_side", "outside_count", "cells"] },
    Table {
        name: "window_results",
        columns: &["build_id", "\"window\"", "window_kind", "channel", "window_start", "window_start_ns", "window_end", "window_end_ns", "count", "mean", "min", "max", "std_dev"],
    },
    Table { name: "anomalies", columns: &["build_id", "layer", "laser", "laser_key", "time", "time_ns", "rule", "channel", "value", "op", "limit_value", "x_mm", "y_mm"] },
    Table { name: "dead_letters", columns: &["source", "input", "topic", "\"partition\"", "kafka_offset", "reason_kind", "reason", "raw_prefix"] },
    Table { name: "late_records", columns: &["build_id", "layer", "laser", "t0_ns", "sample_count", "source_offset", "watermark_ns"] },
    Table {
        name: "spc_signals",
        columns: &[
            "build_id", "spc", "chart", "channel", "statistic", "laser", "layer", "time", "time_ns", "rule", "value", "charted", "centre", "lower_limit", "upper_limit", "baseline_centre",
            "baseline_sigma", "layers", "cell", "cell_x_mm", "cell_y_mm", "cell_mm",
        ],
    },
    Table { name: "layer_verdicts", columns: &["build_id", "layer", "verdict", "reasons", "time", "time_ns", "sample_count", "record"] },
    Table { name: "build_reports", columns: &["build_id", "time", "time_ns", "layers", "layers_ok", "layers_warn", "layers_fail", "record"] },
    Table { name: "data_quality", columns: &["build_id", "layer", "time", "time_ns", "score", "record"] },
    Table {
        name: "spc_baselines",
        columns: &["build_id", "spc", "chart", "channel", "statistic", "laser", "cell", "cell_x_mm", "cell_y_mm", "cell_mm", "layer", "time", "time_ns", "centre", "sigma", "layers_used"],
    },
    Table {
        name: "input_quality",
        columns: &[
            "source", "input", "topic", "\"partition\"", "window_start", "window_start_ns", "window_end_ns", "records", "samples", "dead_letters", "dead_letters_by_reason", "late_samples",
            "max_disorder_ms", "score", "below_threshold",
        ],
    },
];

pub(super) use crate::sinks::PIPELINE_TABLES;

/// SQL default of the `written_at`, `updated_at` and `applied_at` columns: the wall clock as
/// RFC 3339 UTC (milliseconds).
macro_rules! now_utc {
    () => {
        "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
    };
}

/// Creates the version table (every start, idempotent).
pub(super) const BOOTSTRAP: &str = concat!("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT ", now_utc!(), ");");

/// The newest schema version applied so far (NULL for a new file).
pub(super) const CURRENT_VERSION: &str = "SELECT max(version) FROM schema_version";

/// Records that migration `?1` is applied.
pub(super) const ADD_VERSION: &str = "INSERT INTO schema_version (version) VALUES (?1)";

/// The migrations in order: version, what it adds (for the log), its statements.
pub(super) const MIGRATIONS: [(i64, &str, &str); 5] = [
    (1, "created the SQLite tables", V1),
    (2, "added the CT fusion tables", V2),
    (3, "added the data quality table", V3),
    (4, "added the SPC baselines table and the cell of an SPC signal", V4),
    (5, "added the input quality table", V5),
];

/// Migration 5: data quality per input and window of event time (PostgreSQL's migration 9).
const V5: &str = concat!(
    "CREATE TABLE input_quality (
        pipeline TEXT NOT NULL,
        source TEXT NOT NULL,
        input INTEGER NOT NULL,
        topic TEXT,
        \"partition\" INTEGER,
        window_start TEXT NOT NULL,
        window_start_ns INTEGER NOT NULL,
        window_end_ns INTEGER NOT NULL,
        records INTEGER NOT NULL,
        samples INTEGER NOT NULL,
        dead_letters INTEGER NOT NULL,
        dead_letters_by_reason TEXT NOT NULL,
        late_samples INTEGER NOT NULL,
        max_disorder_ms REAL NOT NULL,
        score REAL NOT NULL,
        below_threshold INTEGER NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, source, input, window_start_ns)
    );"
);

/// Migration 4: the SPC baselines, and the cell of an SPC signal (PostgreSQL's migration 8). A
/// primary key cannot change in SQLite: `spc_signals` is copied into a table keyed by a unique
/// index that takes the cell (null for a laser's chart).
const V4: &str = concat!(
    "CREATE TABLE spc_signals_v4 (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        spc TEXT NOT NULL,
        chart TEXT NOT NULL,
        channel TEXT NOT NULL,
        statistic TEXT NOT NULL,
        laser INTEGER NOT NULL,
        layer INTEGER NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        rule TEXT NOT NULL,
        value REAL NOT NULL,
        charted REAL NOT NULL,
        centre REAL NOT NULL,
        lower_limit REAL NOT NULL,
        upper_limit REAL NOT NULL,
        baseline_centre REAL NOT NULL,
        baseline_sigma REAL NOT NULL,
        layers TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        cell INTEGER,
        cell_x_mm REAL,
        cell_y_mm REAL,
        cell_mm REAL
    );
    INSERT INTO spc_signals_v4 (pipeline, build_id, spc, chart, channel, statistic, laser, layer, time, time_ns, rule, value, charted, centre, lower_limit, upper_limit, baseline_centre, baseline_sigma, layers, written_at)
        SELECT pipeline, build_id, spc, chart, channel, statistic, laser, layer, time, time_ns, rule, value, charted, centre, lower_limit, upper_limit, baseline_centre, baseline_sigma, layers, written_at FROM spc_signals;
    DROP TABLE spc_signals;
    ALTER TABLE spc_signals_v4 RENAME TO spc_signals;
    CREATE UNIQUE INDEX spc_signals_key ON spc_signals (pipeline, build_id, spc, laser, layer, rule, ifnull(cell, -1));
    CREATE TABLE spc_baselines (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        spc TEXT NOT NULL,
        chart TEXT NOT NULL,
        channel TEXT NOT NULL,
        statistic TEXT NOT NULL,
        laser INTEGER NOT NULL,
        cell INTEGER,
        cell_x_mm REAL,
        cell_y_mm REAL,
        cell_mm REAL,
        layer INTEGER NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        centre REAL NOT NULL,
        sigma REAL NOT NULL,
        layers_used INTEGER NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), "
    );
    CREATE UNIQUE INDEX spc_baselines_key ON spc_baselines (pipeline, build_id, spc, laser, ifnull(cell, -1));"
);

/// Migration 3: data quality per closed layer (PostgreSQL's migration 7).
const V3: &str = concat!(
    "CREATE TABLE data_quality (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        layer INTEGER NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        score REAL NOT NULL,
        record TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, layer)
    );"
);

/// Migration 2: the results of `meltstream fuse` (PostgreSQL's migration 6).
const V2: &str = concat!(
    "CREATE TABLE fused_defects (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        defect_id TEXT NOT NULL,
        layer INTEGER NOT NULL,
        x_mm REAL NOT NULL,
        y_mm REAL NOT NULL,
        z_mm REAL NOT NULL,
        diameter_um REAL,
        type TEXT NOT NULL,
        detectable INTEGER NOT NULL,
        detected INTEGER NOT NULL,
        evidence_count INTEGER NOT NULL,
        record TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, defect_id)
    );
    CREATE TABLE fusion_summaries (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        defects INTEGER NOT NULL,
        detectable INTEGER NOT NULL,
        detected INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        confirmed_flags INTEGER NOT NULL,
        recall REAL NOT NULL,
        \"precision\" REAL NOT NULL,
        record TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id)
    );"
);

/// Migration 1: every table at once (the PostgreSQL sink's five migrations, less the progress
/// epoch: one process owns the file, so nothing is fenced).
const V1: &str = concat!(
    "CREATE TABLE layer_summaries (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        layer INTEGER NOT NULL,
        laser INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        window_start TEXT NOT NULL,
        window_start_ns INTEGER NOT NULL,
        window_end TEXT NOT NULL,
        window_end_ns INTEGER NOT NULL,
        z_um INTEGER,
        sample_count INTEGER NOT NULL,
        late_count INTEGER NOT NULL,
        energy_density_j_mm3 REAL,
        energy_density_by_style_j_mm3 TEXT NOT NULL,
        channels TEXT NOT NULL,
        rule_hits TEXT NOT NULL,
        record TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, layer, laser, revision)
    );
    CREATE TABLE grid_maps (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        layer INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        channel TEXT NOT NULL,
        cell_mm REAL NOT NULL,
        cells_per_side INTEGER NOT NULL,
        outside_count INTEGER NOT NULL,
        cells TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, layer, revision)
    );
    CREATE TABLE window_results (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        \"window\" TEXT NOT NULL,
        window_kind TEXT NOT NULL,
        channel TEXT NOT NULL,
        window_start TEXT NOT NULL,
        window_start_ns INTEGER NOT NULL,
        window_end TEXT NOT NULL,
        window_end_ns INTEGER NOT NULL,
        count INTEGER NOT NULL,
        mean REAL NOT NULL,
        min REAL NOT NULL,
        max REAL NOT NULL,
        std_dev REAL NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, \"window\", window_start_ns)
    );
    CREATE TABLE anomalies (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        layer INTEGER,
        laser INTEGER,
        laser_key INTEGER NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        rule TEXT NOT NULL,
        channel TEXT NOT NULL,
        value REAL NOT NULL,
        op TEXT NOT NULL,
        limit_value REAL NOT NULL,
        x_mm REAL,
        y_mm REAL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, rule, laser_key, time_ns)
    );
    CREATE TABLE dead_letters (
        pipeline TEXT NOT NULL,
        source TEXT NOT NULL,
        input INTEGER NOT NULL,
        topic TEXT,
        \"partition\" INTEGER,
        kafka_offset INTEGER NOT NULL,
        reason_kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        raw_prefix TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, source, input, kafka_offset)
    );
    CREATE TABLE late_records (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        layer INTEGER,
        laser INTEGER NOT NULL,
        t0_ns INTEGER NOT NULL,
        sample_count INTEGER NOT NULL,
        source_offset INTEGER NOT NULL,
        watermark_ns INTEGER NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, source_offset, t0_ns, laser)
    );
    CREATE TABLE spc_signals (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        spc TEXT NOT NULL,
        chart TEXT NOT NULL,
        channel TEXT NOT NULL,
        statistic TEXT NOT NULL,
        laser INTEGER NOT NULL,
        layer INTEGER NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        rule TEXT NOT NULL,
        value REAL NOT NULL,
        charted REAL NOT NULL,
        centre REAL NOT NULL,
        lower_limit REAL NOT NULL,
        upper_limit REAL NOT NULL,
        baseline_centre REAL NOT NULL,
        baseline_sigma REAL NOT NULL,
        layers TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, spc, laser, layer, rule)
    );
    CREATE TABLE layer_verdicts (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        layer INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        reasons TEXT NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        sample_count INTEGER NOT NULL,
        record TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id, layer)
    );
    CREATE TABLE build_reports (
        pipeline TEXT NOT NULL,
        build_id TEXT NOT NULL,
        time TEXT NOT NULL,
        time_ns INTEGER NOT NULL,
        layers INTEGER NOT NULL,
        layers_ok INTEGER NOT NULL,
        layers_warn INTEGER NOT NULL,
        layers_fail INTEGER NOT NULL,
        record TEXT NOT NULL,
        written_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, build_id)
    );
    CREATE TABLE progress (
        pipeline TEXT NOT NULL,
        topic TEXT NOT NULL,
        \"partition\" INTEGER NOT NULL,
        resume_offset INTEGER NOT NULL,
        emitted_through INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT '{}',
        updated_at TEXT NOT NULL DEFAULT ", now_utc!(), ",
        PRIMARY KEY (pipeline, topic, \"partition\")
    );"
);

/// Stores one partition's progress and replay state (`?1` pipeline, `?2` topic, `?3`
/// partition, `?4` resume, `?5` emitted through, `?6` state).
pub(super) const UPSERT_PROGRESS: &str = concat!(
    "INSERT INTO progress (pipeline, topic, \"partition\", resume_offset, emitted_through, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (pipeline, topic, \"partition\") DO UPDATE
     SET resume_offset = excluded.resume_offset, emitted_through = excluded.emitted_through, state = excluded.state, updated_at = ",
    now_utc!()
);

/// The progress of pipeline `?1`: topic, partition, resume, emitted through, state.
pub(super) const SELECT_PROGRESS: &str = "SELECT topic, \"partition\", resume_offset, emitted_through, state FROM progress WHERE pipeline = ?1";

/// `INSERT INTO <table> (pipeline, <columns>) VALUES (?1, ?2, …) ON CONFLICT DO NOTHING`: one
/// row, skipped when its key is already there.
pub(super) fn insert(table: &Table) -> String {
    let params: Vec<String> = (1..=table.columns.len() + 1).map(|i| format!("?{i}")).collect();
    format!("INSERT INTO {} (pipeline, {}) VALUES ({}) ON CONFLICT DO NOTHING", table.name, table.columns.join(", "), params.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_binds_the_pipeline_then_every_column() {
        assert_eq!(
            insert(&TABLES[5]),
            "INSERT INTO late_records (pipeline, build_id, layer, laser, t0_ns, sample_count, source_offset, watermark_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn the_migrations_create_every_table_they_insert_into() {
        let db = rusqlite::Connection::open_in_memory().expect("in-memory database");
        db.execute_batch(BOOTSTRAP).expect("bootstrap");
        for (_, _, sql) in MIGRATIONS {
            db.execute_batch(sql).expect("migration");
        }
        for t in &TABLES {
            db.prepare(&insert(t)).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        }
        db.prepare(UPSERT_PROGRESS).expect("progress upsert");
        db.prepare(SELECT_PROGRESS).expect("progress query");
        for t in PIPELINE_TABLES {
            db.prepare(&format!("DELETE FROM {t} WHERE pipeline = ?1")).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }
}
