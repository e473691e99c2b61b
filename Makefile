# Two commands do all setup on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

system-deps:
	bash .ci/system-deps

demo: system-deps $(STAMP)
	$(VENV)/bin/agentd demo

test: system-deps $(STAMP)
	$(VENV)/bin/pytest -q

bench: system-deps $(STAMP)
	$(VENV)/bin/python bench/queue_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
