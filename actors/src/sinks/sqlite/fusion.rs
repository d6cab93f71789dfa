//! CT fusion over the embedded SQLite results store (`meltstream fuse`, and the end of a demo
//! run): reads a build's evidence from the sink's tables and replaces its fused defects and
//! fusion summary in one transaction; and reads back what `meltstream export` turns into
//! Parquet. Blocking; never used on the data path. It takes no ownership of the file (the engine's writes and these touch different tables; SQLite
//! serialises the writers), so it can run while an engine writes the same file.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use meltstream_engine::fusion::join::{EvAnomaly, EvGrid, EvSpc};
use meltstream_engine::fusion::{Evidence, FusedDefect, FusionSummary};
use meltstream_engine::records::GridCell;

use super::database::migrate;
use crate::sinks::StoredBaseline;

fn open(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!("{} does not exist: run the pipeline (its sqlite sink) first", path.display()));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(conn)
}

fn err(what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The builds of `pipeline` with layer results.
pub fn builds(path: &Path, pipeline: &str) -> Result<Vec<String>, String> {
    let conn = open(path)?;
    let mut st = conn.prepare("SELECT DISTINCT build_id FROM layer_summaries WHERE pipeline = ?1 ORDER BY 1").map_err(err("cannot list builds"))?;
    let rows = st.query_map([pipeline], |r| r.get(0)).map_err(err("cannot list builds"))?;
    rows.collect::<Result<Vec<String>, _>>().map_err(err("cannot list builds"))
}

/// The evidence of `build` stored for `pipeline`.
pub fn read_evidence(path: &Path, pipeline: &str, build: &str) -> Result<Evidence, String> {
    let conn = open(path)?;
    let mut ev = Evidence::default();
    let mut st = conn.prepare("SELECT layer, rule, value, x_mm, y_mm FROM anomalies WHERE pipeline = ?1 AND build_id = ?2").map_err(err("cannot read anomalies"))?;
    let rows = st.query_map([pipeline, build], |r| Ok(EvAnomaly { layer: r.get(0)?, rule: r.get(1)?, value: r.get(2)?, x_mm: r.get(3)?, y_mm: r.get(4)? })).map_err(err("cannot read anomalies"))?;
    ev.anomalies = rows.collect::<Result<_, _>>().map_err(err("cannot read anomalies"))?;
    let mut st = conn.prepare("SELECT layer, revision, cell_mm, cells FROM grid_maps WHERE pipeline = ?1 AND build_id = ?2").map_err(err("cannot read grid maps"))?;
    let rows = st.query_map([pipeline, build], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)?, r.get::<_, f64>(2)?, r.get::<_, String>(3)?))).map_err(err("cannot read grid maps"))?;
    for row in rows {
        let (layer, revision, cell_mm, cells) = row.map_err(err("cannot read grid maps"))?;
        let cells: Vec<GridCell> = serde_json::from_str(&cells).map_err(|e| format!("grid_maps.cells: {e}"))?;
        ev.grids.push(EvGrid { layer, revision, cell_mm, cells });
    }
    let mut st = conn.prepare("SELECT layer, spc, value, cell_x_mm, cell_y_mm, cell_mm FROM spc_signals WHERE pipeline = ?1 AND build_id = ?2").map_err(err("cannot read SPC signals"))?;
    let rows = st
        .query_map([pipeline, build], |r| {
            let cell = match (r.get::<_, Option<f64>>(3)?, r.get::<_, Option<f64>>(4)?, r.get::<_, Option<f64>>(5)?) {
                (Some(x), Some(y), Some(size)) => Some((x, y, size)),
                _ => None,
            };
            Ok(EvSpc { layer: r.get(0)?, spc: r.get(1)?, value: r.get(2)?, cell })
        })
        .map_err(err("cannot read SPC signals"))?;
    ev.spc = rows.collect::<Result<_, _>>().map_err(err("cannot read SPC signals"))?;
    let mut st = conn
        .prepare("SELECT layer, max(z_um) FROM layer_summaries WHERE pipeline = ?1 AND build_id = ?2 AND z_um IS NOT NULL GROUP BY layer")
        .map_err(err("cannot read layer heights"))?;
    let rows = st.query_map([pipeline, build], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?))).map_err(err("cannot read layer heights"))?;
    for row in rows {
        let (layer, top) = row.map_err(err("cannot read layer heights"))?;
        ev.layer_tops_um.insert(layer, top);
    }
    Ok(ev)
}

