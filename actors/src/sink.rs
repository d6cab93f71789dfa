//! Sink actors: take records in batches, write them through a [`SinkWriter`], and once the
//! writer says they are durable, acknowledge their holds to the commit coordinator so that the
//! source offsets behind them may be committed.
//!
//! # Backpressure
//! Every delivery carries permits of the sink's semaphore (one per record); they are released
//! only when the records are durable. A sink that stalls therefore stops the build actors that
//! feed it, which stop the router, which stops the sources: memory stays bounded.
//!
//! # Shutdown
//! `Drain` flushes what is buffered and replies once it is durable.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::OwnedSemaphorePermit;

use meltstream_engine::offset_ledger::Hold;
use meltstream_engine::records::Emitted;

use crate::commit_coordinator::CommitMsg;
use crate::engine_stats::EngineStats;
use crate::now_wall_ns;

/// Where records end up. `write` may buffer; `flush` makes everything written so far durable.
pub trait SinkWriter: Send + 'static {
    /// Buffers or writes records.
    fn write(&mut self, records: &[Emitted]) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
    /// Makes everything written durable.
    fn flush(&mut self) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
}

/// An object-safe wrapper so that a topology can hold sinks of different types.
pub type BoxedWriter = Box<dyn DynWriter>;

/// Object-safe form of [`SinkWriter`].
pub trait DynWriter: Send + 'static {
    /// See [`SinkWriter::write`].
    fn write<'a>(&'a mut self, records: &'a [Emitted]) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>>;
    /// See [`SinkWriter::flush`].
    fn flush(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + '_>>;
}

impl<W: SinkWriter> DynWriter for W {
    fn write<'a>(&'a mut self, records: &'a [Emitted]) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(SinkWriter::write(self, records))
    }
    fn flush(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + '_>> {
        Box::pin(SinkWriter::flush(self))
    }
}

/// A sink failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Transient: retrying may help (the sink retries with backoff).
    #[error("sink {sink}: {message} (will retry)")]
    Retryable {
        /// The sink.
        sink: String,
        /// What failed.
        message: String,
    },
    /// Permanent: the sink fails and its supervisor decides.
    #[error("sink {sink}: {message}")]
    Fatal {
        /// The sink.
        sink: String,
        /// What failed.
        message: String,
    },
}

/// Messages of a sink actor.
pub enum SinkMsg {
    /// Records, with one permit each of the sink's queue.
    Records(Vec<Emitted>, OwnedSemaphorePermit),
    /// Periodic flush.
    Tick,
    /// Flush everything and reply when durable.
    Drain(RpcReplyPort<()>),
}

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
}

/// State of a sink actor.
pub struct SinkState {
    args: SinkArgs,
    pending: Vec<(Hold, u32)>,
    permits: Vec<OwnedSemaphorePermit>,
    origins: Vec<i64>,
    buffered: usize,
}

/// The sink actor.
pub struct SinkActor;

/// Writes `records` (or, with `None`, flushes), retrying a retryable failure with exponential
/// backoff (50 ms doubling to 5 s); a fatal one fails the actor.
async fn with_retries(name: &str, writer: &mut BoxedWriter, records: Option<&[Emitted]>) -> Result<(), ActorProcessingErr> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let res = match records {
            Some(r) => writer.write(r).await,
            None => writer.flush().await,
        };
        match res {
            Ok(()) => return Ok(()),
            Err(SinkError::Retryable { sink, message }) => {
                let what = if records.is_some() { "write" } else { "flush" };
                tracing::warn!(sink = %sink, error = %message, backoff_ms = backoff.as_millis() as u64, "sink {what} failed, retrying");
                metrics::counter!("meltstream_sink_retries_total", "sink" => name.to_owned()).increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e @ SinkError::Fatal { .. }) => return Err(Box::new(e)),
        }
    }
}

impl SinkState {
    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        if self.buffered == 0 {
            return Ok(());
        }
        with_retries(&self.args.name, &mut self.args.writer, None).await?;
        let now = now_wall_ns();
        self.args.stats.record_latencies(self.origins.iter().map(|&o| ((now - o).max(0) / 1000) as u64));
        for &o in &self.origins {
            metrics::histogram!("meltstream_result_latency_seconds", "sink" => self.args.name.clone()).record((now - o).max(0) as f64 / 1e9);
        }
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

impl Actor for SinkActor {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(&self, myself: ActorRef<SinkMsg>, args: SinkArgs) -> Result<SinkState, ActorProcessingErr> {
        myself.send_interval(args.flush_every, || SinkMsg::Tick);
        Ok(SinkState { args, pending: Vec::new(), permits: Vec::new(), origins: Vec::new(), buffered: 0 })
    }

    async fn handle(&self, _myself: ActorRef<SinkMsg>, msg: SinkMsg, st: &mut SinkState) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Records(records, permit) => {
                with_retries(&st.args.name, &mut st.args.writer, Some(&records)).await?;
                for r in &records {
                    for h in r.hold.iter() {
                        match st.pending.iter_mut().find(|(x, _)| x == h) {
                            Some((_, c)) => *c += 1,
                            None => st.pending.push((*h, 1)),
                        }
                    }
                    st.origins.push(r.origin_wall_ns);
                }
                st.buffered += records.len();
                st.permits.push(permit);
                if st.buffered >= 4096 {
                    st.flush().await?;
                }
            }
            SinkMsg::Tick => st.flush().await?,
            SinkMsg::Drain(reply) => {
                st.flush().await?;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
