"""Prometheus remote-write 1.0 sink.

Wire format (https://prometheus.io/docs/specs/remote_write_spec/): an HTTP POST whose body is
a snappy *block*-compressed (``cramjam.snappy.compress_raw``) protobuf ``prometheus.WriteRequest``
with the headers ``Content-Encoding: snappy``, ``Content-Type: application/x-protobuf``,
``X-Prometheus-Remote-Write-Version: 0.1.0`` and a ``User-Agent``.

The protobuf messages are small and fixed, so they are hand-encoded here (no generated code)::

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

Behaviour, as the spec asks:
- labels sorted by name, samples sorted by timestamp within a series (for equal timestamps the
  last sample wins, reason ``duplicate_timestamp``); a series' samples older
  than the newest one this sink already sent are dropped before sending (reason
  ``out_of_order``), because one out-of-order sample makes Prometheus reject the whole request
  (that memory forgets a series idle for ``order.series_ttl_s``; the flows keep it in their
  recovery snapshot instead and reorder series first: ``connectors.remote_write_order``);
- requests are bounded by ``max_samples_per_request`` (series are split when needed);
- 5xx, 429 and connection errors are retried with exponential backoff (honouring
  ``Retry-After`` on 429, capped at ``retry.max_backoff_s``) until ``retry.max_elapsed_s``;
- other 4xx are never retried: logged and counted as dropped with reason ``http_<status>``.
  With ``split_on_bad_request`` a rejected request is bisected (by series, then by samples of
  one series; O(log n) extra requests per bad sample) so the good samples still land and only
  the rejected ones are dropped. This matters after a crash: a replay re-sends samples that
  Prometheus already holds, which it rejects as out of order unless they are the newest.

``RemoteWriteSink`` is the bytewax sink (items are :class:`~connectors.prom_translate.SeriesBatch`);
``RemoteWriteClient`` does the I/O and is usable on its own.
"""

from __future__ import annotations

import http.client
import logging
import random
import struct
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cramjam
import numpy as np
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pydantic import Field

from connectors.prom_series import joined_values, last_of_ties, split_values
from connectors.prom_translate import Labels, SeriesBatch
from otelwax.protowire import length_delimited, varint
from otelwax.settings import StrictModel, secret_keys
from otelwax.telemetry import ComponentMetrics

log = logging.getLogger(__name__)

USER_AGENT = "otelwax-remote-write/0.1"
# Header names carrying credentials: only from the environment.
SECRET_HEADERS = r"^(proxy-)?authorization$|^cookie$|token|secret|password|api[-_]?key"
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


class RetryConfig(StrictModel):
    """Backoff for retryable failures (5xx, 429, connection errors)."""

    initial_backoff_s: float = Field(0.1, gt=0)
    max_backoff_s: float = Field(5.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    max_elapsed_s: float = Field(
        300.0, ge=0, description="Give up (drop, reason retries_exhausted) after this long."
    )


class OrderConfig(StrictModel):
    """The reorder buffer the flows put in front of the sink (``connectors.remote_write_order``)
    and the memory of what was sent per series."""

    delay_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="hold each sample this long (processing time), so that older samples of its "
        "series read from other Kafka partitions meanwhile are sent first",
    )
    max_series: int = Field(
        100_000, gt=0, description="series held at once (all shards); past it, release early"
    )
    max_samples: int = Field(
        1_000_000, gt=0, description="samples held at once (all shards); past it, release early"
    )
    series_ttl_s: float = Field(
        900.0, gt=0, description="forget a series' last sent timestamp after this long idle"
    )
    shards: int = Field(16, gt=0, le=4096, description="state keys (spread over workers)")


