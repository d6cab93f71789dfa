//! `meltstream bench json`: the JSON decoder alone on one thread, over messages prepared in
//! memory before the clock starts: `--samples` events of the seed's format (one sample each,
//! varying values and times), then R2's 1 ms blocks as the simulator writes them.
//!
//! Measures the decoder only; never starts the engine.

use std::time::Instant;

use super::report;
use super::topologies::{self, Overrides};

/// Decodes `lines` into batches of 512 records, `rounds` times; returns (records, seconds).
fn decode_lines(lines: &[String], rounds: usize) -> (u64, f64, u64) {
    use meltstream_engine::input::batch::RecordBatch;
    use meltstream_engine::input::decode::{DecodeLimits, Decoder};
    let mut d = Decoder::new(0, DecodeLimits::default());
    let now = 1_900_000_000_000_000_000;
    let (mut records, mut samples) = (0u64, 0u64);
    let start = Instant::now();
    for _ in 0..rounds {
        for chunk in lines.chunks(512) {
            // A fresh batch each time, as the Kafka source makes one per 512 records.
            let mut batch = RecordBatch::with_capacity(512);
            for (i, l) in chunk.iter().enumerate() {
                d.decode(l.as_bytes(), i as u64, now, &mut batch);
            }
            assert!(batch.dead.is_empty(), "bench input must decode: {:?}", batch.dead.first());
            records += chunk.len() as u64;
            samples += batch.sample_count();
        }
    }
    (records, start.elapsed().as_secs_f64(), samples)
}

/// `bench json`: the decoder alone on one thread. The seed's message (one sample each, with
/// varying values and times) and R2's 1 ms blocks as the simulator writes them.
/// R2's blocks are the simulator stream of `benches/r2.toml` with `--machines`/`--layers`.
pub fn run(events: u64, overrides: &Overrides) -> anyhow::Result<()> {
    report::print_command_and_machine();
    let cfg = topologies::r2_input(overrides)?;
    let (machines, layers) = (cfg.machines, cfg.layers);
    let distinct = 100_000usize.min(events as usize).max(1);
    let seed: Vec<String> = (0..distinct).map(meltstream_engine::input::encode::seed_event_json).collect();
    let rounds = (events as usize).div_ceil(distinct);
    println!("outside the clock: {distinct} distinct seed-format messages in memory, decoded {rounds} time(s) over; then R2's JSON blocks of benches/r2.toml's simulator ({machines} machines, {layers} layer(s)), all written to memory before their clock starts");
    let (n, secs, _) = decode_lines(&seed, rounds);
    println!("seed format, one event per message: {n} events in {secs:.2} s = {:.2} M events/s on one core", n as f64 / secs / 1e6);
    let mut sim = meltstream_engine::simulator::Simulator::new(&cfg, 0);
    let mut text = String::new();
    while let Some(b) = sim.next_batch() {
        meltstream_engine::input::encode::write_json_lines(&b, &mut text);
    }
    let blocks: Vec<String> = text.lines().map(str::to_owned).collect();
    let bytes: usize = blocks.iter().map(String::len).sum();
    let (n, secs, samples) = decode_lines(&blocks, 1);
    println!(
        "R2 JSON blocks ({machines} machines, {layers} layer(s)): {n} messages, {samples} samples, {:.0} MB in {secs:.2} s = {:.2} M samples/s, {:.0} MB/s on one core",
        bytes as f64 / 1e6,
        samples as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
