//! Live counters of the running engine, shared by the actors that update them and the readers
//! (terminal summary, admin API, tests). Updated once per batch, never per sample.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use meltstream_engine::pipeline::build_pipeline::BuildCounters;
use meltstream_engine::records::OutputRecord;

/// Which result latency a histogram holds: each kind has its own start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LatencyKind {
    /// Results closed by the watermark (layer summaries, grid maps, time windows): from the
    /// wall time at which the watermark coordinator computed the watermark that passed the
    /// window's end.
    WindowClose,
    /// Anomalies: from the wall time at which the sample's record was read by its source.
    Alert,
    /// Everything else (dead letters, late records): from the read of the record.
    Other,
}

impl LatencyKind {
    /// The latency kind of a record.
    pub fn of(r: &OutputRecord) -> LatencyKind {
        match r {
            OutputRecord::LayerSummary(_) | OutputRecord::Grid(_) | OutputRecord::Window(_) | OutputRecord::SpcSignal(_) | OutputRecord::LayerVerdict(_) | OutputRecord::BuildReport(_) | OutputRecord::DataQuality(_) | OutputRecord::SpcBaseline(_) => {
                LatencyKind::WindowClose
            }
            OutputRecord::Anomaly(_) => LatencyKind::Alert,
            OutputRecord::DeadLetter(_) | OutputRecord::Late(_) | OutputRecord::InputQuality(_) => LatencyKind::Other,
        }
    }
}

/// Where a latency's clock stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LatencyStage {
    /// The sink actor took the record (before any wait for its flush).
    AtSink,
    /// The sink's writer made the record durable (its flush, or transaction, returned).
    Durable,
}

/// What the engine has done so far.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Samples routed to build actors.
    pub samples: AtomicU64,
    /// Records rejected at decoding or dead-lettered as poison.
    pub dead_letters: AtomicU64,
    /// Records written durably by all sinks together.
    pub records_durable: AtomicU64,
    /// Build-actor restarts.
    pub restarts: AtomicU64,
    /// Batches dropped by a `when_full = "drop_newest"` source.
    pub dropped_batches: AtomicU64,
    /// Current watermark, ns.
    pub watermark_ns: AtomicI64,
    builds: Mutex<BTreeMap<String, BuildCounters>>,
    latency_us: Mutex<BTreeMap<(LatencyKind, LatencyStage), hdrhistogram::Histogram<u64>>>,
    committed: Mutex<BTreeMap<u64, u64>>,
    /// What sources and sinks report for `/health/ready`.
    pub health: crate::health::Health,
    /// Each build's recent results, for the dashboard.
    pub live: crate::live_view::LiveView,
    /// Queues, memory budget, commit durations and consumer lag, for the dashboard.
    pub gauges: crate::engine_gauges::EngineGauges,
}

impl EngineStats {
    /// Publishes a build's counters.
    pub fn set_build(&self, build: &str, c: BuildCounters) {
        let mut m = self.builds.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(build) {
            Some(v) => *v = c,
            None => {
                m.insert(build.to_owned(), c);
            }
        }
    }

    /// Every build's counters.
    pub fn builds(&self) -> BTreeMap<String, BuildCounters> {
        self.builds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a committed offset.
    pub fn set_committed(&self, input: u64, offset: u64) {
        self.committed.lock().unwrap_or_else(|e| e.into_inner()).insert(input, offset);
    }

    /// Committed offset per input.
    pub fn committed(&self) -> BTreeMap<u64, u64> {
        self.committed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records result latencies (µs), one sink call at a time.
    pub fn record_latencies(&self, kind: LatencyKind, stage: LatencyStage, us: impl Iterator<Item = u64>) {
        let mut g = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        let h = g.entry((kind, stage)).or_insert_with(|| hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))));
        for v in us {
            let _ = h.record(v.max(1));
        }
    }

    /// Result latencies of one kind to one stage so far (µs).
    pub fn latencies(&self, kind: LatencyKind, stage: LatencyStage) -> Option<hdrhistogram::Histogram<u64>> {
        self.latency_us.lock().unwrap_or_else(|e| e.into_inner()).get(&(kind, stage)).cloned()
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
