//! The PostgreSQL sink against a real server: every record kind lands in its table, a repeated
//! flush adds nothing, the progress is stored with the records and read back, and failures are
//! classified (an unreachable server is retryable, a missing table is fatal).
//!
//! Needs `DATABASE_URL`; `./scripts/test` provides it (scripts/services/postgres.sh).

mod support;

use std::collections::BTreeMap;

use meltstream_actors::sinks::postgres::admin::{query_text, reset_pipeline, row_counts};
use meltstream_actors::sinks::postgres::PgSink;
use meltstream_actors::progress::{Checkpoint, Progress, StoredProgress};
use meltstream_actors::sinks::writer::{SinkError, SinkWriter};
use meltstream_engine::offset_ledger::HoldSet;
use meltstream_engine::records::{Anomaly, DeadLetterRecord, Emitted, GridCell, GridMap, LateRecord, LayerSummary, OutputRecord, SpcSignal, WindowResult, LayerVerdict, BuildReport};
use meltstream_engine::analytics::stats::ChannelSummary;

fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("DATABASE_URL is not set: run the suite through ./scripts/test, which starts PostgreSQL (scripts/services/postgres.sh)"),
    }
}

/// A schema of its own for one test.
fn unique_schema(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("test_pgsink_{test}_{}_{nanos}", std::process::id())
}

/// Runs `body` with a fresh schema, then drops the schema even if `body` panicked.
async fn with_schema<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let url = database_url();
    let schema = unique_schema(test);
    let outcome = tokio::spawn(body(url.clone(), schema.clone())).await;
    let dropped = query_text(&url, &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    dropped.expect("drop the test schema");
}

fn emitted(record: OutputRecord, position: Option<(u64, u64)>) -> Emitted {
    Emitted { record, hold: HoldSet::default(), origin_wall_ns: 0, position }
}

const T0: i64 = 1_705_314_600_123_456_789; // 2024-01-15T10:30:00.123456789Z

