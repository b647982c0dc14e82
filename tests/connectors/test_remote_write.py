"""Remote-write sink against a real Prometheus (Debian package, remote-write receiver on)."""

from __future__ import annotations

import threading
import time

import cramjam
import requests
from prometheus_client import REGISTRY

from connectors.prom_translate import SeriesBatch
from connectors.remote_write import (
    HEADERS,
    RemoteWriteClient,
    RemoteWriteConfig,
    RetryConfig,
    encode_labels,
    encode_write_request,
)
from tests.promfixtures import (  # noqa: F401
    own_prometheus_fixture,
    prom_values,
    prometheus_url_fixture,
    unique_job,
    wait_for,
)


def _counter(name: str, component: str, **labels: str) -> float:
    v = REGISTRY.get_sample_value(
        f"otelwax_{name}_total", {"component": component, "unit": "samples", **labels}
    )
    return v or 0.0


def _labels(name: str, job: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"__name__": name, "job": job, **extra}.items()))


def test_samples_arrive_sorted_and_batched(prometheus_url: str) -> None:
    job = unique_job("rw")
    comp = unique_job("rwc")
    now = int(time.time() * 1000)
    sb = SeriesBatch()
    # 3 series x 10 samples each, given out of order: the sink sorts within a series.
    for s in range(3):
        for i in reversed(range(10)):
            sb.add(_labels("rw_test_value", job, s=str(s)), now - 1000 * i, float(s * 100 + i))
    client = RemoteWriteClient(
        RemoteWriteConfig(url=f"{prometheus_url}/api/v1/write", max_samples_per_request=7),
        component=comp,
    )
    assert client.send(sb) == 30
    assert client.requests_sent == 5  # 30 samples / 7 per request
    res = wait_for(prometheus_url, f'count_over_time(rw_test_value{{job="{job}"}}[1m])', 3)
    assert sorted(float(r["value"][1]) for r in res) == [10.0, 10.0, 10.0]
    latest = prom_values(prometheus_url, f'rw_test_value{{job="{job}"}}')
    assert sorted(latest.values()) == [0.0, 100.0, 200.0]  # i == 0 is the newest sample
    assert _counter("sent", comp) == 30


def test_wire_format_headers(prometheus_url: str) -> None:
    """A hand-made request with the spec headers is accepted; without snappy it is not."""
    job = unique_job("rwh")

    now = int(time.time() * 1000)
    body = encode_write_request([(encode_labels(_labels("rw_hdr", job)), [(now, 42.0)])])
    url = f"{prometheus_url}/api/v1/write"
    ok = requests.post(url, data=bytes(cramjam.snappy.compress_raw(body)), headers=HEADERS)
    assert ok.status_code == 204
    bad = requests.post(url, data=body, headers=HEADERS)
    assert bad.status_code == 400
    assert prom_values(prometheus_url, f'rw_hdr{{job="{job}"}}') == {
        (("__name__", "rw_hdr"), ("job", job)): 42.0
    }


def test_400_is_not_retried_and_good_series_still_land(prometheus_url: str) -> None:
    job = unique_job("rw400")
    comp = unique_job("rwc")
    now = int(time.time() * 1000)
    cfg = RemoteWriteConfig(url=f"{prometheus_url}/api/v1/write", drop_out_of_order=False)
    client = RemoteWriteClient(cfg, component=comp)
    first = SeriesBatch()
    first.add(_labels("rw_ooo", job), now, 1.0)
    assert client.send(first) == 1
    # An older sample for the same series is out of order: Prometheus answers 400.
    second = SeriesBatch()
    second.add(_labels("rw_ooo", job), now - 60_000, 2.0)
    second.add(_labels("rw_ok", job), now, 3.0)
    before = client.requests_sent
    t0 = time.monotonic()
    assert client.send(second) == 1  # the good series lands after bisection
    assert time.monotonic() - t0 < 5
    assert client.requests_sent - before == 3  # one rejected, then one per half; no retries
    assert _counter("dropped", comp, reason="http_400") == 1
    assert prom_values(prometheus_url, f'rw_ok{{job="{job}"}}')
    assert list(prom_values(prometheus_url, f'rw_ooo{{job="{job}"}}').values()) == [1.0]


