//! The root of the actor tree: starts the commit coordinator, the sinks, the router (which
//! supervises the build actors), the watermark coordinator and the sources; drains them in order
//! when the sources end or on shutdown; escalates any failure it cannot absorb by stopping the
//! engine with the reason.
//!
//! # Shutdown
//! Sources stop → the router closes every build (their results go to the sinks) → every sink is
//! drained (durable) → the committable offsets are published one last time → the tree stops.
//! With a replayable source (Kafka), a requested shutdown closes builds *without* emitting their
//! open windows: the stored progress stops before them and a restart reads them whole again, so
//! a stop never produces a partial layer.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::ports::messages::{CommitMsg, RouterMsg, SinkMsg, Started, SupervisorMsg};

/// Arguments: how many sources, and where to report a failure.
pub struct SupervisorArgs {
    /// Number of sources.
    pub sources: usize,
    /// The reason the engine stopped abnormally, for the caller.
    pub failure: Arc<Mutex<Option<String>>>,
    /// Set when the failure is a [`SupervisorMsg::Restart`], or a failed child of a tree that
    /// may start again ([`SupervisorArgs::restart_on_failure`]).
    pub restart: Arc<AtomicBool>,
    /// Set when the stop is a failed child (then `restart` says whether it may start again):
    /// [`CRASHED_RUNNING`] or [`CRASHED_STOPPING`].
    pub crashed: Arc<AtomicU8>,
    /// Whether a failed child may start the tree again from the stored progress: every source
    /// is replayable (Kafka).
    pub restart_on_failure: bool,
    /// On a requested shutdown, stop without emitting open windows (the sources are
    /// replayable from stored progress: Kafka).
    pub keep_open_on_shutdown: bool,
}

/// A child failed while the engine was running.
pub const CRASHED_RUNNING: u8 = 1;
/// A child failed while the engine was already stopping (a shutdown or a restart asked for).
pub const CRASHED_STOPPING: u8 = 2;

/// State.
pub struct SupervisorState {
    remaining: usize,
    started: Option<Box<Started>>,
    failure: Arc<Mutex<Option<String>>>,
    restart: Arc<AtomicBool>,
    crashed: Arc<AtomicU8>,
    restart_on_failure: bool,
    draining: bool,
    pending_done: usize,
    shutdown_requested: bool,
    keep_open_on_shutdown: bool,
}

/// The supervisor actor.
pub struct Supervisor;

impl SupervisorState {
    async fn drain(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let res = self.drain_inner(myself).await;
        if let Err(e) = &res {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("draining failed: {e}"));
        }
        res
    }

    async fn drain_inner(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        if self.draining {
            return Ok(());
        }
        self.draining = true;
        let Some(s) = self.started.as_ref() else { return Ok(()) };
        tracing::info!("sources ended; draining builds and sinks");
        let emit_open = !(self.shutdown_requested && self.keep_open_on_shutdown);
        if !emit_open {
            tracing::info!("stopping without emitting open windows: they are read again from the stored progress on restart");
        }
        ractor::call!(s.router, |r| RouterMsg::Drain(r, emit_open)).map_err(|e| format!("draining the router: {e}"))?;
        for (name, sink) in &s.sinks {
            ractor::call!(sink, SinkMsg::Drain).map_err(|e| format!("draining sink {name}: {e}"))?;
        }
        let committed = ractor::call!(s.commit, CommitMsg::Committed).map_err(|e| format!("final commit: {e}"))?;
        tracing::info!(?committed, "drained; committed offsets");
        myself.stop_children(None);
        myself.stop(Some("drained".into()));
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, _myself: ActorRef<SupervisorMsg>, args: SupervisorArgs) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            remaining: args.sources,
            started: None,
            failure: args.failure,
            restart: args.restart,
            crashed: args.crashed,
            restart_on_failure: args.restart_on_failure,
            draining: false,
            pending_done: 0,
            shutdown_requested: false,
            keep_open_on_shutdown: args.keep_open_on_shutdown,
        })
    }

    async fn handle(&self, myself: ActorRef<SupervisorMsg>, msg: SupervisorMsg, st: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Started(s) => {
                // A stop asked for (signal, lost partitions) before the tree finished starting.
                if st.shutdown_requested {
                    for (_, stop) in &s.sources {
                        stop();
                    }
                }
                st.started = Some(s);
                // Sources that ended before the tree finished starting.
                for _ in 0..std::mem::take(&mut st.pending_done) {
                    st.remaining = st.remaining.saturating_sub(1);
                }
                if st.remaining == 0 {
                    st.drain(&myself).await?;
                }
            }
            SupervisorMsg::SourceDone(input) => {
                tracing::info!(input, "source ended");
                if st.started.is_none() {
                    st.pending_done += 1;
                    return Ok(());
                }
                st.remaining = st.remaining.saturating_sub(1);
                if st.remaining == 0 {
                    st.drain(&myself).await?;
                }
            }
            SupervisorMsg::Restart(reason) => {
                if st.shutdown_requested {
                    tracing::info!(%reason, "already stopping");
                    return Ok(());
                }
                tracing::error!(%reason, "stopping without emitting open windows, to start again from the stored progress");
                *st.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                st.restart.store(true, Ordering::SeqCst);
                st.shutdown_requested = true;
                if let Some(s) = &st.started {
                    for (_, stop) in &s.sources {
                        stop();
                    }
                }
            }
            SupervisorMsg::Shutdown => {
                tracing::info!("shutdown requested; stopping sources");
                st.shutdown_requested = true;
                if let Some(s) = &st.started {
                    for (_, stop) in &s.sources {
                        stop();
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, myself: ActorRef<SupervisorMsg>, evt: SupervisionEvent, st: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let who = cell.get_name().unwrap_or_else(|| cell.get_id().to_string());
            let msg = format!("{who} failed: {err}");
            if st.restart_on_failure {
                tracing::error!(actor = %who, error = %err, "a part of the engine failed; stopping the tree, to start again from the stored progress within the restart intensity");
            } else {
                tracing::error!(actor = %who, error = %err, "a part of the engine failed; a source cannot be read again from a stored position, so the engine stops");
            }
            *st.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
            // Whether the stop had been asked for before: a failure that came first, then a
            // signal, is a stop as asked (the stored progress is where a next start resumes).
            st.crashed.store(if st.shutdown_requested { CRASHED_STOPPING } else { CRASHED_RUNNING }, Ordering::SeqCst);
            st.restart.store(st.restart_on_failure, Ordering::SeqCst);
            // Wait for the tree to be down before saying so: a Kafka source closes its consumer
            // in its `post_stop` (up to 30 s), and a caller that gives up on the engine next
            // must not tear the runtime down under a consumer still closing.
            myself.stop_children_and_wait(None, Some(std::time::Duration::from_secs(45))).await;
            myself.stop(Some("failed".into()));
        }
        Ok(())
    }
}
