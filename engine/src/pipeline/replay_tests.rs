//! A replay that follows the recorded decisions emits what the uninterrupted run emitted: for a
//! crash after every record, under each late policy (late samples of closed layers, a layer kept
//! for updates, alerts with cooldowns), with the replay's batches cut differently from the
//! original's (the watermark applies record by record, so batch boundaries decide nothing).

use std::sync::Arc;

use crate::input::batch::{RecordBatch, SourceSpan};
use crate::input::decode::{DecodeLimits, Decoder};
use crate::input::event::{BuildId, TimeNs};
use crate::pipeline::build_pipeline::{BuildPipeline, BuildSettings};
use crate::pipeline::operator::Ctx;
use crate::records::OutputRecord;
use crate::topology::LatePolicy;

const NOW: TimeNs = 1_800_000_000_000_000_000;

/// One build: layers 0 to 2 with their ends, late samples of closed layers (and of one still
/// kept for updates), alert-worthy samples (two within a cooldown, while layer 3 opened
/// between them), and the build's end (layer verdicts and the build report).
fn lines() -> Vec<String> {
    let t = |ms: u32| format!("2024-01-15T10:30:00.{ms:03}Z");
    let s = |layer: u32, ms: u32, temp: f64| format!(r#"{{"build_id": "b", "layer": {layer}, "timestamp": "{}", "temperature": {temp}}}"#, t(ms));
    let end = |layer: u32, ms: u32| format!(r#"{{"type": "layer", "build_id": "b", "layer": {layer}, "phase": "end", "timestamp": "{}"}}"#, t(ms));
    vec![
        s(0, 10, 1600.0),
        s(0, 20, 1750.0),
        end(0, 30),
        s(1, 40, 1610.0),
        s(0, 25, 1620.0), // late for layer 0 once 40 moved the watermark past its end
        s(1, 50, 1760.0),
        s(1, 52, 1765.0), // within a cooldown of the alert at 50, when the rule has one
        s(0, 27, 1630.0), // late for layer 0
        end(1, 60),
        s(2, 70, 1630.0),
        s(1, 55, 1640.0), // late for layer 1
        s(0, 28, 1650.0), // late for layer 0
        s(2, 80, 1770.0),
        s(3, 100, 1670.0),
        s(2, 82, 1775.0), // within a cooldown of the alert at 80, when the rule has one
        end(2, 90),
        s(2, 85, 1660.0), // late for layer 2
        s(3, 120, 1600.0), // the watermark passes the end of that cooldown
        s(3, 125, 1610.0),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 3, "phase": "build_end", "timestamp": "{}"}}"#, t(130)),
        format!(r#"{{"type": "log", "build_id": "b", "timestamp": "{}", "values": {{"o2_ppm": 210.0}}}}"#, t(150)), // the build ends
    ]
}

fn settings(policy: LatePolicy) -> Arc<BuildSettings> {
    settings_with_gap(policy, None)
}

fn settings_with_gap(policy: LatePolicy, layer_gap_ns: Option<i64>) -> Arc<BuildSettings> {
    let topo = crate::topology::load(crate::topology::DEMO_TOML, "demo.toml", std::path::Path::new(".")).expect("demo topology");
    let mut s = BuildSettings::from_topology(&topo);
    s.late_policy = policy;
    s.allowed_lateness_ns = 35_000_000;
    s.watermark_bound_ns = 0;
    if let Some(g) = layer_gap_ns {
        s.layer_gap_ns = g;
    }
    Arc::new(s)
}

/// Runs `p` over `lines[from..to]` cut every `step` records, the input's watermark (bound 0)
/// starting from `max_t`, record by record; returns what it emitted.
fn feed(p: &mut BuildPipeline, from: usize, to: usize, step: usize, max_t: &mut TimeNs, out: &mut Vec<OutputRecord>) {
    feed_idle(p, from, to, step, max_t, None, out)
}

/// [`feed`], with the input going idle once the records before offset `idle.0` are processed:
/// its watermark then moves to `idle.1` on the wall clock.
fn feed_idle(p: &mut BuildPipeline, from: usize, to: usize, step: usize, max_t: &mut TimeNs, idle: Option<(usize, TimeNs)>, out: &mut Vec<OutputRecord>) {
    feed_idle_over(&lines(), p, from, to, step, max_t, idle, out)
}

/// [`feed_idle`] over `lines`.
#[allow(clippy::too_many_arguments)]
pub(super) fn feed_idle_over(lines: &[String], p: &mut BuildPipeline, from: usize, to: usize, step: usize, max_t: &mut TimeNs, idle: Option<(usize, TimeNs)>, out: &mut Vec<OutputRecord>) {
    let mut d = Decoder::new(0, DecodeLimits::default());
    let mut start = from;
    while start < to {
        let end = (start + step).min(to);
        let mut batch = RecordBatch::with_capacity(16);
        for (i, l) in lines.iter().enumerate().take(end).skip(start) {
            d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
        }
        batch.span = SourceSpan { input: 0, seq: start as u64, first_offset: start as u64, next_offset: end as u64 };
        // What the router does: the input's largest event time before each record.
        batch.max_t_before = Arc::new(batch.max_t_steps(*max_t));
        *max_t = (*max_t).max(batch.max_t_ns);
        let ctx = Ctx { hold: Some((0, start as u64)), now_wall_ns: NOW, origin_wall_ns: NOW };
        let mut em = Vec::new();
        p.process(&batch, &ctx, &mut em);
        if let Some((_, wm)) = idle.filter(|i| i.0 == end) {
            p.on_input_watermark(wm, &ctx, &mut em);
        }
        out.extend(em.into_iter().map(|e| e.record));
        start = end;
    }
}

pub(super) fn sorted(mut v: Vec<OutputRecord>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|r| serde_json::to_string(&r).expect("record JSON")).collect();
    s.sort();
    s.dedup();
    s
}