def test_replayed_older_samples_do_not_block_newer_ones(prometheus_url: str) -> None:
    """A crash replay re-sends samples Prometheus has: only those are rejected, not the new."""
    job = unique_job("rwreplay")
    comp = unique_job("rwc")
    now = int(time.time() * 1000)
    cfg = RemoteWriteConfig(url=f"{prometheus_url}/api/v1/write", drop_out_of_order=False)
    client = RemoteWriteClient(cfg, component=comp)
    first = SeriesBatch()
    for i in range(3):
        first.add(_labels("rw_replay", job), now - 30_000 + i * 1000, float(i))
    assert client.send(first) == 3
    replay = SeriesBatch()
    for i in range(3):  # already stored: rejected (except the newest, an exact duplicate)
        replay.add(_labels("rw_replay", job), now - 30_000 + i * 1000, float(i))
    replay.add(_labels("rw_replay", job), now, 7.0)  # new
    assert client.send(replay) >= 1
    assert list(prom_values(prometheus_url, f'rw_replay{{job="{job}"}}').values()) == [7.0]
    res = prom_values(prometheus_url, f'count_over_time(rw_replay{{job="{job}"}}[5m])')
    assert list(res.values()) == [4.0]


def test_a_replay_rejected_series_by_series_logs_one_line(prometheus_url: str, caplog) -> None:
    """After a crash the flow re-sends what Prometheus already holds: every series of the
    request is rejected and bisected down to one sample. The operator gets one INFO and one
    WARNING line with the totals, not a line per rejected sample (160 lines per restart in the
    soak before)."""
    import logging

    job = unique_job("rwquiet")
    comp = unique_job("rwc")
    now = int(time.time() * 1000)
    cfg = RemoteWriteConfig(url=f"{prometheus_url}/api/v1/write", drop_out_of_order=False)
    client = RemoteWriteClient(cfg, component=comp)
    sent, replay = SeriesBatch(), SeriesBatch()
    for s in range(20):
        sent.add(_labels("rw_quiet", job, s=str(s)), now, 1.0)
        replay.add(_labels("rw_quiet", job, s=str(s)), now - 10_000, 1.0)  # older: rejected
    replay.add(_labels("rw_quiet_new", job), now, 5.0)
    assert client.send(sent) == 20
    with caplog.at_level(logging.INFO, logger="connectors.remote_write"):
        assert client.send(replay) == 1
    lines = [(r.levelname, r.getMessage()) for r in caplog.records
             if r.name == "connectors.remote_write"]
    assert [lv for lv, _ in lines] == ["INFO", "WARNING"], lines
    assert "dropped 20 samples" in lines[1][1] and "out of order" in lines[1][1], lines
    assert _counter("dropped", comp, reason="http_400") == 20
    assert prom_values(prometheus_url, f'rw_quiet_new{{job="{job}"}}')


def test_out_of_order_samples_are_dropped_before_sending(prometheus_url: str) -> None:
    job = unique_job("rwo")
    comp = unique_job("rwc")
    now = int(time.time() * 1000)
    client = RemoteWriteClient(
        RemoteWriteConfig(url=f"{prometheus_url}/api/v1/write"), component=comp
    )
    a = SeriesBatch()
    a.add(_labels("rw_guard", job), now, 1.0)
    client.send(a)
    b = SeriesBatch()
    b.add(_labels("rw_guard", job), now - 5000, 9.0)
    b.add(_labels("rw_guard", job), now + 1000, 2.0)
    assert client.send(b) == 1
    assert _counter("dropped", comp, reason="out_of_order") == 1
    assert _counter("dropped", comp, reason="http_400") == 0


def test_prometheus_down_then_up_samples_are_retried_and_arrive(own_prometheus) -> None:
    job = unique_job("rwdown")
    comp = unique_job("rwc")
    own_prometheus.stop()
    cfg = RemoteWriteConfig(
        url=own_prometheus.write_url,
        retry=RetryConfig(initial_backoff_s=0.2, max_backoff_s=1.0, max_elapsed_s=60),
    )
    client = RemoteWriteClient(cfg, component=comp)
    now = int(time.time() * 1000)
    sb = SeriesBatch()
    for i in range(5):
        sb.add(_labels("rw_down", job, i=str(i)), now, float(i))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(client.send(sb)))
    t.start()
    time.sleep(3)
    assert t.is_alive()  # still retrying
    own_prometheus.start()
    t.join(60)
    assert result == [5]
    assert client.requests_sent >= 1
    res = wait_for(own_prometheus.url, f'rw_down{{job="{job}"}}', 5)
    assert len(res) == 5
    assert _counter("sent", comp) == 5


