//! Source progress on its way into the sinks' transactions: the exactly-once handoff.
//!
//! The commit coordinator computes, per input, two offsets from the offset ledger:
//! - `resume`: where a restarted engine must start reading so that every window still open is
//!   read whole again (the commit offset of DESIGN §3.2);
//! - `emitted_through`: below it, every record was processed and every result it produced is
//!   durable, so a replay must not emit a positioned result (an alert, a dead letter) below it.
//!
//! It publishes them on the [`ProgressBoard`]. A transactional sink (PostgreSQL, Kafka) writes
//! the board's latest [`Checkpoint`] in the same transaction as its records: what it stores never
//! runs ahead of what it holds, because the checkpoint only covers results that were durable in
//! every sink before this transaction began. After a crash, the engine resumes each partition at
//! the lowest `resume` any sink stored, and each sink drops the positioned records below its own
//! `emitted_through`; window results read again in part are refused by the sink's keys.
//!
//! With the offsets goes what a replay needs to take the same decisions as the run it replaces
//! ([`PartitionState`]): the close decisions of each build of the partition (published here by
//! the build actors before the results they decide leave them) and the largest event time
//! before the resume offset (the replay's watermark starts there).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::ConsumerGroupMetadata;

use meltstream_engine::input::event::{InputId, TimeNs};
use meltstream_engine::pipeline::decisions::{BuildDecisions, PartitionState};
use meltstream_engine::pipeline::input_quality::QualitySnapshot;

/// Progress of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Next offset to read after a restart.
    pub resume: u64,
    /// Offsets below this produced results that are durable.
    pub emitted_through: u64,
}

/// A Kafka partition.
pub type TopicPartition = (String, i32);

/// Progress per partition as one sink stored it.
pub type StoredProgress = BTreeMap<TopicPartition, Progress>;

/// The replay state per partition as one sink stored it.
pub type StoredStates = BTreeMap<TopicPartition, PartitionState>;

/// Source offsets per partition whose positioned records a sink already holds.
pub type Written = BTreeMap<TopicPartition, std::collections::BTreeSet<u64>>;

/// The progress to store with a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Increases with every change.
    pub version: u64,
    /// Per partition.
    pub entries: Vec<(TopicPartition, Progress)>,
    /// Per partition, which assignment of this run it belongs to (1, 2, … in the order the
    /// consumer group assigned them): a sink that fences its progress claims a new epoch for a
    /// partition whose assignment it has not claimed yet (PostgreSQL's `progress.epoch`).
    pub assignments: BTreeMap<TopicPartition, u64>,
    /// Per partition, what a replay from its `resume` needs to decide as this run did.
    pub states: BTreeMap<TopicPartition, PartitionState>,
    /// This run lost partitions (or found their stored progress moved by another process) and
    /// stops to start again from the stored progress: from now on it must store nothing, since
    /// what it computed may already be another owner's to write (see [`ProgressBoard::fence`]).
    pub fenced: bool,
}

/// Replay state of one input, live.
#[derive(Default)]
struct Live {
    /// Decisions per build (folded as the sinks' stored offsets pass them).
    builds: BTreeMap<String, BuildDecisions>,
    /// (end offset of a routed batch, largest event time of the input up to it).
    trail: VecDeque<(u64, TimeNs)>,
    /// Largest event time up to the last batch routed.
    max_t: TimeNs,
    /// Largest event time before the published resume offset.
    max_t_at_resume: TimeNs,
    /// What the last run stored, until the router has taken it.
    restored_max_t: Option<TimeNs>,
    /// The open input-quality window after each routed batch not yet behind the resume offset.
    quality_trail: VecDeque<QualitySnapshot>,
    /// The one at the published resume offset (what a checkpoint stores).
    quality_at_resume: Option<QualitySnapshot>,
    /// What the last run stored, until the router has taken it.
    restored_quality: Option<QualitySnapshot>,
    /// Where this run started reading the input.
    replay_from: u64,
}

