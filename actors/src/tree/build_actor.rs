//! One actor per build: takes the batch parts and watermarks the router queued for it
//! ([`crate::build_queue`]), in order, feeds them to its [`BuildPipeline`] (the build's chain of
//! operators), and routes what it emits to the sinks.
//!
//! The processor and the receiving end of the queue live in a [`BuildSlot`] that outlives the
//! actor: if processing panics, the router restarts the actor on the same slot, the block that
//! was being processed is dead-lettered as poison (it is never replayed into a crash loop), and
//! the rest of the batch goes on. A block's checks run before it changes any state, so the
//! state stays whole. Only the build actor ever locks its slot (the router keeps it only to
//! hand it to a restarted actor), so holding it for a whole batch blocks nobody.
//!
//! # Backpressure
//! A batch part arrives with permits of the engine's memory budget and takes a place in the
//! build's bounded queue; both are released when the part is processed and its results handed
//! to the sinks, so a stalled sink holds the budget and the router waits.
//!
//! # Shutdown
//! `Close` takes everything queued, emits every open window (or, for a stop that a replay
//! resumes, none), hands the results to the sinks and stops the actor.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::event::{BuildId, InputId};
use meltstream_engine::input::reject::{DeadLetter, RejectReason};
use meltstream_engine::offset_ledger::{HoldSet, HolderId};
use meltstream_engine::pipeline::build_pipeline::BuildPipeline;
use meltstream_engine::pipeline::operator::Ctx;
use meltstream_engine::records::{DeadLetterRecord, Emitted, OutputRecord};

use crate::engine_stats::EngineStats;
use crate::progress::ProgressBoard;
use crate::memory_budget::MemoryPermit;
use crate::ports::clock::now_wall_ns;
use crate::ports::messages::{CommitMsg, RouterMsg, StampedWatermark};
use crate::tree::build_queue::{BuildQueue, Next, QueueReceiver, QueuedBatch};
use crate::tree::outputs::{DeadLetterDesk, Outputs};

/// A batch being processed, kept so that a restart knows which block failed.
pub struct InFlight {
    batch: Arc<RecordBatch>,
    /// Block being processed; `None` while the batch's events are.
    block: Option<usize>,
    origin_wall_ns: i64,
    _permit: Option<MemoryPermit>,
}

/// A build's state, kept by the router across crashes of the actor but locked only by it.
///
/// The receiving end of the build's queue lives here, not in the actor, so that a crash loses
/// nothing queued: the restarted actor finds it as it was.
pub struct BuildSlot {
    /// The build's windows and rules.
    pub processor: BuildPipeline,
    /// The batch in progress, if any.
    pub in_flight: Option<InFlight>,
    /// The receiving end of the build's queue.
    pub rx: QueueReceiver,
    /// Records emitted and not yet handed to the sinks: kept here so that a crash mid-batch does
    /// not lose the alerts of the blocks before the poison one.
    pub out: Vec<Emitted>,
    /// The input (partition) the build reads, from its first batch: its decisions are stored
    /// with that partition's progress.
    pub input: Option<InputId>,
}

impl BuildSlot {
    /// A slot around a build's pipeline and the receiving end of its queue.
    pub fn new(processor: BuildPipeline, rx: QueueReceiver) -> BuildSlot {
        BuildSlot { processor, in_flight: None, rx, out: Vec::new(), input: None }
    }
}

/// Shared handle to a slot.
pub type SharedSlot = Arc<Mutex<BuildSlot>>;

/// Messages of a build actor.
pub enum BuildMsg {
    /// The queue has batches or a watermark.
    Wake,
    /// Take everything queued, then (with `true`) emit every open window, hand the results to the
    /// sinks and stop; with `false`, stop without emitting the open windows — a replayable
    /// source reads them again after a restart — and keep their holds so that the final
    /// progress stops before them. Replies when done.
    Close(Option<RpcReplyPort<()>>, bool),
    /// Idle: take everything queued; then, if the build has nothing open, reply `true` and stop
    /// (the router keeps the slot and starts a new actor on it for the next records); otherwise
    /// reply `false` and go on.
    Park(RpcReplyPort<bool>),
    /// Idle with layer windows open: take everything queued, then emit the open layer windows
    /// (recording where, for a replay) and go on.
    FlushLayers,
}

/// Arguments of a build actor.
pub struct BuildArgs {
    /// The build.
    pub build: BuildId,
    /// Its holder id in the offset ledger.
    pub holder: HolderId,
    /// Its state.
    pub slot: SharedSlot,
    /// Its queue (the router's end: the pending watermark and the wake flag).
    pub queue: Arc<BuildQueue>,
    /// The sinks.
    pub outputs: Outputs,
    /// The commit coordinator.
    pub commit: ActorRef<CommitMsg>,
    /// The router (for `BuildFinished`).
    pub router: ActorRef<RouterMsg>,
    /// Engine counters.
    pub stats: Arc<EngineStats>,
    /// Names, logs and counts dead letters.
    pub dead_letters: DeadLetterDesk,
    /// Where the build's close decisions go (stored with the progress).
    pub board: ProgressBoard,
    /// Why the previous incarnation failed, when this is a restart.
    pub restarted_after: Option<String>,
}

