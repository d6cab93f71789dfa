//! Statistical process control on per-layer aggregates (DESIGN §6; Montgomery, *Introduction to
//! Statistical Quality Control*): phase I estimates the centre and sigma from a baseline, phase
//! II monitors each new layer's statistic with one chart:
//! - a Shewhart individuals chart, sigma from the average moving range (MR̄ / d₂, d₂ = 1.128),
//!   with the four Western Electric rules (zones at 1, 2 and 3 sigma);
//! - EWMA (λ, L) with the exact, time-varying limits;
//! - tabular CUSUM (k, h, in sigma units), both sides.
//!
//! Charts never see raw samples (100 kHz photodiode samples are autocorrelated: false alarms),
//! only one value per layer. Each chart is a small state machine whose state serialises, so a
//! replay can resume it exactly. After a signal a chart restarts (the Western Electric history
//! is cleared, EWMA's statistic goes back to the centre, CUSUM's sums to zero): the run length
//! between signals is then the textbook ARL.
//!
//! Pure arithmetic: no allocation per point beyond the signal itself.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// d₂ for moving ranges of two.
pub const D2: f64 = 1.128;

/// The in-control centre and sigma of a statistic.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Centre μ₀.
    pub centre: f64,
    /// Sigma σ̂.
    pub sigma: f64,
}

impl Baseline {
    /// Phase I over `values` (at least two): the mean, and σ̂ = MR̄ / d₂. `None` when there are
    /// too few values or they do not vary (a chart with σ = 0 would signal on every point).
    pub fn estimate(values: &[f64]) -> Option<Baseline> {
        if values.len() < 2 || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let centre = values.iter().sum::<f64>() / values.len() as f64;
        let mr = values.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (values.len() - 1) as f64;
        let sigma = mr / D2;
        (sigma > 0.0).then_some(Baseline { centre, sigma })
    }
}

/// Phase I in constant space (a grid cell's chart: thousands per build, all in the replay
/// state): the count, the running sum, the running sum of moving ranges and the last value,
/// floats as their bits. It estimates exactly what [`Baseline::estimate`] gives over the same
/// points (the same sums in the same order), and slides on the same way while they do not vary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseOneSums {
    n: u32,
    sum: u64,
    mr: u64,
    last: u64,
}

impl PhaseOneSums {
    /// Adds `x` (finite); once `len` points are in, the baseline they give, when they vary
    /// (otherwise the oldest point is dropped, as with [`Baseline::estimate`] on a sliding list).
    pub fn push(&mut self, x: f64, len: u32) -> Option<(Baseline, u32)> {
        let (sum, mut mr, last) = (f64::from_bits(self.sum), f64::from_bits(self.mr), f64::from_bits(self.last));
        if self.n > 0 {
            mr += (x - last).abs();
        }
        self.n += 1;
        (self.sum, self.mr, self.last) = ((sum + x).to_bits(), mr.to_bits(), x.to_bits());
        if self.n < len.max(2) {
            return None;
        }
        let centre = f64::from_bits(self.sum) / f64::from(self.n);
        let sigma = mr / f64::from(self.n - 1) / D2;
        if sigma > 0.0 {
            return Some((Baseline { centre, sigma }, self.n));
        }
        // No variation: every point equals `x`; keep the latest n − 1 of them.
        self.n -= 1;
        self.sum = (0..self.n).fold(0.0, |s, _| s + x).to_bits();
        None
    }

    /// Points collected so far.
    pub fn len(&self) -> u32 {
        self.n
    }

    /// Nothing collected yet.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Which test signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpcRule {
    /// Western Electric 1: one point beyond 3σ.
    WeBeyond3Sigma,
    /// Western Electric 2: two of three consecutive points beyond 2σ, same side.
    We2Of3Beyond2Sigma,
    /// Western Electric 3: four of five consecutive points beyond 1σ, same side.
    We4Of5Beyond1Sigma,
    /// Western Electric 4: eight consecutive points on the same side of the centre.
    We8SameSide,
    /// The EWMA statistic outside its limits.
    Ewma,
    /// The upper CUSUM sum above H.
    CusumUpper,
    /// The lower CUSUM sum above H.
    CusumLower,
}