/// One record of every kind (two anomalies: with and without a laser).
fn records() -> Vec<Emitted> {
    let channel = ChannelSummary { count: 3, mean: 1650.5, min: 1600.25, max: 1700.75, std_dev: 12.5, p50: 1650.0, p95: 1690.0, p99: 1699.0 };
    let summary = LayerSummary {
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
    };
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
    let anomaly = |laser: Option<u8>| Anomaly {
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
    vec![
        emitted(OutputRecord::LayerSummary(summary), None),
        emitted(OutputRecord::Grid(grid), None),
        emitted(OutputRecord::Window(window), None),
        emitted(OutputRecord::Anomaly(anomaly(Some(2))), Some((0, 40))),
        emitted(OutputRecord::Anomaly(anomaly(None)), Some((0, 41))),
        emitted(OutputRecord::DeadLetter(dead), Some((0, 17))),
        emitted(OutputRecord::Late(late), Some((0, 42))),
        emitted(OutputRecord::SpcSignal(spc), None),
        emitted(
            OutputRecord::LayerVerdict(LayerVerdict {
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
            }),
            None,
        ),
        emitted(
            OutputRecord::BuildReport(BuildReport {
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
            }),
            None,
        ),
        emitted(support::input_quality("ispm"), Some((0, 30))),
    ]
}

/// A checkpoint of partitions assigned to this process once (assignment 1 each).
fn checkpoint(version: u64, entries: &[(&str, i32, u64, u64)]) -> Checkpoint {
    Checkpoint {
        version,
        entries: entries.iter().map(|&(t, p, resume, emitted_through)| ((t.to_owned(), p), Progress { resume, emitted_through })).collect(),
        assignments: entries.iter().map(|&(t, p, _, _)| ((t.to_owned(), p), 1)).collect(),
        states: Default::default(),
        fenced: false,
    }
}

fn stored(entries: &[(&str, i32, u64, u64)]) -> StoredProgress {
    checkpoint(0, entries).entries.into_iter().collect()
}

fn counts(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries.iter().map(|&(t, n)| (t.to_owned(), n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_progress_are_written_once_and_read_back() {
    with_schema("roundtrip", |url, schema| async move {
        let pipeline = "roundtrip";
        let mut sink = PgSink::new("pg", &url, pipeline, &schema).expect("sink");
        assert_eq!(sink.stored_progress().await.expect("stored progress of a new schema"), Some(StoredProgress::new()));

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
        assert_eq!(row_counts(&url, &schema, pipeline).await.expect("counts"), expected);

        // The same records again (a replay): no duplicates, no error.
        sink.write(&batch).await.expect("write again");
        sink.flush(&first).await.expect("flush again");
        assert_eq!(row_counts(&url, &schema, pipeline).await.expect("counts"), expected);
        assert_eq!(sink.stored_progress().await.expect("stored progress"), Some(stored(&[("samples", 0, 40, 43), ("samples", 1, 7, 9)])));

        // A newer checkpoint alone (no records) moves the progress on.
        sink.flush(&checkpoint(2, &[("samples", 0, 50, 60), ("samples", 2, 3, 3)])).await.expect("progress-only flush");
        let mut fresh = PgSink::new("pg-restarted", &url, pipeline, &schema).expect("sink");
        assert_eq!(
            fresh.stored_progress().await.expect("stored progress after restart"),
            Some(stored(&[("samples", 0, 50, 60), ("samples", 1, 7, 9), ("samples", 2, 3, 3)]))
        );

        // What was stored is the record: exact times (µs), full JSON, NUL-free text.
        let s = format!("\"{schema}\"");
        let rows = query_text(
            &url,
            &format!(
                "SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), window_start_ns, record::text
                 FROM {s}.layer_summaries WHERE pipeline = '{pipeline}'"
            ),
        )
        .await
        .expect("read layer summary");
        let OutputRecord::LayerSummary(summary) = &batch[0].record else { unreachable!("first record is a layer summary") };
        assert_eq!(rows[0][0].as_deref(), Some(summary.window_start.as_str()));
        assert_eq!(rows[0][1].as_deref(), Some(T0.to_string().as_str()));
        let back: OutputRecord = serde_json::from_str(rows[0][2].as_deref().expect("record")).expect("record is an OutputRecord");
        assert_eq!(back, batch[0].record);
        let lasers = query_text(&url, &format!("SELECT laser, laser_key FROM {s}.anomalies WHERE pipeline = '{pipeline}' ORDER BY laser_key")).await.expect("anomalies");
        assert_eq!(lasers, vec![vec![None, Some("-1".to_owned())], vec![Some("2".to_owned()), Some("2".to_owned())]]);
        let dead = query_text(&url, &format!("SELECT raw_prefix, topic, partition, kafka_offset FROM {s}.dead_letters WHERE pipeline = '{pipeline}'")).await.expect("dead letters");
        assert_eq!(dead, vec![vec![Some("{not json\u{FFFD}with a NUL".to_owned()), Some("ispm-monitoring".to_owned()), Some("3".to_owned()), Some("17".to_owned())]]);
        let spc = query_text(&url, &format!("SELECT layers::text, rule, lower_limit, upper_limit FROM {s}.spc_signals WHERE pipeline = '{pipeline}'")).await.expect("spc signals");
        assert_eq!(spc, vec![vec![Some("{43,44,45}".to_owned()), Some("cusum_lower".to_owned()), Some("0".to_owned()), Some("55".to_owned())]]);
        let report = query_text(&url, &format!("SELECT layers_warn, record->>'sample_count' FROM {s}.build_reports WHERE pipeline = '{pipeline}'")).await.expect("build report");
        assert_eq!(report, vec![vec![Some("1".to_owned()), Some("138".to_owned())]]);

        // Another pipeline in the same schema is kept apart, and reset empties only its own rows.
        let mut other = PgSink::new("pg-other", &url, "other", &schema).expect("sink");
        other.write(&batch[..1]).await.expect("write other");
        other.flush(&checkpoint(1, &[("samples", 0, 1, 1)])).await.expect("flush other");
        assert_eq!(reset_pipeline(&url, &schema, pipeline).await.expect("reset"), 14);
        let left = row_counts(&url, &schema, pipeline).await.expect("counts");
        assert!(left.values().all(|&n| n == 0), "rows left after reset: {left:?}");
        assert_eq!(row_counts(&url, &schema, "other").await.expect("counts")["layer_summaries"], 1);
        assert_eq!(reset_pipeline(&url, "test_pgsink_no_such_schema", pipeline).await.expect("reset of a missing schema"), 0);
    })
    .await;
}

/// A record with a value no column takes (a layer beyond a PostgreSQL int, as a record built
/// past the decoder's checks would carry) becomes a dead letter in its place; the rest of the
/// batch is written and the sink goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_sink_cannot_store_is_dead_lettered_and_the_rest_written() {
    with_schema("unwritable", |url, schema| async move {
        let pipeline = "unwritable";
        let mut sink = PgSink::new("pg", &url, pipeline, &schema).expect("sink");
        let mut batch = records();
        let OutputRecord::LayerSummary(mut huge) = batch[0].record.clone() else { unreachable!("first record is a layer summary") };
        huge.layer = 3_000_000_000;
        batch.push(emitted(OutputRecord::LayerSummary(huge), Some((0, 99))));
        sink.write(&batch).await.expect("a record it cannot store is no error");
        sink.flush(&checkpoint(1, &[("samples", 0, 100, 100)])).await.expect("flush");
        let got = row_counts(&url, &schema, pipeline).await.expect("counts");
        assert_eq!(got["layer_summaries"], 1, "the good summary");
        assert_eq!(got["dead_letters"], 2, "the input's dead letter and the unwritable summary's");
        assert_eq!(got["anomalies"], 2);
        let s = format!("\"{schema}\"");
        let dead = query_text(&url, &format!("SELECT source, kafka_offset, reason FROM {s}.dead_letters WHERE pipeline = '{pipeline}' AND reason_kind = 'unwritable'"))
            .await
            .expect("dead letters");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0][0].as_deref(), Some("sink pg: layer_summary/build_001/3000000000/2/0"));
        assert_eq!(dead[0][1].as_deref(), Some("99"));
        assert!(dead[0][2].as_deref().unwrap_or("").contains("does not fit a PostgreSQL int"), "{dead:?}");
    })
    .await;
}

/// Two processes store progress for the same partition: the one assigned it last claimed a
/// newer epoch, so the other (a zombie that lost the partition without noticing) is refused and
/// writes nothing, neither its records nor its progress; the owner goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writer_is_fenced_by_the_progress_epoch() {
    with_schema("fenced", |url, schema| async move {
        let pipeline = "fenced";
        let mut zombie = PgSink::new("pg", &url, pipeline, &schema).expect("sink");
        zombie.stored_progress().await.expect("migrate");
        zombie.write(&records()[..1]).await.expect("write");
        zombie.flush(&checkpoint(1, &[("samples", 0, 10, 10)])).await.expect("the first owner writes");

        // The group moved the partition to another process, which claims it at its first flush.
        let mut owner = PgSink::new("pg", &url, pipeline, &schema).expect("sink");
        owner.flush(&checkpoint(1, &[("samples", 0, 10, 10)])).await.expect("the new owner claims");
        let epoch = query_text(&url, &format!("SELECT epoch FROM \"{schema}\".progress WHERE pipeline = '{pipeline}'")).await.expect("epoch");
        assert_eq!(epoch, vec![vec![Some("2".to_owned())]]);

        // The zombie wakes up and writes on: refused, nothing of its transaction lands.
        zombie.write(&records()[1..2]).await.expect("write");
        match zombie.flush(&checkpoint(2, &[("samples", 0, 50, 50)])).await {
            Err(SinkError::Fenced { message, .. }) => assert!(message.contains("samples/0@1"), "{message}"),
            other => panic!("expected the zombie to be fenced, got {other:?}"),
        }
        let got = row_counts(&url, &schema, pipeline).await.expect("counts");
        assert_eq!(got["grid_maps"], 0, "the zombie's grid map was rolled back: {got:?}");
        assert_eq!(owner.stored_progress().await.expect("progress"), Some(stored(&[("samples", 0, 10, 10)])), "its progress too");

        owner.write(&records()[1..2]).await.expect("write");
        owner.flush(&checkpoint(2, &[("samples", 0, 60, 60)])).await.expect("the owner goes on");
        assert_eq!(row_counts(&url, &schema, pipeline).await.expect("counts")["grid_maps"], 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_fatal_and_keeps_the_buffer() {
    with_schema("fatal", |url, schema| async move {
        let mut sink = PgSink::new("pg", &url, "fatal", &schema).expect("sink");
        sink.stored_progress().await.expect("migrate");
        query_text(&url, &format!("DROP TABLE \"{schema}\".grid_maps")).await.expect("drop a table");
        sink.write(&records()[1..2]).await.expect("write");
        match sink.flush(&Checkpoint::default()).await {
            Err(SinkError::Fatal { message, .. }) => assert!(message.contains("42P01"), "{message}"),
            other => panic!("expected a fatal error (undefined table), got {other:?}"),
        }
        assert_eq!(sink.buffered_rows(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retryable_and_keeps_the_buffer() {
    // Nothing listens on port 1: the connection is refused.
    let mut sink = PgSink::new("pg", "postgres://postgres@127.0.0.1:1/meltstream", "down", "meltstream").expect("sink (nothing connects yet)");
    match sink.stored_progress().await {
        Err(SinkError::Retryable { .. }) => {}
        other => panic!("expected a retryable error from stored_progress, got {other:?}"),
    }
    sink.write(&records()).await.expect("write only buffers");
    match sink.flush(&checkpoint(1, &[("samples", 0, 1, 1)])).await {
        Err(SinkError::Retryable { sink, message }) => {
            assert_eq!(sink, "pg");
            assert!(message.contains("connect"), "{message}");
        }
        other => panic!("expected a retryable error from flush, got {other:?}"),
    }
    assert_eq!(sink.buffered_rows(), records().len());
}
