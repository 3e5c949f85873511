#!/usr/bin/env bash
# wrangler from node_modules, private and quiet: no prompts (CI=true), no
# metrics, no request.cf download, config and local state under .dev/
# (`dev` and `--local` commands get --persist-to .dev/wrangler-state unless
# they name their own, so scripts/key.mjs and `wrangler dev` share local KV).
#   scripts/wrangler.sh dev --ip 127.0.0.1 --port 8787
#   scripts/wrangler.sh deploy --env production
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CI=true WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
export XDG_CONFIG_HOME="$root/.dev/xdg-config"
mkdir -p "$XDG_CONFIG_HOME"
args=("$@")
if [[ " $* " != *" --persist-to "* && ( ${1:-} == dev || " $* " == *" --local "* ) ]]; then
  args+=(--persist-to "$root/.dev/wrangler-state")
fi
exec "$root/node_modules/.bin/wrangler" "${args[@]}"
