//! The simulated fleet: every machine's next record in one event-time queue, cut into batches
//! of `batch_blocks` blocks with their source spans, plus the ground truth so far. Deterministic
//! from the seed; it never reads a clock (pacing is the caller's).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::input::batch::{RecordBatch, SourceSpan};
use crate::input::event::{InputId, TimeNs};
use crate::input::time::parse_rfc3339_ns;
use crate::topology::sources::SimulatorConfig;

use super::ct::SimDefect;
use super::anomalies::InjectedAnomaly;
use super::machine::{Machine, Setup, N_SIM_COLS, RANK_BLOCK};
use super::model::{noise_table, SplitMix, MS};

/// Used when `start_time` does not parse (2024-01-15T10:30:00Z).
const DEFAULT_START_NS: TimeNs = 1_705_314_600_000_000_000;

/// A deterministic fleet of simulated machines, producing batches in event-time order.
pub struct Simulator {
    input: InputId,
    setup: Setup,
    machines: Vec<Machine>,
    queue: BinaryHeap<Reverse<(TimeNs, u8, u32)>>,
    scratch: [Vec<f32>; N_SIM_COLS],
    truth: Vec<InjectedAnomaly>,
    /// The fleet's configuration (a machine's next build is made from it).
    cfg: SimulatorConfig,
    /// The build number each machine runs (from 1).
    build_no: Vec<u32>,
    /// The CT defects of builds that ended (a finite fleet keeps them for its CT list).
    finished_ct: Vec<SimDefect>,
    seq: u64,
    offset: u64,
    generated_ns: TimeNs,
    total_samples: u64,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("input", &self.input)
            .field("machines", &self.machines.len())
            .field("seq", &self.seq)
            .field("offset", &self.offset)
            .field("generated_ns", &self.generated_ns)
            .field("total_samples", &self.total_samples)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator of the fleet `cfg` feeding input `input`. Never panics: an unparsable
    /// `start_time` falls back to 2024-01-15T10:30:00Z and zero rates or sizes count as one.
    pub fn new(cfg: &SimulatorConfig, input: InputId) -> Simulator {
        let ms_to_ns = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(MS);
        let rate = u64::from(cfg.sample_rate_hz.max(1));
        let dt_ns = (1_000_000_000 / rate).max(1) as i64;
        let samples_per_layer = rate.saturating_mul(cfg.layer_ms) / 1000;
        let block_len = (rate.saturating_mul(cfg.block_ms) / 1000).clamp(1, samples_per_layer.max(1)) as usize;
        let setup = Setup {
            lasers: usize::from(cfg.lasers),
            layers: cfg.layers,
            layer_ns: ms_to_ns(cfg.layer_ms),
            recoat_ns: ms_to_ns(cfg.recoat_ms),
            dt_ns,
            block_len,
            block_ns: dt_ns.saturating_mul(block_len as i64),
            samples_per_layer,
            blocks_per_layer: samples_per_layer.div_ceil(block_len as u64),
            batch_blocks: cfg.batch_blocks.max(1),
            noise: noise_table(cfg.seed, (2 * block_len).max(8192)),
            log_keys: ["chamber_pressure_mbar", "gas_flow_m3_h", "o2_ppm", "plate_temp_c"].map(Arc::from),
            power_drift_pct_per_layer: cfg.power_drift_pct_per_layer,
            // Bursts of 1 to 10 blocks: 5.5 on average.
            loss_start: cfg.block_loss_pct / 100.0 / 5.5,
        };
        let start = parse_rfc3339_ns(&cfg.start_time).unwrap_or(DEFAULT_START_NS);
        let mut machines = Vec::with_capacity(cfg.machines as usize);
        for i in 1..=cfg.machines {
            // The first build's generator is seeded as it always was; later builds from it too.
            let mut rng = SplitMix(cfg.seed ^ u64::from(i).wrapping_mul(0xD1B5_4A32_D192_ED03));
            rng.next();
            let start_ns = start.saturating_add(i64::from(i - 1) * 3 * MS + rng.below(1000) as i64 * 1000);
            machines.push(Machine::build(cfg, &setup, i, 1, start_ns, rng));
        }
        let mut queue = BinaryHeap::with_capacity(machines.len());
        for (i, m) in machines.iter().enumerate() {
            if let Some((t, r)) = m.next_key(&setup) {
                queue.push(Reverse((t, r, i as u32)));
            }
        }
        let total_samples = u64::from(cfg.machines)
            .saturating_mul(u64::from(cfg.lasers))
            .saturating_mul(u64::from(cfg.layers))
            .saturating_mul(samples_per_layer)
            .saturating_mul(u64::from(cfg.builds_per_machine.max(1)));
        let generated_ns = machines.iter().map(|m| m.start_ns).min().unwrap_or(start);
        Simulator {
            input,
            scratch: std::array::from_fn(|_| vec![0.0; setup.block_len]),
            setup,
            machines,
            queue,
            truth: Vec::new(),
            cfg: cfg.clone(),
            build_no: vec![1; cfg.machines as usize],
            finished_ct: Vec::new(),
            seq: 0,
            offset: 0,
            generated_ns,
            total_samples,
        }
    }

