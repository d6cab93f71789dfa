//! `meltstream fuse` against a real PostgreSQL: a simulated fleet runs into a PostgreSQL sink, the
//! simulator writes the CT list its planted anomalies leave (`simulate --ct`), and the batch
//! fusion reads the builds' evidence back from the tables, long after the engine has exited. It
//! writes one `fused_defects` row per CT defect and one `fusion_summaries` row per build, finds
//! the simulator's detectable defects (recall ≥ 0.95, precision ≥ 0.9), skips a bad CT row with
//! its line number, and a second run replaces the first instead of adding to it.
//!
//! Then `meltstream export` writes the layer features and fused defects as Parquet; pyarrow (the
//! project's Python venv) reads them back, and they equal the PostgreSQL rows; a second export
//! replaces its files.
//!
//! Needs `DATABASE_URL` and `MELTSTREAM_PYTHON`; `./scripts/test` provides them
//! (scripts/services/postgres.sh, scripts/services/pyenv.sh).

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use meltstream_actors::sinks::postgres::admin::query_text;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::{load, SourceKind};

fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("DATABASE_URL is not set: run the suite through ./scripts/test, which starts PostgreSQL (scripts/services/postgres.sh)"),
    }
}

fn topology(url: &str, schema: &str) -> String {
    format!(
        r#"name = "fusion"
[engine]
summary_interval_ms = 0

[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 4
sample_rate_hz = 20000
layers = 40
layer_ms = 500
recoat_ms = 100
seed = 5
anomaly_rate_per_layer = 1.0
anomaly_from_layer = 12
anomaly_kinds = ["hot_spot", "power_drop", "lack_of_fusion", "recoater_streak", "gas_flow_shadow", "o2_rise"]

[windows]
grid_cell_mm = 20.0
grid_deviation_z = 5.0

[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = 500

[[rules]]
name = "power_drop"
channel = "laser_power_w"
op = "<"
limit = 150.0

[[rules]]
name = "lack_of_fusion"
channel = "energy_density_j_mm3"
op = "<"
limit = 40.0

[[spc]]
name = "pd_cusum"
channel = "photodiode_on_axis"
chart = "cusum"
baseline_layers = 12

[fusion]
layers_k = 1
tolerance_mm = 1.0

[[sinks]]
name = "store"
type = "postgres"
url = "{url}"
schema = "{schema}"
"#
    )
}

fn meltstream(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).args(args).output().expect("run meltstream");
    assert!(out.status.success(), "meltstream {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    out
}

#[test]
fn batch_fusion_reads_the_stored_results_and_replaces_its_own() {
    let url = database_url();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let schema = format!("test_fusion_{}_{nanos}", std::process::id());
    let dir = support::temp_dir("pg-fusion");
    let topo = dir.join("fusion.toml");
    let text = topology(&url, &schema);
    std::fs::write(&topo, &text).expect("write topology");
    let topo = topo.to_str().expect("utf-8 path");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let sql = |q: String| rt.block_on(query_text(&url, &q)).unwrap_or_else(|e| panic!("{e}"));

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        meltstream(&["run", topo, "--quiet"]);
        // The CT list, with one bad row appended.
        let ct = dir.join("ct.csv");
        meltstream(&["simulate", "--topology", topo, "--out", "/dev/null", "--ct", ct.to_str().expect("path")]);
        let mut list = std::fs::read_to_string(&ct).expect("read CT list");
        let rows = list.lines().count() - 1;
        list.push_str("sim-001,bad,1.0,2.0,not-a-number,,100,gas_pore,\n");
        std::fs::write(&ct, list).expect("write CT list");

        let out = meltstream(&["fuse", "--topology", topo, "--ct", ct.to_str().expect("path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!(":{}: skipped: z_mm", rows + 2)), "the bad row is reported with its line: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().filter(|l| l.contains("recall")).count(), 2, "one summary per build: {stdout}");

        let count = |table: &str| sql(format!("SELECT count(*) FROM \"{schema}\".{table}"))[0][0].clone().expect("count").parse::<usize>().expect("number");
        assert_eq!(count("fused_defects"), rows, "one row per CT defect");
        assert_eq!(count("fusion_summaries"), 2);

        // Recall on the simulator's detectable defects, from the table.
        let t = load(&text, "fusion.toml", std::path::Path::new(".")).expect("topology");
        let SourceKind::Simulator(cfg) = &t.sources[0].kind else { panic!("simulator source") };
        let mut sim = Simulator::new(cfg, 0);
        while sim.next_batch().is_some() {}
        let truth: BTreeMap<(String, String), bool> = sim.ct_defects().into_iter().map(|d| ((d.defect.build_id, d.defect.defect_id), d.detectable)).collect();
        let rows_detected = sql(format!("SELECT build_id, defect_id, detected FROM \"{schema}\".fused_defects"));
        let (mut detectable, mut detected) = (0, 0);
        for r in &rows_detected {
            let key = (r[0].clone().expect("build"), r[1].clone().expect("id"));
            if truth[&key] {
                detectable += 1;
                detected += usize::from(r[2].as_deref() == Some("t"));
            }
        }
        let recall = detected as f64 / detectable as f64;
        let flags = sql(format!("SELECT sum(flags), sum(confirmed_flags) FROM \"{schema}\".fusion_summaries"));
        let (flags, confirmed): (f64, f64) = (flags[0][0].clone().expect("flags").parse().expect("n"), flags[0][1].clone().expect("confirmed").parse().expect("n"));
        eprintln!("fusion: {detected} of {detectable} detectable defects; {confirmed} of {flags} flags confirmed");
        assert!(detectable >= 100 && recall >= 0.95, "recall {recall:.3} over {detectable}");
        assert!(confirmed / flags >= 0.9, "precision {:.3}", confirmed / flags);

        // A second run replaces the first.
        meltstream(&["fuse", "--topology", topo, "--ct", ct.to_str().expect("path"), "--build", "sim-001"]);
        assert_eq!(count("fused_defects"), rows);
        assert_eq!(count("fusion_summaries"), 2);

        // Parquet, read back with pyarrow.
        let pq = dir.join("parquet");
        let out = meltstream(&["export", "--topology", topo, "--out", pq.to_str().expect("path"), "--layers-per-file", "16"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("wrote 8 Parquet files"), "2 builds × 3 layer ranges + 2 fused: {}", String::from_utf8_lossy(&out.stdout));
        let read_back = || {
            let python = std::env::var("MELTSTREAM_PYTHON").unwrap_or_else(|_| panic!("MELTSTREAM_PYTHON is not set: run the suite through ./scripts/test (scripts/services/pyenv.sh installs pyarrow)"));
            let script = "import sys, json, pyarrow.dataset as ds\n\
                          for name in ['layer_features', 'fused_defects']:\n\
                          \x20   t = ds.dataset(sys.argv[1] + '/' + name, format='parquet').to_table()\n\
                          \x20   print(json.dumps({'table': name, 'rows': t.to_pylist()}, default=str))\n";
            let out = Command::new(python).arg("-c").arg(script).arg(&pq).output().expect("run python");
            assert!(out.status.success(), "pyarrow: {}", String::from_utf8_lossy(&out.stderr));
            let tables: BTreeMap<String, Vec<serde_json::Value>> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json");
                    (v["table"].as_str().expect("table").to_owned(), v["rows"].as_array().expect("rows").clone())
                })
                .collect();
            tables
        };
        let tables = read_back();
        let features = &tables["layer_features"];
        let pg_features = sql(format!(
            "SELECT s.build_id, s.layer, s.laser, s.record->'channels'->'photodiode_on_axis'->>'mean', v.verdict, (d.record->'lasers'->(s.laser::text)->>'score')
             FROM \"{schema}\".layer_summaries s
             JOIN \"{schema}\".layer_verdicts v USING (pipeline, build_id, layer)
             LEFT JOIN \"{schema}\".data_quality d USING (pipeline, build_id, layer)"
        ));
        assert_eq!(features.len(), pg_features.len(), "one feature row per layer and laser");
        for r in &pg_features {
            let (b, layer, laser) = (r[0].clone().expect("b"), r[1].clone().expect("layer"), r[2].clone().expect("laser"));
            let f = features
                .iter()
                .find(|f| f["build_id"] == b.as_str() && f["layer"].to_string() == layer && f["laser"].to_string() == laser)
                .unwrap_or_else(|| panic!("no feature row for {b} layer {layer} laser {laser}"));
            let mean: f64 = r[3].clone().expect("mean").parse().expect("number");
            assert!((f["photodiode_on_axis_mean"].as_f64().expect("mean") - mean).abs() < 1e-9 * mean.abs(), "{f} against {r:?}");
            assert_eq!(f["verdict"].as_str(), r[4].as_deref(), "{f}");
            assert_eq!(f["data_quality"].as_f64(), r[5].as_deref().map(|q| q.parse::<f64>().expect("score")), "{f}");
        }
        let fused = &tables["fused_defects"];
        assert_eq!(fused.len(), rows, "one fused row per CT defect");
        let pg_fused = sql(format!("SELECT build_id, defect_id, detected FROM \"{schema}\".fused_defects"));
        for r in &pg_fused {
            let f = fused.iter().find(|f| f["build_id"] == r[0].as_deref().unwrap_or("") && f["defect_id"] == r[1].as_deref().unwrap_or("")).expect("fused row");
            assert_eq!(f["detected"].as_bool(), Some(r[2].as_deref() == Some("t")), "{f}");
        }
        // A second export replaces its files: the same rows, no copies.
        meltstream(&["export", "--topology", topo, "--out", pq.to_str().expect("path"), "--layers-per-file", "16"]);
        let again = read_back();
        assert_eq!((again["layer_features"].len(), again["fused_defects"].len()), (features.len(), fused.len()));
    }));
    let dropped = rt.block_on(query_text(&url, &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    dropped.expect("drop the test schema");
}
