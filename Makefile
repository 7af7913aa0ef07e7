# tiffpipe: `make demo` sets everything up on a fresh machine and runs the pipeline locally
# on a generated sample; `make test` runs the tests. Needs Python >= 3.11 (PYTHON=...) and,
# for the state machine validator, node + npm.

PYTHON ?= python3
NPM ?= npm
VENV := .venv
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv $(VENV) node demo test lint clean

help:
	@echo "make demo    set up (venv, npm deps) and run the pipeline on a generated sample"
	@echo "make test    run the tests (PYTEST_ARGS='-k foo' to pick)"
	@echo "make lint    ruff check"
	@echo "make clean   remove the venv, node_modules and caches"
	@echo "PYTHON=$(PYTHON) (any Python >= 3.11)"

# --- Python: the venv, rebuilt when pyproject.toml changes --------------------------------

venv $(VENV): $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found: install Python >= 3.11 or run make PYTHON=/path/to/python3.11" >&2; \
	  exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: tiffpipe needs Python >= 3.11, but $(PYTHON) is $$($(PYTHON) --version 2>&1);" \
	       "install a newer one and run make PYTHON=python3.11 (or newer)" >&2; \
	  exit 1; }
	@if [ -x $(VENV)/bin/python ] && ! $(VENV)/bin/python -c \
	    'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "error: $(VENV) was made with an older Python: run make clean first" >&2; exit 1; fi
	@# a venv left without pip (a failed earlier attempt) is made again
	@if ! $(VENV)/bin/python -m pip --version >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  echo "$(PYTHON) -m venv $(VENV)"; \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
	    exit 1; }; \
	fi
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'
	@touch $@

# --- node: asl-validator (package.json), for tests/test_statemachine.py ------------------

node: $(NODE_STAMP)

$(NODE_STAMP): package.json $(wildcard package-lock.json)
	@command -v $(NPM) >/dev/null 2>&1 || { \
	  echo "error: npm not found: install node and npm (Debian/Ubuntu: apt-get install nodejs npm)" >&2; \
	  exit 1; }
	@if [ -f package-lock.json ]; then \
	  echo "$(NPM) ci"; $(NPM) ci --no-audit --no-fund; \
	else \
	  echo "$(NPM) install"; $(NPM) install --no-audit --no-fund; \
	fi
	@touch $@

# --- what the README runs ----------------------------------------------------------------

demo: $(VENV_STAMP)
	$(VENV)/bin/tiffpipe demo

# pytest exits 5 when it collects no tests: not a failure here
test: $(VENV_STAMP) $(NODE_STAMP)
	@$(VENV)/bin/pytest -q $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest: no tests collected (ok)"; exit 0; fi; \
	exit $$status

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache *.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
