//! The `airflow` sink against a real Apache Airflow 3 (api-server, scheduler and dag-processor
//! on loopback, SQLite, LocalExecutor, the DAGs of examples/airflow/), a real Kafka broker and a
//! real PostgreSQL server, all started by `./scripts/test` through `scripts/services/`.
//!
//! A simulated fleet with injected anomalies is written to Kafka. The engine reads it with an
//! `airflow` sink that starts `meltstream_record_conf` for each anomaly and another that starts
//! `meltstream_quality_report` for each build report. The first engine aborts right after
//! Airflow took its second run (a fault hook), before the progress covering those anomalies is
//! stored; the second one replays them from the stored progress and finishes. Then every anomaly
//! stored in PostgreSQL has started exactly one DAG run, the run succeeded with the record as its
//! conf, and each build has its quality report, read from PostgreSQL by the example DAG.

#[cfg(not(feature = "fault-injection"))]
compile_error!("tests/airflow_sink.rs uses the fault-injection hooks: build with --features fault-injection (scripts/test does)");

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meltstream_engine::input::encode::write_json_lines;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::SimulatorConfig;
use support::services::{end_offsets, pg, produce};

const MISSING: &str = "run the suite through ./scripts/test, which starts Airflow (scripts/services/airflow.sh), Kafka and PostgreSQL and exports their addresses";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {MISSING}"))
}

/// An engine process, killed when dropped.
struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(topology: &Path, log: &Path, env: &[(&str, &str)]) -> Engine {
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_meltstream"))
        .arg("run")
        .arg("--quiet")
        .arg(topology)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn meltstream");
    Engine(child)
}

/// Airflow's REST API, as the test reads it.
struct Airflow {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Airflow {
    async fn connect() -> Airflow {
        let url = env("AIRFLOW_URL");
        let http = reqwest::Client::new();
        let body = serde_json::json!({"username": env("AIRFLOW_USERNAME"), "password": env("AIRFLOW_PASSWORD")});
        let resp = http.post(format!("{url}/auth/token")).json(&body).send().await.unwrap_or_else(|e| panic!("Airflow at {url}: {e} ({MISSING})"));
        assert!(resp.status().is_success(), "POST /auth/token: {}", resp.status());
        let v: serde_json::Value = resp.json().await.expect("token JSON");
        Airflow { url, token: v["access_token"].as_str().expect("access_token").to_owned(), http }
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let resp = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.expect("GET");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("JSON")
    }

    /// The runs of `dag` whose id starts with `prefix`.
    async fn runs(&self, dag: &str, prefix: &str) -> Vec<serde_json::Value> {
        let v = self.get(&format!("/api/v2/dags/{dag}/dagRuns?limit=1000&order_by=run_after")).await;
        v["dag_runs"].as_array().expect("dag_runs").iter().filter(|r| r["dag_run_id"].as_str().is_some_and(|id| id.starts_with(prefix))).cloned().collect()
    }

