//! Routing of emitted records to the sinks that take their kind, with credits: a delivery to a
//! sink first takes one permit per record of that sink's bounded queue, and the records' bytes
//! from the sinks' share of the memory budget.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::Semaphore;

use meltstream_engine::input::event::InputId;
use meltstream_engine::offset_ledger::Hold;
use meltstream_engine::records::{DeadLetterRecord, Emitted, OutputRecord};
use meltstream_engine::topology::RecordKind;

use crate::engine_stats::EngineStats;
use crate::ports::inputs::source_index;
use crate::memory_budget::{records_bytes, MemoryBudget, Stage};
use crate::ports::credits::SinkCredit;
use crate::ports::messages::SinkMsg;
use crate::progress::ProgressBoard;

/// One sink as seen by the producers.
#[derive(Clone)]
pub struct SinkHandle {
    /// Name in the topology.
    pub name: String,
    /// Kinds it takes.
    pub kinds: Vec<RecordKind>,
    /// The actor.
    pub actor: ActorRef<SinkMsg>,
    /// Its queue's credits, one per record.
    pub queue: Arc<Semaphore>,
    /// Queue capacity.
    pub capacity: u32,
}

/// Records split by sink, ready to send.
pub struct Plan {
    per_sink: Vec<Vec<Emitted>>,
    /// Deliveries per hold, to report to the commit coordinator before sending.
    pub deliveries: Vec<(Hold, u32)>,
}

/// All sinks of a topology.
#[derive(Clone)]
pub struct Outputs {
    sinks: Arc<Vec<SinkHandle>>,
    budget: MemoryBudget,
    stats: Arc<EngineStats>,
}

impl Outputs {
    /// Outputs over these sinks; every record routed is shown to `stats`' live view first.
    pub fn new(sinks: Vec<SinkHandle>, budget: MemoryBudget, stats: Arc<EngineStats>) -> Outputs {
        Outputs { sinks: Arc::new(sinks), budget, stats }
    }

    /// The sinks.
    pub fn sinks(&self) -> &[SinkHandle] {
        &self.sinks
    }

    /// True when some sink takes `kind`.
    pub fn wants(&self, kind: RecordKind) -> bool {
        self.sinks.iter().any(|s| s.kinds.contains(&kind))
    }

    /// Splits records by sink and counts deliveries per hold. Records no sink takes are dropped
    /// here (the topology chose not to keep them) and hold nothing; the dashboard's live view
    /// sees every record first.
    pub fn plan(&self, records: Vec<Emitted>) -> Plan {
        self.stats.live.observe(&records);
        let mut per_sink: Vec<Vec<Emitted>> = vec![Vec::new(); self.sinks.len()];
        let mut deliveries: Vec<(Hold, u32)> = Vec::new();
        for r in records {
            let kind = r.record.kind();
            let targets: Vec<usize> = (0..self.sinks.len()).filter(|&i| self.sinks[i].kinds.contains(&kind)).collect();
            for h in r.hold.iter() {
                let n = targets.len() as u32;
                if n == 0 {
                    continue;
                }
                match deliveries.iter_mut().find(|(x, _)| x == h) {
                    Some((_, c)) => *c += n,
                    None => deliveries.push((*h, n)),
                }
            }
            if let Some((&last, rest)) = targets.split_last() {
                for &i in rest {
                    per_sink[i].push(r.clone());
                }
                per_sink[last].push(r);
            }
        }
        Plan { per_sink, deliveries }
    }

    /// Sends a plan, waiting for queue credits (backpressure).
    pub async fn send(&self, plan: Plan) {
        for (i, records) in plan.per_sink.into_iter().enumerate() {
            if records.is_empty() {
                continue;
            }
            let s = &self.sinks[i];
            let n = (records.len() as u32).min(s.capacity);
            let Ok(permit) = s.queue.clone().acquire_many_owned(n).await else { continue };
            let memory = self.budget.acquire(Stage::Sinks, records_bytes(&records)).await;
            if s.actor.cast(SinkMsg::Records(records, SinkCredit::new(permit, memory))).is_err() {
                tracing::warn!(sink = %s.name, "sink is gone; records not delivered");
            }
        }
    }
}

/// Where dead letters come from: names their source and Kafka topic and partition, logs and
/// counts them. Shared by the router (records that did not decode) and the build actors (poison
/// blocks, unmatched layer ends).
#[derive(Clone)]
pub struct DeadLetterDesk {
    /// Source name per source index.
    pub source_names: Arc<Vec<String>>,
    /// Names Kafka partitions.
    pub board: ProgressBoard,
    /// Engine counters.
    pub stats: Arc<EngineStats>,
    /// Rate-limits the log lines per reason (the metric and the records keep every one).
    pub log: Arc<crate::log_limit::LogLimiter>,
}

impl DeadLetterDesk {
    /// Logs what the rate limit kept back (the engine stops).
    pub fn log_suppressed(&self) {
        for (reason, n) in self.log.drain() {
            tracing::warn!(reason = %reason, suppressed = n, "dead letters not logged one by one (see meltstream_dead_letters_total and the dead_letter records)");
        }
    }

    /// Fills in `r`'s source (unless it names another origin already: an operator that
    /// panicked), topic and partition from its input (`input`, the full id, when known; else
    /// the name the record carries); logs and counts it.
    pub fn file(&self, r: &mut DeadLetterRecord, input: Option<InputId>) {
        if r.source.is_empty() {
            r.source = self.source_names.get(source_index(r.input as InputId)).cloned().unwrap_or_default();
        }
        let tp = match input {
            Some(i) => self.board.partition_of(i),
            None => self.board.partition_named(r.input),
        };
        let (topic, partition) = tp.map_or((None, None), |(t, p)| (Some(t), Some(p)));
        r.topic = topic;
        r.partition = partition;
        metrics::counter!("meltstream_dead_letters_total", "reason" => r.reason_kind.clone()).increment(1);
        EngineStats::add(&self.stats.dead_letters, 1);
        match self.log.admit(&r.reason_kind, std::time::Instant::now()) {
            crate::log_limit::Admit::Log { suppressed } => {
                if suppressed > 0 {
                    tracing::warn!(reason = %r.reason_kind, suppressed, "dead letters not logged one by one in the last minute (see meltstream_dead_letters_total and the dead_letter records)");
                }
                tracing::warn!(source = %r.source, topic = ?r.topic, partition = ?r.partition, offset = r.offset, reason = %r.reason, "dead letter");
            }
            crate::log_limit::Admit::Suppress => {}
        }
    }

    /// Files every dead letter among `out`: what a build's pipeline emitted (unmatched layer
    /// ends, operators that panicked).
    pub fn file_all(&self, out: &mut [Emitted]) {
        for e in out.iter_mut() {
            let input = e.position.map(|(i, _)| i);
            if let OutputRecord::DeadLetter(r) = &mut e.record {
                self.file(r, input);
            }
        }
    }
}