#[derive(Default)]
struct Board {
    names: HashMap<InputId, TopicPartition>,
    latest: BTreeMap<InputId, Progress>,
    version: u64,
    assignments: BTreeMap<TopicPartition, u64>,
    assigned: u64,
    groups: HashMap<String, Arc<ConsumerGroupMetadata>>,
    live: HashMap<InputId, Live>,
    /// What the sinks stored when this run started, and where each partition resumes.
    restored: HashMap<TopicPartition, (PartitionState, u64)>,
    /// Per transactional sink, the resume offset per partition it stored last.
    stored_by: BTreeMap<String, HashMap<TopicPartition, u64>>,
    /// Why this run may store nothing more (see [`ProgressBoard::fence`]).
    fenced: Option<String>,
    /// Inputs whose partition was revoked (ids are never reused: each assignment has its own).
    revoked: HashSet<InputId>,
    /// A Kafka source stopped reading (see [`ProgressBoard::stop_reading`]).
    stopping: bool,
}

impl Board {
    /// The offset at or below which every transactional sink has stored the resume of `tp`:
    /// decisions at or below it are folded.
    fn fold_threshold(&self, tp: &TopicPartition) -> u64 {
        if self.stored_by.is_empty() {
            return 0;
        }
        self.stored_by.values().map(|m| m.get(tp).copied().unwrap_or(0)).min().unwrap_or(0)
    }
}

/// Where the commit coordinator publishes progress and transactional sinks read it. Only inputs
/// registered with a partition name (Kafka) are checkpointed.
#[derive(Clone, Default)]
pub struct ProgressBoard(Arc<Mutex<Board>>);

