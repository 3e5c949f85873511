# The two commands of the README. Everything they need is installed on first use.
SHELL := bash

.PHONY: dev test test-backend bench db stop fmt lint fuzz

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

FUZZ_SECONDS ?= 60

## Fuzz the edge request parser and the backend batch decoder, FUZZ_SECONDS each (README: Fuzzing).
fuzz:
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for target in edge_request backend_batch; do \
		mkdir -p fuzz/corpus/$$target && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run $$target fuzz/corpus/$$target fuzz/seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=1048576 -timeout=30 \
			-dict=fuzz/json.dict -print_final_stats=1 || exit 1; \
	done

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
