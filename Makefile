# The two commands of the README: `make run` and `make test`. Everything lands in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

PROJECT_FILES := pyproject.toml plugins/taskd-example/pyproject.toml

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# taskd with every driver, and the example plugin.
$(VENV)/.run-installed: $(PROJECT_FILES) | $(BIN)/python
	$(BIN)/python -m pip install -q -e . -e plugins/taskd-example
	touch $@

# ...plus what the tests and linters need.
$(VENV)/.dev-installed: $(VENV)/.run-installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

## run: install into .venv and start taskd in the foreground (embedded SQLite unless CONFIG=file)
run: $(VENV)/.run-installed
	$(BIN)/taskd start $(if $(CONFIG),-c $(CONFIG))

## test: install what the tests need, lint, and run the whole suite
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 3 -m "not alone"  # three workers: the tests mostly wait on servers
	$(BIN)/python -m pytest -m alone  # those that stop a shared server, after the rest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: throughput and latency figures (see README.md, Performance)
bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
