//! What every bench prints besides its throughput: the command line, the machine, peak resident
//! memory (`VmHWM`) of a process, and the result-latency percentiles per kind and stage, each
//! with where its clock starts and stops.
//!
//! Only reads and prints; never measures time itself.

use meltstream_actors::engine_stats::{EngineStats, LatencyKind, LatencyStage};
use meltstream_actors::sinks::file::NULL_SINK_FLUSH_MS;
use meltstream_engine::topology::{SinkKind, Topology};


/// Prints the command line and the machine.
pub fn print_command_and_machine() {
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default()
    );
}

/// Peak resident memory (`VmHWM`) of `pid` (`"self"` for this process), KiB.
pub fn peak_rss_kib(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// KiB as MiB for printing (NaN when unknown).
pub fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// Flush interval of each sink of `t`: (name, kind, ms).
fn flush_intervals(t: &Topology) -> Vec<(String, &'static str, u64)> {
    t.sinks
        .iter()
        .map(|s| match &s.kind {
            SinkKind::Null(_) => (s.name.clone(), "null", NULL_SINK_FLUSH_MS),
            SinkKind::File(c) => (s.name.clone(), "file", c.flush_ms),
            SinkKind::Postgres(c) => (s.name.clone(), "postgres", c.flush_ms),
            SinkKind::Sqlite(c) => (s.name.clone(), "sqlite", c.flush_ms),
            SinkKind::Kafka(c) => (s.name.clone(), "kafka", c.flush_ms),
            SinkKind::Redis(c) => (s.name.clone(), "redis", c.flush_ms),
            SinkKind::Webhook(c) => (s.name.clone(), "webhook", c.flush_ms),
            SinkKind::Airflow(c) => (s.name.clone(), "airflow", c.flush_ms),
        })
        .collect()
}

/// Prints window-close and alert latency p50/p99/p99.9/max, to the sink and durable, saying
/// where each clock starts and stops. With only null sinks the figure to the sink is the
/// headline: their durable figure is mostly the wait for the next flush tick.
pub fn print_latency(stats: &EngineStats, t: &Topology) {
    let sinks = flush_intervals(t);
    let only_null = sinks.iter().all(|(_, kind, _)| *kind == "null");
    let flushes = sinks.iter().map(|(n, k, ms)| format!("sink `{n}` ({k}) every {ms} ms")).collect::<Vec<_>>().join(", ");
    println!("result latency, µs (hdrhistogram over every result of the run; sink flushes: {flushes}):");
    for kind in [LatencyKind::WindowClose, LatencyKind::Alert] {
        let (what, start) = match kind {
            LatencyKind::WindowClose => ("window close (layer summaries, grids, time windows)", "the wall time at which the watermark coordinator computed the watermark that passed the window's end"),
            _ => ("alert (anomalies)", "the wall time at which the source read (or generated) the sample's record"),
        };
        println!("  {what}: clock starts at {start}");
        for stage in [LatencyStage::AtSink, LatencyStage::Durable] {
            let headline = (stage == LatencyStage::AtSink) == only_null;
            let stop = match stage {
                LatencyStage::AtSink => "the sink actor took the record (before waiting for its flush)".to_owned(),
                _ if only_null => format!("the sink's flush returned (includes the wait for the flush tick: {flushes})"),
                _ => format!("the sink's flush (transaction) returned: durable ({flushes})"),
            };
            let figures = match stats.latencies(kind, stage) {
                Some(h) if !h.is_empty() => format!("p50 {} p99 {} p99.9 {} max {} (n = {})", h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max(), h.len()),
                _ => "none (n = 0)".to_owned(),
            };
            println!("    {} {stage:?}: {figures}; stops when {stop}", if headline { "*" } else { " " });
        }
    }
    println!("  (* the headline figure: {})", if only_null { "to the sink, since a null sink's durable figure is its flush tick" } else { "durable" });
}
