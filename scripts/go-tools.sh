#!/usr/bin/env bash
# Build Go tools from the Go module proxy into .cache/bin (module and build caches stay in the
# user's Go caches, so a second run is instant).
#   scripts/go-tools.sh telemetrygen|jaeger|all
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export GOBIN="$ROOT/.cache/bin"
export GOFLAGS="${GOFLAGS:--trimpath}"
mkdir -p "$GOBIN"

TELEMETRYGEN_VERSION=${TELEMETRYGEN_VERSION:-v0.161.0}
JAEGER_VERSION=${JAEGER_VERSION:-v1.76.0}

install_tool() {  # name module@version
  local name=$1 mod=$2 stamp="$GOBIN/.$1.version"
  if [ -x "$GOBIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$mod" ]; then return 0; fi
  echo "go-tools: building $mod (first time only)"
  (cd "$(mktemp -d)" && go install "$mod")
  echo "$mod" > "$stamp"
}

case "${1:-all}" in
  telemetrygen) install_tool telemetrygen \
    "github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@$TELEMETRYGEN_VERSION" ;;
  jaeger) install_tool jaeger "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" ;;
  all) "$0" telemetrygen; "$0" jaeger ;;
  *) echo "usage: $0 telemetrygen|jaeger|all" >&2; exit 2 ;;
esac
