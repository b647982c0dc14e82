"""Log record counts in event-time windows (``operators.windows``) on Arrow batches.

``log_counts(step_id, logs, cfg)`` turns a stream of log batches (``otelwax.schemas``'
``LOGS_SCHEMA`` columns; only ``Timestamp``, ``SeverityText``, ``SeverityNumber``,
``ServiceName``, ``LogAttributes``, ``ResourceAttributes`` are read) into one cumulative
monotonic sum per series (``otel_metrics_sum`` rows)::

    otelwax.log_records   → otelwax_log_records_total{service_name, severity, <dimensions>}

A record's event time is its ``Timestamp``, which the decoders set to the observed timestamp
when the record has none (as the clickhouseexporter does); a record with neither counts at its
ingest time. ``severity`` is the OpenTelemetry short name of the ``SeverityNumber`` range
(1-4 ``TRACE``, 5-8 ``DEBUG``, 9-12 ``INFO``, 13-16 ``WARN``, 17-20 ``ERROR``, 21-24 ``FATAL``),
so ``ERROR2`` and ``ERROR`` count together; a record without a number (0) gets its
``SeverityText`` in upper case, or ``UNSPECIFIED``. Extra ``dimensions`` are looked up in the
record's attributes, then the resource's, then their default.

Windows, the watermark bounded by the ingest time, rejected records (``future``, ``too_old``,
``late``), eviction of idle series, the cardinality limit with its overflow series and the
snapshot are ``operators.windows``' (the same as for span metrics). Each batch is grouped once
by (window, service, severity, dimensions) with ``pyarrow``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.dataflow import Stream, operator
from pydantic import Field

from operators import windows
from operators.windows import EventTimeWindows, WindowConfig, WindowStreams
from otelwax.metric_schemas import SUM, SUM_SCHEMA

__all__ = [
    "COLUMNS",
    "SEVERITIES",
    "LogCountsAggregator",
    "LogCountsConfig",
    "log_counts",
    "severities",
]

COLUMNS = ["Timestamp", "SeverityText", "SeverityNumber", "ServiceName"]
COLUMNS += ["LogAttributes", "ResourceAttributes"]
"""The ``LOGS_SCHEMA`` columns the counts read."""
SEVERITIES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_NAMES = pa.array(SEVERITIES, pa.string())


class LogCountsConfig(WindowConfig):
    """Log record counts per window by service, severity and ``dimensions``."""

    metric_name: str = Field(
        "otelwax.log_records", min_length=1, description="OTel name (Prometheus: <name>_total)"
    )


def severities(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Each record's severity label: the short name of its number's range, else its text in
    upper case, else ``UNSPECIFIED``."""
    num = batch.column("SeverityNumber").to_numpy(zero_copy_only=False).astype(np.int64)
    by_number = _SEVERITY_NAMES.take(pa.array(np.clip((num - 1) // 4, 0, len(SEVERITIES) - 1)))
    text = pc.utf8_upper(batch.column("SeverityText"))
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = pc.if_else(pc.equal(text, ""), pa.scalar("UNSPECIFIED"), text)
    return pc.if_else(pa.array(num > 0), by_number, text)


class LogCountsAggregator(EventTimeWindows):
    """Record counts per (service, severity, dimensions); an aggregate is ``[records]``."""

    component: str = "log_metrics"
    unit: str = "records"
    attributes_column: str = "LogAttributes"
    cfg: LogCountsConfig

    def zero(self) -> windows.Aggregate:
        return [0]

    def event_times(self, batch: pa.RecordBatch | pa.Table, ref: int) -> np.ndarray:
        ts = batch.column("Timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.where(ts > 0, ts, ref)

    def aggregate(self, batch: pa.RecordBatch | pa.Table, win: np.ndarray) -> None:
        cols: dict[str, Any] = {"w": win, "svc": batch.column("ServiceName")}
        cols["sev"] = severities(batch)
        for j, d in enumerate(self.cfg.dimensions):
            cols[f"d{j}"] = self.dimension(batch, d)
        names = list(cols)
        g = pa.table(cols).group_by(names, use_threads=False).aggregate([([], "count_all")])
        keys = [g.column(nm).to_pylist() for nm in names[1:]]
        ws = g.column("w").to_pylist()
        counts = g.column("count_all").to_pylist()
        for i in range(g.num_rows):
            self.slot(ws[i], tuple(k[i] for k in keys))[0] += counts[i]

    def series_attrs(self, key: tuple) -> tuple[windows.Attrs, windows.Attrs]:
        attrs = [("service.name", key[0]), ("severity", key[1])]
        return [("service.name", key[0])], attrs + self.dimension_attrs(key[2:])

    def tables(self, rows: list[tuple[tuple, list]], end_ns: int) -> dict[str, pa.RecordBatch]:
        n = len(rows)
        cols = self.common_columns(rows, end_ns, "otelwax.log_counts")
        cols["MetricName"] = pa.array([self.cfg.metric_name] * n, pa.string())
        cols["Value"] = pa.array([float(c[1]) for _, c in rows], pa.float64())
        cols["IsMonotonic"] = pa.array([True] * n, pa.bool_())
        return {SUM: windows.fill(SUM_SCHEMA, cols, n)}


@operator
def log_counts(step_id: str, up: Stream[pa.RecordBatch], cfg: LogCountsConfig) -> WindowStreams:
    """Log batches → cumulative record counts per closed event-time window (+ rejected rows)."""
    return windows.windowed(up, cfg, lambda resume: LogCountsAggregator(cfg, resume))
