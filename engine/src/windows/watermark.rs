//! Event-time watermarks over several inputs: bounded out-of-orderness per input, idle inputs
//! that stop holding the others back after a timeout, and a combined watermark that never goes
//! backwards. Pure: wall-clock time is passed in, so tests drive it without a runtime.
//!
//! Semantics follow Flink's `StatusWatermarkValve`: the watermark is the minimum over active
//! inputs of `max_event_time − bound`; an input with no data for `idle_timeout` is idle and
//! ignored; when every input is idle the watermark may advance to the maximum over them; a
//! finished input no longer counts; when every input has finished the watermark is `MAX`.
//!
//! Builds do not follow that combined watermark but their own input's
//! ([`WatermarkTracker::advance_inputs`]): `max_event_time − bound` of the input alone, its
//! maximum once the input is idle, `MAX` once it finished. A build lives in one input (a Kafka
//! partition), so what its windows close, and which of its samples are late, depends on the
//! order of that input's records, never on how fast other partitions are read, nor on which
//! other partitions the process owns, as long as data flows. When every live input has been
//! idle for the timeout, all of them move to the largest event time seen anywhere (the stream
//! is quiet; this closes the last, end-less layer of a stream that goes quiet). The combined
//! watermark remains the engine's headline (metrics, admin API).

use crate::input::event::{InputId, TimeNs};

/// The watermark value once every input has ended: every window closes.
pub const END_OF_TIME: TimeNs = TimeNs::MAX;

#[derive(Clone, Debug)]
struct InputState {
    id: InputId,
    /// Largest event time seen, `MIN` before any.
    max_t: TimeNs,
    /// Wall-clock time of the last data, ns.
    last_data_wall: i64,
    finished: bool,
    /// This input's own watermark as last reported by `advance_inputs`.
    reported: TimeNs,
}

/// Combines the progress of every input into one watermark.
#[derive(Clone, Debug)]
pub struct WatermarkTracker {
    bound_ns: i64,
    idle_ns: i64,
    inputs: Vec<InputState>,
    current: TimeNs,
}

impl WatermarkTracker {
    /// A tracker with the given out-of-orderness bound and idle timeout.
    pub fn new(bound_ns: i64, idle_ns: i64) -> WatermarkTracker {
        WatermarkTracker { bound_ns, idle_ns, inputs: Vec::new(), current: TimeNs::MIN }
    }

    /// Declares an input: it holds the watermark back until it has data, goes idle or ends.
    pub fn register(&mut self, input: InputId, now_wall: i64) {
        if !self.inputs.iter().any(|i| i.id == input) {
            self.inputs.push(InputState { id: input, max_t: TimeNs::MIN, last_data_wall: now_wall, finished: false, reported: TimeNs::MIN });
        }
    }

    /// Forgets `input` (its partition went to another process).
    pub fn remove(&mut self, input: InputId) {
        self.inputs.retain(|s| s.id != input);
    }

    /// Records data of `input` up to event time `max_t`.
    pub fn observe(&mut self, input: InputId, max_t: TimeNs, now_wall: i64) {
        self.register(input, now_wall);
        if let Some(s) = self.inputs.iter_mut().find(|i| i.id == input) {
            s.max_t = s.max_t.max(max_t);
            s.last_data_wall = now_wall;
        }
    }

    /// Records that `input` has no more data.
    pub fn finish(&mut self, input: InputId, now_wall: i64) {
        self.register(input, now_wall);
        if let Some(s) = self.inputs.iter_mut().find(|i| i.id == input) {
            s.finished = true;
        }
    }

    /// Marks `input` as not idle at wall time `now_wall` without data: it has a backlog (a Kafka
    /// partition behind its end, e.g. under backpressure), so the watermark must wait for it
    /// rather than run ahead and make its records late.
    pub fn touch(&mut self, input: InputId, now_wall: i64) {
        if let Some(s) = self.inputs.iter_mut().find(|i| i.id == input) {
            s.last_data_wall = s.last_data_wall.max(now_wall);
        }
    }

    /// Recomputes the watermark at wall time `now_wall`; returns it when it advanced.
    pub fn advance(&mut self, now_wall: i64) -> Option<TimeNs> {
        let wm_of = |s: &InputState| if s.max_t == TimeNs::MIN { TimeNs::MIN } else { s.max_t.saturating_sub(self.bound_ns) };
        let live: Vec<&InputState> = self.inputs.iter().filter(|s| !s.finished).collect();
        let candidate = if self.inputs.is_empty() {
            return None;
        } else if live.is_empty() {
            END_OF_TIME
        } else {
            let active: Vec<&&InputState> = live.iter().filter(|s| now_wall - s.last_data_wall < self.idle_ns).collect();
            if active.is_empty() {
                // Nothing arrived anywhere for the idle timeout: the out-of-order stragglers the
                // bound waits for are not coming, so everything seen so far is complete. This is
                // what closes the last layer and ends the last build of a stream that never
                // ends (Kafka) once it goes quiet.
                live.iter().map(|s| s.max_t).max().unwrap_or(TimeNs::MIN)
            } else {
                active.iter().map(|s| wm_of(s)).min().unwrap_or(TimeNs::MIN)
            }
        };
        if candidate > self.current {
            self.current = candidate;
            Some(candidate)
        } else {
            None
        }
    }

    /// The current watermark (`MIN` before any).
    pub fn current(&self) -> TimeNs {
        self.current
    }

