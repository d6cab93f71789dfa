//! The operator trait: what a per-build processing stage does with batches, watermarks and the
//! end of its input. No actor or channel types: the runtime in `actors` calls these hooks, in
//! the order in which batches and watermarks arrived, and routes what lands in `out`.

use crate::input::batch::RecordBatch;
use crate::input::event::TimeNs;
use crate::offset_ledger::Hold;
use crate::records::Emitted;

/// What an operator is told about the call it is in.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// The batch being processed (for holds on what it emits).
    pub hold: Option<Hold>,
    /// Wall clock now, ns.
    pub now_wall_ns: i64,
    /// Wall clock when the data entered the engine, ns.
    pub origin_wall_ns: i64,
}

/// A stage of the data path.
pub trait Operator {
    /// Takes a batch.
    fn process(&mut self, batch: &RecordBatch, ctx: &Ctx, out: &mut Vec<Emitted>);

    /// The watermark advanced to `wm`: close what it completes.
    fn on_watermark(&mut self, _wm: TimeNs, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    /// The input ended or the operator is being stopped: emit everything still open.
    fn on_close(&mut self, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}
}