#[test]
fn a_replay_from_the_stored_state_emits_what_the_uninterrupted_run_did() {
    crash_after_every_record(settings, None);
}

/// With a cooldown on the overheat rule: a replay from after the alert that started it, while
/// records it suppressed are not durable yet, starts with the recorded cooldown.
#[test]
fn a_replay_meets_the_cooldowns_of_the_run_it_replaces() {
    crash_after_every_record(|policy| {
        let mut s = (*settings(policy)).clone();
        for r in s.rules.iter_mut().filter(|r| r.name == "overheat") {
            r.cooldown_ns = 35_000_000;
        }
        Arc::new(s)
    }, None);
}

/// Crashes after every record under each late policy (after the input went `idle`, if it
/// does) and replays from the resume offset with the recorded decisions, cutting the replay's
/// batches differently; the replay's input never goes idle.
fn crash_after_every_record(settings: impl Fn(LatePolicy) -> Arc<BuildSettings>, idle: Option<(usize, TimeNs)>) {
    crash_after_every_record_over(&lines(), settings, idle, |policy, reference| {
        assert!(reference.iter().any(|r| r.contains("\"late\"") || r.contains("late_count")), "{policy:?}: the input has late samples");
        assert!(reference.iter().any(|r| r.contains("\"build_report\"")) && reference.iter().any(|r| r.contains("\"verdict\":\"warn\"")), "{policy:?}: the build ends, with warned layers");
    })
}

/// [`crash_after_every_record`] over `lines`, `expect` checking each uninterrupted run's records.
pub(super) fn crash_after_every_record_over(lines: &[String], settings: impl Fn(LatePolicy) -> Arc<BuildSettings>, idle: Option<(usize, TimeNs)>, expect: impl Fn(LatePolicy, &[String])) {
    let n = lines.len();
    let feed = |p: &mut BuildPipeline, from: usize, to: usize, step: usize, max_t: &mut TimeNs, out: &mut Vec<OutputRecord>| feed_idle_over(lines, p, from, to, step, max_t, None, out);
    let feed_idle = |p: &mut BuildPipeline, from: usize, to: usize, step: usize, max_t: &mut TimeNs, idle: Option<(usize, TimeNs)>, out: &mut Vec<OutputRecord>| feed_idle_over(lines, p, from, to, step, max_t, idle, out);
    for policy in [LatePolicy::Drop, LatePolicy::LateSink, LatePolicy::Update] {
        let mut reference = Vec::new();
        let mut p = BuildPipeline::new(BuildId::from("b"), settings(policy));
        feed_idle(&mut p, 0, n, 1, &mut TimeNs::MIN.clone(), idle, &mut reference);
        let reference = sorted(reference);
        expect(policy, &reference);
        for crash in idle.map_or(1, |i| i.0 + 1)..n {
            // The run before the crash: one record per batch, so a batch's sequence is its offset.
            let mut before = Vec::new();
            let mut p = BuildPipeline::new(BuildId::from("b"), settings(policy));
            let mut max_t = TimeNs::MIN;
            feed_idle(&mut p, 0, crash, 1, &mut max_t, idle, &mut before);
            // Where the ledger would resume: the first batch a window (or cooldown) holds.
            let resume = p.holds().iter().map(|h| h.1 as usize).min().unwrap_or(crash);
            let decisions = p.take_changed_decisions().unwrap_or_default();
            // The largest event time before the resume offset, as stored with it.
            let mut max_t_at_resume = TimeNs::MIN;
            feed(&mut BuildPipeline::new(BuildId::from("b"), settings(policy)), 0, resume, n, &mut max_t_at_resume, &mut Vec::new());
            for step in [1, 2, 3, n] {
                let mut replay = Vec::new();
                let mut q = BuildPipeline::new(BuildId::from("b"), settings(policy));
                q.resume(decisions.clone(), resume as u64);
                let mut m = max_t_at_resume;
                feed(&mut q, resume, n, step, &mut m, &mut replay);
                let mut all = before.clone();
                all.extend(replay);
                assert_eq!(sorted(all), reference, "{policy:?}: crash after offset {crash}, resume at {resume}, replay in batches of {step}");
            }
        }
    }
}

