//! The SQLite sink behind a Kafka source, with a real broker (`./scripts/test` starts it and
//! exports `KAFKA_BOOTSTRAP`): the engine stores each partition's progress and replay state in
//! the database file with the results; killed with SIGKILL mid-run and started again, it resumes
//! every partition where the file says, and the file ends up with exactly the rows of an
//! uninterrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::Connection;

use meltstream_engine::input::encode::write_json_lines;
use meltstream_engine::pipeline::decisions::PartitionState;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::SimulatorConfig;

mod support;
use support::services::{end_offsets, env, produce};

/// The input: 3 machines, 4 layers each, 2 lasers at 10 kHz, with injected anomalies, keyed by
/// build, and a record that is not JSON every 997 lines (dead letters, positioned).
fn input_lines() -> Vec<(String, String)> {
    let cfg = SimulatorConfig { machines: 3, lasers: 2, sample_rate_hz: 10_000, layers: 4, layer_ms: 400, recoat_ms: 50, seed: 23, ..SimulatorConfig::default() };
    let mut sim = Simulator::new(&cfg, 0);
    let mut text = String::new();
    while let Some(b) = sim.next_batch() {
        write_json_lines(&b, &mut text);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("simulator JSON");
        let key = v.get("build_id").and_then(|b| b.as_str()).unwrap_or("none").to_owned();
        if i % 997 == 500 {
            out.push((key.clone(), "{not json".to_owned()));
        }
        out.push((key, line.to_owned()));
    }
    out
}

/// A pipeline reading `topic` into the SQLite file `db`.
fn topology(dir: &Path, brokers: &str, topic: &str, db: &Path) -> PathBuf {
    let path = dir.join(format!("{topic}.toml"));
    let text = format!(
        r#"name = "{topic}"
[engine]
summary_interval_ms = 0
build_idle_timeout_ms = 600000
input_idle_timeout_ms = 500
watermark_bound_ms = 20

[[sources]]
name = "ispm"
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "g-{topic}"
batch_records = 200

[[windows.time]]
name = "temp_50ms"
kind = "tumbling"
channel = "temperature_c"
size_ms = 50

[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = 50

[[sinks]]
name = "results"
type = "sqlite"
path = "{db}"
flush_ms = 50
"#,
        db = db.display()
    );
    std::fs::write(&path, text).expect("write topology");
    path
}

/// An engine child process, killed when dropped (a failing test leaves no engine in a group).
struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(topo: &Path, log: &Path) -> Engine {
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(topo).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().expect("spawn meltstream");
    Engine(child)
}

/// Per partition, the resume offset, emitted-through offset and replay state stored in `db`
/// (empty before the sink created its tables).
fn progress(db: &Path) -> BTreeMap<i64, (i64, i64, String)> {
    let Ok(conn) = Connection::open(db) else { return BTreeMap::new() };
    let Ok(mut stmt) = conn.prepare("SELECT \"partition\", resume_offset, emitted_through, state FROM progress") else { return BTreeMap::new() };
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))).expect("progress");
    rows.collect::<Result<_, _>>().expect("progress rows")
}

fn resumed_sum(db: &Path) -> i64 {
    progress(db).values().map(|p| p.0).sum()
}

