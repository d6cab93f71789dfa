//! Exactly-once across crashes, with a real Kafka broker and a real PostgreSQL server (both
//! started by `./scripts/test` through `scripts/services/`).
//!
//! A fixed input (a simulated fleet, with malformed records mixed in) is written to Kafka once.
//! A reference pipeline processes it without interruption. Then the same input goes through:
//! - a pipeline whose engine aborts right after a Kafka commit (a fault hook), then is killed
//!   with SIGKILL at random instants, and is restarted each time;
//! - a pipeline whose PostgreSQL server is stopped for 30 s mid-run;
//! - a pipeline whose Kafka broker is restarted mid-run;
//! - a pipeline whose broker is away longer than the group session: the engine stops without
//!   emitting open windows and starts again by itself.
//!
//! Each one's PostgreSQL tables and its `read_committed` Kafka output must equal the
//! reference's, row for row and record for record.

// The fault hooks this test relies on are compiled only with the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
compile_error!("tests/exactly_once.rs uses the fault-injection hooks: build with --features fault-injection (scripts/test does)");

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use meltstream_engine::input::encode::write_json_lines;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::SimulatorConfig;

mod support;
use support::services::{end_offsets, env, pg, produce, read_committed};

struct Fixture {
    brokers: String,
    db_url: String,
    schema: String,
    /// Prefix of the topics; each pipeline reads its own copy of the input.
    prefix: String,
    dir: PathBuf,
    lines: Vec<(String, String)>,
    /// Messages written per partition (the high watermark of each).
    end_offsets: BTreeMap<i32, i64>,
    total: i64,
}

impl Fixture {
    fn input_topic(&self, pipeline: &str) -> String {
        format!("{}-{pipeline}", self.prefix)
    }

    /// The consumer group of a pipeline: its own per test run (a group left behind by an
    /// earlier run, with its static member, must not hand this run its old partitions).
    fn group(&self, pipeline: &str) -> String {
        format!("g-{}", self.input_topic(pipeline))
    }

    fn alerts_topic(&self, pipeline: &str) -> String {
        format!("{}-{pipeline}-alerts", self.prefix)
    }

    /// Writes part of the input (`..` for all) to the pipeline's topic.
    async fn produce(&self, pipeline: &str, range: std::ops::Range<usize>) {
        produce(&self.brokers, &self.input_topic(pipeline), &self.lines[range]).await;
    }
}

