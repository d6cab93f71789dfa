//! The Kafka source's consumer hooks (librdkafka calls them on the reading task, inside its
//! poll). The group rebalances cooperatively (`cooperative-sticky`): a rebalance moves only the
//! partitions that change owner, and the others go on untouched.
//!
//! - **Revoked** partitions leave at once, before the group moves on: off the progress board
//!   (no later checkpoint carries their offsets, and the Kafka sinks' transactions carry none of
//!   their records), out of the watermark coordinator, and their builds are dropped without
//!   emitting anything (`RouterMsg::DropInputs`). Their next owner reads them again from the
//!   progress stored with the results.
//! - **Assigned** partitions wait for their stored progress: the hook queues them for the
//!   reading task, which asks every transactional sink what it stored for them (read at the
//!   assignment, after any transaction of their previous owner settled) and only then takes
//!   them (`incremental_assign`) at the lowest stored offset, with the replay state stored there.
//!
//! The hooks only send messages and take short locks; they never wait on the engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::ActorRef;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use meltstream_engine::input::event::InputId;

use crate::ports::messages::{RouterMsg, SupervisorMsg, WatermarkMsg};
use crate::progress::{ProgressBoard, TopicPartition};

/// What the hooks and the reading task share about the partitions of this process.
#[derive(Default)]
pub(super) struct Partitions {
    /// Partitions taken, with the input each is read as.
    pub(super) assigned: Mutex<BTreeMap<TopicPartition, InputId>>,
    /// Partitions the group assigned, waiting for their stored progress.
    pub(super) to_admit: Mutex<Vec<TopicPartition>>,
    /// Wakes the reading task when `to_admit` has partitions.
    pub(super) admit: tokio::sync::Notify,
    /// Moves whenever `assigned` changes (the reading task caches it).
    pub(super) version: AtomicU64,
    /// When the group session was lost (partitions revoked as lost), until the group assigns
    /// again: the reading task gives up on a consumer that does not rejoin (see `Reader::run`).
    pub(super) lost_since: Mutex<Option<std::time::Instant>>,
}

