//! The SQLite sink on a real database file: every record kind lands in its table with its
//! values, a repeated flush adds nothing, the progress and the replay state are stored with the
//! records (one transaction: a failed flush stores neither) and read back, failures are
//! classified (a busy database is retryable, a missing table is fatal), and one sink owns a
//! file. `tests/sqlite_engine.rs` runs engines on such files (killed, aborted, a second one
//! refused); `tests/sqlite_kafka.rs` resumes a Kafka pipeline from one.
//!
//! Needs no service: each test has its own temporary directory.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::Connection;

use meltstream_actors::progress::{Checkpoint, Progress, StoredProgress};
use meltstream_actors::sinks::sqlite::admin::{reset_pipeline, row_counts};
use meltstream_actors::sinks::sqlite::SqliteSink;
use meltstream_actors::sinks::writer::{SinkError, SinkWriter};
use meltstream_engine::analytics::stats::ChannelSummary;
use meltstream_engine::offset_ledger::HoldSet;
use meltstream_engine::pipeline::decisions::{BuildDecisions, PartitionState};
use meltstream_engine::records::{Anomaly, BuildReport, DeadLetterRecord, Emitted, GridCell, GridMap, LateRecord, LayerSummary, LayerVerdict, OutputRecord, SpcSignal, WindowResult};

/// A fresh directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meltstream-sqlite-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn emitted(record: OutputRecord, position: Option<(u64, u64)>) -> Emitted {
    Emitted { record, hold: HoldSet::default(), origin_wall_ns: 0, position }
}

const T0: i64 = 1_705_314_600_123_456_789; // 2024-01-15T10:30:00.123456789Z

fn summary() -> LayerSummary {
    let channel = ChannelSummary { count: 3, mean: 1650.5, min: 1600.25, max: 1700.75, std_dev: 12.5, p50: 1650.0, p95: 1690.0, p99: 1699.0 };
    LayerSummary {
        build_id: "build_001".into(),
        layer: 45,
        laser: 2,
        revision: 0,
        window_start: "2024-01-15T10:30:00.123456Z".into(),
        window_start_ns: T0,
        window_end: "2024-01-15T10:30:05.000000Z".into(),
        window_end_ns: 1_705_314_605_000_000_000,
        z_um: Some(2250),
        sample_count: 3,
        late_count: 1,
        energy_density_j_mm3: Some(55.55587344881336),
        energy_density_by_style_j_mm3: [("core".to_owned(), 55.55587344881336)].into(),
        channels: [("temperature_c".to_owned(), channel)].into(),
        rule_hits: [("overheat".to_owned(), 1)].into(),
    }
}

fn anomaly(laser: Option<u8>) -> Anomaly {
    Anomaly {
        build_id: "build_001".into(),
        layer: Some(45),
        laser,
        time: "2024-01-15T10:30:00.123456Z".into(),
        time_ns: T0,
        rule: "overheat".into(),
        channel: "temperature_c".into(),
        value: 1700.75,
        op: ">".into(),
        limit: 1700.0,
        x_mm: laser.map(|_| 12.5),
        y_mm: laser.map(|_| 80.0),
    }
}

