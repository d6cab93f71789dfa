//! CT fusion over the PostgreSQL results store (`meltstream fuse`): reads a build's evidence
//! (alerts, grid maps, SPC signals, layer heights) from the sink's tables and replaces the
//! build's fused defects and fusion summary in one transaction, so a re-run (a revised CT list)
//! leaves exactly one result per defect; and reads back what `meltstream export` turns into Parquet.
//! Never used on the data path.

use meltstream_engine::fusion::join::{EvAnomaly, EvGrid, EvSpc};
use meltstream_engine::fusion::{Evidence, FusedDefect, FusionSummary};
use meltstream_engine::records::GridCell;

use super::connection::connect;
use crate::sinks::StoredBaseline;
use super::migrate_in;
use super::schema::{quote_ident, Sql};

fn err(what: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The builds of `pipeline` with layer results.
pub async fn builds(url: &str, schema: &str, pipeline: &str) -> Result<Vec<String>, String> {
    let client = connect(url).await?;
    let s = quote_ident(schema);
    let rows = client.query(&format!("SELECT DISTINCT build_id FROM {s}.layer_summaries WHERE pipeline = $1 ORDER BY 1"), &[&pipeline]).await.map_err(err("cannot list builds"))?;
    rows.iter().map(|r| r.try_get(0).map_err(err("cannot list builds"))).collect()
}

/// The evidence of `build` stored for `pipeline`.
pub async fn read_evidence(url: &str, schema: &str, pipeline: &str, build: &str) -> Result<Evidence, String> {
    let client = connect(url).await?;
    let s = quote_ident(schema);
    let mut ev = Evidence::default();
    let u = |v: i32| u32::try_from(v).unwrap_or(0);
    for r in client.query(&format!("SELECT layer, rule, value, x_mm, y_mm FROM {s}.anomalies WHERE pipeline = $1 AND build_id = $2"), &[&pipeline, &build]).await.map_err(err("cannot read anomalies"))? {
        let layer: Option<i32> = r.try_get(0).map_err(err("anomalies.layer"))?;
        ev.anomalies.push(EvAnomaly {
            layer: layer.map(u),
            rule: r.try_get(1).map_err(err("anomalies.rule"))?,
            value: r.try_get(2).map_err(err("anomalies.value"))?,
            x_mm: r.try_get(3).map_err(err("anomalies.x_mm"))?,
            y_mm: r.try_get(4).map_err(err("anomalies.y_mm"))?,
        });
    }
    for r in client.query(&format!("SELECT layer, revision, cell_mm, cells::text FROM {s}.grid_maps WHERE pipeline = $1 AND build_id = $2"), &[&pipeline, &build]).await.map_err(err("cannot read grid maps"))? {
        let cells: String = r.try_get(3).map_err(err("grid_maps.cells"))?;
        let cells: Vec<GridCell> = serde_json::from_str(&cells).map_err(|e| format!("grid_maps.cells: {e}"))?;
        ev.grids.push(EvGrid { layer: u(r.try_get(0).map_err(err("grid_maps.layer"))?), revision: u(r.try_get(1).map_err(err("grid_maps.revision"))?), cell_mm: r.try_get(2).map_err(err("grid_maps.cell_mm"))?, cells });
    }
    for r in client.query(&format!("SELECT layer, spc, value, cell_x_mm, cell_y_mm, cell_mm FROM {s}.spc_signals WHERE pipeline = $1 AND build_id = $2"), &[&pipeline, &build]).await.map_err(err("cannot read SPC signals"))? {
        let cell: (Option<f64>, Option<f64>, Option<f64>) = (r.try_get(3).map_err(err("spc_signals.cell_x_mm"))?, r.try_get(4).map_err(err("spc_signals.cell_y_mm"))?, r.try_get(5).map_err(err("spc_signals.cell_mm"))?);
        let cell = match cell {
            (Some(x), Some(y), Some(size)) => Some((x, y, size)),
            _ => None,
        };
        ev.spc.push(EvSpc { layer: u(r.try_get(0).map_err(err("spc_signals.layer"))?), spc: r.try_get(1).map_err(err("spc_signals.spc"))?, value: r.try_get(2).map_err(err("spc_signals.value"))?, cell });
    }
    let tops = format!("SELECT layer, max(z_um) FROM {s}.layer_summaries WHERE pipeline = $1 AND build_id = $2 AND z_um IS NOT NULL GROUP BY layer");
    for r in client.query(&tops, &[&pipeline, &build]).await.map_err(err("cannot read layer heights"))? {
        ev.layer_tops_um.insert(u(r.try_get(0).map_err(err("layer_summaries.layer"))?), r.try_get(1).map_err(err("layer_summaries.z_um"))?);
    }
    Ok(ev)
}

/// Replaces `build`'s fused defects and summary for `pipeline` (creating the tables if needed).
pub async fn write_fusion(url: &str, schema: &str, pipeline: &str, build: &str, fused: &[FusedDefect], summary: &FusionSummary) -> Result<(), String> {
    let mut client = connect(url).await?;
    let sql = Sql::new(schema);
    let s = quote_ident(schema);
    let tx = client.transaction().await.map_err(err("cannot begin"))?;
    migrate_in(&tx, &sql, "fuse", schema).await.map_err(|(stage, e)| format!("{stage}: {e}"))?;
    for table in ["fused_defects", "fusion_summaries"] {
        tx.execute(&format!("DELETE FROM {s}.{table} WHERE pipeline = $1 AND build_id = $2"), &[&pipeline, &build]).await.map_err(err("cannot replace the previous fusion"))?;
    }
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {s}.fused_defects (pipeline, build_id, defect_id, layer, x_mm, y_mm, z_mm, diameter_um, type, detectable, detected, evidence_count, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb)"
        ))
        .await
        .map_err(err("cannot prepare"))?;
    for f in fused {
        let d = &f.defect;
        let record = serde_json::to_string(f).map_err(|e| e.to_string())?;
        let layer = i32::try_from(f.layer).unwrap_or(i32::MAX);
        let n = i32::try_from(f.evidence_count).unwrap_or(i32::MAX);
        tx.execute(&insert, &[&pipeline, &build, &d.defect_id, &layer, &d.x_mm, &d.y_mm, &d.z_mm, &d.equivalent_diameter_um(), &d.defect_type.name(), &f.detectable, &f.detected, &n, &record])
            .await
            .map_err(err("cannot insert a fused defect"))?;
    }
    let record = serde_json::to_string(summary).map_err(|e| e.to_string())?;
    let i = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    tx.execute(
        &format!(
            "INSERT INTO {s}.fusion_summaries (pipeline, build_id, defects, detectable, detected, flags, confirmed_flags, recall, precision, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb)"
        ),
        &[&pipeline, &build, &i(summary.defects), &i(summary.detectable), &i(summary.detected), &i(summary.flags), &i(summary.confirmed_flags), &summary.recall, &summary.precision, &record],
    )
    .await
    .map_err(err("cannot insert the fusion summary"))?;
    tx.commit().await.map_err(err("cannot commit"))
}

