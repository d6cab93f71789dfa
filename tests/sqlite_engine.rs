//! Engines on an SQLite results store (the `meltstream` binary, a simulated fleet): readers see
//! the results while the engine writes, a second engine on the same file is refused naming the
//! owner, and an engine killed mid-run (or, with the fault hooks, aborted inside a transaction
//! before `COMMIT`) leaves a sound file that a rerun completes to exactly what an uninterrupted
//! run writes: nothing durable lost, nothing duplicated; `meltstream reset` then empties it.
//!
//! Needs no service: each test has its own temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::Connection;

use meltstream_actors::sinks::sqlite::admin::row_counts;

/// A fresh directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meltstream-sqlite-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Every value of `sql`'s rows (a reader's connection, as an operator's script would use).
fn query(path: &Path, sql: &str) -> Vec<Vec<Value>> {
    let db = Connection::open(path).expect("open for reading");
    let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>()).expect("query");
    rows.collect::<Result<Vec<_>, _>>().expect("rows")
}

/// A topology of a simulated fleet whose results go to the database at `db`.
fn fleet_topology(dir: &Path, name: &str, db: &Path, pace: &str) -> PathBuf {
    let topo = dir.join(format!("{name}.toml"));
    std::fs::write(
        &topo,
        format!(
            r#"name = "fleet"
[engine]
summary_interval_ms = 0
[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 2
sample_rate_hz = 5000
layers = 20
layer_ms = 300
recoat_ms = 100
seed = 7
pace = "{pace}"
[[windows.time]]
name = "temp_100ms"
kind = "tumbling"
channel = "temperature_c"
size_ms = 100
[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = 500
[[spc]]
name = "pd_cusum"
channel = "photodiode_on_axis"
chart = "cusum"
baseline_layers = 5
[[sinks]]
name = "results"
type = "sqlite"
path = "{}"
flush_ms = 20
"#,
            db.display()
        ),
    )
    .expect("write topology");
    topo
}

/// Runs `meltstream run` on `topo` to its end, with `env` set.
fn run_to_end(topo: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(topo).envs(env.iter().copied()).output().expect("run meltstream")
}

/// Every row of every result table but its `written_at`, sorted: what the runs are compared on.
fn contents(db: &Path) -> BTreeMap<String, Vec<String>> {
    let tables = ["layer_summaries", "grid_maps", "window_results", "anomalies", "dead_letters", "late_records", "spc_signals", "layer_verdicts", "build_reports"];
    let mut out = BTreeMap::new();
    for t in tables {
        let quoted: Vec<String> = query(db, &format!("SELECT name FROM pragma_table_info('{t}') WHERE name <> 'written_at'"))
            .into_iter()
            .map(|r| match &r[0] {
                Value::Text(c) => format!("\"{c}\""),
                other => panic!("a column name: {other:?}"),
            })
            .collect();
        let mut rows: Vec<String> = query(db, &format!("SELECT {} FROM {t}", quoted.join(", "))).into_iter().map(|r| format!("{r:?}")).collect();
        rows.sort();
        out.insert(t.to_owned(), rows);
    }
    out
}

/// The file an engine left behind (killed, or aborted inside a transaction) is sound and free,
/// and a rerun of the same deterministic input completes it to exactly what one uninterrupted
/// run writes: nothing durable was lost, nothing is duplicated.
fn rerun_completes(dir: &Path, db: &Path) {
    assert_eq!(query(db, "PRAGMA integrity_check"), vec![vec![Value::Text("ok".into())]]);
    let partial: u64 = row_counts(db, "fleet").expect("counts").values().sum();
    assert!(partial > 0, "the interrupted run stored results");
    let out = run_to_end(&fleet_topology(dir, "rerun", db, "fast"), &[]);
    assert!(out.status.success(), "rerun: {}", String::from_utf8_lossy(&out.stderr));
    let reference = dir.join("reference.sqlite");
    let out = run_to_end(&fleet_topology(dir, "reference", &reference, "fast"), &[]);
    assert!(out.status.success(), "reference: {}", String::from_utf8_lossy(&out.stderr));
    let (got, want) = (contents(db), contents(&reference));
    for (table, rows) in &want {
        assert_eq!(got[table].len(), rows.len(), "{table}: rows after the rerun vs an uninterrupted run");
        assert_eq!(&got[table], rows, "{table}");
    }
    assert!(want["layer_summaries"].len() >= 80 && !want["window_results"].is_empty() && !want["layer_verdicts"].is_empty(), "the reference holds results: {:?}", want.iter().map(|(t, r)| (t, r.len())).collect::<Vec<_>>());
    assert!(partial < want.values().map(|r| r.len() as u64).sum::<u64>(), "the interrupted run stopped before the end");
}

#[test]
fn a_killed_engine_loses_nothing_durable_and_a_second_engine_is_refused() {
    let dir = temp_dir("killed");
    let db = dir.join("results.sqlite");
    let topo = fleet_topology(&dir, "real", &db, "real");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(&topo).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn meltstream");
    // Readers see the results while the engine writes them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while row_counts(&db, "fleet").map(|c| c.get("layer_summaries").copied().unwrap_or(0)).unwrap_or(0) < 4 {
        assert!(Instant::now() < deadline, "no layer summaries within 60 s");
        assert!(child.try_wait().expect("poll").is_none(), "the engine exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second engine on the same file is refused at once, naming the owner.
    let second = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("run").arg("--quiet").arg(&topo).output().expect("run a second engine");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("is in use by another meltstream process") && err.contains(&format!("pid {}", child.id())), "{err}");
    assert!(child.try_wait().expect("poll").is_none(), "the first engine still runs: the second one was refused, not it");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    rerun_completes(&dir, &db);

    // `meltstream reset` empties the pipeline's rows and progress from the file.
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("reset").arg(&topo).output().expect("meltstream reset");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("sink results: deleted ") && said.contains("of pipeline \"fleet\""), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let left = row_counts(&db, "fleet").expect("counts");
    assert!(!left.is_empty() && left.values().all(|&n| n == 0), "rows left after reset: {left:?}");
}

/// With the fault hooks: the engine aborts inside its third transaction with rows, after the
/// inserts and before `COMMIT`; none of that transaction is in the file, all before it is. At
/// real pace, so that the run has many transactions whatever the machine's speed (at `fast` pace
/// a lightly loaded machine may finish it in two).
#[cfg(feature = "fault-injection")]
#[test]
fn an_engine_aborted_inside_a_transaction_loses_nothing_durable() {
    let dir = temp_dir("aborted");
    let db = dir.join("results.sqlite");
    let out = run_to_end(&fleet_topology(&dir, "aborted", &db, "real"), &[("MELTSTREAM_FAULT_ABORT_SQLITE_FLUSH", "3")]);
    assert!(!out.status.success(), "the engine aborted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("aborting inside an SQLite transaction"), "{}", String::from_utf8_lossy(&out.stderr));
    rerun_completes(&dir, &db);
}
