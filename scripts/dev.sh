#!/usr/bin/env bash
# `make dev`: install what is missing, start MariaDB, the backend and the edge
# worker (workerd via `wrangler dev`) with a seeded environment, API key and
# read token, print curls that land an event (through the edge, and straight
# to the backend's own door), and keep running until Ctrl-C.
#   SLUICE_DEV_BACKEND_PORT (8080), SLUICE_DEV_EDGE_PORT (8787)
#   SLUICE_DEV_EDGE=0   no worker: MariaDB and the backend only (direct ingest)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TERM_COLOR=never
log() { echo "dev: $*" >&2; }
backend_port=${SLUICE_DEV_BACKEND_PORT:-8080}
edge_port=${SLUICE_DEV_EDGE_PORT:-8787}
with_edge=${SLUICE_DEV_EDGE:-1}
[[ $with_edge == 0 || $with_edge == false || $with_edge == no ]] && with_edge=0 || with_edge=1
mkdir -p .dev

scripts/edge-toolchain.sh
db=$(scripts/mysql.sh)
log "building the backend"
cargo build -p sluice-backend
if ((with_edge)); then log "building the worker"; scripts/build-edge.sh; fi

export SLUICE_DATABASE_URL=$db/sluice_dev_catalog
[[ -s .dev/ingest-token ]] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > .dev/ingest-token
export SLUICE_INGEST_TOKEN=$(cat .dev/ingest-token)
backend=target/debug/backend

# Idempotent seeding: one shard, one environment "dev", a read token, an API key.
$backend migrate >/dev/null
$backend shard list | awk 'NR > 1 {print $2}' | grep -qx dev || $backend shard add dev "$db/sluice_dev_shard" >/dev/null
env_id=$($backend env list | awk '$2 == "dev" {print $1}')
[[ -n $env_id ]] || env_id=$($backend env create dev --shard dev)
# Credentials kept under .dev/ are checked against this catalog: a
# recreated database must not leave stale ones behind.
active_read_token() {
  [[ -s .dev/read-token ]] || return 1
  $backend env tokens dev | awk -v p="$(head -c 12 .dev/read-token)" '$1 == p && $NF == "-" {found=1} END {exit !found}'
}
active_read_token || { log "making a new read token"; $backend env token dev > .dev/read-token; }

for name in backend edge; do
  if [[ -f .dev/$name.pid ]]; then kill "$(cat .dev/$name.pid)" 2>/dev/null || true; rm -f ".dev/$name.pid"; fi
done
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -f .dev/backend.pid .dev/edge.pid
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_for() {
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  log "$2 did not come up; see $3"; tail -20 "$3" >&2; exit 1
}

log "starting the backend on 127.0.0.1:$backend_port (log: .dev/backend.log)"
SLUICE_LISTEN_ADDR=127.0.0.1:$backend_port SLUICE_LOG_FORMAT=text \
  $backend serve > .dev/backend.log 2>&1 &
pids+=($!); echo $! > .dev/backend.pid
wait_for "http://127.0.0.1:$backend_port/healthz" backend .dev/backend.log

# Secrets and local overrides for `wrangler dev` (git-ignored).
printf 'INGEST_TOKEN=%s\nBACKEND_URL=http://127.0.0.1:%s\n' "$SLUICE_INGEST_TOKEN" "$backend_port" > .dev.vars
# The SHA-256 hex of the key in .dev/api-key (its last line), as stored.
api_key_hash() { tail -1 .dev/api-key | tr -d '\n' | sha256sum | cut -d' ' -f1; }
active_api_key() {
  [[ -s .dev/api-key ]] || return 1
  $backend key list dev | awk -v h="$(api_key_hash)" '$2 == h && $NF == "-" {found=1} END {exit !found}'
}
if ! active_api_key; then
  if ((with_edge)); then
    log "making a new API key (catalog and the local edge's KV)"
    # The old key's KV record goes too; it may not be there.
    [[ -s .dev/api-key ]] && { node scripts/key.mjs revoke --hash "$(api_key_hash)" >/dev/null 2>&1 || true; }
    $backend key create dev --edge 2>/dev/null > .dev/api-key
  else
    log "making a new API key (catalog)"
    $backend key create dev 2>/dev/null > .dev/api-key
  fi
fi
api_key=$(tail -1 .dev/api-key)
if ((with_edge)); then running="the backend and the worker"; else running="the backend"; fi
event='{"event":"signup","user_id":"u1","properties":{"plan":"pro"}}'

if ((with_edge)); then
  log "starting the edge worker on 127.0.0.1:$edge_port (log: .dev/edge.log)"
  scripts/wrangler.sh dev --ip 127.0.0.1 --port "$edge_port" > .dev/edge.log 2>&1 &
  pids+=($!); echo $! > .dev/edge.pid
  wait_for "http://127.0.0.1:$edge_port/healthz" "wrangler dev" .dev/edge.log
  cat <<EOF2

Sluice is running.
  edge     http://127.0.0.1:$edge_port      (workerd via wrangler dev; log .dev/edge.log)
  backend  http://127.0.0.1:$backend_port      (log .dev/backend.log; catalog sluice_dev_catalog, shard sluice_dev_shard)

Send an event through the edge (202 at once, queued, then stored):
  curl -s http://127.0.0.1:$edge_port/v1/events -H 'Authorization: Bearer $api_key' \\
       -H 'Content-Type: application/json' -d '$event'
EOF2
else
  cat <<EOF2

Sluice is running without the edge (direct ingest).
  backend  http://127.0.0.1:$backend_port      (log .dev/backend.log; catalog sluice_dev_catalog, shard sluice_dev_shard)
EOF2
fi

cat <<EOF2

Send an event straight to the backend, no Cloudflare (its 2xx comes once the event is stored):
  curl -s http://127.0.0.1:$backend_port/v1/events -H 'Authorization: Bearer $api_key' \\
       -H 'Content-Type: application/json' -d '$event'

See it land:
  mariadb -h127.0.0.1 -P${db##*:} -usluice -psluice -e 'SELECT name, ts, user_id, properties, context FROM sluice_dev_shard.events_full ORDER BY ts DESC LIMIT 5'

Dashboard: http://127.0.0.1:$backend_port/dashboard   environment: dev   read token: $(cat .dev/read-token)

Ctrl-C stops $running; \`make stop\` also stops MariaDB.
EOF2
wait
