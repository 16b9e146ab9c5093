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
	$(PY) -m pytest -q --durations=25 tests

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
# VARIANT= writes an archive variant users hold (pastis-r, flair-repackaged, ai2, ...);
# `python -m pipelines.samples --dataset X --out Y --list-variants` lists them.
sample-data: $(STAMP)
	$(PY) -m pipelines.samples --dataset $(DATASET) --out $(RAW) $(if $(TILES),--tiles $(TILES)) $(if $(VARIANT),--variant $(VARIANT))

# Exit status. `python -m pipelines.ingest` returns 0 (every listed tile is in the store), 2 (usage
# error, nothing written) or 3 (partial: the store is complete and usable but some tiles were
# quarantined, see <OUT>/<DATASET>.zarr/quarantine.json). GNU make itself can only exit 0, 1 (-q
# only) or 2, so `make ingest` exits 0 when the ingest returned 0 and 2 for any other code; the
# recipe prints one line with the ingest's own code and meaning (infra/exit_status.py) before
# make's "*** [ingest] Error N". Scripts that must tell 2 from 3 run `python -m pipelines.ingest`.
# INGEST_ARGS passes further options, e.g. INGEST_ARGS="--overwrite" or "--executor local".
INGEST_ARGS ?=
INGEST_CMD = $(PY) -m pipelines.ingest --dataset $(DATASET) --raw $(RAW) --out $(OUT) $(INGEST_ARGS)

ingest: $(STAMP)
	@echo '$(INGEST_CMD)'
	@rc=0; $(INGEST_CMD) || rc=$$?; \
	  $(PY) -m infra.exit_status ingest $$rc --dataset '$(DATASET)' --out '$(OUT)'; exit $$rc

bench-ingest: $(STAMP)
	$(PY) benchmarks/bench_ingest.py --out benchmarks/results/ingest.json

# -- training service (issues 4, 15): loader vs decode, token budgets, model, full trainer ---------
# The loader is measured on 2,000 PLANTED and 800 TreeSatAI-TS sample tiles, and its memory again on
# 8,000 PLANTED tiles (built once under BENCH_DIR, git-ignored); `make bench-train BENCH_ONLY=loader`
# runs only the loader part.
BENCH_DIR ?= data/bench
BENCH_ONLY ?=
bench-train: $(STAMP)
	@for spec in stores:planted:2000 stores:treesatai-ts:800 stores-4x:planted:8000; do \
	  s=$${spec%%:*}; rest=$${spec#*:}; d=$${rest%%:*}; n=$${rest##*:}; \
	  test -e $(BENCH_DIR)/$$s/$$d.zarr && continue; \
	  $(PY) -m pipelines.samples --dataset $$d --out $(BENCH_DIR)/raw-$$s/$$d --tiles $$n || exit 1; \
	  $(PY) -m pipelines.ingest --dataset $$d --raw $(BENCH_DIR)/raw-$$s/$$d --out $(BENCH_DIR)/$$s || exit 1; \
	  rm -rf $(BENCH_DIR)/raw-$$s/$$d; \
	done
	$(PY) benchmarks/bench_train.py --stores $(BENCH_DIR)/stores --scale-stores $(BENCH_DIR)/stores-4x \
	  --out benchmarks/results/train.json $(foreach p,$(BENCH_ONLY),--only $(p))

# -- the paper's downstream protocol (issue 11): sample data for all 11 datasets, a tiny pretraining,
# then all 16 experiments (ray_jobs.sweep) from that checkpoint and from scratch, on CPU, under one
# MLflow parent run per sweep in $(SWEEP_DIR)/mlflow.db; the tables land in $(SWEEP_DIR)/tables/.
SWEEP_DIR ?= data/sweep
SWEEP_STEPS ?= 4
SWEEP_FOLDS ?= 1
SWEEP_ENCODERS ?= checkpoint scratch
SWEEP_DATASETS := treesatai-ts pastis-hd flair planted s2naip-urban bradd-s1ts sickle timesen2crop sen1floods11 \
	so2sat hls-burn-scars
SWEEP_ROOT = $(CURDIR)/$(SWEEP_DIR)
SWEEP_COMMON = --set data.root=$(SWEEP_ROOT)/stores --set storage_path=$(SWEEP_ROOT)/runs \
	--set mlflow.tracking_uri=sqlite:///$(SWEEP_ROOT)/mlflow.db --set train.max_steps=$(SWEEP_STEPS) \
	--set use_gpu=false --set model.size=tiny
# The 512 x 512 px HLS and Sen1Floods11 tiles at full size need ~8 GB per sample on CPU: crop them here.
SWEEP_SETS = $(SWEEP_COMMON) --set num_workers=1 --set train.cpus_per_worker=1 --set data.read_num_cpus=0.25 \
	--set data.datasets.0.batch_size=2 --set mlflow.log_model=false \
	--set 'hls-burn-scars-*:data.datasets.0.crop={hls: 128}' \
	--set 'sen1floods11-*:data.datasets.0.crop={s2: 128, s1: 128}'

.PHONY: sweep-data sweep-all

sweep-data: $(STAMP)
	@for d in $(SWEEP_DATASETS); do \
	  test -d $(SWEEP_DIR)/raw/$$d || $(PY) -m pipelines.samples --dataset $$d --out $(SWEEP_DIR)/raw/$$d || exit 1; \
	  $(PY) -m pipelines.ingest --dataset $$d --raw $(SWEEP_DIR)/raw/$$d --out $(SWEEP_DIR)/stores || exit 1; \
	done

sweep-all: sweep-data
	@start=$$(date +%s); \
	$(PY) -m ray_jobs.pretrain --config configs/pretrain/geoplex-tiny.yaml $(SWEEP_COMMON) --set name=sweep-geoplex-tiny \
	  --set mlflow.registered_model_name=null || exit 1; \
	rc=0; for enc in $(SWEEP_ENCODERS); do \
	  $(PY) -m ray_jobs.sweep --experiments all --folds $(SWEEP_FOLDS) --name sweep-$$enc --out $(SWEEP_DIR)/tables/$$enc \
	    $(SWEEP_SETS) --set encoder.source=$$enc --set encoder.uri=$(SWEEP_ROOT)/runs/sweep-geoplex-tiny || rc=1; \
	done; \
	echo "sweep-all: $$(( $$(date +%s) - start )) s (tables: $(SWEEP_DIR)/tables/*/paper_table.md)"; exit $$rc

# -- scene inference (issue 14): peak memory and time at 1x, 4x, 16x the scene area -------------------
.PHONY: bench-predict
bench-predict: $(STAMP)
	$(PY) benchmarks/bench_predict.py --out benchmarks/results/predict.json