/// One record of every kind (two anomalies: with and without a laser), as `tests/pg_sink.rs`.
fn records() -> Vec<Emitted> {
    let grid = GridMap {
        build_id: "build_001".into(),
        layer: 45,
        revision: 0,
        channel: "photodiode_on_axis".into(),
        cell_mm: 20.0,
        cells_per_side: 20,
        outside_count: 0,
        cells: vec![GridCell { ix: 0, iy: 0, count: 2, mean: 2001.5 }, GridCell { ix: 1, iy: 0, count: 1, mean: 1998.0 }],
    };
    let window = WindowResult {
        build_id: "build_001".into(),
        window: "temp_1s".into(),
        window_kind: "tumbling".into(),
        channel: "temperature_c".into(),
        window_start: "2024-01-15T10:30:00.000000Z".into(),
        window_start_ns: 1_705_314_600_000_000_000,
        window_end: "2024-01-15T10:30:01.000000Z".into(),
        window_end_ns: 1_705_314_601_000_000_000,
        count: 3,
        mean: 1650.5,
        min: 1600.25,
        max: 1700.75,
        std_dev: 50.25,
    };
    let dead = DeadLetterRecord {
        source: "in".into(),
        input: 0,
        topic: Some("ispm-monitoring".into()),
        partition: Some(3),
        offset: 17,
        reason_kind: "invalid_json".into(),
        reason: "expected value at line 1 column 1".into(),
        raw_prefix: "{not json\0with a NUL".into(),
    };
    let late = LateRecord { build_id: "build_001".into(), layer: Some(44), laser: 2, t0_ns: T0 - 1_000_000_000, sample_count: 5, offset: 42, watermark_ns: T0 };
    let spc = SpcSignal {
        build_id: "build_001".into(),
        spc: "pd_mean".into(),
        chart: "cusum".into(),
        channel: "photodiode_on_axis".into(),
        statistic: "mean".into(),
        laser: 3,
        cell: None,
        layer: 45,
        time: "2024-01-15T10:30:00.123456Z".into(),
        time_ns: T0,
        rule: "cusum_lower".into(),
        value: 1412.8,
        charted: 61.25,
        centre: 0.0,
        lower: 0.0,
        upper: 55.0,
        baseline_centre: 1500.25,
        baseline_sigma: 11.0,
        layers: vec![43, 44, 45],
    };
    let verdict = LayerVerdict {
        build_id: "build_001".into(),
        layer: 45,
        verdict: "warn".into(),
        reasons: vec!["spc pd_mean: cusum_lower on laser 3".into()],
        time: "2024-01-15T10:30:00.123456Z".into(),
        time_ns: T0,
        sample_count: 3,
        rule_hits: BTreeMap::new(),
        spc_signals: [("pd_mean".to_owned(), 1)].into(),
        energy_density_hits: BTreeMap::new(),
        data_quality: Some(1.0),
        completeness: [("3".to_owned(), 1.0)].into(),
    };
    let report = BuildReport {
        build_id: "build_001".into(),
        time: "2024-01-15T10:30:00.123456Z".into(),
        time_ns: T0,
        layers: 46,
        layers_ok: 45,
        layers_warn: 1,
        layers_fail: 0,
        worst_layers: Vec::new(),
        energy_density_by_style_j_mm3: BTreeMap::new(),
        rule_hits: BTreeMap::new(),
        layers_with_rule_hits: BTreeMap::new(),
        energy_density_hits: BTreeMap::new(),
        spc_signals: [("pd_mean".to_owned(), 1)].into(),
        sample_count: 138,
        data_quality: None,
        planned_energy_density_by_style_j_mm3: Default::default(),
        build_info: None,
    };
    vec![
        emitted(OutputRecord::LayerSummary(summary()), None),
        emitted(OutputRecord::Grid(grid), None),
        emitted(OutputRecord::Window(window), None),
        emitted(OutputRecord::Anomaly(anomaly(Some(2))), Some((0, 40))),
        emitted(OutputRecord::Anomaly(anomaly(None)), Some((0, 41))),
        emitted(OutputRecord::DeadLetter(dead), Some((0, 17))),
        emitted(OutputRecord::Late(late), Some((0, 42))),
        emitted(OutputRecord::SpcSignal(spc), None),
        emitted(OutputRecord::LayerVerdict(verdict), None),
        emitted(OutputRecord::BuildReport(report), None),
        emitted(support::input_quality("ispm"), Some((0, 30))),
    ]
}

/// A replay state of a partition: its largest event time and one build's decisions.
fn state(final_through: u32) -> PartitionState {
    PartitionState { max_t: T0, builds: [("build_001".to_owned(), BuildDecisions { final_through: Some(final_through), ended_at: Some(99), ..BuildDecisions::default() })].into(), input_quality: None }
}

/// A checkpoint of partitions assigned to this process once; partition 0 carries a replay state.
fn checkpoint(version: u64, entries: &[(&str, i32, u64, u64)]) -> Checkpoint {
    Checkpoint {
        version,
        entries: entries.iter().map(|&(t, p, resume, emitted_through)| ((t.to_owned(), p), Progress { resume, emitted_through })).collect(),
        assignments: entries.iter().map(|&(t, p, _, _)| ((t.to_owned(), p), 1)).collect(),
        states: entries.iter().filter(|e| e.1 == 0).map(|&(t, p, _, _)| ((t.to_owned(), p), state(version as u32))).collect(),
        fenced: false,
    }
}

