//! Everything one build computes, as a chain of operators, one per concern: threshold rules,
//! time windows, energy-density rules, layer statistics, SPC charts, layer verdicts (and the
//! build report), grid maps and late samples (in that order). The build actor owns one `BuildPipeline` and feeds it batches and watermarks in
//! arrival order; all arithmetic lives here and in the operators, free of actors and I/O.
//!
//! The pipeline keeps the build's shared bookkeeping ([`BuildBook`]) and drives it: it applies
//! a batch's layer events before any operator sees the batch, places each block in its layer's
//! window before the operators see the block, and decides which layer windows a watermark
//! closes, asking every operator for its part of each result. A new concern (data
//! quality, fusion) is one more operator appended to the chain; the others do not change.
//!
//! Chain order is output order: within a block, rule alerts go before late records; within a
//! layer result, energy-density alerts go before the summaries, the summaries before the SPC
//! signals, those before the layer's verdict, and that before the grid map; the time windows a watermark completes go after the
//! layer windows it closes.
//!
//! It must never emit a window twice with the same revision, never emit a partial layer window
//! (a layer closes only when its `end` event is behind the watermark, or by the gap timeout),
//! and never drop a late sample without counting it.
//!
//! # An operator that panics
//! Every call of an operator's hook is guarded (`catch_unwind`, free on the path that does not
//! panic): a panic becomes a dead letter (reason `poison`) naming the operator and what it was
//! given (the block and its source offset, the layer result, the watermark or the close), and
//! the chain goes on: the other operators get the same call, a layer result is still marked
//! emitted with every other operator's part of it, and nothing already emitted is dropped. The
//! same input makes the same operator panic in the same place, so a replay writes the same dead
//! letter. The panicking operator's own state is whatever it left; the build actor's restart on
//! its slot remains the backstop for a panic outside the operators (the bookkeeping).
//!
//! Operators are called through `Box<dyn Operator>`, once per block and hook, never per sample:
//! a handful of indirect calls per block of hundreds of samples costs nothing measurable, and a
//! chain that is a list lets a concern be added (or a test operator appended) without changing
//! the pipeline's type.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::input::batch::RecordBatch;
use crate::input::event::{BuildId, InputId, TimeNs};
use crate::input::reject::{DeadLetter, RejectReason};
use crate::offset_ledger::HoldSet;
use crate::pipeline::build_book::BlockLayer;
use crate::pipeline::decisions::BuildDecisions;
use crate::pipeline::energy_density::EnergyDensityRules;
use crate::pipeline::grid_map::GridMaps;
use crate::pipeline::late_samples::LateSamples;
use crate::pipeline::layer_stats::LayerStats;
use crate::pipeline::operator::{Block, Ctx, LayerResult, Operator};
use crate::pipeline::spc_charts::SpcCharts;
use crate::pipeline::threshold_rules::ThresholdRules;
use crate::pipeline::time_windows::TimeWindows;
use crate::pipeline::verdicts::LayerVerdicts;
use crate::records::{DeadLetterRecord, Emitted, OutputRecord};

pub use crate::pipeline::build_book::{BuildBook, BuildCounters, BuildSettings};

/// The state of one build: its bookkeeping and its chain of operators.
#[derive(Debug)]
pub struct BuildPipeline {
    book: BuildBook,
    ops: Vec<Box<dyn Operator>>,
    /// Per-rule exceedances of the block in progress (reused: no allocation per block).
    rule_hits: Vec<u64>,
    finished: bool,
    /// In the batch in progress: the next layer event and log record to apply, and the step of
    /// its `max_t_before` last looked up.
    next_event: usize,
    next_log: usize,
    step: usize,
}

