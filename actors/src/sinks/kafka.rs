//! Kafka sink: a transactional producer. Every flush is one Kafka transaction holding the
//! buffered records *and* the source consumer group's offsets (`send_offsets_to_transaction`):
//! a `read_committed` reader sees the records exactly when the offsets that produced them are
//! committed, never one without the other.
//!
//! # What is stored with the offsets
//! The committed offset of each source partition is its `resume` offset; its metadata string
//! holds the partition's `emitted_through`, the transaction's id and the replay state
//! (`metadata.rs`). After a restart the sink drops positioned records below `emitted_through`
//! (already in the topic); the tx id tells whether a commit whose outcome was lost did land.
//!
//! # Records ahead of the stored progress
//! A transaction's checkpoint covers only what was durable *before* it, so its own records lie
//! at or above the `emitted_through` it stores; the next transaction's checkpoint covers them.
//! A crash between the two would let a replay write them again. So every record carries its
//! source position in a header (`meltstream-position: <topic>:<partition>:<offset>`), and the
//! `out` field of a source partition's metadata names, per output partition, the first record of
//! the oldest committed transaction holding records of that source partition that the checkpoint
//! does not cover yet. After a restart the sink settles its last transaction
//! (`init_transactions`), reads its topic from the lowest `out` to the end with `read_committed`,
//! and drops replayed records at the positions it finds there too. A transaction carries offsets
//! only for the source partitions assigned to this process: several processes share the group,
//! and each partition's offsets are its owner's to move.
//!
//! # Fencing
//! The offsets go with the source consumer's group membership as of its latest rebalance
//! (generation and member id, published on the progress board by the source's rebalance hook),
//! read together with the partitions assigned to this process (`ProgressBoard::membership`): a
//! transaction carries records and offsets of those partitions only, so a partition revoked
//! since its records were buffered is left to its next owner. A process that lost its
//! partitions (paused past `session.timeout.ms`, then resumed: a zombie) still holds the old
//! generation, so the broker refuses its `send_offsets_to_transaction` and the transaction
//! aborts: it writes nothing, and once its consumer notices, the partitions are revoked. Each engine instance has its own transactional id
//! (`--instance`), so instances never fence each other's producers; a restart of the same
//! instance fences its predecessor's.
//!
//! # What it accepts
//! Only records with a source position (alerts raised by a sample or a log record, dead letters,
//! late records): a window result read again in part after a crash could not be told from the
//! whole one without keys, which a topic does not have. The topology check refuses window kinds
//! on a Kafka sink; an energy-density alert (a layer result) is counted and skipped.
//!
//! # Failures
//! A retriable error is retried by the sink actor with backoff. A transaction that must abort is
//! aborted and sent again. A fatal error (fenced, or the producer's state lost) recreates the
//! producer; `init_transactions` then settles the old transaction, and the sink checks from the
//! group's offsets whether its last commit landed before sending anything again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use meltstream_engine::records::Emitted;
use meltstream_engine::topology::KafkaSinkConfig;

use crate::ports::clock::now_wall_ns;
use crate::progress::{Checkpoint, Progress, ProgressBoard, StoredProgress, StoredStates, TopicPartition, Written};
use meltstream_engine::pipeline::decisions::PartitionState;
use crate::retry::{retry, Backoff};
use crate::sinks::writer::{unwritable, SinkError, SinkWriter};

use metadata::{format_metadata, offset_entries, parse_metadata, TxSpan, POSITION_HEADER};

mod metadata;
mod read_back;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A record waiting for the next transaction.
struct Buffered {
    key: String,
    payload: Vec<u8>,
    position: Option<(TopicPartition, u64)>,
    /// The input it came from (a partition as assigned to this process).
    input: meltstream_engine::input::event::InputId,
}

