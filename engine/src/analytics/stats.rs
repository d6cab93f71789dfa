//! Order-independent running statistics of one channel: count, mean, min, max, standard
//! deviation, and percentiles from a relative-error histogram.
//!
//! Sums are kept exactly, as integers over values quantized to 2⁻²⁰ (about 1e-6), so the result
//! is bit-identical whatever the order in which samples arrive (DESIGN §3.4); a float sum would
//! change in its last bits when the stream is shuffled. Percentiles come from a histogram whose
//! buckets are the top 16 bits of the order-preserving f32 bit pattern (sign, exponent and 7
//! mantissa bits): each bucket spans at most 1/128 of its values' magnitude, and the reported
//! value (the bucket's midpoint, clamped to min/max) is within 0.4 % of the exact nearest-rank
//! percentile. Memory grows with the span of exponents seen, not with the sample count.

/// Fixed-point scale of the exact sums.
pub const SCALE: f64 = 1_048_576.0; // 2^20

/// Values below this magnitude share the zero bucket of the histogram.
const TINY: f32 = 1.0 / 1_048_576.0;

/// `v` in units of 2⁻²⁰, rounded to the nearest (half away from zero): unbiased, where a
/// truncation would pull every mean towards zero by half a unit on average. Only an add and a
/// sign copy, no libm call, on the hot path.
#[inline]
pub fn quantize(v: f32) -> i64 {
    let x = f64::from(v) * SCALE;
    // Saturating float→int cast: values beyond ±8.8e12 clamp, which no sensor produces.
    (x + 0.5f64.copysign(x)) as i64
}

/// Exact count, sum and sum of squares of quantized values, plus min and max.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats {
    count: u64,
    sum: i128,
    sumsq: i128,
    min: f32,
    max: f32,
}

impl Default for RunningStats {
    fn default() -> Self {
        RunningStats { count: 0, sum: 0, sumsq: 0, min: f32::INFINITY, max: f32::NEG_INFINITY }
    }
}

impl RunningStats {
    /// Adds one value.
    #[inline]
    pub fn push(&mut self, v: f32) {
        let q = quantize(v);
        self.count += 1;
        self.sum += i128::from(q);
        self.sumsq += i128::from(q) * i128::from(q);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds every value of a slice (the hot path: a block's column).
    #[inline]
    pub fn push_slice(&mut self, vs: &[f32]) {
        // Per-slice i64 partial sums keep the inner loop free of i128 additions for sum.
        let mut s: i64 = 0;
        let mut ss: i128 = 0;
        let (mut mn, mut mx) = (self.min, self.max);
        for &v in vs {
            let q = quantize(v);
            s = s.wrapping_add(q);
            ss += i128::from(q) * i128::from(q);
            mn = mn.min(v);
            mx = mx.max(v);
        }
        // A slice is at most max_block_samples long: |s| ≤ 1e5 · 2^63 could wrap only for
        // absurd values; recompute exactly in that rare case.
        let exact = if vs.len() < 1024 || vs.iter().all(|v| v.abs() < 1.0e9) {
            i128::from(s)
        } else {
            vs.iter().map(|&v| i128::from(quantize(v))).sum()
        };
        self.count += vs.len() as u64;
        self.sum += exact;
        self.sumsq += ss;
        self.min = mn;
        self.max = mx;
    }

    /// Merges another accumulator into this one.
    pub fn merge(&mut self, o: &RunningStats) {
        self.count += o.count;
        self.sum += o.sum;
        self.sumsq += o.sumsq;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the values (of their quantized forms).
    pub fn sum(&self) -> f64 {
        self.sum as f64 / SCALE
    }

    /// Mean, or NaN when empty. Within 2⁻²¹ of the exact mean, and exact for a constant
    /// channel (a constant 0.1 gives 0.1 as an `f32`, not 0.0999994).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        if self.min == self.max {
            return f64::from(self.min);
        }
        self.sum as f64 / SCALE / self.count as f64
    }

    /// Smallest value, or NaN when empty.
    pub fn min(&self) -> f64 {
        if self.count == 0 { f64::NAN } else { f64::from(self.min) }
    }

    /// Largest value, or NaN when empty.
    pub fn max(&self) -> f64 {
        if self.count == 0 { f64::NAN } else { f64::from(self.max) }
    }

    /// Sample standard deviation (n − 1), 0 for a single value, NaN when empty.
    pub fn std_dev(&self) -> f64 {
        match self.count {
            0 => f64::NAN,
            1 => 0.0,
            n => {
                let n_i = i128::from(n);
                // n·Σq² − (Σq)² exactly when it fits, which it does for any realistic layer.
                let num = n_i.checked_mul(self.sumsq).and_then(|a| self.sum.checked_mul(self.sum).map(|b| a - b));
                let var = match num {
                    Some(num) => num.max(0) as f64 / (n as f64 * (n - 1) as f64) / (SCALE * SCALE),
                    None => {
                        let mean = self.sum as f64 / n as f64;
                        ((self.sumsq as f64 - mean * self.sum as f64) / (n - 1) as f64).max(0.0) / (SCALE * SCALE)
                    }
                };
                var.sqrt()
            }
        }
    }
}

/// Order-preserving map of an f32 to u32.
#[inline]
fn ordered(v: f32) -> u32 {
    let v = if v.abs() < TINY { 0.0f32 } else { v };
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 }
}

