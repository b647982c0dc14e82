"""After the drain: what clients were told was accepted against what was stored.

Three layers are compared item by item, so each difference has a place:

* ledger (acknowledged to the SDK) → Kafka (what the shim wrote): an acknowledged item missing
  from Kafka was lost by the shim; an item in Kafka twice was written twice because a client
  retried (measured, reported, not a violation);
* Kafka → ClickHouse: an item in Kafka k times must be stored k times, or be in the DLQ; more
  copies are duplicate rows, fewer are lost rows. Spans dated far from now and the poison-marker
  span may legitimately be dead-lettered instead (counted apart).
* derived outputs: span-metric totals against the spans in Kafka, remote-write series for every
  acknowledged metric series, Jaeger traces for a sample of acknowledged traces.
"""

from __future__ import annotations

import json
import logging
import random
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from soak.faults import Context
from soak.load import span_kind
from soak.monitor import Monitor
from soak.stack import Stack, http_get

log = logging.getLogger(__name__)

CHUNK = 2000
SPANMETRICS_LATENESS_S = 5.0
"""allowed_lateness_s of the soak's flows.spanmetrics (the default)."""


@dataclass
class Record:
    partition: int
    offset: int
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int = 0


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every record of ``topic`` from the beginning up to the high watermarks (bounded)."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "soak-reconcile",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = c.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for p in meta.partitions:
            _low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            ends[p] = high
        c.assign([TopicPartition(topic, p, 0) for p in ends])  # 0: from the first offset kept
        out: list[Record] = []
        pending = {p for p, h in ends.items() if h > 0}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for m in c.consume(1000, 1.0):
                if m.error() is not None:
                    continue
                if m.offset() < ends[m.partition()]:
                    hdrs = {k: (v or b"").decode(errors="replace") for k, v in m.headers() or []}
                    out.append(Record(m.partition(), m.offset(), m.value() or b"", hdrs,
                                      m.timestamp()[1]))
                if m.offset() >= ends[m.partition()] - 1:
                    pending.discard(m.partition())
        return out
    finally:
        c.close()


def _chunks(values: list[bytes]) -> Iterator[list[bytes]]:
    for i in range(0, len(values), CHUNK):
        yield values[i : i + CHUNK]


def span_rows(values: list[bytes]) -> tuple[list[tuple[str, str, str]], int]:
    """(SpanId, TraceId, SpanName) of every decodable span, and the undecodable payload count."""
    from otelwax.codec import decode_traces

    rows: list[tuple[str, str, str]] = []
    bad = 0
    for chunk in _chunks(values):
        res = decode_traces(chunk)
        bad += len(res.errors)
        b = res.batch
        rows += zip(*(b.column(c).to_pylist() for c in ("SpanId", "TraceId", "SpanName")),
                    strict=True)
    return rows, bad


def spans_arrived_late(records: list[Record], lateness_s: float) -> int:
    """Spans (of kinds dated now) that reached Kafka more than ``lateness_s`` after they
    ended (a client that retried through an outage): span metrics may rightly count them
    late."""
    from otelwax.codec import decode_traces

    n = 0
    for r in records:
        b = decode_traces([r.value]).batch
        if not b.num_rows:
            continue
        end = pc.add(b.column("Timestamp").cast(pa.int64()), b.column("Duration"))
        kinds = [span_kind(name) for name in b.column("SpanName").to_pylist()]
        late = pc.less(end, r.timestamp_ms * 1_000_000 - int(lateness_s * 1e9)).to_pylist()
        n += sum(1 for k, x in zip(kinds, late, strict=True) if x and k not in ("future", "past"))
    return n


def log_ids(values: list[bytes]) -> tuple[Counter[str], int, int]:
    """Multiplicity of each ``soak.id`` ("" for logs without one), rows, undecodable count."""
    from otelwax.codec import decode_logs

    ids: Counter[str] = Counter()
    rows = bad = 0
    for chunk in _chunks(values):
        res = decode_logs(chunk)
        bad += len(res.errors)
        rows += res.batch.num_rows
        col = pc.map_lookup(res.batch.column("LogAttributes"), "soak.id", "first")
        ids.update(v or "" for v in col.to_pylist())
    return ids, rows, bad


