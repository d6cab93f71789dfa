//! What the engine finds, scored against what the simulator planted (DESIGN §6). A fleet planting
//! every kind of anomaly on any layer after the SPC baseline — about one per layer, hundreds per
//! run — goes through threshold rules, energy-density rules, the grid map's deviation alert and
//! SPC charts.
//! - Layer resolution: `simulator::score` compares the flagged layers with the ground truth
//!   (precision and recall ≥ 0.95; `meltstream simulate --score` prints the same figures).
//! - CT fusion: the CT defect list the simulator writes for the same builds is joined with the
//!   results (`fusion::fuse`), recall ≥ 0.95 on the detectable defects and precision ≥ 0.9.

mod support;

use meltstream_engine::fusion::{fuse, Evidence, FusionParams};
use meltstream_engine::simulator::kinds::AnomalyKind;
use meltstream_engine::simulator::score::{detections, score};
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::{load, SourceKind};

const TOPOLOGY: &str = r#"name = "score"
[engine]
summary_interval_ms = 0

[[sources]]
name = "fleet"
type = "simulator"
machines = 4
lasers = 4
sample_rate_hz = 20000
layers = 45
layer_ms = 500
recoat_ms = 100
seed = 11
anomalies = true
anomaly_rate_per_layer = 1.0
anomaly_from_layer = 12
power_drift_pct_per_layer = 1.0

[windows]
grid_cell_mm = 20.0
grid_channel = "photodiode_on_axis"
grid_deviation_z = 5.0

[[rules]]
name = "hot_spot"
channel = "photodiode_on_axis"
op = ">"
limit = 3000.0
cooldown_ms = 500

[[rules]]
name = "power_drop"
channel = "laser_power_w"
op = "<"
limit = 150.0

[[rules]]
name = "o2_high"
channel = "o2_ppm"
op = ">"
limit = 1000.0

[[rules]]
name = "lack_of_fusion"
channel = "energy_density_j_mm3"
op = "<"
limit = 40.0

[[spc]]
name = "pd_cusum"
channel = "photodiode_on_axis"
chart = "cusum"
baseline_layers = 12

[[sinks]]
name = "out"
type = "null"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_anomalies_are_found_layer_by_layer_and_ct_defects_meet_their_evidence() {
    let t = load(TOPOLOGY, "score.toml", std::path::Path::new(".")).expect("topology");
    let SourceKind::Simulator(cfg) = &t.sources[0].kind else { panic!("simulator source") };
    let mut sim = Simulator::new(cfg, 0);
    while sim.next_batch().is_some() {}
    let truth = sim.ground_truth().to_vec();

    let (_, records) = support::run(TOPOLOGY, |_| {}).await;
    let s = score(&truth, &detections(&records));
    eprintln!("{}", serde_json::to_string_pretty(&s).expect("json"));
    assert!(truth.len() >= 200, "scores must rest on hundreds of events: {} planted", truth.len());
    for kind in AnomalyKind::LOCAL.iter().chain([&AnomalyKind::PowerDrift]) {
        let (found, total) = s.per_kind.get(kind).copied().unwrap_or_default();
        assert!(total >= 3, "{kind:?}: only {total} layers planted");
        assert!(found as f64 >= 0.9 * total as f64, "{kind:?}: {found} of {total} layers found");
    }
    assert!(s.recall >= 0.95, "recall {:.3}: missed {:?}", s.recall, s.missed);
    assert!(s.precision >= 0.95, "precision {:.3}: false flags {:?}", s.precision, s.false_flags);

    // CT fusion over the same builds.
    let ct = sim.ct_defects();
    let defects: Vec<_> = ct.iter().map(|d| d.defect.clone()).collect();
    let (mut detectable, mut detected, mut flags, mut confirmed) = (0, 0, 0, 0);
    let builds: std::collections::BTreeSet<&str> = defects.iter().map(|d| d.build_id.as_str()).collect();
    for build in builds {
        let mut ev = Evidence::default();
        records.iter().filter(|r| r.build_id() == Some(build)).for_each(|r| ev.add(r));
        let (fused, summary) = fuse(build, &defects, &ev, &FusionParams::default());
        eprintln!("{}", serde_json::to_string(&summary).expect("json"));
        // The simulator's detectable defects (not the size cut): each planted one must be found.
        for f in &fused {
            let truth = ct.iter().find(|d| d.defect == f.defect).expect("a fused defect is one of the list");
            if truth.detectable {
                detectable += 1;
                detected += usize::from(f.detected);
            }
        }
        flags += summary.flags;
        confirmed += summary.confirmed_flags;
    }
    let recall = detected as f64 / detectable as f64;
    let precision = f64::from(confirmed) / f64::from(flags);
    eprintln!("fusion: {detected} of {detectable} detectable defects, {confirmed} of {flags} flags confirmed");
    assert!(detectable >= 200, "scores must rest on hundreds of defects: {detectable}");
    assert!(recall >= 0.95, "fusion recall {recall:.3}");
    assert!(precision >= 0.9, "fusion precision {precision:.3}");
}
