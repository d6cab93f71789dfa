//! Late samples of layer windows: a block whose layer's window was already emitted is counted
//! late — merged into the kept window under the `update` policy (by the layer statistics),
//! or, when the window is final, dropped or sent as a `late` record under the `late_sink`
//! policy. Time windows count their own late samples.
//!
//! It must never drop a late block without counting it.

use crate::input::batch::RecordBatch;
use crate::pipeline::build_book::{BlockLayer, BuildBook};
use crate::pipeline::operator::{Block, Ctx, Operator};
use crate::records::{Emitted, LateRecord, OutputRecord};
use crate::topology::LatePolicy;

/// The late policy of one build's layer windows.
#[derive(Debug, Default)]
pub struct LateSamples;

impl Operator for LateSamples {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_block(&mut self, block: &mut Block<'_>, book: &mut BuildBook, ctx: &Ctx, out: &mut Vec<Emitted>) {
        let h = &block.h;
        let n = u64::from(h.len);
        match block.layer {
            BlockLayer::None | BlockLayer::Open | BlockLayer::Replayed => {}
            BlockLayer::Updating => book.counters.late_samples += n,
            BlockLayer::Final => {
                book.counters.late_samples += n;
                if book.settings.late_policy == LatePolicy::LateSink {
                    let r = LateRecord {
                        build_id: book.build.to_string(),
                        layer: Some(h.layer),
                        laser: h.laser,
                        t0_ns: h.t0_ns,
                        sample_count: n,
                        offset: h.source_offset,
                        watermark_ns: book.watermark(),
                    };
                    out.push(Emitted { record: OutputRecord::Late(r), hold: ctx.hold_set(), origin_wall_ns: ctx.origin_wall_ns, position: ctx.position(h.source_offset) });
                }
            }
        }
    }
}
