//! The Kafka source's consumer hooks (librdkafka calls them on its own thread): on assignment,
//! position each partition at the stored progress and register it as an input; on revocation
//! while running, ask the supervisor to restart from the stored progress; on statistics, tell
//! the watermark coordinator which partitions have a backlog. They only send messages; they
//! never block on the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ractor::ActorRef;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use meltstream_engine::input::event::InputId;

use crate::ports::inputs::kafka_input;
use crate::ports::messages::{SupervisorMsg, WatermarkMsg};
use crate::progress::{GroupCommitted, ProgressBoard, TopicPartition};

/// Rebalance hook: positions assigned partitions at the stored progress and registers them.
pub(super) struct Hooks {
    pub(super) source_index: usize,
    pub(super) topics: Vec<String>,
    pub(super) resume: HashMap<TopicPartition, u64>,
    pub(super) group_committed: Option<GroupCommitted>,
    pub(super) board: ProgressBoard,
    pub(super) watermarks: ActorRef<WatermarkMsg>,
    pub(super) assigned: Arc<Mutex<BTreeMap<TopicPartition, InputId>>>,
    pub(super) name: String,
    /// Told when partitions are revoked while running.
    pub(super) supervisor: ActorRef<SupervisorMsg>,
    /// Set once the reader stops (closing the consumer revokes everything: that is no news).
    pub(super) stopping: AtomicBool,
    /// Set once this run was fenced (partitions revoked while running, or their stored progress
    /// moved): later assignments are the next run's.
    pub(super) fenced: AtomicBool,
    /// The consumer group (its membership goes on the board for the Kafka sinks).
    pub(super) group: String,
}

impl ClientContext for Hooks {
    /// Every `statistics.interval.ms`: a partition whose last stable offset is ahead of what
    /// the engine has read has a backlog, and must not count as idle (or the watermark would run
    /// ahead of it under backpressure and make its records late).
    fn stats(&self, stats: rdkafka::Statistics) {
        let assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        for ((topic, p), input) in assigned.iter() {
            let Some(part) = stats.topics.get(topic).and_then(|t| t.partitions.get(p)) else { continue };
            let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
            let read = if part.app_offset >= 0 { part.app_offset } else { part.next_offset };
            // Unknown offsets (no fetch answer yet, broker down): data may still come; hold.
            // One offset of slack: a transactional input ends with a commit marker that is never
            // delivered.
            if end < 0 || read < 0 || end > read + 1 {
                let _ = self.watermarks.cast(WatermarkMsg::Backlog(*input));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(source = %self.name, %error, reason, "kafka client error (librdkafka retries by itself)");
        metrics::counter!("meltstream_kafka_client_errors_total", "source" => self.name.clone()).increment(1);
    }
}

impl Hooks {
    /// The engine read its stored progress when it started, before this assignment: if another
    /// process committed progress of an assigned partition in between, a replay from what was
    /// read would write again what that process wrote. Restart, to read it as it now stands.
    /// False (after fencing the run and asking for a restart) when it moved.
    fn check_progress_is_current(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) -> bool {
        let Some(read) = &self.group_committed else { return true };
        let now = match consumer.committed_offsets(tpl.clone(), std::time::Duration::from_secs(10)) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "could not read the committed offsets at assignment");
                return true;
            }
        };
        let moved: Vec<String> = now
            .elements()
            .iter()
            .filter_map(|e| {
                // The offset and its metadata: a transaction of the previous owner that held
                // records but moved no offset still changed the metadata (its id, `out`).
                let committed = match e.offset() {
                    Offset::Offset(o) => Some((o.max(0) as u64, e.metadata().to_owned())),
                    _ => None,
                };
                let tp = (e.topic().to_owned(), e.partition());
                let was = read.get(&tp);
                (committed.as_ref() != was).then(|| format!("{}:{} ({:?} → {:?})", tp.0, tp.1, was.map(|w| w.0), committed.as_ref().map(|c| c.0)))
            })
            .collect();
        if moved.is_empty() {
            return true;
        }
        self.fence(format!("source {}: the stored progress of assigned partitions moved since this engine read it: {}", self.name, moved.join(", ")));
        false
    }

    /// This run must store nothing more (its sinks drop what they hold; see
    /// [`ProgressBoard::fence`]) and starts again from the stored progress. The board is fenced
    /// here, on librdkafka's thread, before the rebalance goes on: a sink transaction that
    /// starts after it carries nothing, and one already under way carries this generation's
    /// membership, which the broker refuses once the group has moved on.
    fn fence(&self, reason: String) {
        self.fenced.store(true, Ordering::SeqCst);
        self.board.fence(&reason);
        let _ = self.supervisor.cast(SupervisorMsg::Restart(reason));
    }
}