/// An idle input's watermark advance is a wall-clock decision: recorded at its position, a
/// replay applies it there (here it closes layer 1 by its gap timeout before its later samples,
/// which are then late), though the replay's own input never goes idle.
#[test]
fn a_replay_repeats_an_idle_advance_of_the_watermark() {
    let n = lines().len();
    let ms = |m: i64| 1_705_314_600_000_000_000 + m * 1_000_000;
    // After offset 3 (layer 1's first sample at 40 ms), idle: the watermark moves to 56 ms,
    // past layer 1's last sample plus the 15 ms gap.
    let idle = Some((4, ms(56)));
    let settings = |policy| settings_with_gap(policy, Some(15_000_000));
    for policy in [LatePolicy::Drop, LatePolicy::LateSink, LatePolicy::Update] {
        let mut reference = Vec::new();
        feed_idle(&mut BuildPipeline::new(BuildId::from("b"), settings(policy)), 0, n, 1, &mut TimeNs::MIN.clone(), idle, &mut reference);
        let mut without = Vec::new();
        feed(&mut BuildPipeline::new(BuildId::from("b"), settings(policy)), 0, n, 1, &mut TimeNs::MIN.clone(), &mut without);
        assert_ne!(sorted(without), sorted(reference), "{policy:?}: the idle advance changes the output");
    }
    crash_after_every_record(settings, idle);
}

/// SPC charts span the build: a replay resumes them from the snapshot of the last layer whose
/// result is durable and charts the layers it rebuilds again, so it signals what the
/// uninterrupted run signalled (phase I on the first layers, and given baselines that signal on
/// every layer, with the Western Electric rules, EWMA and CUSUM).
#[test]
fn a_replay_resumes_the_spc_charts() {
    use crate::analytics::spc_spec::SpcSpec;
    use crate::topology::SpcConfig;
    let chart = |name: &str, chart: &str, extra: &str| -> SpcSpec {
        let c: SpcConfig = toml::from_str(&format!("name = \"{name}\"\nchannel = \"temperature_c\"\nchart = \"{chart}\"\n{extra}")).expect("spc config");
        SpcSpec::compile(&c)
    };
    let with_spc = |policy| {
        let mut s = (*settings(policy)).clone();
        s.spc = vec![
            chart("t_first", "shewhart", "baseline_layers = 2\nalert = true"),
            chart("t_given", "shewhart", "baseline = \"given\"\ncentre = 1650.0\nsigma = 5.0\nalert = true"),
            chart("t_ewma", "ewma", "baseline = \"given\"\ncentre = 1690.0\nsigma = 2.0\nlambda = 0.5"),
            chart("t_cusum", "cusum", "baseline = \"given\"\ncentre = 1680.0\nsigma = 3.0\nh = 2.0"),
            chart("t_spread", "shewhart", "statistic = \"std_dev\"\nbaseline_layers = 2"),
        ];
        Arc::new(s)
    };
    let n = lines().len();
    let mut out = Vec::new();
    feed(&mut BuildPipeline::new(BuildId::from("b"), with_spc(LatePolicy::Drop)), 0, n, 1, &mut TimeNs::MIN.clone(), &mut out);
    let signals: Vec<_> = out.iter().filter_map(|r| if let OutputRecord::SpcSignal(s) = r { Some((s.spc.as_str(), s.layer, s.rule.as_str())) } else { None }).collect();
    for name in ["t_given", "t_ewma", "t_cusum"] {
        assert!(signals.iter().any(|s| s.0 == name), "{name} signals: {signals:?}");
    }
    assert!(out.iter().any(|r| matches!(r, OutputRecord::Anomaly(a) if a.rule.starts_with("spc:t_given:"))), "the alerting chart raises anomalies");
    assert!(!signals.iter().any(|s| s.0 == "t_first" && s.1 < 2), "no signal in phase I: {signals:?}");
    crash_after_every_record(with_spc, None);
}

