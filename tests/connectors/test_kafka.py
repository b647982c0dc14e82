"""The project's own Kafka broker accepts produce/consume and creates topics as configured."""

from __future__ import annotations

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient


def test_topics_created_with_partitions(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic("parts", partitions=3)
    md = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    assert len(md.topics[topic].partitions) == 3
    for name in ("otlp_spans", "otlp_metrics", "otlp_logs", "otlp_dlq"):
        assert name in md.topics, f"default topic {name} missing"


def test_produce_then_consume_roundtrip(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic("rt", partitions=1)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    for i in range(10):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert p.flush(10) == 0
    c = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    c.subscribe([topic])
    got = []
    for _ in range(100):
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value().decode())
        if len(got) == 10:
            break
    c.close()
    assert got == [f"v{i}" for i in range(10)]
