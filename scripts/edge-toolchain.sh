#!/usr/bin/env bash
# Installs what the edge worker needs to build and test, on a Debian machine
# that has Rust (rustup) and Node >= 20. Idempotent and quick when all is there.
#   - the wasm32-unknown-unknown target
#   - wasm-bindgen-cli =0.2.130 (must equal the crate pinned in edge/Cargo.toml)
#   - worker-build 0.8.7
#   - node_modules from package-lock.json (wrangler 4.86.0 with its miniflare,
#     workerd and esbuild; binaryen 132.0.0 for wasm-opt)
#   - the mariadb client, which the end-to-end tests use to query MySQL
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
log() { echo "edge-toolchain: $*" >&2; }

WASM_BINDGEN_VERSION=0.2.130
WORKER_BUILD_VERSION=0.8.7

for tool in cargo rustup node npm; do
  command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
(( node_major >= 20 )) || { log "Node >= 20 is required (found $(node --version))"; exit 1; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

has_version() { command -v "$1" >/dev/null && [[ " $("$1" --version 2>/dev/null) " == *" $2 "* ]]; }

if ! has_version wasm-bindgen "$WASM_BINDGEN_VERSION"; then
  log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (a few minutes)"
  cargo install wasm-bindgen-cli --version "=$WASM_BINDGEN_VERSION" --force
fi
if ! has_version worker-build "$WORKER_BUILD_VERSION"; then
  log "installing worker-build $WORKER_BUILD_VERSION (a few minutes)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked --force
fi

# npm writes node_modules/.package-lock.json on every install: older than the
# lockfile (or missing) means node_modules is stale.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  log "npm ci"
  npm ci --no-audit --no-fund
fi

if ! command -v mariadb >/dev/null && ! command -v mysql >/dev/null; then
  log "installing the mariadb client (Debian package)"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends mariadb-client
fi
log "ready: $(wasm-bindgen --version), worker-build $(worker-build --version), wrangler $(scripts/wrangler.sh --version 2>/dev/null | tail -1)"