class RemoteWriteConfig(StrictModel):
    """Where and how to send samples."""

    url: str = Field(
        min_length=1, description="the receiver, e.g. http://prometheus:9090/api/v1/write"
    )
    timeout_s: float = Field(30.0, gt=0)
    max_samples_per_request: int = Field(5000, gt=0)
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra HTTP headers; credentials (Authorization, tokens) only as ${env:VAR}",
        json_schema_extra=secret_keys(SECRET_HEADERS),
    )
    user_agent: str = USER_AGENT
    retry: RetryConfig = Field(default_factory=RetryConfig)
    split_on_bad_request: bool = True
    drop_out_of_order: bool = True
    order: OrderConfig = Field(default_factory=OrderConfig)


class LastSent:
    """The newest timestamp sent per series; a series idle for ``ttl_s`` is forgotten (counted
    as dropped ``series``, reason ``expired``). ``entries`` is plain data, for snapshots."""

    def __init__(self, ttl_s: float, metrics: ComponentMetrics) -> None:
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.entries: dict[Labels, list[Any]] = {}  # labels → [last ts_ms | None, seen (time.time)]
        self._next_sweep = 0.0

    def get(self, labels: Labels) -> int | None:
        e = self.entries.get(labels)
        return None if e is None else e[0]

    def touch(self, labels: Labels, now: float) -> None:
        """Note that ``labels`` had samples at ``now`` (keeps it from expiring)."""
        e = self.entries.get(labels)
        if e is None:
            self.entries[labels] = [None, now]
        else:
            e[1] = now

    def sent(self, labels: Labels, ts: int) -> None:
        e = self.entries.get(labels)
        if e is None:
            self.entries[labels] = [ts, time.time()]
        elif e[0] is None or e[0] < ts:
            e[0] = ts

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work to do (None: nothing to forget)."""
        return self._next_sweep if self.entries else None

    def expire(self, now: float) -> int:
        """Forget the series idle for ``ttl_s``; sweeps at most every ``ttl_s / 4``."""
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + self.ttl_s / 4
        cutoff = now - self.ttl_s
        stale = [k for k, e in self.entries.items() if e[1] < cutoff]
        for k in stale:
            del self.entries[k]
        self.metrics.dropped(len(stale), "expired")
        return len(stale)


# --- protobuf wire encoding -------------------------------------------------------------------

_pack_double = struct.Struct("<d").pack


def encode_labels(labels: Labels) -> bytes:
    """The ``labels`` fields of a TimeSeries (labels must already be sorted by name)."""
    parts = []
    for name, value in labels:
        n = name.encode()
        v = value.encode()
        parts.append(
            length_delimited(b"\x0a", b"\x0a" + varint(len(n)) + n + b"\x12" + varint(len(v)) + v)
        )
    return b"".join(parts)


def encode_samples(samples: Iterable[tuple[int, float | bytes]]) -> bytes:
    """The ``samples`` fields of a TimeSeries.

    A value that is ``bytes`` is a native histogram (``prometheus.Histogram`` fields without
    the timestamp, see ``connectors.prom_native_histogram.encode_native_histogram``); it goes to the
    ``histograms`` field (4) with its timestamp (field 15) appended.
    """
    parts = []
    for ts, value in samples:
        if isinstance(value, bytes):
            body = value + b"\x78" + varint(ts)
            parts.append(b"\x22" + varint(len(body)) + body)
            continue
        body = b"\x09" + _pack_double(value) + b"\x10" + varint(ts)
        parts.append(b"\x12" + varint(len(body)) + body)
    return b"".join(parts)


_TS_MIN = 1 << 35  # ms timestamps in [2^35, 2^42) (1971..2109) are 6-byte varints
_TS_MAX = 1 << 42
_SAMPLE_LEN = 18  # 0x12 len | 0x09 double(8) | 0x10 varint(6)


def _encode_samples_fixed(ts: np.ndarray, vals: np.ndarray) -> bytes:
    """Every sample's field bytes at once (numpy), for timestamps with 6-byte varints."""
    buf = np.empty((len(ts), _SAMPLE_LEN), np.uint8)
    buf[:, 0] = 0x12
    buf[:, 1] = _SAMPLE_LEN - 2
    buf[:, 2] = 0x09
    buf[:, 3:11] = vals.astype("<f8").view(np.uint8).reshape(-1, 8)
    buf[:, 11] = 0x10
    for k in range(5):
        buf[:, 12 + k] = ((ts >> (7 * k)) & 0x7F) | 0x80
    buf[:, 17] = ts >> 35
    return buf.tobytes()


