# tiffpipe: `make demo` sets everything up on a fresh machine and runs the pipeline locally
# on a generated sample; `make test` runs the tests (`make test-fast`: no Docker, nothing
# slow). Needs Python >= 3.11 (PYTHON=...) and, for the state machine validator, node + npm.
# The venv installs exactly requirements/test.lock (`make lock` remakes it).

PYTHON ?= python3
NPM ?= npm
VENV := .venv
VENV_STAMP := $(VENV)/.installed
LOCK := requirements/test.lock
# the lock's maker, in a venv of its own (never the project's)
LOCK_VENV := .lock-venv
UV_VERSION := 0.13.9
NODE_STAMP := node_modules/.installed
PYTEST_ARGS ?=
# more arguments of the lock's install (test-pythons: wheels only)
LOCK_PIP_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv $(VENV) python-check node demo test test-fast test-pythons lint lock clean

help:
	@echo "make demo    set up (the venv) and run the pipeline on a generated sample"
	@echo "make test    run all the tests (PYTEST_ARGS='-k foo' to pick)"
	@echo "make test-fast  the tests to run while working: no Docker, nothing slow"
	@echo "make test-pythons PYTHONS='python3.12 python3.13'  the lock, the demo and the unit"
	@echo "             tests on each of those Pythons (a venv each: .venv-3.12, ...)"
	@echo "make lock    remake $(LOCK) from pyproject.toml (keeps the versions it can)"
	@echo "make lint    ruff check"
	@echo "make clean   remove the venv, node_modules and caches"
	@echo "PYTHON=$(PYTHON) (any Python >= 3.11)"

# --- Python: the venv, rebuilt when pyproject.toml or the lock changes ---------------------

venv $(VENV): $(VENV_STAMP)

# that $(PYTHON) is there, runs and is new enough (said before anything is made)
define check_python
@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) not found: install Python >= 3.11 or run make PYTHON=/path/to/python3.11" >&2; \
	  exit 1; }
@$(PYTHON) -c pass >/dev/null 2>&1 || { \
	  echo "error: $(PYTHON) is on the PATH but does not run (a pyenv shim of a version pyenv" \
	       "has not selected?): give its path, e.g. make PYTHON=\$$(pyenv prefix 3.13)/bin/python3.13" >&2; \
	  exit 1; }
@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: tiffpipe needs Python >= 3.11, but $(PYTHON) is $$($(PYTHON) --version 2>&1);" \
	       "install a newer one and run make PYTHON=python3.11 (or newer)" >&2; \
	  exit 1; }
endef

# a PYTHON given on the command line (the README: make PYTHON=python3.12 demo) is checked
# even when the venv is up to date: a venv of another Python is refused, not used unsaid
python-check:
ifeq ($(origin PYTHON),command line)
	$(check_python)
	@if [ -x $(VENV)/bin/python ]; then \
	  want=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  have=$$($(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  if [ "$$want" != "$$have" ]; then \
	    echo "error: $(VENV) is Python $$have, not $(PYTHON) ($$want): run make clean, then" \
	         "make PYTHON=$(PYTHON) again (or make test-pythons PYTHONS=$(PYTHON): a venv of its" \
	         "own, beside this one)" >&2; \
	    exit 1; fi; fi
endif

$(VENV_STAMP): pyproject.toml $(LOCK) | python-check
	$(check_python)
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
	@# exactly the lock (every package pinned and hashed), then the project itself on top
	$(VENV)/bin/pip install --require-hashes $(LOCK_PIP_ARGS) -r $(LOCK)
	$(VENV)/bin/pip install --no-deps -e .
	@touch $@

# the lock of the test environment: pyproject.toml's dependencies and the dev extra, for
# every platform, with hashes. uv keeps the versions already in the lock when they still fit.
lock:
	@if [ ! -x $(LOCK_VENV)/bin/uv ]; then \
	  $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv==$(UV_VERSION); fi
	$(LOCK_VENV)/bin/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 \
	  --universal --generate-hashes --custom-compile-command "make lock" -o $(LOCK)

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

# the tiers are markers (tests/conftest.py): unit, engine, docker, slow
test-fast: $(VENV_STAMP) $(NODE_STAMP)
	@$(VENV)/bin/pytest -q -m "not docker and not slow" $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest: no tests collected (ok)"; exit 0; fi; \
	exit $$status

# the claim "any Python >= 3.11", checked cheaply on other Pythons (CI: .ci/run, after make
# test, for the versions pyproject.toml's classifiers name): for each, a venv of its own
# (.venv-3.12, ...) with exactly the lock, in wheels only (but pyvips: pure Python, its
# release has no wheel), then the demo and the unit tests (no engine, no Docker). Not a
# second test run: the engine and slow tests run on $(PYTHON) only (make test).
PYTHONS ?=
test-pythons: $(NODE_STAMP)
	@test -n "$(strip $(PYTHONS))" || { echo "error: give PYTHONS='python3.12 ...'" >&2; exit 1; }
	@for py in $(PYTHONS); do \
	  v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { \
	    echo "error: $$py does not run (a pyenv shim of a version pyenv has not selected?):" \
	         "give its path, e.g. PYTHONS=\$$(pyenv prefix 3.13)/bin/python3.13" >&2; exit 1; }; \
	  echo "==> Python $$v ($$py): the lock, the demo, the unit tests"; \
	  $(MAKE) --no-print-directory PYTHON=$$py VENV=.venv-$$v \
	    LOCK_PIP_ARGS="--only-binary=:all: --no-binary=pyvips" venv || exit 1; \
	  .venv-$$v/bin/tiffpipe demo --dir .venv-$$v/demo >/dev/null || { \
	    echo "error: tiffpipe demo failed on Python $$v" >&2; exit 1; }; \
	  .venv-$$v/bin/pytest -q -p no:cacheprovider -m "unit and not slow" $(PYTEST_ARGS) || exit 1; \
	done

lint: $(VENV_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .venv-* $(LOCK_VENV) node_modules .pytest_cache .ruff_cache *.egg-info build dist
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
