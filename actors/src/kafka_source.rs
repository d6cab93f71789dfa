//! Kafka source: a consumer-group member that reads the topology's topics, decodes each message
//! (the seed's JSON, sample blocks, layer events, logs) and hands per-partition batches to the
//! router, each tagged with the partition's offsets.
//!
//! # Inputs
//! Every partition is its own input (its own offsets, watermark and ledger entries):
//! `input = (source index + 1) << 24 | topic index << 16 | partition`. The input is named on the
//! [`ProgressBoard`] so that sinks can store its progress as (topic, partition).
//!
//! # Where reading starts
//! On assignment, a partition is positioned at the offset the transactional sinks stored
//! (`resume`, passed in by the engine); without one, at the group's committed offset or the
//! beginning (`auto.offset.reset = earliest`). The group's own offsets are never committed by the
//! source: a transactional Kafka sink commits them atomically with its records, and the
//! PostgreSQL sink keeps them in its `progress` table.
//!
//! # Backpressure
//! Out of source-queue credits, the source waits; after 500 ms it pauses all its partitions and
//! keeps polling (so that it stays in the group) until a credit frees up, then resumes them.
//! librdkafka's read-ahead is bounded by `queued.max.messages.kbytes`, and nothing is read
//! ahead beyond it. A message delivered while pausing joins its batch; it is never dropped.
//!
//! # Revocation
//! A revoked partition stops holding the watermark. Its open windows are not handed over: the
//! new owner replays them from the stored progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::watch;

use meltstream_engine::batch::{InputId, RecordBatch, SourceSpan};
use meltstream_engine::decode::{DeadLetter, DecodeLimits, Decoder, RejectReason};
use meltstream_engine::topology::KafkaSourceConfig;

use crate::now_wall_ns;
use crate::progress::{ProgressBoard, TopicPartition};
use crate::source::SourceCtx;
use crate::watermark_coordinator::WatermarkMsg;

/// How long a source waits for a credit before it pauses its partitions.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// The input id of `partition` of the `topic`-th topic of source `source`.
pub fn kafka_input(source: usize, topic: usize, partition: i32) -> InputId {
    (((source as u32) + 1) << 24) | ((topic as u32 & 0xff) << 16) | (partition as u32 & 0xffff)
}

/// The index in the topology of the source that `input` belongs to.
pub fn source_index(input: InputId) -> usize {
    match input >> 24 {
        0 => input as usize,
        s => s as usize - 1,
    }
}

/// Messages of the Kafka source actor.
pub enum KafkaSourceMsg {
    /// Stop reading (shutdown).
    Stop,
}

/// Arguments.
pub struct KafkaSourceArgs {
    /// Link to the engine (its `input` is unused: partitions are inputs).
    pub ctx: SourceCtx,
    /// Index of this source in the topology.
    pub source_index: usize,
    /// Its configuration.
    pub config: KafkaSourceConfig,
    /// Where to start each partition (from the sinks' stored progress).
    pub resume: HashMap<TopicPartition, u64>,
    /// Decoding limits.
    pub limits: DecodeLimits,
    /// Partition names for the sinks.
    pub board: ProgressBoard,
    /// The watermark coordinator (partitions are registered on assignment).
    pub watermarks: ActorRef<WatermarkMsg>,
}

/// State: the reading task and its stop signal.
pub struct KafkaSourceState {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    ctx: SourceCtx,
}

/// The Kafka source actor.
pub struct KafkaSource;

