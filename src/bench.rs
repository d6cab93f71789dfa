//! `meltstream bench r1|r2`: the reference workloads of DESIGN §4 through the whole engine
//! (generator source → router → build actors → windows → null sink), printing the command line,
//! the machine, throughput, peak resident memory and result-latency percentiles (hdrhistogram).

use std::time::Instant;

use anyhow::Context;
use meltstream_actors::engine_stats::EngineStats;
use meltstream_actors::EngineBuilder;
use meltstream_engine::topology;

/// Which workload.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Workload {
    /// Per-sample events, 8 builds, 1 s tumbling windows.
    R1,
    /// A fleet of 4-laser machines sending 1 ms sample blocks.
    R2,
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

/// Runs a workload and prints its figures.
pub fn run(w: Workload, samples: Option<u64>, machines: u32, layers: u32, real_pace: bool) -> anyhow::Result<()> {
    let text = match w {
        Workload::R1 => r1_topology(samples.unwrap_or(50_000_000)),
        Workload::R2 => r2_topology(machines, layers, real_pace),
    };
    let t = topology::load(&text, "bench", std::path::Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!("machine: {} cores, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default());
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
    if let Some(h) = stats.latencies() {
        println!(
            "result latency (origin → durable in the sink), µs: p50 {} p99 {} p99.9 {} max {} (n = {})",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            h.len()
        );
    }
    Ok(())
}
