#!/usr/bin/env bash
# make e2e: build the otelwax image from docker/Dockerfile and run it against real services.
# No Docker engine is needed: Debian's podman (with runc, cgroupfs) builds and runs the image.
#   scripts/e2e.sh [images|build|test]   (default: all three; pytest args after `test --`)
# Registries for base images may be unreachable, so the base images are made locally (cached
# in podman's store, built only when missing):
#   localhost/debian-base:bookworm  debootstrap (minbase + Python 3.11) imported as an image
#   localhost/rust-toolchain:host   this machine's Rust toolchain as /usr/local/cargo
# and the Dockerfile takes them as build arguments (its public defaults stay the python/rust
# images). The stack test (tests/e2e/) runs the otelwax containers with --network host against
# Kafka and ClickHouse started by the project's scripts on their own ports.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
BASE_IMAGE=${E2E_BASE_IMAGE:-localhost/debian-base:bookworm}
RUST_IMAGE=${E2E_RUST_IMAGE:-localhost/rust-toolchain:host}
IMAGE=${OTELWAX_E2E_IMAGE:-localhost/otelwax:e2e}
PODMAN=(podman --cgroup-manager=cgroupfs --runtime runc)
export OTELWAX_E2E_IMAGE="$IMAGE"

log() { echo "e2e: $*" >&2; }

install() {
  local need=()
  for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # Containers here may not raise their rlimits (podman's default nofile/nproc ulimits fail).
  local conf=/etc/containers/containers.conf
  if ! grep -qs '^default_ulimits *= *\[\]' "$conf"; then
    mkdir -p "$(dirname "$conf")"
    if grep -qs '^\[containers\]' "$conf"; then
      sed -i '/^\[containers\]/a default_ulimits = []' "$conf"
    else
      printf '[containers]\ndefault_ulimits = []\n' >> "$conf"
    fi
  fi
}

base_image() {
  "${PODMAN[@]}" image exists "$BASE_IMAGE" && return 0
  local rootfs
  rootfs=$(mktemp -d /tmp/otelwax-rootfs.XXXXXX)
  log "debootstrap bookworm -> $BASE_IMAGE (first time only, minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" >/tmp/otelwax-debootstrap.log 2>&1 \
    || { tail -20 /tmp/otelwax-debootstrap.log; rm -rf "$rootfs"; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

rust_image() {
  "${PODMAN[@]}" image exists "$RUST_IMAGE" && return 0
  # The toolchain's sysroot is self-contained (bin/cargo, bin/rustc, lib/): as /usr/local/cargo
  # it is what the Dockerfile copies from the rust image (/usr/local/rustup stays empty).
  local rustc sysroot stage
  rustc=$(command -v rustc || echo "$HOME/.cargo/bin/rustc")
  sysroot=$("$rustc" --print sysroot)
  [ -x "$sysroot/bin/cargo" ] || { log "no cargo in $sysroot"; return 1; }
  log "$sysroot -> $RUST_IMAGE"
  stage=$(mktemp -d /tmp/otelwax-rust.XXXXXX)
  mkdir -p "$stage/usr/local/rustup" "$stage/usr/local/cargo"
  tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$stage/usr/local/cargo" -x
  tar -C "$stage" -c . | "${PODMAN[@]}" import - "$RUST_IMAGE" >/dev/null
  rm -rf "$stage"
}

build() {
  log "podman build $IMAGE"
  local t0=$SECONDS pipconf
  # RUN steps trust what this machine trusts (its CA bundle, which may hold a proxy's CA),
  # mounted for the build only: nothing of it lands in the image.
  pipconf=$(mktemp /tmp/otelwax-pip.XXXXXX.conf)
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$pipconf"
  # --format docker: the OCI format has no HEALTHCHECK, podman would drop the image's.
  "${PODMAN[@]}" build --format docker --network host -f docker/Dockerfile \
    --ignorefile docker/Dockerfile.dockerignore \
    -v /etc/ssl/certs:/etc/ssl/certs:ro -v "$pipconf:/etc/pip.conf:ro" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg RUST_IMAGE="$RUST_IMAGE" \
    -t "$IMAGE" . || { rm -f "$pipconf"; return 1; }
  rm -f "$pipconf"
  log "image built in $((SECONDS - t0)) s"
}

# Kafka and ClickHouse for the stack test, on their own ports and data folders (not the ones
# of `make test` or `make run`), wiped first and stopped at the end.
services_up() {
  export KAFKA_PORT=${E2E_KAFKA_PORT:-28092}
  export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1)) KAFKA_DATA="$ROOT/.data/kafka-e2e"
  export CH_TCP_PORT=${E2E_CH_TCP_PORT:-28900} CH_HTTP_PORT=${E2E_CH_HTTP_PORT:-28123}
  export CH_DATA="$ROOT/.data/clickhouse-e2e"
  if ! command -v clickhouse-server >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      clickhouse-server clickhouse-client >/dev/null
  fi
  trap services_down EXIT
  scripts/kafka.sh wipe >/dev/null
  scripts/services/clickhouse.sh wipe >/dev/null
  scripts/kafka.sh start
  scripts/services/clickhouse.sh start
  export OTELWAX_TEST_KAFKA="127.0.0.1:$KAFKA_PORT"
  export OTELWAX_TEST_CLICKHOUSE="127.0.0.1:$CH_TCP_PORT:$CH_HTTP_PORT"
}

services_down() {
  scripts/services/clickhouse.sh stop >/dev/null 2>&1 || true
  scripts/kafka.sh stop >/dev/null 2>&1 || true
}

run_tests() {
  services_up
  python -m pytest -q -p no:cacheprovider tests/e2e "$@"
}

step=${1:-all}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
t0=$SECONDS
case "$step" in
  images) install; base_image; rust_image ;;
  build) install; base_image; rust_image; build ;;
  test) run_tests "$@" ;;
  all) install; base_image; rust_image; build; run_tests "$@" ;;
  *) echo "usage: $0 [images|build|test [-- pytest args]]" >&2; exit 2 ;;
esac
log "$step done in $((SECONDS - t0)) s"
