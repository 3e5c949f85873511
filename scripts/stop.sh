#!/usr/bin/env bash
# Stop what `make dev` / `make test` started: dev processes, then the private MariaDB.
set -uo pipefail
cd "$(dirname "$0")/.."
for pidfile in .dev/*.pid; do
  [[ -f $pidfile ]] || continue
  kill "$(cat "$pidfile")" 2>/dev/null && echo "stopped $(basename "$pidfile" .pid)"
  rm -f "$pidfile"
done
SLUICE_DATABASE_URL= scripts/mysql.sh --stop