/// Rebalance hook: positions assigned partitions at the stored progress and registers them.
struct Hooks {
    source_index: usize,
    topics: Vec<String>,
    resume: HashMap<TopicPartition, u64>,
    board: ProgressBoard,
    watermarks: ActorRef<WatermarkMsg>,
    assigned: Arc<Mutex<BTreeMap<TopicPartition, InputId>>>,
    name: String,
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

impl ConsumerContext for Hooks {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
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
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
                for el in tpl.elements() {
                    if let Some(input) = assigned.remove(&(el.topic().to_owned(), el.partition())) {
                        let _ = self.watermarks.cast(WatermarkMsg::Finish(input));
                        tracing::info!(source = %self.name, topic = el.topic(), partition = el.partition(), "partition revoked");
                    }
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

/// A batch being filled for one partition.
struct Pending {
    batch: RecordBatch,
    decoder: Decoder,
    seq: u64,
}

struct Reader {
    args: KafkaSourceArgs,
    consumer: StreamConsumer<Hooks>,
    assigned: Arc<Mutex<BTreeMap<TopicPartition, InputId>>>,
    parts: HashMap<InputId, Pending>,
    paused: bool,
}

impl Reader {
    fn consumer(args: &KafkaSourceArgs, assigned: Arc<Mutex<BTreeMap<TopicPartition, InputId>>>) -> Result<StreamConsumer<Hooks>, KafkaError> {
        let c = &args.config;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &c.brokers)
            .set("group.id", &c.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            // Static membership: a restarted engine takes its partitions back at once instead of
            // waiting for its killed predecessor's session to expire (a second process in the
            // same group sets its own `group.instance.id` in `properties`).
            .set("group.instance.id", format!("{}-{}", c.group_id, args.ctx.name))
            .set("queued.max.messages.kbytes", c.prefetch_kib.to_string())
            // When the read-ahead is full librdkafka postpones the next fetch by this much
            // (default 1 s): the engine drains 16 MiB in a few ms, then waited out the rest of
            // the second, which held a Kafka source to ~30 MB/s with the engine idle.
            .set("fetch.queue.backoff.ms", "5")
            .set("statistics.interval.ms", "100")
            .set("message.max.bytes", (args.limits.max_record_bytes + 4096).max(1_000_000).to_string());
        for (k, v) in &c.properties {
            cfg.set(k, v);
        }
        let hooks = Hooks {
            source_index: args.source_index,
            topics: c.topics.clone(),
            resume: args.resume.clone(),
            board: args.board.clone(),
            watermarks: args.watermarks.clone(),
            assigned,
            name: args.ctx.name.clone(),
        };
        let consumer: StreamConsumer<Hooks> = cfg.create_with_context(hooks)?;
        let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.assigned.lock().unwrap_or_else(|e| e.into_inner()).keys() {
            tpl.add_partition(t, *p);
        }
        tpl
    }

    /// Adds one message to its partition's batch; returns the input when the batch is full.
    fn add(args: &KafkaSourceArgs, parts: &mut HashMap<InputId, Pending>, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<InputId> {
        let ti = args.config.topics.iter().position(|t| t == m.topic()).unwrap_or(0);
        let input = kafka_input(args.source_index, ti, m.partition());
        let offset = m.offset().max(0) as u64;
        let cap = args.config.batch_records;
        let limits = args.limits;
        let part = parts.entry(input).or_insert_with(|| Pending { batch: RecordBatch::with_capacity(cap), decoder: Decoder::new(input, limits), seq: 0 });
        let b = &mut part.batch;
        if b.records == 0 {
            b.span = SourceSpan { input, seq: part.seq, first_offset: offset, next_offset: offset };
        }
        match m.payload() {
            Some(raw) if !raw.is_empty() => part.decoder.decode(raw, offset, now_wall_ns(), b),
            _ => {
                b.records += 1;
                b.dead.push(DeadLetter::new(input, offset, RejectReason::Schema("empty message".into()), b""));
            }
        }
        b.span.next_offset = offset + 1;
        (b.records as usize >= cap).then_some(input)
    }

    /// Sends the batch of `input` (if any), pausing the partitions while out of credits.
    async fn send(&mut self, input: InputId, stop: &mut watch::Receiver<bool>) -> bool {
        let Some(part) = self.parts.get_mut(&input) else { return true };
        if part.batch.records == 0 {
            return true;
        }
        let cap = self.args.config.batch_records;
        let batch = std::mem::replace(&mut part.batch, RecordBatch::with_capacity(cap));
        part.seq += 1;
        let credit = match self.args.ctx.credits.clone().try_acquire_owned() {
            Ok(c) => c,
            // A short wait is the normal rhythm of a busy engine: wait without pausing (a pause
            // drops librdkafka's read-ahead, which it then fetches again).
            Err(_) => match tokio::time::timeout(PAUSE_AFTER, self.args.ctx.credits.clone().acquire_owned()).await {
                Ok(Ok(c)) => c,
                Ok(Err(_)) => return false,
                Err(_) => match self.wait_paused(stop).await {
                    Some(c) => c,
                    None => return false,
                },
            },
        };
        self.args.ctx.send_credited(batch, credit)
    }

    /// Pauses every assigned partition and keeps polling (so that the group keeps us) until a
    /// credit frees up; then resumes them. A message already fetched before the pause took
    /// effect is still delivered: it joins its partition's batch (librdkafka's position is past
    /// it, so dropping it would lose it).
    async fn wait_paused(&mut self, stop: &mut watch::Receiver<bool>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let tpl = self.assignment();
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(source = %self.args.ctx.name, error = %e, "pausing partitions failed");
        }
        self.paused = true;
        metrics::counter!("meltstream_kafka_pauses_total", "source" => self.args.ctx.name.clone()).increment(1);
        let credits = self.args.ctx.credits.clone();
        let acquire = credits.acquire_owned();
        tokio::pin!(acquire);
        let credit = loop {
            tokio::select! {
                c = &mut acquire => break c.ok(),
                _ = stop.changed() => break None,
                m = self.consumer.recv() => {
                    if let Ok(m) = m {
                        Self::add(&self.args, &mut self.parts, &m);
                    }
                }
            }
        };
        let tpl = self.assignment();
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(source = %self.args.ctx.name, error = %e, "resuming partitions failed");
        }
        self.paused = false;
        credit
    }

    async fn flush_all(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let inputs: Vec<InputId> = self.parts.iter().filter(|(_, p)| p.batch.records > 0).map(|(i, _)| *i).collect();
        for i in inputs {
            if !self.send(i, stop).await {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let linger = Duration::from_millis(self.args.config.linger_ms.max(1));
        let mut tick = tokio::time::interval(linger);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    if !self.flush_all(&mut stop).await { break; }
                }
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        // A message that arrives while paused would be refetched; here we are not.
                        let full = Self::add(&self.args, &mut self.parts, &m);
                        drop(m);
                        if let Some(input) = full {
                            if !self.send(input, &mut stop).await { break; }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = %self.args.ctx.name, error = %e, "kafka consume error");
                        metrics::counter!("meltstream_kafka_consume_errors_total", "source" => self.args.ctx.name.clone()).increment(1);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        // Batches not yet sent are dropped: their offsets were never committed, a restart reads
        // them again.
        let _ = self.paused;
        tracing::info!(source = %self.args.ctx.name, "kafka source stopped");
    }
}

impl Actor for KafkaSource {
    type Msg = KafkaSourceMsg;
    type State = KafkaSourceState;
    type Arguments = KafkaSourceArgs;

    async fn pre_start(&self, _myself: ActorRef<KafkaSourceMsg>, args: KafkaSourceArgs) -> Result<KafkaSourceState, ActorProcessingErr> {
        let assigned = Arc::new(Mutex::new(BTreeMap::new()));
        let consumer = Reader::consumer(&args, assigned.clone())
            .map_err(|e| format!("source {}: cannot create the Kafka consumer for {}: {e}", args.ctx.name, args.config.brokers))?;
        tracing::info!(source = %args.ctx.name, brokers = %args.config.brokers, topics = ?args.config.topics, group = %args.config.group_id, "kafka source subscribed");
        let ctx = args.ctx.clone();
        let (stop, stop_rx) = watch::channel(false);
        let reader = Reader { args, consumer, assigned, parts: HashMap::new(), paused: false };
        let task = tokio::spawn(reader.run(stop_rx));
        Ok(KafkaSourceState { stop, task: Some(task), ctx })
    }

    async fn handle(&self, myself: ActorRef<KafkaSourceMsg>, msg: KafkaSourceMsg, st: &mut KafkaSourceState) -> Result<(), ActorProcessingErr> {
        match msg {
            KafkaSourceMsg::Stop => {
                let _ = st.stop.send(true);
                if let Some(t) = st.task.take() {
                    let _ = t.await;
                }
                st.ctx.ended();
                myself.stop(None);
            }
        }
        Ok(())
    }
}
