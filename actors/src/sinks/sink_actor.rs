//! Sink actors: take records in batches, write them through a
//! [`SinkWriter`](crate::sinks::writer::SinkWriter), and once the writer says they are durable,
//! acknowledge their holds to the commit coordinator so that the source offsets behind them may
//! be committed.
//!
//! # Backpressure
//! Every delivery carries permits of the sink's semaphore (one per record) and of the sinks'
//! share of the memory budget (its records' bytes); they are released
//! only when the records are durable. A sink that stalls therefore stops the build actors that
//! feed it, which stop the router, which stops the sources: memory stays bounded.
//!
//! # Exactly-once
//! A transactional writer (PostgreSQL, Kafka) stores the [`Checkpoint`] it is given with every
//! flush, in the same transaction as the records (see `progress.rs`). The actor flushes when it
//! has records *or* when the progress moved, so that offsets advance through quiet stretches
//! too. After a restart, positioned records below what the sink stored as emitted-through are
//! already durable there: the actor drops them (and acknowledges them) instead of writing them.
//!
//! # Shutdown
//! `Drain` flushes what is buffered, asks the commit coordinator for the final progress, stores
//! it, and replies once it is durable.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use meltstream_engine::offset_ledger::Hold;
use meltstream_engine::records::Emitted;

use crate::engine_stats::{EngineStats, LatencyKind, LatencyStage};
use crate::ports::clock::now_wall_ns;
use crate::ports::messages::{CommitMsg, SinkMsg};
use crate::progress::{Checkpoint, ProgressBoard, StoredProgress, StoredStates, TopicPartition, Written};
use crate::retry::{retry, Backoff};
use crate::ports::credits::SinkCredit;
use crate::sinks::writer::{BoxedWriter, SinkError};

/// How long a sink retries a flush that another owner of a partition refused (see
/// `SinkState::flush`) before it fails.
const FENCED_GRACE: Duration = Duration::from_secs(30);

/// Arguments of a sink actor.
pub struct SinkArgs {
    /// Name in the topology.
    pub name: String,
    /// The writer.
    pub writer: BoxedWriter,
    /// Flush period.
    pub flush_every: Duration,
    /// Where durability is acknowledged.
    pub commit: ActorRef<CommitMsg>,
    /// Engine counters.
    pub stats: Arc<EngineStats>,
    /// Where the progress to store comes from.
    pub board: ProgressBoard,
    /// What a transactional writer stored before this run (`None`: not transactional).
    pub stored: Option<StoredProgress>,
    /// Positions the writer holds beyond what it stored (see
    /// [`SinkWriter::take_written`](crate::sinks::writer::SinkWriter::take_written)).
    pub written: Written,
    /// The replay state the writer stored before this run.
    pub stored_states: StoredStates,
}

/// State of a sink actor.
pub struct SinkState {
    args: SinkArgs,
    pending: Vec<(Hold, u32)>,
    permits: Vec<SinkCredit>,
    /// Latency kind and origin of each record buffered since the last flush.
    origins: Vec<(LatencyKind, i64)>,
    buffered: usize,
    stored_version: u64,
    /// Set by `Drain`: the last flushes of a stop.
    draining: bool,
}

/// The sink actor.
pub struct SinkActor;

/// Writes `records` (or, with `None`, flushes), retrying a retryable failure with exponential
/// backoff (50 ms doubling to 5 s); a fatal one fails the actor.
async fn write_with_retries(name: &str, stats: &EngineStats, writer: &mut BoxedWriter, records: &[Emitted]) -> Result<(), ActorProcessingErr> {
    let written = retry(
        Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)),
        &mut (writer, records),
        |(writer, records)| writer.write(records),
        |e| matches!(e, SinkError::Retryable { .. }),
        |e, backoff| {
            if let SinkError::Retryable { sink, message } = e {
                tracing::warn!(sink = %sink, error = %message, backoff_ms = backoff.as_millis() as u64, "sink write failed, retrying");
            }
            stats.health.sink_failing(name, &e.to_string(), now_wall_ns());
            metrics::counter!("meltstream_sink_retries_total", "sink" => name.to_owned()).increment(1);
        },
    )
    .await;
    if written.is_ok() {
        stats.health.sink_writing(name, now_wall_ns());
    }
    written.map_err(|e| Box::new(e) as ActorProcessingErr)
}

