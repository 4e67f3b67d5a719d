# Two entry points for a fresh machine (Python 3.11 + git): `make demo` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export UV_PYTHON := 3.11

.PHONY: bench-dispatcher bench-import setup demo dev test test-unit test-storage test-e2e lint typecheck contracts bench bench-quick clean

setup:
	@command -v uv >/dev/null 2>&1 || test -x "$(UV)" || python3 -m pip install --user --quiet uv
	$(UV) sync --frozen

demo: setup
	$(UV) run parley demo

dev: setup
	$(UV) run parley dev

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: setup
	$(UV) run mypy

contracts: setup
	$(UV) run lint-imports

test: lint typecheck contracts
	$(UV) run pytest -n 2 --dist loadfile -q

# Lanes to loop on while developing (the lane follows from the fixtures a test uses, see
# tests/conftest.py); `make test` above stays the full suite CI runs.
test-unit: setup
	$(UV) run pytest -m unit -n 2 -q

# SQLite first: PostgreSQL only for the tests that need its semantics (see tests/conftest.py).
test-storage: setup
	$(UV) run pytest -m "storage and not postgresql_twin" -n 2 -q

test-e2e: setup
	$(UV) run pytest -m e2e -n 2 --dist loadfile -q

clean:
	rm -rf .parley .pytest_cache .mypy_cache .ruff_cache

bench: setup
	$(UV) run python -m bench $(BENCH_ARGS)

bench-quick: setup
	$(UV) run python -m bench --quick $(BENCH_ARGS)

bench-dispatcher: setup
	$(UV) run python -m bench.dispatcher $(BENCH_ARGS)

bench-import: setup
	$(UV) run python -m bench.leads_import $(BENCH_ARGS)
