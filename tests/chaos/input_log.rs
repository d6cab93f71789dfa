//! The fault harness's input: one deterministic log (a function of the scale and the seed only),
//! keyed by build so that a build lives in one partition.
//!
//! It mixes every input the engine takes: the simulator's 1 ms sample blocks with their layer
//! events and machine logs, builds that send the seed's one-sample messages (with their own layer
//! events and logs), sensor samples without a layer, records out of order within the watermark
//! bound, late records (for layers already final, later than the bound: some within the `update`
//! policy's allowed lateness, some beyond it, some after their build ended) and malformed records.
//! It never reads a clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use meltstream_engine::input::encode::write_json_lines;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::SimulatorConfig;

/// 2024-01-15T10:30:00Z, where the simulator starts by default.
const T0_NS: i64 = 1_705_314_600_000_000_000;
const MS: i64 = 1_000_000;

/// How much input to generate.
#[derive(Clone, Debug)]
pub struct Scale {
    /// Simulated machines (builds `sim-001`, …), sending 1 ms sample blocks.
    pub machines: u32,
    pub lasers: u8,
    pub sample_rate_hz: u32,
    pub layers: u32,
    pub layer_ms: u64,
    pub recoat_ms: u64,
    /// Builds sending the seed's one-sample messages (`seed-001`, …).
    pub seed_builds: u32,
    /// Period of a seed build's messages, µs.
    pub seed_period_us: i64,
    /// Sensors sending samples without a layer (`pyro_1`, …).
    pub sensors: u32,
    /// Period of a sensor's samples, ms.
    pub sensor_period_ms: i64,
    /// One malformed record after every this many records.
    pub malformed_every: usize,
}

/// Where the late records go relative to the engine's settings.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub watermark_bound_ms: i64,
    /// The `update` policy's allowed lateness: the first late record of a layer comes within it,
    /// the second beyond. More than the recoat time plus twice the bound.
    pub allowed_lateness_ms: i64,
}

/// The simulated fleet of the log (its CT defect list is the one the harness fuses).
pub fn simulator_config(scale: &Scale, seed: u64) -> SimulatorConfig {
    SimulatorConfig {
        machines: scale.machines,
        lasers: scale.lasers,
        sample_rate_hz: scale.sample_rate_hz,
        layers: scale.layers,
        layer_ms: scale.layer_ms,
        recoat_ms: scale.recoat_ms,
        seed: seed % 1_000_003,
        ..SimulatorConfig::default()
    }
}

/// One input record: written to `partition` with `key`.
pub struct Record {
    pub partition: i32,
    pub key: String,
    pub line: String,
}

/// The generated log, in the order it is produced.
pub struct InputLog {
    pub records: Vec<Record>,
    /// How many records of each class it holds (printed, and checked to be non-zero).
    pub counts: BTreeMap<&'static str, usize>,
}

/// SplitMix64: a small deterministic generator (the seed is printed by the test).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Ordering classes at equal sort times: logs, then layer events, then data, then inserted
/// (late) records.
const LOG: u8 = 0;
const EVENT: u8 = 1;
const DATA: u8 = 2;
const LATE: u8 = 3;

struct Item {
    sort_ns: i64,
    class: u8,
    seq: u64,
    key: String,
    line: String,
}

/// What the late records need to know about a layer.
struct LayerInfo {
    end_ns: i64,
    seed_format: bool,
}

/// The partition of a key (FNV-1a): fixed here rather than left to the producer's partitioner, so
/// that the log can end every partition with a record of its own.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}

