# Developer tasks for fastapi-futurecalls; `make` (or `make help`) lists them.
#
# Targets that need PostgreSQL use $DATABASE_URL when it is set, and otherwise a
# throwaway local cluster for this checkout, started on demand by scripts/devdb.py.

VENV ?= .venv
PYTHON ?= python3
PORT ?= 8000
PYTEST_ARGS ?=

BIN := $(VENV)/bin

# The cluster script, with the virtualenv's Python once there is one: there it finds the
# PostgreSQL that the dev extra installs from PyPI when the system has none (so clean-up
# works on such a machine too).
DEVDB = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/devdb.py

# Prefix for recipe lines that need a database: resolves and exports DATABASE_URL.
# (Not `export DATABASE_URL=$$(...)`: export would hide a failure of devdb.py.)
WITH_DB = DATABASE_URL="$${DATABASE_URL:-$$($(DEVDB) ensure)}" && export DATABASE_URL &&

# $(call WITH_PG,16): the same, on PostgreSQL 16 in a cluster of its own (devdb.py --major:
# the system's 16 if it has one, else the pip wheel's), whatever DATABASE_URL says.
WITH_PG = FUTURECALLS_PG=$(1) && export FUTURECALLS_PG && \
  DATABASE_URL="$$($(DEVDB) ensure)" && export DATABASE_URL &&

.DEFAULT_GOAL := help
.PHONY: help venv pgbouncer chromium db db-stop db-destroy migrate run test test-pg16 test-pg18 test-pythons lint dist format docs bench clean

help: ## List the targets
	@echo 'usage: make TARGET [VENV=.venv] [PYTHON=python3] [PORT=8000] [PYTEST_ARGS=...]'
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV)/.installed ## Create the virtualenv with the package (editable) and dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The pooler tests (tests/integration/test_pgbouncer.py) run a real pgbouncer. Installed
# from the system's packages when it is missing and we can (root with apt-get).
pgbouncer: ## Install pgbouncer for the pooler tests if missing (root with apt-get)
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing pgbouncer (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
	      || echo "warning: could not install pgbouncer; the pooler tests will fail"; \
	  else \
	    echo "warning: pgbouncer is missing; the pooler tests will fail (apt-get install pgbouncer)"; \
	  fi; }

# The dashboard's browser test (tests/browser) drives a real headless Chromium through
# Selenium and Debian's chromedriver; installed the same way as pgbouncer.
chromium: ## Install chromium and chromedriver for the browser test if missing (root with apt-get)
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	      || echo "warning: could not install chromium; the browser test will fail"; \
	  else \
	    echo "warning: chromium is missing; the browser test will fail (apt-get install chromium chromium-driver)"; \
	  fi; }

db: ## Start the dev PostgreSQL cluster if needed; print DATABASE_URL
	@$(WITH_DB) echo "$$DATABASE_URL"

db-stop: ## Stop the dev PostgreSQL cluster
	$(DEVDB) stop

db-destroy: ## Stop the dev PostgreSQL cluster and delete its data
	$(DEVDB) destroy

migrate: venv ## Apply the migrations (alembic upgrade head)
	$(WITH_DB) $(BIN)/alembic upgrade head

# The workers share a fresh PROMETHEUS_MULTIPROC_DIR, so that /metrics counts the runs of
# both whichever worker answers (prometheus-client's multiprocess mode).
run: migrate ## Serve example_app with 2 uvicorn workers on 127.0.0.1:PORT
	$(WITH_DB) PROMETHEUS_MULTIPROC_DIR="$$(mktemp -d)" && export PROMETHEUS_MULTIPROC_DIR && \
	  $(BIN)/uvicorn example_app.app:app --workers 2 --host 127.0.0.1 --port $(PORT)

test: venv pgbouncer chromium ## Run the tests (extra pytest options: PYTEST_ARGS=...)
	$(WITH_DB) $(BIN)/pytest $(PYTEST_ARGS)

test-pg16: venv pgbouncer chromium ## Run the tests on PostgreSQL 16 (the pip wheel's if the system has none)
	$(call WITH_PG,16) $(BIN)/pytest $(PYTEST_ARGS)

test-pg18: venv pgbouncer chromium ## Run the tests on PostgreSQL 18 (likewise; not run by CI)
	$(call WITH_PG,18) $(BIN)/pytest $(PYTEST_ARGS)

# Every other Python the package's classifiers name, each in a virtualenv of its own
# (.venv-3.X), found as python3.X on PATH or under pyenv: the unit and integration tests
# (the fault and browser tests exercise the same code and run on the default Python).
# One that is not found is reported, not failed: CI checks what the machine has.
OTHER_PYTHONS ?= 3.12 3.13
TEST_PYTHONS_ARGS ?= tests/unit tests/integration example_app

test-pythons: pgbouncer ## Run the unit and integration tests on Python 3.12 and 3.13 where found
	@set -e; for version in $(OTHER_PYTHONS); do \
	  python=; for candidate in $$(command -v python$$version) \
	      $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$version.*/bin/python 2>/dev/null | sort -rV); do \
	    if "$$candidate" -c 'import sys' 2>/dev/null; then python="$$candidate"; break; fi; \
	  done; \
	  if [ -z "$$python" ]; then echo "warning: Python $$version not found; not tested"; continue; fi; \
	  echo "== Python $$version: $$python"; \
	  $(MAKE) --no-print-directory test VENV=.venv-$$version PYTHON="$$python" \
	    PYTEST_ARGS="$(TEST_PYTHONS_ARGS) $(PYTEST_ARGS)"; \
	done

lint: venv ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The wheel and sdist into dist/ (isolated build with hatchling), then their metadata
# checked; tests/integration/test_wheel.py installs the wheel into a fresh virtualenv.
dist: venv ## Build the wheel and sdist into dist/ and twine-check them
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

format: venv ## Apply ruff's formatting and autofixes
	$(BIN)/ruff check --fix --exit-zero .
	$(BIN)/ruff format .

# The documentation site (mkdocs.yml, docs/): --strict makes any warning an error, so a
# broken link or a reference to a name that no longer exists fails. Offline: no web
# fonts, no CDN; open site/index.html from disk.
docs: $(VENV)/.docs-installed ## Build the documentation site into site/ (mkdocs --strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

bench: venv ## Run the benchmarks (installs the bench extra)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(WITH_DB) $(BIN)/python -m bench

clean: ## Remove the virtualenv, caches and build output (not the dev database)
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist site *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
