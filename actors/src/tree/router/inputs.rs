//! The router's bookkeeping of its inputs: how metrics and `/health/ready` name each one, the
//! advance of each input's watermark to its builds, and the inputs a rebalance took away.

use meltstream_engine::input::event::{InputId, TimeNs};

use crate::ports::messages::{CommitMsg, StampedWatermark};

use super::RouterState;

impl RouterState {
    /// An input as metrics and `/health/ready` name it: `topic/partition` for a Kafka
    /// partition, else the source's name.
    pub(super) fn input_label(&mut self, input: InputId) -> String {
        if let Some(l) = self.labels.get(&input) {
            return l.clone();
        }
        let label = match self.args.board.partition_of(input) {
            Some((t, p)) => format!("{t}/{p}"),
            None => self.args.dead_letters.source_names.get(meltstream_engine::input::event::input_name(input) as usize).cloned().unwrap_or_else(|| input.to_string()),
        };
        self.labels.insert(input, label.clone());
        label
    }

    /// Makes the advance of each input's watermark the pending watermark of that input's builds
    /// (behind the data already sent to them).
    pub(super) fn advance(&mut self, advances: Vec<(InputId, StampedWatermark)>) {
        for (input, wm) in advances {
            let w = self.watermarks.entry(input).or_insert(TimeNs::MIN);
            if wm.wm <= *w {
                continue;
            }
            *w = wm.wm;
            // How far the input's watermark stands behind its freshest event time.
            if let Some(&t) = self.max_t_seen.get(&input).filter(|t| **t > TimeNs::MIN && wm.wm < TimeNs::MAX) {
                let label = self.input_label(input);
                let lag = t.saturating_sub(wm.wm).max(0);
                metrics::gauge!("meltstream_watermark_lag_seconds", "input" => label.clone()).set(lag as f64 / 1e9);
                self.args.stats.health.input_lag(&label, lag);
            }
            let data = self.max_t_seen.get(&input).map_or(TimeNs::MIN, |t| t.saturating_sub(self.args.settings.watermark_bound_ns));
            let ahead_of_data = wm.wm > data;
            let position = self.positions.get(&input).copied();
            let Some(builds) = self.by_input.get(&input) else { continue };
            let mut woken = Vec::new();
            for b in builds {
                let Some(e) = self.builds.get_mut(b) else { continue };
                let of_build = e.inputs.iter().map(|i| self.watermarks.get(i).copied().unwrap_or(TimeNs::MIN)).min().unwrap_or(TimeNs::MIN);
                if of_build > e.watermark {
                    e.watermark = of_build;
                    // A build of this input alone moves to its position (see `StampedWatermark`).
                    let position = position.filter(|_| e.inputs == [input]);
                    e.queue.advance(StampedWatermark { wm: of_build, computed_wall_ns: wm.computed_wall_ns, ahead_of_data, position });
                    woken.push(b.clone());
                }
            }
            for b in woken {
                self.wake(&b);
            }
        }
    }

    /// Drops the builds of revoked inputs without emitting anything: their actors stop, their
    /// state goes, and the ledger forgets the inputs. What they had open or queued is read
    /// again from the stored progress by the partitions' next owner.
    pub(super) fn drop_inputs(&mut self, inputs: &[InputId]) {
        for input in inputs {
            if let Some(label) = self.labels.remove(input) {
                self.args.stats.health.input_gone(&label);
            }
            self.watermarks.remove(input);
            self.max_t_seen.remove(input);
            self.positions.remove(input);
            for build in self.by_input.remove(input).unwrap_or_default() {
                let Some(e) = self.builds.remove(&build) else { continue };
                for i in &e.inputs {
                    if let Some(v) = self.by_input.get_mut(i) {
                        v.retain(|b| *b != build);
                    }
                }
                metrics::gauge!("meltstream_active_builds").decrement(1.0);
                match &e.actor {
                    Some(a) => {
                        self.by_actor.remove(&a.get_id());
                        a.stop(Some("its partition was revoked".into()));
                    }
                    None => metrics::gauge!("meltstream_parked_builds").decrement(1.0),
                }
                let _ = self.args.commit.cast(CommitMsg::HolderGone(e.holder));
                tracing::info!(build_id = %build, input, "partition revoked; build dropped without emitting (its next owner replays it)");
            }
        }
        self.forget_quality(inputs);
        let _ = self.args.commit.cast(CommitMsg::Forget(inputs.to_vec()));
    }
}
