//! Tests of the build pipeline: batch boundaries, unknown builds and layers, operator panics.
use super::*;
use crate::input::decode::{DecodeLimits, Decoder};
use crate::input::event::BuildId;
use crate::records::OutputRecord;
use std::sync::Mutex;

const NOW: TimeNs = 1_800_000_000_000_000_000;

/// Lines of one build: samples of layer 0, a stray end of layer 5, layer 0's end, samples
/// of layer 1 and its end; then a build never seen that ends a layer.
fn lines() -> Vec<String> {
    let t = |ms: u32| format!("2024-01-15T10:30:00.{ms:03}Z");
    vec![
        format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1600.0}}"#, t(1)),
        format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1610.0}}"#, t(2)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 5, "phase": "end", "timestamp": "{}"}}"#, t(3)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 0, "phase": "end", "timestamp": "{}"}}"#, t(4)),
        format!(r#"{{"build_id": "b", "layer": 1, "timestamp": "{}", "temperature": 1620.0}}"#, t(5)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 1, "phase": "end", "timestamp": "{}"}}"#, t(6)),
    ]
}

/// Dead letters (offset, reason) and layer ends (layer, end time).
type Outcome = (Vec<(u64, String)>, Vec<(u32, i64)>);

fn demo_settings() -> Arc<BuildSettings> {
    let topo = crate::topology::load(crate::topology::DEMO_TOML, "demo.toml", std::path::Path::new(".")).expect("demo topology");
    Arc::new(BuildSettings::from_topology(&topo))
}

/// Everything `p` emits for `lines()` cut into batches at `cuts`, then closed.
fn emitted(p: &mut BuildPipeline, cuts: &[usize]) -> Vec<Emitted> {
    let mut d = Decoder::new(0, DecodeLimits::default());
    let lines = lines();
    let mut out = Vec::new();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(lines.len());
    for (seq, w) in bounds.windows(2).enumerate() {
        let mut batch = RecordBatch::with_capacity(16);
        for (i, l) in lines.iter().enumerate().take(w[1]).skip(w[0]) {
            d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
        }
        let ctx = Ctx { hold: Some((0, seq as u64)), now_wall_ns: NOW, origin_wall_ns: NOW };
        p.process(&batch, &ctx, &mut out);
    }
    p.on_close(&Ctx { hold: None, now_wall_ns: NOW, origin_wall_ns: NOW }, &mut out);
    out
}

/// The outcome with the input cut into batches at `cuts`.
fn run(cuts: &[usize]) -> Outcome {
    let mut p = BuildPipeline::new(BuildId::from("b"), demo_settings());
    let out = emitted(&mut p, cuts);
    let mut dead = Vec::new();
    let mut ends = Vec::new();
    for e in out {
        match e.record {
            OutputRecord::DeadLetter(r) => {
                assert_eq!(e.position, Some((0, r.offset)), "positioned, so a replay does not write it twice");
                dead.push((r.offset, r.reason_kind));
            }
            OutputRecord::LayerSummary(s) => ends.push((s.layer, s.window_end_ns)),
            _ => {}
        }
    }
    (dead, ends)
}

#[test]
fn an_end_without_a_window_is_dead_lettered_whatever_the_batch_boundaries() {
    let whole = run(&[]);
    assert_eq!(whole.0, vec![(2, "unknown_layer".to_string())], "only the stray end of layer 5");
    let ms = |m: i64| 1_705_314_600_000_000_000 + m * 1_000_000;
    assert_eq!(whole.1, vec![(0, ms(4)), (1, ms(6))], "the ends close their layers");
    for a in 1..lines().len() {
        assert_eq!(run(&[a]), whole, "cut at {a}");
        for b in a + 1..lines().len() {
            assert_eq!(run(&[a, b]), whole, "cuts at {a}, {b}");
        }
    }
}

