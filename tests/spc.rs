//! SPC through the whole engine: the simulator degrades one laser's delivered power a little
//! each layer (`power_drift_pct_per_layer`), too little for any threshold rule; a CUSUM chart on
//! the layers' photodiode means, with its baseline from each build's first layers, signals on
//! that laser once the drift has begun, and stays (nearly) quiet on the lasers that do not drift.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use meltstream_engine::records::OutputRecord;
use meltstream_engine::simulator::anomalies::AnomalyKind;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::{load, SourceKind};

const TOPOLOGY: &str = r#"name = "spc"
[engine]
summary_interval_ms = 0

[[sources]]
name = "fleet"
type = "simulator"
machines = 3
lasers = 3
sample_rate_hz = 5000
layers = 48
layer_ms = 200
recoat_ms = 50
seed = 7
anomalies = false
power_drift_pct_per_layer = 1.0

[[spc]]
name = "pd_cusum"
channel = "photodiode_on_axis"
chart = "cusum"
baseline_layers = 20
alert = true

[[spc]]
name = "power_shewhart"
channel = "laser_power_w"
baseline_layers = 20

[[sinks]]
name = "out"
type = "null"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_power_drift_is_caught_by_spc_on_its_laser_only() {
    // The ground truth: which laser of which build drifts, from which layer.
    let t = load(TOPOLOGY, "spc.toml", std::path::Path::new(".")).expect("topology");
    let SourceKind::Simulator(cfg) = &t.sources[0].kind else { panic!("simulator source") };
    let mut sim = Simulator::new(cfg, 0);
    while sim.next_batch().is_some() {}
    let mut drifting: BTreeMap<(String, u8), u32> = BTreeMap::new();
    for a in sim.ground_truth().iter().filter(|a| a.kind == AnomalyKind::PowerDrift) {
        let e = drifting.entry((a.build_id.clone(), a.laser.expect("a drift has a laser"))).or_insert(a.layer);
        *e = (*e).min(a.layer);
    }
    assert_eq!(drifting.len(), 3, "one drifting laser per build: {drifting:?}");

    let (_, records) = support::run(TOPOLOGY, |_| {}).await;
    let signals: Vec<_> = records.iter().filter_map(|r| if let OutputRecord::SpcSignal(s) = r { Some(s.clone()) } else { None }).collect();
    for ((build, laser), from) in &drifting {
        let on_it: Vec<_> = signals.iter().filter(|s| &s.build_id == build && s.laser == *laser && s.spc == "pd_cusum").collect();
        assert!(!on_it.is_empty(), "{build} laser {laser} drifts from layer {from}: no CUSUM signal; all: {signals:?}");
        assert!(on_it.iter().all(|s| s.rule == "cusum_lower" && s.layer >= *from), "{build} laser {laser}: {on_it:?}");
        assert!(on_it.iter().all(|s| s.baseline_sigma > 0.0 && s.layers.last() == Some(&s.layer)));
        assert!(signals.iter().any(|s| &s.build_id == build && s.laser == *laser && s.spc == "power_shewhart"), "{build} laser {laser}: the power chart too");
    }
    // In control, CUSUM (k = 0.5, h = 5) alarms once in ≈ 465 layers; here 6 lasers × 28 layers,
    // with σ estimated from 20.
    let steady: BTreeSet<_> = signals.iter().filter(|s| s.spc == "pd_cusum" && !drifting.contains_key(&(s.build_id.clone(), s.laser))).map(|s| (s.build_id.clone(), s.laser, s.layer)).collect();
    assert!(steady.len() <= 2, "false alarms on lasers without drift: {steady:?}");
    let alerts = records.iter().filter(|r| matches!(r, OutputRecord::Anomaly(a) if a.rule.starts_with("spc:pd_cusum:"))).count();
    assert_eq!(alerts, signals.iter().filter(|s| s.spc == "pd_cusum").count(), "one alert per signal of the alerting chart");
}