def test_gives_up_after_max_elapsed(own_prometheus) -> None:
    comp = unique_job("rwc")
    own_prometheus.stop()
    cfg = RemoteWriteConfig(
        url=own_prometheus.write_url,
        retry=RetryConfig(initial_backoff_s=0.1, max_backoff_s=0.2, max_elapsed_s=1.0),
    )
    sb = SeriesBatch()
    sb.add(_labels("rw_gone", "x"), int(time.time() * 1000), 1.0)
    t0 = time.monotonic()
    assert RemoteWriteClient(cfg, component=comp).send(sb) == 0
    assert time.monotonic() - t0 < 5
    assert _counter("dropped", comp, reason="retries_exhausted") == 1


def test_vectorized_encoding_equals_field_by_field() -> None:
    import random

    from connectors.remote_write import encode_samples
    from otelwax.protowire import length_delimited

    rng = random.Random(7)
    now = int(time.time() * 1000)
    series = [
        (
            encode_labels(_labels(f"m{i}", "j", k=str(i))),
            [(now + j * 1000 + rng.randint(0, 999), rng.uniform(-1e9, 1e9)) for j in range(4)],
        )
        for i in range(100)
    ]
    plain = b"".join(length_delimited(b"\x0a", lab + encode_samples(s)) for lab, s in series)
    assert encode_write_request(series) == plain
    old = [(lab, [(5, 1.0)] * 70) for lab, _ in series[:1]]  # tiny timestamps: generic path
    assert encode_write_request(old) == b"".join(
        length_delimited(b"\x0a", lab + encode_samples(s)) for lab, s in old
    )


def test_last_sent_timestamps_are_forgotten_after_their_ttl(own_prometheus) -> None:
    """The per-series memory of what was sent does not only grow: an idle series is forgotten
    (counted), so an older sample for it is sent again (and Prometheus is the judge)."""
    from connectors.remote_write import OrderConfig

    job = unique_job("rwttl")
    comp = unique_job("rwc")
    cfg = RemoteWriteConfig(url=own_prometheus.write_url, order=OrderConfig(series_ttl_s=0.3))
    client = RemoteWriteClient(cfg, component=comp)
    now = int(time.time() * 1000)
    for ts in (now, now - 5000):  # the older one is refused while the series is remembered
        sb = SeriesBatch()
        sb.add(_labels("rw_ttl", job), ts, 1.0)
        client.send(sb)
    assert _counter("dropped", comp, reason="out_of_order") == 1
    time.sleep(0.5)
    other = SeriesBatch()
    other.add(_labels("rw_ttl_other", job), now, 1.0)
    client.send(other)  # sweeps: rw_ttl has been idle for longer than the TTL
    v = REGISTRY.get_sample_value(
        "otelwax_dropped_total", {"component": comp, "unit": "series", "reason": "expired"}
    )
    assert v == 1
    late = SeriesBatch()
    late.add(_labels("rw_ttl", job), now - 4000, 2.0)
    assert client.send(late) == 0
    assert _counter("dropped", comp, reason="out_of_order") == 1  # not dropped here again
    assert _counter("dropped", comp, reason="http_400") == 1  # sent, and Prometheus refused it


def test_remote_write_is_off_unless_configured_and_names_its_target(caplog) -> None:
    """No default URL (it used to point at the test Prometheus), and every retry line names
    the receiver so an operator knows what is down."""
    import logging

    import pytest
    from pydantic import ValidationError

    from flows.metrics import MetricsFlowSettings
    from flows.spanmetrics import SpanMetricsFlowSettings, build_from_settings
    from tests.conftest import free_port

    with pytest.raises(ValidationError, match="url"):
        RemoteWriteConfig()
    assert MetricsFlowSettings().remote_write is None
    with pytest.raises(ValueError, match="nothing to write to"):
        build_from_settings(SpanMetricsFlowSettings())

    url = f"http://127.0.0.1:{free_port()}/api/v1/write"  # nothing listens there
    retry = RetryConfig(initial_backoff_s=0.05, max_backoff_s=0.1, max_elapsed_s=0.5)
    client = RemoteWriteClient(RemoteWriteConfig(url=url, retry=retry), unique_job("rwoff"))
    sb = SeriesBatch()
    sb.add(_labels("rw_off", "j"), int(time.time() * 1000), 1.0)
    with caplog.at_level(logging.WARNING, logger="connectors.remote_write"):
        assert client.send(sb) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "connectors.remote_write"]
    assert len(lines) >= 2 and all(url in line for line in lines), lines