/// What a transactional sink stored, retrying while its service is unreachable (up to a minute,
/// then the error).
pub async fn read_stored_progress(name: &str, writer: &mut BoxedWriter) -> Result<Option<StoredProgress>, SinkError> {
    let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)).give_up_after(Duration::from_secs(60));
    let stored = retry(
        backoff,
        writer,
        |writer| writer.stored_progress(),
        |e| matches!(e, SinkError::Retryable { .. }),
        |e, backoff| {
            if let SinkError::Retryable { message, .. } = e {
                tracing::warn!(sink = name, error = %message, backoff_ms = backoff.as_millis() as u64, "cannot read stored progress yet; retrying");
            }
        },
    )
    .await?;
    if let Some(p) = &stored {
        tracing::info!(sink = name, partitions = p.len(), "read stored progress");
    }
    Ok(stored)
}

impl SinkState {
    /// Partitions assigned while running: reads what this sink stored, takes it as this run's
    /// starting point for `tps` (what it drops as already stored, where its progress may not go
    /// back below) and returns it for `tps`.
    async fn read_progress(&mut self, tps: &[TopicPartition]) -> Result<(StoredProgress, StoredStates), String> {
        let stored = read_stored_progress(&self.args.name, &mut self.args.writer).await.map_err(|e| e.to_string())?.unwrap_or_default();
        let written = self.args.writer.take_written();
        let states = self.args.writer.take_stored_states();
        let mine = self.args.stored.get_or_insert_with(StoredProgress::new);
        let (mut got_p, mut got_s) = (StoredProgress::new(), StoredStates::new());
        for tp in tps {
            mine.remove(tp);
            self.args.written.remove(tp);
            self.args.stored_states.remove(tp);
            if let Some(p) = stored.get(tp) {
                mine.insert(tp.clone(), *p);
                got_p.insert(tp.clone(), *p);
            }
            if let Some(w) = written.get(tp) {
                self.args.written.insert(tp.clone(), w.clone());
            }
            if let Some(s) = states.get(tp) {
                self.args.stored_states.insert(tp.clone(), s.clone());
                got_s.insert(tp.clone(), s.clone());
            }
        }
        self.args.board.expect_partitions(&self.args.name, tps, &got_p);
        Ok((got_p, got_s))
    }

    fn transactional(&self) -> bool {
        self.args.stored.is_some()
    }

    /// The progress to store now. A restarted engine starts its ledger afresh, so until it has
    /// caught up its emitted-through lies below what this sink stored before; storing that
    /// would make a second crash re-emit what is already here. Emitted-through never goes back.
    fn checkpoint(&self) -> Checkpoint {
        let mut c = self.args.board.checkpoint();
        if let Some(stored) = &self.args.stored {
            for (tp, p) in &mut c.entries {
                if let Some(s) = stored.get(tp) {
                    p.emitted_through = p.emitted_through.max(s.emitted_through);
                    // Nor does the resume offset: this run replays from the lowest any sink
                    // stored and takes the same decisions (a function of the input), so what this
                    // sink stored stays a valid place to resume from until the run passes it. A
                    // resume that went back would let a replay meet closes folded away above it.
                    if s.resume > p.resume {
                        p.resume = s.resume;
                        if let (Some(now), Some(then)) = (c.states.get_mut(tp), self.args.stored_states.get(tp)) {
                            now.max_t = then.max_t;
                        }
                    }
                }
            }
        }
        c
    }