/// Generates the log of `scale` with `seed` for a topic of `partitions` partitions.
pub fn generate(scale: &Scale, seed: u64, timing: Timing, partitions: i32) -> InputLog {
    let mut rng = Rng::new(seed ^ 0x5EED_1065);
    let mut items: Vec<Item> = Vec::new();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut seq = 0u64;
    // Out of order within the bound: data and logs are delayed by up to half of it, so a record
    // is never behind its partition's watermark (the largest time seen minus the bound). Layer
    // events keep their place.
    let jitter_ns = (timing.watermark_bound_ms * MS / 2).max(1) as u64;
    let mut push = |items: &mut Vec<Item>, t: i64, class: u8, jitter: bool, key: &str, line: String, rng: &mut Rng| {
        let sort_ns = if jitter { t + rng.below(jitter_ns) as i64 } else { t };
        items.push(Item { sort_ns, class, seq, key: key.to_owned(), line });
        seq += 1;
    };
    let mut layers: BTreeMap<(String, u32), LayerInfo> = BTreeMap::new();
    let mut build_ends: BTreeMap<String, i64> = BTreeMap::new();

    // The simulated fleet: blocks, layer events (start with parameters, end, recoat, build end)
    // and machine logs, with injected anomalies.
    let cfg = simulator_config(scale, seed);
    let mut sim = Simulator::new(&cfg, 0);
    let mut text = String::new();
    while let Some(b) = sim.next_batch() {
        text.clear();
        write_json_lines(&b, &mut text);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("simulator JSON");
            let build = v["build_id"].as_str().expect("simulator build id").to_owned();
            let (t, class, name) = match v["type"].as_str() {
                Some("block") => (v["t0_ns"].as_i64().expect("t0_ns"), DATA, "sim_block"),
                Some("log") => (v["t_ns"].as_i64().expect("t_ns"), LOG, "machine_log"),
                _ => {
                    let t = v["t_ns"].as_i64().expect("t_ns");
                    match v["phase"].as_str() {
                        Some("end") => {
                            let layer = v["layer"].as_u64().expect("layer") as u32;
                            layers.insert((build.clone(), layer), LayerInfo { end_ns: t, seed_format: false });
                        }
                        Some("build_end") => {
                            build_ends.insert(build.clone(), t);
                        }
                        _ => {}
                    }
                    (t, EVENT, "layer_event")
                }
            };
            *counts.entry(name).or_default() += 1;
            push(&mut items, t, class, class != EVENT, &build, line.to_owned(), &mut rng);
        }
    }

    // Builds sending the seed's messages: one sample each (laser 0), with layer events and logs.
    let layer_ns = scale.layer_ms as i64 * MS;
    let recoat_ns = scale.recoat_ms as i64 * MS;
    for b in 1..=scale.seed_builds {
        let build = format!("seed-{b:03}");
        // An O2 excursion in one random layer: the log rule fires, subject to its cooldown.
        let o2_layer = 1 + rng.below(u64::from(scale.layers)) as u32;
        let mut last_end = T0_NS;
        for layer in 1..=scale.layers {
            let start = T0_NS + i64::from(layer - 1) * (layer_ns + recoat_ns);
            let end = start + layer_ns;
            let z = layer * 30;
            push(&mut items, start, EVENT, false, &build, format!(r#"{{"type":"layer","build_id":"{build}","layer":{layer},"phase":"start","t_ns":{start},"z_um":{z}}}"#), &mut rng);
            let mut t = start;
            while t < end {
                let mut line = format!(r#"{{"build_id":"{build}","layer":{layer},"timestamp":"{}","temperature":{:.1}"#, rfc3339_us(t), temperature(&mut rng));
                // Some messages carry the seed's process scalars as well.
                if rng.below(4) == 0 {
                    let power = if rng.below(200) == 0 { 120.0 } else { 200.0 + (rng.unit() * 10.0).round() };
                    let _ = write!(line, r#","laser_power":{power:.1},"scan_speed":1.2,"hatch_spacing":0.1"#);
                }
                line.push('}');
                *counts.entry("seed_sample").or_default() += 1;
                push(&mut items, t, DATA, true, &build, line, &mut rng);
                t += scale.seed_period_us * 1000;
            }
            push(&mut items, end, EVENT, false, &build, format!(r#"{{"type":"layer","build_id":"{build}","layer":{layer},"phase":"end","t_ns":{end}}}"#), &mut rng);
            *counts.entry("layer_event").or_default() += 2;
            layers.insert((build.clone(), layer), LayerInfo { end_ns: end, seed_format: true });
            // Machine logs every 250 ms through the layer and its recoat.
            let mut lt = start + 125 * MS;
            while lt < end + recoat_ns {
                let o2 = if layer == o2_layer && lt < start + layer_ns / 2 { 1500.0 + (rng.unit() * 200.0).round() } else { 200.0 + (rng.unit() * 40.0).round() };
                let p = 1012.0 + (rng.unit() * 400.0).round() / 100.0;
                let line = format!(r#"{{"type":"log","build_id":"{build}","timestamp":"{}","values":{{"o2_ppm":{o2:.1},"chamber_pressure_mbar":{p:.2}}}}}"#, rfc3339_us(lt));
                *counts.entry("machine_log").or_default() += 1;
                push(&mut items, lt, LOG, true, &build, line, &mut rng);
                lt += 250 * MS;
            }
            last_end = end;
        }
        push(&mut items, last_end, EVENT, false, &build, format!(r#"{{"type":"layer","build_id":"{build}","layer":{},"phase":"build_end","t_ns":{last_end}}}"#, scale.layers), &mut rng);
        *counts.entry("layer_event").or_default() += 1;
        build_ends.insert(build, last_end);
    }

    // Sensors without a layer: they feed the sample rules only (a `sensor:<id>` build).
    let span_ns = i64::from(scale.layers) * (layer_ns + recoat_ns);
    for s in 1..=scale.sensors {
        let id = format!("pyro_{s}");
        let mut t = T0_NS + i64::from(s) * MS;
        while t < T0_NS + span_ns {
            let line = format!(r#"{{"sensor_id":"{id}","timestamp":"{}","temperature":{:.1},"pressure":{:.1}}}"#, rfc3339_us(t), temperature(&mut rng), 1013.0 + (rng.unit() * 4.0).round() / 10.0);
            *counts.entry("sensor_sample").or_default() += 1;
            push(&mut items, t, DATA, true, &format!("sensor:{id}"), line, &mut rng);
            t += scale.sensor_period_ms * MS;
        }
    }

    // Late records for final layers, later than the bound, once the next layer runs (in the
    // recoat gap the partition's watermark still stands before the layer's end): the first
    // within the allowed lateness (merged as an update by the `update` policy), the second
    // beyond it. The last layer's come after its build ended, below.
    let bound_ns = timing.watermark_bound_ms * MS;
    for ((build, layer), info) in &layers {
        let last = if info.seed_format { scale.layers } else { scale.layers - 1 };
        if *layer >= last {
            continue;
        }
        let first = info.end_ns + recoat_ns + 2 * bound_ns + 20 * MS;
        let second = info.end_ns + recoat_ns + timing.allowed_lateness_ms * MS + 2 * bound_ns + 100 * MS;
        for at in [first, second] {
            let line = late_record(build, *layer, info, scale, &mut rng);
            *counts.entry("late").or_default() += 1;
            push(&mut items, at, LATE, false, build, line, &mut rng);
        }
    }
    // Every partition ends with a sample of a sensor of its own, a second past everything else:
    // its watermark passes the end of every layer, so each layer is closed by the partition's own
    // data and not by the idle timeout at the end of the stream.
    let stream_end = items.iter().map(|i| i.sort_ns).max().unwrap_or(T0_NS);
    let tail_ns = stream_end + 1000 * MS;
    for p in 0..partitions {
        let id = (0..).map(|n| format!("tail-{p}-{n}")).find(|k| partition_of(&format!("sensor:{k}"), partitions) == p).expect("a key for every partition");
        let line = format!(r#"{{"sensor_id":"{id}","timestamp":"{}","temperature":1600.0}}"#, rfc3339_us(tail_ns));
        *counts.entry("partition_tail").or_default() += 1;
        push(&mut items, tail_ns, DATA, false, &format!("sensor:{id}"), line, &mut rng);
    }
    // Then records of layers of builds that ended, far behind their partition's watermark.
    for (build, end) in &build_ends {
        let info = LayerInfo { end_ns: *end, seed_format: build.starts_with("seed-") };
        let line = late_record(build, scale.layers.saturating_sub(1).max(1), &info, scale, &mut rng);
        *counts.entry("late_after_build_end").or_default() += 1;
        push(&mut items, tail_ns + 1, LATE, false, build, line, &mut rng);
    }

    items.sort_by_key(|i| (i.sort_ns, i.class, i.seq));

    // Malformed records, spread over the log (and so over the partitions, by their key).
    let mut records = Vec::with_capacity(items.len() + items.len() / scale.malformed_every.max(1) + 1);
    let mut kind = 0usize;
    for (i, it) in items.into_iter().enumerate() {
        if i > 0 && i % scale.malformed_every.max(1) == 0 {
            let (name, line) = malformed(kind, it.sort_ns.max(T0_NS), i);
            *counts.entry(name).or_default() += 1;
            records.push(Record { partition: partition_of(&it.key, partitions), key: it.key.clone(), line });
            kind += 1;
        }
        records.push(Record { partition: partition_of(&it.key, partitions), key: it.key, line: it.line });
    }
    InputLog { records, counts }
}

/// A seed-message temperature around 1600 °C, now and then above the `overheat` limit (1700).
fn temperature(rng: &mut Rng) -> f64 {
    let hot = rng.below(100) == 0;
    let base = if hot { 1710.0 } else { 1600.0 };
    base + (rng.unit() * 500.0).round() / 10.0
}

/// A late record for `layer` of `build`: a short block (simulated builds) or a seed message,
/// timed just before the layer's end.
fn late_record(build: &str, layer: u32, info: &LayerInfo, scale: &Scale, rng: &mut Rng) -> String {
    if info.seed_format {
        let t = info.end_ns - MS - (rng.below(1000) as i64) * 1000;
        return format!(r#"{{"build_id":"{build}","layer":{layer},"timestamp":"{}","temperature":{:.1}}}"#, rfc3339_us(t), temperature(rng));
    }
    let laser = 1 + rng.below(u64::from(scale.lasers.max(1))) as u8;
    let n = 5;
    let t0 = info.end_ns - 3 * MS;
    let col = |rng: &mut Rng, base: f64, spread: f64| -> String {
        (0..n).map(|_| format!("{:.1}", base + (rng.unit() * spread * 10.0).round() / 10.0)).collect::<Vec<_>>().join(",")
    };
    let x = col(rng, 100.0, 50.0);
    let y = col(rng, 100.0, 50.0);
    let p = col(rng, 270.0, 20.0);
    let pd = col(rng, 1900.0, 200.0);
    let tc = col(rng, 1600.0, 50.0);
    format!(
        r#"{{"type":"block","build_id":"{build}","layer":{layer},"laser":{laser},"t0_ns":{t0},"dt_ns":100000,"x_mm":[{x}],"y_mm":[{y}],"laser_power_w":[{p}],"photodiode_on_axis":[{pd}],"temperature_c":[{tc}]}}"#
    )
}

/// The `kind`-th malformed record (cycling through the kinds), for the time `t_ns` of its place
/// in the log; `i` makes it unique.
fn malformed(kind: usize, t_ns: i64, i: usize) -> (&'static str, String) {
    let ts = rfc3339_us(t_ns);
    match kind % 8 {
        0 => ("bad_not_json", format!(r#"{{"build_id":"sim-001","layer":1,"timestamp":"{ts}","temperature":16"#)),
        1 => ("bad_wrong_type", format!(r#"{{"build_id":"sim-001","layer":"four","timestamp":"{ts}","temperature":1650.5}}"#)),
        // The issue's message: a layer beyond a PostgreSQL int.
        2 => ("bad_layer_range", format!(r#"{{"build_id":"b1","layer":3000000000,"timestamp":"{ts}","temperature":1750.5}}"#)),
        3 => ("bad_too_large", format!(r#"{{"build_id":"b","layer":1,"timestamp":"{ts}","note":"{}"}}"#, "x".repeat(20_000))),
        // A build nobody started ends a layer, at the stream's own time.
        4 => ("bad_ghost_end", format!(r#"{{"type":"layer","build_id":"ghost-{i}","layer":7,"phase":"end","t_ns":{t_ns}}}"#)),
        5 => ("bad_unknown_field", format!(r#"{{"build_id":"sim-002","layer":2,"timestamp":"{ts}","temperature":1650.5,"colour":"red"}}"#)),
        6 => ("bad_laser_range", format!(r#"{{"type":"block","build_id":"sim-002","layer":2,"laser":99,"t0_ns":{t_ns},"photodiode_on_axis":[2000.0]}}"#)),
        _ => ("bad_negative_layer", format!(r#"{{"build_id":"seed-001","layer":-1,"timestamp":"{ts}","temperature":1650.5}}"#)),
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339_us(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let us = ns.rem_euclid(1_000_000_000) / 1000;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z", sod / 3600, sod / 60 % 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_a_function_of_the_seed() {
        let scale = Scale {
            machines: 2,
            lasers: 2,
            sample_rate_hz: 2_000,
            layers: 3,
            layer_ms: 100,
            recoat_ms: 50,
            seed_builds: 2,
            seed_period_us: 2_000,
            sensors: 1,
            sensor_period_ms: 10,
            malformed_every: 50,
        };
        let timing = Timing { watermark_bound_ms: 20, allowed_lateness_ms: 250 };
        let lines = |seed| generate(&scale, seed, timing, 8).records.into_iter().map(|r| (r.partition, r.key, r.line)).collect::<Vec<_>>();
        let a = lines(7);
        assert_eq!(a, lines(7));
        assert_ne!(a, lines(8));
        // A build lives in one partition.
        let mut part = std::collections::BTreeMap::new();
        for (p, k, _) in &a {
            assert_eq!(*part.entry(k.clone()).or_insert(*p), *p, "key {k}");
        }
    }

    #[test]
    fn rfc3339_of_the_simulators_start() {
        assert_eq!(rfc3339_us(T0_NS + 1_234_567_891), "2024-01-15T10:30:01.234567Z");
        assert_eq!(rfc3339_us(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }
}
