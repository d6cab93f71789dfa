//! `meltstream export`: Parquet files for the ML side, from the results store (the topology's
//! first PostgreSQL or SQLite sink), per build:
//! - `layer_features/build_id=<build>/layers=<first>-<last>.parquet`: one row per layer and laser
//!   (the latest revision of its statistics, energy density, the layer's verdict, the laser's data
//!   quality, the SPC signals of the layer on that laser), `layers_per_file` layers per file;
//! - `fused_defects/build_id=<build>/fused_defects.parquet`: the CT fusion's rows.
//!
//! Each file is written to a temporary name, synced and renamed, so a reader never sees half a
//! file; names are a function of the build and layer range, so a second export (after a crash,
//! or when more layers are durable) replaces files instead of adding copies, and a build's files
//! the new export does not produce are removed. `_manifest.json`, written last the same way,
//! lists every file with its rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use meltstream_engine::fusion::FusedDefect;
use meltstream_engine::records::{DataQuality, LayerSummary, LayerVerdict};
use meltstream_engine::topology::Topology;

use meltstream_actors::sinks::results_store::ResultsStore as Store;

/// The channels whose statistics become columns (`<channel>_mean`, `_std_dev`, `_min`, `_max`, `_p50`).
pub const CHANNELS: [&str; 4] = ["temperature_c", "photodiode_on_axis", "photodiode_off_axis", "laser_power_w"];
const STATS: [&str; 5] = ["mean", "std_dev", "min", "max", "p50"];

/// One file written.
#[derive(Debug)]
pub struct Written {
    /// Relative to the export directory.
    pub path: String,
    /// Rows in it.
    pub rows: usize,
}

/// Exports the builds of `t`'s store (only `build` when given) into `out`.
pub fn run(t: &Topology, out: &Path, build: Option<&str>, layers_per_file: u32) -> anyhow::Result<Vec<Written>> {
    let Some(store) = Store::of(t) else {
        anyhow::bail!("topology {:?} has no PostgreSQL or SQLite sink to export from", t.name);
    };
    let layers_per_file = layers_per_file.max(1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let builds: Vec<String> = rt.block_on(store.builds()).map_err(|e| anyhow::anyhow!(e))?.into_iter().filter(|b| build.is_none_or(|x| x == b)).collect();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for b in &builds {
        let rows = layer_features(&store, &rt, b)?;
        let dir = out.join("layer_features").join(format!("build_id={b}"));
        let mut produced = BTreeSet::new();
        let mut by_file: BTreeMap<u32, Vec<&Feature>> = BTreeMap::new();
        for r in &rows {
            by_file.entry(r.layer / layers_per_file).or_default().push(r);
        }
        for (k, part) in by_file {
            let name = format!("layers={:05}-{:05}.parquet", k * layers_per_file, (k + 1) * layers_per_file - 1);
            write_atomically(&dir, &name, &features_batch(&part)?)?;
            written.push(Written { path: format!("layer_features/build_id={b}/{name}"), rows: part.len() });
            produced.insert(name);
        }
        remove_others(&dir, &produced)?;
        let fused: Vec<FusedDefect> = rt.block_on(store.records(b, "fused_defects")).map_err(|e| anyhow::anyhow!(e))?.iter().map(|j| serde_json::from_str(j)).collect::<Result<_, _>>().context("fused_defects.record")?;
        let dir = out.join("fused_defects").join(format!("build_id={b}"));
        let mut produced = BTreeSet::new();
        if !fused.is_empty() {
            write_atomically(&dir, "fused_defects.parquet", &fused_batch(&fused)?)?;
            written.push(Written { path: format!("fused_defects/build_id={b}/fused_defects.parquet"), rows: fused.len() });
            produced.insert("fused_defects.parquet".to_owned());
        }
        remove_others(&dir, &produced)?;
    }
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({ "builds": builds, "files": written.iter().map(|w| serde_json::json!({ "path": w.path, "rows": w.rows })).collect::<Vec<_>>() })).context("manifest")?;
    write_file_atomically(out, "_manifest.json", &manifest)?;
    Ok(written)
}

/// One row of layer features.
#[derive(Debug)]
struct Feature {
    s: LayerSummary,
    layer: u32,
    verdict: Option<(String, u32)>,
    quality: Option<meltstream_engine::records::LaserQuality>,
    spc: Vec<String>,
}

