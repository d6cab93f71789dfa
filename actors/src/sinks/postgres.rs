//! PostgreSQL sink: one table per record kind, written in batches; every flush is one
//! transaction that also stores the source progress.
//!
//! # Tables
//! All tables live in the sink's schema (default `meltstream`) and every row carries the
//! `pipeline` it belongs to. The primary keys follow [`OutputRecord::key`], so the same result
//! always lands on the same row:
//!
//! | table | one row per | primary key |
//! | --- | --- | --- |
//! | `layer_summaries` | layer summary | `pipeline, build_id, layer, laser, revision` |
//! | `grid_maps` | grid map | `pipeline, build_id, layer, revision` |
//! | `window_results` | time-window result | `pipeline, build_id, window, window_start_ns` |
//! | `anomalies` | rule hit | `pipeline, build_id, rule, laser_key, time_ns` (`laser_key` = laser, or −1 when none) |
//! | `dead_letters` | rejected input record (with Kafka topic and partition) | `pipeline, source, input, kafka_offset` |
//! | `late_records` | block of late samples | `pipeline, build_id, source_offset, t0_ns, laser` |
//! | `progress` | Kafka partition | `pipeline, topic, partition` |
//!
//! Times are stored both as `timestamptz` (microseconds, computed in SQL from the record's
//! nanoseconds) and, where they are part of a key, as the exact `…_ns` integers. Maps and cell
//! lists are `jsonb`; `layer_summaries.record` holds the whole record. The schema is created
//! and migrated on first use (versions in `schema_version`, under a transaction-scoped advisory
//! lock so that several engines may start at once).
//!
//! # Repeated writes are harmless
//! [`SinkWriter::write`] only buffers. [`SinkWriter::flush`] runs one transaction holding one
//! multi-row `INSERT … SELECT … FROM UNNEST(…) ON CONFLICT DO NOTHING` per table that has
//! buffered rows, then one upsert of the checkpoint into `progress`, then `COMMIT`. Because every
//! insert skips rows whose key is already there and the progress is an upsert, writing the same
//! records again (a replay after a crash, or a flush retried after a `COMMIT` whose outcome was
//! unknown) changes nothing.
//!
//! # Progress
//! The [`Checkpoint`] given to a flush is stored in the same transaction as the records, so the
//! stored progress never runs ahead of the stored results (see `progress.rs`).
//! [`SinkWriter::stored_progress`] reads it back once before the engine starts.
//!
//! # Failures
//! A failed flush keeps its buffers; the sink actor retries it with backoff as long as the
//! error is [`SinkError::Retryable`]: I/O and connection errors, a closed connection, pool
//! timeouts, and SQLSTATE classes `08` (connection exception), `40` (transaction rollback:
//! serialization failure, deadlock), `53` (insufficient resources) and `57` (operator
//! intervention, e.g. `57P01` admin shutdown). Anything else (say `42P01` undefined table, or a
//! value that does not fit its column) is a bug that retrying will not fix:
//! [`SinkError::Fatal`]. Every failure is logged with its SQLSTATE.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use meltstream_engine::records::{Anomaly, DeadLetterRecord, Emitted, GridMap, LateRecord, LayerSummary, OutputRecord, WindowResult};

use crate::progress::{Checkpoint, Progress, StoredProgress};
use crate::sink::{SinkError, SinkWriter};

/// Key of the advisory lock that serialises schema migrations across engines.
const MIGRATION_LOCK: i64 = 0x6d65_6c74_7374_7265; // "meltstre"

/// Connections per sink.
const POOL_SIZE: usize = 4;

/// Timeout of a TCP connection attempt (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every table holding rows of a pipeline, in the order `reset_pipeline` empties them.
const TABLES: [&str; 7] = ["layer_summaries", "grid_maps", "window_results", "anomalies", "dead_letters", "late_records", "progress"];

type Param<'a> = &'a (dyn ToSql + Sync);