#[test]
fn an_end_for_a_build_with_nothing_open_is_an_unknown_build() {
    let mut p = BuildPipeline::new(BuildId::from("ghost"), demo_settings());
    let mut batch = RecordBatch::with_capacity(4);
    Decoder::new(0, DecodeLimits::default()).decode(br#"{"type": "layer", "build_id": "ghost", "layer": 7, "phase": "end", "t_ns": 5}"#, 42, NOW, &mut batch);
    let mut out = Vec::new();
    p.process(&batch, &Ctx { hold: Some((0, 0)), now_wall_ns: NOW, origin_wall_ns: NOW }, &mut out);
    let [Emitted { record: OutputRecord::DeadLetter(r), .. }] = &out[..] else { panic!("one dead letter: {out:?}") };
    assert_eq!((r.offset, r.reason_kind.as_str()), (42, "unknown_build"));
    assert_eq!(r.raw_prefix, r#"{"type":"layer","build_id":"ghost","layer":7,"phase":"end","t_ns":5}"#);
    assert_eq!(p.open_windows(), 0, "no window opened for it");
}

/// What a test operator saw: blocks, samples, layer results (layer, revision), closes.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    blocks: u64,
    samples: u64,
    results: Vec<(u32, u32)>,
    closes: u32,
}

/// An operator appended to the standard chain: it counts what reaches it and emits nothing.
#[derive(Debug)]
struct Counting(Arc<Mutex<Seen>>);

impl Operator for Counting {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_block(&mut self, block: &mut Block<'_>, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {
        let mut s = self.0.lock().expect("not poisoned");
        s.blocks += 1;
        s.samples += u64::from(block.h.len);
    }

    fn on_layer_result(&mut self, r: &LayerResult, _book: &mut BuildBook, _out: &mut Vec<Emitted>) {
        self.0.lock().expect("not poisoned").results.push((r.layer, r.revision));
    }

    fn on_close(&mut self, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {
        self.0.lock().expect("not poisoned").closes += 1;
    }
}

#[test]
fn an_operator_appended_to_the_chain_sees_everything_and_changes_nothing_else() {
    let plain = emitted(&mut BuildPipeline::new(BuildId::from("b"), demo_settings()), &[2]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut p = BuildPipeline::new(BuildId::from("b"), demo_settings());
    p.push(Box::new(Counting(seen.clone())));
    let with = emitted(&mut p, &[2]);
    let view = |v: &[Emitted]| v.iter().map(|e| (e.record.clone(), e.position, e.hold.clone())).collect::<Vec<_>>();
    assert_eq!(view(&with), view(&plain), "the other operators emit the same records in the same order");
    let seen = seen.lock().expect("not poisoned");
    assert_eq!(*seen, Seen { blocks: 3, samples: 3, results: vec![(0, 0), (1, 0)], closes: 1 });
    assert_eq!(p.counters().samples, 3);
}

/// An operator that panics on the block at one offset and on the result of one layer.
#[derive(Debug)]
struct Panicky;

impl Operator for Panicky {
    fn process(&mut self, _batch: &RecordBatch, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {}

    fn on_block(&mut self, block: &mut Block<'_>, _book: &mut BuildBook, _ctx: &Ctx, _out: &mut Vec<Emitted>) {
        assert_ne!(block.h.source_offset, 1, "test: poison block");
    }

    fn on_layer_result(&mut self, r: &LayerResult, _book: &mut BuildBook, _out: &mut Vec<Emitted>) {
        assert_ne!(r.layer, 1, "test: poison layer");
    }
}

#[test]
fn a_panicking_operator_is_dead_lettered_and_loses_nothing_else() {
    let plain = emitted(&mut BuildPipeline::new(BuildId::from("b"), demo_settings()), &[2]);
    // First in the chain, so that every other operator runs after it panicked.
    let mut ops: Vec<Box<dyn Operator>> = vec![Box::new(Panicky)];
    ops.extend(standard_chain(&demo_settings()));
    let mut p = BuildPipeline::with_chain(BuildId::from("b"), demo_settings(), ops);
    let with = emitted(&mut p, &[2]);
    let (dead, rest): (Vec<Emitted>, Vec<Emitted>) = with.into_iter().partition(|e| matches!(&e.record, OutputRecord::DeadLetter(r) if r.reason_kind == "poison"));
    let view = |v: &[Emitted]| v.iter().map(|e| (e.record.clone(), e.position, e.hold.clone())).collect::<Vec<_>>();
    assert_eq!(view(&rest), view(&plain), "every other record, in order");
    let reasons: Vec<(u64, Option<(u64, u64)>, String)> = dead
        .iter()
        .map(|e| match &e.record {
            OutputRecord::DeadLetter(r) => (r.offset, e.position, r.source.clone()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!((reasons[0].0, reasons[0].1), (1, Some((0, 1))), "the block at offset 1, positioned");
    assert!(reasons[0].2.starts_with("operator Panicky: b: the block at offset 1"), "{}", reasons[0].2);
    assert!(reasons[1].2.starts_with("operator Panicky: b: result 0 of layer 1"), "{}", reasons[1].2);
    assert!(!dead[1].hold.is_empty(), "the layer's dead letter holds the layer's offsets until durable");
}

/// One simulated machine with two lasers at 10 kHz, no anomalies, as JSON lines.
fn simulated(layers: u32, layer_ms: u64) -> String {
    use crate::input::encode::write_json_lines;
    use crate::simulator::Simulator;
    use crate::topology::SimulatorConfig;
    let cfg = SimulatorConfig { machines: 1, lasers: 2, sample_rate_hz: 10_000, layers, layer_ms, recoat_ms: 20, anomalies: false, ..SimulatorConfig::default() };
    let mut sim = Simulator::new(&cfg, 0);
    let mut text = String::new();
    while let Some(b) = sim.next_batch() {
        write_json_lines(&b, &mut text);
    }
    text
}

/// Data quality per layer: completeness catches a laser that lost a tenth of its blocks (layer
/// 1); a run of five lost blocks is one gap, a repeated block counts as duplicate samples and
/// fills no hole (layer 2). Both layers warn with their reasons, the complete one is `ok`, and
/// the build report counts them.
#[test]
fn data_quality_finds_lost_blocks_gaps_and_duplicates() {
    // 10 kHz in 1 ms blocks: 200 blocks of 10 samples per laser and layer.
    let text = simulated(3, 200);
    let mut seen: std::collections::BTreeMap<(u64, u64), u32> = Default::default();
    let mut lines: Vec<&str> = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("simulator JSON");
        if v["type"] == "block" {
            let key = (v["layer"].as_u64().expect("layer"), v["laser"].as_u64().expect("laser"));
            let n = seen.entry(key).or_default();
            *n += 1;
            match key {
                // Every tenth block of laser 2 in layer 1 is lost.
                (1, 2) if *n % 10 == 0 => continue,
                // Blocks 6–10 of laser 1 in layer 2 are lost; block 15 arrives twice.
                (2, 1) if (6..=10).contains(n) => continue,
                (2, 1) if *n == 15 => lines.push(l),
                _ => {}
            }
        }
        lines.push(l);
    }
    let mut d = Decoder::new(0, DecodeLimits::default());
    let mut batch = RecordBatch::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
    }
    batch.span.next_offset = lines.len() as u64;
    batch.max_t_before = Arc::new(batch.max_t_steps(TimeNs::MIN));
    let mut p = BuildPipeline::new(BuildId::from("sim-001"), demo_settings());
    let ctx = Ctx { hold: Some((0, 0)), now_wall_ns: NOW, origin_wall_ns: NOW };
    let mut out = Vec::new();
    p.process(&batch, &ctx, &mut out);
    p.on_input_watermark(TimeNs::MAX, &ctx, &mut out);
    let verdicts: Vec<_> = out.iter().filter_map(|e| if let OutputRecord::LayerVerdict(v) = &e.record { Some(v.clone()) } else { None }).collect();
    assert_eq!(verdicts.iter().map(|v| (v.layer, v.verdict.as_str())).collect::<Vec<_>>(), vec![(0, "ok"), (1, "warn"), (2, "warn")], "{verdicts:?}");
    let dq: Vec<_> = out.iter().filter_map(|e| if let OutputRecord::DataQuality(q) = &e.record { Some(q.clone()) } else { None }).collect();
    assert_eq!(dq.len(), 3);
    assert_eq!((dq[0].score, dq[0].below_threshold, dq[0].lasers["1"].gaps), (1.0, false, 0));
    let lost = &dq[1].lasers["2"];
    assert_eq!((lost.samples, lost.expected, lost.blocks, lost.gaps, lost.duplicate_samples), (1800, 2000, 180, 0, 0), "{lost:?}");
    assert!((dq[1].score - 0.9).abs() < 1e-9 && dq[1].below_threshold, "{:?}", dq[1]);
    assert!(verdicts[1].reasons[0].starts_with("data quality 0.900"), "{:?}", verdicts[1].reasons);
    let holed = &dq[2].lasers["1"];
    assert_eq!((holed.samples, holed.blocks, holed.gaps, holed.duplicate_samples), (1960, 196, 1, 10), "{holed:?}");
    assert!((holed.gap_ms - 5.0).abs() < 1e-9 && (holed.score - 0.975).abs() < 1e-9, "{holed:?}");
    assert!((verdicts[2].completeness["1"] - 0.98).abs() < 1e-9, "completeness counts the duplicate, the score does not");
    let report = out.iter().find_map(|e| if let OutputRecord::BuildReport(r) = &e.record { Some(r.clone()) } else { None }).expect("a build report");
    assert_eq!((report.layers, report.layers_ok, report.layers_warn, report.worst_layers[0].layer), (3, 1, 2, 1));
}

/// A build's description fills in what its layer events leave out: the planned parameters give
/// the energy density of a laser whose layer events carry none (instead of one estimated from
/// the measured power and speed), and the build report carries the description with the
/// planned energy density per style.
#[test]
fn a_build_description_gives_the_planned_energy_density() {
    use crate::input::build_info::BuildInfo;
    let text = simulated(2, 100);
    // Layer events without their parameters.
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("simulator JSON");
            if let Some(o) = v.as_object_mut() {
                o.remove("params");
            }
            v.to_string()
        })
        .collect();
    let info = BuildInfo::parse(
        "build_id = \"sim-001\"\nmachine = \"m1\"\nlayer_thickness_um = 40.0\n[[styles]]\nstyle = \"core\"\npower_w = 300.0\nscan_speed_mm_s = 1000.0\nhatch_spacing_mm = 0.1\n[[styles]]\nstyle = \"core\"\nlaser = 2\npower_w = 200.0\nscan_speed_mm_s = 1000.0\nhatch_spacing_mm = 0.1\n",
        false,
    )
    .expect("description");
    let run = |info: Option<Arc<BuildInfo>>| {
        let mut d = Decoder::new(0, DecodeLimits::default());
        let mut batch = RecordBatch::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
        }
        batch.span.next_offset = lines.len() as u64;
        batch.max_t_before = Arc::new(batch.max_t_steps(TimeNs::MIN));
        let mut p = BuildPipeline::new(BuildId::from("sim-001"), demo_settings());
        p.set_info(info);
        let ctx = Ctx { hold: Some((0, 0)), now_wall_ns: NOW, origin_wall_ns: NOW };
        let mut out = Vec::new();
        p.process(&batch, &ctx, &mut out);
        p.on_input_watermark(TimeNs::MAX, &ctx, &mut out);
        out
    };
    let planned = run(Some(Arc::new(info.clone())));
    let summaries: Vec<_> = planned.iter().filter_map(|e| if let OutputRecord::LayerSummary(s) = &e.record { Some(s.clone()) } else { None }).collect();
    assert_eq!(summaries.len(), 4);
    for s in &summaries {
        // 300 W / (1000 mm/s · 0.1 mm · 0.04 mm) = 75 J/mm³; laser 2's own plan: 50.
        let want = if s.laser == 2 { 50.0 } else { 75.0 };
        assert!(s.energy_density_j_mm3.is_some_and(|e| (e - want).abs() < 1e-9), "{s:?}");
        assert_eq!(s.energy_density_by_style_j_mm3.keys().collect::<Vec<_>>(), vec!["core"]);
    }
    let report = planned.iter().find_map(|e| if let OutputRecord::BuildReport(r) = &e.record { Some(r.clone()) } else { None }).expect("a build report");
    assert_eq!(report.build_info.as_ref(), Some(&info));
    assert!((report.planned_energy_density_by_style_j_mm3["core"] - 62.5).abs() < 1e-9, "{:?}", report.planned_energy_density_by_style_j_mm3);
    // Without a description: estimated from the measured channels, and said so.
    let measured = run(None);
    let s = measured.iter().find_map(|e| if let OutputRecord::LayerSummary(s) = &e.record { Some(s.clone()) } else { None }).expect("a summary");
    assert!(s.energy_density_by_style_j_mm3.contains_key("measured") || s.energy_density_j_mm3.is_none(), "{s:?}");
    let report = measured.iter().find_map(|e| if let OutputRecord::BuildReport(r) = &e.record { Some(r.clone()) } else { None }).expect("a build report");
    assert!(report.build_info.is_none() && report.planned_energy_density_by_style_j_mm3.is_empty());
}

/// A build whose last records end at offset 5, in a partition whose later records (offsets 5 to
/// 9) belong to other builds. The run being replayed ended it at position 10: its last batch of
/// this build reached there, and the input's idle watermark passed the build's end. A replay
/// whose last batch of this build ends at 5 must still end it: the watermark that passes the
/// end carries the input's position, and the build reaches it (the exactly-once test's replay
/// waited forever for a position no batch of the build would bring).
#[test]
fn a_replay_reaches_the_recorded_end_without_a_batch_of_the_build_there() {
    let t = |ms: u32| format!("2024-01-15T10:30:00.{ms:03}Z");
    let lines = [
        format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1600.0}}"#, t(1)),
        format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1610.0}}"#, t(2)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 0, "phase": "end", "timestamp": "{}"}}"#, t(3)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 0, "phase": "build_end", "timestamp": "{}"}}"#, t(3)),
        format!(r#"{{"build_id": "b", "layer": 1, "timestamp": "{}", "temperature": 1620.0}}"#, t(2)),
    ];
    let ctx = Ctx { hold: Some((0, 0)), now_wall_ns: NOW, origin_wall_ns: NOW };
    let replay = |reach: bool| {
        let mut p = BuildPipeline::new(BuildId::from("b"), demo_settings());
        p.resume(crate::pipeline::decisions::BuildDecisions { ended_at: Some(10), ..Default::default() }, 0);
        let mut d = Decoder::new(0, DecodeLimits::default());
        let mut batch = RecordBatch::with_capacity(16);
        for (i, l) in lines.iter().enumerate() {
            d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
        }
        let mut out = Vec::new();
        p.process(&batch, &ctx, &mut out);
        if reach {
            p.reach_position(10, &ctx, &mut out);
        }
        // The input went idle: its watermark passes every event time seen.
        p.on_input_watermark(NOW, &ctx, &mut out);
        p.finished()
    };
    assert!(!replay(false), "short of the recorded position, the build waits for it");
    assert!(replay(true), "at the recorded position, the idle watermark ends the build");
}