/// The operators of a build, in chain order.
pub fn standard_chain(s: &BuildSettings) -> Vec<Box<dyn Operator>> {
    vec![
        Box::new(ThresholdRules::new(s)),
        Box::new(TimeWindows::new(s)),
        Box::new(EnergyDensityRules),
        Box::new(LayerStats),
        Box::new(GridMaps),
        Box::new(SpcCharts::default()),
        Box::new(LayerVerdicts::default()),
        Box::new(LateSamples),
    ]
}

impl BuildPipeline {
    /// A new build with the standard chain.
    pub fn new(build: BuildId, s: Arc<BuildSettings>) -> BuildPipeline {
        let ops = standard_chain(&s);
        BuildPipeline::with_chain(build, s, ops)
    }

    /// A new build with the operators `ops`, in chain order.
    pub fn with_chain(build: BuildId, s: Arc<BuildSettings>, ops: Vec<Box<dyn Operator>>) -> BuildPipeline {
        let n_rules = s.rules.len();
        BuildPipeline { book: BuildBook::new(build, s), ops, rule_hits: vec![0; n_rules], finished: false, next_event: 0, next_log: 0, step: 0 }
    }

    /// Appends `op` to the chain: it sees everything after the operators already there.
    pub fn push(&mut self, op: Box<dyn Operator>) {
        self.ops.push(op);
    }

    /// Joins the build's description (`[build_info]`) to it.
    pub fn set_info(&mut self, info: Option<std::sync::Arc<crate::input::build_info::BuildInfo>>) {
        self.book.info = info;
    }

    /// Treats every layer as already final: for a build that ended, whose late records must
    /// not reopen windows.
    pub fn mark_ended(&mut self) {
        self.book.mark_ended();
    }

    /// Follows the close decisions an earlier run recorded (see [`crate::pipeline::decisions`]);
    /// this run reads the build's partition from `replay_from` on.
    pub fn resume(&mut self, decisions: BuildDecisions, replay_from: u64) {
        self.book.resume(decisions, replay_from);
        for op in &mut self.ops {
            op.resume(&self.book);
        }
    }

    /// The close decisions recorded so far, when they changed since the last call: the caller
    /// stores them with the progress before it hands this call's results to the sinks.
    pub fn take_changed_decisions(&mut self) -> Option<BuildDecisions> {
        self.book.take_changed_decisions()
    }

    /// The build's id.
    pub fn build_id(&self) -> &BuildId {
        &self.book.build
    }

    /// True once the build's `build_end` event is behind the watermark: the actor may stop.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Running counts.
    pub fn counters(&self) -> BuildCounters {
        self.book.counters
    }

    /// The watermark last applied.
    pub fn watermark(&self) -> TimeNs {
        self.book.watermark()
    }

    /// The lowest batch per input that feeds a window still open (the build's window holds).
    pub fn holds(&self) -> HoldSet {
        let mut acc = HoldSet::default();
        self.book.holds_into(&mut acc);
        for op in &self.ops {
            op.holds_into(&mut acc);
        }
        acc
    }

    /// True when nothing is open, kept or pending: no window, no `build_end` waiting for the
    /// watermark. Such a build may be parked (its actor stopped, this state kept) without any
    /// effect on what it emits.
    pub fn quiescent(&self) -> bool {
        self.open_windows() == 0 && !self.book.end_pending() && !self.finished
    }

    /// Number of windows open or kept for late updates.
    pub fn open_windows(&self) -> usize {
        self.book.open_windows() + self.ops.iter().map(|op| op.open_windows()).sum::<usize>()
    }

    /// Takes a whole batch: its events, its blocks, then the updates they cause.
    pub fn process(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.process_events(batch, ctx, out);
        for i in 0..batch.blocks.len() {
            self.process_block(batch, i, ctx, out);
        }
        self.finish_batch(batch, ctx, out);
    }

