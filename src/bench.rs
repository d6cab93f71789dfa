//! `meltstream bench r1|r2|kafka-pg|json`: the reference workloads of DESIGN §4 through the whole
//! engine, printing the command line, the machine, what was prepared outside the clock,
//! throughput, peak resident memory and result-latency percentiles (hdrhistogram) per kind
//! (window close, alert) and stage (taken by the sink, durable).
//!
//! - `r1`, `r2`: the topology `benches/r1.toml` or `benches/r2.toml` (embedded, or
//!   `--topology FILE`): generator source → router → build actors → windows → null sink.
//! - `kafka-pg`: `benches/kafka-pg.toml`. R2's stream is written to a fresh Kafka topic first by
//!   a child process (not timed; its memory is reported apart), then Kafka source → engine →
//!   PostgreSQL sink with exactly-once on, timed from the engine's start until every offset is
//!   stored with its results. Needs `KAFKA_BOOTSTRAP` and `DATABASE_URL`.
//!   With `--processes N` (N > 1) the engines are N child processes (`meltstream bench-engine`,
//!   instances `p1`…`pN` of one consumer group), timed from their start until the PostgreSQL
//!   progress of every partition reaches the end (`bench/processes.rs`).
//! - `json`: the JSON decoder alone on one thread (`bench/json.rs`).
//!
//! The command-line options are overrides of the loaded topology (`bench/topologies.rs`); an
//! option a workload cannot apply is refused, never ignored.

mod json;
mod processes;
mod producer;
mod report;
mod topologies;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use meltstream_actors::engine_stats::EngineStats;
use meltstream_actors::EngineBuilder;
use meltstream_engine::topology::{expand_env, SinkKind, SourceKind, Topology};

pub use processes::engine_child;
pub use producer::run_child as produce_child;
pub use topologies::Overrides;

/// Which workload.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Workload {
    /// benches/r1.toml: per-sample events, 8 builds, 1 s tumbling windows.
    R1,
    /// benches/r2.toml: a fleet of 4-laser machines sending 1 ms sample blocks.
    R2,
    /// benches/kafka-pg.toml: R2's blocks through Kafka into PostgreSQL, exactly-once on.
    KafkaPg,
    /// The JSON decoder alone, on one core: the seed's one-event messages and R2's blocks.
    Json,
}

/// Runs a workload and prints its figures.
pub fn run(w: Workload, topology: Option<&Path>, o: Overrides, processes: u32) -> anyhow::Result<()> {
    let refuse = |what: &str, given: bool| -> anyhow::Result<()> {
        anyhow::ensure!(!given, "{what} does not apply to `bench {}`", format!("{w:?}").to_lowercase());
        Ok(())
    };
    if !matches!(w, Workload::KafkaPg) {
        refuse("--processes", processes != 1)?;
    }
    match w {
        Workload::R1 => {
            refuse("--machines/--layers/--real-pace", o.machines.is_some() || o.layers.is_some() || o.real_pace)?;
            engine_only(topologies::R1, "r1.toml", topology, o)
        }
        Workload::R2 => {
            refuse("--samples", o.samples.is_some())?;
            engine_only(topologies::R2, "r2.toml", topology, o)
        }
        Workload::KafkaPg => {
            refuse("--samples", o.samples.is_some())?;
            refuse("--real-pace", o.real_pace)?;
            kafka_pg(topology, o, processes)
        }
        Workload::Json => {
            refuse("--topology", topology.is_some())?;
            refuse("--real-pace", o.real_pace)?;
            json::run(o.samples.unwrap_or(2_000_000), &Overrides { samples: None, ..o })
        }
    }
}

/// Loads a bench topology and applies the overrides; prints where it came from and what changed.
fn prepare(embedded: &str, name: &str, file: Option<&Path>, o: &Overrides) -> anyhow::Result<Topology> {
    let (mut t, origin) = topologies::load(embedded, name, file)?;
    let changed = o.apply(&mut t)?;
    println!("topology: {origin}{}", if changed.is_empty() { String::new() } else { format!(", overridden: {}", changed.join(", ")) });
    Ok(t)
}

