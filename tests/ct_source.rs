//! The streaming `ct` source against the batch `meltstream fuse`: a simulated fleet runs into a
//! SQLite sink (the evidence), the simulator writes the CT list its planted anomalies leave
//! (`simulate --ct`), then a second engine run whose only source is a `ct` source fuses that list
//! — from the file, or from a Kafka topic (real broker: `KAFKA_BOOTSTRAP`, which
//! `./scripts/test` exports) holding the same defects as CSV rows and JSON messages, with a
//! malformed message and a replayed one. Its `fused_defects` and `fusion_summaries` rows must
//! equal, value for value, what `meltstream fuse` writes afterwards for the same list; the bad
//! record becomes a `dead_letter` row, and the engine ends by itself when the source does.

mod support;

use std::path::Path;
use std::process::Command;

use rusqlite::types::Value;
use rusqlite::Connection;

use meltstream_engine::fusion::ct::read_list;
use support::services::{env, produce};

/// The simulated fleet (2 builds, anomalies planted from layer 8) into `db`, and the `[fusion]`
/// parameters; `sources` replaces the simulator for the streaming run.
fn topology(db: &Path, sources: Option<&str>) -> String {
    let fleet = r#"[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 2
sample_rate_hz = 10000
layers = 20
layer_ms = 300
recoat_ms = 50
seed = 11
anomaly_rate_per_layer = 1.0
anomaly_from_layer = 8
anomaly_kinds = ["hot_spot", "power_drop", "lack_of_fusion", "recoater_streak"]
"#;
    format!(
        r#"name = "ct-fusion"
[engine]
summary_interval_ms = 0

{}
[windows]
grid_cell_mm = 20.0
grid_deviation_z = 5.0

[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = 300

[[rules]]
name = "power_drop"
channel = "laser_power_w"
op = "<"
limit = 150.0

[[spc]]
name = "pd_cusum"
channel = "photodiode_on_axis"
chart = "cusum"
baseline_layers = 8

[fusion]
layers_k = 1
tolerance_mm = 1.0

[[sinks]]
name = "store"
type = "sqlite"
path = "{}"
"#,
        sources.unwrap_or(fleet),
        db.display()
    )
}

fn meltstream(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).args(args).output().expect("run meltstream");
    assert!(out.status.success(), "meltstream {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    out
}

/// Runs the fleet into `dir/results.db` and writes its CT list to `dir/ct.csv`; returns the
/// fleet topology's path and the number of defects.
fn evidence_and_ct_list(dir: &Path) -> (String, usize) {
    let db = dir.join("results.db");
    let topo = dir.join("fleet.toml");
    std::fs::write(&topo, topology(&db, None)).expect("write topology");
    let topo = topo.to_str().expect("utf-8 path").to_owned();
    meltstream(&["run", &topo, "--quiet"]);
    let ct = dir.join("ct.csv");
    meltstream(&["simulate", "--topology", &topo, "--out", "/dev/null", "--ct", ct.to_str().expect("path")]);
    let (defects, bad) = read_list(&std::fs::read_to_string(&ct).expect("CT list"));
    assert!(bad.is_empty(), "{bad:?}");
    assert!(defects.len() >= 20, "the simulator leaves CT defects: {}", defects.len());
    (topo, defects.len())
}

type Rows = Vec<Vec<Value>>;

/// The fusion rows of the database, in a fixed order.
fn fusion_rows(db: &Path) -> (Rows, Rows) {
    let conn = Connection::open(db).expect("open db");
    let read = |sql: &str| -> Rows {
        let mut st = conn.prepare(sql).expect("prepare");
        let n = st.column_count();
        st.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect()).expect("query").collect::<Result<_, _>>().expect("rows")
    };
    let fused = read("SELECT pipeline, build_id, defect_id, layer, x_mm, y_mm, z_mm, diameter_um, type, detectable, detected, evidence_count, record FROM fused_defects ORDER BY build_id, defect_id");
    let summaries = read("SELECT pipeline, build_id, defects, detectable, detected, flags, confirmed_flags, recall, \"precision\", record FROM fusion_summaries ORDER BY build_id");
    (fused, summaries)
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db).expect("open db").query_row(sql, [], |r| r.get(0)).expect("count")
}

