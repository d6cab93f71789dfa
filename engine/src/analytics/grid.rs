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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_by_hand() {
        let mut g = Grid::new(GridSpec { cell_mm: 10.0, plate_mm: 30.0 });
        g.push(&[1.0, 9.9, 10.0, 29.0, -1.0, 30.0], &[1.0, 2.0, 0.0, 29.0, 5.0, 5.0], &[1.0, 3.0, 5.0, 7.0, 9.0, 9.0]);
        let r = g.to_record("b", 1, 0, "c", 10.0);
        assert_eq!(r.outside_count, 2);
        assert_eq!(r.cells_per_side, 3);
        let cells: Vec<(u32, u32, u64, f64)> = r.cells.iter().map(|c| (c.ix, c.iy, c.count, c.mean)).collect();
        assert_eq!(cells, vec![(0, 0, 2, 2.0), (1, 0, 1, 5.0), (2, 2, 1, 7.0)]);
    }
}
