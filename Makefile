# mqbroker: the two commands on a fresh machine are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5672
DATA_DIR ?= ./data
MANAGEMENT_PORT ?= 15672
PYTEST_ARGS ?=

.PHONY: run test venv dev stress bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed

dev: $(VENV)/.dev-installed

run: venv
	$(BIN)/mqbroker serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR) --management-port $(MANAGEMENT_PORT)

test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

stress: dev
	$(BIN)/python -m pytest -m stress $(PYTEST_ARGS)

bench: dev
	$(BIN)/python -m mqbroker.perf.bench $(BENCH_ARGS)
	$(BIN)/python -m mqbroker.bench.cluster

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
