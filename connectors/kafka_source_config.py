"""Settings of ``connectors.kafka_source``: the topic, where to start, how ranges are cut."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from connectors.kafka import TOPIC_SPANS
from otelwax.settings import StrictModel

__all__ = ["KafkaSourceConfig", "RangeCutConfig", "prefetch_conf"]


class RangeCutConfig(StrictModel):
    """When a partition's buffered messages become one range (= one ClickHouse insert).

    A range is cut at whichever comes first. Defaults suit ClickHouse (few, big inserts):
    16 MiB of OTLP protobuf is ~36 000 spans, one insert per partition and range (the flow
    into chdb ran ~1.3x faster than with 8 MiB and 32 MiB was no faster; the in-flight budget
    of the source bounds the memory either way); under light load the 1 s age bound cuts
    first and bounds the added latency.
    """

    max_records: int = Field(50_000, gt=0, description="Kafka records per range")
    max_bytes: int = Field(16 * 1024 * 1024, gt=0, description="payload bytes per range")
    max_delay_s: float = Field(1.0, gt=0, le=3600, description="oldest buffered record's age")


class KafkaSourceConfig(StrictModel):
    """Which topic/partitions to read, where to start and how to cut ranges."""

    topic: str = Field(TOPIC_SPANS, min_length=1)
    partitions: list[int] | None = Field(
        None, description="Kafka partitions to read (default: all of the topic)"
    )
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition with no snapshot and no intents starts"
    )
    batch: RangeCutConfig = Field(default_factory=RangeCutConfig)
    group_id: str | None = Field(
        None,
        min_length=1,
        description="consumer group the confirmed offsets are committed to, so Kafka's tools "
        "show the flow's lag (default: the flow's name)",
    )
    commit_offsets: bool = Field(
        True,
        description="commit each partition's confirmed offset to group_id (visibility only: "
        "a flow resumes from its snapshots and intents, never from a committed offset)",
    )
    poll_max_messages: int = Field(5_000, gt=0, description="messages per consume() call")
    prefetch_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024 * 1024,
        le=256 * 1024 * 1024,
        description="bytes librdkafka fetches ahead per partition (its queue, decompressed "
        "records; one fetch of an eighth of it, compressed, may be on the way besides): memory "
        "grows with it times the partitions a process reads (a flow into a ClickHouse server "
        "defaults to 2 MiB)",
    )
    max_inflight_bytes: int = Field(
        48 * 1024 * 1024,
        gt=0,
        description="payload bytes read but not yet stored (ranges being cut and emitted "
        "ones), per process, above which the source stops reading (flows whose sink confirms "
        "stored ranges; bounds memory: decoded rows take ~2-3x their payload; a flow into a "
        "ClickHouse server defaults to 32 MiB)",
    )
    release_memory_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="every N s the flow process returns freed memory to the OS (glibc heap "
        "trim, Arrow's pool; Arrow allocates from glibc, where buffers >= 1 MiB are unmapped "
        "on free); 0 = leave it to the allocators (~150-250 MiB more RSS under a backlog)",
    )
    idle_poll_s: float = Field(0.02, gt=0, le=5, description="sleep between empty polls")
    stop_at_end: bool = Field(
        False, description="Finish when every partition reached its end (tests, backfills)"
    )
    on_stale_position: Literal["fail", "reset"] = Field(
        "fail",
        description="a partition whose stored position is not this topic's (snapshot or "
        "intents past the partition's end, intents of another topic id): fail = stop with an "
        "error; reset = start it afresh at `start`, recorded in the intents",
    )
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict, description="Raw librdkafka consumer properties merged last."
    )


_MIN_FETCH_BYTES = 128 * 1024
_CONSUMER_MESSAGE_MAX_BYTES = 1_000_000
"""librdkafka's ``message.max.bytes``, below which it refuses ``fetch.max.bytes``."""


def prefetch_conf(prefetch_bytes: int) -> dict[str, int]:
    """librdkafka's prefetch of one partition (one consumer per partition) for
    ``source.prefetch_bytes``: its queue plus one fetch in flight (bounds RSS).

    The queue (``queued.max.messages.kbytes``) counts decompressed records, a fetch's limit
    (``max.partition.fetch.bytes``) compressed bytes: with lz4 (~3x on spans) a fetch of half
    the queue held 1.5 x the queue again once decompressed. A fetch of an eighth keeps the
    queue the bound (~1.4 x prefetch_bytes at 3x). A record batch bigger than the fetch is
    still returned whole (Kafka >= 0.10.1, KIP-74). ``source.extra`` overrides these."""
    fetch = max(prefetch_bytes // 8, _MIN_FETCH_BYTES)
    return {
        "queued.max.messages.kbytes": max(prefetch_bytes // 1024, 1),
        "max.partition.fetch.bytes": fetch,
        "fetch.max.bytes": max(fetch, _CONSUMER_MESSAGE_MAX_BYTES),
    }
