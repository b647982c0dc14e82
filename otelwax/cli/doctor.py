"""``otelwax doctor [-c FILE]``: can every service the config names be reached, and is it ready?

Checks, each printed as ``ok: ...`` or ``problem: ... (fix: ...)``, exit 1 if any problem:

- Kafka: every bootstrap address the shim and the flows use answers; the topics they read and
  write (the shim's three, each flow's source, the dead-letter topic) exist;
- ClickHouse: each flow's store (as ``otelwax clickhouse check``: tables, columns, dedup
  window; an embedded folder a running flow holds is reported as such);
- Prometheus remote-write and Jaeger, where a flow sends to them: the address answers.

Bounded: every look-up has a timeout of a few seconds.
"""

from __future__ import annotations

import argparse
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from otelwax.configfile import SIGNALS

ENV_VARS = {"OTELWAX_CLICKHOUSE_PASSWORD": "server password (default of clickhouse.password)"}
TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="deployment YAML (default: $OTELWAX_CONFIG)")


def _topics(cfg: Any) -> dict[str, set[str]]:
    """Bootstrap address → topics the shim and the flows use there."""
    out: dict[str, set[str]] = {}
    t = cfg.ingest.topics
    out.setdefault(cfg.ingest.kafka.bootstrap_servers, set()).update((t.traces, t.metrics, t.logs))
    for name in SIGNALS:
        s = cfg.flow_settings(name)
        topics = out.setdefault(s.kafka.bootstrap_servers, set())
        source = getattr(s, "source", None)
        topics.add(getattr(source, "topic", None) or s.topic)
        dlq = getattr(s, "dead_letters", None)
        if dlq is not None and dlq.enabled:
            topics.add(dlq.topic)
    return out


def check_kafka(bootstrap: str, topics: set[str]) -> tuple[list[str], list[str]]:
    """(ok lines, problems) for one bootstrap address."""
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(
            timeout=TIMEOUT_S
        )
    except Exception as exc:
        why = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc
        return [], [
            f"kafka {bootstrap}: no answer in {TIMEOUT_S:g} s ({why}) (fix: start it, or set "
            "kafka.bootstrap_servers / $OTELWAX_KAFKA_BOOTSTRAP)"
        ]
    missing = sorted(t for t in topics if t not in md.topics)
    ok = [f"kafka {bootstrap}: {len(md.brokers)} broker(s); {len(topics) - len(missing)} "
          f"of {len(topics)} topics present"]  # fmt: skip
    problems = [
        f"kafka {bootstrap}: topic {t!r} does not exist (fix: otelwax kafka create-topics "
        f"--bootstrap {bootstrap} {t})"
        for t in missing
    ]
    return ok, problems


def check_http(what: str, url: str) -> str | None:
    """None when ``url``'s server answers HTTP at all (any status), else the problem."""
    parts = urllib.parse.urlsplit(url)
    probe = f"{parts.scheme}://{parts.netloc}/"
    try:
        urllib.request.urlopen(probe, timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except OSError as exc:
        return f"{what} {url}: no answer ({exc}) (fix: start it, or correct the url)"
    return None


def check_tcp(what: str, endpoint: str) -> str | None:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), TIMEOUT_S):
            return None
    except (OSError, ValueError) as exc:
        return f"{what} {endpoint}: no answer ({exc}) (fix: start it, or correct the endpoint)"


def run(args: argparse.Namespace) -> int:
    from otelwax.cli.clickhouse import _check, flow_stores
    from otelwax.cli.config import load_config

    cfg = load_config(args.config)
    oks: list[str] = []
    problems: list[str] = []
    for bootstrap, topics in sorted(_topics(cfg).items()):
        ok, bad = check_kafka(bootstrap, topics)
        oks += ok
        problems += bad
    seen: set[str] = set()
    for flow, ch in flow_stores(argparse.Namespace(config=args.config, flow=None, **_NO_OVERRIDES)):
        try:
            problems += _check(flow, ch, args.config, explicit=False)
        except Exception as exc:  # e.g. the folder a running flow holds, a server down
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            problems.append(f"clickhouse ({flow}): {first}")
    for name in SIGNALS:
        s = cfg.flow_settings(name)
        rw = getattr(s, "remote_write", None)
        if rw is not None and rw.url not in seen:
            seen.add(rw.url)
            bad = check_http("remote-write", rw.url)
            problems += [bad] if bad else []
            oks += [] if bad else [f"remote-write {rw.url}: answers"]
        jaeger = getattr(s, "jaeger", None)
        if jaeger is not None and jaeger.enabled and jaeger.endpoint not in seen:
            seen.add(jaeger.endpoint)
            bad = check_tcp("jaeger", jaeger.endpoint)
            problems += [bad] if bad else []
            oks += [] if bad else [f"jaeger {jaeger.endpoint}: answers"]
    for line in oks:
        print(f"ok: {line}")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


_NO_OVERRIDES = {"variant": None, "ttl_days": None, "dry_run": False, "apply": False}
