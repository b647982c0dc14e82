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

cleanup() { scripts/kafka.sh stop >/dev/null || true; }
trap cleanup EXIT
scripts/kafka.sh wipe >/dev/null
scripts/kafka.sh start

ruff check . || { echo "ruff: lint errors (see above)"; exit 1; }
set +e
python -m pytest "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: treat as failure, CI must run tests.
exit $rc