/// Replaces `build`'s fused defects and summary for `pipeline` (creating the tables if needed).
pub fn write_fusion(path: &Path, pipeline: &str, build: &str, fused: &[FusedDefect], summary: &FusionSummary) -> Result<(), String> {
    let mut conn = open(path)?;
    migrate(&mut conn, "fuse", path).map_err(|e| e.to_string())?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err("cannot begin"))?;
    for table in ["fused_defects", "fusion_summaries"] {
        tx.execute(&format!("DELETE FROM {table} WHERE pipeline = ?1 AND build_id = ?2"), [pipeline, build]).map_err(err("cannot replace the previous fusion"))?;
    }
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO fused_defects (pipeline, build_id, defect_id, layer, x_mm, y_mm, z_mm, diameter_um, type, detectable, detected, evidence_count, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .map_err(err("cannot prepare"))?;
        for f in fused {
            let d = &f.defect;
            let record = serde_json::to_string(f).map_err(|e| e.to_string())?;
            insert
                .execute(params![pipeline, build, d.defect_id, f.layer, d.x_mm, d.y_mm, d.z_mm, d.equivalent_diameter_um(), d.defect_type.name(), f.detectable, f.detected, f.evidence_count, record])
                .map_err(err("cannot insert a fused defect"))?;
        }
    }
    let record = serde_json::to_string(summary).map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO fusion_summaries (pipeline, build_id, defects, detectable, detected, flags, confirmed_flags, recall, \"precision\", record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![pipeline, build, summary.defects, summary.detectable, summary.detected, summary.flags, summary.confirmed_flags, summary.recall, summary.precision, record],
    )
    .map_err(err("cannot insert the fusion summary"))?;
    tx.commit().map_err(err("cannot commit"))
}

/// The `record` column (JSON text) of `table`'s rows of `build` for `pipeline` (a table that
/// keeps the whole record: layer_summaries, layer_verdicts, build_reports, data_quality,
/// fused_defects).
pub fn records(path: &Path, pipeline: &str, build: &str, table: &str) -> Result<Vec<String>, String> {
    let conn = open(path)?;
    let mut st = conn.prepare(&format!("SELECT record FROM \"{}\" WHERE pipeline = ?1 AND build_id = ?2", table.replace('"', "\"\""))).map_err(err(table))?;
    let rows = st.query_map([pipeline, build], |r| r.get(0)).map_err(err(table))?;
    rows.collect::<Result<Vec<String>, _>>().map_err(err(table))
}

/// `build`'s SPC signals for `pipeline`: (layer, laser, chart, rule).
pub fn spc_rows(path: &Path, pipeline: &str, build: &str) -> Result<Vec<(u32, u8, String, String)>, String> {
    let conn = open(path)?;
    let mut st = conn.prepare("SELECT layer, laser, spc, rule FROM spc_signals WHERE pipeline = ?1 AND build_id = ?2").map_err(err("spc_signals"))?;
    let rows = st.query_map([pipeline, build], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(err("spc_signals"))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err("spc_signals"))
}

/// The baselines of chart `spc` that `build`'s phase I stored for `pipeline` (table
/// `spc_baselines`), by laser and cell.
pub fn spc_baselines(path: &Path, pipeline: &str, build: &str, spc: &str) -> Result<Vec<StoredBaseline>, String> {
    let conn = open(path)?;
    let mut st = conn.prepare("SELECT laser, cell, cell_mm, centre, sigma FROM spc_baselines WHERE pipeline = ?1 AND build_id = ?2 AND spc = ?3 ORDER BY laser, cell").map_err(err("cannot read spc_baselines"))?;
    let rows = st.query_map([pipeline, build, spc], |r| Ok(StoredBaseline { laser: r.get(0)?, cell: r.get(1)?, cell_mm: r.get(2)?, centre: r.get(3)?, sigma: r.get(4)? })).map_err(err("cannot read spc_baselines"))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err("cannot read spc_baselines"))
}
