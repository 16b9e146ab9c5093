# anysat-ray: every target works from a fresh clone; `.venv` is created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATASET ?= planted
RAW ?= data/raw/$(DATASET)
OUT ?= data/stores
TILES ?=

.PHONY: venv test demo bench bench-model bench-ingest bench-train sample-data ingest clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: bench-model bench-ingest bench-train

bench-model: $(STAMP)
	$(PY) benchmarks/bench_model.py --out benchmarks/results/model.json

demo: $(STAMP)
	$(PY) -m infra.demo

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results

# --- local stack (infra/local_stack.py): Ray head + MLflow server + S3 API on 127.0.0.1 ---
MLFLOW_UI_PORT ?= 5001

.PHONY: up down mlflow-ui

up: $(STAMP)
	$(PY) -m infra.local_stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m infra.local_stack down; else echo "no $(VENV): nothing to stop"; fi

# UI over the sqlite store the training service writes when MLFLOW_TRACKING_URI is unset; 5001
# because 5000 is the stack's own MLflow server.
mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

# -- data: miniature archives, ingest, ingest benchmark (issue 3) ---------------------------------
sample-data: $(STAMP)
	$(PY) -m pipelines.samples --dataset $(DATASET) --out $(RAW) $(if $(TILES),--tiles $(TILES))

ingest: $(STAMP)
	$(PY) -m pipelines.ingest --dataset $(DATASET) --raw $(RAW) --out $(OUT)

bench-ingest: $(STAMP)
	$(PY) benchmarks/bench_ingest.py --out benchmarks/results/ingest.json

# -- training service (issue 4): loader vs model vs full-trainer throughput ------------------------
bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py --stores $(OUT) --out benchmarks/results/train.json
