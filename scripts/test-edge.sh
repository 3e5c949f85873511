#!/usr/bin/env bash
# Edge tests: the native unit tests of sluice-edge, then the end-to-end tests
# (tests/edge/*.test.mjs: the built worker in Miniflare with real KV, queues
# and DLQ, the real backend binary, MariaDB). Assumes scripts/edge-toolchain.sh
# has run and the backend is built (`cargo build -p sluice-backend`).
# MySQL server: $SLUICE_TEST_MYSQL_URL, else scripts/mysql.sh, else root@127.0.0.1:3306.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "test-edge: native unit tests"
cargo test -p sluice-edge

[[ -x target/debug/backend ]] || { echo "test-edge: target/debug/backend is missing: cargo build -p sluice-backend" >&2; exit 1; }
command -v mariadb >/dev/null || { echo "test-edge: the mariadb client is missing: scripts/edge-toolchain.sh" >&2; exit 1; }

if [[ -z "${SLUICE_TEST_MYSQL_URL:-}" ]]; then
  if [[ -x scripts/mysql.sh ]]; then SLUICE_TEST_MYSQL_URL=$(scripts/mysql.sh); else SLUICE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306; fi
fi
export SLUICE_TEST_MYSQL_URL

echo "test-edge: building the worker"
scripts/build-edge.sh

# tests/edge/segment.test.mjs drives @segment/analytics-next in Chromium.
CHROMIUM_PATH=${CHROMIUM_PATH:-$(scripts/browser.sh)}
export CHROMIUM_PATH

echo "test-edge: end-to-end tests"
# Each file bounds its own waits; this bounds the whole run, and the harness
# kills the backend and workerd it started when it is stopped.
timeout --signal=TERM --kill-after=20 900 \
  node --test --test-concurrency=1 --test-timeout=300000 tests/edge/*.test.mjs
