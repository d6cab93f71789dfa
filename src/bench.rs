//! `meltstream bench r1|r2|kafka-pg|json`: the reference workloads of DESIGN §4 through the whole
//! engine, printing the command line, the machine, throughput, peak resident memory and
//! result-latency percentiles (hdrhistogram).
//!
//! - `r1`, `r2`: generator source → router → build actors → windows → null sink.
//! - `kafka-pg`: R2 sample blocks written to a fresh Kafka topic first (not timed), then
//!   Kafka source → engine → PostgreSQL sink with exactly-once on (results and offsets in one
//!   transaction), timed from the engine's start until every offset is stored with its results.
//!   Needs `KAFKA_BOOTSTRAP` and `DATABASE_URL` (`scripts/services/*.sh start` and `env`).
//! - `json`: the JSON decoder alone on one thread (`--samples` events of the seed's format,
//!   then R2's blocks of `--machines` and `--layers`).

use std::time::Instant;

use anyhow::Context;
use meltstream_actors::engine_stats::{EngineStats, LatencyKind, LatencyStage};
use meltstream_actors::EngineBuilder;
use meltstream_engine::topology;

/// Which workload.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Workload {
    /// Per-sample events, 8 builds, 1 s tumbling windows.
    R1,
    /// A fleet of 4-laser machines sending 1 ms sample blocks.
    R2,
    /// R2's blocks through Kafka into PostgreSQL, exactly-once on.
    KafkaPg,
    /// The JSON decoder alone, on one core: the seed's one-event messages and R2's blocks.
    Json,
}

fn r1_topology(samples: u64) -> String {
    format!(
        r#"name = "bench-r1"
[engine]
watermark_bound_ms = 10
layer_gap_timeout_ms = 10
summary_interval_ms = 0
memory_budget_mb = 32
[[sources]]
name = "r1"
type = "r1"
builds = 8
samples = {samples}
batch_samples = 4096
[windows]
grid_channel = "temperature_c"
[[windows.time]]
name = "t1s"
kind = "tumbling"
channel = "temperature_c"
size_ms = 1000
[[rules]]
name = "over_1700"
channel = "temperature_c"
op = ">"
limit = 1700.0
cooldown_ms = 1000
[[sinks]]
name = "null"
type = "null"
"#
    )
}

