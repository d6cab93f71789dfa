//! Kafka source: a consumer-group member that reads the topology's topics, decodes each message
//! (the seed's JSON, sample blocks, layer events, logs) and hands per-partition batches to the
//! router, each tagged with the partition's offsets.
//!
//! # Inputs
//! Every partition, each time it is assigned to this process, is its own input (its own
//! offsets, watermark and ledger entries): `ports::inputs::kafka_input` packs the source, topic,
//! partition and the assignment's number. The input is named on the [`ProgressBoard`] so that
//! sinks can store its progress as (topic, partition).
//!
//! # Where reading starts
//! On assignment, the partition waits until every transactional sink has said what it stored for
//! it (read at that moment, see `rebalance.rs`), then is positioned at the lowest offset stored;
//! without one, at the group's committed offset or the beginning (`auto.offset.reset =
//! earliest`). The group's own offsets are never committed by the source: a transactional Kafka
//! sink commits them atomically with its records, and the PostgreSQL sink keeps them in its
//! `progress` table.
//!
//! # Decoding
//! The reading task only copies payloads into a per-partition raw batch. A full batch (or one
//! older than `linger_ms`) takes a source-queue credit and goes to its partition's decode task,
//! which decodes it (on tokio's blocking pool) and hands it to the router: partitions decode in
//! parallel, each in order (one task per partition, FIFO), while the reader keeps polling.
//!
//! # Backpressure
//! Out of source-queue credits, the source waits; after 500 ms it pauses all its partitions and
//! keeps polling (so that it stays in the group) until a credit frees up, then resumes them.
//! librdkafka's read-ahead is bounded by `queued.max.messages.kbytes`, and nothing is read
//! ahead beyond it. A message delivered while pausing joins its batch; it is never dropped.
//!
//! # Rebalances
//! Cooperative (`cooperative-sticky`): a revoked partition's builds are dropped without
//! emitting, an assigned one is taken from its stored progress, and the others go on untouched;
//! the engine never restarts for a rebalance (see `rebalance.rs`). Revocation while stopping
//! (closing the consumer) just ends the partitions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::watch;

use meltstream_engine::input::decode::DecodeLimits;
use meltstream_engine::input::event::InputId;
use meltstream_engine::topology::KafkaSourceConfig;

use crate::ports::clock::now_wall_ns;
use crate::ports::inputs::kafka_input;
use crate::ports::messages::{SinkMsg, WatermarkMsg};
use crate::memory_budget::Stage;
use crate::ports::credits::SourceCredit;
use crate::ports::source_ctx::SourceCtx;
use crate::progress::{replay_states, resume_offsets, ProgressBoard, StoredProgress, StoredStates, TopicPartition};

use decode::{Pending, RAW_BATCH_BYTES};
use rebalance::{Hooks, InputCache, Partitions};

mod decode;
mod rebalance;

/// How long a source waits for a credit before it pauses its partitions.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

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
    /// The transactional sinks: what they stored for a partition decides where it resumes
    /// (asked at its assignment).
    pub sinks: Vec<ActorRef<SinkMsg>>,
    /// Decoding limits.
    pub limits: DecodeLimits,
    /// Partition names for the sinks.
    pub board: ProgressBoard,
    /// The watermark coordinator (partitions are registered on assignment).
    pub watermarks: ActorRef<WatermarkMsg>,
    /// Size of the source queue (bounds each partition's decode jobs).
    pub queue_batches: usize,
}

/// State: the reading task and its stop signal.
pub struct KafkaSourceState {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    ctx: SourceCtx,
}

/// The Kafka source actor.
pub struct KafkaSource;

struct Reader {
    args: KafkaSourceArgs,
    consumer: StreamConsumer<Hooks>,
    partitions: Arc<Partitions>,
    /// `partitions.assigned` by (topic index, partition), as of `inputs_version`.
    inputs: InputCache,
    inputs_version: u64,
    /// Assignments of partitions so far (each one's input id carries its number).
    assignments: u32,
    parts: HashMap<InputId, Pending>,
    paused: bool,
    /// The stop signal, for the decode tasks.
    stop: watch::Receiver<bool>,
}