/// The build actor.
pub struct BuildActor;

/// State of a build actor.
pub struct BuildState {
    args: BuildArgs,
    out: Vec<Emitted>,
    late_reported: u64,
}

fn lock(slot: &SharedSlot) -> std::sync::MutexGuard<'_, BuildSlot> {
    // A panic while processing poisons the mutex; the state itself is whole (see module docs).
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl BuildState {
    /// Processes blocks of the in-flight batch from `from` on; used for new batches and to
    /// resume after a poison block.
    fn run_in_flight(&mut self, from: Option<usize>) {
        let mut slot = lock(&self.args.slot);
        let BuildSlot { processor, in_flight, out, .. } = &mut *slot;
        let Some(f) = in_flight.as_mut() else { return };
        let batch = f.batch.clone();
        let ctx = Ctx { hold: Some((batch.span.input, batch.span.seq)), now_wall_ns: now_wall_ns(), origin_wall_ns: f.origin_wall_ns };
        if from.is_none() {
            f.block = None;
            processor.process_events(&batch, &ctx, out);
        }
        let start = from.unwrap_or(0);
        for i in start..batch.blocks.len() {
            f.block = Some(i);
            processor.process_block(&batch, i, &ctx, out);
        }
        processor.finish_batch(&batch, &ctx, out);
        // Dead letters of the processor (unmatched layer ends, operators that panicked) still
        // need their source's names.
        self.args.dead_letters.file_all(out);
        self.out.append(out);
    }

    /// Hands emitted records to the sinks after reporting them, with the build's holds, to the
    /// commit coordinator; releases the batch `released`.
    async fn deliver(&mut self, released: Option<(meltstream_engine::input::event::InputId, u64)>) {
        let (holds, counters, finished, decisions) = {
            let mut slot = lock(&self.args.slot);
            let d = slot.processor.take_changed_decisions().zip(slot.input);
            (slot.processor.holds(), slot.processor.counters(), slot.processor.finished(), d)
        };
        // The decisions reach the progress board before the results they decide reach a sink:
        // a transaction that holds a result holds its decision.
        if let Some((d, input)) = decisions {
            self.args.board.set_decisions(input, &self.args.build, d);
        }
        let records = std::mem::take(&mut self.out);
        let plan = self.args.outputs.plan(records);
        let _ = self.args.commit.cast(CommitMsg::Progress { holder: self.args.holder, emitted: plan.deliveries.clone(), holds, released });
        self.args.outputs.send(plan).await;
        self.args.stats.set_build(&self.args.build, counters);
        if counters.late_samples > self.late_reported {
            metrics::counter!("meltstream_late_samples_total").increment(counters.late_samples - self.late_reported);
            self.late_reported = counters.late_samples;
        }
        if finished {
            let _ = self.args.router.cast(RouterMsg::BuildFinished(self.args.build.clone()));
        }
    }
}

impl BuildState {
    /// Applies a watermark: closes what it completes. Window results measure their latency
    /// from the moment the watermark was computed.
    fn apply_watermark(&mut self, w: StampedWatermark) {
        let mut slot = lock(&self.args.slot);
        let ctx = Ctx { hold: None, now_wall_ns: now_wall_ns(), origin_wall_ns: w.computed_wall_ns };
        let mut out = Vec::new();
        if let Some(p) = w.position {
            slot.processor.reach_position(p, &ctx, &mut out);
        }
        if w.ahead_of_data {
            slot.processor.on_input_watermark(w.wm, &ctx, &mut out);
        } else {
            slot.processor.on_watermark(w.wm, &ctx, &mut out);
        }
        self.args.dead_letters.file_all(&mut out);
        self.out.append(&mut out);
    }

    /// Runs `f` (a close of the build's windows on the wall clock) and keeps what it emits.
    fn emit_now(&mut self, f: fn(&mut BuildPipeline, &Ctx, &mut Vec<Emitted>)) {
        let mut slot = lock(&self.args.slot);
        let ctx = Ctx { hold: None, now_wall_ns: now_wall_ns(), origin_wall_ns: now_wall_ns() };
        let mut out = Vec::new();
        f(&mut slot.processor, &ctx, &mut out);
        self.args.dead_letters.file_all(&mut out);
        self.out.append(&mut out);
    }

