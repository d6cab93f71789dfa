//! Volumetric energy density, the first figure every PBF-LB/M practitioner computes.

/// E = P / (v · h · t) in J/mm³: `power_w` in W, `speed_mm_s` in mm/s, `hatch_mm` and
/// `thickness_mm` in mm. Returns NaN when any divisor is not positive.
pub fn energy_density_j_mm3(power_w: f64, speed_mm_s: f64, hatch_mm: f64, thickness_mm: f64) -> f64 {
    let d = speed_mm_s * hatch_mm * thickness_mm;
    if d > 0.0 && power_w.is_finite() {
        power_w / d
    } else {
        f64::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_example_by_hand() {
        // 200 W, 1.2 m/s = 1200 mm/s, 0.1 mm hatch, 30 µm layer: 200 / (1200·0.1·0.03) = 55.5…
        let e = energy_density_j_mm3(200.0, 1200.0, 0.1, 0.03);
        assert!((e - 55.555_555).abs() < 1e-5, "{e}");
        assert!(energy_density_j_mm3(200.0, 0.0, 0.1, 0.03).is_nan());
    }
}