#[inline]
fn from_ordered(o: u32) -> f32 {
    let b = if o & 0x8000_0000 != 0 { o & 0x7fff_ffff } else { !o };
    f32::from_bits(b)
}

/// Relative-error histogram for percentiles; see the module docs for its error bound.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantileSketch {
    lo: u32,
    counts: Vec<u32>,
    total: u64,
}

impl QuantileSketch {
    /// Adds one value.
    #[inline]
    pub fn push(&mut self, v: f32) {
        let k = ordered(v) >> 16;
        if self.counts.is_empty() {
            self.lo = k;
            self.counts.push(0);
        } else if k < self.lo {
            let grow = (self.lo - k) as usize;
            self.counts.splice(0..0, std::iter::repeat(0).take(grow));
            self.lo = k;
        } else if (k - self.lo) as usize >= self.counts.len() {
            self.counts.resize((k - self.lo) as usize + 1, 0);
        }
        self.counts[(k - self.lo) as usize] += 1;
        self.total += 1;
    }

    /// Adds every value of a slice.
    #[inline]
    pub fn push_slice(&mut self, vs: &[f32]) {
        for &v in vs {
            self.push(v);
        }
    }

    /// Merges another sketch into this one.
    pub fn merge(&mut self, o: &QuantileSketch) {
        for (i, &c) in o.counts.iter().enumerate() {
            if c > 0 {
                let k = o.lo + i as u32;
                // Replaying one representative per bucket keeps the bucket and adds c - 1 more.
                self.push(from_ordered(k << 16));
                let idx = (k - self.lo) as usize;
                self.counts[idx] += c - 1;
                self.total += u64::from(c - 1);
            }
        }
    }

    /// Nearest-rank `q`-quantile (0 < q ≤ 1), clamped to `[min, max]`; NaN when empty.
    pub fn quantile(&self, q: f64, min: f64, max: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                let k = self.lo + i as u32;
                let a = f64::from(from_ordered(k << 16));
                let b = f64::from(from_ordered((k << 16) | 0xffff));
                return ((a + b) / 2.0).clamp(min, max);
            }
        }
        max
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * 4
    }
}

/// Statistics of one channel: moments and percentiles.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChannelAgg {
    /// Count, sum, sum of squares, min, max.
    pub stats: RunningStats,
    /// Percentile histogram.
    pub sketch: QuantileSketch,
}

