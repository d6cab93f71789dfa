//! The operator trait: one concern of a build's processing (its rules, its time windows, its
//! layer statistics, …) as a stage of the build's chain. A [`BuildPipeline`] calls every
//! operator's hooks in chain order, in the order in which batches and watermarks arrived, and
//! routes what lands in `out`.
//!
//! An operator owns the state of its concern and sees the build's shared bookkeeping
//! ([`BuildBook`]: which layers are open, the watermark, the counters) through the hooks. It
//! must never hold actor or channel types, do I/O, or reach into another operator's state:
//! what one operator tells the next about a block travels in the [`Block`] it is handed.
//!
//! [`BuildPipeline`]: crate::pipeline::build_pipeline::BuildPipeline

use crate::input::batch::{BlockHeader, RecordBatch};
use crate::input::event::InputId;
use crate::input::event::TimeNs;
use crate::offset_ledger::{Hold, HoldSet};
use crate::pipeline::build_book::{BlockLayer, BuildBook};
use crate::records::Emitted;

/// What an operator is told about the call it is in.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// The batch being processed (for holds on what it emits).
    pub hold: Option<Hold>,
    /// Wall clock now, ns.
    pub now_wall_ns: i64,
    /// Where the latency of what this call emits starts, wall clock ns: for a batch, when its
    /// source read its first record (alerts, late updates); for a watermark, when the watermark
    /// coordinator computed it (the windows it closes); for a close, now.
    pub origin_wall_ns: i64,
}

impl Ctx {
    /// The hold of a record emitted for the batch being processed.
    pub fn hold_set(&self) -> HoldSet {
        self.hold.map(HoldSet::one).unwrap_or_default()
    }

    /// The source position of the record at `offset` of the batch being processed.
    pub fn position(&self, offset: u64) -> Option<(InputId, u64)> {
        self.hold.map(|(input, _)| (input, offset))
    }
}

/// One block of samples on its way down the chain.
#[derive(Debug)]
pub struct Block<'a> {
    /// The batch it is part of.
    pub batch: &'a RecordBatch,
    /// Its header.
    pub h: BlockHeader,
    /// What its layer's window is, decided by the bookkeeping before any operator sees it.
    pub layer: BlockLayer,
    /// Exceedances in this block per rule (indexed like the build's rules): zero until the
    /// threshold rules operator, early in the chain, counts them for the layer statistics.
    pub rule_hits: &'a mut [u64],
}

/// The result (first or a revision) of one layer window, about to be emitted. Operators emit
/// their part in chain order; the bookkeeping marks the window emitted after the last.
#[derive(Clone, Debug)]
pub struct LayerResult {
    /// The layer.
    pub layer: u32,
    /// 0 for the first result, then 1, 2, … for updates by late samples.
    pub revision: u32,
    /// Hold of every record of this result.
    pub hold: HoldSet,
    /// Wall clock its latency is measured from, ns.
    pub origin_wall_ns: i64,
}

impl LayerResult {
    /// True for the window's first result (the layer closes).
    pub fn first(&self) -> bool {
        self.revision == 0
    }
}

/// A stage of a build's chain.
pub trait Operator: Send + std::fmt::Debug {
    /// Takes a batch as a whole, before any of its records (layer events, logs and blocks
    /// come one by one, in offset order, through the other hooks).
    fn process(&mut self, batch: &RecordBatch, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>);

    /// Takes one block of samples. Called once per block: no allocation here.
    fn on_block(&mut self, _block: &mut Block<'_>, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    /// Machine-log record `i` of `batch`, in offset order with the batch's blocks and layer
    /// events (after the watermark as it stood before it).
    fn on_log(&mut self, _batch: &RecordBatch, _i: usize, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    /// A layer window's result is due: emit this operator's part of it. The window is
    /// `book.window(r.layer)`.
    fn on_layer_result(&mut self, _r: &LayerResult, _book: &mut BuildBook, _out: &mut Vec<Emitted>) {}

    /// The watermark advanced to `wm` (after the layer windows it closes were emitted): close
    /// what it completes.
    fn on_watermark(&mut self, _wm: TimeNs, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    /// The input ended or the build is being stopped: emit everything still open.
    fn on_close(&mut self, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    /// A replay starts: take up the state the book's recorded decisions give (see
    /// `crate::pipeline::decisions`).
    fn resume(&mut self, _book: &BuildBook) {}

    /// Adds the lowest batch per input that feeds a window of this operator still open.
    fn holds_into(&self, _acc: &mut HoldSet) {}

    /// Windows this operator keeps open (for the admin API).
    fn open_windows(&self) -> usize {
        0
    }

    /// The operator's name in dead letters and logs: its type's name by default.
    fn name(&self) -> &'static str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }
}
