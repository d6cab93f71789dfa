//! `meltstream fuse`: the batch CT fusion a workflow task runs days after a build. Reads a CT
//! defect list (JSON lines or CSV; bad rows are reported with their line and skipped), reads each
//! build's in-situ evidence from the topology's results store (its first PostgreSQL or SQLite
//! sink), joins
//! them (`meltstream_engine::fusion`, parameters from `[fusion]`), replaces the build's
//! `fused_defects` and `fusion_summaries` rows in one transaction (`ResultsStore::fuse_build`,
//! which the streaming `ct` source calls too), and prints the summary.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use meltstream_engine::fusion::ct::{read_list, CtDefect};
use meltstream_engine::fusion::FusionSummary;
use meltstream_engine::topology::Topology;

use meltstream_actors::sinks::results_store::ResultsStore as Store;

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
    let Some(store) = Store::of(t) else {
        anyhow::bail!("topology {:?} has no PostgreSQL or SQLite sink: fusion reads the builds' results from where they are durable", t.name);
    };
    fuse_with(t, &store, &defects, build, out)
}

/// Fuses `defects` (the list of the simulator of `t`, at the end of a run whose `[fusion]` asks
/// for it) with the results in the topology's store.
pub fn run_simulated(t: &Topology) -> anyhow::Result<Vec<FusionSummary>> {
    let Some(cfg) = t.sources.iter().find_map(|s| match &s.kind {
        meltstream_engine::topology::SourceKind::Simulator(c) => Some(c),
        _ => None,
    }) else {
        anyhow::bail!("[fusion] ct_list = \"simulator\" needs a simulator source");
    };
    if cfg.builds_per_machine == 0 {
        anyhow::bail!("[fusion] ct_list = \"simulator\": a fleet with builds_per_machine = 0 never ends, so it has no complete CT list (run with --once)");
    }
    let mut sim = meltstream_engine::simulator::Simulator::new(cfg, 0);
    while sim.next_batch().is_some() {}
    let defects: Vec<CtDefect> = sim.ct_defects().into_iter().map(|d| d.defect).collect();
    let Some(store) = Store::of(t) else {
        anyhow::bail!("[fusion] ct_list needs a PostgreSQL or SQLite sink to read the results from");
    };
    fuse_with(t, &store, &defects, None, None)
}

fn fuse_with(t: &Topology, store: &Store, defects: &[CtDefect], build: Option<&str>, out: Option<&PathBuf>) -> anyhow::Result<Vec<FusionSummary>> {
    let builds: BTreeSet<&str> = defects.iter().map(|d| d.build_id.as_str()).filter(|b| build.is_none_or(|x| x == *b)).collect();
    let mut w = match out {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let mut summaries = Vec::new();
    for b in builds {
        let (fused, summary) = rt.block_on(store.fuse_build(b, defects, &t.fusion_params(b))).map_err(|e| anyhow::anyhow!("build {b}: {e}"))?;
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
