#!/usr/bin/env bash
# Standalone Apache ZooKeeper from Maven Central jars, run with java: the coordination service
# ClickHouse replication (ReplicatedMergeTree) and ON CLUSTER DDL need.
#   scripts/services/zookeeper.sh fetch|start|stop|status|wipe
# Env: ZK_PORT (2181), ZK_DATA (.data/zookeeper[-PORT when PORT != 2181]),
#      ZK_HOME (.cache/zookeeper), ZK_HEAP (128m).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$ROOT/scripts/services/lib.sh"
PORT=${ZK_PORT:-2181}
if [[ "$PORT" == 2181 ]]; then DEFAULT_DATA="$ROOT/.data/zookeeper"; else DEFAULT_DATA="$ROOT/.data/zookeeper-$PORT"; fi
DATA=${ZK_DATA:-$DEFAULT_DATA}
ZK_HOME=${ZK_HOME:-$ROOT/.cache/zookeeper}
LIBS=$ZK_HOME/libs
PIDFILE="$DATA/zookeeper.pid"
LOG="$DATA/zookeeper.log"
CONF="$DATA/zoo.cfg"

fetch() {
  if [[ -f "$LIBS/.complete" ]] && cmp -s "$ROOT/scripts/zookeeper/pom.xml" "$LIBS/.complete"; then return 0; fi
  echo "zookeeper: resolving server jars from Maven Central into $LIBS"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  mvn -q -B -f "$ROOT/scripts/zookeeper/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$LIBS" -DincludeScope=runtime
  cp "$ROOT/scripts/zookeeper/pom.xml" "$LIBS/.complete"
}

running() { pid_alive "$PIDFILE"; }

# "srvr" four-letter command: a "Mode:" line once the server serves sessions. ("ruok" answers
# "imok" earlier, while the server still drops session handshakes: ClickHouse 18.16 crashes on
# an ON CLUSTER query whose DDL worker has no session yet.)
ready() {
  { exec 3<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
  printf 'srvr' >&3
  local reply
  reply=$(timeout 2 cat <&3 || true)
  exec 3>&- 3<&-
  [[ "$reply" == *"Mode: "* ]]
}

start() {
  if running; then echo "zookeeper already running on :$PORT (pid $(cat "$PIDFILE"))"; return 0; fi
  fetch
  mkdir -p "$DATA/data"
  cat >"$CONF" <<CFG
tickTime=2000
dataDir=$DATA/data
clientPort=$PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
autopurge.purgeInterval=1
CFG
  nohup java -Xms32m -Xmx"${ZK_HEAP:-128m}" -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dzookeeper.jmx.log4j.disable=true -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$LIBS/*" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$CONF" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  wait_ready zookeeper "$PIDFILE" "$LOG" ready "zookeeper: up (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "zookeeper: not running"; return 0; fi
  stop_pid "$PIDFILE"
  echo "zookeeper: stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running && ready; then echo "zookeeper: running on :$PORT"; else echo "zookeeper: not running"; exit 3; fi ;;
  wipe) stop; rm -rf "$DATA" ;;
  *) echo "usage: $0 fetch|start|stop|status|wipe" >&2; exit 2 ;;
esac
