"""Helpers for ``make run`` (scripts/run.sh): readiness, progress, drain and the summary."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

# What the shim accepted per signal (metric unit) and which flow port stores it.
SIGNALS = (("traces", "spans"), ("metrics", "datapoints"), ("logs", "logs"))


def scrape(port: int) -> dict[tuple[str, str], float]:
    """``otelwax_sent_total`` by (component, unit) from a /metrics endpoint ({} if down)."""
    out: dict[tuple[str, str], float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if not line.startswith("otelwax_sent_total{"):
            continue
        labels, value = line[len("otelwax_sent_total{") :].rsplit("} ", 1)
        kv = dict(p.split("=", 1) for p in labels.split(",") if "=" in p)
        key = (kv.get("component", "").strip('"'), kv.get("unit", "").strip('"'))
        out[key] = out.get(key, 0.0) + float(value)
    return out


def counts(shim: int, flows: list[int]) -> list[tuple[str, int, int]]:
    """(signal, accepted by the shim, stored by its flow) for each signal."""
    s = scrape(shim)
    rows = []
    for (name, unit), port in zip(SIGNALS, flows, strict=True):
        accepted = int(s.get((f"ingest_{name}", unit), 0))
        stored = int(sum(v for (c, _), v in scrape(port).items() if c.startswith("clickhouse")))
        rows.append((name, accepted, stored))
    return rows


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer within {timeout:.0f}s")


def progress(shim: int, flows: list[int]) -> None:
    while True:
        time.sleep(2)
        line = "  ".join(f"{n}: {a:,} accepted / {s:,} stored" for n, a, s in counts(shim, flows))
        print(f"    {line}", flush=True)


def drain(shim: int, flows: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = counts(shim, flows)
        if all(s >= a for _, a, s in rows):
            print(
                "    all accepted telemetry is stored: "
                + ", ".join(f"{a:,} {n}" for n, a, _ in rows)
            )
            return
        time.sleep(1)
    print(
        "    timed out waiting; stored so far: " + ", ".join(f"{n} {s:,}/{a:,}" for n, a, s in rows)
    )


def summary(run: Path) -> None:
    from connectors.clickhouse import ClickHouseConfig, open_client

    def query(path: Path, sql: str) -> list[tuple]:
        if not path.exists():
            return []
        client = open_client(ClickHouseConfig(mode="embedded", path=str(path)))
        try:
            return client.execute(sql)
        finally:
            client.close()

    print("\n\033[1mWhat landed in ClickHouse (embedded chdb)\033[0m")
    t = run / "chdb-traces"
    spans = query(
        t, "SELECT count(), uniqExact(TraceId), uniqExact(ServiceName) FROM otel.otel_traces"
    )
    if spans:
        n, traces, services = spans[0]
        print(f"  otel.otel_traces   {n:>9,} spans in {traces:,} traces from {services} services")
        top = query(
            t,
            "SELECT ServiceName, count() AS spans, "
            "round(quantile(0.99)(Duration) / 1e6, 2) AS p99_ms, "
            "round(countIf(StatusCode = 'STATUS_CODE_ERROR') / count() * 100, 1) AS err_pct "
            "FROM otel.otel_traces GROUP BY ServiceName ORDER BY p99_ms DESC LIMIT 5",
        )
        print("\n  top services by p99 duration")
        print(f"    {'service':<14}{'spans':>9}{'p99 ms':>10}{'errors %':>10}")
        for svc, cnt, p99, err in top:
            print(f"    {svc:<14}{cnt:>9,}{p99:>10}{err:>10}")
    m = run / "chdb-metrics"
    for table in ("sum", "gauge", "histogram", "exponential_histogram", "summary"):
        rows = query(m, f"SELECT count() FROM otel.otel_metrics_{table}")  # fixed table names
        if rows and rows[0][0]:
            print(f"  otel.otel_metrics_{table:<22}{rows[0][0]:>9,} data points")
    logs = query(
        run / "chdb-logs",
        "SELECT SeverityText, count() FROM otel.otel_logs GROUP BY SeverityText ORDER BY 2 DESC",
    )
    for sev, cnt in logs:
        print(f"  otel.otel_logs     {cnt:>9,} logs with severity {sev or '(none)'}")
    print(
        f"""
Where to look next
  data folders      {run}/chdb-*  (embedded ClickHouse; query them with chdb or clickhouse-local)
  logs              {run}/*.log
  config used       {run}/otelwax.yaml  (otelwax validate FILE explains every key)
  production setup  docker/compose.yaml, docker/k8s/, README.md"""
    )


def main(argv: list[str]) -> None:
    cmd, *rest = argv
    if cmd == "wait-http":
        wait_http(rest[0], float(rest[1]))
    elif cmd == "progress":
        progress(int(rest[0]), [int(p) for p in rest[1:4]])
    elif cmd == "drain":
        drain(int(rest[0]), [int(p) for p in rest[1:4]], float(rest[4]))
    elif cmd == "summary":
        summary(Path(rest[0]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
