# `make demo` and `make test` each create .venv on first use and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: install demo test lint clean bench

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fedfusion simulate dual-center --out $(DEMO_OUT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check models client server strategies simulation tests benchmarks
	$(VENV)/bin/ruff format --check models client server strategies simulation tests benchmarks

# The benchmark suite (docs/performance.md): benchmarks/results/*.json and SUMMARY.md.
bench: install
	OMP_NUM_THREADS=1 PYTHONPATH=. $(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
