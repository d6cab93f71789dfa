//! The router: splits every source batch by build, starts one build actor per build on its
//! first event (and supervises them), forwards watermarks behind the data, and dead-letters what
//! the decoders rejected.
//!
//! # Backpressure
//! A source batch arrives with a credit of the source queue (and its permit of the sources'
//! share of the memory budget); the router takes permits of the builds' share for each build
//! part and a place in that build's bounded queue before forwarding it, and returns the source
//! credit only once every part is forwarded. With the budget spent or a build's queue full, the
//! router waits and the sources, out of credits, wait too. The router never takes a lock that a
//! build actor holds while it processes (see `build_queue.rs`).
//!
//! # Watermarks
//! A build follows the watermark of the input its records come from (its Kafka partition; the
//! minimum over its inputs should it have several), not the combined one: its results depend
//! on that input's order alone. An advance goes to the build's queue as its one pending
//! watermark (the latest wins), never as one queued item per advance, and never ahead of the
//! data sent before it.
//!
//! # Idle builds
//! A build without records for `build_idle_timeout_ms` (wall clock) and with nothing open is
//! parked: its actor stops, its state stays (see `RouterState::park`), which changes no result.
//! One with windows still open is flushed (its windows emitted as final) and stopped, as
//! before: a wall-clock decision a replay does not repeat (issue 9 leaves it to be recorded).
//!
//! # Supervision
//! Build actors are linked to the router. A failed build actor is restarted on its preserved
//! state within the restart intensity (`max_restarts` in `max_restart_window_s`); beyond it the
//! router fails, and the engine stops with that error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::event::{BuildId, InputId, TimeNs};
use meltstream_engine::pipeline::build_pipeline::{BuildPipeline, BuildSettings};
use meltstream_engine::offset_ledger::{HoldSet, HolderId};
use meltstream_engine::records::{DeadLetterRecord, Emitted, OutputRecord};
use meltstream_engine::restart_budget::RestartBudget;

use crate::engine_stats::EngineStats;
use crate::memory_budget::{batch_bytes, MemoryBudget, Stage};
use crate::ports::clock::now_wall_ns;
use crate::ports::messages::{CommitMsg, RouterMsg, StampedWatermark, WatermarkMsg};
use crate::tree::build_actor::{BuildActor, BuildArgs, BuildMsg, BuildSlot, SharedSlot};
use crate::tree::build_queue::{build_queue, BuildQueue, QueuedBatch};
use crate::tree::outputs::{DeadLetterDesk, Outputs};

mod inputs;
mod quality;

/// Arguments of the router.
pub struct RouterArgs {
    /// What builds compute.
    pub settings: Arc<BuildSettings>,
    /// Sinks.
    pub outputs: Outputs,
    /// Commit coordinator.
    pub commit: ActorRef<CommitMsg>,
    /// The engine's memory budget (the router pays the builds' share).
    pub budget: MemoryBudget,
    /// Capacity of each build's queue, in batch parts.
    pub build_queue_batches: usize,
    /// Build idle timeout.
    pub build_idle: Duration,
    /// Restart intensity.
    pub restarts: RestartBudget,
    /// Engine counters.
    pub stats: Arc<EngineStats>,
    /// Names, logs and counts dead letters.
    pub dead_letters: DeadLetterDesk,
    /// Where progress and the replay state go.
    pub board: crate::progress::ProgressBoard,
}

struct BuildEntry {
    /// `None` while parked (idle, nothing open: the actor stopped, the state kept in `slot`).
    actor: Option<ActorRef<BuildMsg>>,
    slot: SharedSlot,
    queue: Arc<BuildQueue>,
    holder: HolderId,
    last_batch: Instant,
    /// The inputs its records came from.
    inputs: Vec<InputId>,
    /// The watermark last queued for it.
    watermark: TimeNs,
}

