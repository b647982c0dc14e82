"""The metrics dataflow: Kafka ``otlp_metrics`` → Arrow → ClickHouse + Prometheus remote-write.

    python -m bytewax.run flows.metrics                    # $OTELWAX_CONFIG or defaults
    python -m bytewax.run "flows.metrics:build('configs/metrics.yaml')"

Steps::

    kafka (connectors.kafka_source ranges, or bytewax's KafkaSource), otlp_metrics
      → decode            one MetricChunk per range/batch: {otel_metrics_*: RecordBatch}
      ├→ clickhouse       every data point as stored by the clickhouseexporter (delta as is),
                          through connectors.clickhouse (embedded chdb by default, or a server;
                          the otel_metrics_* tables need a modern ClickHouse: Map, DateTime64)
      └→ remote-write branch
           split          gauges / cumulative sums+histograms / summaries go straight on;
                          delta sums+histograms are split into shards by series
           delta_to_cumulative  stateful_map keyed by shard: per series running totals, so
                          bytewax recovery snapshots them with the source offsets; a restart
                          resumes the totals exactly where the offsets resume
           to_series      OTel → Prometheus names/labels (connectors.prom_translate)
           remote_write   connectors.remote_write sink

Delta→cumulative rules: the first point of a series starts it (StartTimeUnix = its start time,
or its time when unset); later points add up; a histogram whose bounds change starts over.
A point not newer than the last one of its series (Kafka partitions interleave, so points of one
series can arrive out of order) is still added — sums commute — and the new total is reported
1 ms after the series' last sample, so Prometheus sees a monotonic history and no total is lost
(counted under component ``delta_to_cumulative_late_merged``). Unlike the Collector's
deltatocumulative processor, which drops such points, this keeps totals exact; the price is a
timestamp skew of the late point only.

Delivery (``source: ranges``, the default): connectors.kafka_source cuts each partition into
offset ranges; before inserting, the sink records each new range as an intent (the traces
flow's ``otelwax_intents`` table, under flow ``metrics``) and inserts every table of the range
with the token ``topic:partition:first:last/table``. After a crash the source resumes at
bytewax's snapshot and re-cuts the replayed records at the recorded boundaries, so ClickHouse
skips the ranges it already has: every data point is stored once. With bytewax recovery it never
starts *past* the snapshot (as the traces flow may, via ``pending_from``), because the
delta→cumulative state is restored from that snapshot and must see every later range again;
without recovery (no state to keep consistent) it skips the ranges already stored
(``resume: auto``). Remote-write replays are
harmless: the restored state recomputes identical samples, which Prometheus refuses (older) or
ignores (newest duplicate); the sink bisects rejected requests so newer samples still land.
``source: bytewax`` uses bytewax's KafkaSource instead (at-least-once into ClickHouse).

Importing this module does no network I/O: ``flow`` is built from ``$OTELWAX_CONFIG``
(or defaults) with ``$OTELWAX_KAFKA_BOOTSTRAP``; Kafka, chdb and HTTP open when the flow runs.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pydantic import Field, model_validator

from connectors.clickhouse import ClickHouseConfig
from connectors.kafka import TOPIC_METRICS, KafkaConfig
from connectors.kafka_source import (
    KafkaSourceConfig,
    NoIntents,
    PartitionedKafkaSource,
    RangeCutConfig,
)
from connectors.prom_translate import SeriesBatch, tables_to_series
from connectors.remote_write import RemoteWriteConfig
from connectors.remote_write_order import write_in_order
from flows import exits_on_bad_config, lazy_flow, own_store
from otelwax.health import HealthConfig
from otelwax.logs import instrument
from otelwax.metric_schemas import HISTOGRAM, METRIC_SCHEMAS, SUM
from otelwax.settings import StrictModel
from otelwax.telemetry import ComponentMetrics

T = TypeVar("T")

__all__ = [
    "MetricChunk",
    "MetricsClickHouseConfig",
    "MetricsFlowSettings",
    "build",
    "build_from_settings",
    "delta_to_cumulative",
    "load_flow_settings",
    "load_settings",
]

log = logging.getLogger(__name__)

ENV_CONFIG = "OTELWAX_CONFIG"
DEPRECATED_ENV_CONFIG = "OTELWAX_METRICS_CONFIG"  # read only when $OTELWAX_CONFIG is unset
DELTA = 1
CUMULATIVE = 2


# --- settings ---------------------------------------------------------------------------------


def _default_clickhouse() -> ClickHouseConfig:
    return ClickHouseConfig(create_schema=True)


# The metrics tables' store: ``connectors.clickhouse``'s config (embedded chdb by default, or a
# server with ``mode: server``); ``create_schema: true`` also creates the ``otel_metrics_*``
# tables (modern ClickHouse only: they need Map and DateTime64).
MetricsClickHouseConfig = ClickHouseConfig


class MetricsFlowSettings(StrictModel):
    """Everything ``flows.metrics`` needs."""

    flow_id: str = Field("otelwax_metrics", min_length=1)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topic: str = Field(TOPIC_METRICS, min_length=1)
    tail: bool = Field(True, description="keep waiting for records at the end of the topic")
    source: Literal["ranges", "bytewax"] = Field(
        "ranges",
        description="ranges: connectors.kafka_source (replays re-cut at recorded offsets, so "
        "ClickHouse inserts are exactly once); bytewax: bytewax's KafkaSource (at-least-once)",
    )
    ranges: RangeCutConfig = Field(
        default_factory=RangeCutConfig, description="ranges source: when a range is cut"
    )
    intents_table: str = Field("otelwax_intents", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    resume: Literal["auto", "snapshot", "stored"] = Field(
        "auto",
        description="ranges source after a restart: snapshot = from bytewax's snapshot (keeps "
        "delta→cumulative exact; needs recovery); stored = past the ranges ClickHouse already "
        "has (like flows.traces; without recovery); auto = snapshot when the process runs with "
        "bytewax recovery (-r or $BYTEWAX_RECOVERY_DIRECTORY), else stored",
    )
    source_batch_size: int = Field(1000, gt=0, description="bytewax source: records per poll")
    clickhouse: ClickHouseConfig | None = Field(default_factory=_default_clickhouse)
    _own_store = own_store("metrics")
    remote_write: RemoteWriteConfig | None = Field(
        None, description="Prometheus remote-write (off unless set here or in sinks.remote_write)"
    )
    delta_shards: int = Field(
        64, gt=0, le=65536, description="state keys for delta→cumulative (spread over workers)"
    )
    delta_ttl_s: float = Field(
        900.0,
        gt=0,
        description="forget a delta series' running total after this long without a point "
        "(its next point starts a new cumulative series, a counter reset)",
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve /metrics here")
    health: HealthConfig = Field(
        default_factory=HealthConfig,
        description="when /readyz and /livez on the metrics port turn 503 (otelwax.health)",
    )
    progress_s: float | None = Field(
        30.0, ge=0, description="log a progress line this often (records/s, rows, lag); 0: off"
    )

    @model_validator(mode="after")
    def _has_output(self) -> MetricsFlowSettings:
        if self.clickhouse is None and self.remote_write is None:
            raise ValueError(
                "nothing to write to: set remote_write (here or sinks.remote_write) "
                "and/or clickhouse"
            )
        return self


def load_flow_settings(
    model: type[StrictModel],
    section: str,
    config_path: str | os.PathLike[str] | None,
    env: dict[str, str] | None,
    overrides: dict[str, Any],
    deprecated_env: str | None = None,
) -> Any:
    """Load one flow's settings the way ``flows.settings.load_settings`` loads the traces flow's.

    Sources, later ones winning: defaults; the YAML file ``config_path`` or ``$OTELWAX_CONFIG``
    (``deprecated_env`` is read only when ``$OTELWAX_CONFIG`` is unset) — either ``model``
    itself or a whole otelwax config (``flows.<section>`` with the shared top-level
    ``kafka``/``clickhouse``, through ``otelwax.cli.config``); ``OTELWAX_KAFKA_BOOTSTRAP``,
    ``OTELWAX_METRICS_PORT`` and ``OTELWAX_<SECTION>__a__b=<yaml>``; keyword ``overrides``
    nested with ``__``. Raises ``ValueError`` listing every problem as ``key.path: msg``.
    """
    from flows import settings

    return settings.load_flow_settings(
        model, section, config_path, env, deprecated_env=deprecated_env, **overrides
    )


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> MetricsFlowSettings:
    """Settings from ``config_path`` or ``$OTELWAX_CONFIG`` (this model, or a whole otelwax
    config: ``flows.metrics`` plus the shared ``kafka``/``clickhouse``), the environment and
    keyword overrides nested with ``__`` (see :func:`load_flow_settings`)."""
    return load_flow_settings(
        MetricsFlowSettings, "metrics", config_path, env, overrides, DEPRECATED_ENV_CONFIG
    )


# --- decode -----------------------------------------------------------------------------------


@dataclass(slots=True)
class MetricChunk:
    """Decoded rows of some Kafka records, with a deterministic id of those records."""

    tables: dict[str, pa.RecordBatch]
    token: str = ""
    errors: list[tuple[int, str]] = field(default_factory=list)
    range: tuple[str, int, int, int, int] | None = None
    """(topic, partition, first, last, records) when the chunk is one source range."""
    replay: bool = False
    """The range's boundaries come from a recorded intent (do not record it again)."""
    topic_id: str = ""
    """The Kafka topic's id recorded with the range's intent (part of ``token``)."""
    own_insert: bool = False
    """Insert alone under ``token``, which identifies exactly these rows (a closed window)."""