impl Partitions {
    pub(super) fn lock_assigned(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, InputId>> {
        self.assigned.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock_to_admit(&self) -> std::sync::MutexGuard<'_, Vec<TopicPartition>> {
        self.to_admit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The consumer's hooks.
pub(super) struct Hooks {
    pub(super) board: ProgressBoard,
    pub(super) watermarks: ActorRef<WatermarkMsg>,
    pub(super) router: ActorRef<RouterMsg>,
    pub(super) partitions: Arc<Partitions>,
    pub(super) name: String,
    /// Told when the source cannot go on (its partitions' stored progress cannot be read).
    pub(super) supervisor: ActorRef<SupervisorMsg>,
    /// Set once the reader stops (closing the consumer revokes everything: that is no news).
    pub(super) stopping: AtomicBool,
    /// Set once this run was fenced: later assignments are the next run's.
    pub(super) fenced: AtomicBool,
    /// The consumer group (its membership goes on the board for the Kafka sinks).
    pub(super) group: String,
    /// Engine counters (consumer lag for the dashboard).
    pub(super) stats: std::sync::Arc<crate::engine_stats::EngineStats>,
}

impl ClientContext for Hooks {
    /// Every `statistics.interval.ms`: a partition whose last stable offset is ahead of what
    /// the engine has read has a backlog, and must not count as idle (or the watermark would run
    /// ahead of it under backpressure and make its records late).
    fn stats(&self, stats: rdkafka::Statistics) {
        let assigned = self.partitions.lock_assigned();
        for ((topic, p), input) in assigned.iter() {
            let Some(part) = stats.topics.get(topic).and_then(|t| t.partitions.get(p)) else { continue };
            let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
            let read = if part.app_offset >= 0 { part.app_offset } else { part.next_offset };
            if end >= 0 && read >= 0 {
                metrics::gauge!("meltstream_kafka_consumer_lag", "topic" => topic.clone(), "partition" => p.to_string()).set((end - read).max(0) as f64);
                self.stats.gauges.consumer_lag(&format!("{topic}/{p}"), (end - read).max(0));
            }
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
    /// This run must store nothing more (its sinks drop what they hold; see
    /// [`ProgressBoard::fence`]) and starts again from the stored progress.
    pub(super) fn fence(&self, reason: String) {
        self.fenced.store(true, Ordering::SeqCst);
        self.board.fence(&reason);
        let _ = self.supervisor.cast(SupervisorMsg::Restart(reason));
    }

    /// The group's membership as of this rebalance, for the Kafka sinks' offsets (after the
    /// revocations it brought: see `ProgressBoard::membership`).
    fn publish_membership(&self, consumer: &BaseConsumer<Self>) {
        if let Some(md) = consumer.group_metadata() {
            self.board.set_group_metadata(&self.group, md);
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        // An assignment that arrives while the consumer closes, or after a fence: the
        // partitions are not this run's to read. Taking one while closing would block for
        // ever (`rd_kafka_assign` waits on a consumer that is shutting down).
        if self.stopping.load(Ordering::SeqCst) || self.fenced.load(Ordering::SeqCst) {
            tracing::info!(source = %self.name, partitions = tpl.count(), "assignment while stopping; not taken");
            return;
        }
        self.publish_membership(consumer);
        *self.partitions.lost_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let tps: Vec<TopicPartition> = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        if tps.is_empty() {
            // Nothing new, but the rebalance waits for the call (it is what lets the group
            // go on to its next round, where revoked partitions reach their new owners).
            if let Err(e) = consumer.incremental_assign(tpl) {
                tracing::error!(source = %self.name, error = %e, "completing an empty assignment failed");
            }
            return;
        }
        tracing::info!(source = %self.name, partitions = ?tps, "partitions assigned; reading their stored progress before taking them");
        self.partitions.lock_to_admit().extend(tps);
        self.partitions.admit.notify_one();
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let stopping = self.stopping.load(Ordering::SeqCst);
        let lost = consumer.assignment_lost();
        let mut revoked = Vec::new();
        {
            let mut assigned = self.partitions.lock_assigned();
            for el in tpl.elements() {
                let tp = (el.topic().to_owned(), el.partition());
                if let Some(input) = assigned.remove(&tp) {
                    tracing::info!(source = %self.name, topic = %tp.0, partition = tp.1, input, lost, "partition revoked");
                    revoked.push(input);
                }
            }
            self.partitions.lock_to_admit().retain(|tp| !tpl.elements().iter().any(|e| e.topic() == tp.0 && e.partition() == tp.1));
            self.partitions.version.fetch_add(1, Ordering::SeqCst);
        }
        // Closing the consumer revokes everything: the engine is draining, and the partitions
        // just end. Otherwise their builds go, before the group moves on.
        if lost && !stopping {
            self.partitions.lost_since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(std::time::Instant::now);
        }
        if !stopping && !revoked.is_empty() {
            for &input in &revoked {
                self.board.revoke(input);
                let _ = self.watermarks.cast(WatermarkMsg::Unregister(input));
            }
            metrics::counter!("meltstream_kafka_partitions_revoked_total", "source" => self.name.clone()).increment(revoked.len() as u64);
            let _ = self.router.cast(RouterMsg::DropInputs(revoked));
        }
        if let Err(e) = consumer.incremental_unassign(tpl) {
            tracing::error!(source = %self.name, error = %e, "unassigning partitions failed");
        }
        if !stopping && !self.fenced.load(Ordering::SeqCst) {
            self.publish_membership(consumer);
        }
    }
}

impl ConsumerContext for Hooks {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                tracing::error!(source = %self.name, error = ?other, "rebalance error");
                let all = self.partitions.lock_assigned().keys().fold(TopicPartitionList::new(), |mut l, (t, p)| {
                    l.add_partition(t, *p);
                    l
                });
                self.revoke(consumer, &all);
            }
        }
    }
}

/// The input each assigned partition is read as, keyed by (topic index, partition), as the
/// reading task caches it.
pub(super) type InputCache = HashMap<(usize, i32), InputId>;
