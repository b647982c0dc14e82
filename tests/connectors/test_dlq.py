"""connectors.dlq against a real broker: what reaches the topic, and what fails at once."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from connectors.dlq import (
    H_LAST_OFFSET,
    H_STEP,
    DeadLetter,
    DeadLetterConfig,
    DeadLetterError,
    DeadLetterProducer,
    row_letters,
)
from connectors.kafka import KafkaConfig
from otelwax.codec import decode_traces
from tests import otlpgen
from tests.flows.conftest import consume_all


def _producer(bootstrap: str, topic: str, **cfg: object) -> DeadLetterProducer:
    return DeadLetterProducer(
        KafkaConfig(bootstrap_servers=bootstrap), DeadLetterConfig(topic=topic, **cfg)
    )


def test_rows_are_split_into_letters_that_fit_and_read_back_whole(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic("dlq", partitions=1)
    rows = decode_traces(otlpgen.trace_payloads(10, seed=3)).batch  # 1000 spans
    letters = row_letters("spans", 2, 100, 140, rows, "boom", "traces.op_0_x", 60_000)
    assert len(letters) > 1
    p = _producer(kafka_bootstrap, topic, max_message_bytes=60_000)
    p.send_and_wait(letters)
    p.close()

    dead = consume_all(kafka_bootstrap, topic)
    assert len(dead) == len(letters)
    assert all(len(m.value()) <= 60_000 for m in dead)
    assert len({m.key() for m in dead}) == len(dead)  # distinct keys: replays dedupe per letter
    back = pa.Table.from_batches(
        [b for m in dead for b in pa.ipc.open_stream(m.value()).read_all().to_batches()]
    )
    assert sorted(back.column("SpanId").to_pylist()) == sorted(rows.column("SpanId").to_pylist())
    h = dict(dead[0].headers())
    assert h[H_STEP] == b"traces.op_0_x" and h[H_LAST_OFFSET] == b"140"


def test_a_missing_topic_raises_at_once(kafka_bootstrap: str) -> None:
    p = _producer(kafka_bootstrap, "otelwax_dlq_never_created")
    t0 = time.monotonic()
    with pytest.raises(DeadLetterError, match=r"otelwax_dlq_never_created.*does not exist"):
        p.send_and_wait([DeadLetter("spans", 0, 1, b"x", "undecodable")])
    assert time.monotonic() - t0 < 15


def test_a_record_larger_than_the_limit_raises_instead_of_retrying(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic("dlq", partitions=1)
    p = _producer(kafka_bootstrap, topic, max_message_bytes=100_000)
    with pytest.raises(DeadLetterError, match="refused"):
        p.send_and_wait([DeadLetter("spans", 0, 1, b"\x01" * 200_000, "undecodable")])