/// Test hook: with `MELTSTREAM_FAULT_ABORT_AFTER_KAFKA_TX=n`, the process aborts right after
/// its n-th committed transaction that held records — the instant at which the topic holds
/// records that the stored progress does not cover yet. `tests/exactly_once.rs` uses it. Only
/// in builds with the `fault-injection` feature (the tests'), never in a release binary.
#[cfg(feature = "fault-injection")]
fn fault_abort_after(n: u64) {
    crate::sinks::writer::fault_abort_at("MELTSTREAM_FAULT_ABORT_AFTER_KAFKA_TX", n, "after a Kafka commit");
}

/// The Kafka sink writer.
pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    /// The source's topics and group, whose offsets the transactions commit.
    source_topics: Vec<String>,
    group_id: String,
    producer: Option<FutureProducer>,
    consumer: BaseConsumer,
    /// Names source partitions.
    board: ProgressBoard,
    buffered: Vec<Buffered>,
    run_id: u64,
    tx_seq: u64,
    /// The tx id of a commit whose outcome is unknown, and its span.
    uncertain: Option<(String, TxSpan)>,
    /// Committed transactions whose records the stored checkpoint does not cover yet.
    uncovered: Vec<TxSpan>,
    /// Read back at start: positions already in the topic beyond the stored progress.
    written: Written,
    /// The progress stored before this run.
    stored: StoredProgress,
    stored_states: StoredStates,
    /// Transactions committed with records, for the fault hook.
    txs_with_records: u64,
    /// The largest message the producer takes (`message.max.bytes`, librdkafka's default
    /// 1,000,000 unless the sink's properties set it).
    max_message_bytes: usize,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

fn retryable(sink: &str, what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Retryable { sink: sink.to_owned(), message: format!("{what}: {e}") }
}