impl Reader {
    fn consumer(args: &KafkaSourceArgs, partitions: Arc<Partitions>) -> Result<StreamConsumer<Hooks>, KafkaError> {
        let c = &args.config;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &c.brokers)
            .set("group.id", &c.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
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
        // Partitions move between live processes one by one (see `rebalance.rs`); the hooks
        // take them incrementally, so no other strategy will do.
        cfg.set("partition.assignment.strategy", "cooperative-sticky");
        let hooks = Hooks {
            board: args.board.clone(),
            watermarks: args.watermarks.clone(),
            router: args.ctx.router.clone(),
            partitions,
            name: args.ctx.name.clone(),
            supervisor: args.ctx.supervisor.clone(),
            stopping: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            group: c.group_id.clone(),
            stats: args.ctx.stats.clone(),
        };
        let consumer: StreamConsumer<Hooks> = cfg.create_with_context(hooks)?;
        let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }

    fn assignment(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.partitions.lock_assigned().keys() {
            tpl.add_partition(t, *p);
        }
        tpl
    }

    /// Takes the partitions' assignment as it now stands: the input each is read as, and the
    /// raw batches of partitions revoked since (dropped: their next owner reads them again).
    fn refresh_inputs(&mut self) {
        Self::refresh(&self.partitions, &self.args.config.topics, &mut self.inputs, &mut self.inputs_version, &mut self.parts);
    }

    /// See [`Reader::refresh_inputs`] (by field, for use while a message borrows the consumer).
    fn refresh(partitions: &Partitions, topics: &[String], inputs: &mut InputCache, version: &mut u64, parts: &mut HashMap<InputId, Pending>) {
        let v = partitions.version.load(Ordering::SeqCst);
        if v == *version {
            return;
        }
        *version = v;
        *inputs = partitions.lock_assigned().iter().map(|((t, p), i)| ((topics.iter().position(|x| x == t).unwrap_or(0), *p), *i)).collect();
        let live: std::collections::HashSet<InputId> = inputs.values().copied().collect();
        // A dropped job queue ends its decode task; what it still decodes meets the router's
        // check of revoked inputs.
        parts.retain(|i, _| live.contains(i));
    }

    /// Adds one message to its partition's raw batch; returns the input when the batch is full.
    /// A message of a partition no longer assigned (fetched before its revocation) is dropped.
    fn add(
        args: &KafkaSourceArgs,
        inputs: &InputCache,
        parts: &mut HashMap<InputId, Pending>,
        stop: &watch::Receiver<bool>,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Option<InputId> {
        let ti = args.config.topics.iter().position(|t| t == m.topic()).unwrap_or(0);
        let input = *inputs.get(&(ti, m.partition()))?;
        let offset = m.offset().max(0) as u64;
        let part = parts.entry(input).or_insert_with(|| Pending::new(args, input, stop));
        let raw = &mut part.raw;
        if raw.msgs.is_empty() {
            raw.first_read_wall_ns = now_wall_ns();
        }
        let payload = m.payload().unwrap_or_default();
        raw.msgs.push((offset, raw.bytes.len(), payload.len()));
        raw.bytes.extend_from_slice(payload);
        (raw.msgs.len() >= args.config.batch_records || raw.bytes.len() >= RAW_BATCH_BYTES).then_some(input)
    }

    /// Sends the batch of `input` (if any), pausing the partitions while out of credits.
    async fn send(&mut self, input: InputId, stop: &mut watch::Receiver<bool>) -> bool {
        let Some(part) = self.parts.get_mut(&input) else { return true };
        if part.raw.msgs.is_empty() {
            return true;
        }
        let raw = std::mem::take(&mut part.raw);
        let seq = part.seq;
        part.seq += 1;
        let credits = self.args.ctx.credits.clone();
        let Some(queue) = self.acquire_or_pause(async move { credits.acquire_owned().await.ok() }, stop).await else { return false };
        let budget = self.args.ctx.budget.clone();
        let bytes = raw.bytes.capacity() + raw.msgs.capacity() * std::mem::size_of::<(u64, usize, usize)>();
        let Some(memory) = self.acquire_or_pause(async move { budget.acquire(Stage::Sources, bytes).await }, stop).await else { return false };
        // A closed job queue: the decode task ended because the engine is gone. The job queue
        // holds at most `source_queue_batches` jobs (each holds a credit), so this never waits.
        match self.parts.get(&input) {
            Some(p) => p.jobs.send((raw, seq, SourceCredit::new(queue, Some(memory)))).await.is_ok(),
            None => false,
        }
    }

    /// Waits for `what` (a credit, or memory of the budget). A short wait is the normal rhythm
    /// of a busy engine: wait without pausing (a pause drops librdkafka's read-ahead, which it
    /// then fetches again). After [`PAUSE_AFTER`], pause every assigned partition and keep
    /// polling (so that the group keeps us) until `what` is there; then resume them. A message
    /// already fetched before the pause took effect is still delivered: it joins its
    /// partition's batch (librdkafka's position is past it, so dropping it would lose it).
    async fn acquire_or_pause<T>(&mut self, what: impl std::future::Future<Output = Option<T>>, stop: &mut watch::Receiver<bool>) -> Option<T> {
        tokio::pin!(what);
        if let Ok(got) = tokio::time::timeout(PAUSE_AFTER, &mut what).await {
            return got;
        }
        let tpl = self.assignment();
        if let Err(e) = self.consumer.pause(&tpl) {
            tracing::warn!(source = %self.args.ctx.name, error = %e, "pausing partitions failed");
        }
        self.paused = true;
        metrics::counter!("meltstream_kafka_pauses_total", "source" => self.args.ctx.name.clone()).increment(1);
        let got = loop {
            tokio::select! {
                c = &mut what => break c,
                _ = stop.changed() => break None,
                m = self.consumer.recv() => {
                    if let Ok(m) = m {
                        Self::refresh(&self.partitions, &self.args.config.topics, &mut self.inputs, &mut self.inputs_version, &mut self.parts);
                        Self::add(&self.args, &self.inputs, &mut self.parts, &self.stop, &m);
                    }
                }
            }
        };
        let tpl = self.assignment();
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(source = %self.args.ctx.name, error = %e, "resuming partitions failed");
        }
        self.paused = false;
        got
    }