    /// The next batch in event-time order across the fleet, or None when every build has ended.
    pub fn next_batch(&mut self) -> Option<RecordBatch> {
        if self.queue.is_empty() {
            return None;
        }
        let batch_blocks = self.setup.batch_blocks;
        let mut batch = RecordBatch::with_capacity(0);
        batch.data.reserve(batch_blocks * self.setup.block_len * N_SIM_COLS);
        batch.blocks.reserve(batch_blocks);
        let first = self.offset;
        let mut blocks = 0usize;
        while let Some(&Reverse((t, rank, mi))) = self.queue.peek() {
            // Once full, take only the events that fall inside the span already covered.
            if blocks >= batch_blocks && (rank == RANK_BLOCK || t > batch.max_t_ns) {
                break;
            }
            self.queue.pop();
            let s = &self.setup;
            let Some(m) = self.machines.get_mut(mi as usize) else { continue };
            m.emit(s, &mut self.scratch, &mut self.truth, &mut batch, self.offset);
            self.offset += 1;
            if rank == RANK_BLOCK {
                blocks += 1;
            }
            match m.next_key(s) {
                Some((t, r)) => self.queue.push(Reverse((t, r, mi))),
                None => self.next_build(mi),
            }
        }
        batch.span = SourceSpan { input: self.input, seq: self.seq, first_offset: first, next_offset: self.offset };
        batch.records = self.offset - first;
        self.seq += 1;
        self.generated_ns = self.generated_ns.max(batch.max_t_ns);
        Some(batch)
    }

    /// Machine `mi`'s build ended: it starts its next one after the plate change, unless it ran
    /// all of `builds_per_machine`.
    fn next_build(&mut self, mi: u32) {
        let (cfg, s) = (&self.cfg, &self.setup);
        let Some(no) = self.build_no.get_mut(mi as usize) else { return };
        if cfg.builds_per_machine != 0 && *no >= cfg.builds_per_machine {
            return;
        }
        *no += 1;
        let Some(m) = self.machines.get_mut(mi as usize) else { return };
        let i = mi + 1;
        let mut rng = SplitMix(cfg.seed ^ u64::from(i).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ u64::from(*no).wrapping_mul(0x94D0_49BB_1331_11EB));
        rng.next();
        let start_ns = m.end_ns.saturating_add(s.recoat_ns).saturating_add(i64::try_from(cfg.build_gap_ms).unwrap_or(i64::MAX).saturating_mul(MS));
        let next = Machine::build(cfg, s, i, *no, start_ns, rng);
        let old = std::mem::replace(m, next);
        // A long-running fleet keeps no history (its memory stays bounded); a finite one keeps
        // the CT defects and ground truth of every build.
        if cfg.builds_per_machine == 0 {
            self.truth.retain(|t| *t.build_id != *old.build);
        } else {
            self.finished_ct.extend(old.ct);
        }
        if let Some((t, r)) = m.next_key(s) {
            self.queue.push(Reverse((t, r, mi)));
        }
    }

    /// Event time the simulator has generated up to (for real-time pacing).
    pub fn event_time_ns(&self) -> i64 {
        self.generated_ns
    }

    /// The injected anomalies so far (ground truth).
    pub fn ground_truth(&self) -> &[InjectedAnomaly] {
        &self.truth
    }

    /// The CT defect list of the builds so far (per build, in layer order), with each defect's
    /// cause.
    pub fn ct_defects(&self) -> Vec<SimDefect> {
        self.finished_ct.iter().cloned().chain(self.machines.iter().flat_map(|m| m.ct.iter().cloned())).collect()
    }