/// Declares the buffered columns of one table: one `Vec` per column, pushed to by `write` and
/// bound as arrays by `flush`. Each column names the PostgreSQL element type it is sent as;
/// `unnest()` lists them in declaration order as parameters `$2, $3, …` (`$1` is the pipeline),
/// which is also the order of `params()`.
macro_rules! columns {
    ($(#[$doc:meta])* $name:ident { $first:ident: $fty:ty = $fsql:literal $(, $field:ident: $ty:ty = $sql:literal)* $(,)? }) => {
        $(#[$doc])*
        #[derive(Default)]
        struct $name {
            $first: Vec<$fty>,
            $($field: Vec<$ty>,)*
        }

        impl $name {
            fn len(&self) -> usize {
                self.$first.len()
            }

            fn append(&mut self, other: &mut $name) {
                self.$first.append(&mut other.$first);
                $(self.$field.append(&mut other.$field);)*
            }

            fn clear(&mut self) {
                self.$first.clear();
                $(self.$field.clear();)*
            }

            /// `UNNEST($2::type[], …) AS u(column, …)`.
            fn unnest() -> String {
                let cols: &[(&str, &str)] = &[(stringify!($first), $fsql) $(, (stringify!($field), $sql))*];
                let args: Vec<String> = cols.iter().enumerate().map(|(i, (_, ty))| format!("${}::{}[]", i + 2, ty)).collect();
                let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
                format!("UNNEST({}) AS u({})", args.join(", "), names.join(", "))
            }

            /// The parameters of the insert: the pipeline, then every column.
            fn params<'a>(&'a self, pipeline: &'a String) -> Vec<Param<'a>> {
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
fn pg_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_owned()
    }
}

/// JSON text as `jsonb` accepts it: `\u0000` is refused, so NULs in strings and keys are
/// replaced (only when there are any).
fn json_text<T: serde::Serialize>(value: &T) -> Result<String, String> {
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

fn int(v: u32, what: &str) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{what} {v} does not fit a PostgreSQL int"))
}

fn bigint(v: u64, what: &str) -> Result<i64, String> {
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
struct Buffers {
    layer_summaries: LayerSummaryColumns,
    grid_maps: GridMapColumns,
    window_results: WindowResultColumns,
    anomalies: AnomalyColumns,
    dead_letters: DeadLetterColumns,
    late_records: LateRecordColumns,
}

impl Buffers {
    fn push(&mut self, record: &OutputRecord) -> Result<(), String> {
        match record {
            OutputRecord::LayerSummary(s) => self.layer_summaries.push(s, record),
            OutputRecord::Grid(g) => self.grid_maps.push(g),
            OutputRecord::Window(w) => self.window_results.push(w),
            OutputRecord::Anomaly(a) => self.anomalies.push(a),
            OutputRecord::DeadLetter(d) => self.dead_letters.push(d),
            OutputRecord::Late(l) => self.late_records.push(l),
        }
    }

    fn append(&mut self, other: &mut Buffers) {
        self.layer_summaries.append(&mut other.layer_summaries);
        self.grid_maps.append(&mut other.grid_maps);
        self.window_results.append(&mut other.window_results);
        self.anomalies.append(&mut other.anomalies);
        self.dead_letters.append(&mut other.dead_letters);
        self.late_records.append(&mut other.late_records);
    }

    fn clear(&mut self) {
        self.layer_summaries.clear();
        self.grid_maps.clear();
        self.window_results.clear();
        self.anomalies.clear();
        self.dead_letters.clear();
        self.late_records.clear();
    }

    fn is_empty(&self) -> bool {
        self.layer_summaries.len() == 0
            && self.grid_maps.len() == 0
            && self.window_results.len() == 0
            && self.anomalies.len() == 0
            && self.dead_letters.len() == 0
            && self.late_records.len() == 0
    }
}

/// `schema` quoted as an SQL identifier.
fn quote_ident(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// SQL turning integer nanoseconds (column `ns`) into a `timestamptz`, exact to the microsecond.
fn ts(ns: &str) -> String {
    format!("(TIMESTAMPTZ 'epoch' + ({ns} / 1000) * INTERVAL '1 microsecond')")
}

/// The statements of one schema.
struct Sql {
    /// Creates the schema and the version table.
    bootstrap: String,
    /// Whether migration 1 is applied.
    has_v1: String,
    /// Migration 1.
    v1: String,
    insert_layer_summaries: String,
    insert_grid_maps: String,
    insert_window_results: String,
    insert_anomalies: String,
    insert_dead_letters: String,
    insert_late_records: String,
    upsert_progress: String,
    select_progress: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        let s = quote_ident(schema);
        let bootstrap = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (
                 version int PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        );
        let has_v1 = format!("SELECT version FROM {s}.schema_version WHERE version = 1");
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
        let insert_layer_summaries = format!(
            "INSERT INTO {s}.layer_summaries (pipeline, build_id, layer, laser, revision, window_start, window_start_ns, window_end, window_end_ns,
                 z_um, sample_count, late_count, energy_density_j_mm3, energy_density_by_style_j_mm3, channels, rule_hits, record)
             SELECT $1, u.build_id, u.layer, u.laser, u.revision, {}, u.window_start_ns, {}, u.window_end_ns,
                 u.z_um, u.sample_count, u.late_count, u.energy_density_j_mm3, u.energy_density_by_style::jsonb, u.channels::jsonb, u.rule_hits::jsonb, u.record::jsonb
             FROM {}
             ON CONFLICT DO NOTHING",
            ts("u.window_start_ns"),
            ts("u.window_end_ns"),
            LayerSummaryColumns::unnest()
        );
        let insert_grid_maps = format!(
            "INSERT INTO {s}.grid_maps (pipeline, build_id, layer, revision, channel, cell_mm, cells_per_side, outside_count, cells)
             SELECT $1, u.build_id, u.layer, u.revision, u.channel, u.cell_mm, u.cells_per_side, u.outside_count, u.cells::jsonb
             FROM {}
             ON CONFLICT DO NOTHING",
            GridMapColumns::unnest()
        );
        let insert_window_results = format!(
            "INSERT INTO {s}.window_results (pipeline, build_id, \"window\", window_kind, channel, window_start, window_start_ns, window_end, window_end_ns,
                 count, mean, min, max, std_dev)
             SELECT $1, u.build_id, u.window_name, u.window_kind, u.channel, {}, u.window_start_ns, {}, u.window_end_ns,
                 u.sample_count, u.mean, u.min_value, u.max_value, u.std_dev
             FROM {}
             ON CONFLICT DO NOTHING",
            ts("u.window_start_ns"),
            ts("u.window_end_ns"),
            WindowResultColumns::unnest()
        );
        let insert_anomalies = format!(
            "INSERT INTO {s}.anomalies (pipeline, build_id, layer, laser, laser_key, time, time_ns, rule, channel, value, op, limit_value, x_mm, y_mm)
             SELECT $1, u.build_id, u.layer, u.laser, coalesce(u.laser, -1), {}, u.time_ns, u.rule, u.channel, u.value, u.op, u.limit_value, u.x_mm, u.y_mm
             FROM {}
             ON CONFLICT DO NOTHING",
            ts("u.time_ns"),
            AnomalyColumns::unnest()
        );
        let insert_dead_letters = format!(
            "INSERT INTO {s}.dead_letters (pipeline, source, input, topic, partition, kafka_offset, reason_kind, reason, raw_prefix)
             SELECT $1, u.source, u.input, u.topic, u.partition, u.kafka_offset, u.reason_kind, u.reason, u.raw_prefix
             FROM {}
             ON CONFLICT DO NOTHING",
            DeadLetterColumns::unnest()
        );
        let insert_late_records = format!(
            "INSERT INTO {s}.late_records (pipeline, build_id, layer, laser, t0_ns, sample_count, source_offset, watermark_ns)
             SELECT $1, u.build_id, u.layer, u.laser, u.t0_ns, u.sample_count, u.source_offset, u.watermark_ns
             FROM {}
             ON CONFLICT DO NOTHING",
            LateRecordColumns::unnest()
        );
        let upsert_progress = format!(
            "INSERT INTO {s}.progress (pipeline, topic, partition, resume_offset, emitted_through)
             SELECT $1, u.topic, u.partition, u.resume_offset, u.emitted_through
             FROM UNNEST($2::text[], $3::int[], $4::bigint[], $5::bigint[]) AS u(topic, partition, resume_offset, emitted_through)
             ON CONFLICT (pipeline, topic, partition) DO UPDATE
             SET resume_offset = EXCLUDED.resume_offset, emitted_through = EXCLUDED.emitted_through, updated_at = now()"
        );
        let select_progress = format!("SELECT topic, partition, resume_offset, emitted_through FROM {s}.progress WHERE pipeline = $1");
        Sql {
            bootstrap,
            has_v1,
            v1,
            insert_layer_summaries,
            insert_grid_maps,
            insert_window_results,
            insert_anomalies,
            insert_dead_letters,
            insert_late_records,
            upsert_progress,
            select_progress,
        }
    }
}

/// True when retrying `e` may succeed: I/O, a closed connection, a timeout, or SQLSTATE class
/// 08, 40, 53 or 57.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return matches!(code.code().get(..2), Some("08" | "40" | "53" | "57"));
    }
    // Not a server error: an I/O (or connect) error carries an io::Error as its source, and a
    // timeout has none but says so.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().starts_with("timeout")
}

fn sqlstate(e: &tokio_postgres::Error) -> &str {
    e.code().map_or("none", |c| c.code())
}

/// Writes records to PostgreSQL, one transaction per flush (see the module documentation).
pub struct PgSink {
    name: String,
    pipeline: String,
    schema: String,
    pool: Pool,
    sql: Sql,
    migrated: bool,
    buffers: Buffers,
}

impl PgSink {
    /// A sink named `name` writing the rows of `pipeline` into `schema` of the database at
    /// `url`. Nothing connects yet: the first [`SinkWriter::stored_progress`] or flush does,
    /// and migrates the schema. Fails (fatally) only on a URL that does not parse.
    pub fn new(name: &str, url: &str, pipeline: &str, schema: &str) -> Result<PgSink, SinkError> {
        let fatal = |message: String| SinkError::Fatal { sink: name.to_owned(), message };
        if schema.is_empty() {
            return Err(fatal("the schema name is empty".into()));
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| fatal(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("meltstream");
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT * 2))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| fatal(format!("cannot create the connection pool: {e}")))?;
        Ok(PgSink {
            name: name.to_owned(),
            pipeline: pipeline.to_owned(),
            schema: schema.to_owned(),
            pool,
            sql: Sql::new(schema),
            migrated: false,
            buffers: Buffers::default(),
        })
    }

    /// Rows buffered since the last successful flush.
    pub fn buffered_rows(&self) -> usize {
        let b = &self.buffers;
        b.layer_summaries.len() + b.grid_maps.len() + b.window_results.len() + b.anomalies.len() + b.dead_letters.len() + b.late_records.len()
    }

    /// Classifies a database error of `stage`, logging it.
    fn db_error(&self, stage: &str, e: &tokio_postgres::Error) -> SinkError {
        let retry = is_transient(e);
        tracing::warn!(sink = %self.name, stage, sqlstate = sqlstate(e), retryable = retry, error = %e, "PostgreSQL sink failed");
        let message = format!("{stage}: {e} (SQLSTATE {})", sqlstate(e));
        if retry {
            SinkError::Retryable { sink: self.name.clone(), message }
        } else {
            SinkError::Fatal { sink: self.name.clone(), message }
        }
    }

    /// Classifies a failure to get a connection, logging it.
    fn pool_error(&self, e: PoolError) -> SinkError {
        let (retry, state) = match &e {
            PoolError::Backend(b) => (is_transient(b), sqlstate(b).to_owned()),
            PoolError::Timeout(_) => (true, "none".to_owned()),
            PoolError::PostCreateHook(_) => (true, "none".to_owned()),
            PoolError::Closed | PoolError::NoRuntimeSpecified => (false, "none".to_owned()),
        };
        tracing::warn!(sink = %self.name, stage = "connect", sqlstate = %state, retryable = retry, error = %e, "PostgreSQL sink cannot connect");
        let message = format!("cannot connect to PostgreSQL: {e} (SQLSTATE {state})");
        if retry {
            SinkError::Retryable { sink: self.name.clone(), message }
        } else {
            SinkError::Fatal { sink: self.name.clone(), message }
        }
    }

    fn fatal(&self, message: String) -> SinkError {
        tracing::warn!(sink = %self.name, sqlstate = "none", retryable = false, error = %message, "PostgreSQL sink failed");
        SinkError::Fatal { sink: self.name.clone(), message }
    }

    /// Creates or upgrades the schema (idempotent; serialised by an advisory lock).
    async fn migrate(&mut self) -> Result<(), SinkError> {
        if self.migrated {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error("begin migration", &e))?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await.map_err(|e| self.db_error("lock for migration", &e))?;
        tx.batch_execute(&self.sql.bootstrap).await.map_err(|e| self.db_error("create schema", &e))?;
        let applied = tx.query_opt(&self.sql.has_v1, &[]).await.map_err(|e| self.db_error("read schema version", &e))?;
        if applied.is_none() {
            tx.batch_execute(&self.sql.v1).await.map_err(|e| self.db_error("apply migration 1", &e))?;
            tracing::info!(sink = %self.name, schema = %self.schema, "created the PostgreSQL tables (schema version 1)");
        }
        tx.commit().await.map_err(|e| self.db_error("commit migration", &e))?;
        self.migrated = true;
        Ok(())
    }

    /// Writes the buffers and `checkpoint` in one transaction; returns the rows inserted per
    /// table once committed.
    async fn write_transaction(&self, checkpoint: &Checkpoint) -> Result<Vec<(&'static str, u64)>, SinkError> {
        let b = &self.buffers;
        let p = &self.pipeline;
        let batches: [(&'static str, usize, &str, Vec<Param<'_>>); 6] = [
            ("layer_summaries", b.layer_summaries.len(), &self.sql.insert_layer_summaries, b.layer_summaries.params(p)),
            ("grid_maps", b.grid_maps.len(), &self.sql.insert_grid_maps, b.grid_maps.params(p)),
            ("window_results", b.window_results.len(), &self.sql.insert_window_results, b.window_results.params(p)),
            ("anomalies", b.anomalies.len(), &self.sql.insert_anomalies, b.anomalies.params(p)),
            ("dead_letters", b.dead_letters.len(), &self.sql.insert_dead_letters, b.dead_letters.params(p)),
            ("late_records", b.late_records.len(), &self.sql.insert_late_records, b.late_records.params(p)),
        ];
        // One entry per partition (an upsert may not touch a row twice); the latest wins.
        let latest: BTreeMap<(&str, i32), &Progress> = checkpoint.entries.iter().map(|((topic, partition), p)| ((topic.as_str(), *partition), p)).collect();
        let mut topics = Vec::with_capacity(latest.len());
        let mut partitions = Vec::with_capacity(latest.len());
        let mut resume = Vec::with_capacity(latest.len());
        let mut emitted = Vec::with_capacity(latest.len());
        for ((topic, partition), p) in &latest {
            topics.push(*topic);
            partitions.push(*partition);
            resume.push(bigint(p.resume, "resume offset").map_err(|m| self.fatal(m))?);
            emitted.push(bigint(p.emitted_through, "emitted-through offset").map_err(|m| self.fatal(m))?);
        }

        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error("begin", &e))?;
        let mut inserted = Vec::new();
        for (table, len, sql, params) in &batches {
            if *len == 0 {
                continue;
            }
            let stmt = tx.prepare_cached(sql).await.map_err(|e| self.db_error(&format!("prepare insert into {table}"), &e))?;
            let n = tx.execute(&stmt, params).await.map_err(|e| self.db_error(&format!("insert into {table}"), &e))?;
            inserted.push((*table, n));
        }
        if !latest.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.upsert_progress).await.map_err(|e| self.db_error("prepare progress upsert", &e))?;
            let params: [Param<'_>; 5] = [p, &topics, &partitions, &resume, &emitted];
            tx.execute(&stmt, &params).await.map_err(|e| self.db_error("store progress", &e))?;
        }
        tx.commit().await.map_err(|e| self.db_error("commit", &e))?;
        Ok(inserted)
    }
}

