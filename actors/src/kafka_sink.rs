//! Kafka sink: a transactional producer. Every flush is one Kafka transaction holding the
//! buffered records *and* the source consumer group's offsets (`send_offsets_to_transaction`):
//! a `read_committed` reader sees the records exactly when the offsets that produced them are
//! committed, never one without the other.
//!
//! # What is stored with the offsets
//! The committed offset of each source partition is its `resume` offset; its metadata string
//! holds the partition's `emitted_through` and the transaction's id
//! (`meltstream:v1:et=<offset>:tx=<run>-<n>`). After a restart the sink drops positioned records
//! below `emitted_through` (already in the topic), and the tx id tells whether a commit whose
//! outcome was lost with the connection did land.
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
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use meltstream_engine::records::Emitted;
use meltstream_engine::topology::KafkaSinkConfig;

use crate::progress::{Checkpoint, Progress, StoredProgress};
use crate::sink::{SinkError, SinkWriter};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The Kafka sink writer.
pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    /// The source's topics and group, whose offsets the transactions commit.
    source_topics: Vec<String>,
    group_id: String,
    producer: Option<FutureProducer>,
    consumer: BaseConsumer,
    buffered: Vec<(String, Vec<u8>)>,
    run_id: u64,
    tx_seq: u64,
    /// The tx id of a commit whose outcome is unknown.
    uncertain: Option<String>,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

fn retryable(sink: &str, what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Retryable { sink: sink.to_owned(), message: format!("{what}: {e}") }
}

/// Parses the metadata string written with an offset.
fn parse_metadata(s: &str) -> (Option<u64>, Option<&str>) {
    let mut et = None;
    let mut tx = None;
    for part in s.strip_prefix("meltstream:v1:").unwrap_or("").split(':') {
        if let Some(v) = part.strip_prefix("et=") {
            et = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("tx=") {
            tx = Some(v);
        }
    }
    (et, tx)
}

impl KafkaSink {
    /// A sink named `name` committing offsets of `group_id` over `source_topics`.
    pub fn new(name: &str, config: KafkaSinkConfig, source_topics: Vec<String>, group_id: String) -> Result<KafkaSink, SinkError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &config.brokers).set("group.id", &group_id).set("enable.auto.commit", "false");
        for (k, v) in &config.properties {
            cc.set(k, v);
        }
        let consumer: BaseConsumer = cc.create().map_err(|e| SinkError::Fatal { sink: name.to_owned(), message: format!("creating the offsets client: {e}") })?;
        let run_id = (crate::now_wall_ns() as u64 / 1_000_000) * 1000 + RUNS.fetch_add(1, Ordering::Relaxed) % 1000;
        Ok(KafkaSink {
            name: name.to_owned(),
            config,
            source_topics,
            group_id,
            producer: None,
            consumer,
            buffered: Vec::new(),
            run_id,
            tx_seq: 0,
            uncertain: None,
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

    fn classify(&mut self, what: &str, e: KafkaError, tx: &str) -> SinkError {
        let (fatal, abort) = match &e {
            KafkaError::Transaction(t) => (t.is_fatal(), t.txn_requires_abort()),
            _ => (matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)), false),
        };
        if fatal {
            self.uncertain = Some(tx.to_owned());
            self.reset_producer(&e.to_string());
        } else if abort {
            if let Some(p) = &self.producer {
                if let Err(ae) = p.abort_transaction(TIMEOUT) {
                    self.uncertain = Some(tx.to_owned());
                    self.reset_producer(&format!("abort failed: {ae}"));
                }
            }
        } else {
            // Outcome unknown (a timeout): a new producer settles the transaction, and we check.
            self.uncertain = Some(tx.to_owned());
            self.reset_producer(&e.to_string());
        }
        retryable(&self.name, what, e)
    }

    /// After an unknown outcome: true when the transaction `tx` did commit.
    fn landed(&self, tx: &str) -> Result<bool, KafkaError> {
        Ok(self.committed()?.iter().any(|(_, _, _, md)| parse_metadata(md).1 == Some(tx)))
    }

    async fn transact(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        let producer = self.producer().await?;
        if let Some(tx) = self.uncertain.clone() {
            let landed = self.landed(&tx).map_err(|e| retryable(&self.name, "reading the group's offsets", e))?;
            self.uncertain = None;
            if landed {
                tracing::info!(sink = %self.name, tx = %tx, "the transaction whose outcome was unknown did commit");
                self.buffered.clear();
                return Ok(());
            }
        }
        self.tx_seq += 1;
        let tx = format!("{}-{}", self.run_id, self.tx_seq);
        if let Err(e) = producer.begin_transaction() {
            return Err(self.classify("begin_transaction", e, &tx));
        }
        let mut deliveries = Vec::with_capacity(self.buffered.len());
        for (key, payload) in &self.buffered {
            let mut rec = FutureRecord::to(&self.config.topic).key(key.as_bytes()).payload(payload.as_slice());
            loop {
                match producer.send_result(rec) {
                    Ok(d) => {
                        deliveries.push(d);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(self.classify("producing", e, &tx)),
                }
            }
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(self.classify("delivery", e, &tx)),
                Err(_) => return Err(self.classify("delivery", KafkaError::Canceled, &tx)),
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), p) in &checkpoint.entries {
            let mut e = tpl.add_partition(topic, *partition);
            let _ = e.set_offset(Offset::Offset(p.resume as i64));
            e.set_metadata(format!("meltstream:v1:et={}:tx={tx}", p.emitted_through));
        }
        if tpl.count() > 0 {
            let cgm = self.consumer.group_metadata().ok_or_else(|| retryable(&self.name, "group metadata", "unavailable"))?;
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
        Ok(())
    }
}

impl SinkWriter for KafkaSink {
    async fn write(&mut self, records: &[Emitted]) -> Result<(), SinkError> {
        for r in records {
            if r.position.is_none() {
                metrics::counter!("meltstream_kafka_sink_skipped_total", "sink" => self.name.clone(), "kind" => r.record.kind().name()).increment(1);
                continue;
            }
            let key = r.record.build_id().unwrap_or("").to_owned();
            let payload = serde_json::to_vec(&r.record).map_err(|e| SinkError::Fatal { sink: self.name.clone(), message: format!("encoding: {e}") })?;
            self.buffered.push((key, payload));
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
        let committed = self.committed().map_err(|e| retryable(&self.name, format!("reading offsets of group {}", self.group_id).as_str(), e))?;
        let mut out = BTreeMap::new();
        for (topic, partition, resume, md) in committed {
            let resume = resume.max(0) as u64;
            let et = parse_metadata(&md).0.unwrap_or(resume).max(resume);
            out.insert((topic, partition), Progress { resume, emitted_through: et });
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_metadata;

    #[test]
    fn metadata_round_trip() {
        assert_eq!(parse_metadata("meltstream:v1:et=42:tx=9-3"), (Some(42), Some("9-3")));
        assert_eq!(parse_metadata(""), (None, None));
        assert_eq!(parse_metadata("someone else's"), (None, None));
    }
}
