#!/usr/bin/env bash
# Builds the edge worker into build/ (index.js + index_bg.wasm), where
# wrangler.toml's `main` points. Offline: wasm-bindgen, esbuild and wasm-opt
# are local binaries, never downloads. Cheap when nothing changed: the inputs
# are fingerprinted and the build is skipped when build/ matches them.
#   FORCE=1 scripts/build-edge.sh   rebuild regardless
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen || echo "$HOME/.cargo/bin/wasm-bindgen")}"
export ESBUILD_BIN="${ESBUILD_BIN:-$root/node_modules/.bin/esbuild}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$root/node_modules/.bin/wasm-opt}"

for bin in worker-build "$WASM_BINDGEN_BIN" "$ESBUILD_BIN" "$WASM_OPT_BIN"; do
  command -v "$bin" >/dev/null || { echo "build-edge: missing $bin; run scripts/edge-toolchain.sh" >&2; exit 1; }
done

stamp=build/.fingerprint
fingerprint=$(
  {
    find edge/src intake/src protocol/src -type f -name '*.rs' -print0 | sort -z | xargs -0 sha256sum
    sha256sum Cargo.toml Cargo.lock edge/Cargo.toml intake/Cargo.toml protocol/Cargo.toml
    worker-build --version; "$WASM_BINDGEN_BIN" --version; "$WASM_OPT_BIN" --version
  } | sha256sum | cut -d' ' -f1
)
if [[ -z "${FORCE:-}" && -f build/index.js && -f build/index_bg.wasm && -f $stamp && "$(cat $stamp)" == "$fingerprint" ]]; then
  echo "build-edge: build/ is up to date"
  exit 0
fi

# Smaller wasm than the workspace's release profile (tuned for the backend):
# these apply to this wasm32 build only. worker-build resolves --out-dir
# against the crate root (edge/).
(
  cd edge
  CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
    worker-build --release --out-dir ../build
)
echo "$fingerprint" > $stamp
wasm=build/index_bg.wasm
echo "build-edge: $(stat -c %s $wasm) bytes wasm, $(gzip -9c $wasm | wc -c) bytes gzipped"
