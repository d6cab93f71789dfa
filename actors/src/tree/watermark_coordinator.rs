//! The watermark coordinator: tracks every input's event-time progress (bounded
//! out-of-orderness, idle inputs, never backwards) and hands each advance of an input's own
//! watermark to the router, which makes it the pending watermark of that input's builds behind
//! the data it already sent — so a watermark never overtakes a batch it covers, and a build's
//! windows follow its own partition, whatever the others do. The combined watermark (the
//! minimum over inputs) is kept for the metrics and the admin API. Each advance is stamped with the wall time at
//! which it was computed: window-close latency starts there. Data-driven advances are answered to the
//! router's `Observe` call (deterministic with respect to the data order); idle-driven ones are
//! sent on the coordinator's tick.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use meltstream_engine::input::event::InputId;
use meltstream_engine::windows::watermark::WatermarkTracker;

use crate::ports::clock::now_wall_ns;
use crate::ports::messages::{RouterMsg, StampedWatermark, WatermarkMsg};

/// Arguments: bound, idle timeout, publication period, and the router.
pub struct WatermarkArgs {
    /// Out-of-orderness bound, ns.
    pub bound_ns: i64,
    /// Idle timeout, ns.
    pub idle_ns: i64,
    /// Publication period.
    pub every: Duration,
    /// Where advances go.
    pub router: ActorRef<RouterMsg>,
    /// Engine counters.
    pub stats: std::sync::Arc<crate::engine_stats::EngineStats>,
}

/// State.
pub struct WatermarkState {
    tracker: WatermarkTracker,
    args: WatermarkArgs,
}

/// The watermark coordinator actor.
pub struct WatermarkCoordinator;

impl WatermarkState {
    /// The inputs' watermarks that advanced at wall time `now`, stamped with it (window-close
    /// latency starts here); updates the combined watermark.
    fn advances(&mut self, now: i64) -> Vec<(InputId, StampedWatermark)> {
        if let Some(wm) = self.tracker.advance(now) {
            self.args.stats.watermark_ns.store(wm, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("meltstream_watermark_seconds").set(wm as f64 / 1e9);
        }
        self.tracker.advance_inputs(now).into_iter().map(|(i, wm)| (i, StampedWatermark { wm, computed_wall_ns: now, ahead_of_data: false, position: None })).collect()
    }

    fn publish(&mut self) {
        let adv = self.advances(now_wall_ns());
        if !adv.is_empty() {
            let _ = self.args.router.cast(RouterMsg::Watermarks(adv));
        }
    }
}

impl Actor for WatermarkCoordinator {
    type Msg = WatermarkMsg;
    type State = WatermarkState;
    type Arguments = WatermarkArgs;

    async fn pre_start(&self, myself: ActorRef<WatermarkMsg>, args: WatermarkArgs) -> Result<WatermarkState, ActorProcessingErr> {
        myself.send_interval(args.every, || WatermarkMsg::Tick);
        Ok(WatermarkState { tracker: WatermarkTracker::new(args.bound_ns, args.idle_ns), args })
    }

    async fn handle(&self, _myself: ActorRef<WatermarkMsg>, msg: WatermarkMsg, st: &mut WatermarkState) -> Result<(), ActorProcessingErr> {
        match msg {
            WatermarkMsg::Register(i) => st.tracker.register(i, now_wall_ns()),
            WatermarkMsg::Unregister(i) => st.tracker.remove(i),
            WatermarkMsg::Observe(i, t, reply) => {
                let now = now_wall_ns();
                st.tracker.observe(i, t, now);
                let _ = reply.send(st.advances(now));
            }
            WatermarkMsg::Backlog(i) => st.tracker.touch(i, now_wall_ns()),
            WatermarkMsg::Finish(i) => {
                st.tracker.finish(i, now_wall_ns());
                st.publish();
            }
            WatermarkMsg::Tick => st.publish(),
            WatermarkMsg::Current(reply) => {
                let _ = reply.send(st.tracker.current());
            }
        }
        Ok(())
    }
}
