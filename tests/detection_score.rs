//! The injected anomalies are found at layer resolution (DESIGN §6: precision and recall ≥ 0.95):
//! a fleet planting every kind of anomaly on any layer after the SPC baseline — about one per
//! layer, hundreds per run — goes through threshold rules, energy-density rules, the grid map's
//! deviation alert and SPC charts, and `simulator::score` compares what they flag with the
//! ground truth. `meltstream simulate --score` prints the same figures for any topology.

mod support;

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
async fn injected_anomalies_are_found_layer_by_layer() {
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
}
