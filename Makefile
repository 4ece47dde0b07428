# `make run` and `make test` work on a fresh clone: each creates .venv and installs what it needs.
# DVC is a tool beside the pipeline, not a library in it: it gets its own environment, .venv-dvc
# (pinned by constraints-dvc.txt), and the pipeline runs it as a command. Its hydra/omegaconf pin
# antlr4 4.9, while Dagster's asset-selection grammar needs antlr4 4.13 (constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DVC_VENV := .venv-dvc
export DAGSTER_HOME := $(CURDIR)/.dagster
RUN_CONFIG ?=
UI_PORT ?= 3000
TENSORBOARD_PORT ?= 6006
# The console's log level for `make run` (the job's default run config reads it): DEBUG shows every
# Dagster engine event; the run's event log keeps them all whatever this says.
LOG_LEVEL ?= INFO

.PHONY: run test test-fast ui tensorboard install check-env clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	@# A .venv made before DVC moved to $(DVC_VENV) still holds it, and its antlr4 pin breaks `pip check`.
	$(BIN)/pip uninstall --quiet --yes dvc hydra-core omegaconf 2>/dev/null || true
	$(BIN)/pip install --quiet torch==2.13.0 -c constraints.txt
	$(BIN)/pip install --quiet -e '.[test]' -c constraints.txt
	touch $@

$(DVC_VENV)/.installed: constraints-dvc.txt
	$(PYTHON) -m venv $(DVC_VENV)
	$(DVC_VENV)/bin/pip install --quiet --upgrade pip
	$(DVC_VENV)/bin/pip install --quiet dvc -c constraints-dvc.txt
	touch $@

install: $(VENV)/.installed $(DVC_VENV)/.installed

# Both environments are consistent: every installed package's requirements are met.
check-env: install
	$(BIN)/python -m pip check
	$(DVC_VENV)/bin/python -m pip check

# The job, then its closing summary (`rlhf summary`, read from the run's event log); `make run` exits
# with the job's exit code. The invocation tag lets the summary find this run, not another one.
run: install
	@mkdir -p $(DAGSTER_HOME)
	@invocation=make-$$$$-$$(date +%s); status=0; \
	RLHF_LOG_LEVEL=$(LOG_LEVEL) $(BIN)/dagster job execute -m pipeline.definitions -j rlhf_pipeline \
		$(if $(RUN_CONFIG),-c $(RUN_CONFIG)) --tags "{\"rlhf/invocation\": \"$$invocation\"}" || status=$$?; \
	$(BIN)/rlhf summary --invocation $$invocation || true; \
	exit $$status

test: check-env
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

ui: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -m pipeline.definitions --host 127.0.0.1 --port $(UI_PORT)

# TensorBoard over every artifact: each training stage's curves are in artifacts/<stage>/<version>/tensorboard/.
tensorboard: install
	$(BIN)/tensorboard --logdir $${RLHF_ARTIFACTS_ROOT:-artifacts} --host 127.0.0.1 --port $(TENSORBOARD_PORT)

clean:
	rm -rf artifacts .dagster/storage .dagster/history .dagster/schedules .dagster/logs
