//! The x/y grid map of one layer: per cell, the count and exact (quantized) sum of one channel.
//! Allocated on a layer's first sample with x/y, freed when the layer's window is dropped.

use crate::records::{GridCell, GridMap};
use crate::analytics::stats::{quantize, SCALE};

/// Geometry of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridSpec {
    /// Cell edge, mm.
    pub cell_mm: f64,
    /// Plate edge, mm.
    pub plate_mm: f64,
    /// z of the grid deviation alert (`[windows] grid_deviation_z`), if any.
    pub deviation_z: Option<f64>,
}

impl GridSpec {
    /// Cells per side.
    pub fn cells_per_side(&self) -> usize {
        (self.plate_mm / self.cell_mm).ceil() as usize
    }
}

/// Accumulator of one layer's grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    n: usize,
    inv_cell: f32,
    counts: Vec<u32>,
    sums: Vec<i64>,
    outside: u64,
}

impl Grid {
    /// An empty grid.
    pub fn new(spec: GridSpec) -> Grid {
        let n = spec.cells_per_side();
        Grid { n, inv_cell: (1.0 / spec.cell_mm) as f32, counts: vec![0; n * n], sums: vec![0; n * n], outside: 0 }
    }

    /// Adds samples at (x, y) with values v (equal lengths).
    #[inline]
    pub fn push(&mut self, xs: &[f32], ys: &[f32], vs: &[f32]) {
        let n = self.n as i64;
        for ((&x, &y), &v) in xs.iter().zip(ys).zip(vs) {
            let ix = (x * self.inv_cell).floor() as i64;
            let iy = (y * self.inv_cell).floor() as i64;
            if ix < 0 || iy < 0 || ix >= n || iy >= n {
                self.outside += 1;
                continue;
            }
            let i = (iy * n + ix) as usize;
            self.counts[i] += 1;
            self.sums[i] += quantize(v);
        }
    }

    /// Cells per side.
    pub fn cells_per_side(&self) -> usize {
        self.n
    }

    /// The cells holding at least `min_count` samples: (index `iy × cells per side + ix`,
    /// count, mean), by index. No allocation (SPC charts the cells of every closed layer).
    pub fn cell_means(&self, min_count: u64) -> impl Iterator<Item = (u32, u64, f64)> + '_ {
        self.counts.iter().zip(&self.sums).enumerate().filter(move |(_, (c, _))| u64::from(**c) >= min_count.max(1)).map(|(i, (c, s))| (i as u32, u64::from(*c), *s as f64 / SCALE / f64::from(*c)))
    }

    /// The non-empty cells as a record.
    pub fn to_record(&self, build_id: &str, layer: u32, revision: u32, channel: &str, cell_mm: f64) -> GridMap {
        let cells = (0..self.counts.len())
            .filter(|&i| self.counts[i] > 0)
            .map(|i| GridCell {
                ix: (i % self.n) as u32,
                iy: (i / self.n) as u32,
                count: u64::from(self.counts[i]),
                mean: self.sums[i] as f64 / SCALE / f64::from(self.counts[i]),
            })
            .collect();
        GridMap {
            build_id: build_id.to_owned(),
            layer,
            revision,
            channel: channel.to_owned(),
            cell_mm,
            cells_per_side: self.n as u32,
            outside_count: self.outside,
            cells,
        }
    }
}

/// Fewest samples a cell needs before its mean is judged against its layer's cells.
pub const DEVIATION_MIN_COUNT: u64 = 100;

/// The rule name of a grid deviation alert.
pub const GRID_DEVIATION_RULE: &str = "grid_deviation";

/// How far each cell's mean lies from its layer's cells, as a robust z-score: (mean − median) /
/// σ̂, with σ̂ = 1.4826 × the median absolute deviation of the cell means, never below 1 % of
/// |median| (so that a perfectly even layer does not turn noise into deviations). Cells with fewer
/// than [`DEVIATION_MIN_COUNT`] samples, and every cell of a layer with fewer than 8 judged cells,
/// get `None`. Used by the grid map's alert and by CT fusion, which reads the stored maps.
pub fn cell_z_scores(cells: &[GridCell]) -> Vec<Option<f64>> {
    let mut means: Vec<f64> = cells.iter().filter(|c| c.count >= DEVIATION_MIN_COUNT).map(|c| c.mean).collect();
    if means.len() < 8 {
        return vec![None; cells.len()];
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
    };
    let m = median(&mut means);
    let mut dev: Vec<f64> = means.iter().map(|x| (x - m).abs()).collect();
    let sigma = (1.4826 * median(&mut dev)).max(0.01 * m.abs()).max(f64::MIN_POSITIVE);
    cells.iter().map(|c| (c.count >= DEVIATION_MIN_COUNT).then(|| (c.mean - m) / sigma)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_by_hand() {
        let mut g = Grid::new(GridSpec { cell_mm: 10.0, plate_mm: 30.0, deviation_z: None });
        g.push(&[1.0, 9.9, 10.0, 29.0, -1.0, 30.0], &[1.0, 2.0, 0.0, 29.0, 5.0, 5.0], &[1.0, 3.0, 5.0, 7.0, 9.0, 9.0]);
        let r = g.to_record("b", 1, 0, "c", 10.0);
        assert_eq!(r.outside_count, 2);
        assert_eq!(r.cells_per_side, 3);
        let cells: Vec<(u32, u32, u64, f64)> = r.cells.iter().map(|c| (c.ix, c.iy, c.count, c.mean)).collect();
        assert_eq!(cells, vec![(0, 0, 2, 2.0), (1, 0, 1, 5.0), (2, 2, 1, 7.0)]);
    }

    #[test]
    fn a_cold_cell_stands_out_of_its_layer() {
        let cell = |i: u32, mean: f64, count: u64| GridCell { ix: i, iy: 0, count, mean };
        // Two lasers' levels (2000 and 2060), one cold cell, one sparse cell.
        let mut cells: Vec<GridCell> = (0..20).map(|i| cell(i, if i < 10 { 2000.0 + f64::from(i) } else { 2060.0 - f64::from(i) }, 300)).collect();
        cells[4].mean = 1500.0;
        cells.push(cell(20, 100.0, 5));
        let z = cell_z_scores(&cells);
        let flagged: Vec<usize> = z.iter().enumerate().filter(|(_, z)| z.is_some_and(|z| z.abs() > 4.0)).map(|(i, _)| i).collect();
        assert_eq!(flagged, vec![4], "{z:?}");
        assert_eq!(z[20], None, "too few samples to judge");
        assert!(cell_z_scores(&cells[..5]).iter().all(Option::is_none), "too few cells to judge");
    }
}
