//! Grid maps: per layer, the mean of one channel over an x/y grid of the build plate (all
//! lasers), emitted as one `grid` record with each result of the layer's window, after its
//! summaries. Blocks without x/y feed no grid. With `grid_deviation_z`, a layer whose map holds a
//! cell that far from the layer's cells (robust z) raises one `grid_deviation` alert at the worst
//! cell, judged once, on the layer's first result.
//!
//! It must never add a block to the grid of a final layer, nor allocate per sample (the grid
//! is allocated once per layer).

use crate::input::batch::{RecordBatch, COL_X, COL_Y};
use crate::pipeline::build_book::{BlockLayer, BuildBook};
use crate::pipeline::operator::{Block, Ctx, LayerResult, Operator};
use crate::analytics::grid::{cell_z_scores, GRID_DEVIATION_RULE};
use crate::input::time::format_rfc3339;
use crate::records::{Anomaly, Emitted, GridMap, OutputRecord};

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
        let Some(w) = book.window(r.layer) else { return };
        let Some(g) = w.grid.as_ref() else { return };
        let s = &book.settings;
        let record = g.to_record(&book.build, r.layer, r.revision, s.grid_channel.name(), s.grid.cell_mm);
        // Judged once, on the layer's first result (like the energy-density rules).
        let alert = s.grid.deviation_z.filter(|_| r.first()).and_then(|z| deviation_alert(&record, z, w.end_ns()));
        out.push(Emitted { record: OutputRecord::Grid(record), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
        if let Some(a) = alert {
            book.counters.anomalies += 1;
            out.push(Emitted { record: OutputRecord::Anomaly(a), hold: r.hold.clone(), origin_wall_ns: r.origin_wall_ns, position: None });
        }
    }
}

/// The layer's grid deviation alert: the cell farthest from its layer, when it lies beyond `z`.
fn deviation_alert(map: &GridMap, z: f64, end_ns: i64) -> Option<Anomaly> {
    let (cell, worst) = map.cells.iter().zip(cell_z_scores(&map.cells)).filter_map(|(c, s)| s.map(|s| (c, s))).max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
    (worst.abs() > z).then(|| Anomaly {
        build_id: map.build_id.clone(),
        layer: Some(map.layer),
        laser: None,
        time: format_rfc3339(end_ns),
        time_ns: end_ns,
        rule: GRID_DEVIATION_RULE.into(),
        channel: map.channel.clone(),
        value: worst,
        op: "|z| >".into(),
        limit: z,
        x_mm: Some((f64::from(cell.ix) + 0.5) * map.cell_mm),
        y_mm: Some((f64::from(cell.iy) + 0.5) * map.cell_mm),
    })
}