    /// The run was fenced (see [`ProgressBoard::fence`]): drop what is buffered, store nothing,
    /// and let the producers go on so that the tree can stop. The holds are never acknowledged:
    /// the offsets behind them stay where the stores have them, and whoever owns the partitions
    /// next reads those records again.
    fn discard(&mut self) {
        if self.buffered > 0 {
            tracing::info!(sink = %self.args.name, records = self.buffered, "fenced: dropping buffered records; they are read again from the stored progress");
            metrics::counter!("meltstream_sink_fenced_dropped_total", "sink" => self.args.name.clone()).increment(self.buffered as u64);
        }
        self.args.writer.discard();
        self.buffered = 0;
        self.pending.clear();
        self.origins.clear();
        self.permits.clear();
        self.stored_version = self.args.board.version();
    }

    /// True when `e` is already durable in this sink from before a restart.
    fn already_stored(&self, e: &Emitted) -> bool {
        let (Some(stored), Some((input, offset))) = (&self.args.stored, e.position) else { return false };
        let Some(tp) = self.args.board.partition_of(input) else { return false };
        stored.get(&tp).is_some_and(|p| offset < p.emitted_through) || self.args.written.get(&tp).is_some_and(|w| w.contains(&offset))
    }

    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        let progressed = self.transactional() && self.args.board.version() != self.stored_version;
        if self.buffered == 0 && self.pending.is_empty() && !progressed {
            return Ok(());
        }
        // The checkpoint is taken again for every attempt: partitions revoked in between drop
        // out of it (a retry must never store progress of a partition another process owns).
        // A sink fenced by another owner of a partition retries too, for a while: when the
        // partition was just revoked, the next attempt no longer carries it; a real zombie loses
        // its partitions within the session timeout and then writes nothing.
        let started = std::time::Instant::now();
        let name = self.args.name.clone();
        let stats = self.args.stats.clone();
        let draining = self.draining;
        let board = self.args.board.clone();
        let stopping = move || draining || board.is_stopping();
        let flushed = retry(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5)),
            self,
            |st| {
                Box::pin(async move {
                    let checkpoint = if st.transactional() { st.checkpoint() } else { Checkpoint::default() };
                    if checkpoint.fenced {
                        return Ok(None);
                    }
                    st.args.writer.flush(&checkpoint).await.map(|()| Some(checkpoint))
                })
            },
            |e| matches!(e, SinkError::Retryable { .. }) || (matches!(e, SinkError::Fenced { .. }) && !stopping() && started.elapsed() < FENCED_GRACE),
            |e, backoff| {
                tracing::warn!(sink = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "sink flush failed, retrying");
                stats.health.sink_failing(&name, &e.to_string(), now_wall_ns());
                metrics::counter!("meltstream_sink_retries_total", "sink" => name.clone()).increment(1);
            },
        )
        .await;
        let flushed = match flushed {
            Ok(f) => f,
            // The last flush of a stop, after the consumer left the group: storing nothing is
            // safe (whoever reads the partitions next starts from the stored progress).
            Err(SinkError::Fenced { message, .. }) if draining || self.args.board.is_stopping() => {
                tracing::warn!(sink = %self.args.name, %message, "fenced while stopping: what is buffered is dropped and read again from the stored progress");
                None
            }
            Err(e) => return Err(Box::new(e)),
        };
        let Some(checkpoint) = flushed else {
            self.discard();
            return Ok(());
        };
        self.stored_version = checkpoint.version;
        if self.transactional() {
            self.args.board.stored_by(&self.args.name, &checkpoint);
        }
        let now = now_wall_ns();
        self.args.stats.health.sink_durable(&self.args.name, now);
        metrics::histogram!("meltstream_sink_commit_seconds", "sink" => self.args.name.clone()).record(started.elapsed().as_secs_f64());
        self.args.stats.gauges.sink_commit(&self.args.name, started.elapsed().as_micros() as u64);
        record_latencies(&self.args.stats, &self.args.name, LatencyStage::Durable, now, &self.origins);
        self.origins.clear();
        let n = self.buffered as u64;
        metrics::counter!("meltstream_sink_records_total", "sink" => self.args.name.clone()).increment(n);
        EngineStats::add(&self.args.stats.records_durable, n);
        self.buffered = 0;
        let holds = std::mem::take(&mut self.pending);
        if !holds.is_empty() {
            let _ = self.args.commit.cast(CommitMsg::Durable(holds));
        }
        // Releasing the permits lets the producers go on: only after durability.
        self.permits.clear();
        Ok(())
    }
}

