#!/usr/bin/env python3
"""Sends the seed's two example messages, exactly as the seed wrote them, plus the same reading
at 1750 (above the seed's 1700 limit), to a Kafka topic with a standard client (confluent-kafka).

    python3 scripts/examples/send_seed_example.py [--brokers 127.0.0.1:19092] [--topic ispm-monitoring]

A Python with confluent-kafka: scripts/services/pyenv.sh prints one (it creates a venv once).
"""
import argparse
import json
import sys

from confluent_kafka import Producer

SEED = {"build_id": "build_001", "layer": 45, "timestamp": "2024-01-15T10:30:00Z",
        "temperature": 1650.5, "laser_power": 200.0, "scan_speed": 1.2, "hatch_spacing": 0.1}
SENSOR = {"sensor_id": "pyro_7", "timestamp": "2024-01-15T10:30:00Z",
          "temperature": 1650.5, "pressure": 1013.2}
HOT = dict(SEED, timestamp="2024-01-15T10:30:00.001Z", temperature=1750.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="127.0.0.1:19092")
    ap.add_argument("--topic", default="ispm-monitoring")
    a = ap.parse_args()
    p = Producer({"bootstrap.servers": a.brokers, "enable.idempotence": True})
    failed = []
    for msg in (SEED, SENSOR, HOT):
        key = msg.get("build_id") or msg.get("sensor_id")
        p.produce(a.topic, key=key, value=json.dumps(msg).encode(),
                  on_delivery=lambda err, m: failed.append(err) if err else None)
    left = p.flush(30)
    if failed or left:
        print(f"send_seed_example: {len(failed)} failed, {left} undelivered: {failed}", file=sys.stderr)
        return 1
    print(f"sent 3 messages to {a.topic} on {a.brokers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