impl KafkaSink {
    /// A sink named `name` committing offsets of `group_id` over `source_topics`.
    pub fn new(name: &str, config: KafkaSinkConfig, source_topics: Vec<String>, group_id: String, board: ProgressBoard) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        // read_committed: a read of the committed offsets waits for a transaction that carries
        // offsets of these partitions to settle (librdkafka asks for stable offsets), instead of
        // answering with the offsets from before it.
        cc.set("bootstrap.servers", &config.brokers).set("group.id", &group_id).set("enable.auto.commit", "false").set("isolation.level", "read_committed");
        for (k, v) in &config.properties {
            cc.set(k, v);
        }
        let consumer: BaseConsumer = cc.create().map_err(|e| SinkError::Fatal { sink: name.to_owned(), message: format!("creating the offsets client: {e}") })?;
        let run_id = (now_wall_ns() as u64 / 1_000_000) * 1000 + RUNS.fetch_add(1, Ordering::Relaxed) % 1000;
        Ok(KafkaSink {
            name: name.to_owned(),
            source_topics,
            group_id,
            producer: None,
            consumer,
            board,
            buffered: Vec::new(),
            run_id,
            tx_seq: 0,
            uncertain: None,
            uncovered: Vec::new(),
            written: Written::new(),
            stored: StoredProgress::new(),
            stored_states: StoredStates::new(),
            txs_with_records: 0,
            max_message_bytes: config.properties.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(1_000_000),
            config,
        })
    }

    fn producer_config(&self) -> ClientConfig {
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &self.config.brokers)
            .set("transactional.id", &self.config.transactional_id)
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", "60000")
            .set("message.timeout.ms", "55000")
            .set("linger.ms", "2");
        for (k, v) in &self.config.properties {
            pc.set(k, v);
        }
        pc
    }

    /// The producer, created and initialised (which fences an older instance) on first use.
    async fn producer(&mut self) -> Result<FutureProducer, SinkError> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let p: FutureProducer = self.producer_config().create().map_err(|e| retryable(&self.name, "creating the producer", e))?;
        let p2 = p.clone();
        tokio::task::spawn_blocking(move || p2.init_transactions(TIMEOUT))
            .await
            .map_err(|e| retryable(&self.name, "init_transactions", e))?
            .map_err(|e| retryable(&self.name, "init_transactions", e))?;
        tracing::info!(sink = %self.name, transactional_id = %self.config.transactional_id, "transactional producer ready");
        self.producer = Some(p.clone());
        Ok(p)
    }

    /// Every partition of the source topics.
    fn source_partitions(&self) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for t in &self.source_topics {
            let md = self.consumer.fetch_metadata(Some(t), TIMEOUT)?;
            for topic in md.topics() {
                for p in topic.partitions() {
                    tpl.add_partition(t, p.id());
                }
            }
        }
        Ok(tpl)
    }

    /// The group's committed offsets of the source partitions, with their metadata.
    fn committed(&self) -> Result<Vec<(String, i32, i64, String)>, KafkaError> {
        let tpl = self.source_partitions()?;
        let got = self.consumer.committed_offsets(tpl, TIMEOUT)?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.topic().to_owned(), e.partition(), o, e.metadata().to_owned())),
                _ => None,
            })
            .collect())
    }

    /// Drops the producer after a fatal error; the next flush recreates it.
    fn reset_producer(&mut self, why: &str) {
        tracing::warn!(sink = %self.name, reason = why, "recreating the transactional producer");
        metrics::counter!("meltstream_kafka_producer_resets_total", "sink" => self.name.clone()).increment(1);
        self.producer = None;
    }

    fn classify(&mut self, what: &str, e: KafkaError, tx: &(String, TxSpan)) -> SinkError {
        let (fatal, abort) = match &e {
            KafkaError::Transaction(t) => (t.is_fatal(), t.txn_requires_abort()),
            _ => (matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)), false),
        };
        if fatal {
            self.uncertain = Some(tx.clone());
            self.reset_producer(&e.to_string());
        } else if abort {
            if let Some(p) = &self.producer {
                if let Err(ae) = p.abort_transaction(TIMEOUT) {
                    self.uncertain = Some(tx.clone());
                    self.reset_producer(&format!("abort failed: {ae}"));
                }
            }
        } else {
            // Outcome unknown (a timeout): a new producer settles the transaction, and we check.
            self.uncertain = Some(tx.clone());
            self.reset_producer(&e.to_string());
        }
        // The source consumer is no longer the member the offsets were sent for: the group
        // moved on (a rebalance: the sink actor flushes again, with the partitions and the
        // membership as they now stand), or this process lost its session (a zombie: it loses
        // its partitions as soon as its consumer notices, and then writes nothing). Past a
        // grace period the sink fails and the engine starts again from the stored progress.
        if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::FencedInstanceId)) {
            metrics::counter!("meltstream_sink_fenced_total", "sink" => self.name.clone()).increment(1);
            return SinkError::Fenced { sink: self.name.clone(), message: format!("{what}: the group no longer knows this consumer as the partitions' owner: {e}") };
        }
        retryable(&self.name, what, e)
    }

    /// After an unknown outcome: true when the transaction `tx` did commit.
    fn landed(&self, tx: &str) -> Result<bool, KafkaError> {
        Ok(self.committed()?.iter().any(|(_, _, _, md)| parse_metadata(md).tx == Some(tx)))
    }

    async fn transact(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        let producer = self.producer().await?;
        // This process's membership and partitions, read together (see
        // `ProgressBoard::membership`): records and offsets of partitions revoked since they
        // were buffered or since the checkpoint was taken stay out.
        let (membership, assigned) = self.board.membership(&self.group_id);
        let board = self.board.clone();
        self.buffered.retain(|b| !board.is_revoked(b.input));
        let mut checkpoint = checkpoint.clone();
        checkpoint.entries.retain(|(tp, _)| assigned.contains(tp));
        checkpoint.assignments.retain(|tp, _| assigned.contains(tp));
        let checkpoint = &checkpoint;
        if let Some((tx, span)) = self.uncertain.clone() {
            let landed = self.landed(&tx).map_err(|e| retryable(&self.name, "reading the group's offsets", e))?;
            self.uncertain = None;
            if landed {
                tracing::info!(sink = %self.name, tx = %tx, "the transaction whose outcome was unknown did commit");
                self.buffered.clear();
                self.uncovered.push(span);
                return Ok(());
            }
        }
        self.tx_seq += 1;
        let mut tx = (format!("{}-{}", self.run_id, self.tx_seq), TxSpan::default());
        if let Err(e) = producer.begin_transaction() {
            return Err(self.classify("begin_transaction", e, &tx));
        }
        let mut deliveries = Vec::with_capacity(self.buffered.len());
        for b in &self.buffered {
            let mut rec = FutureRecord::to(&self.config.topic).key(b.key.as_bytes()).payload(b.payload.as_slice());
            if let Some((tp, o)) = &b.position {
                let v = format!("{}:{}:{o}", tp.0, tp.1);
                rec = rec.headers(OwnedHeaders::new().insert(Header { key: POSITION_HEADER, value: Some(v.as_bytes()) }));
                tx.1.max_pos.entry(tp.clone()).and_modify(|m| *m = (*m).max(*o)).or_insert(*o);
            }
            // The producer's queue is full: wait for librdkafka to send some, every 5 ms.
            let sent = retry(
                Backoff::fixed(Duration::from_millis(5)),
                &mut Some(rec),
                |unsent| {
                    let sent = match unsent.take() {
                        Some(r) => producer.send_result(r).map_err(|(e, r)| {
                            *unsent = Some(r);
                            e
                        }),
                        None => Err(KafkaError::Canceled),
                    };
                    Box::pin(std::future::ready(sent))
                },
                |e| matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
                |_, _| {},
            )
            .await;
            match sent {
                Ok(d) => deliveries.push(d),
                Err(e) => return Err(self.classify("producing", e, &tx)),
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(d)) => {
                    tx.1.first_out.entry(d.partition).and_modify(|o| *o = (*o).min(d.offset)).or_insert(d.offset);
                }
                Ok(Err((e, _))) => return Err(self.classify("delivery", e, &tx)),
                Err(_) => return Err(self.classify("delivery", KafkaError::Canceled, &tx)),
            }
        }
        let spans: Vec<&TxSpan> = self.uncovered.iter().chain(std::iter::once(&tx.1)).collect();
        let mut tpl = TopicPartitionList::new();
        for (tp, p, out) in offset_entries(checkpoint, &spans, &self.stored) {
            let (topic, partition) = (&tp.0, tp.1);
            let mut e = tpl.add_partition(topic, partition);
            let _ = e.set_offset(Offset::Offset(p.resume as i64));
            let state = checkpoint.states.get(&tp);
            let (md, fits) = format_metadata(p.emitted_through, &tx.0, &out, state, self.config.metadata_max_bytes);
            if !fits {
                // PostgreSQL, when it is a sink too, keeps the whole state; alone, a replay of
                // this partition then starts without the recorded decisions.
                metrics::counter!("meltstream_replay_state_truncated_total", "sink" => self.name.clone()).increment(1);
                tracing::warn!(sink = %self.name, topic = %topic, partition, "the replay state does not fit the offset metadata; stored without it");
            }
            e.set_metadata(md);
        }
        if tpl.count() > 0 {
            // The source consumer's membership (generation, member id), so that the broker
            // refuses this transaction if this process lost the partitions (a zombie); before
            // any assignment, the group without a member.
            let cgm = match membership {
                Some(m) => m,
                None => Arc::new(self.consumer.group_metadata().ok_or_else(|| retryable(&self.name, "group metadata", "unavailable"))?),
            };
            let p2 = producer.clone();
            let res = tokio::task::spawn_blocking(move || p2.send_offsets_to_transaction(&tpl, &cgm, TIMEOUT)).await.map_err(|e| retryable(&self.name, "send_offsets", e))?;
            if let Err(e) = res {
                return Err(self.classify("send_offsets_to_transaction", e, &tx));
            }
        }
        let p2 = producer.clone();
        let res = tokio::task::spawn_blocking(move || p2.commit_transaction(TIMEOUT)).await.map_err(|e| retryable(&self.name, "commit", e))?;
        if let Err(e) = res {
            return Err(self.classify("commit_transaction", e, &tx));
        }
        metrics::counter!("meltstream_kafka_sink_transactions_total", "sink" => self.name.clone()).increment(1);
        self.buffered.clear();
        self.uncovered.retain(|s| !s.covered_by(checkpoint));
        if !tx.1.first_out.is_empty() {
            self.uncovered.push(tx.1);
            self.txs_with_records += 1;
            #[cfg(feature = "fault-injection")]
            fault_abort_after(self.txs_with_records);
        }
        Ok(())
    }
}