class _Decode:
    """flat_map_batch mapper: a list of KafkaSourceMessage → one MetricChunk."""

    def __init__(self) -> None:
        self.metrics = ComponentMetrics("metrics_decode", "datapoints")
        self.records = ComponentMetrics("metrics_decode", "records")

    def _decode(self, values: list[bytes]) -> Any:
        # The native core when built (same tables; $OTELWAX_CODEC=python forces pymetrics).
        from otelwax.codec import decode_metrics

        res = decode_metrics(values)
        if res.errors:
            self.records.dropped(len(res.errors), "decode_error")
            for idx, reason in res.errors[:5]:
                log.warning("metrics decode: record %d dropped: %s", idx, reason)
        self.metrics.received(res.num_rows)
        return res

    def __call__(self, items: list[Any]) -> list[MetricChunk]:
        from connectors.kafka_source import KafkaRange

        if items and isinstance(items[0], KafkaRange):
            out = []
            for r in items:
                self.records.received(len(r.values))
                res = self._decode(r.values)
                rng = (r.topic, r.partition, r.first, r.last, len(r.values))
                out.append(MetricChunk(res.tables, r.token, res.errors, rng, r.replay, r.topic_id))
            return out
        values = [m.value for m in items if m.value is not None]
        self.records.received(len(items))
        if not values:
            return []
        spans: dict[tuple[str, int], list[int]] = {}
        for m in items:
            r = spans.setdefault((m.topic, m.partition), [m.offset, m.offset])
            r[0] = min(r[0], m.offset)
            r[1] = max(r[1], m.offset)
        token = ",".join(f"{t}:{p}:{a}:{b}" for (t, p), (a, b) in sorted(spans.items()))
        res = self._decode(values)
        return [MetricChunk(res.tables, token, res.errors)]


