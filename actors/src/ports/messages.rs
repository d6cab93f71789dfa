//! The messages that cross rooms: what sources send the router, the watermark coordinator and
//! the supervisor; what the tree sends the sinks; what sinks and build actors tell the commit
//! coordinator. Each actor's `Msg` lives here, beside the others, so that a source or a sink can
//! talk to the tree without importing it.
//!
//! Never put behaviour here: these are plain enums; the actors that handle them live in
//! `tree/` and `sinks/`.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{ActorCell, ActorRef, RpcReplyPort};

use meltstream_engine::input::batch::{RecordBatch, SourceSpan};
use meltstream_engine::input::event::InputId;
use meltstream_engine::input::event::{BuildId, TimeNs};
use meltstream_engine::offset_ledger::{Hold, HoldSet, HolderId};
use meltstream_engine::records::Emitted;

use crate::ports::credits::{SinkCredit, SourceCredit};
use crate::progress::{StoredProgress, StoredStates, TopicPartition};

/// A watermark and the wall time (ns) at which it was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StampedWatermark {
    /// Event time, ns.
    pub wm: TimeNs,
    /// Wall clock when the watermark coordinator computed it (for coalesced advances, the
    /// earliest of them), ns: window-close latency starts here.
    pub computed_wall_ns: i64,
    /// Ahead of what the input's records routed so far give (`max_t − bound`): taken on the
    /// wall clock (the input went idle), so a build records it for a replay.
    pub ahead_of_data: bool,
    /// The input's position when it was computed (every record before it routed), for a build
    /// living in that input alone: the build's partition position moves there before it takes
    /// the watermark. Without it a build's position would stop at the end of the last batch
    /// holding one of its records, and a replay whose batches end elsewhere would never reach
    /// a position the run it replaces recorded a decision at (the build's end, say).
    pub position: Option<u64>,
}

/// Messages of the router.
pub enum RouterMsg {
    /// A decoded source batch, its credit, and the wall time its first record was read.
    Batch(RecordBatch, Option<SourceCredit>, i64),
    /// The input has no more data.
    InputEnded(InputId),
    /// Inputs' own watermarks advanced (from the coordinator), each stamped with when it was
    /// computed.
    Watermarks(Vec<(InputId, StampedWatermark)>),
    /// A build's `build_end` is behind the watermark.
    BuildFinished(BuildId),
    /// Periodic: idle builds.
    Tick,
    /// Close every build and reply when their results are with the sinks.
    Drain(RpcReplyPort<()>, bool),
    /// Set the watermark coordinator (it is started after the router).
    SetCoordinator(ActorRef<WatermarkMsg>),
    /// The partitions of these inputs were revoked: drop their builds without emitting anything
    /// (their next owner reads them again from the stored progress) and forget the inputs.
    DropInputs(Vec<InputId>),
}

/// Messages of the watermark coordinator.
pub enum WatermarkMsg {
    /// An input exists (it holds the watermark until it has data, idles or ends).
    Register(InputId),
    /// The router forwarded data of `input` up to this event time; replies with the inputs'
    /// watermarks that advanced, so that the router queues them right behind that data.
    Observe(InputId, TimeNs, RpcReplyPort<Vec<(InputId, StampedWatermark)>>),
    /// The input has a backlog (records not read yet): it is not idle.
    Backlog(InputId),
    /// The input ended.
    Finish(InputId),
    /// The input's partition was revoked: it no longer counts.
    Unregister(InputId),
    /// Periodic: idleness and publication.
    Tick,
    /// The current watermark.
    Current(RpcReplyPort<TimeNs>),
}

/// Told to a source when its committable offset moves.
pub type CommitListener = Arc<dyn Fn(InputId, u64) + Send + Sync>;

/// Messages of the commit coordinator.
pub enum CommitMsg {
    /// A batch entered the engine and will be released by `parts` consumers.
    Register(SourceSpan, u32),
    /// A build actor's progress: results it emitted (hold, deliveries), its current window
    /// holds, and the batch it finished.
    Progress {
        /// The build actor.
        holder: HolderId,
        /// Deliveries made, per hold.
        emitted: Vec<(Hold, u32)>,
        /// Current window holds (replacing the previous ones).
        holds: HoldSet,
        /// The batch it finished, if any.
        released: Option<Hold>,
    },
    /// Deliveries emitted outside a build (dead letters by the router).
    Emitted(Vec<(Hold, u32)>),
    /// Deliveries made durable by a sink.
    Durable(Vec<(Hold, u32)>),
    /// A consumer finished a batch without emitting (e.g. the router for dead letters only).
    Release(Hold),
    /// A build actor is gone: its window holds no longer count.
    HolderGone(HolderId),
    /// Listen for commits of an input.
    Listen(InputId, CommitListener),
    /// Recompute and publish committable offsets.
    Tick,
    /// These inputs' partitions were revoked: their batches and holds no longer count.
    Forget(Vec<InputId>),
    /// Committed offsets now.
    Committed(RpcReplyPort<HashMap<InputId, u64>>),
}

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// A source has ended.
    SourceDone(InputId),
    /// Stop the sources and drain (SIGINT/SIGTERM).
    Shutdown,
    /// Stop as on a requested shutdown (open windows are not emitted where the sources are
    /// replayable) and report `EngineError::Restart`, so that the caller starts the
    /// engine again, from the stored progress. Sent by a Kafka source that could not read the
    /// stored progress of partitions assigned to it (the run is fenced first).
    Restart(String),
    /// The parts it supervises, once started.
    Started(Box<Started>),
}

/// What the engine builder started under the supervisor.
pub struct Started {
    /// Sources, to be told to stop on shutdown.
    pub sources: Vec<(ActorCell, Box<dyn Fn() + Send + Sync>)>,
    /// The router.
    pub router: ActorRef<RouterMsg>,
    /// The commit coordinator.
    pub commit: ActorRef<CommitMsg>,
    /// The sink actors by name, drained in this order.
    pub sinks: Vec<(String, ActorRef<SinkMsg>)>,
}

/// Messages of a sink actor.
pub enum SinkMsg {
    /// Records, with one permit each of the sink's queue.
    Records(Vec<Emitted>, SinkCredit),
    /// Periodic flush.
    Tick,
    /// Flush everything and reply when durable.
    Drain(RpcReplyPort<()>),
    /// Partitions newly assigned while running: read what this (transactional) sink stored for
    /// them, take it as this run's starting point for them, and reply with it.
    ReadProgress(Vec<TopicPartition>, RpcReplyPort<Result<(StoredProgress, StoredStates), String>>),
}