fn stored(entries: &[(&str, i32, u64, u64)]) -> StoredProgress {
    checkpoint(0, entries).entries.into_iter().collect()
}

fn counts(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries.iter().map(|&(t, n)| (t.to_owned(), n)).collect()
}

/// Every value of `sql`'s rows (a reader's connection, as an operator's script would use).
fn query(path: &Path, sql: &str) -> Vec<Vec<Value>> {
    let db = Connection::open(path).expect("open for reading");
    let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>()).expect("query");
    rows.collect::<Result<Vec<_>, _>>().expect("rows")
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// Opens `path` for `pipeline`, waiting while a sink of this process that was just dropped
/// still closes it (the refusal is retryable).
async fn reopen(name: &str, path: &Path, pipeline: &str) -> (SqliteSink, StoredProgress) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut sink = SqliteSink::new(name, path, pipeline).expect("sink");
        match sink.stored_progress().await {
            Ok(p) => return (sink, p.expect("a transactional sink stores progress")),
            Err(SinkError::Retryable { message, .. }) if Instant::now() < deadline => {
                assert!(message.contains("earlier run of this engine"), "{message}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_progress_are_written_once_and_read_back() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("nested/results.sqlite");
    let pipeline = "roundtrip";
    let mut sink = SqliteSink::new("sq", &path, pipeline).expect("sink");
    assert_eq!(sink.stored_progress().await.expect("stored progress of a new file"), Some(StoredProgress::new()));
    assert!(sink.take_stored_states().is_empty());

    // A flush with nothing to do touches nothing.
    sink.flush(&Checkpoint::default()).await.expect("empty flush");

    let batch = records();
    let first = checkpoint(1, &[("samples", 0, 40, 43), ("samples", 1, 7, 9)]);
    sink.write(&batch).await.expect("write");
    assert_eq!(sink.buffered_rows(), batch.len());
    sink.flush(&first).await.expect("flush");
    assert_eq!(sink.buffered_rows(), 0);
    let expected = counts(&[
        ("anomalies", 2),
        ("build_reports", 1),
        ("data_quality", 0),
        ("input_quality", 1),
        ("dead_letters", 1),
        ("fused_defects", 0),
        ("fusion_summaries", 0),
        ("grid_maps", 1),
        ("late_records", 1),
        ("layer_summaries", 1),
        ("layer_verdicts", 1),
        ("progress", 2),
        ("spc_baselines", 0),
        ("spc_signals", 1),
        ("window_results", 1),
    ]);
    assert_eq!(row_counts(&path, pipeline).expect("counts"), expected);

    // The same records again (a replay): no duplicates, no error.
    sink.write(&batch).await.expect("write again");
    sink.flush(&first).await.expect("flush again");
    assert_eq!(row_counts(&path, pipeline).expect("counts"), expected);
    assert_eq!(sink.stored_progress().await.expect("stored progress"), Some(stored(&[("samples", 0, 40, 43), ("samples", 1, 7, 9)])));

    // A newer checkpoint alone (no records) moves the progress and the replay state on.
    sink.flush(&checkpoint(2, &[("samples", 0, 50, 60), ("samples", 2, 3, 3)])).await.expect("progress-only flush");
    sink.close().await.expect("close");
    let (mut fresh, progress) = reopen("sq-restarted", &path, pipeline).await;
    assert_eq!(progress, stored(&[("samples", 0, 50, 60), ("samples", 1, 7, 9), ("samples", 2, 3, 3)]));
    let states = fresh.take_stored_states();
    assert_eq!(states.get(&("samples".to_owned(), 0)), Some(&state(2)), "the replay state stored with the newest progress");
    let empty = PartitionState { max_t: i64::MIN, builds: BTreeMap::new(), input_quality: None };
    assert_eq!(states.get(&("samples".to_owned(), 1)), Some(&empty), "none given: an empty state (no event time known)");
    assert_eq!(states.len(), 3);
    fresh.close().await.expect("close");

    // What was stored is the record: exact times, full JSON, text as it was (NUL included).
    let OutputRecord::LayerSummary(s) = &batch[0].record else { unreachable!("first record is a layer summary") };
    let rows = query(&path, "SELECT window_start, window_start_ns, window_end, z_um, sample_count, late_count, energy_density_j_mm3, json_extract(channels, '$.temperature_c.mean'), json_extract(rule_hits, '$.overheat'), record FROM layer_summaries");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][..9], [text(&s.window_start), Value::Integer(T0), text(&s.window_end), Value::Integer(2250), Value::Integer(3), Value::Integer(1), Value::Real(55.55587344881336), Value::Real(1650.5), Value::Integer(1)]);
    let Value::Text(record) = &rows[0][9] else { panic!("record is text: {:?}", rows[0][9]) };
    let back: OutputRecord = serde_json::from_str(record).expect("record is an OutputRecord");
    assert_eq!(back, batch[0].record);
    assert_eq!(
        query(&path, "SELECT build_id, layer, revision, channel, cell_mm, cells_per_side, outside_count, json_array_length(cells), json_extract(cells, '$[0].mean') FROM grid_maps"),
        vec![vec![text("build_001"), Value::Integer(45), Value::Integer(0), text("photodiode_on_axis"), Value::Real(20.0), Value::Integer(20), Value::Integer(0), Value::Integer(2), Value::Real(2001.5)]]
    );
    assert_eq!(
        query(&path, "SELECT \"window\", window_kind, channel, window_start, window_start_ns, window_end_ns, count, mean, min, max, std_dev FROM window_results"),
        vec![vec![
            text("temp_1s"),
            text("tumbling"),
            text("temperature_c"),
            text("2024-01-15T10:30:00.000000Z"),
            Value::Integer(1_705_314_600_000_000_000),
            Value::Integer(1_705_314_601_000_000_000),
            Value::Integer(3),
            Value::Real(1650.5),
            Value::Real(1600.25),
            Value::Real(1700.75),
            Value::Real(50.25),
        ]]
    );
    assert_eq!(
        query(&path, "SELECT laser, laser_key, layer, time, time_ns, rule, value, op, limit_value, x_mm, y_mm FROM anomalies ORDER BY laser_key"),
        vec![
            vec![Value::Null, Value::Integer(-1), Value::Integer(45), text("2024-01-15T10:30:00.123456Z"), Value::Integer(T0), text("overheat"), Value::Real(1700.75), text(">"), Value::Real(1700.0), Value::Null, Value::Null],
            vec![Value::Integer(2), Value::Integer(2), Value::Integer(45), text("2024-01-15T10:30:00.123456Z"), Value::Integer(T0), text("overheat"), Value::Real(1700.75), text(">"), Value::Real(1700.0), Value::Real(12.5), Value::Real(80.0)],
        ]
    );
    assert_eq!(
        query(&path, "SELECT source, input, topic, \"partition\", kafka_offset, reason_kind, reason, raw_prefix FROM dead_letters"),
        vec![vec![text("in"), Value::Integer(0), text("ispm-monitoring"), Value::Integer(3), Value::Integer(17), text("invalid_json"), text("expected value at line 1 column 1"), text("{not json\0with a NUL")]]
    );
    assert_eq!(
        query(&path, "SELECT build_id, layer, laser, t0_ns, sample_count, source_offset, watermark_ns FROM late_records"),
        vec![vec![text("build_001"), Value::Integer(44), Value::Integer(2), Value::Integer(T0 - 1_000_000_000), Value::Integer(5), Value::Integer(42), Value::Integer(T0)]]
    );
    assert_eq!(
        query(&path, "SELECT spc, chart, statistic, laser, layer, rule, value, charted, centre, lower_limit, upper_limit, baseline_centre, baseline_sigma, layers, json_extract(layers, '$[2]') FROM spc_signals"),
        vec![vec![
            text("pd_mean"),
            text("cusum"),
            text("mean"),
            Value::Integer(3),
            Value::Integer(45),
            text("cusum_lower"),
            Value::Real(1412.8),
            Value::Real(61.25),
            Value::Real(0.0),
            Value::Real(0.0),
            Value::Real(55.0),
            Value::Real(1500.25),
            Value::Real(11.0),
            text("[43,44,45]"),
            Value::Integer(45),
        ]]
    );
    assert_eq!(
        query(&path, "SELECT layer, verdict, reasons, time, time_ns, sample_count, json_extract(record, '$.spc_signals.pd_mean') FROM layer_verdicts"),
        vec![vec![Value::Integer(45), text("warn"), text("[\"spc pd_mean: cusum_lower on laser 3\"]"), text("2024-01-15T10:30:00.123456Z"), Value::Integer(T0), Value::Integer(3), Value::Integer(1)]]
    );
    assert_eq!(
        query(&path, "SELECT time, time_ns, layers, layers_ok, layers_warn, layers_fail, json_extract(record, '$.sample_count') FROM build_reports"),
        vec![vec![text("2024-01-15T10:30:00.123456Z"), Value::Integer(T0), Value::Integer(46), Value::Integer(45), Value::Integer(1), Value::Integer(0), Value::Integer(138)]]
    );
    assert_eq!(query(&path, "PRAGMA journal_mode"), vec![vec![text("wal")]]);
    assert_eq!(query(&path, "SELECT version FROM schema_version"), vec![vec![Value::Integer(1)], vec![Value::Integer(2)], vec![Value::Integer(3)], vec![Value::Integer(4)], vec![Value::Integer(5)]]);

    // Another pipeline in the same file is kept apart, and reset empties only its own rows.
    let (mut other, progress) = reopen("sq-other", &path, "other").await;
    assert!(progress.is_empty(), "{progress:?}");
    other.write(&batch[..1]).await.expect("write other");
    other.flush(&checkpoint(1, &[("samples", 0, 1, 1)])).await.expect("flush other");
    assert_eq!(reset_pipeline(&path, pipeline).expect_err("refused while a sink owns the file"), format!("{} is open in this process", path.display()));
    other.close().await.expect("close");
    assert_eq!(reset_pipeline(&path, pipeline).expect("reset"), 14);
    let left = row_counts(&path, pipeline).expect("counts");
    assert!(left.values().all(|&n| n == 0), "rows left after reset: {left:?}");
    assert_eq!(row_counts(&path, "other").expect("counts")["layer_summaries"], 1);
    assert_eq!(reset_pipeline(&dir.join("no-such.sqlite"), pipeline).expect("reset of a missing file"), 0);
    assert!(!dir.join("no-such.sqlite").exists(), "reset creates no file");
}