impl SinkWriter for PgSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        // Stage first, so that a record that cannot be stored leaves the buffers as they were.
        let mut staged = Buffers::default();
        for r in records {
            staged.push(&r.record).map_err(|m| self.fatal(format!("cannot store {}: {m}", r.record.key())))?;
        }
        self.buffers.append(&mut staged);
        Ok(())
    }

    async fn flush(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        if self.buffers.is_empty() && checkpoint.entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.migrate().await?;
        let inserted = self.write_transaction(checkpoint).await?;
        // Committed: only now may the rows leave the buffers.
        self.buffers.clear();
        for (table, n) in inserted {
            metrics::counter!("meltstream_pg_rows_total", "sink" => self.name.clone(), "table" => table).increment(n);
        }
        metrics::histogram!("meltstream_pg_flush_seconds", "sink" => self.name.clone()).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn stored_progress(&mut self) -> Result<Option<StoredProgress>, SinkError> {
        self.migrate().await?;
        let client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let stmt = client.prepare_cached(&self.sql.select_progress).await.map_err(|e| self.db_error("prepare progress query", &e))?;
        let rows = client.query(&stmt, &[&self.pipeline]).await.map_err(|e| self.db_error("read progress", &e))?;
        let mut stored = StoredProgress::new();
        for row in rows {
            let topic: String = row.try_get(0).map_err(|e| self.db_error("read progress", &e))?;
            let partition: i32 = row.try_get(1).map_err(|e| self.db_error("read progress", &e))?;
            let resume: i64 = row.try_get(2).map_err(|e| self.db_error("read progress", &e))?;
            let emitted: i64 = row.try_get(3).map_err(|e| self.db_error("read progress", &e))?;
            let offset = |v: i64| u64::try_from(v).map_err(|_| self.fatal(format!("negative offset {v} stored for {topic}/{partition}")));
            let progress = Progress { resume: offset(resume)?, emitted_through: offset(emitted)? };
            stored.insert((topic, partition), progress);
        }
        Ok(Some(stored))
    }
}

