//! The terminal summary: per build, the current layer, samples/s and anomalies, every interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meltstream_actors::engine_stats::EngineStats;

/// Prints the summary every `ms` milliseconds until aborted.
pub async fn print_every(stats: Arc<EngineStats>, ms: u64) {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut at = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let dt = at.elapsed().as_secs_f64().max(1e-9);
        at = Instant::now();
        let builds = stats.builds();
        if builds.is_empty() {
            continue;
        }
        println!("{:<16} {:>6} {:>14} {:>10} {:>8}", "build", "layer", "samples/s", "anomalies", "late");
        for (b, c) in &builds {
            let prev = last.insert(b.clone(), c.samples).unwrap_or(0);
            let rate = (c.samples - prev.min(c.samples)) as f64 / dt;
            let layer = c.layer.map_or("-".to_string(), |l| l.to_string());
            println!("{b:<16} {layer:>6} {rate:>14.0} {:>10} {:>8}", c.anomalies, c.late_samples);
        }
        println!(
            "total: {} samples, {} dead letters, {} records durable, watermark {}",
            EngineStats::get(&stats.samples),
            EngineStats::get(&stats.dead_letters),
            EngineStats::get(&stats.records_durable),
            fmt_wm(stats.watermark_ns.load(std::sync::atomic::Ordering::Relaxed))
        );
    }
}

fn fmt_wm(wm: i64) -> String {
    match wm {
        i64::MIN | 0 => "-".into(),
        i64::MAX => "end".into(),
        t => meltstream_engine::input::time::format_rfc3339(t),
    }
}

/// Prints the totals once the engine has drained.
pub fn print_final(stats: &EngineStats) {
    let builds = stats.builds();
    let anomalies: u64 = builds.values().map(|c| c.anomalies).sum();
    let layers: u64 = builds.values().map(|c| c.layers_closed).sum();
    println!(
        "done: {} builds, {} layers closed, {} samples, {} anomalies, {} dead letters, {} records durable; committed offsets {:?}",
        builds.len(),
        layers,
        EngineStats::get(&stats.samples),
        anomalies,
        EngineStats::get(&stats.dead_letters),
        EngineStats::get(&stats.records_durable),
        stats.committed()
    );
}
