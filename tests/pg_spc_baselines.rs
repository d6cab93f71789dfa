//! SPC baselines through a real PostgreSQL: a reference build runs with a chart per laser and a
//! chart per grid cell, and its phase I baselines land in `spc_baselines`; a second run whose
//! charts take `baseline = "reference"` reads them at start and charts against them (no phase I
//! of its own for what the reference covers); a reference build with nothing stored stops the
//! start with an error naming the chart and the build.
//!
//! Needs `DATABASE_URL`; `./scripts/test` provides it (scripts/services/postgres.sh).

mod support;

use std::process::Command;

use meltstream_actors::sinks::postgres::admin::query_text;

fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("DATABASE_URL is not set: run the suite through ./scripts/test, which starts PostgreSQL (scripts/services/postgres.sh)"),
    }
}

/// One machine of two lasers; `charts` the `[[spc]]` baseline keys, `prefix` the build prefix.
fn topology(url: &str, schema: &str, prefix: &str, baseline: &str) -> String {
    format!(
        r#"name = "spc_ref"
[engine]
summary_interval_ms = 0

[[sources]]
name = "fleet"
type = "simulator"
machines = 1
lasers = 2
sample_rate_hz = 20000
layers = 12
layer_ms = 200
recoat_ms = 50
seed = 11
anomalies = false
build_prefix = "{prefix}"

[windows]
grid_cell_mm = 20.0
grid_channel = "photodiode_on_axis"

[[spc]]
name = "pd_laser"
channel = "photodiode_on_axis"
baseline_layers = 4
{baseline}

[[spc]]
name = "pd_cells"
channel = "photodiode_on_axis"
statistic = "cell_mean"
min_cell_samples = 20
baseline_layers = 4
{baseline}

[[sinks]]
name = "store"
type = "postgres"
url = "{url}"
schema = "{schema}"
"#
    )
}

fn run(dir: &std::path::Path, name: &str, text: &str) -> std::process::Output {
    let topo = dir.join(name);
    std::fs::write(&topo, text).expect("write topology");
    Command::new(env!("CARGO_BIN_EXE_meltstream")).args(["run", topo.to_str().expect("utf-8 path"), "--quiet"]).output().expect("run meltstream")
}

#[test]
fn a_reference_build_stores_its_baselines_and_a_later_build_charts_against_them() {
    let url = database_url();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let schema = format!("test_spc_ref_{}_{nanos}", std::process::id());
    let dir = support::temp_dir("pg-spc-ref");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let sql = |q: String| rt.block_on(query_text(&url, &q)).unwrap_or_else(|e| panic!("{e}"));
    let ok = |out: std::process::Output| assert!(out.status.success(), "meltstream run failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The reference build: phase I on its first layers, stored.
        ok(run(&dir, "ref.toml", &topology(&url, &schema, "ref-", "")));
        let baselines = |build: &str, chart: &str| sql(format!("SELECT laser::text, cell::text, centre::text, sigma::text, layers_used::text, cell_mm::text FROM \"{schema}\".spc_baselines WHERE build_id = '{build}' AND spc = '{chart}' ORDER BY laser, cell"));
        let lasers = baselines("ref-001", "pd_laser");
        assert_eq!(lasers.iter().map(|r| r[0].clone().unwrap_or_default()).collect::<Vec<_>>(), vec!["1", "2"], "one baseline per laser: {lasers:?}");
        assert!(lasers.iter().all(|r| r[1].is_none() && r[4].as_deref() == Some("4")), "{lasers:?}");
        let cells = baselines("ref-001", "pd_cells");
        assert!(!cells.is_empty() && cells.iter().all(|r| r[0].as_deref() == Some("0") && r[1].is_some() && r[5].as_deref() == Some("20")), "cell baselines: {cells:?}");

        // A later build against the reference: nothing of its own phase I for what it covers, and
        // its signals (if any) are judged against the reference's centre and sigma.
        let reference = "baseline = \"reference\"\nreference_build = \"ref-001\"";
        ok(run(&dir, "later.toml", &topology(&url, &schema, "sim-", reference)));
        assert!(baselines("sim-001", "pd_laser").is_empty(), "the lasers took the reference's baselines");
        let stored: Vec<(String, String)> = lasers.iter().map(|r| (r[0].clone().unwrap_or_default(), r[2].clone().unwrap_or_default())).collect();
        for s in sql(format!("SELECT laser::text, baseline_centre::text FROM \"{schema}\".spc_signals WHERE build_id = 'sim-001' AND spc = 'pd_laser'")) {
            let (laser, centre) = (s[0].clone().unwrap_or_default(), s[1].clone().unwrap_or_default());
            assert!(stored.contains(&(laser.clone(), centre.clone())), "laser {laser} judged against {centre}, stored {stored:?}");
        }
        let own_cells = baselines("sim-001", "pd_cells").len();
        assert!(own_cells < cells.len(), "cells the reference covers run no phase I: {own_cells} of {}", cells.len());

        // A reference build with nothing stored: the start fails, naming the chart and the build.
        let out = run(&dir, "missing.toml", &topology(&url, &schema, "sim-", "baseline = \"reference\"\nreference_build = \"nope-042\""));
        assert!(!out.status.success(), "a missing reference must stop the start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("pd_laser") && stderr.contains("nope-042"), "{stderr}");
    }));
    let _ = sql(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