/// Records the latency of each record from its origin to `now`, per kind, in the engine's
/// histograms and in the `meltstream_result_latency_seconds` metric.
fn record_latencies(stats: &EngineStats, sink: &str, stage: LatencyStage, now: i64, origins: &[(LatencyKind, i64)]) {
    for kind in [LatencyKind::WindowClose, LatencyKind::Alert, LatencyKind::Other] {
        let of_kind = || origins.iter().filter(move |(k, _)| *k == kind).map(|&(_, o)| (now - o).max(0));
        if of_kind().next().is_none() {
            continue;
        }
        stats.record_latencies(kind, stage, of_kind().map(|ns| (ns / 1000) as u64));
        let h = metrics::histogram!("meltstream_result_latency_seconds", "sink" => sink.to_owned(), "kind" => format!("{kind:?}"), "stage" => format!("{stage:?}"));
        for ns in of_kind() {
            h.record(ns as f64 / 1e9);
        }
    }
}

impl Actor for SinkActor {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(&self, myself: ActorRef<SinkMsg>, args: SinkArgs) -> Result<SinkState, ActorProcessingErr> {
        myself.send_interval(args.flush_every, || SinkMsg::Tick);
        args.stats.health.sink_started(&args.name);
        if let Some(stored) = &args.stored {
            args.board.expect_sink(&args.name, stored);
        }
        Ok(SinkState { args, pending: Vec::new(), permits: Vec::new(), origins: Vec::new(), buffered: 0, stored_version: 0, draining: false })
    }

    async fn handle(&self, _myself: ActorRef<SinkMsg>, msg: SinkMsg, st: &mut SinkState) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Records(mut records, permit) => {
                // Results of partitions revoked since: their next owner writes them.
                let revoked = st.args.board.retain_live(&mut records);
                if revoked > 0 {
                    metrics::counter!("meltstream_sink_revoked_dropped_total", "sink" => st.args.name.clone()).increment(revoked as u64);
                }
                let mut replayed = Vec::new();
                if st.args.stored.is_some() {
                    let (old, new): (Vec<Emitted>, Vec<Emitted>) = records.into_iter().partition(|r| st.already_stored(r));
                    records = new;
                    replayed = old;
                }
                if !replayed.is_empty() {
                    metrics::counter!("meltstream_sink_replayed_skipped_total", "sink" => st.args.name.clone()).increment(replayed.len() as u64);
                    for r in &replayed {
                        for h in r.hold.iter() {
                            st.pending.push((*h, 1));
                        }
                    }
                }
                if !records.is_empty() {
                    write_with_retries(&st.args.name, &st.args.stats, &mut st.args.writer, &records).await?;
                }
                let at_sink: Vec<(LatencyKind, i64)> = records.iter().map(|r| (LatencyKind::of(&r.record), r.origin_wall_ns)).collect();
                record_latencies(&st.args.stats, &st.args.name, LatencyStage::AtSink, now_wall_ns(), &at_sink);
                st.origins.extend(at_sink);
                for r in &records {
                    for h in r.hold.iter() {
                        match st.pending.iter_mut().find(|(x, _)| x == h) {
                            Some((_, c)) => *c += 1,
                            None => st.pending.push((*h, 1)),
                        }
                    }
                }
                st.buffered += records.len();
                st.permits.push(permit);
                if st.buffered >= 4096 {
                    st.flush().await?;
                }
            }
            SinkMsg::Tick => st.flush().await?,
            SinkMsg::ReadProgress(tps, reply) => {
                let got = st.read_progress(&tps).await;
                let _ = reply.send(got);
            }
            SinkMsg::Drain(reply) => {
                st.draining = true;
                st.flush().await?;
                if st.transactional() {
                    // The coordinator sees our last acknowledgements first (one mailbox, in
                    // order), then publishes the final progress, which we store.
                    let _ = ractor::call!(st.args.commit, CommitMsg::Committed);
                    st.flush().await?;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