/// A record with a value SQLite cannot hold as it is (a count beyond a signed 64-bit integer,
/// a NaN) becomes a dead letter in its place; the rest of the batch is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_sink_cannot_store_is_dead_lettered_and_the_rest_written() {
    let dir = temp_dir("unwritable");
    let path = dir.join("results.sqlite");
    let pipeline = "unwritable";
    let mut sink = SqliteSink::new("sq", &path, pipeline).expect("sink");
    let mut batch = records();
    let mut huge = summary();
    huge.layer = 46;
    huge.sample_count = u64::MAX;
    batch.push(emitted(OutputRecord::LayerSummary(huge), Some((0, 99))));
    let mut nan = anomaly(Some(1));
    nan.value = f64::NAN;
    batch.push(emitted(OutputRecord::Anomaly(nan), Some((0, 98))));
    sink.write(&batch).await.expect("a record it cannot store is no error");
    sink.flush(&checkpoint(1, &[("samples", 0, 100, 100)])).await.expect("flush");
    let got = row_counts(&path, pipeline).expect("counts");
    assert_eq!(got["layer_summaries"], 1, "the good summary");
    assert_eq!(got["anomalies"], 2, "the good anomalies");
    assert_eq!(got["dead_letters"], 3, "the input's dead letter and the two unwritable results': {got:?}");
    let dead = query(&path, "SELECT source, kafka_offset, reason FROM dead_letters WHERE reason_kind = 'unwritable' ORDER BY kafka_offset");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0][..2], [text(&format!("sink sq: anomaly/build_001/overheat/Some(1)/{T0}")), Value::Integer(98)]);
    assert_eq!(dead[1][..2], [text("sink sq: layer_summary/build_001/46/2/0"), Value::Integer(99)]);
    let reason = |i: usize| match &dead[i][2] {
        Value::Text(t) => t.clone(),
        other => panic!("reason is text: {other:?}"),
    };
    assert!(reason(0).contains("NaN"), "{}", reason(0));
    assert!(reason(1).contains("does not fit a SQLite INTEGER"), "{}", reason(1));
}