    /// Starts a batch: what operators make of it as a whole (machine-log rules). Its layer
    /// events are applied in offset order between its blocks ([`BuildPipeline::process_block`],
    /// [`BuildPipeline::finish_batch`]).
    pub fn process_events(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.next_event = 0;
        self.next_log = 0;
        self.step = 0;
        let book = &mut self.book;
        for op in &mut self.ops {
            let res = catch_unwind(AssertUnwindSafe(|| op.process(batch, book, ctx, out)));
            if let Err(p) = res {
                let at = Where { input: batch.span.input, offset: batch.span.first_offset, position: ctx.position(batch.span.first_offset), hold: ctx.hold_set(), origin_wall_ns: ctx.origin_wall_ns };
                out.push(panicked(op.name(), &book.build, &format!("the events of batch {}", batch.span.seq), at, p.as_ref()));
            }
        }
    }

    /// Processes block `i` of `batch`. Public so that the actor can process a batch block by
    /// block and set aside the one block that made it fail.
    pub fn process_block(&mut self, batch: &RecordBatch, i: usize, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let h = batch.blocks[i];
        self.catch_up(batch, h.source_offset, ctx, out);
        #[cfg(feature = "fault-injection")]
        if let Some(bad) = self.book.settings.fault_panic_on_temperature {
            if batch.column(&h, crate::input::event::Channel::TemperatureC.index()).and_then(|v| v.first()) == Some(&bad) {
                panic!("fault injection: poison temperature {bad} in build {} layer {}", self.book.build, h.layer);
            }
        }
        self.book.counters.samples += u64::from(h.len);
        let layer = self.book.admit_block(&h, ctx.hold);
        self.rule_hits.fill(0);
        let mut block = Block { batch, h, layer, rule_hits: &mut self.rule_hits };
        let book = &mut self.book;
        for op in &mut self.ops {
            let res = catch_unwind(AssertUnwindSafe(|| op.on_block(&mut block, book, ctx, out)));
            if let Err(p) = res {
                let at = Where { input: batch.span.input, offset: h.source_offset, position: ctx.position(h.source_offset), hold: ctx.hold_set(), origin_wall_ns: ctx.origin_wall_ns };
                let what = format!("the block at offset {} (layer {}, laser {}, {} samples)", h.source_offset, h.layer, h.laser, h.len);
                out.push(panicked(op.name(), &book.build, &what, at, p.as_ref()));
            }
        }
        if layer == BlockLayer::Updating {
            // One revision per late block: what each revision holds is then a function of the
            // partition's order, not of where a batch happened to end (a replay cuts batches
            // differently).
            self.emit_layer(h.layer, ctx.hold_set(), ctx.origin_wall_ns, out);
        }
    }

    /// After the blocks of a batch: moves the partition position to the batch's end and closes
    /// what an earlier run closed there (a replay follows the recorded decisions).
    pub fn finish_batch(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let last_event = batch.layers.last().map_or(0, |ev| ev.source_offset + 1).max(batch.logs.last().map_or(0, |l| l.source_offset + 1));
        self.catch_up(batch, batch.span.next_offset.max(last_event), ctx, out);
    }

    /// Brings the build to just before the record at `offset` of `batch`: applies the layer
    /// events before it, in offset order, each after the input's watermark as it stood before
    /// that event; then the watermark before `offset`. What a watermark closes, and which
    /// samples are late, thus depends on the partition's order alone, never on where its
    /// batches end.
    fn catch_up(&mut self, batch: &RecordBatch, offset: u64, ctx: &Ctx, out: &mut Vec<Emitted>) {
        loop {
            let ev = batch.layers.get(self.next_event).map(|e| e.source_offset).filter(|o| *o < offset);
            let log = batch.logs.get(self.next_log).map(|l| l.source_offset).filter(|o| *o < offset);
            match (ev, log) {
                (Some(e), l) if l.is_none_or(|l| e <= l) => {
                    self.before_record(batch, e, ctx, out);
                    let ev = &batch.layers[self.next_event];
                    self.book.apply_layer_event(ev, ctx.hold, ctx.origin_wall_ns, out);
                    self.next_event += 1;
                }
                (_, Some(l)) => {
                    self.before_record(batch, l, ctx, out);
                    self.apply_log(batch, ctx, out);
                    self.next_log += 1;
                }
                _ => break,
            }
        }
        self.before_record(batch, offset, ctx, out);
    }

