//! Shared harness of the integration tests: run a topology in-process with collecting sinks.
#![allow(dead_code)]

pub mod services;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meltstream_actors::engine_stats::EngineStats;
use meltstream_actors::test_util::CollectSink;
use meltstream_actors::EngineBuilder;
use meltstream_engine::pipeline::build_pipeline::BuildSettings;
use meltstream_engine::records::OutputRecord;
use meltstream_engine::topology;

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meltstream-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The `[[sources]]` and `[[rules]]` of a small simulated fleet that raises alerts on most
/// layers (two machines, two lasers, `layers` layers of 200 ms, seed 7): what the sink tests
/// deliver.
pub fn alerting_fleet(layers: u32) -> String {
    format!(
        r#"[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 2
sample_rate_hz = 5000
layers = {layers}
layer_ms = 200
recoat_ms = 20
seed = 7
anomalies = true
anomaly_rate_per_layer = 1.0
anomaly_from_layer = 2
{rules}"#,
        rules = alert_rules(20)
    )
}

/// The two `[[rules]]` the simulator's injected hot spots and power drops trip.
pub fn alert_rules(cooldown_ms: u64) -> String {
    format!(
        r#"[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = {cooldown_ms}
[[rules]]
name = "power_drop"
channel = "laser_power_w"
op = "<"
limit = 150.0
cooldown_ms = {cooldown_ms}
"#
    )
}

/// A topology reading `input` (JSON lines) into a collecting sink named `out`.
pub fn file_topology(input: &Path, engine_extra: &str, rest: &str) -> String {
    format!(
        r#"name = "test"
[engine]
summary_interval_ms = 0
{engine_extra}
[[sources]]
name = "in"
type = "file"
path = "{}"
batch_records = 1
{rest}
[[sinks]]
name = "out"
type = "null"
"#,
        input.display()
    )
}

/// Runs a topology to completion with the sink `out` replaced by a collector.
pub async fn run(text: &str, settings: impl FnOnce(&mut BuildSettings)) -> (Arc<EngineStats>, Vec<OutputRecord>) {
    let t = topology::load(text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("topology: {e}"));
    let sink = CollectSink::default();
    let h = EngineBuilder::new(t).sink_writer("out", Box::new(sink.clone())).build_settings(settings).start().await.expect("start");
    let stats = h.wait().await.expect("engine run");
    (stats, sink.take())
}

/// The layer summaries, sorted by (build, layer, laser, revision).
pub fn summaries(records: &[OutputRecord]) -> Vec<meltstream_engine::records::LayerSummary> {
    let mut v: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            OutputRecord::LayerSummary(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    v.sort_by(|a, b| (&a.build_id, a.layer, a.laser, a.revision).cmp(&(&b.build_id, b.layer, b.laser, b.revision)));
    v
}

/// An `input_quality` record of input 0 (Kafka partition `topic`/0) for the sink tests.
pub fn input_quality(topic: &str) -> OutputRecord {
    OutputRecord::InputQuality(meltstream_engine::records::InputQuality {
        source: "ispm".into(),
        input: 0,
        topic: Some(topic.into()),
        partition: Some(0),
        window_start: "2024-01-15T10:30:00.000000Z".into(),
        window_start_ns: 1_705_314_600_000_000_000,
        window_end_ns: 1_705_314_660_000_000_000,
        records: 1000,
        samples: 990,
        blocks: 990,
        layer_events: 4,
        logs: 4,
        dead_letters: 2,
        dead_letters_by_reason: [("invalid_json".to_owned(), 2)].into(),
        dead_letter_rate: 0.002,
        late_samples: 1,
        late_rate: 1.0 / 990.0,
        max_disorder_ms: 60.0,
        score: 0.998 * (1.0 - 1.0 / 990.0),
        below_threshold: false,
    })
}
