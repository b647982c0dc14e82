"""``otelwax kafka create-topics|wait``: create the topics otelwax uses, or wait for a broker.

    otelwax kafka create-topics -c otelwax.yaml --partitions 12   # the config's topics
    otelwax kafka create-topics --bootstrap kafka:9092 otlp_spans  # named topics
    otelwax kafka wait --bootstrap kafka:9092 --timeout 60

Without topic names, ``create-topics`` creates the shim's three topics and the dead-letter
topic of the config (``ingest.topics``, ``flows.traces.dead_letters.topic``), or the defaults
(``otlp_spans``, ``otlp_metrics``, ``otlp_logs``, ``otlp_dlq``). Existing topics are left as
they are. Partitions are the unit of parallelism: give at least as many as flow workers.
Also ``python -m otelwax.cli.kafka ...`` (the Kubernetes init job and scripts/kafka.sh).
"""

from __future__ import annotations

import argparse
import sys

from connectors.kafka import DEFAULT_TOPICS, create_topics, wait_ready

ENV_VARS = {"OTELWAX_KAFKA_BOOTSTRAP": "bootstrap servers when neither --bootstrap nor -c is given"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="cmd", required=True, metavar="ACTION")
    w = sub.add_parser("wait", help="wait until the broker answers")
    c = sub.add_parser("create-topics", help="create the topics that do not exist yet")
    for q in (w, c):
        q.add_argument("-c", "--config", help="deployment YAML: its kafka section and topics")
        q.add_argument("--bootstrap", help="bootstrap servers (beats the config)")
    w.add_argument("--timeout", type=float, default=60, help="seconds (default 60)")
    c.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    c.add_argument("topics", nargs="*", help="topic names (default: the config's, see above)")


def _from_config(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Bootstrap servers and topics of ``args`` (flags, else the config, else defaults)."""
    import os

    topics = list(getattr(args, "topics", None) or [])
    bootstrap = args.bootstrap
    if args.config:
        from otelwax.cli.config import load_config

        cfg = load_config(args.config)
        bootstrap = bootstrap or cfg.ingest.kafka.bootstrap_servers
        if not topics:
            t = cfg.ingest.topics
            topics = [t.traces, t.metrics, t.logs, cfg.flow_settings("traces").dead_letters.topic]
    bootstrap = bootstrap or os.environ.get("OTELWAX_KAFKA_BOOTSTRAP") or "127.0.0.1:9092"
    return bootstrap, topics or list(DEFAULT_TOPICS)


def run(args: argparse.Namespace) -> int:
    bootstrap, topics = _from_config(args)
    try:
        if args.cmd == "wait":
            wait_ready(bootstrap, args.timeout)
            print(f"kafka: {bootstrap} answers")
        else:
            made = create_topics(bootstrap, topics, args.partitions)
            print(f"kafka: topics created: {', '.join(made) or 'none (all exist)'}")
    except Exception as exc:
        print(f"kafka {args.cmd}: {bootstrap}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otelwax.cli.kafka")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