    /// Recomputes every input's own watermark at wall time `now_wall` (see the module docs) and
    /// returns those that advanced since the last call.
    pub fn advance_inputs(&mut self, now_wall: i64) -> Vec<(InputId, TimeNs)> {
        let idle_ns = self.idle_ns;
        let live = self.inputs.iter().filter(|s| !s.finished);
        let all_idle = live.clone().all(|s| now_wall - s.last_data_wall >= idle_ns);
        // Every live input quiet: the whole stream is, and everything seen anywhere is complete
        // (what closes the last, end-less layer of a stream that goes quiet, as the seed's
        // example does). While any input has data, each follows its own.
        let quiet_to = if all_idle { live.map(|s| s.max_t).max() } else { None };
        let mut out = Vec::new();
        for s in &mut self.inputs {
            let wm = if s.finished {
                END_OF_TIME
            } else if let Some(q) = quiet_to.filter(|q| *q > TimeNs::MIN) {
                q
            } else if s.max_t == TimeNs::MIN {
                TimeNs::MIN
            } else if now_wall - s.last_data_wall >= self.idle_ns {
                // Quiet for the idle timeout: the stragglers the bound waits for are not coming.
                s.max_t
            } else {
                s.max_t.saturating_sub(self.bound_ns)
            };
            if wm > s.reported {
                s.reported = wm;
                out.push((s.id, wm));
            }
        }
        out
    }

    /// The watermark of `input` as last reported (`MIN` for an input never seen).
    pub fn input_watermark(&self, input: InputId) -> TimeNs {
        self.inputs.iter().find(|s| s.id == input).map_or(TimeNs::MIN, |s| s.reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn min_over_active_inputs_with_bound() {
        let mut w = WatermarkTracker::new(10, 1_000);
        w.register(0, 0);
        w.register(1, 0);
        w.observe(0, 100, 0);
        assert_eq!(w.advance(0), None, "input 1 holds it back");
        w.observe(1, 50, 0);
        assert_eq!(w.advance(0), Some(40));
        w.observe(1, 500, 10);
        assert_eq!(w.advance(10), Some(90));
    }

    #[test]
    fn idle_input_stops_holding_back() {
        let mut w = WatermarkTracker::new(0, 1_000);
        w.observe(0, 100, 0);
        w.observe(1, 10, 0);
        assert_eq!(w.advance(0), Some(10));
        w.observe(0, 200, 500);
        assert_eq!(w.advance(500), None);
        assert_eq!(w.advance(1_200), Some(200), "input 1 idle after 1000 ns of wall time");
        w.observe(1, 20, 1_300);
        assert_eq!(w.advance(1_300), None, "never backwards");
        assert_eq!(w.current(), 200);
    }

    #[test]
    fn an_input_with_a_backlog_is_not_idle() {
        let mut w = WatermarkTracker::new(0, 1_000);
        w.observe(0, 100, 0);
        w.observe(1, 10, 0);
        w.observe(0, 500, 900);
        w.touch(1, 900);
        assert_eq!(w.advance(1_500), Some(10), "input 1 is behind, not idle: it holds the watermark");
        assert_eq!(w.advance(2_000), Some(500), "no backlog reported for 1000 ns: idle");
    }

    #[test]
    fn all_idle_releases_the_bound() {
        let mut w = WatermarkTracker::new(50, 1_000);
        w.observe(0, 100, 0);
        assert_eq!(w.advance(0), Some(50));
        assert_eq!(w.advance(1_000), Some(100), "quiet for the idle timeout: everything seen is complete");
    }

    #[test]
    fn end_of_inputs_is_end_of_time() {
        let mut w = WatermarkTracker::new(0, 1_000);
        w.observe(0, 100, 0);
        w.finish(0, 0);
        assert_eq!(w.advance(0), Some(END_OF_TIME));
    }

    proptest! {
        #[test]
        fn never_backwards(ops in proptest::collection::vec((0u64..3, 0i64..10_000, 0i64..100), 1..200)) {
            let mut w = WatermarkTracker::new(5, 50);
            let mut wall = 0;
            let mut last = TimeNs::MIN;
            for (input, t, dwall) in ops {
                wall += dwall;
                w.observe(input, t, wall);
                w.advance(wall);
                prop_assert!(w.current() >= last);
                last = w.current();
            }
        }
    }

    #[test]
    fn each_input_has_its_own_watermark() {
        let mut w = WatermarkTracker::new(10, 1_000);
        w.register(0, 0);
        w.register(1, 0);
        w.observe(0, 100, 0);
        assert_eq!(w.advance_inputs(0), vec![(0, 90)], "input 1 holds back nobody but itself");
        w.observe(1, 50, 0);
        assert_eq!(w.advance_inputs(0), vec![(1, 40)]);
        assert_eq!(w.advance_inputs(0), vec![], "nothing new");
        w.observe(0, 95, 500);
        assert_eq!(w.advance_inputs(500), vec![], "never backwards");
        assert_eq!(w.advance_inputs(1_200), vec![(1, 50)], "input 1 idle: its maximum; input 0 still active");
        assert_eq!(w.advance_inputs(2_000), vec![(0, 100), (1, 100)], "all quiet: everything seen anywhere is complete");
        w.finish(0, 2_100);
        assert_eq!(w.advance_inputs(2_100), vec![(0, END_OF_TIME)]);
        assert_eq!(w.input_watermark(1), 100);
    }
}
