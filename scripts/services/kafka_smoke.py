#!/usr/bin/env python3
"""kafka_smoke.py — prove a running broker really works (run via `kafka.sh smoke`).

1. plain produce + consume of one message on a fresh topic;
2. transactions: commit one message, abort another, then a read_committed
   consumer must see the committed one and must NOT see the aborted one
   (a read_uncommitted consumer must see both, proving the abort was real).
Env: KAFKA_BOOTSTRAP (default 127.0.0.1:19092). Exit 0 on success.
"""
import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
RUN = uuid.uuid4().hex[:8]
DEADLINE_S = 60


def fail(msg):
    print(f"kafka_smoke: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def create_topic(name, partitions=1):
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    fut[name].result(timeout=30)


def consume_all(topic, isolation, expect_at_least, idle_s=3.0):
    """Read the topic from the start until `expect_at_least` values arrived and
    then `idle_s` passed without more (so extra, unwanted messages would show up)."""
    c = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": f"smoke-{isolation}-{RUN}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": isolation,
    })
    c.subscribe([topic])
    seen, start, last = [], time.time(), None
    try:
        while time.time() - start < DEADLINE_S:
            m = c.poll(0.5)
            if m is None:
                if len(seen) >= expect_at_least and last and time.time() - last > idle_s:
                    break
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF, not an error
                    continue
                raise KafkaException(m.error())
            seen.append(m.value().decode())
            last = time.time()
    finally:
        c.close()
    return seen


def delivered(err, _msg):
    if err is not None:
        fail(f"delivery failed: {err}")


def plain():
    topic = f"smoke-plain-{RUN}"
    create_topic(topic)
    p = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    p.produce(topic, key=b"k", value=b"hello-meltstream", on_delivery=delivered)
    if p.flush(30) != 0:
        fail("plain produce did not flush in 30 s")
    seen = consume_all(topic, "read_uncommitted", 1, idle_s=1.0)
    if seen != ["hello-meltstream"]:
        fail(f"plain: expected ['hello-meltstream'], got {seen}")
    print("kafka_smoke: plain produce+consume OK")


def transactional():
    topic = f"smoke-txn-{RUN}"
    create_topic(topic)
    p = Producer({
        "bootstrap.servers": BOOTSTRAP,
        "transactional.id": f"smoke-txn-{RUN}",
        "enable.idempotence": True,
    })
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, value=b"committed-1", on_delivery=delivered)
    p.commit_transaction(30)
    p.begin_transaction()
    p.produce(topic, value=b"aborted-1", on_delivery=delivered)
    p.flush(30)  # make sure the aborted record really reached the log
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, value=b"committed-2", on_delivery=delivered)
    p.commit_transaction(30)

    rc = consume_all(topic, "read_committed", 2)
    if rc != ["committed-1", "committed-2"]:
        fail(f"read_committed: expected ['committed-1', 'committed-2'], got {rc}")
    ru = consume_all(topic, "read_uncommitted", 3)
    if ru != ["committed-1", "aborted-1", "committed-2"]:
        fail(f"read_uncommitted: expected the aborted record too, got {ru}")
    print("kafka_smoke: transactions OK (aborted record hidden from read_committed)")


if __name__ == "__main__":
    t0 = time.time()
    plain()
    transactional()
    print(f"kafka_smoke: all OK against {BOOTSTRAP} in {time.time() - t0:.1f}s")
