"""Lazy splitting of OTLP export requests on the protobuf wire format.

Spans, metrics and log records are never decoded: a small wire walker slices the request into
its resources, scopes and items (raw ``bytes`` including tag and length) and reads only what it
needs — a span's ``trace_id`` (almost always its first 18 bytes), and the data-point count of a
metric. Records are re-assembled by concatenating the raw slices, so the output is byte-identical
to what a protobuf library would write for the same sub-request (modulo field order, which
protobuf parsers accept in any order).

All three signals share one shape, which the walker relies on::

    Export*ServiceRequest { repeated Resource* = 1; }
    Resource*  { Resource resource = 1; repeated Scope* = 2; string schema_url = 3; }
    Scope*     { InstrumentationScope scope = 1; repeated <item> = 2; string schema_url = 3; }

Kafka keys:

* traces — the lowercase 32-hex trace id; one record per trace id per request (Collector
  ``partition_traces_by_id``), holding that trace's spans with their resource and scope;
* metrics and logs — one record per Resource*; the key is the 32-hex BLAKE2b-128 digest of the
  resource's attribute ``KeyValue`` encodings sorted by attribute key (stable for a given
  resource as a given SDK encodes it; resources without attributes get the digest of nothing).

A record larger than ``limit`` bytes is split further at item granularity (same key). An item
that cannot fit in a record on its own (with its resource and scope) is rejected: it is
reported back to the client as a partial success, never sent.

Traces, the hot path, are split by the native module (``otelwax._native.split_traces``) when it
is built: the same records byte for byte, and with ``validate`` the whole request is checked in
that one pass as a protobuf parser would, so the shim needs no second parse. The Python split
below is the reference and the fallback (``OTELWAX_CODEC=python`` forces it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from otelwax.protowire import varint

__all__ = ["SplitResult", "WireError", "count_datapoints", "count_items", "split_request"]


def _load_native_split() -> Callable[[bytes, int, bool], tuple[list, int, int]] | None:
    if os.environ.get("OTELWAX_CODEC", "auto").lower() == "python":
        return None
    try:  # the extension itself, not otelwax.codec.native: that one imports pyarrow
        from otelwax import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(_native, "split_traces", None)  # an older build lacks it


native_split_traces = _load_native_split()

# Overhead for one nested length-delimited header (tag + up to 5 varint bytes), rounded up.
_HDR = 6


class WireError(ValueError):
    """The bytes are not a well-formed OTLP export request."""


def _readvarint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    result = b & 0x7F
    shift = 7
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """Top-level fields of the message in ``buf[pos:end]``: (field, tag_start, val_start, end).

    For non length-delimited fields ``val_start`` is -1.
    """
    out = []
    while pos < end:
        tag_start = pos
        tag, pos = _readvarint(buf, pos)
        wt = tag & 7
        fn = tag >> 3
        if fn == 0:
            raise WireError(f"invalid field number 0 at byte {tag_start}")
        if wt == 2:
            ln, pos = _readvarint(buf, pos)
            vs = pos
            pos += ln
            if pos > end:
                raise WireError(f"field {fn} at byte {tag_start} overruns its message")
            out.append((fn, tag_start, vs, pos))
        elif wt == 0:
            _, pos = _readvarint(buf, pos)
            out.append((fn, tag_start, -1, pos))
        elif wt == 1:
            pos += 8
            out.append((fn, tag_start, -1, pos))
        elif wt == 5:
            pos += 4
            out.append((fn, tag_start, -1, pos))
        else:
            raise WireError(f"unsupported wire type {wt} at byte {tag_start}")
    if pos != end:
        raise WireError("truncated message")
    return out


@dataclass(slots=True)
class _Scope:
    head: bytes  # every field but the items, raw
    items: list[bytes] = field(default_factory=list)  # raw, with tag and length
    tids: list[bytes] | None = None  # traces: trace id of each item


@dataclass(slots=True)
class _Resource:
    head: bytes  # every field but the scopes, raw
    resource: bytes  # payload of field 1 (Resource), for the key
    raw: bytes  # the whole Resource* message
    scopes: list[_Scope] = field(default_factory=list)


def _trace_id(buf: bytes, vs: int, ve: int) -> bytes:
    """trace_id (field 1) of the span in ``buf[vs:ve]``; b'' when absent."""
    if ve - vs >= 18 and buf[vs] == 0x0A and buf[vs + 1] == 0x10:
        return buf[vs + 2 : vs + 18]
    for fn, _ts, fvs, fve in _fields(buf, vs, ve):
        if fn == 1 and fvs >= 0:
            return buf[fvs:fve]
    return b""


def _walk(buf: bytes, traces: bool) -> list[_Resource]:
    resources: list[_Resource] = []
    for fn, _ts, rvs, rve in _fields(buf, 0, len(buf)):
        if fn != 1:
            continue  # unknown top-level field: not forwarded
        if rvs < 0:
            raise WireError("resource entry is not length-delimited")
        head = []
        res = _Resource(b"", b"", buf[rvs:rve])
        for rfn, rts, svs, sve in _fields(buf, rvs, rve):
            if rfn != 2:
                head.append(buf[rts:sve])
                if rfn == 1:
                    if svs < 0:
                        raise WireError("resource is not length-delimited")
                    res.resource = buf[svs:sve]
                continue
            if svs < 0:
                raise WireError("scope entry is not length-delimited")
            shead = []
            items: list[bytes] = []
            tids: list[bytes] | None = [] if traces else None
            # Inlined item loop: this is the per-span hot path.
            pos = svs
            append = items.append
            while pos < sve:
                tag_start = pos
                tag = buf[pos]
                if tag == 0x12:
                    # Item: 1-byte tag, then a length that is 1 or 2 bytes for most items.
                    b1 = buf[pos + 1]
                    if b1 < 0x80:
                        vs = pos + 2
                        ln = b1
                    else:
                        b2 = buf[pos + 2]
                        if b2 < 0x80:
                            vs = pos + 3
                            ln = (b1 & 0x7F) | (b2 << 7)
                        else:
                            ln, vs = _readvarint(buf, pos + 1)
                    pos = vs + ln
                    if pos > sve:
                        raise WireError(f"item at byte {tag_start} overruns its scope")
                    append(buf[tag_start:pos])
                    if tids is not None:
                        if ln >= 18 and buf[vs] == 0x0A and buf[vs + 1] == 0x10:
                            tids.append(buf[vs + 2 : vs + 18])
                        else:
                            tids.append(_trace_id(buf, vs, pos) if ln else b"")
                    continue
                tag, pos = _readvarint(buf, pos)
                wt = tag & 7
                if tag >> 3 == 0:
                    raise WireError(f"invalid field number 0 at byte {tag_start}")
                if wt == 2:
                    ln, pos = _readvarint(buf, pos)
                    pos += ln
                elif wt == 0:
                    _, pos = _readvarint(buf, pos)
                elif wt == 1:
                    pos += 8
                elif wt == 5:
                    pos += 4
                else:
                    raise WireError(f"unsupported wire type {wt} at byte {tag_start}")
                if pos > sve:
                    raise WireError(f"field at byte {tag_start} overruns its scope")
                shead.append(buf[tag_start:pos])
            if pos != sve:
                raise WireError("truncated scope")
            res.scopes.append(_Scope(b"".join(shead), items, tids))
        res.head = b"".join(head)
        resources.append(res)
    return resources


def _wrap(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


Group = tuple[int, int, list[bytes]]  # (resource index, scope index, raw items)


def _encode(resources: list[_Resource], groups: list[Group]) -> bytes:
    """Serialize an export request holding ``groups`` (ordered by resource index)."""
    out: list[bytes] = []
    cur = -1
    parts: list[bytes] = []
    for ri, si, items in groups:
        if ri != cur:
            if parts:
                out.append(_wrap(0x0A, b"".join(parts)))
            cur = ri
            parts = [resources[ri].head]
        parts.append(_wrap(0x12, resources[ri].scopes[si].head + b"".join(items)))
    if parts:
        out.append(_wrap(0x0A, b"".join(parts)))
    return b"".join(out)


def _size(resources: list[_Resource], groups: list[Group]) -> int:
    size = 0
    cur = -1
    for ri, si, items in groups:
        if ri != cur:
            cur = ri
            size += len(resources[ri].head) + _HDR
        size += len(resources[ri].scopes[si].head) + _HDR
        for it in items:
            size += len(it)
    return size


def _chunk(
    resources: list[_Resource], groups: list[Group], limit: int
) -> tuple[list[list[Group]], list[Group]]:
    """Cut ``groups`` into requests of at most ``limit`` bytes; also returns the items that
    cannot fit on their own (as groups)."""
    chunks: list[list[Group]] = []
    rejected: list[Group] = []
    cur: list[Group] = []
    size = 0
    for ri, si, items in groups:
        res = resources[ri]
        scope_head = len(res.scopes[si].head) + _HDR
        res_head = len(res.head) + _HDR
        for it in items:
            if cur and cur[-1][0] == ri and cur[-1][1] == si:
                over = 0
            elif cur and cur[-1][0] == ri:
                over = scope_head
            else:
                over = scope_head + res_head
            if cur and size + over + len(it) > limit:
                chunks.append(cur)
                cur = []
                size = 0
                over = scope_head + res_head
            if over + len(it) > limit:
                rejected.append((ri, si, [it]))
                continue
            if over:
                cur.append((ri, si, [it]))
            else:
                cur[-1][2].append(it)
            size += over + len(it)
    if cur:
        chunks.append(cur)
    return chunks, rejected


def count_datapoints(item: bytes) -> int:
    """Data points in one raw ``Metric`` item (with its tag and length)."""
    _, pos = _readvarint(item, 0)
    ln, pos = _readvarint(item, pos)
    n = 0
    for fn, _ts, vs, ve in _fields(item, pos, pos + ln):
        if fn in (5, 7, 9, 10, 11) and vs >= 0:
            for dfn, _dts, _dvs, _dve in _fields(item, vs, ve):
                if dfn == 1:
                    n += 1
    return n


_key_cache: dict[bytes, bytes] = {}


def resource_key(resource: bytes) -> bytes:
    """The Kafka key of a metrics/logs record: 32-hex BLAKE2b-128 of sorted attributes."""
    key = _key_cache.get(resource)
    if key is not None:
        return key
    attrs = []
    for fn, ts, vs, ve in _fields(resource, 0, len(resource)):
        if fn == 1 and vs >= 0:
            name = b""
            for kfn, _kts, kvs, kve in _fields(resource, vs, ve):
                if kfn == 1 and kvs >= 0:
                    name = resource[kvs:kve]
                    break
            attrs.append((name, resource[ts:ve]))
    attrs.sort()
    h = hashlib.blake2b(digest_size=16)
    for _name, raw in attrs:
        h.update(raw)
    key = h.hexdigest().encode()
    if len(_key_cache) > 4096:
        _key_cache.clear()
    _key_cache[resource] = key
    return key


@dataclass(slots=True)
class SplitResult:
    """Records to produce and what the request contained."""

    records: list[tuple[bytes | None, bytes]]  # (key, value)
    items: int  # spans, data points or log records in the request
    rejected: int = 0  # items too large to send (partial success)
    error: str | None = None


def _rejected_count(groups: list[Group], metrics: bool) -> int:
    if metrics:
        return sum(count_datapoints(it) for _, _, items in groups for it in items)
    return sum(len(items) for _, _, items in groups)


def count_items(payload: bytes, signal: str) -> int:
    """Spans, data points or log records in one export request (or one record of it)."""
    resources = _walk(payload, False)
    if signal == "metrics":
        return sum(count_datapoints(it) for r in resources for sc in r.scopes for it in sc.items)
    return sum(len(sc.items) for r in resources for sc in r.scopes)


def validates(signal: str) -> bool:
    """Whether :func:`split_request` can validate ``signal`` requests fully (native traces)."""
    return signal == "traces" and native_split_traces is not None


def split_request(
    payload: bytes, signal: str, limit: int, validate: bool = False
) -> SplitResult:
    """Split an ``Export{Trace,Metrics,Logs}ServiceRequest`` into Kafka records.

    ``signal`` is ``traces``, ``metrics`` or ``logs``; ``limit`` is the largest record value.
    ``validate`` also checks what a protobuf parser would (only where :func:`validates`).
    Raises :class:`WireError` when the payload is not well formed.
    """
    if signal == "traces" and native_split_traces is not None:
        try:
            records, items, rejected = native_split_traces(payload, limit, validate)
        except ValueError as exc:
            raise WireError(str(exc)) from exc
        return _result(SplitResult(records, items), rejected, rejected, signal, limit)
    try:
        return _split(payload, signal, limit)
    except IndexError as exc:
        raise WireError("truncated message") from exc


def _split(payload: bytes, signal: str, limit: int) -> SplitResult:
    traces = signal == "traces"
    metrics = signal == "metrics"
    resources = _walk(payload, traces)
    records: list[tuple[bytes | None, bytes]] = []
    rejected_groups: list[Group] = []

    if traces:
        # trace id -> {(ri, si): items}
        by_trace: dict[bytes, dict[tuple[int, int], list[bytes]]] = {}
        n = 0
        for ri, res in enumerate(resources):
            for si, sc in enumerate(res.scopes):
                items = sc.items
                tids = sc.tids or []
                cnt = len(items)
                n += cnt
                # Spans of one trace are usually adjacent: handle runs, not single spans.
                i = 0
                while i < cnt:
                    tid = tids[i]
                    j = i + 1
                    while j < cnt and tids[j] == tid:
                        j += 1
                    g = by_trace.get(tid)
                    if g is None:
                        g = by_trace[tid] = {}
                    lst = g.get((ri, si))
                    if lst is None:
                        g[(ri, si)] = items[i:j]
                    else:
                        lst.extend(items[i:j])
                    i = j
        for tid, g in by_trace.items():
            key = tid.hex().encode() if tid else None
            if len(g) == 1:
                # Fast path: the whole trace sits under one resource and scope.
                ((ri, si), its) = next(iter(g.items()))
                res = resources[ri]
                sc_head = res.scopes[si].head
                if sum(map(len, its)) + len(sc_head) + len(res.head) + 2 * _HDR <= limit:
                    scope = _wrap(0x12, sc_head + b"".join(its))
                    records.append((key, _wrap(0x0A, res.head + scope)))
                    continue
            groups = [(ri, si, items) for (ri, si), items in g.items()]
            if _size(resources, groups) <= limit:
                records.append((key, _encode(resources, groups)))
                continue
            chunks, rej = _chunk(resources, groups, limit)
            rejected_groups.extend(rej)
            records.extend((key, _encode(resources, c)) for c in chunks)
        items_total = n
    else:
        items_total = 0
        for ri, res in enumerate(resources):
            if metrics:
                cnt = sum(count_datapoints(it) for sc in res.scopes for it in sc.items)
            else:
                cnt = sum(len(sc.items) for sc in res.scopes)
            items_total += cnt
            if not res.scopes:
                continue
            key = resource_key(res.resource)
            if len(res.raw) + _HDR <= limit:
                records.append((key, _wrap(0x0A, res.raw)))
                continue
            groups = [(ri, si, sc.items) for si, sc in enumerate(res.scopes) if sc.items]
            chunks, rej = _chunk(resources, groups, limit)
            rejected_groups.extend(rej)
            records.extend((key, _encode(resources, c)) for c in chunks)

    rejected = _rejected_count(rejected_groups, metrics) if rejected_groups else 0
    return _result(SplitResult(records, items_total), rejected, len(rejected_groups), signal, limit)


def _result(
    result: SplitResult, rejected: int, rejected_groups: int, signal: str, limit: int
) -> SplitResult:
    if rejected_groups:
        result.rejected = rejected
        what = {"traces": "span", "metrics": "metric", "logs": "log record"}[signal]
        result.error = (
            f"{rejected_groups} {what}(s) larger than the maximum Kafka record size "
            f"({limit} bytes) were rejected"
        )
    return result
