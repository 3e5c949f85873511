#!/usr/bin/env bash
# `make test`: install what is missing, then run every test.
#   SLUICE_TEST_ONLY=rust   only the cargo tests
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

command -v cargo >/dev/null || { echo "test.sh: cargo is required (install Rust with rustup)" >&2; exit 1; }

# npm packages first: the backend bundles its dashboard with them at build time.
scripts/edge-toolchain.sh

# A private MariaDB started only for the tests is stopped when they end;
# one that `make dev` started keeps running until `make stop`.
if ! scripts/mysql.sh --running; then
  trap 'scripts/mysql.sh --stop' EXIT
fi
SLUICE_TEST_MYSQL_URL=$(scripts/mysql.sh)
export SLUICE_TEST_MYSQL_URL
echo "test.sh: MySQL server for tests: $(sed -E "s#//([^:@/]*):[^@]*@#//\1:***@#" <<<"$SLUICE_TEST_MYSQL_URL")"

echo "test.sh: building the backend"
cargo build -p sluice-backend
echo "test.sh: Rust tests (protocol, backend against MariaDB, edge natively, e2e processes)"
cargo test --workspace
echo "test.sh: schemathesis from the OpenAPI description against a backend (tests/tests/openapi.rs)"
SLUICE_SCHEMATHESIS=$(scripts/schemathesis.sh)
export SLUICE_SCHEMATHESIS
cargo test -p sluice-e2e --test openapi -- --ignored schemathesis_finds_nothing

[[ ${SLUICE_TEST_ONLY:-} == rust ]] && exit 0

echo "test.sh: operator's kit (deploy/: promtool checks the rules, their tests and the dashboard's queries)"
node scripts/check-deploy.mjs

echo "test.sh: edge end-to-end tests (workerd via miniflare)"
scripts/test-edge.sh

echo "test.sh: dashboard in a real browser"
CHROMIUM_PATH=$(scripts/browser.sh)
export CHROMIUM_PATH
timeout --signal=TERM --kill-after=20 600 node --test --test-concurrency=1 tests/dashboard/*.test.mjs
