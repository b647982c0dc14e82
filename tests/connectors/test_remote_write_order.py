"""The remote-write reorder buffer (``connectors.remote_write_order.SeriesOrder``): what it
releases to the sink, what it counts, and what survives a restart through its snapshot."""

from __future__ import annotations

import pickle
import time
import uuid

from prometheus_client import REGISTRY

from connectors.prom_translate import SeriesBatch
from connectors.remote_write import RemoteWriteConfig
from connectors.remote_write_order import SeriesOrder, shard_series


def _dropped(component: str, reason: str, unit: str = "samples") -> float:
    labels = {"component": component, "unit": unit, "reason": reason}
    return REGISTRY.get_sample_value("otelwax_dropped_total", labels) or 0.0


def _labels(name: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"__name__": name, "job": "j", **extra}.items()))


def _batch(*samples: tuple[tuple, int, float | bytes]) -> SeriesBatch:
    b = SeriesBatch()
    for labels, ts, v in samples:
        b.add(labels, ts, v)
    return b


def _order(component: str, **order: float) -> SeriesOrder:
    cfg = RemoteWriteConfig(url="http://127.0.0.1:9/api/v1/write", order={"shards": 1, **order})
    return SeriesOrder(cfg, component)


def _released(items: list[SeriesBatch]) -> dict:
    out = SeriesBatch()
    for it in items:
        out.merge(it)
    return out.series


def test_samples_are_released_sorted_once_and_older_ones_dropped_counted() -> None:
    comp = f"rwo_{uuid.uuid4().hex[:6]}"
    a, b = _labels("a"), _labels("b", k="1")
    order = _order(comp, delay_s=0)
    # Out of order within a series, one timestamp twice (the last read wins), a native
    # histogram sample (bytes) beside floats.
    items, _ = order.on_batch([_batch((a, 30, 3.0), (a, 10, 1.0), (b, 5, b"h1"), (a, 30, 4.0))])
    assert _released(items) == {a: [(10, 1.0), (30, 4.0)], b: [(5, b"h1")]}
    assert _dropped(comp, "duplicate_timestamp") == 1
    # Older than (or equal to) what was released: dropped before holding, counted.
    items, _ = order.on_batch([_batch((a, 20, 2.0), (a, 30, 9.0), (a, 40, 5.0), (b, 6, 1.5))])
    assert _released(items) == {a: [(40, 5.0)], b: [(6, 1.5)]}
    assert _dropped(comp, "out_of_order") == 1
    assert _dropped(comp, "duplicate_timestamp") == 2


def test_held_samples_wait_for_the_delay_and_a_full_buffer_releases_the_oldest_series() -> None:
    comp = f"rwo_{uuid.uuid4().hex[:6]}"
    a, b, c = _labels("a"), _labels("b"), _labels("c")
    order = _order(comp, delay_s=60, max_samples=4)
    items, _ = order.on_batch([_batch((a, 2, 1.0), (a, 1, 1.0))])
    assert items == [] and order.n_held == 2
    items, _ = order.on_batch([_batch((b, 1, 1.0), (b, 2, 1.0), (c, 1, 1.0))])
    assert _released(items) == {a: [(1, 1.0), (2, 1.0)]}  # held longest, released first
    items, done = order.on_eof()
    assert _released(items) == {b: [(1, 1.0), (2, 1.0)], c: [(1, 1.0)]}
    assert not done  # the last-sent timestamps are still kept


def test_snapshot_restores_held_samples_and_last_sent_timestamps() -> None:
    comp = f"rwo_{uuid.uuid4().hex[:6]}"
    a, b = _labels("a"), _labels("b")
    first = _order(comp, delay_s=60)
    first.on_batch([_batch((a, 10, 1.0))])
    first.on_eof()  # a released up to 10
    first.on_batch([_batch((a, 20, 2.0), (b, 7, b"h"))])
    cfg = RemoteWriteConfig(url="http://127.0.0.1:9/api/v1/write", order={"shards": 1})
    again = SeriesOrder(cfg, comp, first.snapshot())
    items, _ = again.on_batch([_batch((a, 10, 1.0), (a, 15, 1.5))])  # a replay, and a new one
    assert items == []
    assert _dropped(comp, "duplicate_timestamp") == 1  # the replayed 10
    assert _released(again.on_eof()[0]) == {a: [(15, 1.5), (20, 2.0)], b: [(7, b"h")]}


def test_a_snapshot_written_before_the_columnar_samples_still_restores() -> None:
    """The snapshot of the previous releases (a pickled pair of dicts keyed by label tuples:
    held samples with their arrival time, and [last sent timestamp | None, last seen]) is read
    on upgrade: its held samples are released and its last-sent timestamps still drop older
    replays."""
    comp = f"rwo_{uuid.uuid4().hex[:6]}"
    a, b, c = _labels("a"), _labels("b"), _labels("c")
    now = time.time()
    held = {
        a: [(now - 5, [(30, 3.0), (20, 2.0)]), (now - 1, [(25, 2.5)])],
        b: [(now - 3, [(1, b"h")])],
    }
    entries = {a: [10, now - 1], b: [None, now - 3], c: [50, now - 2]}
    old = pickle.dumps((held, entries), pickle.HIGHEST_PROTOCOL)
    cfg = RemoteWriteConfig(
        url="http://127.0.0.1:9/api/v1/write", order={"shards": 1, "delay_s": 60}
    )
    order = SeriesOrder(cfg, comp, old)
    assert order.n_held == 4
    items, _ = order.on_batch([_batch((a, 5, 0.5), (c, 40, 4.0), (c, 60, 6.0))])
    assert _dropped(comp, "out_of_order") == 2  # a@5 < 10, c@40 < 50
    assert _released(items) == {}
    got = _released(order.on_eof()[0])
    assert got == {a: [(20, 2.0), (25, 2.5), (30, 3.0)], b: [(1, b"h")], c: [(60, 6.0)]}


def test_series_idle_past_their_ttl_are_forgotten_and_counted() -> None:
    comp = f"rwo_{uuid.uuid4().hex[:6]}"
    a, b = _labels("a"), _labels("b")
    order = _order(comp, delay_s=0, series_ttl_s=0.2)
    order.on_batch([_batch((a, 10, 1.0), (b, 10, 1.0))])
    time.sleep(0.3)
    order.on_batch([_batch((b, 11, 1.0))])
    assert _dropped(comp, "expired", unit="series") == 1
    # a forgotten series starts over: an older sample is no longer refused
    items, _ = order.on_batch([_batch((a, 5, 0.5), (b, 12, 1.0))])
    assert _released(items) == {a: [(5, 0.5)], b: [(12, 1.0)]}


def test_shards_split_by_series_and_keep_every_sample() -> None:
    series = [_labels("m", i=str(i)) for i in range(50)]
    batch = _batch(*((s, t, float(t)) for s in series for t in (2, 1)))
    batch.skip("delta_temporality", 3)
    parts = shard_series(batch, 4)
    assert 1 < len(parts) <= 4
    seen = {}
    for shard, part in parts:
        for labels, samples in part.series.items():
            assert labels not in seen
            seen[labels] = (shard, samples)
    assert {k: v[1] for k, v in seen.items()} == batch.series
    assert [p.skipped for _, p in parts if p.skipped] == [{"delta_temporality": 3}]
    again = dict((lab, sh) for sh, p in shard_series(batch, 4) for lab in p.series)
    assert again == {k: v[0] for k, v in seen.items()}  # stable
