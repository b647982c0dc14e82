# Sourced by the service scripts: process control through a PID file.

# pid_alive PIDFILE: the process named in PIDFILE is alive.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_ready NAME PIDFILE LOG READY_FN MESSAGE: poll READY_FN for up to 30 s; print MESSAGE when
# it succeeds, or the log's tail when the process exits first.
wait_ready() {
  local name=$1 pidfile=$2 log=$3 ready=$4 message=$5
  for _ in $(seq 1 120); do
    if "$ready"; then
      echo "$message"
      return 0
    fi
    pid_alive "$pidfile" || { echo "$name exited, see $log" >&2; tail -20 "$log" >&2; return 1; }
    sleep 0.25
  done
  echo "$name not ready after 30s, see $log" >&2
  return 1
}

# stop_pid PIDFILE: SIGTERM, up to 20 s to exit, then SIGKILL; the PID file is removed.
stop_pid() {
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 80); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