/// The fixed input: 3 machines, 4 layers each, 2 lasers at 10 kHz, with injected anomalies,
/// keyed by build; plus bad records: not JSON, a wrong type, one over the topology's
/// `max_record_bytes`, and a layer end of a build never started.
fn input_lines() -> Vec<(String, String)> {
    let cfg = SimulatorConfig { machines: 3, lasers: 2, sample_rate_hz: 10_000, layers: 4, layer_ms: 400, recoat_ms: 50, seed: 11, ..SimulatorConfig::default() };
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
            // A layer no sink can store (beyond a PostgreSQL int): refused at decode.
            out.push(("b1".to_owned(), r#"{"build_id":"b1","layer":3000000000,"timestamp":"2024-01-15T10:30:00.001Z","temperature":1750.5}"#.to_owned()));
            out.push((key.clone(), r#"{"build_id": "b", "layer": "four", "timestamp": "2024-01-15T10:30:00Z"}"#.to_owned()));
            out.push((key.clone(), format!(r#"{{"build_id": "b", "layer": 1, "timestamp": "2024-01-15T10:30:00Z", "note": "{}"}}"#, "x".repeat(20_000))));
            // A build nobody started that ends a layer, at the stream's own time.
            let t = v.get("t0_ns").or_else(|| v.get("t_ns")).and_then(|t| t.as_i64()).expect("simulator time");
            out.push((key.clone(), format!(r#"{{"type": "layer", "build_id": "ghost-{i}", "layer": 7, "phase": "end", "t_ns": {t}}}"#)));
        }
        out.push((key, line.to_owned()));
    }
    out
}

/// Every row of every result table of `pipeline`, without the write times, sorted per table.
async fn tables(f: &Fixture, pipeline: &str) -> BTreeMap<String, Vec<String>> {
    let c = pg(&f.db_url).await;
    let names = c
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name NOT IN ('progress', 'schema_version') ORDER BY 1", &[&f.schema])
        .await
        .expect("tables");
    let mut out = BTreeMap::new();
    for n in names {
        let t: String = n.get(0);
        let q = format!("SELECT (to_jsonb(t) - 'pipeline' - 'written_at' - 'topic')::text FROM {}.{} t WHERE pipeline = $1", f.schema, t);
        let mut rows: Vec<String> = c.query(&q, &[&pipeline]).await.expect("rows").iter().map(|r| r.get(0)).collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

/// The pipeline's committed alert records, without the input topic (each pipeline has its own).
fn alerts(f: &Fixture, pipeline: &str) -> Vec<String> {
    let mut out: Vec<String> = read_committed(&f.brokers, &f.alerts_topic(pipeline))
        .iter()
        .map(|a| {
            let mut v: serde_json::Value = serde_json::from_str(a).expect("alert JSON");
            if let Some(o) = v.as_object_mut() {
                o.remove("topic");
            }
            v.to_string()
        })
        .collect();
    out.sort();
    out
}

/// Sum over partitions of the progress `pipeline` stored in PostgreSQL and in the group's
/// offsets (what the Kafka sink committed).
async fn stored_offsets(f: &Fixture, pipeline: &str) -> (i64, i64) {
    // PostgreSQL may be away (the outage): no progress is read then, as from a failed query.
    let q = format!("SELECT coalesce(sum(resume_offset), 0)::bigint FROM {}.progress WHERE pipeline = $1", f.schema);
    let in_pg: i64 = match tokio_postgres::connect(&f.db_url, tokio_postgres::NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            c.query_one(&q, &[&pipeline]).await.map_or(0, |r| r.get(0))
        }
        Err(_) => 0,
    };
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &f.brokers).set("group.id", f.group(pipeline)).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in f.end_offsets.keys() {
        tpl.add_partition(&f.input_topic(pipeline), *p);
    }
    let in_kafka = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|t| t.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum())
        .unwrap_or(0);
    (in_pg, in_kafka)
}

fn topology(f: &Fixture, pipeline: &str) -> PathBuf {
    let path = f.dir.join(format!("{pipeline}.toml"));
    let text = format!(
        r#"name = "{pipeline}"
[engine]
summary_interval_ms = 0
build_idle_timeout_ms = {build_idle}
input_idle_timeout_ms = 500
watermark_bound_ms = 20
max_record_bytes = 16384
input_quality_window_ms = 200
{restarts}

[[sources]]
name = "ispm"
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
batch_records = 200
{session}
{rules}
[[sinks]]
name = "pg"
type = "postgres"
url = "{url}"
schema = "{schema}"
records = ["layer_summary", "grid", "anomaly", "dead_letter", "input_quality"]
flush_ms = 50

[[sinks]]
name = "alerts"
type = "kafka"
brokers = "{brokers}"
topic = "{alerts}"
records = ["anomaly", "dead_letter"]
flush_ms = 50
"#,
        rules = support::alert_rules(50),
        brokers = f.brokers,
        topic = f.input_topic(pipeline),
        alerts = f.alerts_topic(pipeline),
        group = f.group(pipeline),
        url = f.db_url,
        schema = f.schema,
        // The reset test waits for the stopped engine's static member to leave the group, and
        // "lost" loses its session while the broker is away: a short session. The others keep
        // the default 45 s, which outlasts the broker restart.
        // "lost" also logs its group protocol (librdkafka's `cgrp` debug), for a consumer that
        // would not rejoin.
        session = match pipeline {
            "lost" => "[sources.properties]\n\"session.timeout.ms\" = \"6000\"\n\"debug\" = \"cgrp\"\n",
            "again" | "two" => "[sources.properties]\n\"session.timeout.ms\" = \"6000\"\n",
            _ => "",
        },
        // Builds that go quiet while the broker is away or a process paused are parked (the
        // results must not change); elsewhere they never idle.
        build_idle = if pipeline == "bounce" || pipeline == "two" { 1000 } else { 600_000 },
        // The escalation test allows two restarts.
        restarts = if pipeline == "escalate" { "max_restarts = 2\nmax_restart_window_s = 600" } else { "" },
    );
    std::fs::write(&path, text).expect("write topology");
    path
}

/// An engine child process, killed when dropped: a failing test must not leave engines running
/// (one still in its consumer group would take partitions from the next run).
struct Engine(Child);

impl std::ops::Deref for Engine {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Engine {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(f: &Fixture, topo: &Path, run: usize) -> Engine {
    spawn_with(f, topo, run, &[])
}

fn spawn_with(f: &Fixture, topo: &Path, run: usize, env: &[(&str, &str)]) -> Engine {
    let name = topo.file_stem().unwrap().to_string_lossy().into_owned();
    let log = std::fs::File::create(f.dir.join(format!("{name}-{run}.log"))).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_meltstream"))
        .arg("run")
        .arg("--quiet")
        .arg(topo)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn meltstream");
    Engine(child)
}

/// Waits until both sinks stored progress at the end of the input, then stops with SIGTERM
/// (once the engine is up, so that it has its signal handlers).
async fn finish(f: &Fixture, pipeline: &str, mut child: Engine, run: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (in_pg, in_kafka) = stored_offsets(f, pipeline).await;
        if in_pg == f.total && in_kafka == f.total {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(f.dir.join(format!("{pipeline}-{run}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("engine of {pipeline} exited early with {status}; logs in {}; the log ends with:\n{}", f.dir.display(), tail.join("\n"));
        }
        assert!(Instant::now() < deadline, "{pipeline} did not catch up: PostgreSQL at {in_pg}, Kafka at {in_kafka}, input {}; logs in {}", f.total, f.dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = f.dir.join(format!("{pipeline}-{run}.log"));
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("engine started") {
        assert!(Instant::now() < deadline, "{pipeline}: the engine did not start; log {}", log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(term.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{pipeline}: exit status after SIGTERM; logs in {}", f.dir.display());
}

/// Waits until `pipeline` stored some progress (so that an interruption lands mid-run).
async fn started(f: &Fixture, pipeline: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_offsets(f, pipeline).await.0 == 0 {
        assert!(Instant::now() < deadline, "{pipeline} stored no progress; logs in {}", f.dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `pipeline` over the first half of the input, stops the broker for `secs` mid-run, then
/// writes the second half once it is back; the results must equal the reference's.
async fn broker_away(f: &Fixture, reference: &(BTreeMap<String, Vec<String>>, Vec<String>), pipeline: &str, secs: u64) {
    let topo = topology(f, pipeline);
    let half = f.lines.len() / 2;
    f.produce(pipeline, 0..half).await;
    let debug: &[(&str, &str)] = if pipeline == "lost" { &[("RUST_LOG", "info,librdkafka=debug")] } else { &[] };
    let child = spawn_with(f, &topo, 0, debug);
    started(f, pipeline).await;
    service("kafka.sh", "stop-server");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    service("kafka.sh", "start-server");
    f.produce(pipeline, half..f.lines.len()).await;
    finish(f, pipeline, child, 0).await;
    assert_same_as_reference(f, reference, pipeline).await;
}

async fn assert_same_as_reference(f: &Fixture, reference: &(BTreeMap<String, Vec<String>>, Vec<String>), pipeline: &str) {
    let got = tables(f, pipeline).await;
    for (table, rows) in &reference.0 {
        let other = &got[table];
        if rows != other {
            let missing: Vec<&String> = rows.iter().filter(|r| !other.contains(r)).take(3).collect();
            let extra: Vec<&String> = other.iter().filter(|r| !rows.contains(r)).take(3).collect();
            panic!("{pipeline}: table {table} differs from the reference ({} rows vs {}); missing e.g. {missing:?}; extra e.g. {extra:?}", other.len(), rows.len());
        }
    }
    let out = alerts(f, pipeline);
    assert_eq!(out.len(), reference.1.len(), "{pipeline}: read_committed alert count");
    assert!(out == reference.1, "{pipeline}: read_committed alerts differ from the reference");
}

fn service(script: &str, cmd: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services").join(script);
    let st = Command::new(&path).arg(cmd).status().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(st.success(), "{script} {cmd} failed");
}

/// A small deterministic generator for the kill instants (the seed is printed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A fixture for the test `tag` (its own schema, topics and log folder), with the whole input
/// written to the topic of `first`.
async fn fixture(tag: &str, first: &str) -> Fixture {
    let run = format!("{}_{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis());
    let dir = std::env::temp_dir().join(format!("meltstream-{tag}-{run}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut f = Fixture {
        brokers: env("KAFKA_BOOTSTRAP"),
        db_url: env("DATABASE_URL"),
        schema: format!("{tag}_{run}"),
        prefix: format!("ispm-{tag}-{run}"),
        dir,
        lines: input_lines(),
        end_offsets: BTreeMap::new(),
        total: 0,
    };
    f.produce(first, 0..f.lines.len()).await;
    f.end_offsets = end_offsets(&f.brokers, &f.input_topic(first));
    f.total = f.end_offsets.values().sum();
    assert_eq!(f.total as usize, f.lines.len(), "every input message written");
    eprintln!("input: {} messages in {} partitions; logs in {}", f.total, f.end_offsets.len(), f.dir.display());
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_exactly_once_across_crashes_outages_and_broker_restarts() {
    let f = fixture("xo", "reference").await;
    let half = f.lines.len() / 2;

    // The reference: one uninterrupted run. Dead letters name their topic and partition.
    let topo = topology(&f, "reference");
    finish(&f, "reference", spawn(&f, &topo, 0), 0).await;
    let reference = (tables(&f, "reference").await, alerts(&f, "reference"));
    let count = |t: &str| reference.0.get(t).map_or(0, Vec::len);
    assert!(count("layer_summaries") >= 3 * 4 * 2, "layer summaries of every build, layer and laser: {}", count("layer_summaries"));
    assert!(count("anomalies") > 0, "the injected anomalies raise alerts");
    assert!(count("dead_letters") > 0, "the malformed records are dead-lettered");
    // Per input and 200 ms of event time: the windows the partitions moved past, with the
    // decode-time dead letters among their records.
    assert!(count("input_quality") >= 3, "input quality windows: {}", count("input_quality"));
    assert!(reference.0["input_quality"].iter().any(|r| !r.contains("\"dead_letters\": 0,")), "some window counted dead letters");
    for kind in ["invalid_json", "wrong_schema", "too_large", "unknown_build", "out_of_range"] {
        assert!(reference.0["dead_letters"].iter().any(|r| r.contains(&format!("\"reason_kind\": \"{kind}\""))), "a {kind} dead letter");
    }
    assert!(!reference.1.is_empty(), "alerts reach the Kafka sink");
    let c = pg(&f.db_url).await;
    let q = format!("SELECT count(*) FROM {}.dead_letters WHERE pipeline = 'reference' AND topic = $1 AND partition IS NOT NULL", f.schema);
    let named: i64 = c.query_one(&q, &[&f.input_topic("reference")]).await.expect("dead letters").get(0);
    assert_eq!(named as usize, count("dead_letters"), "every dead letter names its topic and partition");

    // SIGKILL at random instants, restarting each time; the input arrives in three parts.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill instants seed: {seed}");
    let mut rng = Lcg(seed);
    let topo = topology(&f, "crash");
    let third = f.lines.len() / 3;
    f.produce("crash", 0..third).await;
    // First, the worst instant for the Kafka sink: right after a transaction with alerts
    // committed, before the next one stores the progress that covers them.
    let child = spawn_with(&f, &topo, 100, &[("MELTSTREAM_FAULT_ABORT_AFTER_KAFKA_TX", "1")]);
    let status = exit_of(&f, child, 120, "abort after its first Kafka transaction with alerts").await;
    assert!(!status.success(), "aborted by the fault hook: {status}");
    eprintln!("crash run 100: aborted right after a Kafka commit; stored {:?}", stored_offsets(&f, "crash").await);
    for i in 0..6 {
        // Kill once the engine is working: after its stored progress moved, at a random instant.
        let before = stored_offsets(&f, "crash").await;
        let mut child = spawn(&f, &topo, i);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored_offsets(&f, "crash").await == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ms = rng.next(800);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("crash run {i}: killed {ms} ms after progress moved; stored {:?}", stored_offsets(&f, "crash").await);
        match i {
            1 => f.produce("crash", third..2 * third).await,
            3 => f.produce("crash", 2 * third..f.lines.len()).await,
            _ => {}
        }
    }
    finish(&f, "crash", spawn(&f, &topo, 6), 6).await;
    assert_same_as_reference(&f, &reference, "crash").await;

    // PostgreSQL down for 30 s mid-run, while the second half of the input arrives.
    let topo = topology(&f, "outage");
    f.produce("outage", 0..half).await;
    let child = spawn(&f, &topo, 0);
    started(&f, "outage").await;
    service("postgres.sh", "stop-server");
    f.produce("outage", half..f.lines.len()).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    service("postgres.sh", "start-server");
    finish(&f, "outage", child, 0).await;
    assert_same_as_reference(&f, &reference, "outage").await;

    // The broker restarted mid-run; the second half arrives after it is back.
    broker_away(&f, &reference, "bounce", 3).await;

    // The broker away for longer than the group session (6 s here): the consumer loses its
    // partitions while running. Their builds go without emitting their open windows; when the
    // group assigns them again, the engine reads their stored progress and takes them back,
    // without a restart.
    broker_away(&f, &reference, "lost", 10).await;
    let log = without_colours(&std::fs::read_to_string(f.dir.join("lost-0.log")).unwrap_or_default());
    assert!(log.contains("partition revoked") && log.contains("lost=true"), "lost: the partitions were lost while running; logs in {}", f.dir.display());
    let partitions = f.end_offsets.len();
    assert!(log.matches("partition taken").count() >= 2 * partitions, "lost: the partitions were taken again; logs in {}", f.dir.display());
    assert!(!log.contains("restarting the engine"), "lost: no engine restart; logs in {}", f.dir.display());

    // A sink that fails fatally twice: the root supervisor's restart intensity (5 within 60 s
    // by default) starts the engine again from the stored progress each time; nothing is lost
    // or duplicated.
    let topo = topology(&f, "flaky");
    f.produce("flaky", 0..f.lines.len()).await;
    finish(&f, "flaky", spawn_with(&f, &topo, 0, &[("MELTSTREAM_FAULT_FAIL_PG_FLUSHES", "2")]), 0).await;
    assert_same_as_reference(&f, &reference, "flaky").await;
    let log = std::fs::read_to_string(f.dir.join("flaky-0.log")).unwrap_or_default();
    assert_eq!(log.matches("a part of the engine failed; restarting the engine").count(), 2, "flaky: two restarts; logs in {}", f.dir.display());

    two_instances_and_a_zombie(&f, &reference).await;
}

/// Two engine processes run the same topology as instances `a` and `b` in one consumer group
/// and share its partitions. `a` is paused (SIGSTOP) past the session timeout, so `b` takes
/// all the partitions; the rest of the input arrives; `a` resumes (SIGCONT) believing it still
/// owns its partitions. The stores fence it (the broker by its stale generation, PostgreSQL by
/// the progress epoch), the group settles, and the results equal the uninterrupted reference.
async fn two_instances_and_a_zombie(f: &Fixture, reference: &(BTreeMap<String, Vec<String>>, Vec<String>)) {
    let pipeline = "two";
    let topo = topology(f, pipeline);
    let half = f.lines.len() / 2;
    f.produce(pipeline, 0..half).await;
    let mut a = spawn_with(f, &topo, 0, &[("MELTSTREAM_INSTANCE", "a")]);
    started(f, pipeline).await;
    let b = spawn_with(f, &topo, 1, &[("MELTSTREAM_INSTANCE", "b")]);
    let log_of = |run: usize| std::fs::read_to_string(f.dir.join(format!("{pipeline}-{run}.log"))).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_of(1).contains("partition taken") {
        assert!(Instant::now() < deadline, "instance b got no partition; logs in {}", f.dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log_of(1).contains("running as instance b"), "instance b named; logs in {}", f.dir.display());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signal = |sig: &str, pid: u32| assert!(Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill").success());
    signal("STOP", a.id());
    tokio::time::sleep(Duration::from_secs(10)).await;
    f.produce(pipeline, half..f.lines.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal("CONT", a.id());

    // Both run until every offset is stored in both stores, then stop.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (in_pg, in_kafka) = stored_offsets(f, pipeline).await;
        if in_pg == f.total && in_kafka == f.total {
            break;
        }
        assert!(Instant::now() < deadline, "{pipeline} did not catch up: PostgreSQL at {in_pg}, Kafka at {in_kafka}, input {}; logs in {}", f.total, f.dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (mut child, name) in [(b, "b"), (std::mem::replace(&mut a, spawn_idle()), "a")] {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("instance {name} exited early with {status}; logs in {}", f.dir.display());
        }
        signal("TERM", child.id());
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "instance {name}: exit status after SIGTERM; logs in {}", f.dir.display());
    }
    assert_same_as_reference(f, reference, pipeline).await;
}

/// Waits up to `secs` for an engine that should exit by itself (`what` it should do first).
async fn exit_of(f: &Fixture, mut child: Engine, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the engine did not {what} within {secs} s; logs in {}", f.dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A placeholder child (already exited) to move an engine out of a binding.
fn spawn_idle() -> Engine {
    Engine(Command::new("true").spawn().expect("spawn true"))
}

/// A sink that keeps failing: after `max_restarts` (2 here) restarts within the window the
/// failure escalates and the process exits with it, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_beyond_the_restart_intensity_escalates() {
    let f = fixture("esc", "escalate").await;
    let topo = topology(&f, "escalate");
    let child = spawn_with(&f, &topo, 0, &[("MELTSTREAM_FAULT_FAIL_PG_FLUSHES", "1000")]);
    let status = exit_of(&f, child, 180, "give up").await;
    assert!(!status.success(), "escalated with a failure status: {status}");
    let log = std::fs::read_to_string(f.dir.join("escalate-0.log")).unwrap_or_default();
    assert_eq!(log.matches("a part of the engine failed; restarting the engine").count(), 2, "two restarts first; logs in {}", f.dir.display());
    assert!(log.contains("escalating: the engine failed 3 times within 600 s (engine.max_restarts = 2)"), "the reason it gave up; logs in {}", f.dir.display());
    assert!(log.contains("MELTSTREAM_FAULT_FAIL_PG_FLUSHES"), "the last failure named; logs in {}", f.dir.display());
}

/// `meltstream reset` makes a pipeline start over: after it, PostgreSQL holds no row or progress
/// of the pipeline, its consumer group has no offsets, and the next run computes the same
/// results again from the beginning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_makes_a_pipeline_start_over() {
    let f = fixture("reset", "again").await;
    let topo = topology(&f, "again");
    finish(&f, "again", spawn(&f, &topo, 0), 0).await;
    let first = tables(&f, "again").await;
    assert!(first.get("layer_summaries").is_some_and(|r| !r.is_empty()), "the first run wrote results");

    // The stopped engine's static member stays in the group until its session (6 s) expires:
    // until then `reset` refuses, saying why, and changes nothing in Kafka.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_meltstream")).arg("reset").arg(&topo).output().expect("meltstream reset");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            assert!(stdout.contains(&format!("deleted consumer group {}", f.group("again"))), "reset output: {stdout}");
            break;
        }
        assert!(stderr.contains("session.timeout.ms"), "reset failed for another reason: {stderr}");
        assert!(Instant::now() < deadline, "reset kept failing: {stderr}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(stored_offsets(&f, "again").await, (0, 0), "no progress left in PostgreSQL or in the group");
    let empty = tables(&f, "again").await;
    assert!(empty.values().all(Vec::is_empty), "no rows left: {:?}", empty.iter().map(|(t, r)| (t, r.len())).collect::<Vec<_>>());

    finish(&f, "again", spawn(&f, &topo, 1), 1).await;
    assert_eq!(tables(&f, "again").await, first, "the run after the reset computes the same rows");
}

/// `log` without its ANSI colour codes (`ESC [ … m`), so that `key=value` fields match.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
