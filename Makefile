# `make run` and `make test` work on a fresh clone: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster
RUN_CONFIG ?=
UI_PORT ?= 3000

.PHONY: run test test-fast ui install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet torch==2.13.0 -c constraints.txt
	$(BIN)/pip install --quiet -e '.[test]' -c constraints.txt
	touch $@

install: $(VENV)/.installed

run: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster job execute -m pipeline.definitions -j rlhf_pipeline $(if $(RUN_CONFIG),-c $(RUN_CONFIG))

test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

ui: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -m pipeline.definitions --host 127.0.0.1 --port $(UI_PORT)

clean:
	rm -rf artifacts .dagster/storage .dagster/history .dagster/schedules .dagster/logs
