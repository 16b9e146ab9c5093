"""One MLflow run per inference job (``embed``, ``predict``): what ran on what, how fast, where
the output went. Its own experiment (``anysat-inference`` by default), never the training run's, so
a fine-tuning run's history only holds training and evaluation."""

from __future__ import annotations

import logging
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ray_jobs.credentials import redact
from ray_jobs.tracking import artifact_location, git_commit, safe_params

__all__ = ["log_inference"]

log = logging.getLogger(__name__)


def log_inference(tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any],
                  metrics: dict[str, float], tags: dict[str, str]) -> str:
    """A finished run with ``params``, ``metrics`` and ``tags``; returns its id."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=artifact_location(tracking_uri, experiment))
    run = client.create_run(exp_id, run_name=run_name, tags={"mlflow.source.name": "ray_jobs", **tags})
    items = sorted(safe_params({**params, "git_commit": git_commit()}).items())
    now = int(time.time() * 1000)
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    log.info("inference run %s logged to %s", run.info.run_id, redact(tracking_uri))
    return run.info.run_id
