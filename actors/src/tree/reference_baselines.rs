//! The baselines of the `[[spc]]` charts with `baseline = "reference"`: read once when the engine
//! starts from the topology's first PostgreSQL or SQLite sink (table `spc_baselines`, the same
//! pipeline), and fixed in the build settings for the whole run, so that a replay charts against
//! exactly what the run it replaces did. A reference build without any stored baseline of the
//! chart (or stored on another grid) is a start error; a laser or cell the reference build has no
//! baseline for runs its own phase I.
//!
//! Runs before any actor starts, after the writers have migrated their schema; never on the data
//! path.

use std::collections::BTreeMap;
use std::sync::Arc;

use meltstream_engine::analytics::spc::Baseline;
use meltstream_engine::analytics::spc_spec::ReferenceBaselines;
use meltstream_engine::pipeline::build_pipeline::BuildSettings;
use meltstream_engine::topology::{expand_env, SinkKind, Topology};

use crate::sinks::{postgres, sqlite, StoredBaseline};

/// Why a chart's reference baselines cannot be had: the engine does not start.
#[derive(Debug, thiserror::Error)]
#[error("SPC chart {chart:?}: {message}")]
pub(crate) struct ReferenceError {
    /// The chart.
    pub(crate) chart: String,
    /// What is missing or wrong.
    pub(crate) message: String,
}

/// Fixes the reference baselines of every chart of `settings` that names a reference build.
pub(crate) async fn fix_reference_baselines(t: &Topology, settings: &mut BuildSettings) -> Result<(), ReferenceError> {
    let cell_mm = settings.grid.cell_mm;
    for spec in settings.spc.iter_mut() {
        let Some(build) = spec.reference_build.clone() else { continue };
        let fail = |message: String| ReferenceError { chart: spec.name.clone(), message };
        let Some(sink) = t.sinks.iter().find(|s| matches!(s.kind, SinkKind::Postgres(_) | SinkKind::Sqlite(_))) else {
            return Err(fail("baseline = \"reference\" needs a postgres or sqlite sink to read the reference build's baselines from".into()));
        };
        let (rows, pipeline) = match &sink.kind {
            SinkKind::Postgres(p) => (postgres::fusion::spc_baselines(&expand_env(&p.url), &p.schema, &p.pipeline, &build, &spec.name).await, p.pipeline.clone()),
            SinkKind::Sqlite(q) => {
                let (path, pipeline, b, name) = (q.path.clone(), q.pipeline.clone(), build.clone(), spec.name.clone());
                let rows = tokio::task::spawn_blocking(move || sqlite::fusion::spc_baselines(&path, &pipeline, &b, &name)).await.unwrap_or_else(|e| Err(e.to_string()));
                (rows, q.pipeline.clone())
            }
            _ => continue,
        };
        let rows = rows.map_err(|e| fail(format!("cannot read the baselines of reference build {build:?} from sink {:?}: {e}", sink.name)))?;
        let map = reference_map(&rows, spec.on_cells(), cell_mm).map_err(|e| fail(format!("reference build {build:?} in sink {:?}: {e}", sink.name)))?;
        if map.is_empty() {
            return Err(fail(format!(
                "no baseline of chart {:?} stored for reference build {build:?} in sink {:?} (pipeline {pipeline:?}, table spc_baselines): run the reference build with this chart until its phase I completes, or pick another build",
                spec.name, sink.name
            )));
        }
        tracing::info!(chart = %spec.name, reference_build = %build, baselines = map.len(), "SPC chart uses the reference build's baselines");
        spec.reference = Some(Arc::new(map));
    }
    Ok(())
}

/// The stored rows as a chart's reference: laser rows for a laser chart, cell rows (on cells of
/// `cell_mm`) for a cell chart.
fn reference_map(rows: &[StoredBaseline], on_cells: bool, cell_mm: f64) -> Result<ReferenceBaselines, String> {
    let mut map = BTreeMap::new();
    for r in rows.iter().filter(|r| r.cell.is_some() == on_cells) {
        if let Some(mm) = r.cell_mm.filter(|mm| (mm - cell_mm).abs() > 1e-9) {
            return Err(format!("its cells are {mm} mm, this topology's grid cells {cell_mm} mm ([windows] grid_cell_mm)"));
        }
        if !(r.centre.is_finite() && r.sigma > 0.0 && r.sigma.is_finite()) {
            return Err(format!("a stored baseline (laser {}, cell {:?}) has centre {} and sigma {}", r.laser, r.cell, r.centre, r.sigma));
        }
        map.insert((r.laser, r.cell), Baseline { centre: r.centre, sigma: r.sigma });
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_takes_the_rows_of_its_kind_on_its_grid() {
        let row = |laser, cell: Option<u32>, cell_mm: Option<f64>| StoredBaseline { laser, cell, cell_mm, centre: 10.0, sigma: 1.0 };
        let rows = [row(1, None, None), row(2, None, None), row(0, Some(7), Some(20.0))];
        assert_eq!(reference_map(&rows, false, 20.0).map(|m| m.into_keys().collect::<Vec<_>>()), Ok(vec![(1, None), (2, None)]));
        assert_eq!(reference_map(&rows, true, 20.0).map(|m| m.into_keys().collect::<Vec<_>>()), Ok(vec![(0, Some(7))]));
        assert!(reference_map(&rows, true, 10.0).is_err_and(|e| e.contains("20 mm")));
    }
}
