#!/usr/bin/env bash
# make bench: build what the benchmarks need (telemetrygen, the OpenTelemetry Collector with the
# builder), make sure Kafka runs, then run every bench/ script with short default sizes, each
# with its output in bench/results/<name>.out and its JSON in bench/results/<name>.json, and
# print one combined table (also bench/results/summary.json and summary.txt).
#
#   scripts/bench.sh                 # everything (~10-15 min on 2 cores)
#   BENCH_ONLY="side_by_side query" scripts/bench.sh
#
# Kafka: $OTELWAX_TEST_KAFKA if a broker answers there (left running), else a bench broker on
# $OTELWAX_BENCH_KAFKA_PORT (19292) with data in .data/kafka-bench, stopped at the end.
# A failing benchmark is reported in the table and does not stop the others; the exit code is
# non-zero if any failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
RES="$ROOT/bench/results"
mkdir -p "$RES"

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

# --- build steps (before anything is timed) ---------------------------------------------------
echo "bench: building telemetrygen and the Collector (cached after the first time)"
scripts/go-tools.sh telemetrygen || exit 1
scripts/collector.sh || exit 1

# --- Kafka ----------------------------------------------------------------------------------
OWN_KAFKA=0
if [ -n "${OTELWAX_TEST_KAFKA:-}" ] && port_open "$OTELWAX_TEST_KAFKA"; then
  echo "bench: using the Kafka broker at $OTELWAX_TEST_KAFKA"
else
  export KAFKA_PORT=${OTELWAX_BENCH_KAFKA_PORT:-19292}
  export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
  export KAFKA_DATA="$ROOT/.data/kafka-bench"
  export OTELWAX_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
  scripts/kafka.sh fetch || exit 1
  scripts/kafka.sh start || exit 1
  OWN_KAFKA=1
fi
# clickhouse-benchmark (the query bench's native-client rows) is in Debian's clickhouse-tools.
command -v clickhouse-benchmark >/dev/null 2>&1 ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clickhouse-tools \
    >/dev/null 2>&1 || echo "bench: clickhouse-tools not installed; query bench skips clickhouse-benchmark"
# Prometheus (remote-write target of bench/metrics_bench.py) and the ClickHouse server
# (clickhouse_bench, traces_flow_bench start it themselves): stopped at the end only if this
# script found them not running.
OWN_PROM=0; OWN_CH=0
if ! port_open 127.0.0.1:19090; then
  if scripts/services/prometheus.sh start >/dev/null; then OWN_PROM=1; fi
