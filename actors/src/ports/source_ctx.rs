//! What every source shares: an input id, and the credited hand-off of batches to the router.
//!
//! # Backpressure
//! A source takes one credit of the bounded source queue per batch before sending it, and the
//! batch's bytes from the sources' share of the memory budget; the router returns both once the
//! batch is routed. Out of credits, a source waits (`when_full = "block"`) or,
//! only if the topology asks, drops the batch and counts it (`"drop_newest"`).

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::Semaphore;

use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::input::event::InputId;
use meltstream_engine::topology::WhenFull;

use crate::engine_stats::EngineStats;
use crate::memory_budget::{batch_bytes, MemoryBudget, Stage};
use crate::ports::credits::SourceCredit;
use crate::ports::messages::{RouterMsg, SupervisorMsg};

/// A source's link to the engine.
#[derive(Clone)]
pub struct SourceCtx {
    /// This source's input id.
    pub input: InputId,
    /// Its name.
    pub name: String,
    /// The router.
    pub router: ActorRef<RouterMsg>,
    /// The source queue's credits (shared by all sources).
    pub credits: Arc<Semaphore>,
    /// What to do when out of credits.
    pub when_full: WhenFull,
    /// Engine counters.
    pub stats: Arc<EngineStats>,
    /// The memory budget (a source pays the sources' share).
    pub budget: MemoryBudget,
    /// The supervisor, told when the source ends.
    pub supervisor: ActorRef<SupervisorMsg>,
}

impl SourceCtx {
    /// Sends a batch whose first record was read at `read_wall_ns` (alert latency starts
    /// there) to the router; false when the engine is gone.
    pub async fn send(&self, batch: RecordBatch, read_wall_ns: i64) -> bool {
        let credit = match self.when_full {
            WhenFull::Block => match self.credits.clone().acquire_owned().await {
                Ok(c) => c,
                Err(_) => return false,
            },
            WhenFull::DropNewest => match self.credits.clone().try_acquire_owned() {
                Ok(c) => c,
                Err(_) => {
                    EngineStats::add(&self.stats.dropped_batches, 1);
                    metrics::counter!("meltstream_dropped_batches_total", "source" => self.name.clone()).increment(1);
                    return true;
                }
            },
        };
        let Some(memory) = self.budget.acquire(Stage::Sources, batch_bytes(&batch)).await else { return false };
        self.send_credited(batch, SourceCredit::new(credit, Some(memory)), read_wall_ns)
    }

    /// Sends a batch with a credit the caller already holds.
    pub fn send_credited(&self, batch: RecordBatch, credit: SourceCredit, read_wall_ns: i64) -> bool {
        self.router.cast(RouterMsg::Batch(batch, Some(credit), read_wall_ns)).is_ok()
    }

    /// Tells the router and the supervisor that this input has ended.
    pub fn ended(&self) {
        self.stats.health.source(&self.name, crate::health::SourceState::Ended, crate::ports::clock::now_wall_ns());
        let _ = self.router.cast(RouterMsg::InputEnded(self.input));
        let _ = self.supervisor.cast(SupervisorMsg::SourceDone(self.input));
    }
}