    /// Total samples a full run produces (for progress/bench): machines*lasers*layers*samples per layer.
    pub fn total_samples(&self) -> u64 {
        self.total_samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::anomalies::AnomalyKind;
    use crate::input::decode::{DecodeLimits, Decoder};
    use crate::input::encode::write_json_lines;
    use crate::input::batch::{COL_X, COL_Y};
    use crate::input::event::{Channel, LayerEvent, LayerPhase, LogRecord};

    fn fleet(seed: u64, layer_ms: u64) -> SimulatorConfig {
        SimulatorConfig {
            machines: 3,
            lasers: 4,
            sample_rate_hz: 100_000,
            layers: 4,
            layer_ms,
            recoat_ms: 10,
            block_ms: 1,
            seed,
            anomalies: true,
            batch_blocks: 64,
            ..SimulatorConfig::default()
        }
    }

    fn run(cfg: &SimulatorConfig) -> (Vec<RecordBatch>, Vec<InjectedAnomaly>) {
        let mut sim = Simulator::new(cfg, 7);
        let mut out = Vec::new();
        while let Some(b) = sim.next_batch() {
            out.push(b);
        }
        (out, sim.ground_truth().to_vec())
    }

    fn json(batches: &[RecordBatch]) -> String {
        let mut s = String::new();
        for b in batches {
            write_json_lines(b, &mut s);
        }
        s
    }

    fn pd_sum(batches: &[RecordBatch]) -> f64 {
        let ch = Channel::PhotodiodeOnAxis.index();
        batches.iter().flat_map(|b| b.blocks.iter().flat_map(move |h| b.column(h, ch).unwrap_or(&[]).iter())).map(|v| f64::from(*v)).sum()
    }

    /// A machine starts its next build after the plate change: `builds_per_machine` builds each,
    /// in event-time order, the first named as before; without end (0), it goes on, keeping no
    /// ground truth of the builds that ended.
    #[test]
    fn machines_run_build_after_build() {
        let cfg = SimulatorConfig { machines: 2, layers: 2, builds_per_machine: 3, build_gap_ms: 50, ..fleet(3, 5) };
        let (batches, truth) = run(&cfg);
        let ends: Vec<(String, i64)> = batches.iter().flat_map(|b| b.layers.iter()).filter(|e| e.phase == LayerPhase::BuildEnd).map(|e| (e.build.to_string(), e.t_ns)).collect();
        let names: std::collections::BTreeSet<&str> = ends.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(names, ["sim-001", "sim-001-2", "sim-001-3", "sim-002", "sim-002-2", "sim-002-3"].into_iter().collect());
        let starts = |build: &str| batches.iter().flat_map(|b| b.layers.iter()).find(|e| *e.build == *build && e.phase == LayerPhase::Start).map(|e| e.t_ns).expect("a start");
        let end = |build: &str| ends.iter().find(|(b, _)| b == build).map(|(_, t)| *t).expect("an end");
        assert!(starts("sim-001-2") >= end("sim-001") + 50 * MS, "the next build starts after the plate change");
        assert!(starts("sim-001-3") >= end("sim-001-2") + 50 * MS);
        assert!(batches.windows(2).all(|w| w[1].blocks.first().is_none_or(|h| h.t0_ns + 1_000_000 >= w[0].blocks.first().map_or(0, |g| g.t0_ns))));
        assert!(truth.iter().any(|t| t.build_id == "sim-002-3"), "later builds carry anomalies too");
        // The first build is what a one-build fleet makes.
        let one = run(&SimulatorConfig { builds_per_machine: 1, ..cfg.clone() });
        let of = |text: String| text.lines().filter(|l| l.contains("\"sim-001\"")).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(of(json(&one.0)), of(json(&batches)));
        // Without end: still going after many builds, with the truth of the running ones only.
        let mut sim = Simulator::new(&SimulatorConfig { builds_per_machine: 0, ..cfg }, 7);
        let mut last = String::new();
        for _ in 0..2_000 {
            let b = sim.next_batch().expect("a long-running fleet never ends");
            if let Some(e) = b.layers.iter().find(|e| e.phase == LayerPhase::BuildEnd) {
                last = e.build.to_string();
            }
        }
        assert!(last.rsplit('-').next().and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 3), "{last}");
        let running: std::collections::BTreeSet<&str> = sim.ground_truth().iter().map(|t| t.build_id.as_str()).collect();
        assert!(running.len() <= 2, "{running:?}");
    }

