//! The column buffers of the SPC tables (`spc_signals`, `spc_baselines`); a cell chart's rows
//! carry their cell (index, centre and edge), a laser chart's leave those columns null. Part of
//! `columns.rs`'s set; never any I/O.

use meltstream_engine::records::{SpcBaseline, SpcCell, SpcSignal};

use super::columns::{int, pg_text, Param};

columns! {
    /// Buffered `spc_signals` rows.
    SpcSignalColumns {
        build_id: String = "text",
        spc: String = "text",
        chart: String = "text",
        channel: String = "text",
        statistic: String = "text",
        laser: i32 = "int",
        layer: i32 = "int",
        time_ns: i64 = "bigint",
        rule: String = "text",
        value: f64 = "float8",
        charted: f64 = "float8",
        centre: f64 = "float8",
        lower_limit: f64 = "float8",
        upper_limit: f64 = "float8",
        baseline_centre: f64 = "float8",
        baseline_sigma: f64 = "float8",
        layers: String = "text",
        cell: Option<i32> = "int",
        cell_x_mm: Option<f64> = "float8",
        cell_y_mm: Option<f64> = "float8",
        cell_mm: Option<f64> = "float8",
    }
}

/// A cell's columns: index, centre x, centre y, edge.
type CellColumns = (Option<i32>, Option<f64>, Option<f64>, Option<f64>);

fn cell_columns(c: Option<&SpcCell>) -> Result<CellColumns, String> {
    Ok(match c {
        Some(c) => (Some(int(c.index, "cell")?), Some(c.x_mm), Some(c.y_mm), Some(c.size_mm)),
        None => (None, None, None, None),
    })
}

impl SpcSignalColumns {
    pub(super) fn push(&mut self, s: &SpcSignal) -> Result<(), String> {
        let layer = int(s.layer, "layer")?;
        for l in &s.layers {
            int(*l, "layer")?;
        }
        let cell = cell_columns(s.cell.as_ref())?;
        self.build_id.push(pg_text(&s.build_id));
        self.spc.push(pg_text(&s.spc));
        self.chart.push(pg_text(&s.chart));
        self.channel.push(pg_text(&s.channel));
        self.statistic.push(pg_text(&s.statistic));
        self.laser.push(i32::from(s.laser));
        self.layer.push(layer);
        self.time_ns.push(s.time_ns);
        self.rule.push(pg_text(&s.rule));
        self.value.push(s.value);
        self.charted.push(s.charted);
        self.centre.push(s.centre);
        self.lower_limit.push(s.lower);
        self.upper_limit.push(s.upper);
        self.baseline_centre.push(s.baseline_centre);
        self.baseline_sigma.push(s.baseline_sigma);
        self.layers.push(serde_json::to_string(&s.layers).unwrap_or_else(|_| "[]".into()));
        (self.cell.push(cell.0), self.cell_x_mm.push(cell.1), self.cell_y_mm.push(cell.2), self.cell_mm.push(cell.3));
        Ok(())
    }
}

columns! {
    /// Buffered `spc_baselines` rows.
    SpcBaselineColumns {
        build_id: String = "text",
        spc: String = "text",
        chart: String = "text",
        channel: String = "text",
        statistic: String = "text",
        laser: i32 = "int",
        cell: Option<i32> = "int",
        cell_x_mm: Option<f64> = "float8",
        cell_y_mm: Option<f64> = "float8",
        cell_mm: Option<f64> = "float8",
        layer: i32 = "int",
        time_ns: i64 = "bigint",
        centre: f64 = "float8",
        sigma: f64 = "float8",
        layers_used: i32 = "int",
    }
}

impl SpcBaselineColumns {
    pub(super) fn push(&mut self, b: &SpcBaseline) -> Result<(), String> {
        let (layer, used, cell) = (int(b.layer, "layer")?, int(b.layers_used, "layers_used")?, cell_columns(b.cell.as_ref())?);
        self.build_id.push(pg_text(&b.build_id));
        self.spc.push(pg_text(&b.spc));
        self.chart.push(pg_text(&b.chart));
        self.channel.push(pg_text(&b.channel));
        self.statistic.push(pg_text(&b.statistic));
        self.laser.push(i32::from(b.laser));
        (self.cell.push(cell.0), self.cell_x_mm.push(cell.1), self.cell_y_mm.push(cell.2), self.cell_mm.push(cell.3));
        self.layer.push(layer);
        self.time_ns.push(b.time_ns);
        self.centre.push(b.centre);
        self.sigma.push(b.sigma);
        self.layers_used.push(used);
        Ok(())
    }
}
