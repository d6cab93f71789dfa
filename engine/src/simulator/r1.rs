//! The R1 reference workload of DESIGN §4: 8 builds, one sample per event, event time advancing
//! 10 µs per sample per build (100 kHz), an intensity value and x/y, deterministic from a seed.
//! Each sample is its own single-sample block, as a per-event engine would see it.

use std::sync::Arc;

use crate::input::batch::{BlockColumns, RecordBatch};
use crate::input::event::{BuildId, Channel, InputId};

/// Generates R1 batches.
#[derive(Debug)]
pub struct R1Generator {
    builds: Vec<BuildId>,
    input: InputId,
    total: u64,
    next: u64,
    batch: usize,
    seq: u64,
    rng: u64,
    t0_ns: i64,
}

impl R1Generator {
    /// `total` samples over `builds` builds, `batch` samples per batch.
    pub fn new(input: InputId, builds: usize, total: u64, batch: usize, seed: u64) -> R1Generator {
        R1Generator {
            builds: (0..builds.max(1)).map(|i| Arc::from(format!("r1-{i:02}").as_str())).collect(),
            input,
            total,
            next: 0,
            batch: batch.max(1),
            seq: 0,
            rng: seed | 1,
            t0_ns: 1_705_314_600_000_000_000,
        }
    }

    /// The next batch, or `None` when `total` samples were generated.
    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.next >= self.total {
            return None;
        }
        let n = (self.total - self.next).min(self.batch as u64);
        let mut b = RecordBatch::with_capacity(n as usize);
        b.span = crate::input::batch::SourceSpan { input: self.input, seq: self.seq, first_offset: self.next, next_offset: self.next + n };
        let nb = self.builds.len() as u64;
        for k in self.next..self.next + n {
            let build = &self.builds[(k % nb) as usize];
            let j = (k / nb) as i64;
            let t = self.t0_ns + j * 10_000;
            // xorshift: a value 1500..1800 so that about one in three exceeds 1700.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let v = 1500.0 + (self.rng % 300) as f32;
            let x = (j % 4000) as f32 * 0.1;
            let y = ((j / 4000) % 4000) as f32 * 0.1;
            let mut cols = BlockColumns::default();
            let vv = [v];
            let (xx, yy) = ([x], [y]);
            cols.channels[Channel::TemperatureC.index()] = Some(&vv);
            cols.x_mm = Some(&xx);
            cols.y_mm = Some(&yy);
            b.push_block(build, (j / 100_000) as u32, 1, t, 0, 1, cols, k);
        }
        b.records = n;
        self.next += n;
        self.seq += 1;
        Some(b)
    }
}
