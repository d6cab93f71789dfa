//! The commit coordinator: owns the [`OffsetLedger`] and tells each source which offset it may
//! commit. This is where an offset becomes committable — only once every result that depends on
//! the records before it is durable (DESIGN §3.2).
//!
//! Ordering: a build actor reports the records it emitted (`Emitted`) before it sends them to
//! the sinks, and sinks report `Durable` after writing them, so the ledger always learns of a
//! hold before its release.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use meltstream_engine::input::event::InputId;
use meltstream_engine::offset_ledger::{HolderId, OffsetLedger};

use crate::engine_stats::EngineStats;
use crate::ports::messages::{CommitListener, CommitMsg};
use crate::progress::{Progress, ProgressBoard};

/// State of the commit coordinator.
pub struct CommitState {
    ledger: OffsetLedger,
    holders: HashMap<HolderId, Vec<InputId>>,
    listeners: HashMap<InputId, Vec<CommitListener>>,
    stats: Arc<EngineStats>,
    board: ProgressBoard,
}

/// The commit coordinator actor.
pub struct CommitCoordinator;

impl CommitState {
    fn publish(&mut self) {
        let advanced = self.ledger.advance_all();
        for input in self.ledger.inputs() {
            if let (Some(resume), Some(emitted_through)) = (self.ledger.committed(input), self.ledger.emitted_through(input)) {
                self.board.publish(input, Progress { resume, emitted_through });
            }
        }
        for (input, offset) in advanced {
            self.stats.set_committed(input, offset);
            metrics::gauge!("meltstream_committed_offset", "input" => meltstream_engine::input::event::input_name(input).to_string()).set(offset as f64);
            if let Some(ls) = self.listeners.get(&input) {
                for l in ls {
                    l(input, offset);
                }
            }
        }
    }
}

impl Actor for CommitCoordinator {
    type Msg = CommitMsg;
    type State = CommitState;
    type Arguments = (Arc<EngineStats>, Duration, ProgressBoard);

    async fn pre_start(&self, myself: ActorRef<CommitMsg>, (stats, every, board): Self::Arguments) -> Result<CommitState, ActorProcessingErr> {
        myself.send_interval(every, || CommitMsg::Tick);
        Ok(CommitState { ledger: OffsetLedger::new(), holders: HashMap::new(), listeners: HashMap::new(), stats, board })
    }

    async fn handle(&self, _myself: ActorRef<CommitMsg>, msg: CommitMsg, st: &mut CommitState) -> Result<(), ActorProcessingErr> {
        match msg {
            CommitMsg::Register(span, parts) => st.ledger.register(span, parts),
            CommitMsg::Progress { holder, emitted, holds, released } => {
                for (h, n) in emitted {
                    st.ledger.emitted(h, n);
                }
                let inputs: Vec<InputId> = holds.iter().map(|h| h.0).collect();
                for old in st.holders.get(&holder).into_iter().flatten() {
                    if !inputs.contains(old) {
                        st.ledger.set_window_hold(holder, *old, None);
                    }
                }
                for h in holds.iter() {
                    st.ledger.set_window_hold(holder, h.0, Some(h.1));
                }
                st.holders.insert(holder, inputs);
                if let Some(r) = released {
                    st.ledger.release(r);
                }
            }
            CommitMsg::Emitted(v) => {
                for (h, n) in v {
                    st.ledger.emitted(h, n);
                }
            }
            CommitMsg::Durable(v) => {
                for (h, n) in v {
                    st.ledger.durable(h, n);
                }
            }
            CommitMsg::Release(h) => st.ledger.release(h),
            CommitMsg::HolderGone(holder) => {
                st.ledger.drop_holder(holder);
                st.holders.remove(&holder);
            }
            CommitMsg::Listen(input, l) => st.listeners.entry(input).or_default().push(l),
            CommitMsg::Tick => st.publish(),
            CommitMsg::Forget(inputs) => {
                for i in inputs {
                    st.ledger.forget(i);
                    st.listeners.remove(&i);
                }
            }
            CommitMsg::Committed(reply) => {
                st.publish();
                let m = st.stats.committed().into_iter().collect();
                let _ = reply.send(m);
            }
        }
        Ok(())
    }
}