    /// Hands log record `next_log` to the operators.
    fn apply_log(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let i = self.next_log;
        let book = &mut self.book;
        for op in &mut self.ops {
            let res = catch_unwind(AssertUnwindSafe(|| op.on_log(batch, i, book, ctx, out)));
            if let Err(p) = res {
                let o = batch.logs[i].source_offset;
                let at = Where { input: batch.span.input, offset: o, position: ctx.position(o), hold: ctx.hold_set(), origin_wall_ns: ctx.origin_wall_ns };
                out.push(panicked(op.name(), &book.build, &format!("the log record at offset {o}"), at, p.as_ref()));
            }
        }
    }

    /// The partition position moves to `offset` (every record before it processed): the
    /// watermark as it stood there, then what an earlier run closed there (a replay follows
    /// the recorded decisions).
    fn before_record(&mut self, batch: &RecordBatch, offset: u64, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.book.advance_position(offset);
        let max_t = batch.max_t_before(offset, &mut self.step);
        if max_t > TimeNs::MIN {
            self.on_watermark(max_t.saturating_sub(self.book.settings.watermark_bound_ns), ctx, out);
        }
        self.apply_recorded(ctx, out);
    }

    /// The partition position moves to `offset` without a record of this build: every record
    /// before it was routed (to other builds). What an earlier run decided up to there applies,
    /// as it would had a batch of this build ended there: a replay whose batches end elsewhere
    /// than the original's still reaches every position the original recorded a decision at.
    pub fn reach_position(&mut self, offset: u64, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if offset <= self.book.position() {
            return;
        }
        self.book.advance_position(offset);
        self.apply_recorded(ctx, out);
    }

    /// What an earlier run decided at or before the current position: its watermark, its
    /// layer closes, the build's end.
    fn apply_recorded(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if let Some(wm) = self.book.recorded_watermark() {
            self.on_watermark(wm, ctx, out);
        }
        for layer in self.book.recorded_due() {
            let hold = self.book.window(layer).map(|w| w.hold.clone()).unwrap_or_default();
            self.emit_layer(layer, hold, ctx.origin_wall_ns, out);
        }
        self.book.drop_final(self.book.watermark(), false);
        if !self.finished && self.book.recorded_end().is_some_and(|e| self.book.position() >= e) {
            self.close_all(ctx, out);
        }
    }

    /// An idle build's open layer windows are emitted on the wall clock (a layer without an
    /// `end` whose stream went quiet). The close is recorded with its position, so a replay
    /// closes those layers at the same place; the build goes on and later records of those
    /// layers are late.
    pub fn flush_open_layers(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.close_layers(self.book.watermark(), true, ctx, out);
    }

    /// The input's watermark, as the engine tracks it, reached `wm` between two records of the
    /// build. Up to `max_t − bound` of the records before, a replay derives the same value; one
    /// beyond it was taken on the wall clock (the input went idle) and is recorded at the
    /// current position, so that a replay applies it there too.
    pub fn on_input_watermark(&mut self, wm: TimeNs, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if wm > self.book.watermark() && !self.finished {
            self.book.record_advance(wm);
        }
        self.on_watermark(wm, ctx, out);
    }

    /// The watermark advanced to `wm`: closes what it completes, and everything once the
    /// build's end is behind it.
    pub fn on_watermark(&mut self, wm: TimeNs, ctx: &Ctx, out: &mut Vec<Emitted>) {
        if !self.book.advance_watermark(wm) {
            return;
        }
        self.close_layers(wm, false, ctx, out);
        let book = &mut self.book;
        for op in &mut self.ops {
            let res = catch_unwind(AssertUnwindSafe(|| op.on_watermark(wm, book, ctx, out)));
            if let Err(p) = res {
                out.push(panicked(op.name(), &book.build, "a watermark", Where::nowhere(ctx), p.as_ref()));
            }
        }
        if self.book.ends_by(wm) {
            self.book.record_end();
            self.close_all(ctx, out);
        }
    }