/// State of the router.
pub struct RouterState {
    args: RouterArgs,
    coordinator: Option<ActorRef<WatermarkMsg>>,
    builds: HashMap<BuildId, BuildEntry>,
    by_actor: HashMap<ActorId, BuildId>,
    /// Builds that ended: later records for them are late.
    ended: HashMap<BuildId, ()>,
    /// Each input's own watermark.
    watermarks: HashMap<InputId, TimeNs>,
    /// Per input, the largest event time routed so far.
    max_t_seen: HashMap<InputId, TimeNs>,
    /// Per input, the offset after the last batch routed (every record before it routed).
    positions: HashMap<InputId, u64>,
    /// The builds whose records came from each input.
    by_input: HashMap<InputId, Vec<BuildId>>,
    next_holder: HolderId,
    /// How metrics and `/health/ready` name each input (see `input_label`).
    labels: HashMap<InputId, String>,
    /// Each input's open `input_quality` window, when a sink takes those records.
    quality: Option<meltstream_engine::pipeline::input_quality::InputQualityWindows>,
}

/// The router actor.
pub struct Router;

impl RouterState {
    async fn spawn_build(&mut self, myself: &ActorRef<RouterMsg>, build: BuildId, slot: SharedSlot, queue: Arc<BuildQueue>, holder: HolderId, why: Option<String>) -> Result<ActorRef<BuildMsg>, ActorProcessingErr> {
        let args = BuildArgs {
            build: build.clone(),
            holder,
            slot,
            queue,
            outputs: self.args.outputs.clone(),
            commit: self.args.commit.clone(),
            router: myself.clone(),
            stats: self.args.stats.clone(),
            dead_letters: self.args.dead_letters.clone(),
            board: self.args.board.clone(),
            restarted_after: why,
        };
        let (actor, _) = Actor::spawn_linked(None, BuildActor, args, myself.get_cell()).await?;
        self.by_actor.insert(actor.get_id(), build);
        Ok(actor)
    }

    /// The description of `build` in `[build_info] dir`, read when its processor starts. A file
    /// that cannot be read or is wrong is logged and counted; the build goes on without it.
    fn build_info(&self, build: &BuildId) -> Option<Arc<meltstream_engine::input::build_info::BuildInfo>> {
        let dir = self.args.settings.build_info_dir.as_deref()?;
        match meltstream_engine::input::build_info::load(dir, build) {
            Ok(Some(info)) => {
                tracing::info!(build_id = %build, machine = info.machine.as_deref().unwrap_or(""), material = info.material.as_deref().unwrap_or(""), "build description joined");
                Some(Arc::new(info))
            }
            Ok(None) => {
                metrics::counter!("meltstream_build_info_missing_total").increment(1);
                None
            }
            Err(e) => {
                tracing::warn!(build_id = %build, error = %e, "the build's description cannot be used; the build goes on without it");
                metrics::counter!("meltstream_build_info_errors_total").increment(1);
                None
            }
        }
    }

