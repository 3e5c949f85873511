# The two commands of the README. Everything they need is installed on first use.
SHELL := bash

.PHONY: dev test test-backend bench db stop fmt lint

## Set up and run the whole pipeline locally (MariaDB, backend, edge worker), print a working curl.
dev:
	@scripts/dev.sh

## Set up and run every test (native, integration against MariaDB, end-to-end through workerd).
test:
	@scripts/test.sh

## Only the Rust tests (protocol, backend, edge natively, process-level e2e).
test-backend:
	@SLUICE_TEST_ONLY=rust scripts/test.sh

## Run the benchmarks (release builds); prints the table and writes BENCHMARKS.md.
bench:
	@scripts/bench.sh

## Print the URL of the MySQL server the scripts use (starting the private one if needed).
db:
	@scripts/mysql.sh

## Stop the private MariaDB and anything `make dev` left running.
stop:
	@scripts/stop.sh

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