# --- delta → cumulative -----------------------------------------------------------------------


def _series_keys(batch: pa.RecordBatch) -> list[tuple]:
    cols = [
        batch.column("ResourceAttributes").to_pylist(),
        batch.column("ScopeName").to_pylist(),
        batch.column("MetricName").to_pylist(),
        batch.column("MetricUnit").to_pylist(),
        batch.column("Attributes").to_pylist(),
    ]
    if "IsMonotonic" in batch.schema.names:
        cols.append(batch.column("IsMonotonic").to_pylist())
    return [
        tuple(tuple(v) if isinstance(v, list) else v for v in row)
        for row in zip(*cols, strict=True)
    ]


def _shard_of(key: tuple, shards: int) -> str:
    return str(zlib.crc32(repr(key).encode()) % shards)


def split_deltas(chunk: MetricChunk, shards: int) -> list[tuple[str, dict[str, tuple]]]:
    """Delta sum/histogram rows grouped by shard: ``[(shard, {table: (batch, keys)})]``."""
    out: dict[str, dict[str, tuple]] = {}
    for table in (SUM, HISTOGRAM):
        batch = chunk.tables.get(table)
        if batch is None or batch.num_rows == 0:
            continue
        mask = pc.equal(batch.column("AggregationTemporality"), DELTA)
        if not pc.any(mask).as_py():
            continue
        deltas = batch.filter(mask)
        keys = _series_keys(deltas)
        by_shard: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            by_shard.setdefault(_shard_of(k, shards), []).append(i)
        for shard, idx in by_shard.items():
            out.setdefault(shard, {})[table] = (
                deltas.take(pa.array(idx, pa.int64())),
                [keys[i] for i in idx],
            )
    return list(out.items())