    /// The actor of `build`, started (or unparked) on its first batch from `input`, whose
    /// records before that batch had `data_max_t` as their largest event time.
    /// `at` is the offset of the batch's first record: none of the build's records lies between
    /// where this run started reading and `at`, or (for a build that ended) those before `at`
    /// went through its earlier processor, whose decisions the board holds. So the new processor
    /// starts as a replay from `at` would: with the cooldowns recorded as running there.
    async fn build_actor(&mut self, myself: &ActorRef<RouterMsg>, build: &BuildId, input: InputId, data_max_t: TimeNs, at: u64) -> Result<ActorRef<BuildMsg>, ActorProcessingErr> {
        if let Some(e) = self.builds.get_mut(build) {
            e.last_batch = Instant::now();
            if !e.inputs.contains(&input) {
                e.inputs.push(input);
                self.by_input.entry(input).or_default().push(build.clone());
            }
            return self.unpark(myself, build).await;
        }
        let mut processor = BuildPipeline::new(build.clone(), self.args.settings.clone());
        let info = self.build_info(build);
        self.args.stats.live.set_machine(build, info.as_ref().and_then(|i| i.machine.clone()));
        processor.set_info(info);
        // What an earlier run (or this one, for a build that ended) decided for it.
        let (decisions, replay_from) = self.args.board.decisions(input, build);
        processor.resume(decisions, replay_from.max(at));
        if self.ended.contains_key(build) {
            // Everything for an ended build is late: a fresh processor must not reopen its layers.
            processor.mark_ended();
        }
        let w = self.watermarks.get(&input).copied().unwrap_or(TimeNs::MIN);
        if w > TimeNs::MIN {
            let ctx = meltstream_engine::pipeline::operator::Ctx { hold: None, now_wall_ns: now_wall_ns(), origin_wall_ns: now_wall_ns() };
            // Beyond what the records before give, the input's watermark moved on the wall
            // clock: the build records it for a replay.
            if w > data_max_t.saturating_sub(self.args.settings.watermark_bound_ns) {
                processor.on_input_watermark(w, &ctx, &mut Vec::new());
            } else {
                processor.on_watermark(w, &ctx, &mut Vec::new());
            }
        }
        let (queue, rx) = build_queue(self.args.build_queue_batches);
        let fill: Arc<dyn crate::engine_gauges::QueueFill> = queue.clone();
        self.args.stats.gauges.register_queue(build, Arc::downgrade(&fill));
        let slot: SharedSlot = Arc::new(std::sync::Mutex::new(BuildSlot::new(processor, rx)));
        self.next_holder += 1;
        let holder = self.next_holder;
        let actor = self.spawn_build(myself, build.clone(), slot.clone(), queue.clone(), holder, None).await?;
        tracing::info!(build_id = %build, "build actor started");
        metrics::gauge!("meltstream_active_builds").increment(1.0);
        self.builds.insert(build.clone(), BuildEntry { actor: Some(actor.clone()), slot, queue, holder, last_batch: Instant::now(), inputs: vec![input], watermark: w });
        self.by_input.entry(input).or_default().push(build.clone());
        Ok(actor)
    }

