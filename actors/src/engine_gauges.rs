//! What the dashboard's engine page shows beside the counters of [`crate::engine_stats`]: each
//! build's queue (depth and free credits), the memory budget in use, each sink's commit
//! (flush) durations, Kafka consumer lag. Read on demand by the admin server: queues and
//! budget are looked at when asked (weak references, no periodic work); commit durations are
//! recorded once per flush, consumer lag once per librdkafka statistics interval.
//!
//! Never on the per-sample path; never holds a lock across an await.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};

use crate::memory_budget::{MemoryBudget, Stage};

/// A bounded queue whose fill can be read (a build's inbound queue).
pub trait QueueFill: Send + Sync {
    /// Items queued.
    fn depth(&self) -> usize;
    /// Its capacity.
    fn capacity(&self) -> usize;
}

/// Most builds whose queues are listed (queues of ended builds are dropped as they are seen).
const MAX_QUEUES: usize = 4096;

/// The engine page's gauges.
#[derive(Default)]
pub struct EngineGauges {
    queues: Mutex<BTreeMap<String, Weak<dyn QueueFill>>>,
    budget: Mutex<Option<MemoryBudget>>,
    commit_us: Mutex<BTreeMap<String, hdrhistogram::Histogram<u64>>>,
    consumer_lag: Mutex<BTreeMap<String, i64>>,
}

impl std::fmt::Debug for EngineGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineGauges").field("sinks", &lock(&self.commit_us).len()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EngineGauges {
    /// A build's queue (the router registers it as it starts the build's actor).
    pub fn register_queue(&self, build: &str, q: Weak<dyn QueueFill>) {
        let mut m = lock(&self.queues);
        if m.len() >= MAX_QUEUES {
            m.retain(|_, w| w.strong_count() > 0);
        }
        if m.len() < MAX_QUEUES {
            m.insert(build.to_owned(), q);
        }
    }

    /// Per live build: (queued, capacity).
    pub fn queues(&self) -> BTreeMap<String, (usize, usize)> {
        let mut m = lock(&self.queues);
        m.retain(|_, w| w.strong_count() > 0);
        m.iter().filter_map(|(b, w)| w.upgrade().map(|q| (b.clone(), (q.depth(), q.capacity())))).collect()
    }

    /// The engine's memory budget (set as it starts).
    pub fn set_budget(&self, b: MemoryBudget) {
        *lock(&self.budget) = Some(b);
    }

    /// Per stage: (KiB in use, KiB of its share).
    pub fn budget(&self) -> Vec<(&'static str, u32, u32)> {
        lock(&self.budget).as_ref().map_or_else(Vec::new, |b| {
            Stage::ALL
                .iter()
                .map(|&s| {
                    let (used, cap) = b.in_use_kib(s);
                    (s.name(), used, cap)
                })
                .collect()
        })
    }

    /// A sink's flush took `us` µs.
    pub fn sink_commit(&self, sink: &str, us: u64) {
        let mut m = lock(&self.commit_us);
        if !m.contains_key(sink) {
            let Ok(h) = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2) else { return };
            m.insert(sink.to_owned(), h);
        }
        if let Some(h) = m.get_mut(sink) {
            let _ = h.record(us.max(1));
        }
    }

    /// Per sink: (flushes, p50 µs, p99 µs, max µs).
    pub fn sink_commits(&self) -> BTreeMap<String, (u64, u64, u64, u64)> {
        lock(&self.commit_us).iter().map(|(k, h)| (k.clone(), (h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))).collect()
    }

    /// A Kafka partition's (`topic/partition`) consumer lag, records.
    pub fn consumer_lag(&self, partition: &str, lag: i64) {
        lock(&self.consumer_lag).insert(partition.to_owned(), lag);
    }

    /// Consumer lag per Kafka partition.
    pub fn consumer_lags(&self) -> BTreeMap<String, i64> {
        lock(&self.consumer_lag).clone()
    }
}
