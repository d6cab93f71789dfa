//! Criterion micro-bench of the JSON decoder (`meltstream_engine::input::decode`): seed-format events
//! (one sample per message) and R2's 1 ms sample blocks, decoded into record batches of 512
//! messages as the Kafka source makes them. The messages are generated before the clock starts;
//! the timed closure only decodes. Throughput: events, resp. samples.
//!
//! `cargo bench --bench decode`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::decode::{DecodeLimits, Decoder};
use meltstream_engine::simulator::Simulator;
use meltstream_engine::input::encode::{seed_event_json, write_json_lines};
use meltstream_engine::topology::SimulatorConfig;

const NOW: i64 = 1_900_000_000_000_000_000;

/// The seed's one-event messages, with varying builds, layers, times and values.
fn seed_events(n: usize) -> Vec<String> {
    (0..n).map(seed_event_json).collect()
}

/// R2's stream as the simulator writes it (blocks, layer events, logs): one machine, one
/// 200 ms layer. Returns the messages and their samples.
fn r2_messages() -> (Vec<String>, u64) {
    let cfg = SimulatorConfig { machines: 1, layers: 1, layer_ms: 200, ..Default::default() };
    let mut sim = Simulator::new(&cfg, 0);
    let (mut text, mut samples) = (String::new(), 0);
    while let Some(b) = sim.next_batch() {
        samples += b.sample_count();
        write_json_lines(&b, &mut text);
    }
    (text.lines().map(str::to_owned).collect(), samples)
}

/// Decodes every message into fresh batches of 512; returns the samples (to keep the work).
fn decode_all(d: &mut Decoder, lines: &[String]) -> u64 {
    let mut samples = 0;
    for chunk in lines.chunks(512) {
        let mut batch = RecordBatch::with_capacity(512);
        for (i, l) in chunk.iter().enumerate() {
            d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
        }
        samples += batch.sample_count();
        black_box(&batch);
    }
    samples
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let seed = seed_events(10_000);
    g.throughput(Throughput::Elements(seed.len() as u64));
    g.bench_function("seed_events", |b| {
        let mut d = Decoder::new(0, DecodeLimits::default());
        b.iter(|| decode_all(&mut d, black_box(&seed)))
    });
    let (blocks, samples) = r2_messages();
    let mut check = Decoder::new(0, DecodeLimits::default());
    assert_eq!(decode_all(&mut check, &blocks), samples, "the R2 messages must decode");
    g.throughput(Throughput::Elements(samples));
    g.bench_function("r2_sample_blocks", |b| {
        let mut d = Decoder::new(0, DecodeLimits::default());
        b.iter(|| decode_all(&mut d, black_box(&blocks)))
    });
    g.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
