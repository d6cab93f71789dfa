//! Generated sources: the embedded fleet simulator
//! ([`meltstream_engine::simulator::Simulator`]) and the R1 workload generator, as fast as the
//! engine takes them or at real pace (event time follows the wall clock).

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use meltstream_engine::input::batch::RecordBatch;
use meltstream_engine::simulator::r1::R1Generator;
use meltstream_engine::simulator::Simulator;
use meltstream_engine::topology::{Pace, R1Config, SimulatorConfig};

/// Something that produces batches until it has no more.
pub trait Generator: Send + 'static {
    /// The next batch, `None` at the end.
    fn next_batch(&mut self) -> Option<RecordBatch>;
}

impl Generator for Simulator {
    fn next_batch(&mut self) -> Option<RecordBatch> {
        Simulator::next_batch(self)
    }
}

impl Generator for R1Generator {
    fn next_batch(&mut self) -> Option<RecordBatch> {
        R1Generator::next_batch(self)
    }
}

/// What to generate.
pub enum GeneratorConfig {
    /// The fleet simulator.
    Simulator(SimulatorConfig),
    /// The R1 workload.
    R1(R1Config),
}

use crate::ports::clock::now_wall_ns;
use crate::ports::source_ctx::SourceCtx;

/// Messages of the simulator source.
pub enum SimulatorMsg {
    /// Generate the next batch.
    Pump,
    /// Stop early (shutdown).
    Stop,
}

/// Arguments.
pub struct SimulatorArgs {
    /// Link to the engine.
    pub ctx: SourceCtx,
    /// What to generate.
    pub config: GeneratorConfig,
}

/// State.
pub struct SimulatorState {
    ctx: SourceCtx,
    sim: Box<dyn Generator>,
    pace: Pace,
    started: Option<(Instant, i64)>,
    done: bool,
}

/// The simulator source actor.
pub struct SimulatorSource;

impl Actor for SimulatorSource {
    type Msg = SimulatorMsg;
    type State = SimulatorState;
    type Arguments = SimulatorArgs;

    async fn pre_start(&self, myself: ActorRef<SimulatorMsg>, args: SimulatorArgs) -> Result<SimulatorState, ActorProcessingErr> {
        let (sim, pace): (Box<dyn Generator>, Pace) = match &args.config {
            GeneratorConfig::Simulator(c) => (Box::new(Simulator::new(c, args.ctx.input)), c.pace),
            GeneratorConfig::R1(c) => (Box::new(R1Generator::new(args.ctx.input, c.builds, c.samples, c.batch_samples, c.seed)), Pace::Fast),
        };
        let _ = myself.cast(SimulatorMsg::Pump);
        Ok(SimulatorState { ctx: args.ctx, sim, pace, started: None, done: false })
    }

    async fn handle(&self, myself: ActorRef<SimulatorMsg>, msg: SimulatorMsg, st: &mut SimulatorState) -> Result<(), ActorProcessingErr> {
        if st.done {
            return Ok(());
        }
        let mut end = matches!(msg, SimulatorMsg::Stop);
        if !end {
            match st.sim.next_batch() {
                None => end = true,
                Some(batch) => {
                    // Generated now; at real pace, each sample is read when its event time is
                    // due, so the batch's first sample was read when the batch's earliest event
                    // time was due (the generator's batching is part of the latency, as a
                    // Kafka source's linger is).
                    let mut read_wall_ns = now_wall_ns();
                    if st.pace == Pace::Real {
                        let t = batch.max_t_ns;
                        let (wall0, ev0) = *st.started.get_or_insert((Instant::now(), t));
                        let due = Duration::from_nanos((t - ev0).max(0) as u64);
                        let elapsed = wall0.elapsed();
                        if due > elapsed {
                            tokio::time::sleep(due - elapsed).await;
                        }
                        let first = batch.blocks.iter().map(|h| h.t0_ns).chain(batch.layers.iter().map(|e| e.t_ns)).min().unwrap_or(t);
                        read_wall_ns = now_wall_ns() - (t - first).max(0);
                    }
                    if !st.ctx.send(batch, read_wall_ns).await {
                        end = true;
                    }
                }
            }
        }
        if end {
            st.done = true;
            tracing::info!(source = %st.ctx.name, "simulator finished");
            st.ctx.ended();
            myself.stop(None);
        } else {
            let _ = myself.cast(SimulatorMsg::Pump);
        }
        Ok(())
    }
}
