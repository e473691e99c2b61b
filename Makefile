# Two commands do all setup on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-daemon

.PHONY: demo test lint bench bench-quick system-deps demo-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

# What the tests need (Chromium, PostgreSQL) on top of what the daemon needs (demo-deps).
system-deps:
	PYTHON=$(PYTHON) bash .ci/system-deps test

demo-deps:
	PYTHON=$(PYTHON) bash .ci/system-deps demo

# The demo needs the daemon alone: no test extras (pytest, playwright, linters).
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

demo: demo-deps $(DEMO_STAMP)
	$(VENV)/bin/agentd demo

# Lint and type errors fail the test run before any test starts.
test: system-deps $(STAMP) lint
	$(VENV)/bin/pytest -q

# Lint (ruff), format check (ruff format) and type check (mypy: daemon and control, see pyproject).
lint: $(STAMP)
	$(VENV)/bin/ruff check daemon control tests bench
	$(VENV)/bin/ruff format --check daemon control tests bench
	$(VENV)/bin/mypy

# Every benchmark side by side with its peers; writes the results table into README.md.
bench: system-deps $(STAMP)
	$(VENV)/bin/python bench/run_all.py --write-readme

bench-quick: $(STAMP)
	$(VENV)/bin/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
