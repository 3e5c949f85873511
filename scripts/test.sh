#!/usr/bin/env bash
# `make test`: install what is missing, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

command -v cargo >/dev/null || { echo "test.sh: cargo is required (install Rust with rustup)" >&2; exit 1; }

SLUICE_TEST_MYSQL_URL=$(scripts/mysql.sh)
export SLUICE_TEST_MYSQL_URL
echo "test.sh: MySQL server for tests: $(sed -E "s#//([^:@/]*):[^@]*@#//\1:***@#" <<<"$SLUICE_TEST_MYSQL_URL")"

echo "test.sh: building the backend"
cargo build -p sluice-backend
echo "test.sh: Rust tests (protocol, backend against MariaDB, edge natively, e2e processes)"
cargo test --workspace

if [[ ${SLUICE_TEST_ONLY:-} != rust && -x scripts/test-edge.sh ]]; then
  echo "test.sh: edge end-to-end tests (workerd via miniflare)"
  scripts/edge-toolchain.sh
  scripts/test-edge.sh
fi