/// Waits until `db` stores progress at the end of the input (`total` messages), then stops the
/// engine with SIGTERM once it is up (it has its signal handlers then).
fn finish(mut engine: Engine, db: &Path, total: i64, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while resumed_sum(db) != total {
        if let Ok(Some(status)) = engine.0.try_wait() {
            panic!("the engine exited early with {status}; log {}", log.display());
        }
        assert!(Instant::now() < deadline, "no progress at the end of the input ({} of {total}); log {}", resumed_sum(db), log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    while !std::fs::read_to_string(log).unwrap_or_default().contains("engine started") {
        assert!(Instant::now() < deadline, "the engine did not start; log {}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let term = Command::new("kill").arg("-TERM").arg(engine.0.id().to_string()).status().expect("kill");
    assert!(term.success());
    assert_eq!(engine.0.wait().expect("wait").code(), Some(0), "exit status after SIGTERM; log {}", log.display());
}

/// Every row of every result table but `pipeline`, `written_at` and (dead letters) the input
/// `topic`, which name the run; sorted per table.
fn contents(db: &Path) -> BTreeMap<String, Vec<String>> {
    let conn = Connection::open(db).expect("open");
    let tables = ["layer_summaries", "grid_maps", "window_results", "anomalies", "dead_letters", "late_records", "spc_signals", "layer_verdicts", "build_reports"];
    let mut out = BTreeMap::new();
    for t in tables {
        let mut cols = conn.prepare(&format!("SELECT name FROM pragma_table_info('{t}') WHERE name NOT IN ('pipeline', 'written_at', 'topic')")).expect("columns");
        let names: Vec<String> = cols.query_map([], |r| r.get::<_, String>(0)).expect("columns").collect::<Result<_, _>>().expect("columns");
        let quoted: Vec<String> = names.iter().map(|c| format!("\"{c}\"")).collect();
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {t}", quoted.join(", "))).expect("select");
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>())
            .expect("rows")
            .map(|r| format!("{:?}", r.expect("row")))
            .collect();
        rows.sort();
        out.insert(t.to_owned(), rows);
    }
    out
}

/// The `resume=Some(N)` of each `partition taken` line of `log` (`None`, nothing stored: 0),
/// per partition.
fn taken_at(log: &Path) -> BTreeMap<i64, u64> {
    let text = std::fs::read_to_string(log).expect("log");
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ … m.
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let field = |line: &str, name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name).map(|v| if v == "None" { "0" } else { v.trim_start_matches("Some(").trim_end_matches(')') }.to_owned()));
    plain
        .lines()
        .filter(|l| l.contains("partition taken"))
        .filter_map(|l| Some((field(l, "partition=")?.parse().ok()?, field(l, "resume=")?.parse().ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_kafka_pipeline_resumes_from_the_progress_in_its_file() {
    let brokers = env("KAFKA_BOOTSTRAP");
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("meltstream-sqlite-kafka-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let lines = input_lines();
    let (reference, killed) = (format!("sqlite-{run}-reference"), format!("sqlite-{run}-killed"));
    produce(&brokers, &reference, &lines).await;
    produce(&brokers, &killed, &lines).await;
    let ends = end_offsets(&brokers, &killed);
    let total: i64 = ends.values().sum();
    assert_eq!(total, lines.len() as i64);

    let ref_db = dir.join("reference.sqlite");
    let log = dir.join("reference.log");
    finish(spawn(&topology(&dir, &brokers, &reference, &ref_db), &log), &ref_db, total, &log);

    // Killed once it stored progress part of the way, then started again.
    let db = dir.join("killed.sqlite");
    let topo = topology(&dir, &brokers, &killed, &db);
    let first_log = dir.join("killed-0.log");
    let mut first = spawn(&topo, &first_log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while resumed_sum(&db) == 0 {
        assert!(Instant::now() < deadline, "no progress stored; log {}", first_log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("wait");
    let at_kill = progress(&db);
    assert!(resumed_sum(&db) < total, "killed before the end of the input: {at_kill:?}");
    let log = dir.join("killed-1.log");
    finish(spawn(&topo, &log), &db, total, &log);

    // The second run took every partition where the file said (a partition without a row from
    // its beginning).
    let taken = taken_at(&log);
    assert_eq!(taken.len(), ends.len(), "a `partition taken` line per partition: {taken:?}; log {}", log.display());
    for (p, resume) in &taken {
        let stored = at_kill.get(p).map_or(0, |s| s.0);
        assert_eq!(*resume as i64, stored, "partition {p} resumed where the file said; log {}", log.display());
    }
    // The file ends with the progress at the end of every partition that had input, each with
    // a readable replay state.
    let end = progress(&db);
    for (p, n) in ends.iter().filter(|(_, n)| **n > 0) {
        let Some((resume, emitted, state)) = end.get(&i64::from(*p)) else { panic!("no progress row of partition {p}: {end:?}") };
        assert_eq!((*resume, *emitted), (*n, *n), "partition {p}");
        PartitionState::from_json(state).unwrap_or_else(|e| panic!("partition {p}: replay state {state:?}: {e}"));
    }

    let (got, want) = (contents(&db), contents(&ref_db));
    assert!(want["layer_summaries"].len() >= 24 && !want["anomalies"].is_empty() && !want["dead_letters"].is_empty(), "the reference holds results: {:?}", want.iter().map(|(t, r)| (t, r.len())).collect::<Vec<_>>());
    for (table, rows) in &want {
        assert_eq!(got[table].len(), rows.len(), "{table}: rows of the killed pipeline vs the reference");
        assert_eq!(&got[table], rows, "{table}");
    }
}