/// The `record` column (JSON text) of `table`'s rows of `build` for `pipeline` (`table` is one
/// of the tables that keep the whole record: layer_summaries, layer_verdicts, build_reports,
/// data_quality, fused_defects).
pub async fn records(url: &str, schema: &str, pipeline: &str, build: &str, table: &str) -> Result<Vec<String>, String> {
    let client = connect(url).await?;
    let s = quote_ident(schema);
    let rows = client.query(&format!("SELECT record::text FROM {s}.{} WHERE pipeline = $1 AND build_id = $2", quote_ident(table)), &[&pipeline, &build]).await.map_err(err(table))?;
    rows.iter().map(|r| r.try_get(0).map_err(err(table))).collect()
}

/// `build`'s SPC signals for `pipeline`: (layer, laser, chart, rule).
pub async fn spc_rows(url: &str, schema: &str, pipeline: &str, build: &str) -> Result<Vec<(u32, u8, String, String)>, String> {
    let client = connect(url).await?;
    let s = quote_ident(schema);
    let rows = client.query(&format!("SELECT layer, laser, spc, rule FROM {s}.spc_signals WHERE pipeline = $1 AND build_id = $2"), &[&pipeline, &build]).await.map_err(err("spc_signals"))?;
    rows.iter()
        .map(|r| {
            let (layer, laser): (i32, i32) = (r.try_get(0).map_err(err("spc_signals.layer"))?, r.try_get(1).map_err(err("spc_signals.laser"))?);
            Ok((u32::try_from(layer).unwrap_or(0), u8::try_from(laser).unwrap_or(0), r.try_get(2).map_err(err("spc_signals.spc"))?, r.try_get(3).map_err(err("spc_signals.rule"))?))
        })
        .collect()
}

/// The baselines of chart `spc` that `build`'s phase I stored for `pipeline`: (laser, cell
/// index, cell edge in mm, centre, sigma).
pub async fn spc_baselines(url: &str, schema: &str, pipeline: &str, build: &str, spc: &str) -> Result<Vec<StoredBaseline>, String> {
    let client = connect(url).await?;
    let s = quote_ident(schema);
    let q = format!("SELECT laser, cell, cell_mm, centre, sigma FROM {s}.spc_baselines WHERE pipeline = $1 AND build_id = $2 AND spc = $3 ORDER BY laser, cell");
    let rows = client.query(&q, &[&pipeline, &build, &spc]).await.map_err(err("cannot read spc_baselines"))?;
    rows.iter()
        .map(|r| {
            let laser: i32 = r.try_get(0).map_err(err("spc_baselines.laser"))?;
            let cell: Option<i32> = r.try_get(1).map_err(err("spc_baselines.cell"))?;
            Ok(StoredBaseline {
                laser: u8::try_from(laser).map_err(|_| format!("spc_baselines.laser {laser} is not a laser"))?,
                cell: cell.map(|c| u32::try_from(c).map_err(|_| format!("spc_baselines.cell {c} is not a cell"))).transpose()?,
                cell_mm: r.try_get(2).map_err(err("spc_baselines.cell_mm"))?,
                centre: r.try_get(3).map_err(err("spc_baselines.centre"))?,
                sigma: r.try_get(4).map_err(err("spc_baselines.sigma"))?,
            })
        })
        .collect()
}
