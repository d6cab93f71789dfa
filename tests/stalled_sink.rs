//! A stalled sink: the sources slow down, memory stays bounded, and nothing is lost once the sink
//! resumes (DESIGN §3.3).
//!
//! The sink stays stalled for two minutes (`MELTSTREAM_STALL_SECS` to change it) while the
//! test samples the process's resident memory twice a second. The bound it checks is the
//! memory budget (8 MiB, which covers every queue of the data path: batches read and not routed,
//! batches queued for the build actors, records waiting for the sink) plus a stated fixed
//! overhead of 24 MiB for what the budget does not count: the engine's actors and their open
//! windows, the records one build actor holds while it waits for the sink's credits, tokio's and
//! ractor's threads and the allocator's retained pages.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meltstream_actors::engine_stats::EngineStats;
use meltstream_actors::test_util::StallSink;
use meltstream_actors::EngineBuilder;
use meltstream_engine::records::OutputRecord;
use meltstream_engine::topology;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |k| k / 1024.0)
}

/// The topology's `memory_budget_mb`.
const BUDGET_MIB: f64 = 8.0;
/// What the budget does not count (module docs).
const FIXED_OVERHEAD_MIB: f64 = 24.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sink_applies_backpressure_and_loses_nothing() {
    let text = r#"name = "stall"
[engine]
summary_interval_ms = 0
memory_budget_mb = 8
source_queue_batches = 2
sink_queue_records = 4
[[sources]]
name = "fleet"
type = "simulator"
machines = 2
lasers = 4
sample_rate_hz = 100000
layers = 6
layer_ms = 500
recoat_ms = 50
[[windows.time]]
name = "w10"
kind = "tumbling"
channel = "photodiode_on_axis"
size_ms = 10
[[sinks]]
name = "out"
type = "null"
"#;
    let t = topology::load(text, "stall.toml", Path::new(".")).expect("topology");
    let total = 2 * 4 * 6 * 50_000u64;
    let sink = StallSink::default();
    sink.stalled.store(true, Ordering::SeqCst);
    let rss0 = rss_mib();
    let h = EngineBuilder::new(t).sink_writer("out", Box::new(sink.clone())).start().await.expect("start");
    let stats = h.stats.clone();
    // Wait until the engine is blocked: routed samples stop moving.
    let mut last = u64::MAX;
    let mut still = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = EngineStats::get(&stats.samples);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 5 {
            break;
        }
    }
    assert!(still >= 5, "the sources kept going while the sink was stalled");
    assert!(last < total, "everything got through a stalled sink: {last} of {total}");
    let stall = Duration::from_secs(std::env::var("MELTSTREAM_STALL_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(120));
    let until = std::time::Instant::now() + stall;
    let mut peak = rss_mib();
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_mib());
    }
    assert_eq!(EngineStats::get(&stats.samples), last, "samples moved through a stalled sink");
    let grown = peak - rss0;
    println!("resident memory: {rss0:.1} MiB before the engine, peak {peak:.1} MiB over a {} s stall (+{grown:.1} MiB)", stall.as_secs());
    assert!(grown < BUDGET_MIB + FIXED_OVERHEAD_MIB, "resident memory grew by {grown:.1} MiB with an {BUDGET_MIB} MiB budget and {FIXED_OVERHEAD_MIB} MiB of fixed overhead");
    assert!(sink.waits.load(Ordering::Relaxed) > 0);
    sink.stalled.store(false, Ordering::SeqCst);
    let stats = h.wait().await.expect("run");
    assert_eq!(EngineStats::get(&stats.samples), total);
    let records = sink.inner.take();
    let windowed: u64 = records.iter().filter_map(|r| if let OutputRecord::Window(w) = r { Some(w.count) } else { None }).sum();
    assert_eq!(windowed, total, "every sample is in exactly one 10 ms window");
}
