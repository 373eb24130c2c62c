# Two commands a fresh machine needs (README): `make run` (the default job) and `make test`.
# Each creates .venv and installs the project on first use. torch is installed first and pinned to 2.13.0 so that
# pip takes the CPU wheel where one is provided locally, instead of resolving a multi-GB CUDA build.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
TORCH     ?= torch==2.13.0
# Use the shared development datasets when they sit beside the checkout; otherwise readers download from GroupLens.
SHARED    := $(abspath ../shared/datasets)
export RECSYS_DATA_DIR ?= $(if $(wildcard $(SHARED)),$(SHARED),)
ARGS      ?=

.PHONY: setup run test bench ui clean
setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python run.py $(ARGS)

# --durations: the slowest tests are printed at the end (the suite's time goal: well under 15 min on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=25 $(ARGS)

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath mlruns/mlflow.db) --workers 1

clean:
	rm -rf outputs multirun .pytest_cache