    /// Waits until `dag` is parsed (the dag-processor reads examples/airflow/ every few seconds).
    async fn wait_for_dag(&self, dag: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let resp = self.http.get(format!("{}/api/v2/dags/{dag}", self.url)).bearer_auth(&self.token).send().await.expect("GET dag");
            if resp.status().is_success() {
                return;
            }
            assert!(Instant::now() < deadline, "Airflow never listed DAG {dag} (examples/airflow/); last answer {}", resp.status());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until every run of `dag` with `prefix` has ended; they must have succeeded.
    async fn wait_ended(&self, dag: &str, prefix: &str, expected: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let runs = self.runs(dag, prefix).await;
            let ended = runs.iter().filter(|r| matches!(r["state"].as_str(), Some("success" | "failed"))).count();
            if runs.len() >= expected && ended == runs.len() {
                for r in &runs {
                    assert_eq!(r["state"], "success", "run {} of {dag} failed; see the task logs under /tmp/meltstream-services/airflow/logs", r["dag_run_id"]);
                }
                return runs;
            }
            assert!(Instant::now() < deadline, "{dag}: {ended} of {} runs ended ({expected} expected) after 10 min", runs.len());
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// The input: 2 machines, 2 lasers, 5 layers with an anomaly injected on most layers.
fn input_lines() -> Vec<(String, String)> {
    let cfg = SimulatorConfig {
        machines: 2,
        lasers: 2,
        sample_rate_hz: 5_000,
        layers: 5,
        layer_ms: 200,
        recoat_ms: 20,
        seed: 7,
        anomalies: true,
        anomaly_rate_per_layer: 1.0,
        anomaly_from_layer: 2,
        ..SimulatorConfig::default()
    };
    let mut sim = Simulator::new(&cfg, 0);
    let mut text = String::new();
    while let Some(b) = sim.next_batch() {
        write_json_lines(&b, &mut text);
    }
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("simulator JSON");
            (v["build_id"].as_str().unwrap_or("none").to_owned(), line.to_owned())
        })
        .collect()
}

fn topology(dir: &Path, pipeline: &str, topic: &str, schema: &str, prefix: &str) -> PathBuf {
    let text = format!(
        r#"name = "{pipeline}"
[engine]
summary_interval_ms = 0
input_idle_timeout_ms = 500
watermark_bound_ms = 20

[[sources]]
name = "ispm"
type = "kafka"
brokers = "${{KAFKA_BOOTSTRAP}}"
topics = ["{topic}"]
group_id = "g-{topic}"
batch_records = 200
{rules}
[[sinks]]
name = "pg"
type = "postgres"
url = "${{DATABASE_URL}}"
schema = "{schema}"
records = ["layer_summary", "anomaly", "layer_verdict", "build_report", "data_quality"]
flush_ms = 50

[[sinks]]
name = "analysis"
type = "airflow"
dag_id = "meltstream_record_conf"
records = ["anomaly"]
run_id_prefix = "{prefix}"
flush_ms = 50

[[sinks]]
name = "reports"
type = "airflow"
dag_id = "meltstream_quality_report"
records = ["build_report"]
run_id_prefix = "{prefix}"
context = {{ schema = "{schema}", pipeline = "{pipeline}" }}
flush_ms = 50
"#,
        rules = support::alert_rules(20)
    );
    let path = dir.join(format!("{pipeline}.toml"));
    std::fs::write(&path, text).expect("write topology");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_anomaly_starts_exactly_one_dag_run_across_a_crash() {
    let airflow = Airflow::connect().await;
    let out_dir = PathBuf::from(env("MELTSTREAM_AIRFLOW_OUT"));
    let (brokers, db_url) = (env("KAFKA_BOOTSTRAP"), env("DATABASE_URL"));
    let run = format!("{}_{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let dir = std::env::temp_dir().join(format!("meltstream-airflow-{run}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (pipeline, topic, schema, prefix) = ("af", format!("ispm-airflow-{run}"), format!("af_{run}"), format!("t{run}"));
    airflow.wait_for_dag("meltstream_record_conf").await;
    airflow.wait_for_dag("meltstream_quality_report").await;

    let lines = input_lines();
    produce(&brokers, &topic, &lines).await;
    let total: i64 = end_offsets(&brokers, &topic).values().sum();
    assert_eq!(total as usize, lines.len());
    let topo = topology(&dir, pipeline, &topic, &schema, &prefix);

    // The first engine aborts right after Airflow took its second run.
    let mut first = spawn(&topo, &dir.join("run-0.log"), &[("MELTSTREAM_FAULT_ABORT_AFTER_AIRFLOW_RUNS", "2")]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = first.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the engine did not abort after its second DAG run; logs in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "aborted by the fault hook: {status}; logs in {}", dir.display());
    let log = std::fs::read_to_string(dir.join("run-0.log")).unwrap_or_default();
    assert!(log.contains("MELTSTREAM_FAULT_ABORT_AFTER_AIRFLOW_RUNS=2"), "aborted by the hook; logs in {}", dir.display());
    let before_restart = airflow.runs("meltstream_record_conf", &prefix).await.len();
    assert!(before_restart >= 2, "two runs triggered before the crash ({before_restart})");

    // The second engine replays from the stored progress and reads to the end.
    let mut second = spawn(&topo, &dir.join("run-1.log"), &[]);
    let c = pg(&db_url).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let q = format!("SELECT coalesce(sum(resume_offset), 0)::bigint FROM {schema}.progress WHERE pipeline = $1");
        let stored: i64 = c.query_one(&q, &[&pipeline]).await.map(|r| r.get(0)).unwrap_or(0);
        if stored == total {
            break;
        }
        if let Some(s) = second.0.try_wait().expect("wait") {
            panic!("the restarted engine exited with {s}; logs in {}", dir.display());
        }
        assert!(Instant::now() < deadline, "the restarted engine stored progress {stored} of {total}; logs in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything durable is triggered before the progress covering it is stored, so the runs
    // are there now; stop the engine.
    let term = Command::new("kill").arg("-TERM").arg(second.0.id().to_string()).status().expect("kill");
    assert!(term.success());
    assert_eq!(second.0.wait().expect("wait").code(), Some(0), "exit after SIGTERM; logs in {}", dir.display());
    // The replay asked again for the run Airflow took just before the crash, and took the 409
    // as done.
    let log = std::fs::read_to_string(dir.join("run-1.log")).unwrap_or_default();
    assert!(log.contains("the DAG run exists already"), "the restarted engine triggered the crashed run's last record again; logs in {}", dir.display());

    // Every stored anomaly started one run, which succeeded with the record as its conf.
    let q = format!("SELECT build_id, rule, time_ns FROM {schema}.anomalies WHERE pipeline = $1");
    let anomalies: BTreeSet<(String, String, i64)> = c.query(&q, &[&pipeline]).await.expect("anomalies").iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert!(anomalies.len() >= 4, "the injected anomalies raise alerts ({})", anomalies.len());
    let runs = airflow.wait_ended("meltstream_record_conf", &prefix, anomalies.len()).await;
    let mut by_anomaly: BTreeMap<(String, String, i64), Vec<String>> = BTreeMap::new();
    for r in &runs {
        let id = r["dag_run_id"].as_str().expect("run id").to_owned();
        let conf = &r["conf"];
        assert_eq!(conf["kind"], "anomaly", "{id}: {conf}");
        assert_eq!(r["logical_date"], serde_json::Value::Null, "{id}: no logical date");
        let rec = &conf["record"];
        let k = (rec["build_id"].as_str().expect("build_id").to_owned(), rec["rule"].as_str().expect("rule").to_owned(), rec["time_ns"].as_i64().expect("time_ns"));
        // The task wrote the conf it ran with.
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join(format!("{id}.json"))).unwrap_or_else(|e| panic!("{id}: the task's output: {e}"))).expect("output JSON");
        assert_eq!(&written["conf"], conf, "{id}: the task ran with the record as conf");
        by_anomaly.entry(k).or_default().push(id);
    }
    let twice: Vec<_> = by_anomaly.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "anomalies that started more than one run: {twice:?}");
    assert_eq!(by_anomaly.keys().cloned().collect::<BTreeSet<_>>(), anomalies, "one run per stored anomaly, and none for anything else");
    eprintln!("{} anomalies, {} runs ({before_restart} before the crash)", anomalies.len(), runs.len());

    // One quality report per build, read from PostgreSQL by the example DAG.
    let q = format!("SELECT build_id, layers FROM {schema}.build_reports WHERE pipeline = $1");
    let reports: Vec<(String, i32)> = c.query(&q, &[&pipeline]).await.expect("build reports").iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(reports.len(), 2, "a build report per machine");
    airflow.wait_ended("meltstream_quality_report", &prefix, reports.len()).await;
    for (build, layers) in &reports {
        let q = format!("SELECT count(*) FROM {schema}.layer_verdicts WHERE pipeline = $1 AND build_id = $2");
        let verdicts: i64 = c.query_one(&q, &[&pipeline, build]).await.expect("verdicts").get(0);
        let path = out_dir.join(format!("report-{build}.json"));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("report JSON");
        assert_eq!(report["layers"].as_i64(), Some(verdicts), "{build}: the report counts the stored layer verdicts");
        assert_eq!(report["build_report"]["layers"].as_i64(), Some(i64::from(*layers)), "{build}: the report carries its build_report");
        assert!(report["samples"].as_i64().unwrap_or(0) > 0, "{build}: the report sums the layer summaries");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
