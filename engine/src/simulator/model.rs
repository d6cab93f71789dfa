//! The physics of the simulated fleet, without anomalies or scheduling: the noise source, each
//! laser's field and serpentine raster on the plate, and the per-sample model that turns laser
//! power into photodiode signals and melt-pool temperature. Pure arithmetic over scratch slices;
//! it never allocates per sample and knows nothing of builds, layers or batches.

pub(super) const MS: i64 = 1_000_000;
pub(super) const PLATE_MM: f64 = 400.0;
pub(super) const MARGIN_MM: f64 = 5.0;
pub(super) const SPEED_MM_S: f64 = 1200.0;
pub(super) const LOF_SPEED_MM_S: f64 = 2800.0;
pub(super) const HATCH_MM: f64 = 0.11;
pub(super) const THICKNESS_UM: f64 = 30.0;
pub(super) const NOMINAL_POWER_W: f64 = 280.0;
pub(super) const PD_ON_PER_W: f64 = 2000.0 / 280.0;
pub(super) const PD_OFF_PER_W: f64 = 1200.0 / 280.0;
pub(super) const TEMP_PER_W: f32 = 0.3;
// Peak noise amplitudes: the noise table lies in [-1, 1].
pub(super) const AMP_POWER: f32 = 2.0;
pub(super) const AMP_PD_ON: f32 = 150.0;
pub(super) const AMP_PD_OFF: f32 = 100.0;
pub(super) const AMP_TEMP: f32 = 40.0;

/// splitmix64: tiny, fast and good enough for simulated noise.
#[derive(Clone, Debug)]
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [-1, 1).
    pub(super) fn sym(&mut self) -> f64 {
        2.0 * self.unit() - 1.0
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The rectangle a laser scans, margins excluded.
#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub(super) x0: f64,
    pub(super) y0: f64,
    pub(super) w: f64,
    pub(super) h: f64,
}

impl Field {
    /// Field of laser `j` (0-based) among `lasers`, on a near-square grid of the plate.
    pub(super) fn of(j: usize, lasers: usize) -> Field {
        let lasers = lasers.max(1);
        let mut cols = 1;
        while cols * cols < lasers {
            cols += 1;
        }
        let rows = lasers.div_ceil(cols);
        let (qw, qh) = (PLATE_MM / cols as f64, PLATE_MM / rows as f64);
        let (qx, qy) = ((j % cols) as f64, (j / cols) as f64);
        Field { x0: qx * qw + MARGIN_MM, y0: qy * qh + MARGIN_MM, w: qw - 2.0 * MARGIN_MM, h: qh - 2.0 * MARGIN_MM }
    }
}

/// Where one laser's samples fall in the current layer: its field, scanned as a serpentine
/// raster with the layer's step and line pitch.
#[derive(Clone, Copy, Debug)]
pub(super) struct Raster {
    pub(super) field: Field,
    pub(super) step_mm: f64,
    pub(super) pitch_mm: f64,
    pub(super) y_phase_mm: f64,
}

impl Raster {
    fn y_of(&self, line: f64) -> f64 {
        self.field.y0 + (self.y_phase_mm + line * self.pitch_mm).rem_euclid(self.field.h)
    }

    /// Position of sample `i` of the layer on the serpentine raster.
    pub(super) fn position(&self, i: u64) -> (f64, f64) {
        let s = i as f64 * self.step_mm;
        let line = (s / self.field.w).floor();
        let u = s - line * self.field.w;
        let x = if (line as u64) & 1 == 0 { self.field.x0 + u } else { self.field.x0 + self.field.w - u };
        (x, self.y_of(line))
    }

    /// Positions of samples `first..first + xs.len()`.
    pub(super) fn path(&self, first: u64, xs: &mut [f32], ys: &mut [f32]) {
        let n = xs.len();
        let w = self.field.w;
        let s0 = first as f64 * self.step_mm;
        let line = (s0 / w).floor();
        let u = s0 - line * w;
        if n > 0 && u + self.step_mm * ((n - 1) as f64) < w {
            // The whole block lies on one scan line: x is linear, y constant.
            let (x_start, slope) = if (line as u64) & 1 == 0 {
                (self.field.x0 + u, self.step_mm)
            } else {
                (self.field.x0 + w - u, -self.step_mm)
            };
            let (x_start, slope) = (x_start as f32, slope as f32);
            for (i, x) in xs.iter_mut().enumerate() {
                *x = x_start + slope * i as f32;
            }
            ys.fill(self.y_of(line) as f32);
        } else {
            for (i, (x, y)) in xs.iter_mut().zip(ys.iter_mut()).enumerate() {
                let (px, py) = self.position(first + i as u64);
                *x = px as f32;
                *y = py as f32;
            }
        }
    }
}

/// The per-sample model over one range: power, both photodiodes and temperature.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn model(
    p: f32,
    k_on: f32,
    k_off: f32,
    t_base: f32,
    noise: [&[f32]; 4],
    power: &mut [f32],
    on: &mut [f32],
    off: &mut [f32],
    temp: &mut [f32],
) {
    let n = power.len();
    let (on, off, temp) = (&mut on[..n], &mut off[..n], &mut temp[..n]);
    let (n_p, n_on, n_off, n_t) = (&noise[0][..n], &noise[1][..n], &noise[2][..n], &noise[3][..n]);
    for i in 0..n {
        let pw = p + AMP_POWER * n_p[i];
        power[i] = pw;
        on[i] = k_on * pw + AMP_PD_ON * n_on[i];
        off[i] = k_off * pw + AMP_PD_OFF * n_off[i];
        temp[i] = t_base + TEMP_PER_W * pw + AMP_TEMP * n_t[i];
    }
}

/// Bounded, roughly bell-shaped noise in [-1, 1] (mean of four uniforms), `len` values.
pub(super) fn noise_table(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix(seed ^ 0x6E6F_6973_655F_7462);
    (0..len)
        .map(|_| {
            let sum: f64 = (0..4).map(|_| rng.unit()).sum();
            (sum / 2.0 - 1.0) as f32
        })
        .collect()
}
