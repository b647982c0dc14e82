"""connectors.kafka_source against a real broker: snapshots held at unconfirmed ranges, and the
in-flight budget that pauses reading until the sink confirms."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connectors.kafka import KafkaConfig
from connectors.kafka_source import KafkaSourceConfig, PartitionedKafkaSource, RangeAcks
from tests import otlpgen
from tests.flows.conftest import produce, shim_producer_conf


def _drain(part, want: int, timeout: float = 20.0) -> list:
    """next_batch until ``want`` ranges were emitted (or a pause leaves it short)."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        got = part.next_batch()
        out.extend(got)
        if not got:
            time.sleep(0.01)
    return out


def _source(bootstrap: str, topic: str, acks: RangeAcks | None, **cfg) -> PartitionedKafkaSource:
    config = KafkaSourceConfig(topic=topic, batch={"max_records": 10, "max_delay_s": 60}, **cfg)
    return PartitionedKafkaSource(KafkaConfig(bootstrap_servers=bootstrap), config, acks=acks)


def test_snapshot_stays_at_the_oldest_range_the_sink_has_not_stored(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic("acks", partitions=1)
    produce(kafka_bootstrap, topic, [b"x%d" % i for i in range(30)], partition=0)
    acks = RangeAcks()
    part = _source(kafka_bootstrap, topic, acks).build_part("kafka", "0", None)
    try:
        ranges = _drain(part, 3)
        assert [(r.first, r.last) for r in ranges] == [(0, 9), (10, 19), (20, 29)]
        # Emitted but nothing stored: a restart must read everything again.
        assert part.snapshot() == 0
        acks.stored(topic, 0, 0)
        assert part.snapshot() == 10
        acks.stored(topic, 0, 20)  # out of order: 10..19 is still in flight
        assert part.snapshot() == 10
        acks.stored(topic, 0, 10)
        assert part.snapshot() == 30
        assert acks.inflight_bytes == 0
    finally:
        part.close()


def test_without_acks_the_snapshot_is_the_next_offset(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic("noacks", partitions=1)
    produce(kafka_bootstrap, topic, [b"y%d" % i for i in range(20)], partition=0)
    part = _source(kafka_bootstrap, topic, None).build_part("kafka", "0", None)
    try:
        assert len(_drain(part, 2)) == 2
        assert part.snapshot() == 20
    finally:
        part.close()


def test_reading_pauses_above_the_inflight_budget_until_ranges_are_stored(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic("budget", partitions=1)
    produce(kafka_bootstrap, topic, [b"z" * 100 for _ in range(50)], partition=0)
    acks = RangeAcks()
    # 10 records of 100 bytes per range; the budget is reached after two ranges.
    part = _source(kafka_bootstrap, topic, acks, max_inflight_bytes=2000, poll_max_messages=10)
    p = part.build_part("kafka", "0", None)
    try:
        first = _drain(p, 5, timeout=5.0)
        assert len(first) == 2, [(r.first, r.last) for r in first]
        assert acks.inflight_bytes == 2000
        assert p.next_batch() == [] and p.next_batch() == []  # paused: nothing read
        acks.stored(topic, 0, first[0].first)
        more = _drain(p, 1)
        assert [(r.first, r.last) for r in more] == [(20, 29)]
    finally:
        p.close()


def test_a_failed_sink_stops_the_source(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic("failed", partitions=1)
    produce(kafka_bootstrap, topic, [b"w%d" % i for i in range(10)], partition=0)
    acks = RangeAcks()
    part = _source(kafka_bootstrap, topic, acks).build_part("kafka", "0", None)
    try:
        assert len(_drain(part, 1)) == 1
        acks.fail(ValueError("table otel.otel_traces does not exist"))
        with pytest.raises(RuntimeError, match=r"sink failed.*does not exist"):
            part.next_batch()
    finally:
        part.close()


class _Intents:
    """An intent log whose partition history is given (what the sink would have recorded)."""

    def __init__(self, topic_id: str, last: int) -> None:
        self.history = (topic_id, last)
        self.resets: list[tuple[str, int, str, int]] = []

    def ranges_from(self, topic: str, partition: int, offset: int) -> list[tuple[int, int]]:
        return []

    def pending_from(self, topic: str, partition: int) -> int | None:
        return None if self.resets else self.history[1] + 1

    def latest(self, topic: str, partition: int) -> tuple[str, int | None] | None:
        return (self.resets[-1][2], None) if self.resets else self.history

    def reset(self, topic: str, partition: int, topic_id: str, offset: int) -> None:
        self.resets.append((topic, partition, topic_id, offset))


def test_a_resume_offset_past_the_partition_end_is_a_loud_error(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic("pastend", partitions=1)
    produce(kafka_bootstrap, topic, [b"v%d" % i for i in range(10)], partition=0)
    src = _source(kafka_bootstrap, topic, None)
    with pytest.raises(RuntimeError) as err:
        src.build_part("kafka", "0", 100)
    msg = str(err.value)
    assert f"{topic}[0]" in msg and "100" in msg and "end is 10" in msg, msg
    assert "on_stale_position: reset" in msg, msg


def test_intents_of_another_topic_incarnation_are_a_loud_error_until_reset(
    kafka_bootstrap: str, make_topic
) -> None:
    topic = make_topic("reborn", partitions=1)
    produce(kafka_bootstrap, topic, [b"r%d" % i for i in range(20)], partition=0)
    old = _Intents("AAAAAAAAAAAAAAAAAAAAAA", 4)  # a range of the deleted topic, within the end
    src = PartitionedKafkaSource(
        KafkaConfig(bootstrap_servers=kafka_bootstrap),
        KafkaSourceConfig(topic=topic, batch={"max_records": 10, "max_delay_s": 60}),
        intents=lambda: old,
    )
    with pytest.raises(RuntimeError) as err:
        src.build_part("kafka", "0", None)
    msg = str(err.value)
    assert f"{topic}[0]" in msg and "another topic" in msg and "AAAAAAAAAAAA" in msg, msg
    assert old.resets == []
    # The way out: reset to the configured start; every record of the new topic is read.
    src.config = src.config.model_copy(update={"on_stale_position": "reset"})
    part = src.build_part("kafka", "0", None)
    try:
        got = _drain(part, 2)
        assert [(r.first, r.last) for r in got] == [(0, 9), (10, 19)]
    finally:
        part.close()
    assert [r[3] for r in old.resets] == [0] and old.resets[0][2] not in ("", old.history[0])


def test_a_fetcher_that_stopped_fetching_is_found_and_resumed(
    kafka_bootstrap: str, make_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broker restart one partition's fetcher never fetched again while its cached
    lag said 0 (soak, 71 metric points never stored). The idle partition asks the broker,
    shows the real lag and assigns itself again. A paused fetcher stands in for a stuck one."""
    from confluent_kafka import TopicPartition

    import connectors.kafka_source as ks

    monkeypatch.setattr(ks, "_STUCK_CHECK_S", 0.5)
    topic = make_topic("stuck", partitions=1)
    produce(kafka_bootstrap, topic, [b"x"] * 10, partition=0)
    part = _source(kafka_bootstrap, topic, None).build_part("kafka", "0", None)
    assert [(r.first, r.last) for r in _drain(part, 1)] == [(0, 9)]
    part._consumer.pause([TopicPartition(topic, 0)])  # fetches nothing from now on
    produce(kafka_bootstrap, topic, [b"y"] * 10, partition=0)
    got = _drain(part, 1, timeout=15)
    assert [(r.first, r.last) for r in got] == [(10, 19)]  # found, assigned again, read once
    assert part._metrics is not None
    part.close()


class _Wedged:
    """A consumer whose fetcher is gone: fetches nothing, whatever it is assigned; the broker
    still answers its watermark queries."""

    def __init__(self, consumer: Any) -> None:
        self._c = consumer

    def consume(self, *args: Any) -> list:
        return []

    def resume(self, *args: Any) -> None:
        pass

    def unassign(self) -> None:
        pass

    def assign(self, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def test_a_consumer_that_stays_stuck_after_reassignment_is_replaced(
    kafka_bootstrap: str, make_topic, monkeypatch
) -> None:
    """A consumer whose fetcher does not recover when its partition is assigned again (seen
    in the soak after broker restarts: 7 records waited for minutes) is replaced, and the
    waiting records are read once."""
    import connectors.kafka_source as ks

    monkeypatch.setattr(ks, "_STUCK_CHECK_S", 0.5)
    topic = make_topic("wedged", partitions=1)
    produce(kafka_bootstrap, topic, [b"x"] * 10, partition=0)
    part = _source(kafka_bootstrap, topic, None).build_part("kafka", "0", None)
    assert [(r.first, r.last) for r in _drain(part, 1)] == [(0, 9)]
    wedged = part._consumer = _Wedged(part._consumer)
    produce(kafka_bootstrap, topic, [b"y"] * 10, partition=0)
    got = _drain(part, 1, timeout=15)
    assert [(r.first, r.last) for r in got] == [(10, 19)]
    assert part._consumer is not wedged
    part.close()


def test_the_budget_counts_the_ranges_being_cut(kafka_bootstrap: str, make_topic) -> None:
    """Payload buffered in partially cut ranges counts against max_inflight_bytes: with one
    partition holding half a range, the other stops reading before it can emit one."""
    topic = make_topic("held", partitions=2)
    produce(kafka_bootstrap, topic, [b"a" * 100 for _ in range(5)], partition=0)
    produce(kafka_bootstrap, topic, [b"b" * 100 for _ in range(30)], partition=1)
    acks = RangeAcks()
    src = _source(kafka_bootstrap, topic, acks, max_inflight_bytes=1000, poll_max_messages=5)
    p0, p1 = src.build_part("kafka", "0", None), src.build_part("kafka", "1", None)
    try:
        deadline = time.monotonic() + 20
        while acks.held_bytes < 500 and time.monotonic() < deadline:
            assert p0.next_batch() == []  # 5 records of the 10 a range needs
            time.sleep(0.01)
        assert acks.held_bytes == 500
        emitted = []
        for _ in range(100):
            emitted += p1.next_batch()
            time.sleep(0.01)
        # p1 read until 1000 bytes were held (at most one poll of 5 records past it), so it
        # never gathered the 10 records of a range; before, it emitted ranges up to the budget.
        assert emitted == []
        assert 1000 <= acks.held_bytes <= 1400
    finally:
        p0.close()
        p1.close()


def test_a_paused_partition_cuts_its_range_at_max_delay(kafka_bootstrap: str, make_topic) -> None:
    """Ranges being cut that fill the budget are emitted at max_delay_s (no deadlock), and
    reading resumes once they are stored."""
    topic = make_topic("heldcut", partitions=1)
    produce(kafka_bootstrap, topic, [b"c" * 100 for _ in range(12)], partition=0)
    acks = RangeAcks()
    config = KafkaSourceConfig(
        topic=topic,
        batch={"max_records": 10, "max_delay_s": 0.3},
        max_inflight_bytes=500,
        poll_max_messages=5,
    )
    src = PartitionedKafkaSource(KafkaConfig(bootstrap_servers=kafka_bootstrap), config, acks=acks)
    p = src.build_part("kafka", "0", None)
    try:
        ranges = []
        while not ranges or ranges[-1].last < 11:
            got = _drain(p, 1)
            assert got, f"stalled after {[(r.first, r.last) for r in ranges]}"
            ranges += got
            acks.stored(topic, 0, got[0].first)
        bounds = [(r.first, r.last) for r in ranges]
        assert [o for a, b in bounds for o in range(a, b + 1)] == list(range(12)), bounds
        assert ranges[0].last < 9, bounds  # cut by age while paused, not at 10 records
    finally:
        p.close()


def test_librdkafka_prefetches_at_most_prefetch_bytes(kafka_bootstrap: str, make_topic) -> None:
    """source.prefetch_bytes reaches the consumer: with 8 MB waiting in the partition, what
    librdkafka holds locally stays within the queue plus one fetch (~1.5 x prefetch_bytes)."""
    topic = make_topic("prefetch", partitions=1)
    produce(kafka_bootstrap, topic, [bytes(100_000) for _ in range(80)], partition=0)
    src = _source(kafka_bootstrap, topic, None, prefetch_bytes=1 << 20)
    p = src.build_part("kafka", "0", None)
    try:
        time.sleep(3)  # librdkafka fetches in the background up to its limits
        local = sum(len(m.value() or b"") for m in p._consumer.consume(10_000, 0))
        assert 0 < local <= 3 << 20, local
    finally:
        p.close()


def test_librdkafka_holds_lz4_spans_within_twice_prefetch_bytes(
    kafka_bootstrap: str, make_topic
) -> None:
    """Its queue counts decompressed records but a fetch's limit compressed bytes: one fetch
    of half the queue held ~4x prefetch_bytes locally once lz4 spans (~4x) were unpacked
    (5.5 MiB for 1 MiB). With 10 MB of spans waiting as the shim writes them, what librdkafka
    holds stays within twice prefetch_bytes."""
    topic = make_topic("prefetch_lz4", partitions=1)
    payloads = otlpgen.trace_payloads(50, seed=21)  # 100 spans, ~42 KB each
    conf = shim_producer_conf(kafka_bootstrap)
    produce(kafka_bootstrap, topic, payloads * 5, partition=0, conf=conf)
    p = _source(kafka_bootstrap, topic, None, prefetch_bytes=1 << 20).build_part("kafka", "0", None)
    try:
        time.sleep(3)  # librdkafka fetches in the background up to its limits
        local = sum(len(m.value() or b"") for m in p._consumer.consume(10_000, 0))
        assert 1 << 20 <= local <= 2 << 20, local
    finally:
        p.close()


def test_a_partition_built_while_the_broker_cannot_answer_waits_for_it(
    kafka_bootstrap: str,
) -> None:
    """In the soak a flow restarted during a broker restart crashed at start ("Unknown
    partition" from the watermark look-up). A partition whose topic appears a few seconds
    after the flow started (the broker's metadata coming back) is read once it does."""
    import threading
    import uuid

    from connectors.kafka import create_topics, delete_topics

    topic = f"late_{uuid.uuid4().hex[:10]}"
    timer = threading.Timer(3.0, create_topics, (kafka_bootstrap, [topic], 1))
    timer.start()
    try:
        part = _source(kafka_bootstrap, topic, None).build_part("kafka", "0", None)
        produce(kafka_bootstrap, topic, [b"x"] * 10, partition=0)
        assert [(r.first, r.last) for r in _drain(part, 1)] == [(0, 9)]
        part.close()
    finally:
        timer.join()
        delete_topics(kafka_bootstrap, [topic])