def encode_write_request(series: Iterable[tuple[bytes, list[tuple[int, float | bytes]]]]) -> bytes:
    """A serialized WriteRequest from (encoded labels, samples) pairs."""
    series = list(series)
    lengths = np.fromiter((len(s) for _, s in series), np.int64, len(series))
    ends = np.cumsum(lengths)
    val, obj = split_values([v for _, s in series for _, v in s])
    ts = np.fromiter((t for _, s in series for t, _ in s), np.int64, len(val))
    return encode_runs([lab for lab, _ in series], ends - lengths, ends, ts, val, obj)


def series_runs(sid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal series ids in ``sid`` (samples sorted by series)."""
    starts = np.flatnonzero(np.diff(sid)) + 1
    return np.concatenate(([0], starts)), np.concatenate((starts, [len(sid)]))


def encode_runs(
    labels: list[bytes],
    starts: np.ndarray,
    ends: np.ndarray,
    ts: np.ndarray,
    val: np.ndarray,
    obj: np.ndarray | None = None,
) -> bytes:
    """A serialized WriteRequest: TimeSeries ``k`` has the encoded labels ``labels[k]`` and the
    samples ``starts[k]:ends[k]`` of the columns (``obj[i]``, when not None, is a native
    histogram). Every sample's bytes are made at once by numpy when the timestamps allow."""
    a_, b_ = starts.tolist(), ends.tolist()
    if obj is None and len(ts) and _TS_MIN <= int(ts.min()) and int(ts.max()) < _TS_MAX:
        raw = _encode_samples_fixed(ts, val)
        w = _SAMPLE_LEN
        return b"".join(
            [length_delimited(b"\x0a", lab + raw[a * w : b * w])
             for lab, a, b in zip(labels, a_, b_, strict=True)]
        )  # fmt: skip
    values = joined_values(val, obj)
    tl = ts.tolist()
    return b"".join(
        length_delimited(b"\x0a", lab + encode_samples(zip(tl[a:b], values[a:b], strict=True)))
        for lab, a, b in zip(labels, a_, b_, strict=True)
    )


# --- client -----------------------------------------------------------------------------------

Chunk = tuple[list[Labels], np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]
"""Samples sorted by (series, timestamp): (labels by series id, sid, ts, val, obj)."""

_NO_TS = np.iinfo(np.int64).min


def _take(chunk: Chunk, idx: Any) -> Chunk:
    labels, sid, ts, val, obj = chunk
    return labels, sid[idx], ts[idx], val[idx], None if obj is None else obj[idx]


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


@dataclass
class _Rejected:
    """What one ``send`` could not deliver, by (status, answer), for one log line each."""

    counts: Counter[tuple[int, str]] = field(default_factory=Counter)
    bisecting: bool = False


class RemoteWriteClient:
    """Sends series to one remote-write endpoint, with batching, retries and counters."""

    def __init__(
        self, cfg: RemoteWriteConfig, component: str = "remote_write", check_order: bool = True
    ) -> None:
        self.cfg = cfg
        self.metrics = ComponentMetrics(component, "samples")
        self.check_order = check_order and cfg.drop_out_of_order
        u = urllib.parse.urlsplit(cfg.url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"remote_write.url: unsupported scheme {u.scheme!r}")
        self._scheme = u.scheme
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (443 if u.scheme == "https" else 80)
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        # Named in every log line; no credentials (headers carry those, not the URL).
        self.target = f"{u.scheme}://{self._host}:{self._port}{u.path or '/'}"
        self._conn: http.client.HTTPConnection | None = None
        self._headers = {**HEADERS, "User-Agent": cfg.user_agent, **cfg.headers}
        self._last_sent = LastSent(cfg.order.series_ttl_s, ComponentMetrics(component, "series"))
        self._label_cache: dict[Labels, bytes] = {}
        self.requests_sent = 0

    # -- connection --
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self._host, self._port, timeout=self.cfg.timeout_s)
        return self._conn

    def close(self) -> None:
        """Close the HTTP connection (safe to call twice)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _post(self, body: bytes) -> tuple[int, str, dict[str, str]]:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            return resp.status, text, {k.lower(): v for k, v in resp.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc

    # -- sending --
    def _encoded_labels(self, labels: Labels) -> bytes:
        b = self._label_cache.get(labels)
        if b is None:
            if len(self._label_cache) > 500_000:
                self._label_cache.clear()
            b = self._label_cache[labels] = encode_labels(labels)
        return b

    def _prepare(self, batch: SeriesBatch) -> Chunk | None:
        """Sort samples by (series, timestamp), drop the ones older than what was already sent
        for the series."""
        labels = batch.labels
        sid, ts, val, obj = batch.columns()
        if not len(sid):
            return None
        chunk = (labels, sid, ts, val, obj)
        d_sid = np.diff(sid)
        if not ((d_sid > 0) | ((d_sid == 0) & (np.diff(ts) > 0))).all():  # as the buffer sends
            chunk = _take(chunk, np.lexsort((ts, sid)))  # stable
            _, sid, ts, _, _ = chunk
        last = last_of_ties(sid, ts)
        if not last.all():
            self.metrics.dropped(int(len(last) - last.sum()), "duplicate_timestamp")
            chunk = _take(chunk, last)
            _, sid, ts, _, _ = chunk
        if self.check_order:
            used = np.unique(sid)
            floor = np.full(len(labels), _NO_TS)
            got = (self._last_sent.get(labels[s]) for s in used.tolist())
            floor[used] = np.fromiter((_NO_TS if t is None else t for t in got), np.int64)
            keep = ts >= floor[sid]
            dropped = int(len(keep) - keep.sum())
            if dropped:
                self.metrics.dropped(dropped, "out_of_order")
                log.warning(
                    "remote-write %s: dropped %d out-of-order samples", self.target, dropped
                )
                chunk = _take(chunk, keep)
        return chunk if len(chunk[1]) else None

    def send(self, batch: SeriesBatch) -> int:
        """Send every sample of ``batch``; returns the number of samples accepted.

        Blocks while retrying. Never raises for HTTP or connection errors: what could not be
        sent is counted as dropped (with a reason) or failed.
        """
        for reason, n in batch.skipped.items():
            self.metrics.dropped(n, reason)
        self.metrics.received(batch.num_samples)
        self._last_sent.expire(time.time())
        chunk = self._prepare(batch)
        if chunk is None:
            return 0
        limit = self.cfg.max_samples_per_request
        rejected = _Rejected()
        accepted = sum(
            self._send_chunk(_take(chunk, slice(i, i + limit)), rejected)
            for i in range(0, len(chunk[1]), limit)
        )
        for (status, text), n in rejected.counts.items():  # a line per answer, not per sample
            log.warning(
                "remote-write %s: dropped %d samples, HTTP %d (not retried): %s",
                self.target, n, status, text,
            )
        return accepted

    def _send_chunk(self, chunk: Chunk, rejected: _Rejected) -> int:
        """Send one request; on a non-retryable 4xx bisect it, adding what is still rejected
        to ``rejected`` (by status and answer) for the caller's one log line."""
        labels, sid, ts, val, obj = chunk
        n = len(sid)
        starts, ends = series_runs(sid)
        run_sids = sid[starts].tolist()
        lab = [self._encoded_labels(labels[s]) for s in run_sids]
        body = cramjam.snappy.compress_raw(encode_runs(lab, starts, ends, ts, val, obj))
        status, text = self._post_with_retries(bytes(body), n)
        if status is None:
            return 0
        if 200 <= status < 300:
            self.metrics.sent(n)
            if self.check_order:
                for s, t in zip(run_sids, ts[ends - 1].tolist(), strict=True):
                    self._last_sent.sent(labels[s], t)
            return n
        # Non-retryable 4xx.
        if self.cfg.split_on_bad_request and n > 1:
            if not rejected.bisecting:
                rejected.bisecting = True
                log.info(
                    "remote-write %s: %d on a request of %d series / %d samples, bisecting "
                    "(%s)", self.target, status, len(starts), n, text.strip()[:200],
                )
            # By series; within one series its older samples may be replays Prometheus already
            # has (it accepts only the newest as a duplicate), so split the samples and keep
            # the newer ones.
            mid = int(starts[len(starts) // 2]) if len(starts) > 1 else n // 2
            return self._send_chunk(_take(chunk, slice(0, mid)), rejected) + self._send_chunk(
                _take(chunk, slice(mid, n)), rejected
            )
        rejected.counts[(status, text.strip()[:300])] += n
        self.metrics.dropped(n, f"http_{status}")
        return 0

    def _post_with_retries(self, body: bytes, n: int) -> tuple[int | None, str]:
        r = self.cfg.retry
        start = time.monotonic()
        backoff = r.initial_backoff_s
        attempt = 0
        timer = self.metrics.latency("write")
        while True:
            attempt += 1
            try:
                t0 = time.monotonic()
                status, text, headers = self._post(body)
                timer.observe(time.monotonic() - t0)
                self.requests_sent += 1
                if status == 429 or status >= 500:
                    ra = headers.get("retry-after")
                    raise _Retryable(f"HTTP {status}: {text.strip()[:200]}", _retry_after(ra))
                return status, text
            except _Retryable as exc:
                elapsed = time.monotonic() - start
                if elapsed >= r.max_elapsed_s:
                    log.error(
                        "remote-write %s: giving up on %d samples after %d attempts (%.1fs): %s",
                        self.target,
                        n,
                        attempt,
                        elapsed,
                        exc,
                    )
                    self.metrics.dropped(n, "retries_exhausted")
                    return None, str(exc)
                wait = exc.retry_after if exc.retry_after is not None else backoff
                wait = min(wait, r.max_backoff_s, max(0.0, r.max_elapsed_s - elapsed))
                wait *= random.uniform(0.8, 1.0)
                log.warning(
                    "remote-write %s: attempt %d failed (%s); retrying in %.2fs",
                    self.target,
                    attempt,
                    exc,
                    wait,
                )
                time.sleep(wait)
                backoff = min(backoff * r.multiplier, r.max_backoff_s)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# --- bytewax sink -----------------------------------------------------------------------------


class _RemoteWritePartition(StatelessSinkPartition[SeriesBatch]):
    def __init__(self, cfg: RemoteWriteConfig, component: str, check_order: bool) -> None:
        self._client = RemoteWriteClient(cfg, component, check_order)

    def write_batch(self, items: list[SeriesBatch]) -> None:
        if not items:
            return
        merged = items[0] if len(items) == 1 else SeriesBatch()
        if len(items) > 1:
            for it in items:
                merged.merge(it)
        self._client.send(merged)

    def close(self) -> None:
        self._client.close()


class RemoteWriteSink(DynamicSink[SeriesBatch]):
    """bytewax sink writing :class:`SeriesBatch` items with remote-write (one client per worker).

    Constructing it does no I/O; the HTTP connection opens on the first write. Its memory of
    the last sample sent per series (``check_order``) is per worker and lost on restart: the
    flows put ``connectors.remote_write_order.write_in_order`` in front instead, which keeps
    it in the recovery snapshot and orders series across partitions and workers.
    """

    def __init__(
        self, cfg: RemoteWriteConfig, component: str = "remote_write", check_order: bool = True
    ) -> None:
        self.cfg = cfg
        self.component = component
        self.check_order = check_order

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        return _RemoteWritePartition(self.cfg, self.component, self.check_order)
