//! Criterion micro-bench of the statistics' hot loop: the per-sample accumulation of a layer
//! window (`meltstream_engine::analytics::stats`, `meltstream_engine::windows::layer_window`), as a build does it for
//! each block — every channel's running statistics and percentile sketch, and the grid map —
//! plus the running statistics alone on one 100-sample column. The blocks come from the
//! simulator before the clock starts. Throughput: samples.
//!
//! `cargo bench --bench window_stats`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meltstream_engine::input::batch::{RecordBatch, COL_X, COL_Y};
use meltstream_engine::input::event::NO_LAYER;
use meltstream_engine::input::event::Channel;
use meltstream_engine::analytics::grid::GridSpec;
use meltstream_engine::windows::layer_window::LayerWindow;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::analytics::stats::{ChannelAgg, RunningStats};
use meltstream_engine::topology::SimulatorConfig;

/// One machine's 200 ms layer: 4 lasers × 100 kHz in 1 ms blocks.
fn layer_batches() -> Vec<RecordBatch> {
    let cfg = SimulatorConfig { machines: 1, layers: 1, layer_ms: 200, ..Default::default() };
    let mut sim = Simulator::new(&cfg, 0);
    std::iter::from_fn(|| sim.next_batch()).collect()
}

/// Accumulates every block of `batches` into `w` as a build does (statistics, sketch, grid).
fn accumulate(w: &mut LayerWindow, batches: &[RecordBatch], grid: GridSpec) {
    for batch in batches {
        for h in batch.blocks.iter().filter(|h| h.layer != NO_LAYER) {
            w.extend_time(h.t0_ns, h.t_last_ns());
            let la = w.laser_mut(h.laser, 0);
            for c in Channel::ALL {
                if let Some(vs) = batch.column(h, c.index()) {
                    la.channels[c.index()].get_or_insert_with(Default::default).push_slice(vs);
                }
            }
            if let (Some(xs), Some(ys), Some(vs)) = (batch.column(h, COL_X), batch.column(h, COL_Y), batch.column(h, Channel::PhotodiodeOnAxis.index())) {
                w.grid_push(grid, xs, ys, vs);
            }
        }
    }
}

fn bench_stats(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats");
    let batches = layer_batches();
    let samples: u64 = batches.iter().map(RecordBatch::sample_count).sum();
    let grid = GridSpec { cell_mm: 20.0, plate_mm: 400.0, deviation_z: None };
    g.throughput(Throughput::Elements(samples));
    g.bench_function("layer_window_accumulate", |b| {
        b.iter(|| {
            let mut w = LayerWindow::default();
            accumulate(&mut w, black_box(&batches), grid);
            w
        })
    });
    let block: Vec<f32> = (0..100).map(|i| 1600.0 + (i % 37) as f32 * 0.7).collect();
    g.throughput(Throughput::Elements(block.len() as u64));
    g.bench_function("running_stats_push_slice_100", |b| {
        let mut s = RunningStats::default();
        b.iter(|| s.push_slice(black_box(&block)))
    });
    g.bench_function("channel_agg_push_slice_100", |b| {
        let mut s = ChannelAgg::default();
        b.iter(|| s.push_slice(black_box(&block)))
    });
    g.finish();
}

criterion_group!(benches, bench_stats);
criterion_main!(benches);
