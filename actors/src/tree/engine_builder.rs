//! The engine builder: turns a checked topology into a running actor tree — the writers first
//! (the transactional ones tell where the sources resume), then the supervisor, the commit
//! coordinator, the sinks, the router, the watermark coordinator and the sources — and the
//! [`EngineHandle`] that stops it and waits for it.
//!
//! It is the only place that knows every concrete source and sink type; the actors themselves
//! only know the messages in `ports/`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorName, ActorRef};
use tokio::sync::Semaphore;

use meltstream_engine::pipeline::build_pipeline::BuildSettings;
use meltstream_engine::input::decode::DecodeLimits;
use meltstream_engine::restart_budget::RestartBudget;
use meltstream_engine::topology::{expand_env, SinkKind, SourceKind, Topology};

use crate::engine_stats::EngineStats;
use crate::live_view::ChartSpec;
use crate::memory_budget::MemoryBudget;
use crate::ports::messages::{CommitMsg, RouterMsg, Started, SupervisorMsg, WatermarkMsg};
use crate::ports::source_ctx::SourceCtx;
use crate::progress::{ProgressBoard, StoredProgress, StoredStates, Written};
use crate::sinks::file::{FileSink, NullSink, NULL_SINK_FLUSH_MS};
use crate::sinks::kafka::KafkaSink;
use crate::sinks::postgres::PgSink;
use crate::sinks::sink_actor::{read_stored_progress, SinkActor, SinkArgs};
use crate::sinks::sqlite::SqliteSink;
use crate::sinks::writer::BoxedWriter;
use crate::sinks::results_store::ResultsStore;
use crate::sources::ct::{CtInput, CtSource, CtSourceArgs, CtSourceMsg};
use crate::sources::file::{FileSource, FileSourceArgs, FileSourceMsg};
use crate::sources::kafka::{KafkaSource, KafkaSourceArgs, KafkaSourceMsg};
use crate::sources::simulator::{GeneratorConfig, SimulatorArgs, SimulatorMsg, SimulatorSource};
use crate::tree::commit_coordinator::CommitCoordinator;
use crate::tree::outputs::{DeadLetterDesk, Outputs, SinkHandle};
use crate::tree::router::{Router, RouterArgs};
use crate::tree::supervisor::{Supervisor, SupervisorArgs, CRASHED_STOPPING};
use crate::tree::watermark_coordinator::{WatermarkArgs, WatermarkCoordinator};

/// Capacity of each build actor's queue, in batch parts.
const BUILD_QUEUE_BATCHES: usize = 8;

/// Why the engine could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An actor could not be spawned.
    #[error("cannot start {what}: {message}")]
    Start {
        /// Which part.
        what: String,
        /// Why.
        message: String,
    },
    /// A failure beyond what supervision absorbs.
    #[error("engine stopped: {0}")]
    Failed(String),
    /// The engine stopped without emitting its open windows and must start again to resume
    /// from the stored progress (a Kafka source lost its partitions while running).
    #[error("engine stopped to restart: {0}")]
    Restart(String),
    /// A part of the engine failed; every source is replayable, so the engine may start again
    /// from the stored progress (within the restart intensity, which the caller counts).
    #[error("engine failed: {reason}")]
    Crashed {
        /// Why.
        reason: String,
        /// Whether the engine was already stopping (shutdown or restart) when the part failed.
        while_stopping: bool,
    },
}

/// Turns a checked topology into a running engine.
pub struct EngineBuilder {
    topology: Topology,
    writers: HashMap<String, BoxedWriter>,
    settings: BuildSettings,
    stats: Option<Arc<EngineStats>>,
}

/// A running engine.
pub struct EngineHandle {
    supervisor: ActorRef<SupervisorMsg>,
    join: tokio::task::JoinHandle<()>,
    failure: Arc<Mutex<Option<String>>>,
    restart: Arc<AtomicBool>,
    crashed: Arc<AtomicU8>,
    /// Live counters.
    pub stats: Arc<EngineStats>,
    /// The sinks (for latency histograms).
    pub outputs: Outputs,
    /// The watermark coordinator.
    pub watermarks: ActorRef<WatermarkMsg>,
    /// The commit coordinator.
    pub commit: ActorRef<CommitMsg>,
    /// Source progress as stored with the sinks' transactions.
    pub progress: ProgressBoard,
}

