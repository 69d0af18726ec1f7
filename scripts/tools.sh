#!/usr/bin/env bash
# Installs every tool and server the tests need, at pinned versions, into
# .tools/. Idempotent and quick when everything is already there.
#   Debian: skopeo (client), haproxy (load balancer for cluster tests)
#   Go:     oras, crane, regctl (clients), conformance (OCI suite), versitygw (S3 server)
#   npm:    dynalite (DynamoDB-compatible server)
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
BIN="$TOOLS/bin"
mkdir -p "$BIN"

need_apt=()
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# go_tool NAME MODULE@VERSION: a stamp file records the installed version.
go_tool() {
  local name=$1 mod=$2
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.version" 2>/dev/null)" = "$mod" ]; then return 0; fi
  GOBIN="$BIN" go install "$mod"
  echo "$mod" > "$BIN/.$name.version"
}
pids=()
go_tool oras oras.land/oras/cmd/oras@v1.3.6 & pids+=($!)
go_tool crane github.com/google/go-containerregistry/cmd/crane@v0.22.1 & pids+=($!)
go_tool regctl github.com/regclient/regclient/cmd/regctl@v0.11.7 & pids+=($!)
go_tool conformance github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111 & pids+=($!)
go_tool versitygw github.com/versity/versitygw/cmd/versitygw@v1.8.0 & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done

# dynalite: npm package with prebuilt LevelDB; started as .tools/bin/dynalite.
DYN="$TOOLS/dynalite"
if [ ! -x "$DYN/node_modules/.bin/dynalite" ] || [ "$(cat "$DYN/.version" 2>/dev/null)" != "4.0.0" ]; then
  mkdir -p "$DYN"
  [ -f "$DYN/package.json" ] || echo '{"private":true}' > "$DYN/package.json"
  (cd "$DYN" && npm install --no-audit --no-fund --silent dynalite@4.0.0 >/dev/null)
  echo 4.0.0 > "$DYN/.version"
fi
ln -sf "$DYN/node_modules/.bin/dynalite" "$BIN/dynalite"
echo "tools ready in $BIN"
