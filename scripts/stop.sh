#!/usr/bin/env bash
# Stop what `make dev` / `make test` started: dev processes, then the private MariaDB.
set -uo pipefail
cd "$(dirname "$0")/.."
for pidfile in .dev/*.pid; do
  [[ -f $pidfile ]] || continue
  kill "$(cat "$pidfile")" 2>/dev/null && echo "stopped $(basename "$pidfile" .pid)"
  rm -f "$pidfile"
done
if [[ -f .dev/mariadb/pid ]] && kill "$(cat .dev/mariadb/pid)" 2>/dev/null; then
  echo "stopping private MariaDB"
  for _ in $(seq 1 60); do kill -0 "$(cat .dev/mariadb/pid 2>/dev/null)" 2>/dev/null || break; sleep 0.5; done
fi
