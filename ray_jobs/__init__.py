"""Ray Train / Ray Data jobs on anysat-ray stores: ``pretrain``, ``finetune``, ``evaluate``, ``embed``."""

import os

# MLflow 3 sends usage telemetry by default; training clusters are often offline and it adds latency.
# Set for every process that runs a job (drivers, Ray Train workers, Ray Data tasks alike).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
