"""``python -m otelwax.kafka_admin wait|create-topics``: used by scripts/kafka.sh."""

from __future__ import annotations

import argparse
import sys

from connectors.kafka import DEFAULT_BOOTSTRAP, DEFAULT_TOPICS, create_topics, wait_ready


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="otelwax.kafka_admin")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait", help="wait until the broker answers")
    w.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    w.add_argument("--timeout", type=float, default=60)
    c = sub.add_parser("create-topics", help="create the otlp_* topics if missing")
    c.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    c.add_argument("--partitions", type=int, default=4)
    c.add_argument("topics", nargs="*", default=list(DEFAULT_TOPICS))
    a = p.parse_args(argv)
    try:
        if a.cmd == "wait":
            wait_ready(a.bootstrap, a.timeout)
        else:
            made = create_topics(a.bootstrap, a.topics, a.partitions)
            print(f"kafka: topics created: {', '.join(made) or 'none (all exist)'}")
    except Exception as exc:
        print(f"kafka_admin {a.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
