//! `meltstream`: the command line. Thin by design: parse arguments, load and check a topology,
//! start the actor tree, wait for it to drain or for a signal.

mod admin;
mod bench;
mod dashboard;
mod export;
mod fuse;
mod reset;
mod score;
mod signals;
mod simulate;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use meltstream_actors::EngineBuilder;
use meltstream_engine::topology::{self, SourceKind, Topology};

#[derive(Parser)]
#[command(name = "meltstream", version, about = "Real-time stream processing for laser powder bed fusion in-situ monitoring")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a topology (the embedded demo when no file is given) until its sources end or SIGINT/SIGTERM.
    Run {
        /// Topology file.
        file: Option<PathBuf>,
        /// No terminal summary.
        #[arg(long)]
        quiet: bool,
        /// This process's instance id when several run the same topology in one consumer group
        /// (also `MELTSTREAM_INSTANCE`): derives its static member id and transactional ids
        /// (docs/operations.md).
        #[arg(long)]
        instance: Option<String>,
        /// Run to completion, for a quick look: each simulated machine runs one build, as fast
        /// as it can be computed (a long-running fleet otherwise runs until stopped).
        #[arg(long)]
        once: bool,
    },
    /// Check topology files; report every error with file, line, key and what was expected.
    Check {
        /// Topology files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Make a pipeline start over: delete its PostgreSQL rows and stored progress and its Kafka
    /// consumer group's offsets (stop the engine first).
    Reset {
        /// Topology file.
        topology: PathBuf,
    },
    /// Join a CT defect list (JSON lines or CSV) with the in-situ results of its builds, read from
    /// the topology's PostgreSQL sink; writes `fused_defects` and `fusion_summaries` there
    /// (replacing a previous fusion of the same builds) and prints precision and recall.
    Fuse {
        /// Topology whose results store holds the builds (its `[fusion]` sets the join).
        #[arg(long)]
        topology: PathBuf,
        /// CT defect list.
        #[arg(long)]
        ct: PathBuf,
        /// Only this build (default: every build in the list).
        #[arg(long)]
        build: Option<String>,
        /// Also write the fused defects and summaries as JSON lines here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write Parquet files for the ML side from the topology's PostgreSQL or SQLite results: layer
    /// features (per layer and laser) and fused defects, per build and layer range, each file
    /// written atomically; a second export replaces, never duplicates (docs/operations.md).
    Export {
        /// Topology whose results store holds the builds.
        #[arg(long)]
        topology: PathBuf,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
        /// Only this build (default: every build with results).
        #[arg(long)]
        build: Option<String>,
        /// Layers per layer-features file.
        #[arg(long, default_value_t = 50)]
        layers_per_file: u32,
    },
    /// Write the simulated fleet of a topology (the demo's by default) as JSON lines.
    Simulate {
        /// Topology whose first simulator source is used.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Output file (`-` for stdout).
        #[arg(long, default_value = "-")]
        out: PathBuf,
        /// Where to write the injected anomalies' ground truth (JSON lines).
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Where to write the CT defect list the builds would get (CSV when the name ends in
        /// `.csv`, JSON lines otherwise).
        #[arg(long)]
        ct: Option<PathBuf>,
        /// Override the number of machines.
        #[arg(long)]
        machines: Option<u32>,
        /// Override the number of layers.
        #[arg(long)]
        layers: Option<u32>,
        /// Override the layer exposure time, ms.
        #[arg(long)]
        layer_ms: Option<u64>,
        /// Override the seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Instead of writing the fleet, run it through the topology's engine and score what the
        /// engine flags against the injected anomalies, layer by layer (recall and precision).
        #[arg(long)]
        score: bool,
        /// Override the planted anomalies per layer (`anomaly_rate_per_layer`).
        #[arg(long)]
        anomaly_rate: Option<f64>,
    },
    /// Reference workloads of DESIGN §4, each a topology file under benches/ (embedded in the
    /// binary): `r1` (benches/r1.toml, per-sample events), `r2` (benches/r2.toml, a fleet of
    /// sample blocks), `kafka-pg` (benches/kafka-pg.toml, R2's blocks through Kafka into
    /// PostgreSQL, exactly-once; needs KAFKA_BOOTSTRAP and DATABASE_URL), or `json` (the JSON
    /// decoder alone on one core). The options below override the loaded topology; an option a
    /// workload cannot apply is refused.
    Bench {
        /// `r1`, `r2`, `kafka-pg` or `json`.
        workload: bench::Workload,
        /// Run this topology file instead of the embedded benches/<workload>.toml (r1, r2,
        /// kafka-pg); the overrides apply to it too.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// r1: override the r1 source's `samples` (file: 50,000,000). json: seed-format events to
        /// decode (default 2,000,000).
        #[arg(long)]
        samples: Option<u64>,
        /// r2: override the simulator's `machines` (file: 8). kafka-pg, json: machines of the
        /// R2 input (benches/r2.toml's simulator).
        #[arg(long)]
        machines: Option<u32>,
        /// r2: override the simulator's `layers` per build (file: 2). kafka-pg, json: layers of
        /// the R2 input.
        #[arg(long)]
        layers: Option<u32>,
        /// r2: override the simulator's pace to `real` (event time follows the wall clock).
        #[arg(long)]
        real_pace: bool,
        /// kafka-pg: run the engine as this many processes sharing one consumer group.
        #[arg(long, default_value_t = 1)]
        processes: u32,
    },
    /// One engine of `meltstream bench kafka-pg --processes N`, run by it as a child process.
    #[command(hide = true)]
    BenchEngine {
        /// The bench run's id (names its pipeline, group and topic).
        #[arg(long)]
        run: String,
        /// This engine's instance id.
        #[arg(long)]
        instance: String,
        /// The kafka-pg topology file (default: the embedded one).
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// The kafka-pg bench's producer, run by `meltstream bench kafka-pg` as a child process so
    /// that its memory is measured apart from the engine's.
    #[command(hide = true)]
    BenchProduce {
        /// Bootstrap servers.
        #[arg(long)]
        brokers: String,
        /// Topic to write.
        #[arg(long)]
        topic: String,
        /// Machines of the R2 input.
        #[arg(long)]
        machines: Option<u32>,
        /// Layers of the R2 input.
        #[arg(long)]
        layers: Option<u32>,
    },
}

fn load_topology(file: Option<&PathBuf>) -> Result<Topology, ExitCode> {
    let res = match file {
        Some(f) => topology::load_file(f),
        None => topology::load(topology::DEMO_TOML, "topologies/demo.toml (embedded)", std::path::Path::new(".")),
    };
    res.map_err(|errs| {
        eprintln!("{errs}");
        eprintln!("{} error(s); nothing was started", errs.0.len());
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,meltstream=info".into()))
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cmd = cli.cmd.unwrap_or(Cmd::Run { file: None, quiet: false, instance: None, once: false });
    match cmd {
        Cmd::Reset { topology } => {
            let t = match load_topology(Some(&topology)) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match reset::run(&t) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meltstream: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { files } => {
            let mut bad = 0;
            for f in &files {
                match topology::load_file(f) {
                    Ok(t) => println!(
                        "{}: ok (topology {:?}: {} source(s), {} sink(s), {} rule(s), {} SPC chart(s))",
                        f.display(),
                        t.name,
                        t.sources.len(),
                        t.sinks.len(),
                        t.rules.len(),
                        t.spc.len()
                    ),
                    Err(errs) => {
                        bad += 1;
                        eprintln!("{errs}");
                    }
                }
            }
            if bad > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::Run { file, quiet, instance, once } => {
            let mut t = match load_topology(file.as_ref()) {
                Ok(t) => t,
                Err(c) => return c,
            };
            if once {
                t.run_once();
            }
            let instance = instance.or_else(|| std::env::var("MELTSTREAM_INSTANCE").ok().filter(|v| !v.is_empty()));
            if let Some(id) = instance {
                if let Err(e) = t.for_instance(&id) {
                    eprintln!("meltstream: {e}");
                    return ExitCode::from(2);
                }
                tracing::info!(instance = %id, "running as instance {id}");
            }
            match run(t, quiet) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meltstream: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Export { topology, out, build, layers_per_file } => {
            let t = match load_topology(Some(&topology)) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match export::run(&t, &out, build.as_deref(), layers_per_file) {
                Ok(files) => {
                    let rows: usize = files.iter().map(|f| f.rows).sum();
                    println!("wrote {} Parquet files ({rows} rows) into {}", files.len(), out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meltstream: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Fuse { topology, ct, build, out } => {
            let t = match load_topology(Some(&topology)) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match fuse::run(&t, &ct, build.as_deref(), out.as_ref()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meltstream: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Simulate { topology, out, truth, ct, machines, layers, layer_ms, seed, score, anomaly_rate } => {
            let t = match load_topology(topology.as_ref()) {
                Ok(t) => t,
                Err(c) => return c,
            };
            let Some(mut cfg) = t.sources.iter().find_map(|s| match &s.kind {
                SourceKind::Simulator(c) => Some(c.clone()),
                _ => None,
            }) else {
                eprintln!("meltstream: the topology has no simulator source");
                return ExitCode::from(2);
            };
            cfg.machines = machines.unwrap_or(cfg.machines);
            cfg.layers = layers.unwrap_or(cfg.layers);
            cfg.layer_ms = layer_ms.unwrap_or(cfg.layer_ms);
            cfg.seed = seed.unwrap_or(cfg.seed);
            cfg.anomaly_rate_per_layer = anomaly_rate.unwrap_or(cfg.anomaly_rate_per_layer);
            if score {
                return match score::run(t, &cfg) {
                    Ok(s) => {
                        score::print(&s);
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("meltstream: {e:#}");
                        ExitCode::FAILURE
                    }
                };
            }
            match simulate::write(&cfg, &out, truth.as_ref(), ct.as_ref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meltstream: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchEngine { run, instance, topology } => match bench::engine_child(topology.as_deref(), &run, &instance) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meltstream bench-engine: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Bench { workload, topology, samples, machines, layers, real_pace, processes } => {
            match bench::run(workload, topology.as_deref(), bench::Overrides { samples, machines, layers, real_pace }, processes) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meltstream: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::BenchProduce { brokers, topic, machines, layers } => match bench::produce_child(&brokers, &topic, machines, layers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meltstream bench-produce: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(t: Topology, quiet: bool) -> anyhow::Result<()> {
    let after = t.fusion.ct_list.is_some().then(|| t.clone());
    let ended_by_itself = engine_run(t, quiet)?;
    // The CT fusion of `[fusion] ct_list`, once the results are durable.
    if let (Some(t), true) = (after, ended_by_itself) {
        match t.fusion.ct_list.as_deref() {
            Some("simulator") => fuse::run_simulated(&t).map(drop)?,
            Some(path) => fuse::run(&t, &t.base_dir.join(path), None, None).map(drop)?,
            None => {}
        }
    }
    Ok(())
}

/// Runs the engine until its sources end or a signal stops it; whether it ended by itself.
fn engine_run(t: Topology, quiet: bool) -> anyhow::Result<bool> {
    let prometheus = admin::install_metrics();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let res = rt.block_on(async move {
        let name = t.name.clone();
        let admin_addr = t.engine.admin_addr.clone();
        let summary_ms = t.engine.summary_interval_ms;
        let mut signals = signals::Signals::install().context("installing the signal handlers")?;
        let stats = Arc::new(meltstream_actors::engine_stats::EngineStats::default());
        (!admin_addr.is_empty()).then(|| admin::serve(&admin_addr, prometheus, stats.clone(), meltstream_actors::sinks::results_store::ResultsStore::of(&t))).transpose()?;
        let summary = (!quiet && summary_ms > 0).then(|| tokio::spawn(summary::print_every(stats.clone(), summary_ms)));
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let shutdown = shutdown.clone();
            let signalled = signalled.clone();
            tokio::spawn(async move {
                signals.next().await;
                tracing::warn!("signal received: draining (send again to exit at once)");
                signalled.store(true, std::sync::atomic::Ordering::SeqCst);
                shutdown.notify_one();
                signals.next().await;
                std::process::exit(130);
            });
        }
        // A Kafka source that lost its partitions while running stops the engine without
        // emitting its open windows; it starts again here, from the stored progress, with the
        // same counters. A signal during a restart still stops it (`notify_one` keeps a permit).
        // A failed part of a replayable engine starts it again too, within the restart
        // intensity (`max_restarts` within `max_restart_window_s`); beyond it, it escalates.
        let mut restarts = meltstream_engine::restart_budget::RestartBudget::new(t.engine.max_restarts, t.engine.max_restart_window_s as i64 * 1_000_000_000);
        let res = loop {
            let handle = EngineBuilder::new(t.clone()).stats(stats.clone()).start().await?;
            tracing::info!(topology = %name, "engine started");
            let stopper = {
                let sup = handle_shutdown_fn(&handle);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    shutdown.notified().await;
                    sup();
                })
            };
            let res = handle.wait().await;
            stopper.abort();
            match res {
                Err(meltstream_actors::EngineError::Restart(reason)) if !signalled.load(std::sync::atomic::Ordering::SeqCst) => {
                    tracing::warn!(%reason, "restarting the engine from the stored progress");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                // Asked to stop while it was stopping to restart: it stopped as a shutdown does.
                Err(meltstream_actors::EngineError::Restart(_)) => break Ok(stats.clone()),
                Err(meltstream_actors::EngineError::Crashed { reason, .. }) if !signalled.load(std::sync::atomic::Ordering::SeqCst) => {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
                    if !restarts.allow(now) {
                        break Err(anyhow::anyhow!(
                            "escalating: the engine failed {} times within {} s (engine.max_restarts = {}); last failure: {reason}",
                            restarts.recent(),
                            t.engine.max_restart_window_s,
                            t.engine.max_restarts
                        ));
                    }
                    metrics::counter!("meltstream_engine_restarts_total").increment(1);
                    tracing::warn!(%reason, restarts = restarts.recent(), "a part of the engine failed; restarting the engine from the stored progress");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                // A part failed before the stop was asked for (a fenced zombie's sink, say), and the
                // signal came while the tree was stopping to restart: it stopped as asked; the
                // stored progress is where the next start resumes, as after any restart.
                Err(meltstream_actors::EngineError::Crashed { reason, while_stopping: false }) => {
                    tracing::warn!(%reason, "a part of the engine had failed just before the signal; stopped without restarting");
                    break Ok(stats.clone());
                }
                Err(meltstream_actors::EngineError::Crashed { reason, while_stopping: true }) => break Err(anyhow::anyhow!("engine failed while stopping: {reason}")),
                other => break other.map_err(anyhow::Error::from),
            }
        };
        if let Some(s) = summary {
            s.abort();
        }
        let stats = res?;
        if !quiet {
            summary::print_final(&stats);
        }
        Ok(!signalled.load(std::sync::atomic::Ordering::SeqCst))
    });
    // The engine is down (its supervisor waited for its tree). A blocking task still running
    // (a decode or a store call that outlived its actor) must not keep the process from
    // ending: dropping the runtime would wait for it without bound.
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    res
}

fn handle_shutdown_fn(h: &meltstream_actors::EngineHandle) -> impl FnOnce() + Send + 'static {
    let h = h.shutdown_handle();
    move || h()
}