    async fn route(&mut self, myself: &ActorRef<RouterMsg>, mut batch: RecordBatch, origin: i64) -> Result<(), ActorProcessingErr> {
        let span = batch.span;
        // Read before its partition was revoked: its next owner reads it again.
        if self.args.board.is_revoked(span.input) {
            metrics::counter!("meltstream_revoked_batches_dropped_total").increment(1);
            return Ok(());
        }
        self.args.board.observe_batch(span.input, span.next_offset, batch.max_t_ns);
        // A replay's watermark starts where the run it replaces stood at the resume offset.
        let restored = self.args.board.take_restored_max_t(span.input).unwrap_or(TimeNs::MIN);
        let max_t = batch.max_t_ns.max(restored);
        // The input's largest event time before each record: its builds apply the watermark
        // record by record.
        let at = self.positions.entry(span.input).or_insert(0);
        *at = (*at).max(span.next_offset);
        let seen = self.max_t_seen.entry(span.input).or_insert(TimeNs::MIN);
        let base = (*seen).max(restored);
        batch.max_t_before = Arc::new(batch.max_t_steps(base));
        *seen = base.max(batch.max_t_ns);
        // Per input: records read, and how far behind arrival its event time runs.
        let input = self.input_label(span.input);
        metrics::counter!("meltstream_input_records_total", "input" => input.clone()).increment(batch.records);
        if batch.max_t_ns > TimeNs::MIN {
            metrics::gauge!("meltstream_input_event_time_skew_seconds", "input" => input.clone()).set((origin - batch.max_t_ns) as f64 / 1e9);
        }
        // Before the split, which takes the batch apart; its closed windows hold this batch.
        self.observe_quality(&batch, origin).await;
        let (parts, dead) = batch.split_by_build();
        if !dead.is_empty() {
            metrics::counter!("meltstream_input_dead_letters_total", "input" => input).increment(dead.len() as u64);
        }
        // One part per build plus the router's own (dead letters).
        let _ = self.args.commit.cast(CommitMsg::Register(span, parts.len() as u32 + 1));
        for (build, part) in parts {
            let samples = part.sample_count();
            let permit = self.args.budget.acquire(Stage::Builds, batch_bytes(&part)).await.ok_or("the memory budget was closed")?;
            self.build_actor(myself, &build, span.input, base, span.first_offset).await?;
            EngineStats::add(&self.args.stats.samples, samples);
            metrics::counter!("meltstream_samples_total").increment(samples);
            let Some(e) = self.builds.get(&build) else { continue };
            let queue = e.queue.clone();
            let item = QueuedBatch { watermark_before: None, batch: Arc::new(part), permit: Some(permit), origin_wall_ns: origin };
            if !queue.send(item).await {
                tracing::warn!(build_id = %build, "build actor's queue closed while routing");
            }
            self.wake(&build);
        }
        if let Some(c) = self.coordinator.clone() {
            if max_t > TimeNs::MIN {
                if let Ok(adv) = ractor::call!(c, WatermarkMsg::Observe, span.input, max_t) {
                    self.advance(adv);
                }
            }
        }
        if !dead.is_empty() {
            let mut records = Vec::with_capacity(dead.len());
            for d in dead {
                let mut r = DeadLetterRecord::from_dead_letter(String::new(), None, &d);
                self.args.dead_letters.file(&mut r, Some(span.input));
                records.push(Emitted { record: OutputRecord::DeadLetter(r), hold: HoldSet::one((span.input, span.seq)), origin_wall_ns: origin, position: Some((span.input, d.offset)) });
            }
            let plan = self.args.outputs.plan(records);
            let _ = self.args.commit.cast(CommitMsg::Emitted(plan.deliveries.clone()));
            self.args.outputs.send(plan).await;
        }
        let _ = self.args.commit.cast(CommitMsg::Release((span.input, span.seq)));
        Ok(())
    }

    /// The actor of a known build, started again on its kept state if it was parked.
    async fn unpark(&mut self, myself: &ActorRef<RouterMsg>, build: &BuildId) -> Result<ActorRef<BuildMsg>, ActorProcessingErr> {
        let Some(e) = self.builds.get(build) else { return Err(format!("build {build} is not known to the router").into()) };
        if let Some(a) = &e.actor {
            return Ok(a.clone());
        }
        let (slot, queue, holder) = (e.slot.clone(), e.queue.clone(), e.holder);
        // A wake sent while it was parked found no actor; post_start sends a new one.
        queue.rearm_wake();
        let actor = self.spawn_build(myself, build.clone(), slot, queue, holder, None).await?;
        if let Some(e) = self.builds.get_mut(build) {
            e.actor = Some(actor.clone());
        }
        metrics::gauge!("meltstream_parked_builds").decrement(1.0);
        tracing::debug!(build_id = %build, "parked build active again");
        Ok(actor)
    }

    /// Parks an idle build: when it has nothing open, its actor stops and its state (closed
    /// layers, cooldowns, counters) stays in its slot, so that later records meet exactly what
    /// they would have met had it never stopped. Idleness is wall-clock time; parking changes
    /// no result, only which task holds the state. A build with something open is not parked
    /// (the caller flushes it).
    /// Returns whether it parked (or already was).
    async fn park(&mut self, build: &BuildId) -> bool {
        let Some(e) = self.builds.get(build) else { return true };
        let Some(actor) = e.actor.clone() else { return true };
        match ractor::call!(actor, BuildMsg::Park) {
            Ok(true) => {
                self.by_actor.remove(&actor.get_id());
                if let Some(e) = self.builds.get_mut(build) {
                    e.actor = None;
                }
                metrics::gauge!("meltstream_parked_builds").increment(1.0);
                tracing::info!(build_id = %build, "build idle with nothing open; parked its actor (its state is kept)");
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(build_id = %build, error = %e, "parking an idle build failed");
                true
            }
        }
    }

