//! The `ct` source: streaming CT fusion. Reads CT defect records from a file (a CT list, JSON
//! lines or CSV, as `meltstream fuse --ct` takes it) or from a Kafka topic (one JSON object or
//! one CSV row per message), all through the one decoder (`fusion::ct::CtDecoder`), holds them
//! per build (`fusion::ct_builds`, deduplicated by defect id), and fuses a build whose defects
//! changed with the evidence stored in the topology's results store — the same
//! [`ResultsStore::fuse_build`] as `meltstream fuse`: one read of the evidence, one join, one
//! transaction replacing the build's `fused_defects` and `fusion_summaries` rows.
//!
//! It sends no events: only its malformed records, as dead letters, go to the router.
//!
//! # When a build is fused
//! A file: once, at its end. Kafka: when the topic has been read to its end offsets of that
//! moment (every partition's EOF), or after `quiet_ms` without a message; each later change
//! fuses the build again. What is written depends only on the set of defects read and the
//! stored evidence, never on when they came: the last fusion of a build, at the latest once the
//! topic is drained, is of all its defects.
//!
//! # Exactly once
//! A fusion replaces the build's rows with a deterministic function of (defects, evidence), so
//! running it again is harmless. The topic is read from its beginning on every start (no offsets
//! are committed; CT lists are small), so a restart fuses every build from all its defects.
//! A build without stored evidence is fused all the same (every defect undetected, a warning
//! logged): a later fusion — a new defect for it, a restart, `meltstream fuse` — replaces it.
//!
//! # Shutdown
//! A file source ends after its fusion; a Kafka one with `stop_at_end` once the topic is drained
//! and its builds fused, otherwise on `Stop`. Fusion runs in the actor's handler (PostgreSQL
//! awaited, SQLite on the blocking pool), so a `Stop` waits for the fusion under way.

pub mod kafka_reader;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use meltstream_engine::fusion::ct::{read_list, CtDecoder};
use meltstream_engine::fusion::ct_builds::CtBuilds;
use meltstream_engine::fusion::FusionParams;
use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::reject::{DeadLetter, RejectReason};
use meltstream_engine::topology::CtSourceConfig;

use crate::ports::clock::now_wall_ns;
use crate::ports::source_ctx::SourceCtx;
use crate::retry::{retry, Backoff};
use crate::sinks::results_store::ResultsStore;

use kafka_reader::KafkaReader;

/// A store failure is retried for this long before the source fails (and the supervisor
/// decides).
const STORE_PATIENCE: Duration = Duration::from_secs(60);

/// Messages of the CT source.
pub enum CtSourceMsg {
    /// Read (and fuse) the next part.
    Pump,
    /// Stop (shutdown).
    Stop,
}

/// Where the CT records come from.
pub enum CtInput {
    /// A CT list file (resolved against the topology's directory).
    File(PathBuf),
    /// A Kafka topic (`brokers` expanded).
    Kafka(CtSourceConfig),
}

/// Arguments.
pub struct CtSourceArgs {
    /// Link to the engine (dead letters, end of input).
    pub ctx: SourceCtx,
    /// Where the records come from.
    pub input: CtInput,
    /// Where the evidence is read and the results written.
    pub store: ResultsStore,
    /// The join's parameters (`[fusion]`).
    pub params: FusionParams,
    /// Where the builds' descriptions are (`[build_info] dir`, resolved): a build's own layer
    /// thickness replaces the one in `params`.
    pub build_info_dir: Option<std::path::PathBuf>,
}

enum Reader {
    /// The file's text, until it is read.
    File(Option<String>),
    Kafka { reader: KafkaReader, decoders: std::collections::HashMap<i32, CtDecoder>, quiet: Duration, stop_at_end: bool, last_message: Instant },
}

/// State.
pub struct CtSourceState {
    ctx: SourceCtx,
    store: ResultsStore,
    params: FusionParams,
    build_info_dir: Option<std::path::PathBuf>,
    reader: Reader,
    builds: CtBuilds,
    seq: u64,
    records: u64,
    done: bool,
}

/// The CT source actor.
pub struct CtSource;

/// A dead letter's offset: a file's 0-based line, or a Kafka message's partition in the high
/// bits and its offset in the low 40 (unique and the same on every replay).
fn kafka_position(partition: i32, offset: i64) -> u64 {
    (u64::from(partition.max(0) as u32) << 40) | (offset.max(0) as u64 & ((1 << 40) - 1))
}

impl CtSourceState {
    /// Hands malformed records to the router as dead letters (and counts them).
    async fn dead_letters(&mut self, dead: Vec<DeadLetter>) {
        if dead.is_empty() {
            return;
        }
        let n = dead.len() as u64;
        metrics::counter!("meltstream_ct_dead_letters_total", "source" => self.ctx.name.clone()).increment(n);
        let mut batch = RecordBatch::with_capacity(0);
        batch.span.input = self.ctx.input;
        batch.span.seq = self.seq;
        batch.span.first_offset = self.records;
        batch.span.next_offset = self.records + n;
        batch.records = n;
        batch.dead = dead;
        self.records += n;
        self.seq += 1;
        let _ = self.ctx.send(batch, now_wall_ns()).await;
    }