/// Streaming rows (already in the database), then the batch fusion of `ct.csv` over the same
/// evidence: they must be equal.
fn assert_streaming_equals_batch(dir: &Path, fleet_topo: &str, defects: usize) {
    let db = dir.join("results.db");
    let streaming = fusion_rows(&db);
    assert_eq!(streaming.0.len(), defects, "one fused_defects row per CT defect");
    assert_eq!(streaming.1.len(), 2, "one fusion_summaries row per build");
    let detected = streaming.0.iter().filter(|r| r[10] == Value::Integer(1)).count();
    assert!(detected > 0, "some defects meet their evidence");
    meltstream(&["fuse", "--topology", fleet_topo, "--ct", dir.join("ct.csv").to_str().expect("path")]);
    let batch = fusion_rows(&db);
    assert_eq!(streaming.1, batch.1, "fusion_summaries: streaming against batch");
    assert_eq!(streaming.0, batch.0, "fused_defects: streaming against batch");
}

#[test]
fn a_ct_file_source_fuses_like_meltstream_fuse() {
    let dir = support::temp_dir("ct-source-file");
    let (fleet, defects) = evidence_and_ct_list(&dir);
    // The streaming list: the CT list with a malformed row appended.
    let mut list = std::fs::read_to_string(dir.join("ct.csv")).expect("CT list");
    list.push_str("sim-001,bad,1.0,2.0,not-a-number,,100,gas_pore,\n");
    std::fs::write(dir.join("ct-stream.csv"), list).expect("write");
    let ct_source = "[[sources]]\nname = \"ct\"\ntype = \"ct\"\npath = \"ct-stream.csv\"\n";
    let topo = dir.join("ct.toml");
    std::fs::write(&topo, topology(&dir.join("results.db"), Some(ct_source))).expect("write topology");
    // The engine ends by itself: its only source ends after its fusion.
    meltstream(&["run", topo.to_str().expect("path"), "--quiet"]);
    let db = dir.join("results.db");
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters WHERE source = 'ct' AND reason LIKE '%z_mm%'"), 1, "the malformed row is a dead letter");
    assert_streaming_equals_batch(&dir, &fleet, defects);
}

#[test]
fn a_ct_kafka_source_fuses_like_meltstream_fuse() {
    let brokers = env("KAFKA_BOOTSTRAP");
    let dir = support::temp_dir("ct-source-kafka");
    let (fleet, defects) = evidence_and_ct_list(&dir);
    let (list, _) = read_list(&std::fs::read_to_string(dir.join("ct.csv")).expect("CT list"));
    let text = std::fs::read_to_string(dir.join("ct.csv")).expect("CT list");
    let mut rows = text.lines();
    let header = rows.next().expect("header").to_owned();
    // A CSV header, then each defect as a CSV row or (every third) a JSON object, the first
    // one again (a replay), and a malformed message; keyed by build.
    let mut messages = vec![("header".to_owned(), header)];
    for (i, (row, d)) in rows.zip(&list).enumerate() {
        let v = if i % 3 == 0 { serde_json::to_string(d).expect("json") } else { row.to_owned() };
        messages.push((d.build_id.clone(), v));
    }
    messages.push(messages[1].clone());
    messages.push(("sim-001".to_owned(), "{\"build_id\":\"sim-001\",\"defect_id\":\"x\"".to_owned()));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let topic = format!("ct-{}-{nanos}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(produce(&brokers, &topic, &messages));
    let ct_source = format!("[[sources]]\nname = \"ct\"\ntype = \"ct\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\nstop_at_end = true\n");
    let topo = dir.join("ct.toml");
    std::fs::write(&topo, topology(&dir.join("results.db"), Some(&ct_source))).expect("write topology");
    // Read to its end, fused, ended: the engine ends by itself. Twice: a restart reads the topic
    // again and replaces the rows with the same ones.
    meltstream(&["run", topo.to_str().expect("path"), "--quiet"]);
    let first = fusion_rows(&dir.join("results.db"));
    meltstream(&["run", topo.to_str().expect("path"), "--quiet"]);
    assert_eq!(fusion_rows(&dir.join("results.db")), first, "a second run replaces the rows with the same ones");
    let db = dir.join("results.db");
    assert!(count(&db, "SELECT count(*) FROM dead_letters WHERE source = 'ct' AND reason LIKE '%EOF%'") >= 1, "the malformed message is a dead letter");
    assert_streaming_equals_batch(&dir, &fleet, defects);
}