def without_deltas(chunk: MetricChunk) -> dict[str, pa.RecordBatch]:
    """The chunk's tables minus delta sum/histogram rows (those go through the state)."""
    out = dict(chunk.tables)
    for table in (SUM, HISTOGRAM):
        batch = out.get(table)
        if batch is not None and batch.num_rows:
            out[table] = batch.filter(pc.not_equal(batch.column("AggregationTemporality"), DELTA))
    return out


_dtc_metrics = ComponentMetrics("delta_to_cumulative", "datapoints")
_dtc_series = ComponentMetrics("delta_to_cumulative", "series")
_META = ("\0otelwax",)
"""State key of ``[next sweep (time.time), {series key: last update (time.time)}]``."""
# Late points are merged, not dropped: counted as "received" by their own component name.
_late_merged = ComponentMetrics("delta_to_cumulative_late_merged", "datapoints")


def delta_to_cumulative(
    state: dict[tuple, list] | None, value: dict[str, tuple], ttl_s: float = 900.0
) -> tuple[dict[tuple, list], dict[str, pa.RecordBatch]]:
    """stateful_map mapper: running totals per series (state) → cumulative rows.

    State entries: sums ``[start_ns, last_ns, total]``; histograms
    ``[start_ns, last_ns, count, sum, bucket_counts, bounds]``. A series without a point for
    ``ttl_s`` (wall time) is forgotten, swept when its shard next gets points
    (``otelwax_dropped_total{component="delta_to_cumulative",unit="series",reason="expired"}``).
    """
    enabled = gc.isenabled()
    gc.disable()  # the per-series state is large and long-lived: avoid full GC passes
    try:
        state = {} if state is None else state
        _expire(state, time.time(), ttl_s)
        return _delta_to_cumulative(state, value)
    finally:
        if enabled:
            gc.enable()


def _expire(state: dict[tuple, list], now: float, ttl_s: float) -> None:
    """Drop the series of ``state`` not updated for ``ttl_s`` (sweeps every ``ttl_s / 4``)."""
    meta = state.get(_META)
    if meta is None:  # a new shard, or a snapshot from before the TTL: every series is fresh
        state[_META] = [now + ttl_s / 4, dict.fromkeys(list(state), now)]
        return
    if now < meta[0]:
        return
    meta[0] = now + ttl_s / 4
    seen = meta[1]
    cutoff = now - ttl_s
    stale = [k for k, t in seen.items() if t < cutoff]
    for k in stale:
        del seen[k]
        state.pop(k, None)
    _dtc_series.dropped(len(stale), "expired")