    /// `block_loss_pct` drops about that share of the blocks, in bursts, and leaves every kept
    /// block as the lossless fleet has it.
    #[test]
    fn lost_blocks_are_a_share_of_the_fleet_and_the_rest_unchanged() {
        let blocks = |loss: f64| {
            let mut sim = Simulator::new(&SimulatorConfig { block_loss_pct: loss, ..fleet(9, 100) }, 0);
            let mut out = std::collections::BTreeMap::new();
            while let Some(b) = sim.next_batch() {
                for h in &b.blocks {
                    out.insert((h.build, h.layer, h.laser, h.t0_ns), b.column(h, Channel::TemperatureC.index()).map(|c| c.to_vec()));
                }
            }
            out
        };
        let (all, lossy) = (blocks(0.0), blocks(5.0));
        let lost = all.len() - lossy.len();
        assert!((0.03..0.07).contains(&(lost as f64 / all.len() as f64)), "{lost} of {} blocks lost", all.len());
        assert!(lossy.iter().all(|(k, v)| all.get(k) == Some(v)), "a kept block differs from the lossless fleet's");
    }

    #[test]
    fn deterministic_complete_ordered_and_every_kind() {
        let cfg = fleet(42, 40);
        let (a, truth) = run(&cfg);
        let (b, truth_b) = run(&cfg);
        assert_eq!(json(&a), json(&b));
        assert_eq!(truth, truth_b);
        let spans = |v: &[RecordBatch]| v.iter().map(|b| b.span).collect::<Vec<_>>();
        assert_eq!(spans(&a), spans(&b));
        let (c, _) = run(&fleet(43, 40));
        assert_ne!(json(&a), json(&c));

        let sim = Simulator::new(&cfg, 7);
        let total: u64 = a.iter().map(RecordBatch::sample_count).sum();
        assert_eq!(total, sim.total_samples());
        assert_eq!(total, 3 * 4 * 4 * 4000);

        let block_ns = 1_000_000;
        let mut prev_max = i64::MIN;
        let mut next_offset = 0;
        for (i, b) in a.iter().enumerate() {
            assert_eq!(b.span.seq, i as u64);
            assert_eq!(b.span.input, 7);
            assert_eq!(b.span.first_offset, next_offset);
            next_offset = b.span.next_offset;
            assert_eq!(b.records, (b.blocks.len() + b.layers.len() + b.logs.len()) as u64);
            assert_eq!(b.records, b.span.next_offset - b.span.first_offset);
            assert!(b.blocks.len() <= 64);
            assert!(b.dead.is_empty());
            for h in &b.blocks {
                assert!((b.span.first_offset..b.span.next_offset).contains(&h.source_offset));
                assert!(h.t0_ns >= prev_max.saturating_sub(block_ns), "batch {i}: {} < {prev_max}", h.t0_ns);
                assert_eq!(h.len, 100);
            }
            assert!(b.blocks.windows(2).all(|w| w[0].t0_ns <= w[1].t0_ns));
            assert!(b.layers.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
            assert!(b.logs.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
            prev_max = prev_max.max(b.max_t_ns);
        }
        for m in 1..=3 {
            let name = format!("sim-{m:03}");
            let evs: Vec<&LayerEvent> = a.iter().flat_map(|b| b.layers.iter()).filter(|e| *e.build == *name).collect();
            assert_eq!(evs.len(), 4 * 3 + 3, "{name}");
            assert_eq!(evs.last().map(|e| e.phase), Some(LayerPhase::BuildEnd));
            assert!(evs.iter().any(|e| e.phase == LayerPhase::Start && e.layer == 3 && e.z_um == Some(120)));
        }
        for kind in [AnomalyKind::HotSpot, AnomalyKind::PowerDrop, AnomalyKind::O2Rise, AnomalyKind::LackOfFusion] {
            assert!(truth.iter().any(|t| t.kind == kind), "{kind:?} missing from {truth:?}");
        }
        let none = SimulatorConfig { anomalies: false, ..cfg };
        assert!(run(&none).1.is_empty());
    }

    #[test]
    fn json_lines_decode_back() {
        let (batches, _) = run(&fleet(7, 20));
        let text = json(&batches);
        let mut dec = Decoder::new(0, DecodeLimits::default());
        let mut back = RecordBatch::with_capacity(1 << 16);
        for (i, line) in text.lines().enumerate() {
            dec.decode(line.as_bytes(), i as u64, i64::MAX / 2, &mut back);
        }
        assert!(back.dead.is_empty(), "{:?}", back.dead.first());
        let back = vec![back];
        let total: u64 = batches.iter().map(RecordBatch::sample_count).sum();
        assert_eq!(back[0].sample_count(), total);
        assert_eq!(pd_sum(&back), pd_sum(&batches));
        let layers: Vec<LayerEvent> = batches.iter().flat_map(|b| b.layers.iter().cloned()).collect();
        assert_eq!(back[0].layers, layers);
        let logs: Vec<LogRecord> = batches.iter().flat_map(|b| b.logs.iter().cloned()).collect();
        assert_eq!(back[0].logs, logs);
    }

    #[test]
    fn anomalies_cross_the_demo_thresholds_and_normal_data_does_not() {
        let (batches, truth) = run(&fleet(42, 40));
        fn matching<'a>(
            truth: &'a [InjectedAnomaly],
            kind: AnomalyKind,
            build: &'a str,
            layer: u32,
            laser: Option<u8>,
        ) -> impl Iterator<Item = &'a InjectedAnomaly> + 'a {
            truth.iter().filter(move |t| t.kind == kind && t.build_id == build && t.layer == layer && t.laser == laser)
        }
        let find = |kind, build, layer, laser| matching(&truth, kind, build, layer, laser);
        let (mut hot, mut dropped, mut normal) = (0u64, 0u64, 0u64);
        for b in &batches {
            for h in &b.blocks {
                let build = &*b.builds[h.build as usize];
                let col = |c: Channel| b.column(h, c.index()).unwrap_or(&[]);
                let (xs, ys) = (b.column(h, COL_X).unwrap_or(&[]), b.column(h, COL_Y).unwrap_or(&[]));
                let (on, temp, power) = (col(Channel::PhotodiodeOnAxis), col(Channel::TemperatureC), col(Channel::LaserPowerW));
                for i in 0..h.len as usize {
                    let t = h.t0_ns + h.dt_ns * i as i64;
                    let (x, y) = (f64::from(xs[i]), f64::from(ys[i]));
                    let in_hot = find(AnomalyKind::HotSpot, build, h.layer, Some(h.laser)).any(|g| {
                        let ((x0, x1), (y0, y1)) = (g.x_mm.unwrap_or_default(), g.y_mm.unwrap_or_default());
                        x >= x0 && x < x1 && y >= y0 && y < y1
                    });
                    if in_hot {
                        hot += 1;
                        assert!(on[i] > 3200.0 && temp[i] > 1750.0, "hot sample {} {}", on[i], temp[i]);
                        assert!(find(AnomalyKind::HotSpot, build, h.layer, Some(h.laser)).any(|g| (g.start_ns..g.end_ns).contains(&t)));
                    } else {
                        assert!(on[i] <= 3000.0 && temp[i] <= 1700.0, "{build} layer {} laser {}: {} {}", h.layer, h.laser, on[i], temp[i]);
                    }
                    if find(AnomalyKind::PowerDrop, build, h.layer, Some(h.laser)).any(|g| (g.start_ns..g.end_ns).contains(&t)) {
                        dropped += 1;
                        assert!(power[i] < 150.0);
                    } else {
                        normal += 1;
                        assert!(power[i] >= 150.0);
                    }
                }
            }
            for r in &b.logs {
                let o2 = r.values.iter().find(|(k, _)| &**k == "o2_ppm").map(|(_, v)| *v).unwrap_or(f64::NAN);
                let rise = find(AnomalyKind::O2Rise, &*r.build, 1, None).any(|g| (g.start_ns..g.end_ns).contains(&r.t_ns));
                assert!(if rise { o2 > 1500.0 } else { o2 <= 1000.0 }, "o2 {o2} at {}", r.t_ns);
            }
            for e in &b.layers {
                for p in &e.params {
                    let lof = find(AnomalyKind::LackOfFusion, &*e.build, e.layer, Some(p.laser)).count() > 0;
                    let ed = p.energy_density_j_mm3();
                    assert!(if lof { ed < 35.0 } else { ed >= 40.0 }, "E = {ed}");
                }
            }
        }
        assert!(hot > 100, "{hot} hot samples");
        assert_eq!(dropped, 4000 / 5);
        assert!(normal > 0);
    }
}