    /// Takes the partitions the group assigned: asks every transactional sink what it stored
    /// for them (as it stands now, after any transaction of their previous owner settled), puts
    /// their replay state on the board, registers each as a new input (its own assignment
    /// number) and starts reading each at the lowest offset any sink stored. If the progress
    /// cannot be read, the run is fenced and the engine starts again.
    async fn admit(&mut self) {
        let tps: Vec<TopicPartition> = std::mem::take(&mut *self.partitions.lock_to_admit());
        if tps.is_empty() {
            return;
        }
        let mut stored: Vec<(StoredProgress, StoredStates)> = Vec::new();
        for s in &self.args.sinks {
            match ractor::call!(s, SinkMsg::ReadProgress, tps.clone()) {
                Ok(Ok(got)) => stored.push(got),
                Ok(Err(e)) => return self.consumer.context().fence(format!("source {}: cannot read the stored progress of assigned partitions {tps:?}: {e}", self.args.ctx.name)),
                Err(e) => return self.consumer.context().fence(format!("source {}: a sink did not answer for the stored progress of {tps:?}: {e}", self.args.ctx.name)),
            }
        }
        let progress: Vec<StoredProgress> = stored.iter().map(|(p, _)| p.clone()).collect();
        let resume = resume_offsets(&progress);
        let with_states: Vec<(&StoredProgress, &StoredStates)> = stored.iter().map(|(p, s)| (p, s)).collect();
        let mut restored = replay_states(&with_states, &resume);
        for tp in &tps {
            restored.entry(tp.clone()).or_default();
        }
        self.args.board.restore_partitions(restored);
        let mut tpl = TopicPartitionList::new();
        {
            let mut assigned = self.partitions.lock_assigned();
            for (topic, p) in &tps {
                self.assignments += 1;
                let ti = self.args.config.topics.iter().position(|t| t == topic).unwrap_or(0);
                let input = kafka_input(self.args.source_index, ti, *p, self.assignments);
                self.args.board.register(input, (topic.clone(), *p));
                let _ = self.args.watermarks.cast(WatermarkMsg::Register(input));
                let start = resume.get(&(topic.clone(), *p)).copied();
                match start {
                    Some(o) => {
                        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(o as i64));
                    }
                    None => {
                        tpl.add_partition(topic, *p);
                    }
                }
                tracing::info!(source = %self.args.ctx.name, topic = %topic, partition = p, input, resume = ?start, "partition taken");
                assigned.insert((topic.clone(), *p), input);
            }
            self.partitions.version.fetch_add(1, Ordering::SeqCst);
        }
        if let Err(e) = self.consumer.incremental_assign(&tpl) {
            self.consumer.context().fence(format!("source {}: taking assigned partitions {tps:?} failed: {e}", self.args.ctx.name));
        }
    }

    /// How long the group session has been lost without a new assignment, once beyond `limit`
    /// (then the clock starts again, so that a fence is asked for once).
    fn not_rejoined(&self, limit: Duration) -> Option<Duration> {
        let mut lost = self.partitions.lost_since.lock().unwrap_or_else(|e| e.into_inner());
        let waited = lost.as_ref()?.elapsed();
        (waited > limit && !self.consumer.context().fenced.load(Ordering::SeqCst)).then(|| {
            *lost = None;
            waited
        })
    }

    async fn flush_all(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let inputs: Vec<InputId> = self.parts.iter().filter(|(_, p)| !p.raw.msgs.is_empty()).map(|(i, _)| *i).collect();
        for i in inputs {
            if !self.send(i, stop).await {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let linger = Duration::from_millis(self.args.config.linger_ms.max(1));
        // A consumer that lost its group session rejoins by itself once the coordinator answers;
        // one that has not been assigned anything long after (a broker back for long) is
        // replaced: the engine starts again from the stored progress.
        let session_ms: u64 = self.args.config.properties.get("session.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(45_000);
        let rejoin_limit = Duration::from_millis(session_ms.saturating_mul(10)).max(Duration::from_secs(120));
        let mut tick = tokio::time::interval(linger);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    if let Some(waited) = self.not_rejoined(rejoin_limit) {
                        let reason = format!("source {}: the consumer lost its group session and did not rejoin within {} s; starting again with a new consumer", self.args.ctx.name, waited.as_secs());
                        tracing::error!(source = %self.args.ctx.name, "{reason}");
                        metrics::counter!("meltstream_kafka_rejoin_timeouts_total", "source" => self.args.ctx.name.clone()).increment(1);
                        self.consumer.context().fence(reason);
                    }
                    self.refresh_inputs();
                    let held = self.partitions.lock_assigned().len();
                    self.args.ctx.stats.health.source(&self.args.ctx.name, crate::health::SourceState::Running { partitions: Some(held) }, now_wall_ns());
                    if !self.flush_all(&mut stop).await { break; }
                }
                _ = self.partitions.admit.notified() => self.admit().await,
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        // A message that arrives while paused would be refetched; here we are not.
                        Self::refresh(&self.partitions, &self.args.config.topics, &mut self.inputs, &mut self.inputs_version, &mut self.parts);
                        let full = Self::add(&self.args, &self.inputs, &mut self.parts, &self.stop, &m);
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
        self.consumer.context().stopping.store(true, Ordering::SeqCst);
        self.consumer.context().board.stop_reading();
        // Batches not yet sent are dropped: their offsets were never committed, a restart reads
        // them again. The decode tasks see the stop and end; wait for them, so that no batch
        // reaches the router after this source has said it ended.
        let _ = self.paused;
        for (_, p) in self.parts.drain() {
            drop(p.jobs);
            let _ = p.worker.await;
        }
        tracing::info!(source = %self.args.ctx.name, "kafka source stopped");
    }
}

impl Actor for KafkaSource {
    type Msg = KafkaSourceMsg;
    type State = KafkaSourceState;
    type Arguments = KafkaSourceArgs;

    async fn pre_start(&self, _myself: ActorRef<KafkaSourceMsg>, args: KafkaSourceArgs) -> Result<KafkaSourceState, ActorProcessingErr> {
        let partitions = Arc::new(Partitions::default());
        let consumer = Reader::consumer(&args, partitions.clone())
            .map_err(|e| format!("source {}: cannot create the Kafka consumer for {}: {e}", args.ctx.name, args.config.brokers))?;
        tracing::info!(source = %args.ctx.name, brokers = %args.config.brokers, topics = ?args.config.topics, group = %args.config.group_id, "kafka source subscribed");
        let ctx = args.ctx.clone();
        let (stop, stop_rx) = watch::channel(false);
        let reader = Reader { args, consumer, partitions, inputs: InputCache::new(), inputs_version: 0, assignments: 0, parts: HashMap::new(), paused: false, stop: stop_rx.clone() };
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

    /// Stopped by its supervisor (a failed tree) rather than by `Stop`: the reading task must
    /// end too and close its consumer, or a restarted engine would meet this one's consumer in
    /// the group under the same member id.
    async fn post_stop(&self, _myself: ActorRef<KafkaSourceMsg>, st: &mut KafkaSourceState) -> Result<(), ActorProcessingErr> {
        let _ = st.stop.send(true);
        if let Some(t) = st.task.take() {
            let abort = t.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(30), t).await.is_err() {
                tracing::error!(source = %st.ctx.name, "the Kafka reading task did not end within 30 s of the stop; aborting it");
                abort.abort();
            }
        }
        Ok(())
    }
}

