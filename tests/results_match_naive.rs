//! Per-layer results equal an independent naive computation over the simulator's stream, and
//! stay identical when the stream is shuffled within the watermark bound.

mod support;

use std::collections::BTreeMap;

use meltstream_engine::input::encode::write_json_lines;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::SimulatorConfig;

fn fleet() -> SimulatorConfig {
    SimulatorConfig { machines: 2, lasers: 2, sample_rate_hz: 20_000, layers: 2, layer_ms: 300, recoat_ms: 50, batch_blocks: 16, anomalies: true, ..SimulatorConfig::default() }
}

fn stream() -> Vec<String> {
    let mut sim = Simulator::new(&fleet(), 0);
    let mut s = String::new();
    while let Some(b) = sim.next_batch() {
        write_json_lines(&b, &mut s);
    }
    s.lines().map(str::to_owned).collect()
}

#[derive(Default)]
struct Naive {
    values: BTreeMap<(String, u64, u64, String), Vec<f64>>,
}

/// Reads the JSON lines with serde_json's generic values: independent of the engine's decoder.
fn naive(lines: &[String]) -> Naive {
    let mut n = Naive::default();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("simulator JSON");
        if v["type"] != "block" {
            continue;
        }
        let key = |ch: &str| (v["build_id"].as_str().unwrap_or_default().to_owned(), v["layer"].as_u64().unwrap_or(0), v["laser"].as_u64().unwrap_or(0), ch.to_owned());
        for ch in ["temperature_c", "photodiode_on_axis", "photodiode_off_axis", "laser_power_w"] {
            if let Some(a) = v[ch].as_array() {
                let e = n.values.entry(key(ch)).or_default();
                // The engine keeps samples as f32, as sensors deliver them.
                e.extend(a.iter().map(|x| f64::from(x.as_f64().unwrap_or(f64::NAN) as f32)));
            }
        }
    }
    n
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let r = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[r - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_summaries_equal_naive_and_survive_shuffling() {
    let dir = support::temp_dir("naive");
    let lines = stream();
    let input = dir.join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write input");
    let text = support::file_topology(&input, "watermark_bound_ms = 50", "");
    let (stats, records) = support::run(&text, |_| {}).await;
    let got = support::summaries(&records);
    let expect = naive(&lines);
    let lasers: std::collections::BTreeSet<_> = expect.values.keys().map(|(b, l, la, _)| (b.clone(), *l, *la)).collect();
    assert_eq!(got.len(), lasers.len(), "one summary per build, layer and laser");
    assert_eq!(got.len(), 2 * 2 * 2);
    for s in &got {
        assert_eq!(s.revision, 0);
        for (ch, cs) in &s.channels {
            let mut v = expect.values.get(&(s.build_id.clone(), u64::from(s.layer), u64::from(s.laser), ch.clone())).unwrap_or_else(|| panic!("naive lacks {ch}")).clone();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt();
            v.sort_by(f64::total_cmp);
            assert_eq!(cs.count, v.len() as u64, "{ch}");
            assert_eq!((cs.min, cs.max), (v[0], v[v.len() - 1]), "{ch}");
            assert!((cs.mean - mean).abs() < 1e-5, "{ch} mean {} vs {mean}", cs.mean);
            assert!((cs.std_dev - sd).abs() < 1e-4 * sd.max(1.0), "{ch} sd {} vs {sd}", cs.std_dev);
            for (q, p) in [(0.5, cs.p50), (0.95, cs.p95), (0.99, cs.p99)] {
                let e = nearest_rank(&v, q);
                assert!((p - e).abs() <= e.abs() / 256.0, "{ch} p{q}: {p} vs exact {e}");
            }
        }
        assert!(s.energy_density_j_mm3.is_some_and(|e| e > 20.0 && e < 100.0), "{s:?}");
    }
    assert_eq!(meltstream_actors::engine_stats::EngineStats::get(&stats.dead_letters), 0);

    // Shuffle within chunks of 8 lines (about 2 ms of event time, well inside the 50 ms bound).
    let mut shuffled = lines.clone();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in shuffled.chunks_mut(8) {
        for i in (1..chunk.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            chunk.swap(i, (rng % (i as u64 + 1)) as usize);
        }
    }
    assert_ne!(shuffled, lines);
    let input2 = dir.join("shuffled.jsonl");
    std::fs::write(&input2, shuffled.join("\n")).expect("write shuffled");
    let (_, records2) = support::run(&support::file_topology(&input2, "watermark_bound_ms = 50", ""), |_| {}).await;
    let got2 = support::summaries(&records2);
    assert_eq!(serde_json::to_value(&got).ok(), serde_json::to_value(&got2).ok(), "identical after shuffling");
}