def _delta_to_cumulative(
    state: dict[tuple, list], value: dict[str, tuple]
) -> tuple[dict[tuple, list], dict[str, pa.RecordBatch]]:
    out: dict[str, pa.RecordBatch] = {}
    late = 0
    seen = state[_META][1]
    now = time.time()
    for table, (batch, keys) in value.items():
        order = pc.sort_indices(batch.column("TimeUnix")).to_pylist()
        starts = batch.column("StartTimeUnix").cast(pa.int64()).to_pylist()
        times = batch.column("TimeUnix").cast(pa.int64()).to_pylist()
        keep: list[int] = []
        new_start: list[int] = []
        new_time: list[int] = []
        if table == SUM:
            values = batch.column("Value").to_pylist()
            new_val: list[float] = []
            for i in order:
                k, t = keys[i], times[i]
                seen[k] = now
                e = state.get(k)
                if e is None:
                    e = state[k] = [starts[i] or t, t, values[i]]
                else:
                    if t <= e[1]:
                        late += 1
                        t = e[1] + 1_000_000
                    e[1] = t
                    e[2] += values[i]
                keep.append(i)
                new_time.append(t)
                new_start.append(e[0])
                new_val.append(e[2])
            rows = batch.take(pa.array(keep, pa.int64()))
            rows = _set(rows, "Value", pa.array(new_val, pa.float64()))
        else:
            counts = batch.column("Count").to_pylist()
            sums = batch.column("Sum").to_pylist()
            bcs = batch.column("BucketCounts").to_pylist()
            bounds = batch.column("ExplicitBounds").to_pylist()
            n_count: list[int] = []
            n_sum: list[float] = []
            n_bc: list[list[int]] = []
            for i in order:
                k, t = keys[i], times[i]
                seen[k] = now
                e = state.get(k)
                b = tuple(bounds[i])
                if e is None or e[5] != b or len(e[4]) != len(bcs[i]):
                    e = state[k] = [starts[i] or t, t, counts[i], sums[i], list(bcs[i]), b]
                else:
                    if t <= e[1]:
                        late += 1
                        t = e[1] + 1_000_000
                    e[1] = t
                    e[2] += counts[i]
                    e[3] += sums[i]
                    e[4] = [x + y for x, y in zip(e[4], bcs[i], strict=True)]
                keep.append(i)
                new_time.append(t)
                new_start.append(e[0])
                n_count.append(e[2])
                n_sum.append(e[3])
                n_bc.append(list(e[4]))
            rows = batch.take(pa.array(keep, pa.int64()))
            rows = _set(rows, "Count", pa.array(n_count, pa.uint64()))
            rows = _set(rows, "Sum", pa.array(n_sum, pa.float64()))
            rows = _set(rows, "BucketCounts", pa.array(n_bc, pa.list_(pa.uint64())))
        rows = _set(rows, "StartTimeUnix", pa.array(new_start, pa.int64()).cast(pa.timestamp("ns")))
        rows = _set(rows, "TimeUnix", pa.array(new_time, pa.int64()).cast(pa.timestamp("ns")))
        rows = _set(rows, "AggregationTemporality", pa.array([CUMULATIVE] * len(keep), pa.int32()))
        out[table] = rows
    _dtc_metrics.received(sum(b.num_rows for b, _ in value.values()))
    if late:
        _late_merged.received(late)
    return state, out


def _set(batch: pa.RecordBatch, name: str, arr: pa.Array) -> pa.RecordBatch:
    i = batch.schema.get_field_index(name)
    return batch.set_column(i, batch.schema.field(i), arr)


# --- ClickHouse sink -----------------------------------------------------------------------


MIN_SERVER_MAJOR = 20


def open_metrics_client(cfg: ClickHouseConfig) -> Any:
    """Open ``cfg``'s client for the metrics tables (I/O).

    Embedded chdb is driven from one dedicated thread (``connectors.clickhouse_sink``'s
    ``_OneThreadClient``), so bytewax's ``-w N`` worker threads can share it. A server older
    than ClickHouse 20 is refused: the ``otel_metrics_*`` tables need Map and DateTime64.
    With ``create_schema`` the database and the metrics tables are created (not the trace/log
    tables).
    """
    from connectors.clickhouse import ClickHouseError, open_client
    from connectors.clickhouse_intents import check_dedup_window
    from connectors.clickhouse_metrics_schema import metrics_ddl
    from connectors.clickhouse_sink import _OneThreadClient

    plain = cfg.model_copy(update={"create_schema": False})
    client: Any
    if cfg.mode == "embedded":
        client = _OneThreadClient(lambda: open_client(plain))
    else:
        client = open_client(plain)
    if getattr(client, "legacy", False):
        version = getattr(client, "version", "") or "< 20"
        client.close()
        raise ClickHouseError(
            f"ClickHouse server {version} at {cfg.host}:{cfg.port} is too old for the metrics "
            f"tables (otel_metrics_* need Map and DateTime64: ClickHouse {MIN_SERVER_MAJOR}.x "
            "or newer); point flows.metrics.clickhouse at a newer server, use embedded chdb "
            "(mode: embedded), or set clickhouse: null to write to Prometheus only",
            transient=False,
        )
    try:
        if cfg.create_schema:
            for stmt in metrics_ddl(cfg.database, ttl_days=cfg.tables.ttl_days, opts=cfg.tables):
                client.execute(stmt)
        for table in METRIC_SCHEMAS:  # a replayed range is skipped by its token
            check_dedup_window(client, cfg.database, table, min_window=100)
    except Exception:
        client.close()
        raise
    return client