/// A flush that fails stores nothing of its transaction (neither the rows inserted before the
/// failure nor the progress) and keeps its buffer; a missing table is fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_stores_neither_records_nor_progress_and_keeps_the_buffer() {
    let dir = temp_dir("atomic");
    let path = dir.join("results.sqlite");
    let pipeline = "atomic";
    let mut sink = SqliteSink::new("sq", &path, pipeline).expect("sink");
    sink.write(&records()[..1]).await.expect("write");
    sink.flush(&checkpoint(1, &[("samples", 0, 10, 10)])).await.expect("first flush");
    Connection::open(&path).expect("open").execute_batch("DROP TABLE late_records").expect("drop a table");

    // Anomalies are inserted before late records: the anomaly goes in, the late record fails.
    let batch = records();
    sink.write(&batch[3..4]).await.expect("write an anomaly");
    sink.write(&batch[6..7]).await.expect("write a late record");
    match sink.flush(&checkpoint(2, &[("samples", 0, 50, 50)])).await {
        Err(SinkError::Fatal { message, .. }) => assert!(message.contains("no such table: late_records"), "{message}"),
        other => panic!("expected a fatal error (missing table), got {other:?}"),
    }
    assert_eq!(sink.buffered_rows(), 2, "the buffer is kept for a retry");
    assert_eq!(query(&path, "SELECT count(*) FROM anomalies"), vec![vec![Value::Integer(0)]], "the anomaly was rolled back with the rest");
    assert_eq!(sink.stored_progress().await.expect("progress"), Some(stored(&[("samples", 0, 10, 10)])), "and so was the progress");
    assert_eq!(sink.take_stored_states().get(&("samples".to_owned(), 0)), Some(&state(1)));
}