impl SpcRule {
    /// The name in records.
    pub fn name(self) -> &'static str {
        match self {
            SpcRule::WeBeyond3Sigma => "we1_beyond_3_sigma",
            SpcRule::We2Of3Beyond2Sigma => "we2_2_of_3_beyond_2_sigma",
            SpcRule::We4Of5Beyond1Sigma => "we3_4_of_5_beyond_1_sigma",
            SpcRule::We8SameSide => "we4_8_on_one_side",
            SpcRule::Ewma => "ewma",
            SpcRule::CusumUpper => "cusum_upper",
            SpcRule::CusumLower => "cusum_lower",
        }
    }
}

/// An out-of-control point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The test.
    pub rule: SpcRule,
    /// The charted value at the signal (the point, EWMA's z, or the CUSUM sum).
    pub statistic: f64,
    /// Centre line.
    pub centre: f64,
    /// Lower and upper limits the statistic is judged against.
    pub lower: f64,
    /// See `lower`.
    pub upper: f64,
    /// The layers whose points make the pattern, oldest first (the signalling layer last).
    pub layers: Vec<u32>,
}

/// A chart's kind and parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ChartKind {
    /// Shewhart individuals with the Western Electric rules.
    Shewhart,
    /// EWMA with weight λ and limit width L (in σ).
    Ewma {
        /// λ in (0, 1].
        lambda: f64,
        /// L.
        l: f64,
    },
    /// Tabular CUSUM with reference k and decision interval h (in σ).
    Cusum {
        /// k.
        k: f64,
        /// h.
        h: f64,
    },
}

/// One chart in phase II: its baseline and running state. The state's floats serialise as
/// their bits, so that a replay resumes exactly the chart the run it replaces had (decimal JSON
/// does not round-trip every `f64` through serde_json's default parser).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    kind: ChartKind,
    #[serde(with = "exact::baseline")]
    base: Baseline,
    /// Shewhart: the last eight (layer, value).
    #[serde(with = "exact::points")]
    recent: VecDeque<(u32, f64)>,
    /// EWMA's z and point count since the start; CUSUM's upper and lower sums.
    #[serde(with = "exact::float")]
    a: f64,
    #[serde(with = "exact::float")]
    b: f64,
    n: u64,
    /// CUSUM: the layer each side's current run began at.
    run_from: (Option<u32>, Option<u32>),
}

impl Chart {
    /// A chart of `kind` monitoring against `base`.
    pub fn new(kind: ChartKind, base: Baseline) -> Chart {
        let a = if matches!(kind, ChartKind::Ewma { .. }) { base.centre } else { 0.0 };
        Chart { kind, base, recent: VecDeque::with_capacity(8), a, b: 0.0, n: 0, run_from: (None, None) }
    }

    /// The baseline.
    pub fn baseline(&self) -> Baseline {
        self.base
    }

    /// The centre and the limits a point (Shewhart) or the statistic (EWMA, CUSUM) is judged
    /// against at the next point.
    pub fn limits(&self) -> (f64, f64, f64) {
        let (mu, s) = (self.base.centre, self.base.sigma);
        match self.kind {
            ChartKind::Shewhart => (mu, mu - 3.0 * s, mu + 3.0 * s),
            ChartKind::Ewma { lambda, l } => {
                let i = (self.n + 1) as i32;
                let w = l * s * (lambda / (2.0 - lambda) * (1.0 - (1.0 - lambda).powi(2 * i))).sqrt();
                (mu, mu - w, mu + w)
            }
            ChartKind::Cusum { h, .. } => (0.0, 0.0, h * s),
        }
    }

    /// Charts layer `layer`'s value `x`; the signals it raises (at most one per test).
    pub fn push(&mut self, layer: u32, x: f64) -> Vec<Signal> {
        if !x.is_finite() {
            return Vec::new();
        }
        match self.kind {
            ChartKind::Shewhart => self.push_shewhart(layer, x),
            ChartKind::Ewma { lambda, .. } => self.push_ewma(layer, x, lambda),
            ChartKind::Cusum { k, h } => self.push_cusum(layer, x, k, h),
        }
    }