fn layer_features(store: &Store, rt: &tokio::runtime::Runtime, build: &str) -> anyhow::Result<Vec<Feature>> {
    let parse = |table: &str| -> anyhow::Result<Vec<String>> { rt.block_on(store.records(build, table)).map_err(|e| anyhow::anyhow!("{table}: {e}")) };
    let mut latest: BTreeMap<(u32, u8), LayerSummary> = BTreeMap::new();
    for j in parse("layer_summaries")? {
        let s: LayerSummary = serde_json::from_str(&j).context("layer_summaries.record")?;
        if latest.get(&(s.layer, s.laser)).is_none_or(|o| o.revision < s.revision) {
            latest.insert((s.layer, s.laser), s);
        }
    }
    let mut verdicts: BTreeMap<u32, (String, u32)> = BTreeMap::new();
    for j in parse("layer_verdicts")? {
        let v: LayerVerdict = serde_json::from_str(&j).context("layer_verdicts.record")?;
        verdicts.insert(v.layer, (v.verdict, v.reasons.len() as u32));
    }
    let mut quality: BTreeMap<u32, DataQuality> = BTreeMap::new();
    for j in parse("data_quality")? {
        let q: DataQuality = serde_json::from_str(&j).context("data_quality.record")?;
        quality.insert(q.layer, q);
    }
    let mut spc: BTreeMap<(u32, u8), Vec<String>> = BTreeMap::new();
    for (layer, laser, chart, rule) in rt.block_on(store.spc_rows(build)).map_err(|e| anyhow::anyhow!(e))? {
        spc.entry((layer, laser)).or_default().push(format!("{chart}:{rule}"));
    }
    Ok(latest
        .into_iter()
        .map(|((layer, laser), s)| {
            let mut charts = spc.remove(&(layer, laser)).unwrap_or_default();
            charts.sort();
            Feature { layer, verdict: verdicts.get(&layer).cloned(), quality: quality.get(&layer).and_then(|q| q.lasers.get(&laser.to_string()).cloned()), spc: charts, s }
        })
        .collect())
}