impl EngineHandle {
    /// Asks the engine to stop its sources and drain.
    pub fn shutdown(&self) {
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown);
    }

    /// A function that asks the engine to shut down, usable from another task.
    pub fn shutdown_handle(&self) -> impl Fn() + Send + Sync + 'static {
        let s = self.supervisor.clone();
        move || {
            let _ = s.cast(SupervisorMsg::Shutdown);
        }
    }

    /// Waits until the engine has drained (Ok) or failed (Err with the reason).
    pub async fn wait(self) -> Result<Arc<EngineStats>, EngineError> {
        let _ = self.join.await;
        match self.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(reason) if self.restart.load(Ordering::SeqCst) && self.crashed.load(Ordering::SeqCst) != 0 => {
                Err(EngineError::Crashed { reason, while_stopping: self.crashed.load(Ordering::SeqCst) == CRASHED_STOPPING })
            }
            Some(f) if self.restart.load(Ordering::SeqCst) => Err(EngineError::Restart(f)),
            Some(f) => Err(EngineError::Failed(f)),
            None => Ok(self.stats),
        }
    }
}

fn start_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Start { what: what.to_owned(), message: e.to_string() }
}

impl EngineBuilder {
    /// A builder for a checked topology.
    pub fn new(topology: Topology) -> EngineBuilder {
        let settings = BuildSettings::from_topology(&topology);
        EngineBuilder { topology, writers: HashMap::new(), settings, stats: None }
    }

    /// Counts into `stats` (a restarted engine continues the counters of the one before).
    pub fn stats(mut self, stats: Arc<EngineStats>) -> EngineBuilder {
        self.stats = Some(stats);
        self
    }

    /// Replaces the writer of sink `name` (tests: a sink that stalls, fails or panics).
    pub fn sink_writer(mut self, name: &str, writer: BoxedWriter) -> EngineBuilder {
        self.writers.insert(name.to_owned(), writer);
        self
    }

    /// Adjusts what builds compute (tests; the fault-injection settings exist only with the
    /// `fault-injection` feature).
    pub fn build_settings(mut self, f: impl FnOnce(&mut BuildSettings)) -> EngineBuilder {
        f(&mut self.settings);
        self
    }