def point_ids(values: list[bytes]) -> tuple[Counter[tuple[str, str, int]], int, int]:
    """Multiplicity of (MetricName, soak.series, TimeUnix ns) of series-tagged points."""
    from otelwax.codec import decode_metrics

    ids: Counter[tuple[str, str, int]] = Counter()
    rows = bad = 0
    for chunk in _chunks(values):
        res = decode_metrics(chunk)
        bad += len(res.errors)
        for batch in res.tables.values():
            rows += batch.num_rows
            series = pc.map_lookup(batch.column("Attributes"), "soak.series", "first").to_pylist()
            names = batch.column("MetricName").to_pylist()
            times = batch.column("TimeUnix").cast("int64").to_pylist()
            ids.update((n, s, t) for n, s, t in zip(names, series, times, strict=True) if s)
    return ids, rows, bad


@dataclass
class Report:
    """The reconciliation: one table of rows per signal/check, and the violations."""

    rows: list[tuple[str, str, Any]] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, section: str, what: str, value: Any) -> None:
        self.rows.append((section, what, value))

    def violate(self, check: str, detail: str) -> None:
        self.violations.append({"check": check, "detail": detail})

    def text(self) -> str:
        out, last = [], None
        for section, what, value in self.rows:
            if section != last:
                out.append(f"\n{section}")
                last = section
            v = f"{value:,}" if isinstance(value, int) else str(value)
            out.append(f"  {what:<58}{v:>16}")
        out.append(f"\nviolations: {len(self.violations)}")
        out += [f"  ✗ {v['check']}: {v['detail']}" for v in self.violations]
        return "\n".join(out)


def compare(
    report: Report,
    section: str,
    acked: dict[Any, tuple[str, int, float, str]],
    kafka: Counter[Any],
    stored: Counter[Any],
    dlq: set[Any],
    kind_of: dict[Any, str],
) -> None:
    """The three-layer comparison of one signal (see the module docstring)."""
    kinds = Counter(v[0] for v in acked.values())
    for kind, n in sorted(kinds.items()):
        report.add(section, f"acknowledged by the shim ({kind})", n)
    shim_lost = [i for i in acked if i not in kafka]
    report.add(section, "acknowledged but not in Kafka (shim lost)", len(shim_lost))
    if shim_lost:
        report.violate(f"{section}.shim_lost", f"{len(shim_lost)} acknowledged items not in "
                       f"Kafka, e.g. {shim_lost[:3]}")
    retried = sum(n - 1 for n in kafka.values() if n > 1)
    report.add(section, "extra copies in Kafka (client retries, measured)", retried)
    report.add(section, "  of which acked after >1 attempt",
               sum(1 for i, v in acked.items() if v[1] > 1 and kafka.get(i, 0) > 1))
    report.add(section, "distinct items in Kafka", len(kafka))
    report.add(section, "rows stored / distinct", f"{sum(stored.values()):,} / {len(stored):,}")
    lost: Counter[str] = Counter()
    in_dlq: Counter[str] = Counter()
    dup_rows = 0
    for ident, n in kafka.items():
        s = stored.get(ident, 0)
        kind = kind_of.get(ident, "normal")
        if s > n:
            dup_rows += s - n
        elif s == 0:
            (in_dlq if ident in dlq else lost)[kind] += 1
    phantom = sum(1 for i in stored if i not in kafka)
    for kind, n in sorted(in_dlq.items()):
        report.add(section, f"not stored, dead-lettered ({kind})", n)
        if kind == "normal":
            report.violate(f"{section}.dlq_collateral", f"{n} well-formed items dead-lettered "
                           "instead of stored")
    for kind, n in sorted(lost.items()):
        report.add(section, f"in Kafka, neither stored nor dead-lettered ({kind})", n)
        if kind != "poison":
            report.violate(f"{section}.lost", f"{n} {kind} items in Kafka never stored")
    report.add(section, "duplicate rows (stored more often than in Kafka)", dup_rows)
    if dup_rows:
        report.violate(f"{section}.duplicates", f"{dup_rows} duplicate rows in ClickHouse")
    report.add(section, "rows not from Kafka", phantom)


