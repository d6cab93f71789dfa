//! Late records follow the topology's policy; bad input is dead-lettered with its reason while
//! every other record is processed; a record that crashes a build actor is dead-lettered and the
//! actor restarted on its state.

// The fault hooks this test relies on are compiled only with the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
compile_error!("tests/late_and_bad_input.rs uses the fault-injection hooks: build with --features fault-injection (scripts/test does)");

mod support;

use meltstream_actors::engine_stats::EngineStats;
use meltstream_engine::records::OutputRecord;

const T0: i64 = 1_705_314_600_000_000_000;
const MS: i64 = 1_000_000;

fn late_stream() -> String {
    [
        format!(r#"{{"type":"layer","build_id":"b1","layer":0,"phase":"start","t_ns":{T0}}}"#),
        format!(r#"{{"type":"block","build_id":"b1","layer":0,"laser":1,"t0_ns":{},"dt_ns":10000,"temperature_c":[1600,1610,1620]}}"#, T0 + MS),
        format!(r#"{{"type":"layer","build_id":"b1","layer":0,"phase":"end","t_ns":{}}}"#, T0 + 10 * MS),
        format!(r#"{{"type":"block","build_id":"b1","layer":1,"laser":1,"t0_ns":{},"dt_ns":10000,"temperature_c":[1650]}}"#, T0 + 1000 * MS),
        format!(r#"{{"type":"block","build_id":"b1","layer":0,"laser":1,"t0_ns":{},"dt_ns":10000,"temperature_c":[1700,1710]}}"#, T0 + 5 * MS),
    ]
    .join("\n")
}

async fn run_late(policy: &str, extra: &str, records: &str) -> (std::sync::Arc<EngineStats>, Vec<OutputRecord>) {
    let dir = support::temp_dir(&format!("late-{policy}"));
    let input = dir.join("in.jsonl");
    std::fs::write(&input, late_stream()).expect("write");
    let mut text = support::file_topology(&input, &format!("watermark_bound_ms = 50\nlate_policy = \"{policy}\"\n{extra}"), "");
    text = text.replace("type = \"null\"", &format!("type = \"null\"\nrecords = {records}"));
    support::run(&text, |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_are_dropped_and_counted() {
    let (stats, records) = run_late("drop", "", "[\"layer_summary\", \"late\"]").await;
    let s = support::summaries(&records);
    let l0: Vec<_> = s.iter().filter(|s| s.layer == 0).collect();
    assert_eq!(l0.len(), 1, "{l0:?}");
    assert_eq!((l0[0].sample_count, l0[0].revision), (3, 0));
    assert_eq!(stats.builds()["b1"].late_samples, 2, "counted");
    assert!(!records.iter().any(|r| matches!(r, OutputRecord::Late(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_go_to_the_late_sink() {
    let (stats, records) = run_late("late_sink", "", "[\"layer_summary\", \"late\"]").await;
    let late: Vec<_> = records.iter().filter_map(|r| if let OutputRecord::Late(l) = r { Some(l.clone()) } else { None }).collect();
    assert_eq!(late.len(), 1);
    assert_eq!((late[0].sample_count, late[0].layer, late[0].offset), (2, Some(0), 4));
    assert_eq!(stats.builds()["b1"].late_samples, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_update_within_allowed_lateness() {
    let (_, records) = run_late("update", "allowed_lateness_ms = 5000", "[\"layer_summary\"]").await;
    let s = support::summaries(&records);
    let l0: Vec<_> = s.iter().filter(|s| s.layer == 0).map(|s| (s.revision, s.sample_count, s.late_count)).collect();
    assert_eq!(l0, vec![(0, 3, 0), (1, 5, 2)]);
}

fn bad_input_lines() -> Vec<String> {
    let good = |t: &str, temp: f64| format!(r#"{{"build_id": "build_001", "layer": 45, "timestamp": "{t}", "temperature": {temp}, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}}"#);
    vec![
        // The seed's example exactly as written (two lines of JSON joined).
        r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}"#.to_string(),
        r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:0"#.to_string(),
        r#"{"build_id": "build_001", "layer": "45", "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5}"#.to_string(),
        r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00Z", "temperature": NaN}"#.to_string(),
        good("2024-01-15T10:30:00.100Z", 1750.0),
        r#"{"build_id": "build_001", "layer": -3, "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5}"#.to_string(),
        r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5, "colour": "red"}"#.to_string(),
        format!(r#"{{"build_id": "build_001", "layer": 45, "pad": "{}"}}"#, "x".repeat(10 << 20)),
        r#"{"build_id": "build_001", "layer": 45, "timestamp": "2199-01-15T10:30:00Z", "temperature": 1650.5}"#.to_string(),
        r#"{"sensor_id": "pyro_7", "timestamp": "2024-01-15T10:30:00Z", "temperature": 1650.5, "pressure": 1013.2}"#.to_string(),
        good("2024-01-15T10:30:00.200Z", 1660.0),
        // A layer end for a build the engine has never seen: it ends a layer nobody started.
        r#"{"type": "layer", "build_id": "ghost", "layer": 7, "phase": "end", "timestamp": "2024-01-15T10:30:00.210Z"}"#.to_string(),
        // A layer end for a known build, but for a layer without a window.
        r#"{"type": "layer", "build_id": "build_001", "layer": 44, "phase": "end", "timestamp": "2024-01-15T10:30:00.220Z"}"#.to_string(),
        // Samples and then their layer's end, without a start: the end closes their window.
        r#"{"build_id": "b2", "layer": 3, "timestamp": "2024-01-15T10:30:00.230Z", "temperature": 1600.0}"#.to_string(),
        r#"{"type": "layer", "build_id": "b2", "layer": 3, "phase": "end", "timestamp": "2024-01-15T10:30:00.240Z"}"#.to_string(),
    ]
}

async fn run_bad(extra_line: Option<String>, fault: Option<f32>) -> (std::sync::Arc<EngineStats>, Vec<OutputRecord>) {
    let dir = support::temp_dir(&format!("bad-{}", fault.is_some()));
    let input = dir.join("in.jsonl");
    let mut lines = bad_input_lines();
    if let Some(l) = extra_line {
        lines.insert(2, l);
    }
    std::fs::write(&input, lines.join("\n")).expect("write");
    let rules = "[[rules]]\nname = \"overheat\"\nchannel = \"temperature\"\nop = \">\"\nlimit = 1700.0\n";
    support::run(&support::file_topology(&input, "", rules), |s| s.fault_panic_on_temperature = fault).await
}

fn dead_letters(records: &[OutputRecord]) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = records.iter().filter_map(|r| if let OutputRecord::DeadLetter(d) = r { Some((d.offset, d.reason_kind.clone())) } else { None }).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_and_the_rest_processed() {
    let (stats, records) = run_bad(None, None).await;
    let expect: Vec<(u64, String)> = [
        (1, "invalid_json"),
        (2, "wrong_schema"),
        (3, "invalid_json"),
        (5, "out_of_range"),
        (6, "wrong_schema"),
        (7, "too_large"),
        (8, "future_timestamp"),
        (11, "unknown_build"),
        (12, "unknown_layer"),
    ]
    .iter()
    .map(|(o, r)| (*o, r.to_string()))
    .collect();
    assert_eq!(dead_letters(&records), expect);
    assert_eq!(EngineStats::get(&stats.dead_letters), 9);
    let ghost = records.iter().find_map(|r| if let OutputRecord::DeadLetter(d) = r { (d.offset == 11).then(|| d.clone()) } else { None }).expect("ghost dead letter");
    assert_eq!(ghost.source, "in", "named after its source");
    assert!(ghost.reason.contains("ghost") && ghost.raw_prefix.contains(r#""phase":"end""#), "{ghost:?}");
    let b2 = support::summaries(&records).into_iter().find(|s| s.build_id == "b2").expect("summary of b2");
    assert_eq!(b2.window_end, "2024-01-15T10:30:00.240000Z", "the layer's end event closes it");
    let s = support::summaries(&records);
    let b = s.iter().find(|s| s.build_id == "build_001" && s.layer == 45).expect("summary of build_001 layer 45");
    assert_eq!(b.sample_count, 3, "the three good samples");
    let t = &b.channels["temperature_c"];
    assert_eq!((t.min, t.max), (1650.5, 1750.0));
    // E = 200 W / (1200 mm/s · 0.1 mm · 0.03 mm) from the samples' own parameters.
    assert!((b.energy_density_j_mm3.unwrap_or(0.0) - 55.5555).abs() < 0.01, "{b:?}");
    let anomalies: Vec<_> = records.iter().filter_map(|r| if let OutputRecord::Anomaly(a) = r { Some(a.clone()) } else { None }).collect();
    assert_eq!(anomalies.len(), 1);
    assert_eq!((anomalies[0].value, anomalies[0].rule.as_str()), (1750.0, "overheat"));
    assert!(stats.builds().contains_key("sensor:pyro_7"), "the seed's sensor variant is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_panics_an_actor_is_dead_lettered_and_the_actor_restarted() {
    let poison = r#"{"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00.050Z", "temperature": 1234.5}"#.to_string();
    let (stats, records) = run_bad(Some(poison), Some(1234.5)).await;
    assert_eq!(EngineStats::get(&stats.restarts), 1);
    let dl = dead_letters(&records);
    assert!(dl.contains(&(2, "poison".to_string())), "{dl:?}");
    // Everything else as without the poison record.
    let s = support::summaries(&records);
    let b = s.iter().find(|s| s.build_id == "build_001" && s.layer == 45).expect("summary");
    assert_eq!(b.sample_count, 3);
    assert_eq!(b.channels["temperature_c"].min, 1650.5);
}
