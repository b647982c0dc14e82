#!/usr/bin/env bash
# make test: start the services the suite needs, run pytest, stop them (also on failure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
# The test broker is separate from the `make run` one (port and data folder).
export KAFKA_PORT=${OTELWAX_TEST_KAFKA_PORT:-19092}
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
export KAFKA_DATA="$ROOT/.data/kafka-test"
export OTELWAX_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"

cleanup() {
  for svc in jaeger prometheus clickhouse; do scripts/services/$svc.sh stop >/dev/null 2>&1 || true; done
  scripts/kafka.sh stop >/dev/null || true
}
trap cleanup EXIT

# Install and build what the fixtures start, up front, so a missing tool fails here loudly
# instead of turning into skipped tests (cached after the first run).
need=()
command -v clickhouse-server >/dev/null || need+=(clickhouse-server clickhouse-client)
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)  # renders the HTML report in a test
if [ ${#need[@]} -gt 0 ]; then
  echo "test: apt-get install ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/services/jaeger.sh build
scripts/collector.sh  # the Collector of tests/interop/ (and of the benchmark)
scripts/services/zookeeper.sh fetch  # the replicated ClickHouse tests' ZooKeeper (Maven Central)

scripts/kafka.sh wipe >/dev/null
scripts/kafka.sh start

ruff check . || { echo "ruff: lint errors (see above)"; exit 1; }
lint-imports --no-cache --no-logo || { echo "lint-imports: a layer contract is broken (README: Architecture)"; exit 1; }
set +e
# make test leaves out the `extended` variants (pyproject markers); make test-all runs them too.
# It also fuzzes the native codec for half as long (4 s a decoder, 50 hypothesis examples).
marks=(-m "not extended") fuzz_s=4 examples=50
[ "${TEST_ALL:-0}" = 1 ] && marks=() fuzz_s=8 examples=100
export OTELWAX_FUZZ_SECONDS=${OTELWAX_FUZZ_SECONDS:-$fuzz_s}
export OTELWAX_HYPOTHESIS_EXAMPLES=${OTELWAX_HYPOTHESIS_EXAMPLES:-$examples}
python -m pytest --durations=30 "${marks[@]}" "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: treat as failure, CI must run tests.
exit $rc