    /// Fuses every build whose defects changed, retrying a store failure for a while.
    async fn fuse_dirty(&mut self) -> Result<(), String> {
        for (build, defects) in self.builds.dirty() {
            let mut job = (self.store.clone(), build.clone(), defects, self.params.for_build(self.build_info_dir.as_deref(), &build));
            let res = retry(
                Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5)).give_up_after(STORE_PATIENCE),
                &mut job,
                |(store, build, defects, params)| Box::pin(store.fuse_build(build, defects, params)),
                |_| true,
                |e, wait| {
                    metrics::counter!("meltstream_ct_fusion_errors_total", "source" => self.ctx.name.clone()).increment(1);
                    tracing::warn!(source = %self.ctx.name, build_id = %build, error = %e, retry_in_ms = wait.as_millis() as u64, "CT fusion failed; retrying");
                },
            )
            .await;
            let (_, summary) = res.map_err(|e| format!("source {}: cannot fuse build {build}: {e}", self.ctx.name))?;
            self.builds.fused(&build);
            metrics::counter!("meltstream_ct_fusions_total", "source" => self.ctx.name.clone()).increment(1);
            tracing::info!(source = %self.ctx.name, build_id = %build, defects = summary.defects, detectable = summary.detectable, detected = summary.detected, recall = summary.recall, precision = summary.precision, "CT defects fused");
        }
        Ok(())
    }

    fn end(&mut self, myself: &ActorRef<CtSourceMsg>) {
        self.done = true;
        tracing::info!(source = %self.ctx.name, defects = self.builds.len(), "ct source finished");
        self.ctx.ended();
        myself.stop(None);
    }
}

impl Actor for CtSource {
    type Msg = CtSourceMsg;
    type State = CtSourceState;
    type Arguments = CtSourceArgs;

    async fn pre_start(&self, myself: ActorRef<CtSourceMsg>, args: CtSourceArgs) -> Result<CtSourceState, ActorProcessingErr> {
        let name = args.ctx.name.clone();
        let reader = match args.input {
            CtInput::File(path) => {
                let text = tokio::fs::read_to_string(&path).await.map_err(|e| format!("source {name}: cannot read the CT list {}: {e}", path.display()))?;
                Reader::File(Some(text))
            }
            CtInput::Kafka(c) => {
                let (quiet, stop_at_end) = (Duration::from_millis(c.quiet_ms), c.stop_at_end);
                let n = name.clone();
                let reader = tokio::task::spawn_blocking(move || KafkaReader::open(&c, &n)).await.map_err(|e| format!("source {name}: {e}"))??;
                Reader::Kafka { reader, decoders: Default::default(), quiet, stop_at_end, last_message: Instant::now() }
            }
        };
        let _ = myself.cast(CtSourceMsg::Pump);
        Ok(CtSourceState { ctx: args.ctx, store: args.store, params: args.params, build_info_dir: args.build_info_dir, reader, builds: CtBuilds::default(), seq: 0, records: 0, done: false })
    }

    async fn handle(&self, myself: ActorRef<CtSourceMsg>, msg: CtSourceMsg, st: &mut CtSourceState) -> Result<(), ActorProcessingErr> {
        if st.done {
            return Ok(());
        }
        if matches!(msg, CtSourceMsg::Stop) {
            st.end(&myself);
            return Ok(());
        }
        let input = st.ctx.input;
        match &mut st.reader {
            Reader::File(text) => {
                let (defects, bad) = read_list(&text.take().unwrap_or_default());
                let dead = bad.into_iter().map(|(line, e)| DeadLetter::new(input, line as u64 - 1, RejectReason::Schema(e), b"")).collect();
                for d in defects {
                    st.builds.add(d);
                }
                st.dead_letters(dead).await;
                st.fuse_dirty().await?;
                st.end(&myself);
            }
            Reader::Kafka { reader, decoders, quiet, stop_at_end, last_message } => {
                let chunk = reader.poll().await?;
                for e in &chunk.errors {
                    tracing::warn!(source = %st.ctx.name, error = %e, "CT topic consumer error");
                }
                if !chunk.messages.is_empty() {
                    *last_message = Instant::now();
                }
                let mut dead = Vec::new();
                for m in chunk.messages {
                    match decoders.entry(m.partition).or_default().decode(&m.payload) {
                        Ok(Some(d)) => {
                            st.builds.add(d);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let reason = RejectReason::Schema(format!("partition {} offset {}: {e}", m.partition, m.offset));
                            dead.push(DeadLetter::new(input, kafka_position(m.partition, m.offset), reason, &m.payload));
                        }
                    }
                }
                let drained = reader.drained();
                let (quiet_now, stop_now) = (last_message.elapsed() >= *quiet, *stop_at_end && drained);
                st.dead_letters(dead).await;
                if st.builds.has_dirty() && (drained || quiet_now) {
                    st.fuse_dirty().await?;
                }
                if stop_now && !st.builds.has_dirty() {
                    st.end(&myself);
                } else {
                    let _ = myself.cast(CtSourceMsg::Pump);
                }
            }
        }
        Ok(())
    }
}
