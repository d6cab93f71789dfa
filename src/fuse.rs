//! `meltstream fuse`: the batch CT fusion a workflow task runs days after a build. Reads a CT
//! defect list (JSON lines or CSV; bad rows are reported with their line and skipped), reads each
//! build's in-situ evidence from the topology's results store (its first PostgreSQL sink), joins
//! them (`meltstream_engine::fusion`, parameters from `[fusion]`), replaces the build's
//! `fused_defects` and `fusion_summaries` rows in one transaction, and prints the summary.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use meltstream_actors::sinks::postgres::fusion::{read_evidence, write_fusion};
use meltstream_engine::fusion::ct::read_list;
use meltstream_engine::fusion::{fuse, FusionSummary};
use meltstream_engine::topology::{expand_env, SinkKind, Topology};

/// Fuses the CT list `ct` with the results of `t`; only `build` when given.
pub fn run(t: &Topology, ct: &Path, build: Option<&str>, out: Option<&PathBuf>) -> anyhow::Result<Vec<FusionSummary>> {
    let text = std::fs::read_to_string(ct).with_context(|| format!("reading {}", ct.display()))?;
    let (defects, bad) = read_list(&text);
    for (line, e) in bad.iter().take(20) {
        eprintln!("{}:{line}: skipped: {e}", ct.display());
    }
    if !bad.is_empty() {
        eprintln!("{}: {} of {} rows skipped", ct.display(), bad.len(), bad.len() + defects.len());
    }
    let Some((url, schema, pipeline)) = t.sinks.iter().find_map(|s| match &s.kind {
        SinkKind::Postgres(p) => Some((expand_env(&p.url), p.schema.clone(), p.pipeline.clone())),
        _ => None,
    }) else {
        anyhow::bail!("topology {:?} has no PostgreSQL sink: fusion reads the build's results from where they are durable", t.name);
    };
    let builds: BTreeSet<&str> = defects.iter().map(|d| d.build_id.as_str()).filter(|b| build.is_none_or(|x| x == *b)).collect();
    let mut w = match out {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let mut summaries = Vec::new();
    for b in builds {
        let (fused, summary) = rt.block_on(async {
            let ev = read_evidence(&url, &schema, &pipeline, b).await.map_err(|e| anyhow::anyhow!("build {b}: {e}"))?;
            let (fused, summary) = fuse(b, &defects, &ev, &t.fusion);
            write_fusion(&url, &schema, &pipeline, b, &fused, &summary).await.map_err(|e| anyhow::anyhow!("build {b}: {e}"))?;
            anyhow::Ok((fused, summary))
        })?;
        if let Some(w) = w.as_mut() {
            for f in &fused {
                writeln!(w, "{}", serde_json::json!({"kind": "fused_defect", "build_id": b, "fused": f}))?;
            }
            writeln!(w, "{}", serde_json::json!({"kind": "fusion_summary", "summary": summary}))?;
        }
        print(&summary);
        summaries.push(summary);
    }
    if let Some(mut w) = w {
        w.flush()?;
    }
    Ok(summaries)
}

/// One build's summary as the terminal shows it.
pub fn print(s: &FusionSummary) {
    println!(
        "{}: {} CT defects ({} detectable, {} detected, {} missed), {} in-situ flags ({} confirmed): recall {:.3}, precision {:.3}",
        s.build_id, s.defects, s.detectable, s.detected, s.missed, s.flags, s.confirmed_flags, s.recall, s.precision
    );
}
