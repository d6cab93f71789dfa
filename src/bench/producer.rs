//! The kafka-pg bench's input, written by a child process (`meltstream bench-produce`, hidden)
//! so that the engine's resident memory is measured apart from the producer's: the parent
//! spawns the child, waits for it, and reads the figures it prints on its last line (messages,
//! samples, its own peak `VmHWM`, read just before it exits).
//!
//! Never runs inside the engine's process.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use meltstream_engine::topology::SimulatorConfig;

use super::report;
use super::topologies::{self, Overrides};

/// What the child wrote.
#[derive(Debug)]
pub struct Produced {
    /// Kafka messages.
    pub messages: u64,
    /// Samples in them.
    pub samples: u64,
    /// The child's peak resident memory, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Wall time of the child, s.
    pub secs: f64,
}

/// Runs `meltstream bench-produce` in a child process and waits for it.
pub fn spawn(brokers: &str, topic: &str, machines: Option<u32>, layers: Option<u32>) -> anyhow::Result<Produced> {
    let exe = std::env::current_exe().context("locating the meltstream binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench-produce", "--brokers", brokers, "--topic", topic]);
    if let Some(m) = machines {
        cmd.args(["--machines", &m.to_string()]);
    }
    if let Some(l) = layers {
        cmd.args(["--layers", &l.to_string()]);
    }
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().context("running the producer child")?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "the producer child failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with("produced ")).with_context(|| format!("the producer child printed no figures: {stdout:?}"))?;
    let f: Vec<u64> = last.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    anyhow::ensure!(f.len() >= 2, "unreadable producer figures: {last:?}");
    Ok(Produced { messages: f[0], samples: f[1], peak_rss_kib: f.get(2).copied(), secs })
}

/// The child's side: writes R2's stream to `topic`, then prints
/// `produced <messages> <samples> <peak RSS KiB>`.
pub fn run_child(brokers: &str, topic: &str, machines: Option<u32>, layers: Option<u32>) -> anyhow::Result<()> {
    let cfg = topologies::r2_input(&Overrides { machines, layers, ..Default::default() })?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    let (messages, samples) = rt.block_on(produce(brokers, topic, &cfg))?;
    drop(rt);
    println!("produced {messages} {samples} {}", report::peak_rss_kib("self").unwrap_or(0));
    Ok(())
}

/// Writes the simulator's stream (sample blocks, layer events, logs) as JSON messages keyed by
/// build; returns (messages, samples).
async fn produce(brokers: &str, topic: &str, cfg: &SimulatorConfig) -> anyhow::Result<(u64, u64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut sim = meltstream_engine::simulator::Simulator::new(cfg, 0);
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
