#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) from Maven Central jars, run with java.
#   scripts/kafka.sh fetch|start|stop|wipe|status|restart
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HOME (.cache/kafka),
#      KAFKA_DATA (.data/kafka), KAFKA_PARTITIONS (4), KAFKA_HEAP (512m).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KAFKA_HOME=${KAFKA_HOME:-$ROOT/.cache/kafka}
KAFKA_DATA=${KAFKA_DATA:-$ROOT/.data/kafka}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
LIBS=$KAFKA_HOME/libs
PIDFILE=$KAFKA_DATA/kafka.pid
CONF=$KAFKA_DATA/server.properties
LOG=$KAFKA_DATA/kafka.log
PY=${PYTHON:-$ROOT/.venv/bin/python}

fetch() {
  if [ -f "$LIBS/.complete" ] && cmp -s "$ROOT/scripts/kafka/pom.xml" "$LIBS/.complete"; then return 0; fi
  echo "kafka: resolving broker jars from Maven Central into $LIBS"
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$LIBS" -DincludeScope=runtime
  cp "$ROOT/scripts/kafka/pom.xml" "$LIBS/.complete"
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

write_conf() {
  mkdir -p "$KAFKA_DATA/logs"
  cat > "$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA/logs
num.partitions=${KAFKA_PARTITIONS:-4}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=${KAFKA_MESSAGE_MAX_BYTES:-1048588}
log.retention.hours=24
CONF
  cat > "$KAFKA_DATA/log4j2.yaml" <<L4J
Configuration:
  Appenders:
    Console: {name: STDOUT, PatternLayout: {pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
    Logger: [{name: kafka.server.KafkaRaftServer, level: INFO}]
L4J
}

java_run() {
  java -Xms128m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DATA/log4j2.yaml" -cp "$LIBS/*" "$@"
}

start() {
  if running; then echo "kafka: already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  fetch
  write_conf
  if [ ! -f "$KAFKA_DATA/logs/meta.properties" ]; then
    echo "kafka: formatting storage in $KAFKA_DATA/logs"
    java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null)" \
      -c "$CONF" >"$KAFKA_DATA/format.log" 2>&1 || { cat "$KAFKA_DATA/format.log"; exit 1; }
  fi
  nohup bash -c "exec java -Xms128m -Xmx$KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=$KAFKA_DATA/log4j2.yaml -cp '$LIBS/*' kafka.Kafka $CONF" >"$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  echo "kafka: starting (pid $(cat "$PIDFILE")), log $LOG"
  "$PY" -m otelwax.cli.kafka wait --bootstrap "127.0.0.1:$KAFKA_PORT" --timeout 90 || {
    echo "kafka: did not become ready; last log lines:"; tail -n 30 "$LOG"; stop; exit 1; }
  "$PY" -m otelwax.cli.kafka create-topics --bootstrap "127.0.0.1:$KAFKA_PORT" \
    --partitions "${KAFKA_PARTITIONS:-4}"
  echo "kafka: ready on 127.0.0.1:$KAFKA_PORT"
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "kafka: not running"; return 0; fi
  pid=$(cat "$PIDFILE"); kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$PIDFILE"; echo "kafka: stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  wipe) stop; rm -rf "$KAFKA_DATA"; echo "kafka: data wiped" ;;
  status) if running; then echo "running pid $(cat "$PIDFILE")"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 fetch|start|stop|restart|wipe|status" >&2; exit 2 ;;
esac