impl SinkWriter for KafkaSink {
    fn discard(&mut self) {
        self.buffered.clear();
    }

    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        for r in records {
            if r.position.is_none() {
                metrics::counter!("meltstream_kafka_sink_skipped_total", "sink" => self.name.clone(), "kind" => r.record.kind().name()).increment(1);
                continue;
            }
            let key = r.record.build_id().unwrap_or("").to_owned();
            let mut payload = serde_json::to_vec(&r.record).map_err(|e| SinkError::Fatal { sink: self.name.clone(), message: format!("encoding: {e}") })?;
            // Larger than the producer takes (with 512 bytes for the position header and the
            // framing): its dead letter goes in its place (never a halt).
            if payload.len() + key.len() + 512 > self.max_message_bytes {
                let why = format!("a message of {} bytes exceeds message.max.bytes = {}", payload.len() + key.len(), self.max_message_bytes);
                let dead = unwritable(&self.name, r, &why);
                payload = serde_json::to_vec(&dead.record).map_err(|e| SinkError::Fatal { sink: self.name.clone(), message: format!("encoding: {e}") })?;
            }
            let Some((input, o)) = r.position else { continue };
            // Its partition was revoked since: the next owner writes it.
            let Some(tp) = self.board.partition_of(input) else { continue };
            self.buffered.push(Buffered { key, payload, position: Some((tp, o)), input });
        }
        Ok(())
    }

    async fn flush(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        if self.buffered.is_empty() && checkpoint.entries.is_empty() {
            return Ok(());
        }
        self.transact(checkpoint).await
    }

    async fn stored_progress(&mut self) -> Result<Option<StoredProgress>, SinkError> {
        // Settle the last transaction of a previous run first (init_transactions completes or
        // aborts it), so that the offsets and the topic read below are final.
        let _producer = self.producer().await?;
        let committed = self.committed().map_err(|e| retryable(&self.name, format!("reading offsets of group {}", self.group_id).as_str(), e))?;
        let mut out = BTreeMap::new();
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for (topic, partition, resume, md) in committed {
            let resume = resume.max(0) as u64;
            let m = parse_metadata(&md);
            for (p, o) in m.out {
                from.entry(p).and_modify(|x| *x = (*x).min(o)).or_insert(o);
            }
            let et = m.et.unwrap_or(resume).max(resume);
            match m.st.map(PartitionState::from_json) {
                Some(Ok(s)) => drop(self.stored_states.insert((topic.clone(), partition), s)),
                Some(Err(e)) => tracing::warn!(sink = %self.name, topic = %topic, partition, error = %e, "unreadable replay state in the offset metadata; the replay starts without it"),
                None => {}
            }
            out.insert((topic, partition), Progress { resume, emitted_through: et });
        }
        self.stored = out.clone();
        self.written = read_back::read_back(&self.config, &self.group_id, &from).map_err(|e| retryable(&self.name, format!("reading back topic {}", self.config.topic).as_str(), e))?;
        // Until this run's progress covers them, they stay where a restart reads back from.
        let span = TxSpan { first_out: from, max_pos: self.written.iter().filter_map(|(tp, w)| Some((tp.clone(), *w.last()?))).collect() };
        if !span.max_pos.is_empty() {
            self.uncovered.push(span);
        }
        let n: usize = self.written.values().map(|w| w.len()).sum();
        if n > 0 {
            tracing::info!(sink = %self.name, positions = n, "records of the last transactions are already in the topic; a replay skips them");
        }
        Ok(Some(out))
    }

    fn take_written(&mut self) -> Written {
        std::mem::take(&mut self.written)
    }

    fn take_stored_states(&mut self) -> StoredStates {
        std::mem::take(&mut self.stored_states)
    }

}