/// One connection outside any pool (for the administrative functions below).
async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(NoTls).await.map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection failed");
        }
    });
    Ok(client)
}

/// Whether `schema` holds meltstream's tables (at any version).
async fn has_tables(client: &tokio_postgres::Client, schema: &str) -> Result<bool, String> {
    let version_table = format!("{}.schema_version", quote_ident(schema));
    let row = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&version_table]).await.map_err(|e| format!("cannot inspect schema {schema}: {e}"))?;
    row.try_get(0).map_err(|e| format!("cannot inspect schema {schema}: {e}"))
}

/// Deletes every row of `pipeline` (results, dead letters, late records and progress) from the
/// tables in `schema`, in one transaction, so that the pipeline starts over; returns the number
/// of rows deleted (0 when the schema holds no meltstream tables). Used by `meltstream reset`.
pub async fn reset_pipeline(url: &str, schema: &str, pipeline: &str) -> Result<u64, String> {
    let mut client = connect(url).await?;
    if !has_tables(&client, schema).await? {
        return Ok(0);
    }
    let s = quote_ident(schema);
    let tx = client.transaction().await.map_err(|e| format!("cannot begin: {e}"))?;
    let mut deleted = 0;
    for table in TABLES {
        deleted += tx.execute(&format!("DELETE FROM {s}.{table} WHERE pipeline = $1"), &[&pipeline]).await.map_err(|e| format!("cannot delete from {schema}.{table}: {e}"))?;
    }
    tx.commit().await.map_err(|e| format!("cannot commit: {e}"))?;
    Ok(deleted)
}