def _client_key(cfg: ClickHouseConfig) -> str:
    return "flows.metrics:" + repr(cfg)


def _hold_client(cfg: ClickHouseConfig) -> Any:
    """The process's metrics client for ``cfg``, shared by all worker threads (held: release
    with ``_ClientHolder.release(_client_key(cfg))``; the last release closes it)."""
    from connectors.clickhouse_sink import _ClientHolder

    return _ClientHolder.get(_client_key(cfg), lambda: open_metrics_client(cfg), hold=True)


class _ClickHousePartition(StatelessSinkPartition[MetricChunk]):
    def __init__(self, cfg: ClickHouseConfig, intents_table: str | None) -> None:
        from connectors.clickhouse import is_transient
        from otelwax.resilience import CircuitBreaker, RetryPolicy

        self.cfg = cfg
        self.client = _hold_client(cfg)
        self.metrics = ComponentMetrics("clickhouse_metrics", "rows")
        self.retry = RetryPolicy(cfg.retry, retry_on=is_transient)
        self.breaker = CircuitBreaker(cfg.breaker, name="clickhouse_metrics")
        self.intents = _intent_log(self.client, cfg, intents_table) if intents_table else None

    def _insert(self, table: str, batch: pa.RecordBatch, token: str | None) -> None:
        timer = self.metrics.latency("insert")
        try:
            with timer.time():
                self.retry.call(
                    self.client.insert_arrow,
                    f"{self.cfg.database}.{table}",
                    batch,
                    dedup_token=token,
                    breaker=self.breaker,
                )
        except Exception:
            self.metrics.failed(batch.num_rows)
            raise
        self.metrics.sent(batch.num_rows)

    def write_batch(self, items: list[MetricChunk]) -> None:
        ranged = [c for c in items if c.range is not None]
        if ranged:
            # Exactly once: note the new ranges durably, then insert each range's rows with a
            # token of its offsets; a replay re-cuts the same ranges, so ClickHouse skips them
            # (or, once marked stored, they are not inserted again: a quiet partition's token
            # may have left the table's deduplication window by then).
            stored = self._stored_replays(ranged)
            if self.intents is not None:
                self.intents.record([_stored_range(c) for c in ranged if not c.replay])
            done = []
            for c in ranged:
                if c.range in stored:
                    log.info("range %s: stored before, not inserted again", c.token)
                    continue
                for table, batch in c.tables.items():
                    if batch.num_rows:
                        self._insert(table, batch, f"{c.token}/{table}")
                done.append(_stored_range(c))
            if self.intents is not None:
                self.intents.confirm(done)
        for c in items:  # closed windows: their token identifies exactly these rows
            if c.range is None and c.own_insert:
                for table, batch in c.tables.items():
                    if batch.num_rows:
                        self._insert(table, batch, f"{c.token}/{table}")
        loose = [c for c in items if c.range is None and not c.own_insert]
        if not loose:
            return
        token_base = hashlib.sha1("|".join(c.token for c in loose).encode()).hexdigest()
        with_token = all(c.token for c in loose)
        for table in METRIC_SCHEMAS:
            batches = [
                c.tables[table] for c in loose if table in c.tables and c.tables[table].num_rows
            ]
            if batches:
                batch = pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
                self._insert(table, batch, f"{token_base}:{table}" if with_token else None)

    def _stored_replays(self, chunks: list[MetricChunk]) -> set[Any]:
        """``range`` of the replayed chunks whose tables were all stored before."""
        firsts: dict[tuple[str, int], int] = {}
        for c in chunks:
            if c.replay and c.range is not None:
                t, p, a = c.range[:3]
                firsts[(t, p)] = min(firsts.get((t, p), a), a)
        if not firsts or self.intents is None:
            return set()
        done = {
            (t, p, a, b) for (t, p), lo in firsts.items()
            for a, b in self.intents.stored_from(t, p, lo)
        }  # fmt: skip
        return {c.range for c in chunks if c.range is not None and c.range[:4] in done}

    def close(self) -> None:
        from connectors.clickhouse_sink import _ClientHolder

        _ClientHolder.release(_client_key(self.cfg))


