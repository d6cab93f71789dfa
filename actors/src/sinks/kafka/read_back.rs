//! The Kafka sink's read-back: after a restart (or an assignment), the records of its last
//! transactions that lie ahead of the stored progress, found by their position headers.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use meltstream_engine::topology::KafkaSinkConfig;

use crate::progress::Written;

use super::metadata::{parse_position, POSITION_HEADER};
use super::TIMEOUT;

/// Reads the sink's topic from `from` (per partition) to its end with `read_committed`;
/// returns the source positions of the records found.
pub(super) fn read_back(config: &KafkaSinkConfig, group_id: &str, from: &BTreeMap<i32, i64>) -> Result<Written, KafkaError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}-readback", group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    for (k, v) in &config.properties {
        cc.set(k, v);
    }
    let c: BaseConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for (&p, &o) in from {
        let (_, high) = c.fetch_watermarks(&config.topic, p, TIMEOUT)?;
        if high > o {
            tpl.add_partition_offset(&config.topic, p, Offset::Offset(o))?;
            ends.insert(p, high);
        }
    }
    let mut written = Written::new();
    if ends.is_empty() {
        return Ok(written);
    }
    c.assign(&tpl)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    // Transaction markers take offsets too, so the end is told by the partition's EOF
    // event, not by the last record's offset.
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        match c.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) => {
                if let Some(pos) = m.headers().and_then(|h| h.iter().find(|h| h.key == POSITION_HEADER).and_then(|h| h.value).and_then(parse_position)) {
                    written.entry(pos.0).or_default().insert(pos.1);
                }
            }
        }
    }
    Ok(written)
}