impl ProgressBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Names `input` as a partition, newly assigned to this process.
    pub fn register(&self, input: InputId, tp: TopicPartition) {
        let mut b = self.lock();
        b.assigned += 1;
        let stamp = b.assigned;
        b.assignments.insert(tp.clone(), stamp);
        let (state, resume) = b.restored.get(&tp).cloned().unwrap_or_default();
        let live = Live {
            builds: state.builds,
            max_t: state.max_t,
            max_t_at_resume: state.max_t,
            restored_max_t: (state.max_t > TimeNs::MIN).then_some(state.max_t),
            quality_trail: VecDeque::new(),
            quality_at_resume: state.input_quality.clone(),
            restored_quality: state.input_quality.clone(),
            replay_from: resume,
            trail: VecDeque::new(),
        };
        b.live.insert(input, live);
        b.names.insert(input, tp);
        // A transactional sink flushes when the version moves: it claims the new assignment's
        // epoch at once, before this process writes anything of the partition.
        b.version += 1;
    }

    /// `input`'s partition was revoked: it is no longer this process's. Its progress, replay
    /// state and assignment leave the board at once (no later checkpoint carries them), and
    /// records of it still in flight are dropped wherever they meet [`ProgressBoard::is_revoked`].
    pub fn revoke(&self, input: InputId) {
        let mut b = self.lock();
        if let Some(tp) = b.names.remove(&input) {
            b.assignments.remove(&tp);
        }
        b.latest.remove(&input);
        b.live.remove(&input);
        b.revoked.insert(input);
        b.version += 1;
    }

    /// True for the input of a partition revoked from this process.
    pub fn is_revoked(&self, input: InputId) -> bool {
        self.lock().revoked.contains(&input)
    }

    /// Keeps the records whose inputs (position and holds) were not revoked; returns how many it
    /// dropped.
    pub fn retain_live(&self, records: &mut Vec<meltstream_engine::records::Emitted>) -> usize {
        let b = self.lock();
        if b.revoked.is_empty() {
            return 0;
        }
        let before = records.len();
        records.retain(|r| !r.position.is_some_and(|(i, _)| b.revoked.contains(&i)) && !r.hold.iter().any(|h| b.revoked.contains(&h.0)));
        before - records.len()
    }

    /// The membership of `group` and the partitions assigned to this process, read together: a
    /// transaction carries only these partitions' records and offsets, with this membership.
    /// The rebalance hook revokes partitions before it publishes the next generation, so a
    /// newer membership never comes with a partition this process has lost.
    pub fn membership(&self, group: &str) -> (Option<Arc<ConsumerGroupMetadata>>, HashSet<TopicPartition>) {
        let b = self.lock();
        (b.groups.get(group).cloned(), b.assignments.keys().cloned().collect())
    }

    /// What the sinks stored for partitions assigned to this process (read at their
    /// assignment): per partition, its replay state and the offset it resumes at.
    pub fn restore_partitions(&self, restored: HashMap<TopicPartition, (PartitionState, u64)>) {
        let mut b = self.lock();
        for (tp, v) in restored {
            b.restored.insert(tp, v);
        }
    }

    /// The consumer group membership of `group` (its generation and member id) as of the
    /// latest assignment: a Kafka sink sends offsets with it, so that the broker refuses a
    /// transaction of a member that lost its partitions (a zombie).
    pub fn set_group_metadata(&self, group: &str, md: ConsumerGroupMetadata) {
        let mut b = self.lock();
        if b.fenced.is_none() {
            b.groups.insert(group.to_owned(), Arc::new(md));
        }
    }

    /// This run lost partitions, or another process moved their stored progress after this run
    /// read it; it stops and starts again from the stored progress. Sticky: from now on the
    /// checkpoint says `fenced`, transactional sinks drop what they buffered and store nothing,
    /// and the group membership is no longer updated (a later assignment is a new run's). What
    /// this run computed and did not store yet is read again by whoever owns the partitions.
    pub fn fence(&self, reason: &str) {
        let mut b = self.lock();
        if b.fenced.is_none() {
            b.fenced = Some(reason.to_owned());
            b.version += 1;
        }
    }

    /// A Kafka source stopped reading: the engine is stopping (a shutdown or a restart), and
    /// its consumer no longer takes part in the group's rebalances. A flush refused as fenced
    /// from now on is the last of a stop, not a zombie's: the sinks drop what they hold and do
    /// not retry (whoever reads the partitions next starts from the stored progress). A sink's
    /// own drain comes later, behind a flush that may be retrying already.
    pub fn stop_reading(&self) {
        self.lock().stopping = true;
    }

    /// Whether a Kafka source stopped reading ([`ProgressBoard::stop_reading`]).
    pub fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    /// The partition of `input`, if it is one.
    pub fn partition_of(&self, input: InputId) -> Option<TopicPartition> {
        self.lock().names.get(&input).cloned()
    }

    /// The partition an input of this run is named by (`name`: the low 32 bits of its id).
    pub fn partition_named(&self, name: u32) -> Option<TopicPartition> {
        self.lock().names.iter().find(|(i, _)| **i as u32 == name).map(|(_, tp)| tp.clone())
    }

    /// Publishes new progress of `input`.
    pub fn publish(&self, input: InputId, p: Progress) {
        let mut b = self.lock();
        if !b.names.contains_key(&input) || b.latest.get(&input) == Some(&p) {
            return;
        }
        if let Some(l) = b.live.get_mut(&input) {
            while l.trail.front().is_some_and(|&(end, _)| end <= p.resume) {
                if let Some((_, t)) = l.trail.pop_front() {
                    l.max_t_at_resume = l.max_t_at_resume.max(t);
                }
            }
            while l.quality_trail.front().is_some_and(|q| q.at <= p.resume) {
                l.quality_at_resume = l.quality_trail.pop_front();
            }
        }
        b.latest.insert(input, p);
        b.version += 1;
    }


    /// A batch of `input` ending at `next_offset` was routed; `max_t` is its largest event time.
    pub fn observe_batch(&self, input: InputId, next_offset: u64, max_t: TimeNs) {
        let mut b = self.lock();
        let Some(l) = b.live.get_mut(&input) else { return };
        l.max_t = l.max_t.max(max_t);
        let t = l.max_t;
        l.trail.push_back((next_offset, t));
    }

    /// The open input-quality window of `input` after a routed batch (`s.at`: its end offset).
    pub fn observe_quality(&self, input: InputId, s: QualitySnapshot) {
        let mut b = self.lock();
        if let Some(l) = b.live.get_mut(&input) {
            l.quality_trail.push_back(s);
        }
    }

    /// The input-quality window the last run stored for `input` at the offset this run started
    /// reading it (once: the router starts counting from it).
    pub fn take_restored_quality(&self, input: InputId) -> Option<QualitySnapshot> {
        self.lock().live.get_mut(&input).and_then(|l| l.restored_quality.take())
    }

    /// The largest event time the last run stored for `input` (once: the router's watermark
    /// starts from it).
    pub fn take_restored_max_t(&self, input: InputId) -> Option<TimeNs> {
        self.lock().live.get_mut(&input).and_then(|l| l.restored_max_t.take())
    }

    /// The decisions recorded for `build` on `input` and the offset this run started reading
    /// the input at: a new build pipeline follows them.
    pub fn decisions(&self, input: InputId, build: &str) -> (BuildDecisions, u64) {
        let b = self.lock();
        b.live.get(&input).map(|l| (l.builds.get(build).cloned().unwrap_or_default(), l.replay_from)).unwrap_or_default()
    }

    /// A build's decisions changed: stored with the next checkpoint (before the results they
    /// decide reach a sink).
    pub fn set_decisions(&self, input: InputId, build: &str, d: BuildDecisions) {
        let mut b = self.lock();
        if !b.names.contains_key(&input) {
            return;
        }
        let Some(l) = b.live.get_mut(&input) else { return };
        l.builds.insert(build.to_owned(), d);
        b.version += 1;
    }

    /// A transactional sink `sink` takes part in folding (its stored resume offsets count).
    pub fn expect_sink(&self, sink: &str, stored: &StoredProgress) {
        let m = stored.iter().map(|(tp, p)| (tp.clone(), p.resume)).collect();
        self.lock().stored_by.insert(sink.to_owned(), m);
    }

    /// What transactional sink `sink` stored for `tps`, read at their assignment.
    pub fn expect_partitions(&self, sink: &str, tps: &[TopicPartition], stored: &StoredProgress) {
        let mut b = self.lock();
        let m = b.stored_by.entry(sink.to_owned()).or_default();
        for tp in tps {
            m.insert(tp.clone(), stored.get(tp).map_or(0, |p| p.resume));
        }
    }

    /// Transactional sink `sink` stored checkpoint `c`.
    pub fn stored_by(&self, sink: &str, c: &Checkpoint) {
        let mut b = self.lock();
        let m = b.stored_by.entry(sink.to_owned()).or_default();
        for (tp, p) in &c.entries {
            m.insert(tp.clone(), p.resume);
        }
    }

    /// Version of the latest progress.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The latest progress of every partition.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut b = self.lock();
        let entries = b.latest.iter().filter_map(|(i, p)| b.names.get(i).map(|tp| (tp.clone(), *p))).collect();
        let thresholds: Vec<(InputId, TopicPartition, u64, Option<u64>)> = b.names.iter().map(|(i, tp)| (*i, tp.clone(), b.fold_threshold(tp), b.latest.get(i).map(|p| p.resume))).collect();
        let mut states = BTreeMap::new();
        for (input, tp, through, resume) in thresholds {
            let Some(l) = b.live.get_mut(&input) else { continue };
            for d in l.builds.values_mut() {
                d.fold(through);
            }
            // What a replay from the stored resume offset needs (the cooldowns running there).
            let r = resume.unwrap_or(l.replay_from);
            let builds = l.builds.iter().map(|(id, d)| (id.clone(), d.for_replay_from(r))).collect();
            states.insert(tp, PartitionState { max_t: l.max_t_at_resume, builds, input_quality: l.quality_at_resume.clone() });
        }
        Checkpoint { version: b.version, entries, assignments: b.assignments.clone(), states, fenced: b.fenced.is_some() }
    }
}

