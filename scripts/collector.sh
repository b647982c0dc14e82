#!/usr/bin/env bash
# Build the OpenTelemetry Collector used by the side-by-side benchmark with the OpenTelemetry
# Collector Builder (ocb) from the Go module proxy:
#   bench/collector/builder.yaml -> .cache/bin/otelcol-bench
# Cached: rebuilt only when the manifest or the builder version changes. The first build takes
# several minutes (module downloads + compile); module and build caches stay in the Go caches.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILDER_VERSION=${OCB_VERSION:-v0.165.0}
BIN="$ROOT/.cache/bin"
OUT="$BIN/otelcol-bench"
MANIFEST="$ROOT/bench/collector/builder.yaml"
WORK="$ROOT/.cache/otelcol-build"
export GOFLAGS="${GOFLAGS:--trimpath}"
mkdir -p "$BIN" "$WORK"

# Comments do not change the binary: only the manifest's other lines count.
want="$BUILDER_VERSION $(grep -v '^[[:space:]]*#' "$MANIFEST" | sha256sum | cut -d' ' -f1)"
stamp="$BIN/.otelcol-bench.version"
if [ -x "$OUT" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

if [ ! -x "$BIN/ocb" ] || [ "$(cat "$BIN/.ocb.version" 2>/dev/null)" != "$BUILDER_VERSION" ]; then
  echo "collector: installing the builder go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION"
  (cd "$(mktemp -d)" && GOBIN="$BIN" go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION")
  mv "$BIN/builder" "$BIN/ocb"
  echo "$BUILDER_VERSION" > "$BIN/.ocb.version"
fi

echo "collector: building otelcol-bench (first time takes several minutes)"
cp "$MANIFEST" "$WORK/builder.yaml"
(cd "$WORK" && "$BIN/ocb" --config builder.yaml)
cp "$WORK/_build/otelcol-bench" "$OUT"
echo "$want" > "$stamp"
echo "collector: built $OUT"