    /// Starts the actor tree.
    pub async fn start(mut self) -> Result<EngineHandle, EngineError> {
        let t = &self.topology;
        let e = &t.engine;
        let stats = self.stats.take().unwrap_or_default();
        let failure = Arc::new(Mutex::new(None));
        let restart = Arc::new(AtomicBool::new(false));
        let board = ProgressBoard::default();
        let budget = MemoryBudget::new(e.memory_budget_mb * 1024);
        // Writers first: the transactional ones tell where the sources resume.
        let mut writers: Vec<(BoxedWriter, u64, Option<StoredProgress>, Written)> = Vec::new();
        let mut states: Vec<StoredStates> = Vec::new();
        for s in &t.sinks {
            let (mut writer, flush_ms): (BoxedWriter, u64) = match self.writers.remove(&s.name) {
                Some(w) => (w, 50),
                None => make_writer(t, &s.name, &s.kind, &board)?,
            };
            let stored = stored_progress(&s.name, &mut writer).await?;
            let written = writer.take_written();
            states.push(writer.take_stored_states());
            writers.push((writer, flush_ms, stored, written));
        }
        // The writers have migrated their schema: the reference baselines can be read, and are
        // fixed for the run before any build starts.
        crate::tree::reference_baselines::fix_reference_baselines(t, &mut self.settings).await.map_err(|e| EngineError::Start { what: format!("SPC chart {:?}", e.chart), message: e.message })?;
        // Where each Kafka partition resumes, and with what replay state, is read again when the
        // group assigns it (see `sources/kafka/rebalance.rs`).
        let replayable = t.sources.iter().any(|s| matches!(s.kind, SourceKind::Kafka(_)));
        // A ct source reads its whole input again on every start, and its fusions replace.
        let all_replayable = t.sources.iter().all(|s| matches!(s.kind, SourceKind::Kafka(_) | SourceKind::Ct(_)));
        let crashed = Arc::new(AtomicU8::new(0));
        let sup_args = SupervisorArgs {
            sources: t.sources.len(),
            failure: failure.clone(),
            restart: restart.clone(),
            crashed: crashed.clone(),
            restart_on_failure: all_replayable,
            keep_open_on_shutdown: replayable,
        };
        let (supervisor, join) = Actor::spawn(None, Supervisor, sup_args).await.map_err(|e| start_err("supervisor", e))?;
        let sup_cell = supervisor.get_cell();
        let (commit, _) = Actor::spawn_linked(None, CommitCoordinator, (stats.clone(), Duration::from_millis(50), board.clone()), sup_cell.clone())
            .await
            .map_err(|e| start_err("commit coordinator", e))?;
        let mut sinks = Vec::new();
        let mut transactional = Vec::new();
        for ((s, (writer, flush_ms, stored, written)), stored_states) in t.sinks.iter().zip(writers).zip(states) {
            let is_transactional = stored.is_some();
            let args = SinkArgs {
                name: s.name.clone(),
                writer,
                flush_every: Duration::from_millis(flush_ms),
                commit: commit.clone(),
                stats: stats.clone(),
                board: board.clone(),
                stored,
                written,
                stored_states,
            };
            let (actor, _) = Actor::spawn_linked(None, SinkActor, args, sup_cell.clone())
                .await
                .map_err(|e| start_err(&format!("sink {}", s.name), e))?;
            if is_transactional {
                transactional.push(actor.clone());
            }
            let cap = e.sink_queue_records as u32;
            sinks.push(SinkHandle { name: s.name.clone(), kinds: s.kind.records().to_vec(), actor, queue: Arc::new(Semaphore::new(cap as usize)), capacity: cap });
        }
        stats.gauges.set_budget(budget.clone());
        stats.live.set_charts(
            t.spc.iter().map(|c| ChartSpec { name: c.name.clone(), chart: format!("{:?}", c.chart).to_lowercase(), channel: c.channel.clone(), statistic: c.statistic().name().to_owned() }).collect(),
        );
        let outputs = Outputs::new(sinks, budget.clone(), stats.clone());
        let source_names: Arc<Vec<String>> = Arc::new(t.sources.iter().map(|s| s.name.clone()).collect());
        let router_args = RouterArgs {
            settings: Arc::new(self.settings.clone()),
            outputs: outputs.clone(),
            commit: commit.clone(),
            budget: budget.clone(),
            build_queue_batches: BUILD_QUEUE_BATCHES,
            build_idle: Duration::from_millis(e.build_idle_timeout_ms),
            restarts: RestartBudget::new(e.max_restarts, e.max_restart_window_s as i64 * 1_000_000_000),
            stats: stats.clone(),
            dead_letters: DeadLetterDesk { source_names: source_names.clone(), board: board.clone(), stats: stats.clone(), log: Arc::new(Default::default()) },
            board: board.clone(),
        };
        let (router, _) = Actor::spawn_linked(None, Router, router_args, sup_cell.clone()).await.map_err(|e| start_err("router", e))?;
        let ms = 1_000_000i64;
        let wm_args = WatermarkArgs {
            bound_ns: e.watermark_bound_ms as i64 * ms,
            idle_ns: e.input_idle_timeout_ms as i64 * ms,
            every: Duration::from_millis(e.watermark_interval_ms),
            router: router.clone(),
            stats: stats.clone(),
        };
        let (watermarks, _) = Actor::spawn_linked(None, WatermarkCoordinator, wm_args, sup_cell.clone())
            .await
            .map_err(|e| start_err("watermark coordinator", e))?;
        router.cast(RouterMsg::SetCoordinator(watermarks.clone())).map_err(|e| start_err("router", e))?;
        let credits = Arc::new(Semaphore::new(e.source_queue_batches));
        let limits = DecodeLimits { max_record_bytes: e.max_record_bytes, max_future_ns: e.max_future_s as i64 * 1_000_000_000, ..DecodeLimits::default() };
        let mut sources: Vec<(ractor::ActorCell, Box<dyn Fn() + Send + Sync>)> = Vec::new();
        stats.health.set_bounds(crate::health::ReadyBounds {
            max_commit_age_ns: e.ready_max_commit_age_s as i64 * 1_000_000_000,
            max_watermark_lag_ns: e.ready_max_watermark_lag_s as i64 * 1_000_000_000,
            max_report_age_ns: 10_000_000_000,
        });
        for (i, s) in t.sources.iter().enumerate() {
            // A Kafka source is starting until it polls; the others read from the start.
            let state = match s.kind {
                SourceKind::Kafka(_) => crate::health::SourceState::Starting,
                _ => crate::health::SourceState::Running { partitions: None },
            };
            stats.health.source(&s.name, state, crate::ports::clock::now_wall_ns());
            let input = i as meltstream_engine::input::event::InputId;
            watermarks.cast(WatermarkMsg::Register(input)).map_err(|e| start_err("watermark coordinator", e))?;
            let ctx = SourceCtx {
                input,
                name: s.name.clone(),
                router: router.clone(),
                credits: credits.clone(),
                when_full: e.when_full,
                stats: stats.clone(),
                budget: budget.clone(),
                supervisor: supervisor.clone(),
            };
            // Unnamed: ractor names are process-global, and several engines may share a process.
            let name: Option<ActorName> = None;
            match &s.kind {
                SourceKind::Simulator(_) | SourceKind::R1(_) => {
                    let config = match &s.kind {
                        SourceKind::Simulator(c) => GeneratorConfig::Simulator(c.clone()),
                        SourceKind::R1(c) => GeneratorConfig::R1(c.clone()),
                        SourceKind::File(_) | SourceKind::Kafka(_) | SourceKind::Ct(_) => unreachable!("matched above"),
                    };
                    let (a, _) = Actor::spawn_linked(name, SimulatorSource, SimulatorArgs { ctx, config }, sup_cell.clone())
                        .await
                        .map_err(|e| start_err(&format!("source {}", s.name), e))?;
                    let a2 = a.clone();
                    sources.push((a.get_cell(), Box::new(move || drop(a2.cast(SimulatorMsg::Stop)))));
                }
                SourceKind::File(c) => {
                    let path = if c.path.is_absolute() { c.path.clone() } else { t.base_dir.join(&c.path) };
                    let args = FileSourceArgs { ctx, path, batch_records: c.batch_records, limits };
                    let (a, _) = Actor::spawn_linked(name, FileSource, args, sup_cell.clone()).await.map_err(|e| start_err(&format!("source {}", s.name), e))?;
                    let a2 = a.clone();
                    sources.push((a.get_cell(), Box::new(move || drop(a2.cast(FileSourceMsg::Stop)))));
                }
                SourceKind::Kafka(c) => {
                    let mut config = c.clone();
                    config.brokers = expand_env(&c.brokers);
                    let args = KafkaSourceArgs {
                        ctx,
                        source_index: i,
                        config,
                        sinks: transactional.clone(),
                        limits,
                        board: board.clone(),
                        watermarks: watermarks.clone(),
                        queue_batches: e.source_queue_batches,
                    };
                    let (a, _) = Actor::spawn_linked(name, KafkaSource, args, sup_cell.clone()).await.map_err(|e| start_err(&format!("source {}", s.name), e))?;
                    let a2 = a.clone();
                    sources.push((a.get_cell(), Box::new(move || drop(a2.cast(KafkaSourceMsg::Stop)))));
                }
                SourceKind::Ct(c) => {
                    let Some(store) = ResultsStore::of(t) else {
                        return Err(start_err(&format!("source {}", s.name), "a ct source needs a postgres or sqlite sink (its results store)"));
                    };
                    let input = match &c.path {
                        Some(p) => CtInput::File(if p.is_absolute() { p.clone() } else { t.base_dir.join(p) }),
                        None => {
                            let mut config = c.clone();
                            config.brokers = c.brokers.as_deref().map(expand_env);
                            CtInput::Kafka(config)
                        }
                    };
                    let args = CtSourceArgs { ctx, input, store, params: t.fusion.clone(), build_info_dir: t.build_info.dir.as_ref().map(|d| t.base_dir.join(d)) };
                    let (a, _) = Actor::spawn_linked(name, CtSource, args, sup_cell.clone()).await.map_err(|e| start_err(&format!("source {}", s.name), e))?;
                    let a2 = a.clone();
                    sources.push((a.get_cell(), Box::new(move || drop(a2.cast(CtSourceMsg::Stop)))));
                }
            }
        }
        supervisor
            .cast(SupervisorMsg::Started(Box::new(Started { sources, router, commit: commit.clone(), sinks: outputs.sinks().iter().map(|s| (s.name.clone(), s.actor.clone())).collect() })))
            .map_err(|e| start_err("supervisor", e))?;
        Ok(EngineHandle { supervisor, join, failure, restart, crashed, stats, outputs, watermarks, commit, progress: board })
    }
}

