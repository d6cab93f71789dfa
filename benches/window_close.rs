//! Criterion micro-bench of a window close: a filled layer window (one machine's 200 ms layer,
//! 4 lasers, every channel and the grid map) produces its records — one layer summary per laser
//! (moments, percentiles, energy density) and the grid map (`meltstream_engine::windows::layer_window`,
//! `meltstream_engine::analytics::grid`). The window is filled before the clock starts. Throughput: records
//! produced.
//!
//! `cargo bench --bench window_close`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meltstream_engine::input::batch::{COL_X, COL_Y};
use meltstream_engine::input::event::NO_LAYER;
use meltstream_engine::input::event::Channel;
use meltstream_engine::analytics::grid::GridSpec;
use meltstream_engine::windows::layer_window::LayerWindow;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::SimulatorConfig;

const RULES: [&str; 3] = ["overheat", "hot_spot", "power_drop"];

/// A layer window filled with one machine's 200 ms layer, as a build fills it.
fn filled_window(grid: GridSpec) -> LayerWindow {
    let cfg = SimulatorConfig { machines: 1, layers: 1, layer_ms: 200, ..Default::default() };
    let mut sim = Simulator::new(&cfg, 0);
    let mut w = LayerWindow::default();
    while let Some(batch) = sim.next_batch() {
        for h in batch.blocks.iter().filter(|h| h.layer != NO_LAYER) {
            w.extend_time(h.t0_ns, h.t_last_ns());
            let la = w.laser_mut(h.laser, RULES.len());
            for c in Channel::ALL {
                if let Some(vs) = batch.column(h, c.index()) {
                    la.channels[c.index()].get_or_insert_with(Default::default).push_slice(vs);
                }
            }
            if let (Some(xs), Some(ys), Some(vs)) = (batch.column(h, COL_X), batch.column(h, COL_Y), batch.column(h, Channel::PhotodiodeOnAxis.index())) {
                w.grid_push(grid, xs, ys, vs);
            }
        }
        w.params.extend(batch.layers.iter().flat_map(|ev| ev.params.iter().cloned()));
    }
    w
}

fn bench_close(c: &mut Criterion) {
    let grid = GridSpec { cell_mm: 20.0, plate_mm: 400.0, deviation_z: None };
    let w = filled_window(grid);
    let close = |w: &LayerWindow| {
        let sums = w.summaries("sim-0", 1, &RULES, 30.0, None);
        let map = w.grid.as_ref().map(|g| g.to_record("sim-0", 1, 0, Channel::PhotodiodeOnAxis.name(), grid.cell_mm));
        (sums, map)
    };
    let (sums, map) = close(&w);
    assert!(!sums.is_empty() && map.is_some(), "the window must produce summaries and a grid");
    let mut g = c.benchmark_group("window_close");
    g.throughput(Throughput::Elements(sums.len() as u64 + 1));
    g.bench_function("layer_window_records", |b| b.iter(|| close(black_box(&w))));
    g.finish();
}

criterion_group!(benches, bench_close);
criterion_main!(benches);
