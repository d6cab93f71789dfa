//! `meltstream simulate --score`: runs a topology's simulated fleet through the engine (its
//! sinks replaced by one in-memory collector, pace `fast`) and scores what the engine found
//! against what the simulator planted, at layer resolution
//! (`meltstream_engine::simulator::score`).

use std::sync::{Arc, Mutex};

use anyhow::Context;

use meltstream_actors::progress::Checkpoint;
use meltstream_actors::sinks::writer::{SinkError, SinkWriter};
use meltstream_actors::tree::engine_builder::EngineBuilder;
use meltstream_engine::records::{Emitted, OutputRecord};
use meltstream_engine::simulator::score::{detections, score, LayerScore};
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::{NullSinkConfig, Pace, RecordKind, SinkConfig, SinkKind, SimulatorConfig, SourceKind, Topology};

/// Keeps every record it is given in memory.
#[derive(Clone, Default)]
struct Collect {
    durable: Arc<Mutex<Vec<OutputRecord>>>,
    pending: Vec<OutputRecord>,
}

impl SinkWriter for Collect {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        self.pending.extend(records.iter().map(|e| e.record.clone()));
        Ok(())
    }

    async fn flush(&mut self, _checkpoint: &Checkpoint) -> Result<(), SinkError> {
        self.durable.lock().unwrap_or_else(|e| e.into_inner()).append(&mut self.pending);
        Ok(())
    }
}

/// Runs `t` (whose first simulator source is `cfg`, overrides applied) and scores it.
pub fn run(mut t: Topology, cfg: &SimulatorConfig) -> anyhow::Result<LayerScore> {
    let mut cfg = cfg.clone();
    cfg.pace = Pace::Fast;
    // A long-running fleet is scored over one build per machine.
    cfg.builds_per_machine = cfg.builds_per_machine.max(1);
    let Some(src) = t.sources.iter_mut().find(|s| matches!(s.kind, SourceKind::Simulator(_))) else {
        anyhow::bail!("the topology has no simulator source");
    };
    src.kind = SourceKind::Simulator(cfg.clone());
    t.sources.retain(|s| matches!(s.kind, SourceKind::Simulator(_)));
    t.sinks = vec![SinkConfig { name: "score".into(), kind: SinkKind::Null(NullSinkConfig { records: vec![RecordKind::Anomaly, RecordKind::SpcSignal, RecordKind::LayerSummary] }) }];
    t.engine.admin_addr.clear();
    let collect = Collect::default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let h = EngineBuilder::new(t).sink_writer("score", Box::new(collect.clone())).start().await.context("starting the engine")?;
        h.wait().await.context("running the engine")
    })?;
    let records = std::mem::take(&mut *collect.durable.lock().unwrap_or_else(|e| e.into_inner()));
    let mut sim = Simulator::new(&cfg, 0);
    while sim.next_batch().is_some() {}
    Ok(score(sim.ground_truth(), &detections(&records)))
}

/// The score as the terminal shows it.
pub fn print(s: &LayerScore) {
    println!("layers with an injected anomaly: {} (found {}), flagged layers: {} (confirmed {})", s.truth_layers, s.found_layers, s.flagged_layers, s.confirmed_layers);
    println!("recall {:.3}  precision {:.3}  (layer resolution; DESIGN §6 asks ≥ 0.95 for both)", s.recall, s.precision);
    for (kind, (found, total)) in &s.per_kind {
        println!("  {:<16} {found:>4} / {total:<4} layers found", serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default());
    }
    for (build, layer, kinds) in s.missed.iter().take(10) {
        println!("  missed: {build} layer {layer} {kinds:?}");
    }
    for (build, layer, whats) in s.false_flags.iter().take(10) {
        println!("  false flag: {build} layer {layer} by {}", whats.join(", "));
    }
}