def _stored_range(c: MetricChunk) -> Any:
    from connectors.clickhouse_sink import StoredRange

    assert c.range is not None
    t, p, a, b, n = c.range
    return StoredRange(t, p, a, b, pa.record_batch([]), records=n, topic_id=c.topic_id)


def _intent_log(client: Any, cfg: ClickHouseConfig, table: str) -> Any:
    from connectors.clickhouse_sink import ClickHouseSinkConfig, IntentLog

    sink_cfg = ClickHouseSinkConfig(intents_table=table, flow="metrics")
    log_ = IntentLog(client, cfg, sink_cfg, "otel_metrics")
    log_.create()
    return log_


class _ReplayOnly:
    """Intent reader for the ranges source that never starts past bytewax's snapshot.

    The traces flow may skip ranges already stored (``pending_from``); here the delta→cumulative
    state is restored from the snapshot, so every range after it must flow again (ClickHouse
    skips the stored ones by token), re-cut at the recorded boundaries (``ranges_from``).
    """

    def __init__(self, cfg: ClickHouseConfig, table: str, skip_stored: bool = False) -> None:
        self.cfg = cfg
        self.table = table
        self.skip_stored = skip_stored

    def _call(self, fn: Callable[[Any], T]) -> T:
        # Read once at partition start through the process's shared client, released right
        # away (an embedded chdb left open crashes the interpreter at exit).
        from connectors.clickhouse_sink import _ClientHolder

        client = _hold_client(self.cfg)
        try:
            return fn(_intent_log(client, self.cfg, self.table))
        finally:
            _ClientHolder.release(_client_key(self.cfg))

    def ranges_from(self, topic: str, partition: int, offset: int) -> list[tuple[int, int, str]]:
        return self._call(lambda log_: log_.ranges_from(topic, partition, offset))

    def pending_from(self, topic: str, partition: int) -> int | None:
        if not self.skip_stored:
            return None
        return self._call(lambda log_: log_.pending_from(topic, partition))

    def latest(self, topic: str, partition: int) -> tuple[str, int | None] | None:
        return self._call(lambda log_: log_.latest(topic, partition))

    def reset(self, topic: str, partition: int, topic_id: str, offset: int) -> None:
        self._call(lambda log_: log_.reset(topic, partition, topic_id, offset))


def _runs_with_recovery() -> bool:
    """Whether this process was started by ``bytewax.run`` with a recovery directory."""
    import sys

    argv = sys.argv
    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")) or any(
        a in ("-r", "--recovery-directory") or a.startswith("--recovery-directory=") for a in argv
    )


class MetricsClickHouseSink(DynamicSink[MetricChunk]):
    """Writes every metrics table of each chunk (one insert per table per batch).

    Uses ``connectors.clickhouse`` (embedded chdb or a server, ClickHouse 20+) through one
    client per process shared by the worker threads (see :func:`open_metrics_client`), with its
    retry policy and circuit breaker; each insert carries a deduplication token derived from
    the Kafka offsets.
    """

    def __init__(self, cfg: ClickHouseConfig, intents_table: str | None = None) -> None:
        self.cfg = cfg
        self.intents_table = intents_table

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ClickHousePartition:
        return _ClickHousePartition(self.cfg, self.intents_table)


# --- wiring -----------------------------------------------------------------------------------


def _to_series(tables: dict[str, pa.RecordBatch]) -> SeriesBatch:
    return tables_to_series(tables)


