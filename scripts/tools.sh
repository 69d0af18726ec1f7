#!/usr/bin/env bash
# Installs every tool and server the tests need, at pinned versions, into .tools/.
# Idempotent: a tool already at its pinned version is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
BIN="$TOOLS/bin"
mkdir -p "$BIN"

# Debian packages: skopeo (client), haproxy (load balancer, cluster tests).
need_apt=()
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Go tools, pinned. A stamp file per tool records the installed version.
go_tool() { # name module@version
  local name=$1 mod=$2
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.version" 2>/dev/null)" = "$mod" ]; then return; fi
  GOBIN="$BIN" go install "$mod"
  echo "$mod" > "$BIN/.$name.version"
}
go_tool oras oras.land/oras/cmd/oras@v1.3.6 &
go_tool crane github.com/google/go-containerregistry/cmd/crane@v0.22.1 &
go_tool regctl github.com/regclient/regclient/cmd/regctl@v0.11.7 &
go_tool conformance github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111 &
wait
echo "tools ready in $BIN"
