//! Grid maps: per layer, the mean of one channel over an x/y grid of the build plate (all
//! lasers), emitted as one `grid` record with each result of the layer's window, after its
//! summaries. Blocks without x/y feed no grid.
//!
//! It must never add a block to the grid of a final layer, nor allocate per sample (the grid
//! is allocated once per layer).

use crate::input::batch::{RecordBatch, COL_X, COL_Y};
use crate::pipeline::build_book::{BlockLayer, BuildBook};
use crate::pipeline::operator::{Block, Ctx, LayerResult, Operator};
use crate::records::{Emitted, OutputRecord};

/// The grid maps of one build (they live in the build's layer windows).
#[derive(Debug, Default)]
pub struct GridMaps;

impl Operator for GridMaps {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_block(&mut self, block: &mut Block<'_>, book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {
        if !matches!(block.layer, BlockLayer::Open | BlockLayer::Updating) {
            return;
        }
        let (batch, h) = (block.batch, &block.h);
        let (spec, ch) = (book.settings.grid, book.settings.grid_channel.index());
        let (Some(xs), Some(ys), Some(vs)) = (batch.column(h, COL_X), batch.column(h, COL_Y), batch.column(h, ch)) else { return };
        if let Some(w) = book.window_mut(h.layer) {
            w.grid_push(spec, xs, ys, vs);
        }
    }

    fn on_layer_result(&mut self, r: &LayerResult, book: &mut BuildBook, out: &mut Vec<Emitted>) {
        let Some(g) = book.window(r.layer).and_then(|w| w.grid.as_ref()) else { return };
        let s = &book.settings;
        let record = g.to_record(&book.build, r.layer, r.revision, s.grid_channel.name(), s.grid.cell_mm);
        out.push(Emitted { record: OutputRecord::Grid(record), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
    }
}
