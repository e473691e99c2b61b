# Two commands do all setup on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick system-deps clean

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

# Every benchmark side by side with its peers; writes the results table into README.md.
bench: system-deps $(STAMP)
	$(VENV)/bin/python bench/run_all.py --write-readme

bench-quick: $(STAMP)
	$(VENV)/bin/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
