"""Columnar Prometheus samples: the item the remote-write branch carries from translation
(``connectors.prom_translate``) through the reorder buffer (``connectors.remote_write_order``)
to the sink (``connectors.remote_write``).

A :class:`SeriesBatch` holds each distinct series' label set once (``labels``, indexed by a
series id local to the batch) and its samples as parallel numpy columns: series id, timestamp
(ms) and value. Native histogram samples (``bytes`` values, rare) ride in an optional object
column beside a NaN value. The stages work on the columns batch-at-a-time; Python runs once
per distinct series of a batch, not once per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "Labels",
    "SeriesBatch",
    "joined_values",
    "last_of_ties",
    "object_column",
    "split_values",
]

Labels = tuple[tuple[str, str], ...]
"""A series' label set, sorted by name."""

_EMPTY_I = np.empty(0, np.int64)
_EMPTY_F = np.empty(0, np.float64)


class SeriesBatch:
    """Samples of distinct series: ``labels[sid]`` and the columns ``(sid, ts, val, obj)``.

    ``skipped`` counts data points that were not translated, by reason.
    """

    __slots__ = ("_ids", "_parts", "_pend", "labels", "skipped")

    def __init__(self) -> None:
        self.labels: list[Labels] = []
        self._ids: dict[Labels, int] | None = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._pend: list[tuple[int, int, float | bytes]] = []
        self.skipped: dict[str, int] = {}

    @classmethod
    def of(
        cls,
        labels: list[Labels],
        sid: np.ndarray,
        ts: np.ndarray,
        val: np.ndarray,
        obj: np.ndarray | None = None,
    ) -> SeriesBatch:
        """A batch of columns whose series ids index ``labels`` (distinct label sets; taken,
        not copied)."""
        b = cls()
        b.labels = labels
        b._ids = None
        b.add_columns(sid, ts, val, obj)
        return b

    def series_id(self, labels: Labels) -> int:
        """The id of ``labels`` in this batch (added when new)."""
        if self._ids is None:
            self._ids = {lab: i for i, lab in enumerate(self.labels)}
        i = self._ids.get(labels)
        if i is None:
            i = self._ids[labels] = len(self.labels)
            self.labels.append(labels)
        return i

    def add(self, labels: Labels, ts_ms: int, value: float | bytes) -> None:
        """One sample (for the rare paths: summaries, native histograms, target_info)."""
        self._pend.append((self.series_id(labels), ts_ms, value))

    def add_columns(
        self, sid: np.ndarray, ts: np.ndarray, val: np.ndarray, obj: np.ndarray | None = None
    ) -> None:
        """Samples whose series ids are already this batch's."""
        if len(sid):
            self._parts.append((sid, ts, val, obj))

    def extend(
        self,
        labels: Sequence[Labels],
        sid: np.ndarray,
        ts: np.ndarray,
        val: np.ndarray,
        obj: np.ndarray | None = None,
    ) -> None:
        """Samples whose series are ``labels[sid]`` (ids of another batch or buffer)."""
        if not len(sid):
            return
        u, inv = np.unique(sid, return_inverse=True)
        ids = np.fromiter((self.series_id(labels[i]) for i in u.tolist()), np.int64, len(u))
        self._parts.append((ids[inv], ts, val, obj))

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def merge(self, other: SeriesBatch) -> None:
        self.extend(other.labels, *other.columns())
        for reason, n in other.skipped.items():
            self.skip(reason, n)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(sid int64, ts int64, val float64, obj object | None)``, one entry per sample;
        ``obj[i]`` is the native histogram of sample ``i`` (None for a float sample)."""
        if self._pend:
            sid, ts, values = zip(*self._pend, strict=True)
            val, obj = split_values(values)
            self._parts.append((np.array(sid, np.int64), np.array(ts, np.int64), val, obj))
            self._pend = []
        if len(self._parts) != 1:
            parts = self._parts
            if not parts:
                return _EMPTY_I, _EMPTY_I, _EMPTY_F, None
            obj = None
            if any(p[3] is not None for p in parts):
                obj = np.concatenate([object_column(p[3], len(p[0])) for p in parts])
            self._parts = [
                (
                    np.concatenate([p[0] for p in parts]).astype(np.int64, copy=False),
                    np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False),
                    np.concatenate([p[2] for p in parts]).astype(np.float64, copy=False),
                    obj,
                )
            ]
        return self._parts[0]

    def take(self, idx: np.ndarray) -> SeriesBatch:
        """A batch of the samples at ``idx`` (indexes or a mask), with only their series."""
        sid, ts, val, obj = self.columns()
        out = SeriesBatch()
        out.extend(self.labels, sid[idx], ts[idx], val[idx], None if obj is None else obj[idx])
        return out

    @property
    def series(self) -> dict[Labels, list[tuple[int, float | bytes]]]:
        """``{labels: [(timestamp_ms, value), ...]}`` in sample order (built on each call:
        for tests and small batches, not for the hot path)."""
        sid, ts, val, obj = self.columns()
        out: dict[Labels, list[tuple[int, float | bytes]]] = {}
        for s, t, v in zip(sid.tolist(), ts.tolist(), joined_values(val, obj), strict=True):
            out.setdefault(self.labels[s], []).append((t, v))
        return out

    @property
    def num_samples(self) -> int:
        return len(self._pend) + sum(len(p[0]) for p in self._parts)

    def __len__(self) -> int:
        return len(self.labels)


def object_column(obj: np.ndarray | None, n: int) -> np.ndarray:
    """``obj``, or ``n`` Nones when there is no object column."""
    return np.full(n, None, object) if obj is None else obj


def split_values(values: Sequence[float | bytes]) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample values as the float column and, when some are native histograms (``bytes``),
    the object column holding them (None elsewhere; NaN in the float column there)."""
    is_obj = [isinstance(v, bytes) for v in values]
    if not any(is_obj):
        return np.array(values, np.float64), None
    obj = np.empty(len(values), object)
    obj[:] = [v if o else None for v, o in zip(values, is_obj, strict=True)]
    val = [np.nan if o else v for v, o in zip(values, is_obj, strict=True)]
    return np.array(val, np.float64), obj


def joined_values(val: np.ndarray, obj: np.ndarray | None) -> list[float | bytes]:
    """The inverse of :func:`split_values`: one Python value per sample."""
    if obj is None:
        return val.tolist()
    return [v if o is None else o for v, o in zip(val.tolist(), obj.tolist(), strict=True)]


def last_of_ties(sid: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For samples sorted by (series, timestamp): a mask of the last sample of each run with
    the same series and timestamp (the one read last wins; Prometheus refuses a request with
    the same timestamp twice)."""
    last = np.ones(len(sid), bool)
    last[:-1] = (sid[1:] != sid[:-1]) | (ts[1:] != ts[:-1])
    return last
