#!/usr/bin/env bash
# Local ClickHouse server (Debian's clickhouse-server, 18.16 here) run as a plain background
# process — no systemd — with its own config, data, log and PID file.
#   scripts/services/clickhouse.sh start|stop|status|restart|wipe
# Env: CH_TCP_PORT (19000, native protocol), CH_HTTP_PORT (18123), CH_DATA (.data/clickhouse),
# CH_LOG_LEVEL (warning).
# A replica of a cluster (ReplicatedMergeTree, ON CLUSTER DDL) when CH_ZK_PORT is set: the
# ZooKeeper on 127.0.0.1:CH_ZK_PORT (scripts/services/zookeeper.sh), CH_CLUSTER (otelwax) of one
# shard whose replicas are the native ports CH_CLUSTER_PORTS ("9000,9001"), this one named
# CH_REPLICA (macros {shard}=CH_SHARD (01), {replica}), replicating on CH_INTERSERVER_PORT.
# The test fixture (tests/connectors/conftest.py) starts it once per session.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CH_DATA=${CH_DATA:-$ROOT/.data/clickhouse}
CH_TCP_PORT=${CH_TCP_PORT:-19000}
CH_HTTP_PORT=${CH_HTTP_PORT:-18123}
PIDFILE=$CH_DATA/clickhouse.pid
CONF=$CH_DATA/config.xml
LOG=$CH_DATA/log/stdout.log

install() {
  if command -v clickhouse-server >/dev/null 2>&1; then return 0; fi
  echo "clickhouse: installing Debian clickhouse-server via apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends clickhouse-server clickhouse-client >/dev/null 2>&1 || {
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends clickhouse-server clickhouse-client >/dev/null
  }
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

answers() {
  # HTTP /ping answers "Ok." once the server accepts queries.
  { exec 3<>"/dev/tcp/127.0.0.1/$CH_HTTP_PORT"; } 2>/dev/null || return 1
  printf 'GET /ping HTTP/1.0\r\n\r\n' >&3
  local reply
  reply=$(timeout 2 cat <&3 || true)
  exec 3>&- 3<&-
  [[ "$reply" == *"Ok."* ]]
}

cluster_conf() {
  [[ -n "${CH_ZK_PORT:-}" ]] || return 0
  local replicas="" port
  for port in ${CH_CLUSTER_PORTS//,/ }; do
    replicas+="<replica><host>127.0.0.1</host><port>$port</port></replica>"
  done
  cat <<XML
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>${CH_INTERSERVER_PORT:?CH_INTERSERVER_PORT is required with CH_ZK_PORT}</interserver_http_port>
    <zookeeper><node><host>127.0.0.1</host><port>$CH_ZK_PORT</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>
    <macros><shard>${CH_SHARD:-01}</shard><replica>${CH_REPLICA:?CH_REPLICA is required with CH_ZK_PORT}</replica></macros>
    <remote_servers><${CH_CLUSTER:-otelwax}><shard><internal_replication>true</internal_replication>$replicas</shard></${CH_CLUSTER:-otelwax}></remote_servers>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
XML
}

write_conf() {
  mkdir -p "$CH_DATA/data" "$CH_DATA/tmp" "$CH_DATA/user_files" "$CH_DATA/format_schemas" "$CH_DATA/log"
  cat > "$CONF" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>${CH_LOG_LEVEL:-warning}</level>
        <log>$CH_DATA/log/clickhouse-server.log</log>
        <errorlog>$CH_DATA/log/clickhouse-server.err.log</errorlog>
        <size>50M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>50</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$CH_DATA/data/</path>
    <tmp_path>$CH_DATA/tmp/</tmp_path>
    <user_files_path>$CH_DATA/user_files/</user_files_path>
    <format_schema_path>$CH_DATA/format_schemas/</format_schema_path>
    <users_config>$CH_DATA/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
$(cluster_conf)
</yandex>
XML
  cat > "$CH_DATA/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML
}

start() {
  if running; then
    echo "clickhouse: already running (pid $(cat "$PIDFILE")) native 127.0.0.1:$CH_TCP_PORT http :$CH_HTTP_PORT"
    return 0
  fi
  install
  write_conf
  nohup clickhouse-server --config-file="$CONF" >"$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if answers; then
      echo "clickhouse: up (pid $(cat "$PIDFILE")) native 127.0.0.1:$CH_TCP_PORT http :$CH_HTTP_PORT"
      return 0
    fi
    if ! running; then
      echo "clickhouse: exited during start-up; see $LOG and $CH_DATA/log/" >&2
      tail -20 "$LOG" "$CH_DATA/log/clickhouse-server.err.log" 2>/dev/null >&2 || true
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.5
  done
  echo "clickhouse: no answer on :$CH_HTTP_PORT after 60 s" >&2
  exit 1
}

stop() {
  if ! running; then echo "clickhouse: not running"; rm -f "$PIDFILE"; return 0; fi
  local pid
  pid=$(cat "$PIDFILE")
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "clickhouse: stopped"; return 0; }
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "clickhouse: killed after 30 s"
}

status() {
  if running && answers; then
    echo "clickhouse: running (pid $(cat "$PIDFILE")) native 127.0.0.1:$CH_TCP_PORT http :$CH_HTTP_PORT"
  elif running; then
    echo "clickhouse: process $(cat "$PIDFILE") alive but not answering"; return 1
  else
    echo "clickhouse: not running"; return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  wipe) stop; rm -rf "$CH_DATA" ;;
  *) echo "usage: $0 start|stop|restart|status|wipe" >&2; exit 2 ;;
esac
