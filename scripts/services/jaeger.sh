#!/usr/bin/env bash
# Jaeger v2 (all-in-one, memory storage) for otelwax's Jaeger sink tests.
#   scripts/services/jaeger.sh build|start|stop|status|wipe
# Env: JAEGER_OTLP_PORT (14317, OTLP gRPC receiver — not 4317, which is otelwax's own shim),
#      JAEGER_QUERY_PORT (16686, query HTTP: /api/traces/{id}, /api/v3/traces/{id}),
#      JAEGER_QUERY_GRPC_PORT (16685), JAEGER_HEALTH_PORT (13133),
#      JAEGER_DATA (.data/jaeger[-OTLP_PORT when OTLP_PORT != 14317]),
#      JAEGER_TLS_CERT / JAEGER_TLS_KEY (PEM files: the OTLP receiver then requires TLS).
# The binary is built once from the Go module proxy into .cache/bin/jaeger. `go install
# module@version` refuses Jaeger (its go.mod has a replace directive), so when
# scripts/go-tools.sh cannot build it we download the module and `go build` inside it, which
# honours the module's own go.mod. Idempotent start/stop; PID and log under the data dir.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/services/lib.sh"
JAEGER_VERSION=${JAEGER_VERSION:-v1.76.0}
MOD="github.com/jaegertracing/jaeger"
BIN="$ROOT/.cache/bin/jaeger"
STAMP="$ROOT/.cache/bin/.jaeger.version"
OTLP_PORT=${JAEGER_OTLP_PORT:-14317}
QUERY_PORT=${JAEGER_QUERY_PORT:-16686}
QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-16685}
HEALTH_PORT=${JAEGER_HEALTH_PORT:-13133}
if [[ "$OTLP_PORT" == 14317 ]]; then DEFAULT_DATA="$ROOT/.data/jaeger"; else DEFAULT_DATA="$ROOT/.data/jaeger-$OTLP_PORT"; fi
DATA=${JAEGER_DATA:-$DEFAULT_DATA}
PIDFILE="$DATA/jaeger.pid"
LOG="$DATA/jaeger.log"
CONF="$DATA/config.yaml"

build() {
  local want="$MOD/cmd/jaeger@$JAEGER_VERSION"
  if [[ -x "$BIN" && "$(cat "$STAMP" 2>/dev/null)" == "$want" ]]; then return 0; fi
  if "$ROOT/scripts/go-tools.sh" jaeger >&2 2>/dev/null && [[ -x "$BIN" ]]; then return 0; fi
  echo "jaeger: building $want from the module's own go.mod (first time only, minutes)" >&2
  local dir
  dir=$(go mod download -json "$MOD@$JAEGER_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d "$dir" ]] || { echo "jaeger: go mod download failed" >&2; return 1; }
  mkdir -p "$(dirname "$BIN")"
  (cd "$dir" && GOFLAGS="-trimpath -buildvcs=false -mod=readonly" go build -o "$BIN.tmp" ./cmd/jaeger)
  mv "$BIN.tmp" "$BIN"
  echo "$want" >"$STAMP"
}

running() { pid_alive "$PIDFILE"; }

ready() {
  curl -fsS "http://127.0.0.1:$HEALTH_PORT/status" >/dev/null 2>&1 &&
    curl -fsS "http://127.0.0.1:$QUERY_PORT/api/services" >/dev/null 2>&1
}

write_config() {
  local tls=""
  if [[ -n "${JAEGER_TLS_CERT:-}" ]]; then
    tls="
        tls:
          cert_file: $JAEGER_TLS_CERT
          key_file: $JAEGER_TLS_KEY"
  fi
  cat >"$CONF" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: []
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:$HEALTH_PORT
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:$QUERY_PORT
    grpc:
      endpoint: 127.0.0.1:$QUERY_GRPC_PORT
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 100000

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTLP_PORT$tls

exporters:
  jaeger_storage_exporter:
    trace_storage: mem
YAML
}

start() {
  if running; then
    echo "jaeger already running (otlp :$OTLP_PORT, query :$QUERY_PORT, pid $(cat "$PIDFILE"))"
    return 0
  fi
  build
  mkdir -p "$DATA"
  write_config
  nohup "$BIN" --config "$CONF" >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  wait_ready jaeger "$PIDFILE" "$LOG" ready "jaeger ready (otlp grpc :$OTLP_PORT, query http :$QUERY_PORT, pid $(cat "$PIDFILE"))"
}

stop() {
  if ! running; then
    rm -f "$PIDFILE"
    echo "jaeger not running (otlp :$OTLP_PORT)"
    return 0
  fi
  stop_pid "$PIDFILE"
  echo "jaeger stopped (otlp :$OTLP_PORT)"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) if running && ready; then echo "running (otlp :$OTLP_PORT, query :$QUERY_PORT)"; else echo "stopped"; exit 1; fi ;;
  wipe) stop; rm -rf "$DATA" ;;
  *) echo "usage: $0 build|start|stop|status|wipe" >&2; exit 2 ;;
esac