/// Runs `p` over `lines[from..to]`, one record per batch (bound 0); returns what it emitted.
fn feed_lines(p: &mut BuildPipeline, lines: &[String], from: usize, to: usize, max_t: &mut TimeNs, out: &mut Vec<OutputRecord>) {
    let mut d = Decoder::new(0, DecodeLimits::default());
    for (i, l) in lines.iter().enumerate().take(to).skip(from) {
        let mut batch = RecordBatch::with_capacity(4);
        d.decode(l.as_bytes(), i as u64, NOW, &mut batch);
        batch.span = SourceSpan { input: 0, seq: i as u64, first_offset: i as u64, next_offset: i as u64 + 1 };
        batch.max_t_before = Arc::new(batch.max_t_steps(*max_t));
        *max_t = (*max_t).max(batch.max_t_ns);
        let ctx = Ctx { hold: Some((0, i as u64)), now_wall_ns: NOW, origin_wall_ns: NOW };
        let mut em = Vec::new();
        p.process(&batch, &ctx, &mut em);
        out.extend(em.into_iter().map(|e| e.record));
    }
}

/// Once a build ended, the engine drops its processor, and a later record of the build meets a
/// new one (started from the recorded decisions, every layer final). When that happens depends
/// on the actors' timing, so the new processor must start with what the old one had at that
/// record: the machine-log rule's cooldown running since an alert after the build's end
/// (`o2_high`, 1 s) still suppresses the next exceedance, whichever processor meets it.
#[test]
fn a_new_processor_for_an_ended_build_keeps_its_running_cooldowns() {
    let t = |ms: u32| format!("2024-01-15T10:30:0{}.{:03}Z", ms / 1000, ms % 1000);
    let log = |ms: u32, o2: f64| format!(r#"{{"type": "log", "build_id": "b", "timestamp": "{}", "values": {{"o2_ppm": {o2}}}}}"#, t(ms));
    let lines = vec![
        format!(r#"{{"build_id": "b", "layer": 0, "timestamp": "{}", "temperature": 1600.0}}"#, t(10)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 0, "phase": "end", "timestamp": "{}"}}"#, t(30)),
        format!(r#"{{"type": "layer", "build_id": "b", "layer": 0, "phase": "build_end", "timestamp": "{}"}}"#, t(30)),
        log(40, 200.0),
        log(300, 1500.0), // an alert after the build ended: its cooldown runs to 1.3 s
        log(600, 200.0),
        log(900, 1600.0), // within that cooldown
        log(1400, 1550.0), // after it
        log(1500, 1700.0),
    ];
    let settings = settings(LatePolicy::Drop);
    let n = lines.len();
    let mut reference = Vec::new();
    feed_lines(&mut BuildPipeline::new(BuildId::from("b"), settings.clone()), &lines, 0, n, &mut TimeNs::MIN.clone(), &mut reference);
    let alerts = |v: &[OutputRecord]| v.iter().filter(|r| matches!(r, OutputRecord::Anomaly(a) if a.rule == "o2_high")).count();
    assert_eq!(alerts(&reference), 2, "{reference:?}");
    for cut in 4..n {
        let mut out = Vec::new();
        let mut p = BuildPipeline::new(BuildId::from("b"), settings.clone());
        let mut max_t = TimeNs::MIN;
        feed_lines(&mut p, &lines, 0, cut, &mut max_t, &mut out);
        assert!(p.finished(), "the build ended before offset {cut}");
        // The engine's recreation: the decisions so far, read as a replay from the next record.
        let decisions = p.take_changed_decisions().unwrap_or_default();
        let mut q = BuildPipeline::new(BuildId::from("b"), settings.clone());
        q.resume(decisions, cut as u64);
        q.mark_ended();
        feed_lines(&mut q, &lines, cut, n, &mut max_t, &mut out);
        assert_eq!(sorted(out), sorted(reference.clone()), "a new processor from offset {cut}");
    }
}
