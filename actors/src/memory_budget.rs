//! The engine's memory budget (`memory_budget_mb`), split into one share per stage of the data
//! path so that every byte a batch or record occupies while it waits is counted once, and no
//! stage can starve the one after it.
//!
//! # Shares
//! - **sources**: batches read but not yet routed (a Kafka partition's raw payloads waiting for
//!   their decode task, decoded batches waiting for the router): a quarter of the budget;
//! - **builds**: batch parts queued for or being processed by a build actor: half;
//! - **sinks**: records handed to a sink and not yet durable: a quarter.
//!
//! A permit travels with what it pays for and is released when that leaves the stage (routed,
//! processed, durable). Each stage waits only on its own share, and each share is released by
//! the stage after it, which never waits on an earlier one: the path cannot deadlock. A single
//! item larger than its whole share takes the whole share (it waits until the share is free,
//! then goes alone), so one oversized batch slows the path instead of stopping it.
//!
//! What the budget does not count (the fixed overhead): the actors' own state (open windows,
//! grid maps), librdkafka's read-ahead (`prefetch_kib` per Kafka source), a sink's client
//! buffers, thread stacks and the allocator's retained pages.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use meltstream_engine::input::batch::{BlockHeader, RecordBatch};
use meltstream_engine::records::Emitted;

/// A stage of the data path, with its own share of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Read, not yet routed.
    Sources,
    /// Queued for or in a build actor.
    Builds,
    /// With a sink, not yet durable.
    Sinks,
}

impl Stage {
    /// Every stage, in data-path order.
    pub const ALL: [Stage; 3] = [Stage::Sources, Stage::Builds, Stage::Sinks];

    /// Its name in metrics and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Sources => "sources",
            Stage::Builds => "builds",
            Stage::Sinks => "sinks",
        }
    }
}

/// The budget, in KiB per stage.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    shares: Arc<[(Arc<Semaphore>, u32); 3]>,
}

/// KiB of memory paid for, released on drop.
pub type MemoryPermit = OwnedSemaphorePermit;

impl MemoryBudget {
    /// Splits `total_kib` between the stages (¼ sources, ½ builds, ¼ sinks; each at least 64 KiB).
    pub fn new(total_kib: u64) -> MemoryBudget {
        let total = total_kib.min(u64::from(u32::MAX / 4)) as u32;
        let share = |part: u32| -> (Arc<Semaphore>, u32) {
            let kib = (total / 4 * part).max(64);
            (Arc::new(Semaphore::new(kib as usize)), kib)
        };
        MemoryBudget { shares: Arc::new([share(1), share(2), share(1)]) }
    }

    fn share(&self, stage: Stage) -> &(Arc<Semaphore>, u32) {
        &self.shares[stage as usize]
    }

    /// The KiB an item of `bytes` costs in `stage` (at least 1, at most the whole share).
    pub fn cost_kib(&self, stage: Stage, bytes: usize) -> u32 {
        ((bytes / 1024) as u32 + 1).min(self.share(stage).1)
    }

    /// Waits until `bytes` fit in `stage`'s share and takes them; `None` once the engine is
    /// stopping (the share was closed).
    pub async fn acquire(&self, stage: Stage, bytes: usize) -> Option<MemoryPermit> {
        let (sem, _) = self.share(stage);
        sem.clone().acquire_many_owned(self.cost_kib(stage, bytes)).await.ok()
    }

    /// Takes `bytes` in `stage`'s share if they fit now.
    pub fn try_acquire(&self, stage: Stage, bytes: usize) -> Option<MemoryPermit> {
        let (sem, _) = self.share(stage);
        sem.clone().try_acquire_many_owned(self.cost_kib(stage, bytes)).ok()
    }

    /// KiB in use in `stage`, and its share.
    pub fn in_use_kib(&self, stage: Stage) -> (u32, u32) {
        let (sem, cap) = self.share(stage);
        (cap - (sem.available_permits() as u32).min(*cap), *cap)
    }

    /// Publishes the KiB in use per stage as `meltstream_memory_budget_in_use_bytes{stage}`.
    pub fn publish_metrics(&self) {
        for s in Stage::ALL {
            let (used, cap) = self.in_use_kib(s);
            metrics::gauge!("meltstream_memory_budget_in_use_bytes", "stage" => s.name()).set(f64::from(used) * 1024.0);
            metrics::gauge!("meltstream_memory_budget_bytes", "stage" => s.name()).set(f64::from(cap) * 1024.0);
        }
    }
}

/// The bytes a decoded batch occupies (its columns and headers; strings counted by length).
pub fn batch_bytes(b: &RecordBatch) -> usize {
    std::mem::size_of::<RecordBatch>()
        + b.data.capacity() * 4
        + b.blocks.capacity() * std::mem::size_of::<BlockHeader>()
        + b.layers.capacity() * 96
        + b.logs.capacity() * 96
        + b.dead.iter().map(|d| 160 + d.raw_prefix.len()).sum::<usize>()
        + b.builds.len() * 32
}

/// The bytes records occupy while they wait for a sink (an estimate from their serialized
/// size: fields, strings and grid cells).
pub fn records_bytes(records: &[Emitted]) -> usize {
    records.iter().map(|r| std::mem::size_of::<Emitted>() + r.record.approx_heap_bytes()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_budget_and_an_oversized_item_takes_a_whole_share() {
        let b = MemoryBudget::new(8 * 1024);
        let caps: Vec<u32> = Stage::ALL.iter().map(|&s| b.in_use_kib(s).1).collect();
        assert_eq!(caps, vec![2048, 4096, 2048]);
        assert_eq!(caps.iter().sum::<u32>(), 8 * 1024);
        let p = b.try_acquire(Stage::Sinks, 100 << 20).expect("an oversized item fits alone");
        assert_eq!(b.in_use_kib(Stage::Sinks).0, 2048);
        assert!(b.try_acquire(Stage::Sinks, 1).is_none(), "the share is full");
        assert!(b.try_acquire(Stage::Builds, 1).is_some(), "other shares are not");
        drop(p);
        assert_eq!(b.in_use_kib(Stage::Sinks).0, 0);
    }
}
