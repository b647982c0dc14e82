#!/usr/bin/env bash
# make run: a local demo on embedded defaults.
# Starts Kafka, the ingest shim and the flows; sends telemetry from telemetrygen (several
# services, errors included); waits until the flows stored what the shim accepted; stops the
# flows and prints what landed in ClickHouse (embedded chdb). Everything stops on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
RUN=${OTELWAX_RUN_DIR:-$ROOT/.data/run}
DURATION=${DEMO_DURATION:-10s}
RATE=${DEMO_RATE:-200}
export OTELWAX_KAFKA_BOOTSTRAP=127.0.0.1:9092
export OTELWAX_CONFIG="$RUN/otelwax.yaml"
# Each flow gets its own metrics port below (the report reads each one's lag there); a port
# from the environment would override them all, so only one flow could serve.
unset OTELWAX_METRICS_PORT

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
# Job control: background jobs of a script otherwise start with SIGINT ignored, and bytewax
# stops on SIGINT.
set -m
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do timeout 20 tail --pid="$p" -f /dev/null 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
  scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "building telemetrygen (Go module proxy; cached after the first run)"
scripts/go-tools.sh telemetrygen

say "starting Kafka (KRaft) on 127.0.0.1:9092 with fresh demo data"
scripts/kafka.sh wipe >/dev/null
rm -rf "$RUN"; mkdir -p "$RUN"
scripts/kafka.sh start

# One deployment file for the demo; each flow keeps its own embedded chdb folder (chdb allows
# one process per data folder).
cat > "$OTELWAX_CONFIG" <<YAML
kafka:
  bootstrap_servers: 127.0.0.1:9092
flows:
  traces:
    clickhouse: {mode: embedded, path: $RUN/chdb-traces, create_schema: true}
    metrics_port: 9464
  metrics:
    clickhouse: {mode: embedded, path: $RUN/chdb-metrics, create_schema: true}
    remote_write: null
    metrics_port: 9465
  logs:
    clickhouse: {mode: embedded, path: $RUN/chdb-logs, create_schema: true}
    metrics_port: 9466
YAML
otelwax validate -c "$OTELWAX_CONFIG"

say "starting the ingest shim (OTLP gRPC :4317, HTTP :4318, /metrics :8888)"
otelwax ingest --kafka-bootstrap 127.0.0.1:9092 >"$RUN/ingest.log" 2>&1 &
pids+=($!)
python scripts/demo.py wait-http http://127.0.0.1:8888/healthz 30

FLOWS=(traces metrics logs)
for f in "${FLOWS[@]}"; do
  say "starting flows.$f (log $RUN/flow-$f.log)"
  python -m bytewax.run "flows.$f" >"$RUN/flow-$f.log" 2>&1 &
  pids+=($!)
done

say "sending demo telemetry for $DURATION (telemetrygen: 4 services, traces + metrics + logs)"
gen=.cache/bin/telemetrygen
common=(--otlp-endpoint 127.0.0.1:4317 --otlp-insecure --duration "$DURATION")
genpids=()
for svc in checkout:Unset payments:Error frontend:Ok inventory:Unset; do
  name=${svc%%:*}; status=${svc##*:}
  "$gen" traces "${common[@]}" --service "$name" --rate "$RATE" --child-spans 4 \
    --status-code "$status" --span-duration "$((RANDOM % 40 + 5))ms" >"$RUN/gen-$name.log" 2>&1 &
  genpids+=($!)
done
"$gen" metrics "${common[@]}" --service checkout --rate 50 --metric-type Sum --otlp-metric-name orders >"$RUN/gen-metrics-sum.log" 2>&1 & genpids+=($!)
"$gen" metrics "${common[@]}" --service checkout --rate 50 --metric-type Histogram --otlp-metric-name latency >"$RUN/gen-metrics-hist.log" 2>&1 & genpids+=($!)
"$gen" logs "${common[@]}" --service payments --rate 100 --severity-number 17 --severity-text Error --body "card declined" >"$RUN/gen-logs-err.log" 2>&1 & genpids+=($!)
"$gen" logs "${common[@]}" --service frontend --rate 200 --body "GET /cart 200" >"$RUN/gen-logs-info.log" 2>&1 & genpids+=($!)
python scripts/demo.py progress 8888 9464 9465 9466 &
progress=$!
for p in "${genpids[@]}"; do wait "$p" || echo "telemetrygen $p exited with $?"; done
{ kill "$progress"; wait "$progress"; } 2>/dev/null || true

say "waiting until the flows stored everything the shim accepted"
python scripts/demo.py drain 8888 9464 9465 9466 120

say "writing an HTML report (otelwax query, answered by the running traces flow)"
lags=(--lag traces=http://127.0.0.1:9464 --lag metrics=http://127.0.0.1:9465 --lag logs=http://127.0.0.1:9466)
otelwax query report --flow http://127.0.0.1:9464 "${lags[@]}" --html "$RUN/report.html" \
  || echo "report: not written (see above)"

say "stopping the flows"
for i in 1 2 3; do kill -INT "${pids[$i]}" 2>/dev/null || true; done
for i in 1 2 3; do timeout 60 tail --pid="${pids[$i]}" -f /dev/null || true; done

python scripts/demo.py summary "$RUN"
if [ -f "$RUN/report.html" ]; then
  printf '\n\033[1mOpen the report:\033[0m file://%s\n' "$RUN/report.html"
  echo "  (services, errors and p99 over time, the slowest trace's waterfall, lag per flow)"
fi