    /// The input ended or the build is being stopped: emits everything still open.
    pub fn on_close(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.close_all(ctx, out);
    }

    fn close_all(&mut self, ctx: &Ctx, out: &mut Vec<Emitted>) {
        self.close_layers(self.book.watermark(), true, ctx, out);
        let book = &mut self.book;
        for op in &mut self.ops {
            let res = catch_unwind(AssertUnwindSafe(|| op.on_close(book, ctx, out)));
            if let Err(p) = res {
                out.push(panicked(op.name(), &book.build, "the close", Where::nowhere(ctx), p.as_ref()));
            }
        }
        self.finished = true;
    }

    /// Emits the layer windows `wm` closes (all open ones with `force`), then drops the windows
    /// that are final.
    fn close_layers(&mut self, wm: TimeNs, force: bool, ctx: &Ctx, out: &mut Vec<Emitted>) {
        for layer in self.book.due_layers(wm, force) {
            let hold = self.book.window(layer).map(|w| w.hold.clone()).unwrap_or_default();
            self.emit_layer(layer, hold, ctx.origin_wall_ns, out);
        }
        self.book.drop_final(wm, force);
    }

    /// One result of `layer`'s window: every operator's part, in chain order.
    fn emit_layer(&mut self, layer: u32, hold: HoldSet, origin_wall_ns: i64, out: &mut Vec<Emitted>) {
        let Some(w) = self.book.window(layer) else { return };
        let r = LayerResult { layer, revision: w.emitted, hold, origin_wall_ns };
        let book = &mut self.book;
        for op in &mut self.ops {
            let res = catch_unwind(AssertUnwindSafe(|| op.on_layer_result(&r, book, out)));
            if let Err(p) = res {
                let input = r.hold.iter().next().map_or(0, |h| h.0);
                let at = Where { input, offset: 0, position: None, hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns };
                out.push(panicked(op.name(), &book.build, &format!("result {} of layer {layer}", r.revision), at, p.as_ref()));
            }
        }
        self.book.mark_emitted(layer);
    }
}

/// Where the call that panicked got its input: the dead letter's input and offset, and the
/// position and holds it keeps (so that the offsets behind it wait until it is durable).
struct Where {
    input: InputId,
    offset: u64,
    position: Option<(InputId, u64)>,
    hold: HoldSet,
    origin_wall_ns: i64,
}

impl Where {
    /// A call not tied to a record (a watermark, a close).
    fn nowhere(ctx: &Ctx) -> Where {
        Where { input: 0, offset: 0, position: None, hold: HoldSet::default(), origin_wall_ns: ctx.origin_wall_ns }
    }
}

/// The dead letter of operator `op` panicking on `what`. Its `source` names the operator, the
/// build and the call, which keeps it apart from the other dead letters of that input and
/// offset (the build actor fills in Kafka's topic and partition).
fn panicked(op: &str, build: &BuildId, what: &str, at: Where, payload: &(dyn std::any::Any + Send)) -> Emitted {
    let msg = payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic without a message".into());
    let reason = RejectReason::Poison(format!("operator {op} panicked on {what} of build {build}: {msg}"));
    let dl = DeadLetter::new(at.input, at.offset, reason, what.as_bytes());
    let record = DeadLetterRecord::from_dead_letter(format!("operator {op}: {build}: {what}"), None, &dl);
    Emitted { record: OutputRecord::DeadLetter(record), hold: at.hold, origin_wall_ns: at.origin_wall_ns, position: at.position }
}

#[cfg(test)]
#[path = "build_pipeline_tests.rs"]
mod tests;
