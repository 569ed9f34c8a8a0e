# Two commands do all the set-up on a fresh machine:
#   make run   - venv + install, then download -> prepare -> train -> register -> serve
#   make test  - venv + install, then the whole test suite (the command CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PhysioNet by default; this machine's local mirror when it is there (override: make run PHYSIONET_URL=...)
PHYSIONET_URL ?= $(if $(wildcard ../shared/physionet/README.md),file://$(abspath ../shared/physionet)/,https://physionet.org/files/)
export ECG_PHYSIONET_URL ?= $(PHYSIONET_URL)
# Extra `ecg train` options; one torch thread is fastest on a small shared CPU (measured).
TRAIN_ARGS ?= --num-threads 1
# Extra `ecg train-record` options (e.g. --epochs 5 for a quicker first run).
RECORD_ARGS ?= --num-threads 1
# PyTorch's CPU wheel index, for machines without a local torch 2.13.0 CPU wheel.
TORCH_INDEX ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run data train serve test test-all lint bench stack mlflow-ui notebooks clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first, pinned (an unpinned torch would pull gigabytes of CUDA packages). This project's
	# machines hold a local CPU wheel of it; elsewhere: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
	$(BIN)/pip install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(BIN)/.installed

data: install
	$(BIN)/ecg download mitdb
	$(BIN)/ecg download ptb-xl
	$(BIN)/ecg download ptbdb
	$(BIN)/ecg download svdb
	$(BIN)/ecg prepare mitdb
	$(BIN)/ecg prepare ptb-xl

train: data
	$(BIN)/ecg train --dataset mitdb --cell gru --register $(TRAIN_ARGS)
	$(BIN)/ecg train --dataset mitdb --cell lstm --register $(TRAIN_ARGS)
	# The beat-sequence model outranks the single-beat ones (pipeline/registry.py), so it ends as the arrhythmia champion.
	$(BIN)/ecg train-beats --register
	# Heart disease: the CRNN record model (any lead subset, optional age/sex), the recipe behind
	# bench/ptbxl_research.md (20 epochs, ~5 min on a quiet 2-core machine); fold 10 read once.
	$(BIN)/ecg train-record --register $(RECORD_ARGS)

run: train serve

serve: install
	$(BIN)/ecg serve --host $(HOST) --port $(PORT)

# MLflow's UI on the local store; `--app-name ecg` (pipeline/stack/mlflow_app.py) opens experiments
# on the runs table (model training) unless this browser chose GenAI on the UI's switch.
mlflow-ui: install
	$(BIN)/mlflow ui --app-name ecg --backend-store-uri sqlite:///mlflow.db --port 5000

# JupyterLab on notebooks/ (http://127.0.0.1:$(NOTEBOOK_PORT)/lab; the token is in the log line)
NOTEBOOK_PORT ?= 8888
notebooks: install
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port $(NOTEBOOK_PORT) --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root)

test: install
	$(BIN)/pytest -m "not slow" -n 2

test-all: install
	$(BIN)/pytest -n 2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy models pipeline service bench
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.prepare_mitdb
	$(BIN)/python -m bench.serving

stack: install
	$(BIN)/python -m pipeline.stack $(STACK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