    /// Takes everything queued, in order, until the queue is empty.
    async fn drain_queue(&mut self) {
        loop {
            let next = {
                let mut slot = lock(&self.args.slot);
                slot.rx.next(&self.args.queue)
            };
            match next {
                Next::Batch(QueuedBatch { watermark_before, batch, permit, origin_wall_ns }) => {
                    if let Some(w) = watermark_before {
                        self.apply_watermark(w);
                    }
                    let hold = (batch.span.input, batch.span.seq);
                    {
                        let mut slot = lock(&self.args.slot);
                        slot.input.get_or_insert(batch.span.input);
                        slot.in_flight = Some(InFlight { batch, block: None, origin_wall_ns, _permit: permit });
                    }
                    self.run_in_flight(None);
                    let done = lock(&self.args.slot).in_flight.take();
                    self.deliver(Some(hold)).await;
                    drop(done);
                }
                Next::Watermark(w) => {
                    self.apply_watermark(w);
                    if !self.out.is_empty() {
                        self.deliver(None).await;
                    }
                }
                Next::Empty => {
                    let more = {
                        let slot = lock(&self.args.slot);
                        self.args.queue.idle(&slot.rx)
                    };
                    if !more {
                        return;
                    }
                }
            }
        }
    }
}

impl Actor for BuildActor {
    type Msg = BuildMsg;
    type State = BuildState;
    type Arguments = BuildArgs;

    async fn pre_start(&self, _myself: ActorRef<BuildMsg>, args: BuildArgs) -> Result<BuildState, ActorProcessingErr> {
        let mut st = BuildState { args, out: Vec::new(), late_reported: 0 };
        // A restart: the block in flight made the last incarnation fail. Dead-letter it and go on
        // with the rest of its batch.
        let poison = {
            let slot = lock(&st.args.slot);
            slot.in_flight.as_ref().map(|f| (f.batch.clone(), f.block))
        };
        if let Some((batch, block)) = poison {
            let why = st.args.restarted_after.clone().unwrap_or_else(|| "actor failed".into());
            let offset = block.and_then(|b| batch.blocks.get(b)).map_or(batch.span.first_offset, |h| h.source_offset);
            let what = format!("block {} of batch {}", block.map_or(-1, |b| b as i64), batch.span.seq);
            let dl = DeadLetter::new(batch.span.input, offset, RejectReason::Poison(why), what.as_bytes());
            tracing::error!(build_id = %st.args.build, input = batch.span.input, offset, reason = %dl.reason, "dead-lettering the record that crashed the build actor");
            let mut r = DeadLetterRecord::from_dead_letter(String::new(), None, &dl);
            st.args.dead_letters.file(&mut r, Some(batch.span.input));
            st.out.push(Emitted {
                record: OutputRecord::DeadLetter(r),
                hold: HoldSet::one((batch.span.input, batch.span.seq)),
                origin_wall_ns: now_wall_ns(),
                position: Some((batch.span.input, offset)),
            });
            let next = block.map(|b| b + 1);
            st.run_in_flight(Some(next.unwrap_or(0)));
            lock(&st.args.slot).in_flight = None;
            st.deliver(Some((batch.span.input, batch.span.seq))).await;
        }
        Ok(st)
    }

    async fn post_start(&self, myself: ActorRef<BuildMsg>, _st: &mut BuildState) -> Result<(), ActorProcessingErr> {
        // After a restart the queue may hold what the failed incarnation had not reached.
        let _ = myself.cast(BuildMsg::Wake);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<BuildMsg>, msg: BuildMsg, st: &mut BuildState) -> Result<(), ActorProcessingErr> {
        match msg {
            BuildMsg::Wake => st.drain_queue().await,
            BuildMsg::Park(reply) => {
                st.drain_queue().await;
                if !st.out.is_empty() {
                    st.deliver(None).await;
                }
                let quiet = {
                    let slot = lock(&st.args.slot);
                    slot.processor.quiescent() && slot.in_flight.is_none()
                };
                let _ = reply.send(quiet);
                if quiet {
                    myself.stop(Some("parked".into()));
                }
            }
            BuildMsg::FlushLayers => {
                st.drain_queue().await;
                st.emit_now(BuildPipeline::flush_open_layers);
                if !st.out.is_empty() {
                    tracing::info!(build_id = %st.args.build, "build idle with layers open; emitted them (recorded for a replay)");
                    st.deliver(None).await;
                }
            }
            BuildMsg::Close(reply, emit_open) => {
                st.drain_queue().await;
                if emit_open {
                    st.emit_now(BuildPipeline::on_close);
                }
                st.deliver(None).await;
                if emit_open {
                    let _ = st.args.commit.cast(CommitMsg::HolderGone(st.args.holder));
                }
                if let Some(r) = reply {
                    let _ = r.send(());
                }
                myself.stop(Some("closed".into()));
            }
        }
        Ok(())
    }
}
