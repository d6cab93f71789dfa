//! What data on its way between rooms holds until the stage after it is done with it: a place
//! in a bounded queue and its bytes in the memory budget (`memory_budget.rs`). Dropping a
//! credit releases both, so a credit travels with what it pays for and nothing else.

use tokio::sync::OwnedSemaphorePermit;

use crate::memory_budget::MemoryPermit;

/// What a batch on its way to the router holds: its place in the source queue and its bytes in
/// the sources' share of the memory budget. Dropped once the batch is routed.
pub struct SourceCredit {
    _queue: OwnedSemaphorePermit,
    _memory: Option<MemoryPermit>,
}

impl SourceCredit {
    /// A credit of the source queue and the memory it pays for.
    pub fn new(queue: OwnedSemaphorePermit, memory: Option<MemoryPermit>) -> SourceCredit {
        SourceCredit { _queue: queue, _memory: memory }
    }
}

/// What a delivery to a sink holds until its records are durable: places in the sink's queue
/// (one per record) and the records' bytes in the sinks' share of the memory budget.
pub struct SinkCredit {
    _queue: OwnedSemaphorePermit,
    _memory: Option<MemoryPermit>,
}

impl SinkCredit {
    /// A credit of the sink's queue and the memory it pays for.
    pub fn new(queue: OwnedSemaphorePermit, memory: Option<MemoryPermit>) -> SinkCredit {
        SinkCredit { _queue: queue, _memory: memory }
    }
}
