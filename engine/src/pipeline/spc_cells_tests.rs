//! SPC charts on grid cells, on a hand-made build: a chart per cell (both lasers' samples of a
//! cell merged, as the grid map merges them), phase I per cell over the layers in which it has
//! enough samples, a signal that names its cell; a reference baseline charts as the same given
//! baseline does; and the cells' state replays exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::analytics::grid::GridSpec;
use crate::analytics::spc::Baseline;
use crate::analytics::spc_spec::SpcSpec;
use crate::input::event::{BuildId, Channel, TimeNs};
use crate::pipeline::build_pipeline::{BuildPipeline, BuildSettings};
use crate::records::{OutputRecord, SpcBaseline, SpcSignal};
use crate::topology::{LatePolicy, SpcConfig};

use super::replay_tests::{crash_after_every_record_over, feed_idle_over};

const T0: i64 = 1_705_314_600_000_000_000;
const LAYER_NS: i64 = 100_000_000;

/// A block of `laser` in `layer` with samples (x, y, photodiode).
fn block(layer: u32, laser: u8, pts: &[(f32, f32, f32)]) -> String {
    let col = |f: &dyn Fn(&(f32, f32, f32)) -> f32| pts.iter().map(|p| f(p).to_string()).collect::<Vec<_>>().join(",");
    let t0 = T0 + i64::from(layer) * LAYER_NS + i64::from(laser) * 1_000_000;
    format!(
        r#"{{"type":"block","build_id":"b","layer":{layer},"laser":{laser},"t0_ns":{t0},"dt_ns":1000,"x_mm":[{}],"y_mm":[{}],"photodiode_on_axis":[{}]}}"#,
        col(&|p| p.0),
        col(&|p| p.1),
        col(&|p| p.2)
    )
}