impl ConsumerContext for Hooks {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // An assignment that arrives while the consumer closes (it is dropped with a
                // rebalance pending): taking it would block for ever (`rd_kafka_assign` waits on
                // a consumer that is shutting down; seen with several processes joining a
                // group). The partitions are not ours to read any more: leave them.
                // Nor one after this run was fenced: it stops, and the next run takes them.
                if self.stopping.load(Ordering::SeqCst) || self.fenced.load(Ordering::SeqCst) {
                    tracing::info!(source = %self.name, partitions = tpl.count(), "assignment while stopping; not taken");
                    return;
                }
                let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
                let mut positioned = tpl.clone();
                for el in tpl.elements() {
                    let (topic, p) = (el.topic().to_owned(), el.partition());
                    let ti = self.topics.iter().position(|t| *t == topic).unwrap_or(0);
                    let input = kafka_input(self.source_index, ti, p);
                    self.board.register(input, (topic.clone(), p));
                    let _ = self.watermarks.cast(WatermarkMsg::Register(input));
                    let start = self.resume.get(&(topic.clone(), p)).copied();
                    if let Some(o) = start {
                        let _ = positioned.set_partition_offset(&topic, p, Offset::Offset(o as i64));
                    }
                    tracing::info!(source = %self.name, topic = %topic, partition = p, input, resume = ?start, "partition assigned");
                    assigned.insert((topic, p), input);
                }
                if let Err(e) = consumer.assign(&positioned) {
                    tracing::error!(source = %self.name, error = %e, "assigning partitions failed");
                }
                // This assignment's generation: what the Kafka sinks send their offsets with
                // (never after a fence: the board refuses it).
                if self.check_progress_is_current(consumer, tpl) {
                    if let Some(md) = consumer.group_metadata() {
                        self.board.set_group_metadata(&self.group, md);
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
                let stopping = self.stopping.load(Ordering::SeqCst);
                let mut revoked = Vec::new();
                for el in tpl.elements() {
                    if assigned.remove(&(el.topic().to_owned(), el.partition())).is_some() {
                        // Never finished: that would move its builds' watermark to the end of
                        // time and close half-read windows as final (their results, and the
                        // recorded closes, would then be durable). Its open windows are read
                        // again by its next owner.
                        tracing::info!(source = %self.name, topic = el.topic(), partition = el.partition(), "partition revoked");
                        revoked.push(format!("{}:{}", el.topic(), el.partition()));
                    }
                }
                // Running on: the partitions' open windows hold records that a new owner (or
                // this process, when they come back) reads again from the stored progress, and
                // the stores would be past them. Stop without emitting them instead; the next
                // start resumes from the stored progress, as after a crash.
                if !stopping && !revoked.is_empty() {
                    self.fence(format!(
                        "source {}: partitions {} revoked while running (the consumer group session was lost, e.g. the broker was away longer than session.timeout.ms, or the group rebalanced)",
                        self.name,
                        revoked.join(", ")
                    ));
                }
                if let Err(e) = consumer.unassign() {
                    tracing::error!(source = %self.name, error = %e, "unassigning partitions failed");
                }
            }
            other => {
                tracing::error!(source = %self.name, error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}