fn features_batch(rows: &[&Feature]) -> anyhow::Result<RecordBatch> {
    let mut fields = vec![
        Field::new("build_id", DataType::Utf8, false),
        Field::new("layer", DataType::UInt32, false),
        Field::new("laser", DataType::UInt32, false),
        Field::new("revision", DataType::UInt32, false),
        Field::new("window_start_ns", DataType::Int64, false),
        Field::new("window_end_ns", DataType::Int64, false),
        Field::new("z_um", DataType::Int64, true),
        Field::new("sample_count", DataType::UInt64, false),
        Field::new("late_count", DataType::UInt64, false),
        Field::new("energy_density_j_mm3", DataType::Float64, true),
    ];
    let mut cols: Vec<ArrayRef> = Vec::new();
    let strs = |f: &dyn Fn(&Feature) -> Option<String>| {
        let mut b = StringBuilder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let u32s = |f: &dyn Fn(&Feature) -> Option<u32>| {
        let mut b = UInt32Builder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let u64s = |f: &dyn Fn(&Feature) -> Option<u64>| {
        let mut b = UInt64Builder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let i64s = |f: &dyn Fn(&Feature) -> Option<i64>| {
        let mut b = Int64Builder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    let f64s = |f: &dyn Fn(&Feature) -> Option<f64>| {
        let mut b = Float64Builder::new();
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish()) as ArrayRef
    };
    cols.push(strs(&|r| Some(r.s.build_id.clone())));
    cols.push(u32s(&|r| Some(r.layer)));
    cols.push(u32s(&|r| Some(u32::from(r.s.laser))));
    cols.push(u32s(&|r| Some(r.s.revision)));
    cols.push(i64s(&|r| Some(r.s.window_start_ns)));
    cols.push(i64s(&|r| Some(r.s.window_end_ns)));
    cols.push(i64s(&|r| r.s.z_um));
    cols.push(u64s(&|r| Some(r.s.sample_count)));
    cols.push(u64s(&|r| Some(r.s.late_count)));
    cols.push(f64s(&|r| r.s.energy_density_j_mm3));
    for ch in CHANNELS {
        for st in STATS {
            fields.push(Field::new(format!("{ch}_{st}"), DataType::Float64, true));
            cols.push(f64s(&|r| {
                r.s.channels.get(ch).map(|c| match st {
                    "mean" => c.mean,
                    "std_dev" => c.std_dev,
                    "min" => c.min,
                    "max" => c.max,
                    _ => c.p50,
                })
            }));
        }
    }
    fields.extend([
        Field::new("verdict", DataType::Utf8, true),
        Field::new("verdict_reasons", DataType::UInt32, true),
        Field::new("data_quality", DataType::Float64, true),
        Field::new("expected_samples", DataType::UInt64, true),
        Field::new("gaps", DataType::UInt32, true),
        Field::new("gap_ms", DataType::Float64, true),
        Field::new("duplicate_samples", DataType::UInt64, true),
        Field::new("spc_signals", DataType::UInt32, false),
        Field::new("spc_rules", DataType::Utf8, false),
    ]);
    cols.push(strs(&|r| r.verdict.as_ref().map(|v| v.0.clone())));
    cols.push(u32s(&|r| r.verdict.as_ref().map(|v| v.1)));
    cols.push(f64s(&|r| r.quality.as_ref().map(|q| q.score)));
    cols.push(u64s(&|r| r.quality.as_ref().map(|q| q.expected)));
    cols.push(u32s(&|r| r.quality.as_ref().map(|q| q.gaps)));
    cols.push(f64s(&|r| r.quality.as_ref().map(|q| q.gap_ms)));
    cols.push(u64s(&|r| r.quality.as_ref().map(|q| q.duplicate_samples)));
    cols.push(u32s(&|r| Some(r.spc.len() as u32)));
    cols.push(strs(&|r| Some(r.spc.join(";"))));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).context("layer features batch")
}

fn fused_batch(rows: &[FusedDefect]) -> anyhow::Result<RecordBatch> {
    let mut b_build = StringBuilder::new();
    let mut b_id = StringBuilder::new();
    let mut b_type = StringBuilder::new();
    let mut b_layer = UInt32Builder::new();
    let (mut x, mut y, mut z, mut d) = (Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new());
    let (mut detectable, mut detected) = (BooleanBuilder::new(), BooleanBuilder::new());
    let mut count = UInt32Builder::new();
    let mut nearest = StringBuilder::new();
    let mut nearest_mm = Float64Builder::new();
    for f in rows {
        b_build.append_value(&f.defect.build_id);
        b_id.append_value(&f.defect.defect_id);
        b_type.append_value(f.defect.defect_type.name());
        b_layer.append_value(f.layer);
        x.append_value(f.defect.x_mm);
        y.append_value(f.defect.y_mm);
        z.append_value(f.defect.z_mm);
        d.append_option(f.defect.equivalent_diameter_um());
        detectable.append_value(f.detectable);
        detected.append_value(f.detected);
        count.append_value(f.evidence_count);
        nearest.append_option(f.evidence.first().map(|e| e.source.clone()));
        nearest_mm.append_option(f.evidence.first().and_then(|e| e.distance_mm));
    }
    let fields = vec![
        Field::new("build_id", DataType::Utf8, false),
        Field::new("defect_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("layer", DataType::UInt32, false),
        Field::new("x_mm", DataType::Float64, false),
        Field::new("y_mm", DataType::Float64, false),
        Field::new("z_mm", DataType::Float64, false),
        Field::new("diameter_um", DataType::Float64, true),
        Field::new("detectable", DataType::Boolean, false),
        Field::new("detected", DataType::Boolean, false),
        Field::new("evidence_count", DataType::UInt32, false),
        Field::new("nearest_evidence", DataType::Utf8, true),
        Field::new("nearest_evidence_mm", DataType::Float64, true),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(b_build.finish()),
        Arc::new(b_id.finish()),
        Arc::new(b_type.finish()),
        Arc::new(b_layer.finish()),
        Arc::new(x.finish()),
        Arc::new(y.finish()),
        Arc::new(z.finish()),
        Arc::new(d.finish()),
        Arc::new(detectable.finish()),
        Arc::new(detected.finish()),
        Arc::new(count.finish()),
        Arc::new(nearest.finish()),
        Arc::new(nearest_mm.finish()),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).context("fused defects batch")
}

/// Writes `batch` as `dir/name` through a synced temporary file and a rename.
fn write_atomically(dir: &Path, name: &str, batch: &RecordBatch) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).context("parquet writer")?;
    w.write(batch).context("parquet write")?;
    w.close().context("parquet close")?;
    write_file_atomically(dir, name, &buf)
}

fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {} into place", tmp.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Removes the files of `dir` the export did not produce (stale ranges, temporary files).
fn remove_others(dir: &Path, produced: &BTreeSet<String>) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !produced.contains(&name) {
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}