def _serving_source_cls() -> type:
    from bytewax.connectors.kafka import KafkaSource

    class ServingKafkaSource(KafkaSource):
        """bytewax's KafkaSource that serves ``/metrics`` when it builds its first partition."""

        metrics_port: int | None = None
        health: HealthConfig | None = None

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
            if self.metrics_port:
                from otelwax.telemetry import serve_flow_metrics

                serve_flow_metrics(self.metrics_port, health=self.health)
            return super().build_part(step_id, for_part, resume_state)

    return ServingKafkaSource


def kafka_source(
    kafka: KafkaConfig,
    topic: str,
    tail: bool,
    batch_size: int,
    metrics_port: int | None,
    health: HealthConfig | None = None,
) -> Any:
    """bytewax's KafkaSource for ``topic``; serves ``/metrics`` on ``metrics_port`` (when set)
    as soon as the flow builds its first partition, so an idle flow is still observable."""
    conf = {k: str(v) for k, v in kafka.client_conf().items() if k != "bootstrap.servers"}
    src = _serving_source_cls()(
        [kafka.bootstrap_servers], [topic], tail=tail, add_config=conf, batch_size=batch_size
    )
    src.metrics_port = metrics_port
    src.health = health
    return src


def ranges_source(settings: MetricsFlowSettings) -> PartitionedKafkaSource:
    """connectors.kafka_source over ``topic``, re-cutting replays at the recorded intents."""
    cfg = KafkaSourceConfig(
        topic=settings.topic,
        batch=settings.ranges,
        stop_at_end=not settings.tail,
        group_id=settings.flow_id,
    )
    ch = settings.clickhouse
    table = settings.intents_table
    port = settings.metrics_port

    def on_start() -> None:
        from otelwax.telemetry import serve_flow_metrics, start_progress_log, stop_on_sigterm

        stop_on_sigterm()
        start_progress_log(settings.progress_s)
        if port:
            serve_flow_metrics(port, health=settings.health)

    # Without ClickHouse there is nothing to re-cut for: an empty reader (also sidesteps
    # kafka_source's intents=None path, which calls list(offset)).
    skip = settings.resume == "stored" or (settings.resume == "auto" and not _runs_with_recovery())
    intents = (lambda: _ReplayOnly(ch, table, skip)) if ch is not None else NoIntents
    return PartitionedKafkaSource(settings.kafka, cfg, intents, on_start)


def build_from_settings(settings: MetricsFlowSettings) -> Dataflow:
    """Wire the dataflow from validated settings (no I/O)."""
    flow = Dataflow(settings.flow_id)
    if settings.source == "ranges":
        source = ranges_source(settings)
    else:
        source = kafka_source(
            settings.kafka,
            settings.topic,
            settings.tail,
            settings.source_batch_size,
            settings.metrics_port,
            settings.health,
        )
    msgs = op.input("kafka", flow, source)
    chunks = op.flat_map_batch("decode", msgs, _Decode())
    if settings.clickhouse is not None:
        intents = settings.intents_table if settings.source == "ranges" else None
        op.output("clickhouse", chunks, MetricsClickHouseSink(settings.clickhouse, intents))
    if settings.remote_write is not None:
        shards = settings.delta_shards
        direct = op.map("cumulative_as_is", chunks, without_deltas)
        keyed = op.flat_map("split_deltas", chunks, lambda c: split_deltas(c, shards))
        ttl = settings.delta_ttl_s
        cum = op.stateful_map(
            "delta_to_cumulative", keyed, lambda st, v: delta_to_cumulative(st, v, ttl)
        )
        cum_tables = op.map("unkey", cum, lambda kv: kv[1])
        tables = op.merge("all_cumulative", direct, cum_tables)
        series = op.map("to_series", tables, _to_series)
        write_in_order("remote_write", series, settings.remote_write)
    # Logging ($OTELWAX_LOG_LEVEL/$OTELWAX_LOG_FORMAT) is set up as the flow starts; records
    # logged inside a step carry its step id.
    return instrument(flow)


@exits_on_bad_config("metrics")
def build(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Dataflow:
    """Build the flow from a YAML file (or ``$OTELWAX_CONFIG``/defaults) + overrides."""
    return build_from_settings(load_settings(config_path, **overrides))


__getattr__ = lazy_flow("metrics", build)
