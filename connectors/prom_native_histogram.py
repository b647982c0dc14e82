"""OTel exponential histogram points as Prometheus *native* histograms (remote-write 1.0's
``TimeSeries.histograms``; the receiving Prometheus needs ``--enable-feature=native-histograms``).

Schema = scale (scales above 8 are downscaled by merging buckets, below -4 are not encodable),
counts delta-encoded in one span per sign. The output is the ``prometheus.Histogram`` message
without its timestamp, which the remote-write sink adds.
"""

from __future__ import annotations

import struct

from otelwax.protowire import length_delimited, varint

__all__ = ["NATIVE_MAX_SCALE", "NATIVE_MIN_SCALE", "encode_native_histogram"]

NATIVE_MIN_SCALE = -4
NATIVE_MAX_SCALE = 8
DEFAULT_ZERO_THRESHOLD = 1e-128


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _downscale(offset: int, counts: list[int], by: int) -> tuple[int, list[int]]:
    """Merge buckets 2**by to 1 (OTel index i → i >> by), as a lower scale requires."""
    if by <= 0 or not counts:
        return offset, counts
    merged: dict[int, int] = {}
    for k, c in enumerate(counts):
        j = (offset + k) >> by
        merged[j] = merged.get(j, 0) + c
    lo, hi = min(merged), max(merged)
    return lo, [merged.get(j, 0) for j in range(lo, hi + 1)]


def _buckets_fields(offset: int, counts: list[int], span_tag: int, delta_tag: int) -> bytes:
    if not counts:
        return b""
    # OTel bucket i covers (base^i, base^(i+1)]; Prometheus bucket j covers (base^(j-1), base^j].
    span = b"\x08" + varint(_zigzag(offset + 1)) + b"\x10" + varint(len(counts))
    deltas = bytearray()
    prev = 0
    for c in counts:
        deltas += varint(_zigzag(c - prev))
        prev = c
    return length_delimited(bytes((span_tag,)), span) + length_delimited(
        bytes((delta_tag,)), bytes(deltas)
    )


def encode_native_histogram(
    count: int,
    total: float,
    scale: int,
    zero_count: int,
    pos_offset: int,
    pos_counts: list[int],
    neg_offset: int,
    neg_counts: list[int],
) -> bytes | None:
    """``prometheus.Histogram`` fields (no timestamp) for an OTel exponential histogram point,
    or None when its scale is below Prometheus' smallest schema (-4).

    Scales above 8 are reduced to 8 by merging buckets; bucket indexes shift by one (OTel
    buckets are lower-exclusive, Prometheus' upper-inclusive at the same boundaries).
    """
    if scale < NATIVE_MIN_SCALE:
        return None
    if scale > NATIVE_MAX_SCALE:
        by = scale - NATIVE_MAX_SCALE
        pos_offset, pos_counts = _downscale(pos_offset, pos_counts, by)
        neg_offset, neg_counts = _downscale(neg_offset, neg_counts, by)
        scale = NATIVE_MAX_SCALE
    out = b"\x08" + varint(count)  # count_int
    out += b"\x19" + _pack_d(total)  # sum
    out += b"\x20" + varint(_zigzag(scale))  # schema
    out += b"\x29" + _pack_d(DEFAULT_ZERO_THRESHOLD)  # zero_threshold
    out += b"\x30" + varint(zero_count)  # zero_count_int
    out += _buckets_fields(neg_offset, neg_counts, 0x42, 0x4A)  # negative spans 8 / deltas 9
    out += _buckets_fields(pos_offset, pos_counts, 0x5A, 0x62)  # positive spans 11 / deltas 12
    return out


def _pack_d(x: float) -> bytes:
    return struct.pack("<d", x)
