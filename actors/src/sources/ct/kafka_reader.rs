//! The Kafka side of the `ct` source: a consumer that assigns itself every partition of the CT
//! topic from the beginning (no group membership, no committed offsets: CT lists are small, and
//! reading them again on every start is what makes a restart exactly-once), and polls it in
//! chunks on tokio's blocking pool. It only copies messages out; decoding is the source's.
//!
//! "Read to its end" is librdkafka's partition EOF (`enable.partition.eof`): every partition has
//! delivered everything up to its end offset of that moment (transaction markers included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use meltstream_engine::topology::CtSourceConfig;

/// How long one blocking poll waits at most: a `Stop` is handled within about this long.
const POLL: Duration = Duration::from_millis(200);
/// Messages copied out per chunk.
const CHUNK: usize = 500;

/// One message of the CT topic.
pub struct CtMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Payload (empty when the message has none).
    pub payload: Vec<u8>,
}

/// What one poll brought.
#[derive(Default)]
pub struct Chunk {
    /// Messages, in partition order.
    pub messages: Vec<CtMessage>,
    /// Per partition polled: at its end after this chunk (its EOF came after its last message).
    pub at_end: BTreeMap<i32, bool>,
    /// Consumer errors (logged by the caller; librdkafka retries by itself).
    pub errors: Vec<String>,
}

/// The consumer and what it knows of each partition's end.
pub struct KafkaReader {
    consumer: Arc<BaseConsumer>,
    /// Per partition: at its end (no message since its EOF).
    at_end: BTreeMap<i32, bool>,
}

impl KafkaReader {
    /// Connects, finds the topic's partitions and assigns them all from the beginning
    /// (blocking: call it on the blocking pool).
    pub fn open(c: &CtSourceConfig, source: &str) -> Result<KafkaReader, String> {
        let (Some(brokers), Some(topic)) = (c.brokers.as_deref(), c.topic.as_deref()) else {
            return Err(format!("source {source}: a Kafka ct source needs `brokers` and `topic`"));
        };
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("group.id", &c.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &c.properties {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().map_err(|e| format!("source {source}: cannot create the Kafka consumer: {e}"))?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30)).map_err(|e| format!("source {source}: cannot read the metadata of topic {topic:?} from {brokers}: {e}"))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!("source {source}: topic {topic:?} is not in the broker's metadata"));
        };
        if let Some(e) = t.error() {
            return Err(format!("source {source}: topic {topic:?}: {:?} (create it first)", rdkafka::types::RDKafkaRespErr::from(e)));
        }
        let mut tpl = TopicPartitionList::new();
        let mut at_end = BTreeMap::new();
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning).map_err(|e| format!("source {source}: {e}"))?;
            at_end.insert(p.id(), false);
        }
        if at_end.is_empty() {
            return Err(format!("source {source}: topic {topic:?} has no partitions"));
        }
        consumer.assign(&tpl).map_err(|e| format!("source {source}: cannot assign topic {topic:?}: {e}"))?;
        Ok(KafkaReader { consumer: Arc::new(consumer), at_end })
    }

    /// Polls for up to [`POLL`] (or [`CHUNK`] messages), on the blocking pool.
    pub async fn poll(&mut self) -> Result<Chunk, String> {
        let consumer = self.consumer.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut chunk = Chunk::default();
            let deadline = Instant::now() + POLL;
            while chunk.messages.len() < CHUNK {
                let left = deadline.saturating_duration_since(Instant::now());
                match consumer.poll(left) {
                    None => break,
                    Some(Ok(m)) => {
                        chunk.at_end.insert(m.partition(), false);
                        chunk.messages.push(CtMessage { partition: m.partition(), offset: m.offset(), payload: m.payload().unwrap_or_default().to_vec() });
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        chunk.at_end.insert(p, true);
                    }
                    Some(Err(e)) => chunk.errors.push(e.to_string()),
                }
                if left.is_zero() {
                    break;
                }
            }
            chunk
        })
        .await
        .map_err(|e| format!("the Kafka poll task failed: {e}"))?;
        self.at_end.extend(chunk.at_end.iter().map(|(p, e)| (*p, *e)));
        Ok(chunk)
    }

    /// Every partition has been read to its end.
    pub fn drained(&self) -> bool {
        self.at_end.values().all(|e| *e)
    }
}