/// The writer of a sink from its configuration, and its flush period in ms.
fn make_writer(t: &Topology, name: &str, kind: &SinkKind, board: &ProgressBoard) -> Result<(BoxedWriter, u64), EngineError> {
    Ok(match kind {
        SinkKind::File(c) => (Box::new(FileSink::new(name, c.path.clone(), c.fsync)), c.flush_ms),
        SinkKind::Null(_) => (Box::new(NullSink), NULL_SINK_FLUSH_MS),
        SinkKind::Postgres(c) => {
            let w = PgSink::new(name, &expand_env(&c.url), &c.pipeline, &c.schema).map_err(|e| start_err(&format!("sink {name}"), e))?;
            (Box::new(w), c.flush_ms)
        }
        SinkKind::Redis(c) => {
            let mut config = c.clone();
            config.url = expand_env(&c.url);
            let w = crate::sinks::redis::RedisSink::new(name, config).map_err(|e| start_err(&format!("sink {name}"), e))?;
            (Box::new(w), c.flush_ms)
        }
        SinkKind::Webhook(c) => {
            let mut config = c.clone();
            config.url = expand_env(&c.url);
            for v in config.headers.values_mut() {
                *v = expand_env(v);
            }
            let w = crate::sinks::webhook::WebhookSink::new(name, config).map_err(|e| start_err(&format!("sink {name}"), e))?;
            (Box::new(w), c.flush_ms)
        }
        SinkKind::Airflow(c) => {
            let mut config = c.clone();
            for v in [&mut config.url, &mut config.username, &mut config.password] {
                *v = expand_env(v);
            }
            let w = crate::sinks::airflow::AirflowSink::new(name, config).map_err(|e| start_err(&format!("sink {name}"), e))?;
            (Box::new(w), c.flush_ms)
        }
        SinkKind::Sqlite(c) => {
            let w = SqliteSink::new(name, &c.path, &c.pipeline).map_err(|e| start_err(&format!("sink {name}"), e))?;
            (Box::new(w), c.flush_ms)
        }
        SinkKind::Kafka(c) => {
            let Some(k) = t.sources.iter().find_map(|s| match &s.kind {
                SourceKind::Kafka(k) => Some(k),
                _ => None,
            }) else {
                return Err(start_err(&format!("sink {name}"), "a Kafka sink needs a Kafka source"));
            };
            let mut config = c.clone();
            config.brokers = expand_env(&c.brokers);
            let w = KafkaSink::new(name, config, k.topics.clone(), k.group_id.clone(), board.clone()).map_err(|e| start_err(&format!("sink {name}"), e))?;
            (Box::new(w), c.flush_ms)
        }
    })
}

/// What a transactional sink stored (the engine refuses to start when it cannot be read).
async fn stored_progress(name: &str, writer: &mut BoxedWriter) -> Result<Option<StoredProgress>, EngineError> {
    read_stored_progress(name, writer).await.map_err(|e| start_err(&format!("sink {name}"), e))
}
