# The two commands that matter: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore

.PHONY: run test test-fast lint bench wheel clean

$(BIN)/leadflow: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "leadflow needs Python 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/leadflow
	$(BIN)/leadflow demo

# Every tier: tests/unit, tests/store, tests/flows (the Prefect test server starts here),
# tests/e2e. With LEADFLOW_TEST_DATABASE_URL set (CI), on PostgreSQL as well as SQLite.
# TEST_WORKERS processes (pytest-xdist): one runs the e2e tier from the start, the other the
# rest; TEST_WORKERS=0 runs everything in this process, in tier order.
TEST_WORKERS ?= 2
test: $(BIN)/leadflow
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The inner loop: tests/unit (pure logic) and tests/store (database), on SQLite only (the
# PostgreSQL variants deselected) and with no Prefect server: about 1.5 minutes, the unit
# tier alone under one. Run `make test` before you push: flows and e2e are not in here.
test-fast: $(BIN)/leadflow
	env -u LEADFLOW_TEST_DATABASE_URL $(BIN)/python -m pytest -q -k "not postgres" tests/unit tests/store

# Style, and the layering: the core imports no tasks/flows/app, tasks no flows/app, flows no app.
lint: $(BIN)/leadflow
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The package a host installs (docs/deploying.md): dist/leadflow-<version>-py3-none-any.whl,
# carrying the default rules and suites.
wheel: $(BIN)/leadflow
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .

bench: $(BIN)/leadflow
	$(BIN)/python bench/ingest.py --leads 100000

clean:
	rm -rf var .pytest_cache dist build