    /// Wakes a build's actor unless a wake is already on its way.
    fn wake(&self, build: &BuildId) {
        if let Some(e) = self.builds.get(build) {
            let Some(actor) = &e.actor else { return };
            if e.queue.needs_wake() && actor.cast(BuildMsg::Wake).is_err() {
                tracing::warn!(build_id = %build, "build actor gone while routing");
            }
        }
    }

    /// Asks an idle build to emit its open layer windows (see `BuildMsg::FlushLayers`).
    fn flush_layers(&mut self, build: &BuildId) {
        let Some(e) = self.builds.get_mut(build) else { return };
        let Some(actor) = &e.actor else { return };
        if actor.cast(BuildMsg::FlushLayers).is_err() {
            tracing::warn!(build_id = %build, "build actor gone while flushing");
        }
        // Not asked again before another idle period.
        e.last_batch = Instant::now();
    }

    async fn close_build(&mut self, myself: &ActorRef<RouterMsg>, build: &BuildId) -> Result<(), ActorProcessingErr> {
        self.stop_build(myself, build, true).await
    }

    /// Stops a build's actor, emitting its open windows or (for a stop that a replay resumes)
    /// not. An actor that fails while it closes (a poison record still in its queue) is
    /// restarted on its slot, within the restart intensity, and asked again: the poison block is
    /// dead-lettered and the rest of its queue processed, as for a failure while running.
    async fn stop_build(&mut self, myself: &ActorRef<RouterMsg>, build: &BuildId, emit_open: bool) -> Result<(), ActorProcessingErr> {
        if !self.builds.contains_key(build) {
            return Ok(());
        }
        self.unpark(myself, build).await?;
        let Some(e) = self.builds.remove(build) else { return Ok(()) };
        for i in &e.inputs {
            if let Some(v) = self.by_input.get_mut(i) {
                v.retain(|b| b != build);
            }
        }
        metrics::gauge!("meltstream_active_builds").decrement(1.0);
        let Some(mut actor) = e.actor else { return Ok(()) };
        loop {
            // Ask it to close and wait, so its results are with the sinks before we go on.
            if ractor::call!(actor, |r| BuildMsg::Close(Some(r), emit_open)).is_ok() {
                self.by_actor.remove(&actor.get_id());
                return Ok(());
            }
            // Its supervision event comes later and finds nothing to do.
            self.by_actor.remove(&actor.get_id());
            let why = "the build actor failed while closing".to_string();
            EngineStats::add(&self.args.stats.restarts, 1);
            metrics::counter!("meltstream_actor_restarts_total", "actor" => "build").increment(1);
            if !self.args.restarts.allow(now_wall_ns()) {
                tracing::error!(build_id = %build, "restart intensity exceeded while closing; escalating");
                return Err(format!("build actor for {build} failed too often while closing; restart intensity exceeded").into());
            }
            tracing::warn!(build_id = %build, "build actor failed while closing; restarting it on its preserved state");
            e.queue.rearm_wake();
            actor = self.spawn_build(myself, build.clone(), e.slot.clone(), e.queue.clone(), e.holder, Some(why)).await?;
        }
    }
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn post_stop(&self, _myself: ActorRef<RouterMsg>, st: &mut RouterState) -> Result<(), ActorProcessingErr> {
        st.args.dead_letters.log_suppressed();
        Ok(())
    }