/// Rows of `pipeline` per table in `schema` (every table, including `progress`; an empty map
/// when the schema holds no meltstream tables).
pub async fn row_counts(url: &str, schema: &str, pipeline: &str) -> Result<BTreeMap<String, u64>, String> {
    let client = connect(url).await?;
    let mut counts = BTreeMap::new();
    if !has_tables(&client, schema).await? {
        return Ok(counts);
    }
    let s = quote_ident(schema);
    for table in TABLES {
        let row = client.query_one(&format!("SELECT count(*) FROM {s}.{table} WHERE pipeline = $1"), &[&pipeline]).await.map_err(|e| format!("cannot count {schema}.{table}: {e}"))?;
        let n: i64 = row.try_get(0).map_err(|e| format!("cannot count {schema}.{table}: {e}"))?;
        counts.insert(table.to_owned(), n.max(0) as u64);
    }
    Ok(counts)
}

/// Runs `sql` (one or more statements, simple query protocol) and returns the rows of its
/// results as text, for tests that inspect or clean up what a sink wrote.
#[cfg(feature = "test_util")]
pub async fn query_text(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let client = connect(url).await?;
    let messages = client.simple_query(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    let rows = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect();
    Ok(rows)
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
    fn identifiers_are_quoted_and_nuls_replaced() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(json_text(&serde_json::json!({"a\u{0}": "x\u{0}"})).ok().as_deref(), Some("{\"a\u{FFFD}\":\"x\u{FFFD}\"}"));
    }

    #[test]
    fn an_invalid_url_is_fatal() {
        assert!(matches!(PgSink::new("pg", "postgres://host:notaport/db", "p", "s"), Err(SinkError::Fatal { .. })));
    }
}