fn r2_topology(machines: u32, layers: u32, real: bool) -> String {
    let demo = topology::DEMO_TOML;
    // The demo's windows and rules, a bigger fleet, a null sink.
    let rules_and_windows: String = demo[demo.find("[windows]").unwrap_or(0)..demo.find("[[sinks]]").unwrap_or(demo.len())].to_string();
    format!(
        r#"name = "bench-r2"
[engine]
watermark_bound_ms = 50
summary_interval_ms = 0
memory_budget_mb = 64
[[sources]]
name = "fleet"
type = "simulator"
machines = {machines}
lasers = 4
sample_rate_hz = 100000
layers = {layers}
layer_ms = 2000
recoat_ms = 200
pace = "{pace}"
{rules_and_windows}
[[sinks]]
name = "null"
type = "null"
"#,
        pace = if real { "real" } else { "fast" }
    )
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn kafka_pg_topology(brokers: &str, topic: &str, url: &str, pipeline: &str) -> String {
    let demo = topology::DEMO_TOML;
    let rules_and_windows: String = demo[demo.find("[windows]").unwrap_or(0)..demo.find("[[sinks]]").unwrap_or(demo.len())].to_string();
    format!(
        r#"name = "{pipeline}"
[engine]
watermark_bound_ms = 50
input_idle_timeout_ms = 500
summary_interval_ms = 0
memory_budget_mb = 128
source_queue_batches = 8
[[sources]]
name = "ispm"
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
batch_records = 512
{rules_and_windows}
[[sinks]]
name = "pg"
type = "postgres"
url = "{url}"
schema = "bench"
records = ["layer_summary", "grid", "window", "anomaly", "dead_letter"]
flush_ms = 20
"#
    )
}

/// Writes R2's stream (4 lasers at 100 kHz, 1 ms blocks) as JSON messages keyed by build;
/// returns (messages, samples).
async fn produce_r2(brokers: &str, topic: &str, machines: u32, layers: u32) -> anyhow::Result<(u64, u64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let cfg = topology::SimulatorConfig { machines, lasers: 4, sample_rate_hz: 100_000, layers, layer_ms: 2000, recoat_ms: 200, ..Default::default() };
    let mut sim = meltstream_engine::simulator::Simulator::new(&cfg, 0);
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .context("producer")?;
    let (mut messages, mut samples) = (0u64, 0u64);
    let mut text = String::new();
    let mut pending = Vec::new();
    while let Some(b) = sim.next_batch() {
        samples += b.sample_count();
        text.clear();
        meltstream_engine::input::encode::write_json_lines(&b, &mut text);
        for line in text.lines() {
            let key = line.split("\"build_id\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned();
            let f = p.send_result(FutureRecord::to(topic).key(key.as_str()).payload(line)).map_err(|(e, _)| e).context("enqueue")?;
            pending.push(f);
            messages += 1;
        }
        if pending.len() > 20_000 {
            for f in pending.drain(..) {
                f.await.context("delivery")?.map_err(|(e, _)| e).context("delivery")?;
            }
        }
    }
    for f in pending {
        f.await.context("delivery")?.map_err(|(e, _)| e).context("delivery")?;
    }
    Ok((messages, samples))
}

fn kafka_pg(machines: u32, layers: u32) -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BOOTSTRAP").context("KAFKA_BOOTSTRAP is not set: eval \"$(scripts/services/kafka.sh env)\" after scripts/services/kafka.sh start")?;
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set: eval \"$(scripts/services/postgres.sh env)\" after scripts/services/postgres.sh start")?;
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let topic = format!("bench-r2-{run}");
    let pipeline = format!("bench-{run}");
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    print_machine();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    rt.block_on(async move {
        let t0 = Instant::now();
        let (messages, samples) = produce_r2(&brokers, &topic, machines, layers).await?;
        println!("input: {messages} messages, {samples} samples written to {topic} in {:.1} s (not timed below)", t0.elapsed().as_secs_f64());
        let text = kafka_pg_topology(&brokers, &topic, &url, &pipeline);
        let t = topology::load(&text, "bench", std::path::Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let start = Instant::now();
        let h = EngineBuilder::new(t).start().await?;
        let board = h.progress.clone();
        // Every offset stored with its results: the board's checkpoint reached the end, and the
        // sink has written it (it does within flush_ms; the drain below writes the last one).
        loop {
            let stored: u64 = board.checkpoint().entries.iter().map(|(_, p)| p.resume).sum();
            if stored >= messages {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        h.shutdown();
        let stats = h.wait().await?;
        let secs = start.elapsed().as_secs_f64();
        let n = EngineStats::get(&stats.samples);
        println!("samples: {n} in {secs:.2} s = {:.2} M samples/s (Kafka → engine → PostgreSQL, exactly-once)", n as f64 / secs / 1e6);
        println!("peak resident memory: {:.1} MiB", peak_rss_mib());
        println!("records durable in PostgreSQL: {}", EngineStats::get(&stats.records_durable));
        print_latency(&stats, "result latency (window results: watermark passes the end → row committed in PostgreSQL; alerts: sample read → committed), µs");
        anyhow::Ok(())
    })
}

/// Decodes `lines` into batches of 512 records, `rounds` times; returns (records, seconds).
fn decode_lines(lines: &[String], rounds: usize) -> (u64, f64, u64) {
    use meltstream_engine::input::batch::RecordBatch;
    use meltstream_engine::input::decode::{DecodeLimits, Decoder};
    let mut d = Decoder::new(0, DecodeLimits::default());
    let now = 1_900_000_000_000_000_000;
    let (mut records, mut samples) = (0u64, 0u64);
    let start = Instant::now();
    for _ in 0..rounds {
        for chunk in lines.chunks(512) {
            // A fresh batch each time, as the Kafka source makes one per 512 records.
            let mut batch = RecordBatch::with_capacity(512);
            for (i, l) in chunk.iter().enumerate() {
                d.decode(l.as_bytes(), i as u64, now, &mut batch);
            }
            assert!(batch.dead.is_empty(), "bench input must decode: {:?}", batch.dead.first());
            records += chunk.len() as u64;
            samples += batch.sample_count();
        }
    }
    (records, start.elapsed().as_secs_f64(), samples)
}

/// `bench json`: the decoder alone on one thread. The seed's message (one sample each, with
/// varying values and times) and R2's 1 ms blocks as the simulator writes them.
fn json_decode(events: u64, machines: u32, layers: u32) -> anyhow::Result<()> {
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    print_machine();
    let distinct = 100_000usize.min(events as usize).max(1);
    let seed: Vec<String> = (0..distinct)
        .map(|i| {
            format!(
                r#"{{"build_id": "build_{:03}", "layer": {}, "timestamp": "2024-01-15T10:30:{:02}.{:06}Z", "temperature": {:.1}, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}}"#,
                i % 50,
                45 + i / 20_000,
                (i / 1_000_000) % 60,
                i % 1_000_000,
                1600.0 + (i % 1000) as f64 * 0.1
            )
        })
        .collect();
    let rounds = (events as usize).div_ceil(distinct);
    let (n, secs, _) = decode_lines(&seed, rounds);
    println!("seed format, one event per message: {n} events in {secs:.2} s = {:.2} M events/s on one core", n as f64 / secs / 1e6);
    let cfg = topology::SimulatorConfig { machines, lasers: 4, sample_rate_hz: 100_000, layers, layer_ms: 2000, recoat_ms: 200, ..Default::default() };
    let mut sim = meltstream_engine::simulator::Simulator::new(&cfg, 0);
    let mut text = String::new();
    while let Some(b) = sim.next_batch() {
        meltstream_engine::input::encode::write_json_lines(&b, &mut text);
    }
    let blocks: Vec<String> = text.lines().map(str::to_owned).collect();
    let bytes: usize = blocks.iter().map(String::len).sum();
    let (n, secs, samples) = decode_lines(&blocks, 1);
    println!(
        "R2 JSON blocks ({machines} machines, {layers} layer(s)): {n} messages, {samples} samples, {:.0} MB in {secs:.2} s = {:.2} M samples/s, {:.0} MB/s on one core",
        bytes as f64 / 1e6,
        samples as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

fn print_machine() {
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default()
    );
}

fn print_latency(stats: &EngineStats, what: &str) {
    for kind in [LatencyKind::WindowClose, LatencyKind::Alert] {
        for stage in [LatencyStage::AtSink, LatencyStage::Durable] {
            if let Some(h) = stats.latencies(kind, stage) {
                println!("{what} {kind:?} → {stage:?}: p50 {} p99 {} p99.9 {} max {} (n = {})", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max(), h.len());
            }
        }
    }
}

/// Runs a workload and prints its figures.
pub fn run(w: Workload, samples: Option<u64>, machines: u32, layers: u32, real_pace: bool) -> anyhow::Result<()> {
    let text = match w {
        Workload::R1 => r1_topology(samples.unwrap_or(50_000_000)),
        Workload::R2 => r2_topology(machines, layers, real_pace),
        Workload::KafkaPg => return kafka_pg(machines, layers),
        Workload::Json => return json_decode(samples.unwrap_or(2_000_000), machines, layers),
    };
    let t = topology::load(&text, "bench", std::path::Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    print_machine();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    let (stats, secs) = rt.block_on(async move {
        let start = Instant::now();
        let h = EngineBuilder::new(t).start().await?;
        let stats = h.wait().await?;
        anyhow::Ok((stats, start.elapsed().as_secs_f64()))
    })?;
    let n = EngineStats::get(&stats.samples);
    println!("samples: {n} in {secs:.2} s = {:.2} M samples/s", n as f64 / secs / 1e6);
    println!("peak resident memory: {:.1} MiB", peak_rss_mib());
    println!("records durable: {}", EngineStats::get(&stats.records_durable));
    print_latency(&stats, "result latency (origin → durable in the sink), µs");
    Ok(())
}