/// Where to resume each partition: the lowest `resume` stored by any sink. A partition that some
/// sink has no record of is read from its beginning.
pub fn resume_offsets(stored: &[StoredProgress]) -> HashMap<TopicPartition, u64> {
    let mut out: HashMap<TopicPartition, u64> = HashMap::new();
    let all: std::collections::BTreeSet<&TopicPartition> = stored.iter().flat_map(|s| s.keys()).collect();
    for tp in all {
        let min = stored.iter().map(|s| s.get(tp).map_or(0, |p| p.resume)).min().unwrap_or(0);
        out.insert(tp.clone(), min);
    }
    out
}

/// What each partition's replay starts from: the union of the decisions every transactional
/// sink stored (each is one this pipeline took; see `meltstream_engine::pipeline::decisions`),
/// the largest event time before the offset the replay starts at, and that offset.
pub fn replay_states(stored: &[(&StoredProgress, &StoredStates)], resume: &HashMap<TopicPartition, u64>) -> HashMap<TopicPartition, (PartitionState, u64)> {
    let mut out: HashMap<TopicPartition, (PartitionState, u64)> = HashMap::new();
    for (tp, r) in resume {
        // The event time is monotone in the offset: the lowest any sink stored (none: unknown)
        // is the one at the lowest resume offset, where the replay starts.
        let max_t = stored.iter().map(|(_, st)| st.get(tp).map_or(TimeNs::MIN, |s| s.max_t)).min().unwrap_or(TimeNs::MIN);
        // The open input-quality window the sink with the lowest resume stored, which stands
        // where the replay starts.
        let input_quality = stored.iter().filter_map(|(_, st)| st.get(tp).and_then(|s| s.input_quality.clone())).find(|q| q.at == *r);
        let mut state = PartitionState { max_t, builds: BTreeMap::new(), input_quality };
        for (_, st) in stored {
            if let Some(s) = st.get(tp) {
                for (b, d) in &s.builds {
                    state.builds.entry(b.clone()).or_default().merge(d);
                }
            }
        }
        out.insert(tp.clone(), (state, *r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_is_the_lowest_and_a_missing_sink_means_the_beginning() {
        let tp = |p: i32| ("t".to_owned(), p);
        let a: StoredProgress = [(tp(0), Progress { resume: 50, emitted_through: 60 }), (tp(1), Progress { resume: 7, emitted_through: 7 })].into();
        let b: StoredProgress = [(tp(0), Progress { resume: 40, emitted_through: 40 })].into();
        let r = resume_offsets(&[a, b]);
        assert_eq!(r[&tp(0)], 40);
        assert_eq!(r[&tp(1)], 0);
    }

    #[test]
    fn only_partitions_are_checkpointed() {
        let b = ProgressBoard::default();
        b.publish(1, Progress { resume: 1, emitted_through: 1 });
        assert_eq!(b.version(), 0);
        b.register(1, ("t".into(), 3));
        b.publish(1, Progress { resume: 2, emitted_through: 5 });
        b.publish(1, Progress { resume: 2, emitted_through: 5 });
        let c = b.checkpoint();
        assert_eq!(c.version, 2, "the assignment, then the progress");
        assert_eq!(c.assignments, [(("t".to_owned(), 3), 1)].into());
        assert_eq!(c.entries, vec![(("t".to_owned(), 3), Progress { resume: 2, emitted_through: 5 })]);
    }

    #[test]
    fn a_revoked_partition_leaves_the_checkpoint_and_its_records_are_dropped() {
        use meltstream_engine::offset_ledger::HoldSet;
        use meltstream_engine::records::{Emitted, LateRecord, OutputRecord};
        let late = LateRecord { build_id: "b".into(), layer: None, laser: 0, t0_ns: 0, sample_count: 1, offset: 1, watermark_ns: 0 };
        let b = ProgressBoard::default();
        let (old, kept, again) = (1u64 << 32 | 7, 1u64 << 32 | 8, 2u64 << 32 | 7);
        b.register(old, ("t".into(), 7));
        b.register(kept, ("t".into(), 8));
        b.publish(old, Progress { resume: 5, emitted_through: 5 });
        b.publish(kept, Progress { resume: 9, emitted_through: 9 });
        b.revoke(old);
        let c = b.checkpoint();
        assert_eq!(c.entries, vec![(("t".to_owned(), 8), Progress { resume: 9, emitted_through: 9 })]);
        assert!(!c.assignments.contains_key(&("t".to_owned(), 7)));
        assert!(b.is_revoked(old) && !b.is_revoked(kept));
        assert_eq!(b.membership("g").1, [("t".to_owned(), 8)].into());
        // The partition comes back as a new input; what was in flight of the old one is not its.
        b.register(again, ("t".into(), 7));
        let rec = |input: u64| Emitted { record: OutputRecord::Late(late.clone()), hold: HoldSet::one((input, 0)), origin_wall_ns: 0, position: Some((input, 1)) };
        let mut records = vec![rec(old), rec(kept), rec(again)];
        assert_eq!(b.retain_live(&mut records), 1);
        assert_eq!(records.iter().map(|r| r.position.map(|p| p.0)).collect::<Vec<_>>(), [Some(kept), Some(again)]);
        assert_eq!(b.membership("g").1.len(), 2);
    }

    #[test]
    fn a_fenced_board_stays_fenced_and_takes_no_newer_membership() {
        let b = ProgressBoard::default();
        b.register(1, ("t".into(), 0));
        assert!(!b.checkpoint().fenced);
        let v = b.version();
        b.fence("partitions revoked");
        assert!(b.checkpoint().fenced);
        assert!(b.version() > v, "the sinks flush (and drop what they hold) at once");
        b.fence("again");
        b.register(2, ("t".into(), 1));
        assert!(b.checkpoint().fenced, "a later assignment does not lift it");
    }
}
