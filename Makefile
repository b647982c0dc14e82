# otelwax: every target does its own setup (venv, Kafka jars, services).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all e2e bench soak lint services stop clean wipe

$(STAMP): pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@CARGO_TARGET_DIR=$(CURDIR)/.cache/cargo-target $(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)
	@scripts/kafka.sh fetch

run: setup
	@scripts/run.sh

test: setup
	@scripts/test.sh

# Everything make test runs plus the `extended` variants (2-worker and recovery SIGKILL
# variants, more SIGKILL/outage tests, the cluster kill test, the image build step) and the
# native codec's full fuzz runs: ~7 minutes more.
test-all: setup
	@TEST_ALL=1 scripts/test.sh

# The otelwax image built with podman and run against real services (not part of `make test`).
e2e: setup
	@scripts/e2e.sh

bench: setup
	@scripts/bench.sh

# SOAK_ARGS="--duration 30m --seed 7 --faults kill_flows,burst --keep" make soak
soak: setup
	@scripts/go-tools.sh telemetrygen
	@scripts/services/jaeger.sh build
	@$(PY) -m soak $(SOAK_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/lint-imports --no-cache --no-logo

services: setup
	@scripts/kafka.sh start

stop:
	@scripts/kafka.sh stop || true

wipe:
	@scripts/kafka.sh wipe || true
	@rm -rf .data

clean: wipe
	@rm -rf $(VENV) .cache build *.egg-info
