//! Layer statistics windows: per layer and laser, the statistics of every channel, the
//! exceedances of every sample rule and the late samples merged, emitted as one
//! `layer_summary` record per laser when the layer closes and again, as a new revision, when
//! late samples change it. Which layers are open, and when they close, is the build's
//! bookkeeping ([`BuildBook`]); this operator only fills and reports them.
//!
//! It must never aggregate a block into a final layer, nor allocate per sample.

use crate::input::batch::RecordBatch;
use crate::input::event::Channel;
use crate::pipeline::build_book::{BlockLayer, BuildBook};
use crate::pipeline::operator::{Block, Ctx, LayerResult, Operator};
use crate::records::{Emitted, OutputRecord};

/// The layer statistics of one build (they live in the build's layer windows).
#[derive(Debug, Default)]
pub struct LayerStats;

impl Operator for LayerStats {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_block(&mut self, block: &mut Block<'_>, book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {
        let updating = match block.layer {
            BlockLayer::Open => false,
            BlockLayer::Updating => true,
            BlockLayer::None | BlockLayer::Final | BlockLayer::Replayed => return,
        };
        let (batch, h) = (block.batch, &block.h);
        let n_rules = book.settings.rules.len();
        let Some(w) = book.window_mut(h.layer) else { return };
        let la = w.laser_mut(h.laser, n_rules);
        for c in Channel::ALL {
            if let Some(vs) = batch.column(h, c.index()) {
                la.channels[c.index()].get_or_insert_with(Default::default).push_slice(vs);
            }
        }
        for (acc, n) in la.rule_hits.iter_mut().zip(block.rule_hits.iter()) {
            *acc += n;
        }
        if updating {
            la.late_count += u64::from(h.len);
        }
        if h.dt_ns > 0 && h.len > 1 {
            la.dt_ns = if la.dt_ns == 0 { h.dt_ns } else { la.dt_ns.min(h.dt_ns) };
            la.spans.push((h.t0_ns, h.t0_ns.saturating_add(h.dt_ns.saturating_mul(i64::from(h.len)))));
        }
    }

    fn on_layer_result(&mut self, r: &LayerResult, book: &mut BuildBook, out: &mut Vec<Emitted>) {
        let Some(w) = book.window(r.layer) else { return };
        let names: Vec<&str> = book.settings.rules.iter().map(|r| r.name.as_str()).collect();
        for s in w.summaries(&book.build, r.layer, &names, book.settings.default_thickness_um, book.info.as_deref()) {
            out.push(Emitted { record: OutputRecord::LayerSummary(s), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
        }
    }
}
