# keymeter: `make run` serves the app, `make test` runs every test. See README.md.
SHELL := /bin/bash
unexport LEPTOS_OUTPUT_NAME

.PHONY: run test setup build fmt lint bench reliability

run:
	@bash scripts/run.sh

test:
	@bash scripts/test.sh

setup:
	@bash scripts/setup.sh

build:
	@bash scripts/build.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy -q --all-targets -- -D warnings

bench:
	@bash scripts/bench.sh

reliability:
	@bash scripts/reliability.sh