    fn push_shewhart(&mut self, layer: u32, x: f64) -> Vec<Signal> {
        let (mu, s) = (self.base.centre, self.base.sigma);
        if self.recent.len() == 8 {
            self.recent.pop_front();
        }
        self.recent.push_back((layer, x));
        let z = (x - mu) / s;
        let side = z.signum();
        let mut out = Vec::new();
        let signal = |rule, span: usize, zone: f64, recent: &VecDeque<(u32, f64)>| Signal {
            rule,
            statistic: x,
            centre: mu,
            lower: mu - zone * s,
            upper: mu + zone * s,
            layers: recent.iter().rev().take(span).rev().map(|p| p.0).collect(),
        };
        if z.abs() > 3.0 {
            out.push(signal(SpcRule::WeBeyond3Sigma, 1, 3.0, &self.recent));
        }
        // k of the last m points beyond `zone` σ on the signalling point's side, this one among them.
        let beyond = |m: usize, zone: f64| if z.abs() > zone { self.recent.iter().rev().take(m).filter(|p| (p.1 - mu) / s * side > zone).count() } else { 0 };
        if beyond(3, 2.0) >= 2 {
            out.push(signal(SpcRule::We2Of3Beyond2Sigma, 3, 2.0, &self.recent));
        }
        if beyond(5, 1.0) >= 4 {
            out.push(signal(SpcRule::We4Of5Beyond1Sigma, 5, 1.0, &self.recent));
        }
        if self.recent.len() == 8 && z != 0.0 && self.recent.iter().all(|p| (p.1 - mu) * side > 0.0) {
            out.push(signal(SpcRule::We8SameSide, 8, 0.0, &self.recent));
        }
        if !out.is_empty() {
            self.recent.clear();
        }
        out
    }

    fn push_ewma(&mut self, layer: u32, x: f64, lambda: f64) -> Vec<Signal> {
        let (mu, lo, hi) = self.limits();
        self.n += 1;
        self.a = lambda * x + (1.0 - lambda) * self.a;
        if self.a > hi || self.a < lo {
            let z = self.a;
            self.a = mu;
            return vec![Signal { rule: SpcRule::Ewma, statistic: z, centre: mu, lower: lo, upper: hi, layers: vec![layer] }];
        }
        Vec::new()
    }

    fn push_cusum(&mut self, layer: u32, x: f64, k: f64, h: f64) -> Vec<Signal> {
        let (mu, s) = (self.base.centre, self.base.sigma);
        let (kk, hh) = (k * s, h * s);
        self.a = (x - (mu + kk) + self.a).max(0.0);
        self.b = ((mu - kk) - x + self.b).max(0.0);
        self.run_from.0 = if self.a > 0.0 { self.run_from.0.or(Some(layer)) } else { None };
        self.run_from.1 = if self.b > 0.0 { self.run_from.1.or(Some(layer)) } else { None };
        let mut out = Vec::new();
        for (rule, sum, from) in [(SpcRule::CusumUpper, self.a, self.run_from.0), (SpcRule::CusumLower, self.b, self.run_from.1)] {
            if sum > hh {
                let from = from.unwrap_or(layer);
                out.push(Signal { rule, statistic: sum, centre: mu, lower: 0.0, upper: hh, layers: (from..=layer).collect() });
            }
        }
        if !out.is_empty() {
            (self.a, self.b, self.run_from) = (0.0, 0.0, (None, None));
        }
        out
    }
}

/// Serde helpers: `f64` as its IEEE bits.
mod exact {
    pub mod float {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(v.to_bits())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            u64::deserialize(d).map(f64::from_bits)
        }
    }

    pub mod baseline {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        use super::super::Baseline;

        pub fn serialize<S: Serializer>(b: &Baseline, s: S) -> Result<S::Ok, S::Error> {
            (b.centre.to_bits(), b.sigma.to_bits()).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Baseline, D::Error> {
            let (c, s) = <(u64, u64)>::deserialize(d)?;
            Ok(Baseline { centre: f64::from_bits(c), sigma: f64::from_bits(s) })
        }
    }

    pub mod points {
        use std::collections::VecDeque;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &VecDeque<(u32, f64)>, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|(l, x)| (*l, x.to_bits())))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<(u32, f64)>, D::Error> {
            Ok(Vec::<(u32, u64)>::deserialize(d)?.into_iter().map(|(l, x)| (l, f64::from_bits(x))).collect())
        }
    }
}

#[cfg(test)]
#[path = "spc_tests.rs"]
mod tests;
