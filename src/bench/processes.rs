//! `bench kafka-pg --processes N`: the same topology run by N engine processes sharing one
//! consumer group (instances `p1`…`pN`, `meltstream run --instance` semantics), to show how
//! Kafka → PostgreSQL throughput scales with processes on one machine.
//!
//! The clock starts when the children are spawned (their start-up, group joins and the
//! rebalances while they join are on it) and stops when the PostgreSQL `progress` rows of the
//! pipeline sum to the number of input messages (every offset stored with its results). The
//! children are then stopped with SIGTERM. Each child's peak resident memory is read just before.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use meltstream_actors::sinks::postgres::admin::query_text;
use meltstream_engine::topology::{expand_env, SinkKind, Topology};

use crate::bench::report;

/// Runs `n` engine children over the input already in the topic; prints the figures.
pub fn run(t: &Topology, file: Option<&Path>, run: &str, n: u32, messages: u64, samples: u64) -> anyhow::Result<()> {
    let (url, schema, pipeline) = t
        .sinks
        .iter()
        .find_map(|s| match &s.kind {
            SinkKind::Postgres(c) => Some((expand_env(&c.url), c.schema.clone(), c.pipeline.clone())),
            _ => None,
        })
        .context("the kafka-pg topology has no postgres sink")?;
    println!("processes: {n} engines (`meltstream bench-engine`, instances p1..p{n}) in one consumer group");
    println!("clock: from spawning the engines until the PostgreSQL progress of every partition reaches the end of the input (start-up, group joins and rebalances included)");
    let exe = std::env::current_exe().context("the meltstream binary")?;
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    for k in 1..=n {
        let mut c = Command::new(&exe);
        c.arg("bench-engine").arg("--run").arg(run).arg("--instance").arg(format!("p{k}"));
        if let Some(f) = file {
            c.arg("--topology").arg(f);
        }
        children.push(c.stdout(Stdio::null()).spawn().context("spawning an engine")?);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let sql = format!("SELECT coalesce(sum(resume_offset), 0)::text FROM \"{}\".progress WHERE pipeline = '{}'", schema.replace('"', "\"\""), pipeline.replace('\'', "''"));
    let secs = rt.block_on(async {
        loop {
            let stored: u64 = query_text(&url, &sql).await.ok().and_then(|r| r.first()?.first()?.as_deref()?.parse().ok()).unwrap_or(0);
            if stored >= messages {
                return Ok(start.elapsed().as_secs_f64());
            }
            for c in &mut children {
                if let Some(st) = c.try_wait()? {
                    anyhow::bail!("an engine exited early with {st}");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let rss: Vec<String> = children.iter().map(|c| format!("{:.1}", report::mib(report::peak_rss_kib(&c.id().to_string())))).collect();
    for c in &mut children {
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    let secs = secs?;
    println!("samples: {samples} in {secs:.2} s = {:.2} M samples/s (Kafka → {n} engines → PostgreSQL, exactly-once)", samples as f64 / secs / 1e6);
    println!("peak resident memory (VmHWM) per engine, MiB: {}", rss.join(", "));
    Ok(())
}

/// `meltstream bench-engine`: one engine of a `--processes` run: the kafka-pg topology of run
/// `run` as instance `instance`, until SIGTERM.
pub fn engine_child(file: Option<&Path>, run: &str, instance: &str) -> anyhow::Result<()> {
    let (mut t, _, _, _) = crate::bench::kafka_pg_topology(file, run)?;
    t.for_instance(instance).map_err(|e| anyhow::anyhow!(e))?;
    crate::run(t, true)
}