/// R1, R2: a generator source inside the engine, so nothing is prepared outside the clock.
fn engine_only(embedded: &str, name: &str, file: Option<&Path>, o: Overrides) -> anyhow::Result<()> {
    report::print_command_and_machine();
    let t = prepare(embedded, name, file, &o)?;
    println!("outside the clock: nothing (the source generates its samples inside the engine, on the clock)");
    println!("clock: from the engine's start until every source has ended and every sink has drained");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    let t2 = t.clone();
    let (stats, secs) = rt.block_on(async move {
        let start = Instant::now();
        let h = EngineBuilder::new(t2).start().await?;
        let stats = h.wait().await?;
        anyhow::Ok((stats, start.elapsed().as_secs_f64()))
    })?;
    let n = EngineStats::get(&stats.samples);
    println!("samples: {n} in {secs:.2} s = {:.2} M samples/s", n as f64 / secs / 1e6);
    println!("peak resident memory (VmHWM, this process: the engine): {:.1} MiB", report::mib(report::peak_rss_kib("self")));
    println!("records durable: {}", EngineStats::get(&stats.records_durable));
    report::print_latency(&stats, &t);
    Ok(())
}

/// The kafka-pg topology of run `run` (`bench-<run>`): its own pipeline, consumer group and
/// input topic (returned), and what changed.
fn kafka_pg_topology(file: Option<&Path>, run: &str) -> anyhow::Result<(Topology, String, String, Vec<String>)> {
    let (mut t, origin) = topologies::load(topologies::KAFKA_PG, "kafka-pg.toml", file)?;
    let topic = format!("bench-r2-{run}");
    let mut changed = topologies::rename(&mut t, &format!("bench-{run}"));
    let kafka = t
        .sources
        .iter_mut()
        .find_map(|s| match &mut s.kind {
            SourceKind::Kafka(c) => Some(c),
            _ => None,
        })
        .with_context(|| format!("{origin} has no kafka source"))?;
    kafka.topics = vec![topic.clone()];
    changed.push(format!("sources[type = \"kafka\"].topics = [{topic:?}]"));
    Ok((t, origin, topic, changed))
}

fn kafka_pg(file: Option<&Path>, o: Overrides, processes: u32) -> anyhow::Result<()> {
    report::print_command_and_machine();
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0).to_string();
    let (t, origin, topic, changed) = kafka_pg_topology(file, &run)?;
    let brokers = t
        .sources
        .iter()
        .find_map(|s| match &s.kind {
            SourceKind::Kafka(c) => Some(expand_env(&c.brokers)),
            _ => None,
        })
        .unwrap_or_default();
    anyhow::ensure!(!brokers.is_empty(), "no Kafka brokers: set KAFKA_BOOTSTRAP, e.g. eval \"$(scripts/services/kafka.sh env)\" after scripts/services/kafka.sh start");
    for s in &t.sinks {
        if let SinkKind::Postgres(c) = &s.kind {
            anyhow::ensure!(!expand_env(&c.url).is_empty(), "no PostgreSQL URL ({:?} expands to nothing): set DATABASE_URL, e.g. eval \"$(scripts/services/postgres.sh env)\" after scripts/services/postgres.sh start", c.url);
        }
    }
    println!("topology: {origin}, overridden: {}", changed.join(", "));
    let input = topologies::r2_input(&o)?;
    println!(
        "outside the clock: a child process (`meltstream bench-produce`) writes the simulator stream of benches/r2.toml ({} machines, {} layer(s)) to {topic} as JSON messages keyed by build, and exits before the engine starts",
        input.machines, input.layers
    );
    let p = producer::spawn(&brokers, &topic, o.machines, o.layers)?;
    println!("input: {} messages, {} samples written in {:.1} s; producer peak resident memory (VmHWM of the child): {:.1} MiB", p.messages, p.samples, p.secs, report::mib(p.peak_rss_kib));
    if processes > 1 {
        return processes::run(&t, file, &run, processes, p.messages, p.samples);
    }
    println!("clock: from the engine's start until every offset is stored in PostgreSQL with its results (the last transaction included)");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    let t2 = t.clone();
    let messages = p.messages;
    let (stats, secs) = rt.block_on(async move {
        let start = Instant::now();
        let h = EngineBuilder::new(t2).start().await?;
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
        anyhow::Ok((stats, start.elapsed().as_secs_f64()))
    })?;
    let n = EngineStats::get(&stats.samples);
    println!("samples: {n} in {secs:.2} s = {:.2} M samples/s (Kafka → engine → PostgreSQL, exactly-once)", n as f64 / secs / 1e6);
    println!(
        "peak resident memory (VmHWM): engine {:.1} MiB (this process, which ran no producer), producer {:.1} MiB (the child)",
        report::mib(report::peak_rss_kib("self")),
        report::mib(p.peak_rss_kib)
    );
    println!("records durable in PostgreSQL: {}", EngineStats::get(&stats.records_durable));
    report::print_latency(&stats, &t);
    Ok(())
}
