#!/usr/bin/env bash
# Prometheus with the remote-write receiver on, for otelwax's remote-write sink.
#   scripts/services/prometheus.sh start|stop|status|wipe
# Native histograms are on (OTel exponential histograms are written as such).
# Env: PROM_PORT (19090), PROM_DATA (.data/prometheus[-PORT when PORT != 19090]).
# Installs the Debian package when the binary is missing. Idempotent start/stop.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/services/lib.sh"
PORT=${PROM_PORT:-19090}
if [[ "$PORT" == 19090 ]]; then DEFAULT_DATA="$ROOT/.data/prometheus"; else DEFAULT_DATA="$ROOT/.data/prometheus-$PORT"; fi
DATA=${PROM_DATA:-$DEFAULT_DATA}
PIDFILE="$DATA/prometheus.pid"
LOG="$DATA/prometheus.log"
CONF="$DATA/prometheus.yml"

ensure_installed() {
  command -v prometheus >/dev/null 2>&1 && return 0
  echo "prometheus: installing the Debian package" >&2
  local SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo -n"
  $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null
  }
  # The package may start a system service on :9090; otelwax runs its own instance.
  command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
}

running() { pid_alive "$PIDFILE"; }

ready() {
  local url="http://127.0.0.1:$PORT/-/ready"
  if command -v curl >/dev/null 2>&1; then
    curl -fsS "$url" >/dev/null 2>&1
  else
    python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
      "$url" >/dev/null 2>&1
  fi
}

start() {
  if running; then
    echo "prometheus already running on :$PORT (pid $(cat "$PIDFILE"))"
    return 0
  fi
  ensure_installed
  mkdir -p "$DATA/tsdb"
  cat >"$CONF" <<YAML
global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs: []
YAML
  nohup prometheus \
    --config.file="$CONF" \
    --web.enable-remote-write-receiver \
    --enable-feature=native-histograms \
    --web.enable-lifecycle \
    --storage.tsdb.path="$DATA/tsdb" \
    --web.listen-address="127.0.0.1:$PORT" \
    --log.level=warn \
    >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  wait_ready prometheus "$PIDFILE" "$LOG" ready "prometheus ready on :$PORT (pid $(cat "$PIDFILE"), data $DATA)"
}

stop() {
  if ! running; then
    rm -f "$PIDFILE"
    echo "prometheus not running on :$PORT"
    return 0
  fi
  stop_pid "$PIDFILE"
  echo "prometheus stopped (:$PORT)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running && ready; then echo "running :$PORT"; else echo "stopped"; exit 1; fi ;;
  wipe) stop; rm -rf "$DATA" ;;
  *) echo "usage: $0 start|stop|status|wipe" >&2; exit 2 ;;
esac
