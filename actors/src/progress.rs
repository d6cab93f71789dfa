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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::ConsumerGroupMetadata;

use meltstream_engine::input::event::InputId;

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
}

#[derive(Default)]
struct Board {
    names: HashMap<InputId, TopicPartition>,
    latest: BTreeMap<InputId, Progress>,
    version: u64,
    assignments: BTreeMap<TopicPartition, u64>,
    assigned: u64,
    groups: HashMap<String, Arc<ConsumerGroupMetadata>>,
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
        b.names.insert(input, tp);
        // A transactional sink flushes when the version moves: it claims the new assignment's
        // epoch at once, before this process writes anything of the partition.
        b.version += 1;
    }

    /// The consumer group membership of `group` (its generation and member id) as of the
    /// latest assignment: a Kafka sink sends offsets with it, so that the broker refuses a
    /// transaction of a member that lost its partitions (a zombie).
    pub fn set_group_metadata(&self, group: &str, md: ConsumerGroupMetadata) {
        self.lock().groups.insert(group.to_owned(), Arc::new(md));
    }

    /// See [`ProgressBoard::set_group_metadata`].
    pub fn group_metadata(&self, group: &str) -> Option<Arc<ConsumerGroupMetadata>> {
        self.lock().groups.get(group).cloned()
    }

    /// The partition of `input`, if it is one.
    pub fn partition_of(&self, input: InputId) -> Option<TopicPartition> {
        self.lock().names.get(&input).cloned()
    }

    /// Publishes new progress of `input`.
    pub fn publish(&self, input: InputId, p: Progress) {
        let mut b = self.lock();
        if !b.names.contains_key(&input) || b.latest.get(&input) == Some(&p) {
            return;
        }
        b.latest.insert(input, p);
        b.version += 1;
    }

    /// Version of the latest progress.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// The latest progress of every partition.
    pub fn checkpoint(&self) -> Checkpoint {
        let b = self.lock();
        let entries = b.latest.iter().filter_map(|(i, p)| b.names.get(i).map(|tp| (tp.clone(), *p))).collect();
        Checkpoint { version: b.version, entries, assignments: b.assignments.clone() }
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
}