/// Another connection holding the write lock past the busy timeout (an operator's shell in a
/// write transaction) is a retryable failure; the flush goes through once it lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_is_retryable_and_keeps_the_buffer() {
    let dir = temp_dir("busy");
    let path = dir.join("results.sqlite");
    let mut sink = SqliteSink::new("sq", &path, "busy").expect("sink").with_busy_timeout(Duration::from_millis(100));
    sink.stored_progress().await.expect("open and migrate");
    let other = Connection::open(&path).expect("open");
    other.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    sink.write(&records()).await.expect("write only buffers");
    match sink.flush(&checkpoint(1, &[("samples", 0, 1, 1)])).await {
        Err(SinkError::Retryable { sink, message }) => {
            assert_eq!(sink, "sq");
            assert!(message.contains("database is locked"), "{message}");
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    assert_eq!(sink.buffered_rows(), records().len());
    other.execute_batch("COMMIT").expect("let go");
    sink.flush(&checkpoint(1, &[("samples", 0, 1, 1)])).await.expect("flush after the lock is released");
    assert_eq!(row_counts(&path, "busy").expect("counts")["anomalies"], 2);
}

/// Within one process a file held by a sink that has not closed yet (an engine restarting
/// in-process) is a retryable refusal, lifted by the close; what was buffered and not flushed
/// at the close is not in the file, what was flushed is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_has_one_owner_and_only_flushed_records_are_durable() {
    let dir = temp_dir("owner");
    let path = dir.join("results.sqlite");
    let mut first = SqliteSink::new("sq", &path, "owner").expect("sink");
    first.write(&records()[..3]).await.expect("write");
    first.flush(&checkpoint(1, &[("samples", 0, 5, 5)])).await.expect("flush");
    first.write(&records()[3..]).await.expect("write, never flushed");

    let mut second = SqliteSink::new("sq", &path, "owner").expect("sink");
    match second.stored_progress().await {
        Err(SinkError::Retryable { message, .. }) => assert!(message.contains("still held by an earlier run of this engine"), "{message}"),
        other => panic!("expected a retryable refusal, got {other:?}"),
    }
    // The owner goes away without flushing (its process would have crashed here).
    drop(first);
    let (_, progress) = reopen("sq", &path, "owner").await;
    assert_eq!(progress, stored(&[("samples", 0, 5, 5)]));
    let got = row_counts(&path, "owner").expect("counts");
    assert_eq!((got["layer_summaries"], got["grid_maps"], got["window_results"]), (1, 1, 1), "flushed: {got:?}");
    assert_eq!(got["anomalies"] + got["dead_letters"] + got["late_records"] + got["spc_signals"] + got["layer_verdicts"] + got["build_reports"], 0, "never flushed: {got:?}");
}