def dlq_index(records: list[Record]) -> tuple[dict[str, set[Any]], Counter[str], set[tuple]]:
    """Span ids / log ids in the DLQ per source topic, reasons, and (topic, part, offset)."""
    by_topic: dict[str, list[bytes]] = {}
    reasons: Counter[str] = Counter()
    where: set[tuple] = set()
    for r in records:
        topic = r.headers.get("otelwax-source-topic", "?")
        by_topic.setdefault(topic, []).append(r.value)
        reasons[f"{topic}: {r.headers.get('otelwax-error', '?')[:70]}"] += 1
        try:
            where.add((topic, int(r.headers["otelwax-source-partition"]),
                       int(r.headers["otelwax-source-offset"])))
        except (KeyError, ValueError):
            pass
    ids: dict[str, set[Any]] = {}
    if "otlp_spans" in by_topic:
        ids["otlp_spans"] = {r[0] for r in span_rows(by_topic["otlp_spans"])[0]}
    if "otlp_logs" in by_topic:
        ids["otlp_logs"] = set(log_ids(by_topic["otlp_logs"])[0])
    return ids, reasons, where


def prom_query(port: int, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    return json.loads(http_get(f"http://127.0.0.1:{port}/api/v1/query?{q}", 10))["data"]["result"]


def prom_series(port: int, match: str) -> list[dict[str, str]]:
    q = urllib.parse.urlencode({"match[]": match, "start": "0"})
    return json.loads(http_get(f"http://127.0.0.1:{port}/api/v1/series?{q}", 10))["data"]


def _server_counts(stack: Stack, sql: str) -> list[tuple]:
    from connectors.clickhouse import ClickHouseConfig, open_client

    p = stack.ports
    client = open_client(ClickHouseConfig(mode="server", host="127.0.0.1", port=p.ch_tcp,
                                          http_port=p.ch_http, database=stack.database))
    try:
        return list(client.execute(sql))
    finally:
        client.close()


def _chdb(path: Path, sql: str) -> list[tuple]:
    from connectors.clickhouse import ClickHouseConfig, open_client

    if not path.exists():
        return []
    client = open_client(ClickHouseConfig(mode="embedded", path=str(path)))
    try:
        return list(client.execute(sql))
    finally:
        client.close()


def reconcile(stack: Stack, ctx: Context, mon: Monitor, rng: random.Random) -> Report:
    """Every check; flows must be stopped (chdb folders are opened here)."""
    rep = Report()
    boot = f"127.0.0.1:{stack.ports.kafka}"
    dlq_records = read_topic(boot, "otlp_dlq")
    dlq_ids, reasons, dlq_where = dlq_index(dlq_records)
    _spans(rep, stack, ctx, boot, dlq_ids.get("otlp_spans", set()), mon, rng)
    _logs(rep, stack, ctx, boot, dlq_ids.get("otlp_logs", set()))
    _metrics(rep, stack, ctx, boot, mon)
    rep.add("dead letters", "records in otlp_dlq", len(dlq_records))
    for reason, n in reasons.most_common(8):
        rep.add("dead letters", reason, n)
    for topic, part, off in ctx.poison_records:  # every flow dead-letters them
        if (topic, part, off) not in dlq_where:
            rep.violate("poison.not_dead_lettered", f"{topic}[{part}]@{off} not in otlp_dlq")
    rep.add("dead letters", "poison records produced / dead-lettered",
            f"{len(ctx.poison_records)} / {len(set(ctx.poison_records) & dlq_where)}")
    for h in ctx.hostile:
        if not h["ok"]:
            rep.violate(f"hostile_http.{h['case']}", f"answer {h['status']} ({h})")
    hostile = Counter(f"{h['case']}={h['status']}" for h in ctx.hostile)
    rep.add("hostile HTTP", "answers", ", ".join(f"{k} x{v}" for k, v in sorted(hostile.items())))
    _processes(rep, stack, mon)
    return rep


def _spans(
    rep: Report, stack: Stack, ctx: Context, boot: str, dlq: set[Any], mon: Monitor,
    rng: random.Random,
) -> None:
    records = read_topic(boot, "otlp_spans")
    rows, bad = span_rows([r.value for r in records])
    arrived_late = spans_arrived_late(records, SPANMETRICS_LATENESS_S)
    kafka = Counter(r[0] for r in rows)
    kind_of = {r[0]: span_kind(r[2]) for r in rows}
    stored = Counter({sid: n for sid, n in _server_counts(
        stack, f"SELECT SpanId, count() FROM {stack.database}.otel_traces GROUP BY SpanId")})
    rep.add("spans", "undecodable records in otlp_spans", bad)
    compare(rep, "spans", ctx.ledger.acked["traces"], kafka, stored, dlq, kind_of)
    # Span metrics count every decodable span of the topic (copies included) within lateness.
    normal = sum(n for sid, n in kafka.items() if kind_of[sid] not in ("future", "past"))
    skewed = sum(n for sid, n in kafka.items() if kind_of[sid] in ("future", "past"))
    sm = mon.flows["spanmetrics"]
    late = int(sm.total("otelwax_dropped", "span_metrics", "late"))
    try:
        promql = "sum(last_over_time(traces_span_metrics_calls_total[6h]))"
        res = prom_query(stack.ports.prom, promql)
        counted = int(float(res[0]["value"][1])) if res else 0
    except (OSError, KeyError, ValueError) as exc:
        counted = -1
        rep.violate("spanmetrics.query", f"Prometheus query failed: {exc}")
    rep.add("span metrics", "spans in Kafka dated near now (with copies)", normal)
    rep.add("span metrics", "spans dated ±1 year (may be dropped as late)", skewed)
    rep.add("span metrics", "calls counted (Prometheus, last value per series)", counted)
    rep.add("span metrics", "spans dropped as late (flow counter)", late)
    rep.add("span metrics", f"  spans in Kafka > {SPANMETRICS_LATENESS_S:g} s after they ended",
            arrived_late)
    late_normal = max(0, late - skewed - arrived_late)
    if counted >= 0 and counted > normal + skewed:
        rep.violate("spanmetrics.overcount", f"{counted} calls counted for {normal} spans")
    if counted >= 0 and counted + late < normal:
        rep.violate("spanmetrics.missing", f"{normal - counted - late} spans neither counted "
                    "nor dropped as late")
    if late_normal > 0.01 * max(normal, 1):
        rep.violate("spanmetrics.late", f"~{late_normal} spans that reached Kafka in time "
                    "dropped as late (more than 1%)")
    _jaeger(rep, stack, ctx, rng)


def _jaeger(rep: Report, stack: Stack, ctx: Context, rng: random.Random) -> None:
    """A sample of traces acknowledged after Jaeger's last (re)start, not refused by the gate."""
    since = ctx.jaeger_started_at + 5
    traces = sorted({
        v[3] for v in ctx.ledger.acked["traces"].values()
        if v[0] == "normal" and v[2] > since and v[3] not in ctx.gate.rejected_traces
    })
    sample = rng.sample(traces, min(20, len(traces)))
    missing = []
    for tid in sample:
        try:
            data = json.loads(http_get(
                f"http://127.0.0.1:{stack.ports.jaeger_query}/api/traces/{tid}", 10))
            if not data.get("data"):
                missing.append(tid)
        except OSError:
            missing.append(tid)
    rep.add("jaeger", "sampled traces (acked after its last start)", len(sample))
    rep.add("jaeger", "found", len(sample) - len(missing))
    rep.add("jaeger", "batches refused by the gate (INVALID_ARGUMENT)", ctx.gate.stats["rejected"])
    if missing:
        rep.violate("jaeger.missing", f"{len(missing)}/{len(sample)} sampled traces not in "
                    f"Jaeger, e.g. {missing[:2]}")


def _logs(rep: Report, stack: Stack, ctx: Context, boot: str, dlq: set[Any]) -> None:
    ids, rows, bad = log_ids([r.value for r in read_topic(boot, "otlp_logs")])
    path = stack.run_dir / "chdb-logs"
    stored_rows = _chdb(path, "SELECT LogAttributes['soak.id'], count() FROM otel.otel_logs "
                        "GROUP BY LogAttributes['soak.id']")
    stored = Counter({k: n for k, n in stored_rows if k})
    kafka = Counter({k: n for k, n in ids.items() if k})
    rep.add("logs", "undecodable records in otlp_logs", bad)
    compare(rep, "logs", ctx.ledger.acked["logs"], kafka, stored, dlq, {})
    total = sum(n for _, n in stored_rows)
    rep.add("logs", "all log rows: in Kafka / stored", f"{rows:,} / {total:,}")
    untagged = ids.get("", 0) - sum(n for k, n in stored_rows if not k)
    if untagged > 0:
        rep.violate("logs.lost_untagged", f"{untagged} telemetrygen logs in Kafka not stored")
    elif untagged < 0:
        rep.violate("logs.duplicates_untagged", f"{-untagged} extra telemetrygen log rows")


def _metrics(rep: Report, stack: Stack, ctx: Context, boot: str, mon: Monitor) -> None:
    ids, rows, bad = point_ids([r.value for r in read_topic(boot, "otlp_metrics")])
    path = stack.run_dir / "chdb-metrics"
    stored: Counter[Any] = Counter()
    total = 0
    for table in ("sum", "gauge", "histogram", "exponential_histogram", "summary"):
        sql = (f"SELECT MetricName, Attributes['soak.series'], toUnixTimestamp64Nano(TimeUnix), "
               f"count() FROM otel.otel_metrics_{table} GROUP BY 1, 2, 3")  # fixed table names
        try:
            got = _chdb(path, sql)
        except Exception as exc:  # a table that was never created
            log.debug("%s: %s", table, exc)
            continue
        total += sum(r[3] for r in got)
        stored.update({(n, s, int(t)): c for n, s, t, c in got if s})
    rep.add("metric points", "undecodable records in otlp_metrics", bad)
    compare(rep, "metric points", ctx.ledger.acked["metrics"], ids, stored, set(), {})
    rep.add("metric points", "all points: in Kafka / stored", f"{rows:,} / {total:,}")
    # Remote-write: every acknowledged series must exist (samples Prometheus refuses as out of
    # order or duplicate are legitimate refusals, so values and counts are not compared).
    want = {(n.replace(".", "_"), s) for n, s, _ in ctx.ledger.acked["metrics"]}
    try:
        have = {(d.get("__name__", ""), d.get("soak_series", ""))
                for d in prom_series(stack.ports.prom, '{soak_series=~".+"}')}
    except OSError as exc:
        have = set()
        rep.violate("remote_write.query", f"Prometheus query failed: {exc}")
    missing = {w for w in want if not any(h[1] == w[1] and h[0].startswith(w[0]) for h in have)}
    rep.add("remote-write", "acknowledged series (metric, soak.series)", len(want))
    rep.add("remote-write", "present in Prometheus", len(want) - len(missing))
    refused = int(mon.flows["metrics"].total("otelwax_dropped", "remote_write"))
    rep.add("remote-write", "samples refused/dropped (flow counter)", refused)
    if missing:
        eg = sorted(missing)[:3]
        rep.violate("remote_write.missing_series", f"{len(missing)} series, e.g. {eg}")


def _processes(rep: Report, stack: Stack, mon: Monitor) -> None:
    for role, rss in sorted(mon.peak_rss.items()):
        rep.add("peak RSS (MiB)", role, round(rss / 2**20))
    for name, w in mon.flows.items():
        rep.add("flows", f"{name}: longest stall s / behind s / max lag",
                f"{w.longest_stall:.0f} / {w.longest_behind:.0f} / {int(w.max_lag):,}")
    for name, proc in stack.procs.items():
        if proc.refused_starts:  # counted, not a violation: the stall check still applies
            n = len(proc.refused_starts)
            rep.add("flows", f"{name}: refused to start (exit 2, one line)", n)
        if proc.crashes:
            rep.add("flows", f"{name}: crashes (not injected)", len(proc.crashes))
            rep.violate(f"{name}.crashed", f"exited {len(proc.crashes)} times on its own; last "
                        f"rc {proc.crashes[-1]['rc']}")
