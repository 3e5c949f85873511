#!/usr/bin/env bash
# `make bench`: release builds, the private MariaDB, every benchmark; prints the
# table and writes it to BENCHMARKS.md. Bounded (a few minutes), loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
scripts/edge-toolchain.sh >/dev/null
mysql=$(scripts/mysql.sh)
cargo build --release -p sluice-backend -p sluice-bench
scripts/build-edge.sh >/dev/null
exec target/release/sluice-bench --mysql "$mysql" --backend target/release/backend \
  --runs "${SLUICE_BENCH_RUNS:-3}" --events "${SLUICE_BENCH_EVENTS:-200000}" \
  --storage-events "${SLUICE_BENCH_STORAGE_EVENTS:-1000000}" \
  --direct-seconds "${SLUICE_BENCH_DIRECT_SECONDS:-15}" \
  --write-md BENCHMARKS.md --command "make bench" "$@"
