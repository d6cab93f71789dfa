//! Real Kafka and PostgreSQL for the integration tests: the environment `./scripts/test`
//! exports, and small clients to write input and read what the engine committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const MISSING: &str = "run the suite through ./scripts/test, which starts Kafka (scripts/services/kafka.sh) and PostgreSQL (scripts/services/postgres.sh) and exports KAFKA_BOOTSTRAP and DATABASE_URL";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {MISSING}"))
}

pub async fn produce(brokers: &str, topic: &str, lines: &[(String, String)]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for (k, v) in lines {
        let f = p.send_result(FutureRecord::to(topic).key(k.as_str()).payload(v.as_str())).map_err(|(e, _)| e).expect("enqueue");
        pending.push(f);
        if pending.len() >= 5000 {
            for f in pending.drain(..) {
                f.await.expect("delivery").map_err(|(e, _)| e).expect("delivered");
            }
        }
    }
    for f in pending {
        f.await.expect("delivery").map_err(|(e, _)| e).expect("delivered");
    }
}

pub fn end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "meltstream-test-probe").create().expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut out = BTreeMap::new();
    for p in md.topics()[0].partitions() {
        let (_, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
        out.insert(p.id(), hi);
    }
    out
}

/// Every committed record of `topic`, read with `read_committed`, sorted.
pub fn read_committed(brokers: &str, topic: &str) -> Vec<String> {
    let mut out = read_committed_with(brokers, topic, &end_offsets(brokers, topic), Duration::from_secs(60), |m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    out.sort();
    out
}

/// `f` of every committed record of `topic` up to `ends` (per partition), read with
/// `read_committed`, in the order read; fails after `patience`.
pub fn read_committed_with<T>(brokers: &str, topic: &str, ends: &BTreeMap<i32, i64>, patience: Duration, mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> T) -> Vec<T> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "meltstream-test-reader")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + patience;
    loop {
        let done = ends.iter().all(|(p, hi)| match c.position().ok().and_then(|pos| pos.find_partition(topic, *p).map(|e| e.offset())) {
            Some(Offset::Offset(o)) => o >= *hi,
            _ => *hi == 0,
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "reading {topic} did not reach its end offsets {ends:?}");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            out.push(f(&m.expect("consume")));
        }
    }
    out
}

pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