fn event(layer: u32, phase: &str, at_ns: i64) -> String {
    format!(r#"{{"type":"layer","build_id":"b","layer":{layer},"phase":"{phase}","t_ns":{at_ns}}}"#)
}

/// Eight layers on 10 mm cells. Cell 0 (0–10 × 0–10 mm): laser 1 reads v − 1, laser 2 v + 1
/// (mean v): 100, 102, 99, 101, 100, 101, then 200 at layer 6, and 100. Cell 1 (10–20 × 0–10):
/// 50, –, 52, 51, 50, 51, 50, 51 (no samples in layer 1). Cell 14 (20–30 × 30–40): one sample a
/// layer, fewer than the chart's two.
fn lines() -> Vec<String> {
    let c0 = [100.0, 102.0, 99.0, 101.0, 100.0, 101.0, 200.0, 100.0];
    let c1 = [Some(50.0), None, Some(52.0), Some(51.0), Some(50.0), Some(51.0), Some(50.0), Some(51.0)];
    let mut out = Vec::new();
    for layer in 0..8u32 {
        let l = layer as usize;
        let v = c0[l];
        let mut one = vec![(2.0, 2.0, v - 1.0), (3.0, 4.0, v - 1.0), (25.0, 35.0, 7.0)];
        if let Some(w) = c1[l] {
            one.extend([(12.0, 3.0, w), (15.0, 5.0, w)]);
        }
        out.push(block(layer, 1, &one));
        out.push(block(layer, 2, &[(6.0, 7.0, v + 1.0), (8.0, 1.0, v + 1.0)]));
        out.push(event(layer, "end", T0 + i64::from(layer) * LAYER_NS + 50_000_000));
    }
    out.push(event(7, "build_end", T0 + 8 * LAYER_NS));
    out
}

fn chart(name: &str, extra: &str) -> SpcSpec {
    let c: SpcConfig = toml::from_str(&format!("name = \"{name}\"\nchannel = \"photodiode_on_axis\"\nstatistic = \"cell_mean\"\nmin_cell_samples = 2\n{extra}")).expect("spc config");
    SpcSpec::compile(&c)
}

fn settings(policy: LatePolicy, spc: Vec<SpcSpec>) -> Arc<BuildSettings> {
    let topo = crate::topology::load(crate::topology::DEMO_TOML, "demo.toml", std::path::Path::new(".")).expect("demo topology");
    let mut s = BuildSettings::from_topology(&topo);
    s.late_policy = policy;
    s.watermark_bound_ns = 0;
    s.grid = GridSpec { cell_mm: 10.0, plate_mm: 40.0, deviation_z: None };
    s.grid_channel = Channel::PhotodiodeOnAxis;
    s.spc = spc;
    Arc::new(s)
}

fn run(settings: Arc<BuildSettings>) -> Vec<OutputRecord> {
    let lines = lines();
    let mut out = Vec::new();
    feed_idle_over(&lines, &mut BuildPipeline::new(BuildId::from("b"), settings), 0, lines.len(), 1, &mut TimeNs::MIN.clone(), None, &mut out);
    out
}

fn signals(out: &[OutputRecord]) -> Vec<SpcSignal> {
    out.iter().filter_map(|r| if let OutputRecord::SpcSignal(s) = r { Some(s.clone()) } else { None }).collect()
}

fn baselines(out: &[OutputRecord]) -> Vec<SpcBaseline> {
    out.iter().filter_map(|r| if let OutputRecord::SpcBaseline(b) = r { Some(b.clone()) } else { None }).collect()
}

#[test]
fn a_cell_chart_signals_its_cell() {
    let out = run(settings(LatePolicy::Drop, vec![chart("cells", "baseline_layers = 3\nalert = true")]));
    // Phase I by hand: cell 0 over layers 0–2, cell 1 over layers 0, 2, 3 (it skips layer 1).
    let b0 = Baseline::estimate(&[100.0, 102.0, 99.0]).expect("varies");
    let b1 = Baseline::estimate(&[50.0, 52.0, 51.0]).expect("varies");
    let got: Vec<(Option<u32>, u32, f64, f64, u32)> = baselines(&out).iter().map(|b| (b.cell.map(|c| c.index), b.layer, b.centre, b.sigma, b.layers_used)).collect();
    assert_eq!(got, vec![(Some(0), 2, b0.centre, b0.sigma, 3), (Some(1), 3, b1.centre, b1.sigma, 3)]);
    let s = signals(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    let (s, cell) = (&s[0], s[0].cell.expect("a cell"));
    assert_eq!((s.layer, s.rule.as_str(), s.laser, s.statistic.as_str(), s.value), (6, "we1_beyond_3_sigma", 0, "cell_mean", 200.0));
    assert_eq!((cell.index, cell.x_mm, cell.y_mm, cell.size_mm), (0, 5.0, 5.0, 10.0));
    assert_eq!((s.baseline_centre, s.baseline_sigma), (b0.centre, b0.sigma));
    let alert = out.iter().find_map(|r| if let OutputRecord::Anomaly(a) = r { Some(a.clone()) } else { None }).expect("an alert");
    assert_eq!((alert.rule.as_str(), alert.laser, alert.x_mm, alert.y_mm), ("spc:cells:we1_beyond_3_sigma", None, Some(5.0), Some(5.0)));
}

/// A baseline read from a reference build charts exactly as the same centre and σ given in the
/// topology: the same signals (cells 0 and 1 from the reference; any other cell, none here,
/// would run its own phase I).
#[test]
fn a_reference_baseline_charts_as_the_same_given_one() {
    let base = Baseline { centre: 100.5, sigma: 0.8 };
    let given = chart("c", &format!("baseline = \"given\"\ncentre = {}\nsigma = {}", base.centre, base.sigma));
    let mut reference = chart("c", "baseline = \"reference\"\nreference_build = \"ref-001\"");
    reference.reference = Some(Arc::new(BTreeMap::from([((0, Some(0)), base), ((0, Some(1)), base)])));
    let (a, b) = (run(settings(LatePolicy::Drop, vec![given])), run(settings(LatePolicy::Drop, vec![reference])));
    assert!(!signals(&a).is_empty());
    assert_eq!(signals(&a), signals(&b));
    assert!(baselines(&b).is_empty(), "no phase I ran");
}

/// The cells' charts resume from the snapshot of the last durable layer: a crash after any
/// record replays to what the uninterrupted run emitted.
#[test]
fn a_replay_resumes_the_cell_charts() {
    let spc = || vec![chart("cells", "baseline_layers = 3\nalert = true"), chart("cells_cusum", "chart = \"cusum\"\nbaseline_layers = 2\nh = 2.0")];
    crash_after_every_record_over(&lines(), |policy| settings(policy, spc()), None, |policy, reference| {
        assert!(reference.iter().any(|r| r.contains("\"spc_signal\"") && r.contains("\"cell\"")), "{policy:?}: cell signals");
        assert!(reference.iter().any(|r| r.contains("\"spc_baseline\"")), "{policy:?}: baselines");
    });
}