    async fn pre_start(&self, myself: ActorRef<RouterMsg>, args: RouterArgs) -> Result<RouterState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(500), || RouterMsg::Tick);
        let quality = args
            .outputs
            .wants(meltstream_engine::topology::RecordKind::InputQuality)
            .then(|| meltstream_engine::pipeline::input_quality::InputQualityWindows::new(args.settings.input_quality_window_ns, args.settings.watermark_bound_ns));
        Ok(RouterState {
            quality,
            args,
            coordinator: None,
            builds: HashMap::new(),
            by_actor: HashMap::new(),
            ended: HashMap::new(),
            watermarks: HashMap::new(),
            max_t_seen: HashMap::new(),
            positions: HashMap::new(),
            by_input: HashMap::new(),
            next_holder: 0,
            labels: HashMap::new(),
        })
    }

    async fn handle(&self, myself: ActorRef<RouterMsg>, msg: RouterMsg, st: &mut RouterState) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Batch(batch, credit, origin) => {
                st.route(&myself, batch, origin).await?;
                drop(credit);
            }
            RouterMsg::InputEnded(input) => {
                st.finish_quality(input).await;
                if let Some(c) = &st.coordinator {
                    let _ = c.cast(WatermarkMsg::Finish(input));
                }
                // Every record of the input is routed: its builds' watermark is the end of time
                // now, not when the coordinator's answer arrives (a drain may come first, and
                // would then stop builds whose end the data already decides: no build report).
                st.advance(vec![(input, StampedWatermark { wm: meltstream_engine::windows::watermark::END_OF_TIME, computed_wall_ns: now_wall_ns(), ahead_of_data: true, position: None })]);
            }
            RouterMsg::SetCoordinator(c) => st.coordinator = Some(c),
            RouterMsg::DropInputs(inputs) => st.drop_inputs(&inputs),
            RouterMsg::Watermarks(adv) => st.advance(adv),
            RouterMsg::BuildFinished(build) => {
                tracing::info!(build_id = %build, "build ended; flushing and stopping its actor");
                st.ended.insert(build.clone(), ());
                st.close_build(&myself, &build).await?;
            }
            RouterMsg::Tick => {
                let idle: Vec<BuildId> =
                    st.builds.iter().filter(|(_, e)| e.actor.is_some() && e.last_batch.elapsed() >= st.args.build_idle).map(|(b, _)| b.clone()).collect();
                for b in idle {
                    if !st.park(&b).await {
                        // Layers still open (one without an `end` in a stream gone quiet, as in
                        // the seed's example) are emitted on the wall clock; the build records
                        // where, so that a replay closes them at the same place.
                        st.flush_layers(&b);
                    }
                }
            }
            RouterMsg::Drain(reply, emit_open) => {
                let all: Vec<BuildId> = st.builds.keys().cloned().collect();
                for b in all {
                    st.stop_build(&myself, &b, emit_open).await?;
                }
                // The dead letters the rate limit kept out of the log, before the engine reports
                // it drained (the process may end before this actor's post_stop runs).
                st.args.dead_letters.log_suppressed();
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, myself: ActorRef<RouterMsg>, evt: SupervisionEvent, st: &mut RouterState) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(build) = st.by_actor.remove(&cell.get_id()) else { return Ok(()) };
                let why = err.to_string();
                EngineStats::add(&st.args.stats.restarts, 1);
                metrics::counter!("meltstream_actor_restarts_total", "actor" => "build").increment(1);
                if !st.args.restarts.allow(now_wall_ns()) {
                    tracing::error!(build_id = %build, error = %why, "restart intensity exceeded; escalating");
                    return Err(format!("build actor for {build} failed too often (last: {why}); restart intensity exceeded").into());
                }
                tracing::warn!(build_id = %build, error = %why, "build actor failed; restarting it on its preserved state");
                let Some((slot, queue, holder)) = st.builds.get(&build).map(|e| (e.slot.clone(), e.queue.clone(), e.holder)) else { return Ok(()) };
                // The failed incarnation's Wake is gone with its mailbox; post_start sends a new one.
                queue.rearm_wake();
                let actor = st.spawn_build(&myself, build.clone(), slot, queue, holder, Some(why)).await?;
                if let Some(e) = st.builds.get_mut(&build) {
                    e.actor = Some(actor);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                st.by_actor.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