fi
port_open 127.0.0.1:19000 || OWN_CH=1
# BENCH_KEEP_SERVICES=1 leaves Prometheus/ClickHouse running (machines shared with others).
[ "${BENCH_KEEP_SERVICES:-0}" = 1 ] && { OWN_PROM=0; OWN_CH=0; }
cleanup() {
  if [ "$OWN_KAFKA" = 1 ]; then scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
  if [ "$OWN_PROM" = 1 ]; then scripts/services/prometheus.sh stop >/dev/null 2>&1 || true; fi
  if [ "$OWN_CH" = 1 ]; then scripts/services/clickhouse.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# --- the benchmarks, short sizes -------------------------------------------------------------
# name | command line (relative to the repo)
BENCHES=(
  "side_by_side|bench/side_by_side.py --ingest-spans 500000 --consume-spans 500000 --latency-seconds 20"
  "query|bench/query_bench.py --spans 1000000 --queries 300 --seconds 4"
  "ingest|bench/ingest_bench.py --requests 1500 --clients 64"
  "decode|bench/decode_bench.py --requests 300 --repeat 3"
  "codec|bench/codec_bench.py --seconds 1.5"
  "encode|bench/encode_bench.py --seconds 1.5"
  "operators|bench/operators_bench.py --spans 100000 --repeat 3"
  "clickhouse|bench/clickhouse_bench.py --rows 200000 --server-rows 100000"
  "traces_flow|bench/traces_flow_bench.py --spans 300000 --latency-rate 0"
  "flow_memory|bench/flow_memory_bench.py --spans 1000000 --target chdb server"
  "mergetree|bench/mergetree_bench.py --spans 1000000 --repeat 1 --only base null_engine"
  "metrics|bench/metrics_bench.py --requests 300 --spans 100000"
  "metrics_flow_chdb|bench/metrics_flow_bench.py --sink chdb --requests 3000 --runs 1"
  "metrics_flow_rw|bench/metrics_flow_bench.py --sink rw --requests 2000 --runs 1"
)

STATUS="$RES/.status"
: > "$STATUS"
total0=$(date +%s)
for entry in "${BENCHES[@]}"; do
  name=${entry%%|*}
  cmd=${entry#*|}
  if [ -n "${BENCH_ONLY:-}" ] && [[ " $BENCH_ONLY " != *" $name "* ]]; then continue; fi
  script=${cmd%% *}
  if [ ! -f "$script" ]; then
    echo "$name|missing|0|$cmd" >> "$STATUS"
    continue
  fi
  echo
  echo "=== $name: $cmd"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-900}" "$PY" $cmd 2>&1 | tee "$RES/$name.out"
  rc=${PIPESTATUS[0]}
  echo "$name|$rc|$(( $(date +%s) - t0 ))|$cmd" >> "$STATUS"
done
echo "bench: total $(( $(date +%s) - total0 )) s"

"$PY" - "$RES" <<'EOF'
"""Combined table of the side-by-side and query results, plus every benchmark's status."""
import json
import os
import sys
import time
from pathlib import Path

res = Path(sys.argv[1])
lines = []
sbs = res / "side_by_side.json"
status = [ln.split("|", 3) for ln in (res / ".status").read_text().splitlines() if ln]
def fresh(p: Path) -> bool:
    return p.exists() and any(n == p.stem and rc == "0" for n, rc, *_ in status)

machine = {}
if fresh(sbs):
    d = json.loads(sbs.read_text())
    machine = d.get("machine", {})
    lines.append("| stage | system | spans | spans/s (wall) | spans/s per core | peak RSS MiB | notes |")
    lines.append("|---|---|---:|---:|---:|---:|---|")
    for r in d["results"]:
        note = ""
        if "p99_s" in r:
            note = f"p50 {r['p50_s']} s, p99 {r['p99_s']} s at {r['spans_per_s']} spans/s"
        elif "spans_sent" in r:
            note = f"{r['spans']} of {r['spans_sent']} sent spans found in Kafka ({r['kafka_records']} records)"
        lines.append(
            f"| {r['stage']} | {r['system']} | {r.get('spans', '')} | {r.get('spans_per_s', '')} | "
            f"{r.get('spans_per_core_s') or ''} | {r.get('peak_rss_mib', '')} | {note} |"
        )
q = res / "query.json"
if fresh(q):
    d = json.loads(q.read_text())
    lines.append("")
    lines.append(d["markdown"].rstrip())  # query_bench.py renders its own side-by-side table
lines.append("")
lines.append("| benchmark | status | seconds | output |")
lines.append("|---|---|---:|---|")
summary = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine,
           "benchmarks": {}}
for name, rc, secs, cmd in status:
    st = "ok" if rc == "0" else ("missing" if rc == "missing" else f"failed (exit {rc})")
    lines.append(f"| {name} | {st} | {secs} | bench/results/{name}.out |")
    entry = {"status": st, "seconds": int(secs), "command": cmd}
    js = res / f"{name}.json"
    if rc == "0" and js.exists():
        try:
            entry["result"] = json.loads(js.read_text())
        except ValueError:
            pass
    summary["benchmarks"][name] = entry
if machine:
    lines.append("")
    lines.append(f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu')}), "
                 f"{machine.get('mem_gib')} GiB RAM")
text = "\n".join(lines)
print()
print(text)
(res / "summary.txt").write_text(text + "\n")
(res / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
print(f"\nwrote {res / 'summary.txt'} and {res / 'summary.json'}")
failed = [n for n, rc, *_ in status if rc not in ("0", "missing")]
sys.exit(1 if failed else 0)
EOF
rc=$?
# Issue 14's six goals from this run's results (benchmarks that failed or did not run: "not
# measured"), appended to summary.txt.
fresh=$(awk -F'|' '$2 == "0" {printf "%s,", $1}' "$STATUS")
echo
"$PY" bench/goals.py "$RES" --fresh "$fresh" | tee -a "$RES/summary.txt"
exit $rc