impl ChannelAgg {
    /// Adds a block's values.
    #[inline]
    pub fn push_slice(&mut self, vs: &[f32]) {
        self.stats.push_slice(vs);
        self.sketch.push_slice(vs);
    }

    /// Merges another aggregate.
    pub fn merge(&mut self, o: &ChannelAgg) {
        self.stats.merge(&o.stats);
        self.sketch.merge(&o.sketch);
    }

    /// The summary written to output records.
    pub fn summary(&self) -> ChannelSummary {
        let (mn, mx) = (self.stats.min(), self.stats.max());
        ChannelSummary {
            count: self.stats.count(),
            mean: self.stats.mean(),
            min: mn,
            max: mx,
            std_dev: self.stats.std_dev(),
            p50: self.sketch.quantile(0.50, mn, mx),
            p95: self.sketch.quantile(0.95, mn, mx),
            p99: self.sketch.quantile(0.99, mn, mx),
        }
    }
}

/// Per-channel statistics as written in a layer summary.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChannelSummary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Sample standard deviation.
    pub std_dev: f64,
    /// Median (relative error ≤ 0.4 %).
    pub p50: f64,
    /// 95th percentile (relative error ≤ 0.4 %).
    pub p95: f64,
    /// 99th percentile (relative error ≤ 0.4 %).
    pub p99: f64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantisation_does_not_bias_the_mean() {
        let mut s = super::RunningStats::default();
        s.push_slice(&[0.1; 1000]);
        assert_eq!(s.mean() as f32, 0.1, "a constant 0.1");
        // Values spread over [0, 1000) (a deterministic LCG): the truncation's bias was −2⁻²¹.
        let mut x: u64 = 42;
        let vs: Vec<f32> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 40) as f32 / (1u64 << 24) as f32 * 1000.0
            })
            .collect();
        let mut s = super::RunningStats::default();
        s.push_slice(&vs);
        let exact = vs.iter().map(|&v| f64::from(v)).sum::<f64>() / vs.len() as f64;
        let err = s.mean() - exact;
        assert!(err.abs() < 1e-7, "mean off by {err:e} (half a quantum is {:e})", 0.5 / super::SCALE);
    }

    use super::*;
    use proptest::prelude::*;

    fn naive_quantile(v: &mut [f32], q: f64) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        f64::from(v[rank - 1])
    }

    #[test]
    fn moments_by_hand() {
        let mut s = RunningStats::default();
        s.push_slice(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.count(), 8);
        assert_eq!(s.mean(), 5.0);
        // sample variance = 32 / 7
        assert!((s.std_dev() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!((s.min(), s.max()), (2.0, 9.0));
    }

    proptest! {
        #[test]
        fn order_does_not_matter(mut v in proptest::collection::vec(-5000.0f32..5000.0, 1..300), seed in 0u64..1000) {
            let mut a = ChannelAgg::default();
            a.push_slice(&v);
            // a deterministic shuffle, pushed one by one and merged in two halves
            let n = v.len();
            for i in 0..n { let j = (seed as usize * 31 + i * 17) % n; v.swap(i, j); }
            let (x, y) = v.split_at(n / 2);
            let mut b1 = ChannelAgg::default();
            for &e in x { b1.stats.push(e); b1.sketch.push(e); }
            let mut b2 = ChannelAgg::default();
            b2.push_slice(y);
            b1.merge(&b2);
            prop_assert_eq!(a.summary(), b1.summary());
        }

        #[test]
        fn percentiles_within_bound(mut v in proptest::collection::vec(1.0f32..4000.0, 1..500)) {
            let mut a = ChannelAgg::default();
            a.push_slice(&v);
            let s = a.summary();
            for (q, got) in [(0.5, s.p50), (0.95, s.p95), (0.99, s.p99)] {
                let exact = naive_quantile(&mut v, q);
                prop_assert!((got - exact).abs() <= exact.abs() / 256.0 + 1e-9, "q={} got={} exact={}", q, got, exact);
            }
        }
    }
}
