#!/usr/bin/env bash
# Prints the URL of a MySQL-compatible server for Sluice (no database part):
# $SLUICE_DATABASE_URL's server when that is set, otherwise a private MariaDB
# under .dev/mariadb on a free loopback port, installed (Debian's
# mariadb-server) and started if needed. Idempotent; progress goes to stderr.
#   mysql.sh --running   exit 0 when no private server is needed or it runs already
#   mysql.sh --stop      stop the private server (if it runs)
set -euo pipefail
mode=${1:-}
cd "$(dirname "$0")/.."
root=$PWD
log() { echo "mysql.sh: $*" >&2; }

apt_install() {
  log "installing $* (Debian packages)"
  local sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq >&2
  # RUNLEVEL=1 keeps the package's own service from starting; we run a private instance.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_ apt-get install -y -qq "$@" >&2
}

if [[ -n "${SLUICE_DATABASE_URL:-}" && -z "${SLUICE_MYSQL_DIR:-}" ]]; then
  [[ -z $mode ]] || exit 0
  command -v mariadb >/dev/null || command -v mysql >/dev/null || apt_install mariadb-client
  # Strip the database path: callers create their own databases.
  sed -E 's#^([a-z]+://[^/]*).*#\1#' <<<"$SLUICE_DATABASE_URL"
  exit 0
fi

# SLUICE_MYSQL_DIR: another private instance (the fault tests run a second one).
dir=${SLUICE_MYSQL_DIR:-$root/.dev/mariadb}
data=$dir/data
sock=$dir/mysqld.sock
url() { echo "mysql://sluice:sluice@127.0.0.1:$(cat "$dir/port")"; }

running() {
  [[ -f $dir/pid && -f $dir/port ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null &&
    mariadb_client --protocol=socket -S "$sock" -uroot -e 'SELECT 1' >/dev/null 2>&1
}
mariadb_client() { if command -v mariadb >/dev/null; then mariadb "$@"; else mysql "$@"; fi; }

case $mode in
  --running) running; exit ;;
  --stop)
    if [[ -f $dir/pid ]] && kill "$(cat "$dir/pid")" 2>/dev/null; then
      log "stopping private MariaDB ($dir)"
      for _ in $(seq 1 60); do kill -0 "$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.5; done
    fi
    exit 0 ;;
  "") ;;
  *) log "unknown option $mode"; exit 2 ;;
esac

if running; then url; exit 0; fi

if ! command -v mariadbd >/dev/null && ! [[ -x /usr/sbin/mariadbd ]]; then
  apt_install mariadb-server mariadb-client
fi
mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
install_db=$(command -v mariadb-install-db || command -v mysql_install_db)

mkdir -p "$dir"
user_args=()
[[ $(id -u) -eq 0 ]] && user_args=(--user=root)
if [[ ! -d $data/mysql ]]; then
  log "initialising $data"
  rm -rf "$data"
  "$install_db" --no-defaults --datadir="$data" --auth-root-authentication-method=socket \
    --skip-test-db "${user_args[@]}" >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; exit 1; }
fi

# The same port as last time when it is free (URLs in a catalog keep working
# across restarts), else any free one.
port=$(node -e '
  const net = require("net"), want = Number(process.argv[1]) || 0;
  const listen = (p, fallback) => { const s = net.createServer();
    s.once("error", () => fallback ? listen(0, false) : process.exit(1));
    s.listen(p, "127.0.0.1", () => { console.log(s.address().port); s.close(); }); };
  listen(want, want !== 0);' "$(cat "$dir/port" 2>/dev/null || echo 0)")
echo "$port" >"$dir/port"
log "starting private MariaDB on 127.0.0.1:$port"
# innodb_flush_log_at_trx_commit=2: see README (every event is retried from
# the queue until acknowledged, so an OS crash cannot lose accepted events).
setsid "$mariadbd" --no-defaults --datadir="$data" --socket="$sock" --port="$port" \
  --bind-address=127.0.0.1 --pid-file="$dir/pid" --log-error="$dir/error.log" \
  --skip-log-bin --innodb-flush-log-at-trx-commit=2 --innodb-buffer-pool-size=512M \
  --max-connections=500 --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
  "${user_args[@]}" </dev/null >/dev/null 2>&1 &

for _ in $(seq 1 120); do
  if mariadb_client --protocol=socket -S "$sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    mariadb_client --protocol=socket -S "$sock" -uroot -e "
      CREATE USER IF NOT EXISTS 'sluice'@'127.0.0.1' IDENTIFIED BY 'sluice';
      GRANT ALL PRIVILEGES ON *.* TO 'sluice'@'127.0.0.1';"
    url
    exit 0
  fi
  sleep 0.5
done
log "MariaDB did not start; see $dir/error.log"
tail -20 "$dir/error.log" >&2 || true
exit 1
