"""MLflow for the ray_jobs: run resolution, params, the rank-0 tracker, registered-model downloads.

Every MLflow call of the jobs goes through here, except the pyfunc class MLflow itself loads
(``ray_jobs._mlflow_model``). Who logs what:

* the driver (entrypoint) opens the run before ``trainer.fit()``: it finds the MLflow run of this Ray
  run (tag ``anysat.run_key`` = ``<storage_path>/<name>``) or creates it, and logs params (flattened
  config without secrets + store versions + git commit) and the config YAML. Creating the run in the
  driver means a worker that dies before its first checkpoint does not leave an orphan run behind,
  and a resubmitted run name lands in the same MLflow run. While the job runs the driver refreshes
  the run's heartbeat tag (:class:`Heartbeat`); a run left RUNNING whose heartbeat stopped (its
  driver was killed, possibly before the first checkpoint) is closed as FAILED by the next
  submission of the same run name, which then continues it (same run id); a run whose heartbeat is
  fresh belongs to a live driver, and a second submission of its name is refused;
* rank 0 of the worker group logs metrics, preview plots and the final model through
  :class:`Tracker`; every other rank gets a no-op tracker.

Metric history stays free of duplicates across restarts: a resumed tracker reads the last step
already logged and drops anything at or before it (steps between the last checkpoint and a crash
were logged by the dead attempt and are re-run, not re-logged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import mlflow
import mlflow.artifacts
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.store.artifact.utils.models import get_model_name_and_version
from pydantic import BaseModel

from ray_jobs._mlflow_model import AnySatEncoderModel
from ray_jobs.config import ConfigError, TrainConfig
from ray_jobs.credentials import is_secret, redact

__all__ = ["Tracker", "Heartbeat", "open_run", "reopen_run", "download_model", "git_commit", "safe_params",
           "flatten", "is_secret", "RUN_KEY_TAG", "HEARTBEAT_TAG", "artifact_location"]

log = logging.getLogger(__name__)

RUN_KEY_TAG = "anysat.run_key"
HEARTBEAT_TAG = "anysat.driver_heartbeat"
"""Unix time of the driver's last sign of life, refreshed every :data:`HEARTBEAT_S` s while a job runs."""
HEARTBEAT_S = 30.0
STALE_S = 120.0
"""A RUNNING run whose heartbeat is older than this has no live driver (an orphan)."""
_MAX_PARAM_LEN = 6000  # MLflow's param value limit is 6000 characters


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> ``{"a.b.0.c": v}``; named list entries use their name."""
    out: dict[str, Any] = {}
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(x, dict) for x in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{v.get('name', i)}."))
    else:
        out[prefix[:-1]] = obj
    return out


def git_commit(path: str | os.PathLike | None = None) -> str:
    """Commit of the code being run: ``ANYSAT_GIT_COMMIT`` (set by CI/images, and because
    ``ray job submit`` ships the working dir without ``.git``) or ``git rev-parse``."""
    env = os.environ.get("ANYSAT_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or os.getcwd(), capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=path or os.getcwd(), capture_output=True, text=True, timeout=10)
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Drop anything that looks like a credential (by key), redact ``user:password@`` in URLs and
    known secret values, and stringify for MLflow."""
    out = {}
    for k, v in params.items():
        if is_secret(k):
            continue
        out[k] = redact("" if v is None else v)[:_MAX_PARAM_LEN]
    return out


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite-backed experiment live next to the database (MLflow's default,
    ``./mlruns`` of whatever process creates the experiment, would be a Ray worker's temp dir)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


def _close_orphan(client: MlflowClient, run, run_key: str) -> None:
    """``run`` is RUNNING: refuse when its driver is alive (fresh heartbeat), else close it as FAILED."""
    try:
        age = time.time() - float(run.data.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):  # a run of an older version, or a garbled tag: no live owner known
        age = None
    if age is not None and age < STALE_S:
        raise ConfigError(f"MLflow run {run.info.run_id} of {run_key} is running (its driver's last heartbeat was "
                          f"{max(age, 0):.0f} s ago); wait for it to end or stop it (it counts as gone "
                          f"{STALE_S:.0f} s after its last heartbeat), or use another name")
    client.set_terminated(run.info.run_id, status="FAILED")
    client.set_tag(run.info.run_id, "anysat.orphan_closed_at", f"{time.time():.0f}")
    log.warning("MLflow run %s of %s was left RUNNING by a driver that is gone (%s); closed it as FAILED, "
                "this submission continues it", run.info.run_id, run_key,
                f"last heartbeat {age:.0f} s ago" if age is not None else "no heartbeat")


def open_run(cfg: TrainConfig, extra_params: dict[str, Any] | None = None, resume: bool = True) -> str:
    """Find or create the MLflow run of this Ray run; returns its run id. The latest run of the same
    run key is continued when ``resume`` (the Ray run has checkpoints to resume from) or when it was
    left RUNNING by a driver that is gone (an orphan, closed as FAILED first); a RUNNING run with a
    live driver is a ConfigError. A new run gets the params and the config."""
    uri = cfg.mlflow.tracking_uri
    client = _client(uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        cfg.mlflow.experiment, artifact_location=artifact_location(uri, cfg.mlflow.experiment))
    run_key = f"{cfg.storage_path.rstrip('/')}/{cfg.name}"
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    orphan = bool(found) and found[0].info.status == "RUNNING"
    if orphan:
        _close_orphan(client, found[0], run_key)
    # Without checkpoints training restarts at step 0, so an old finished run of the same key is not
    # reused (its history would make the new steps look like duplicates); an orphan is: the steps it
    # logged are re-run deterministically, and its tracker drops them instead of logging them twice.
    if found and (resume or orphan):
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
        log.info("resuming MLflow run %s (%s)", run_id, run_key)
        return run_id
    run = client.create_run(exp_id, run_name=cfg.name, tags={RUN_KEY_TAG: run_key, "mlflow.source.name": "ray_jobs",
                                                                HEARTBEAT_TAG: f"{time.time():.3f}"})
    run_id = run.info.run_id
    params = {**flatten(cfg), **(extra_params or {})}
    params["git_commit"] = params.get("git_commit") or git_commit()
    items = sorted(safe_params(params).items())
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    cfg_dump = cfg.model_dump(mode="json")
    _strip_secrets(cfg_dump)
    client.log_text(run_id, yaml.safe_dump(cfg_dump, sort_keys=False), "config.yaml")
    log.info("MLflow run %s at %s", run_id, redact(uri))
    return run_id


def _strip_secrets(d: Any) -> None:
    """In place: values under secret-looking keys -> ``***``, credentials in strings redacted."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in list(items):
        if isinstance(k, str) and is_secret(k):
            d[k] = "***"
        elif isinstance(v, str):
            d[k] = redact(v)
        else:
            _strip_secrets(v)


class Heartbeat:
    """Context manager of the driver: sets the run's :data:`HEARTBEAT_TAG` now and every ``interval``
    seconds from a daemon thread until exit (a failed update is logged, never raised). No-op without
    a run id."""

    def __init__(self, uri: str | None, run_id: str | None, interval: float = HEARTBEAT_S):
        self.uri, self.run_id, self.interval = uri, run_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            _client(self.uri).set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
        except Exception as e:  # the tracking server may be briefly unreachable
            log.warning("MLflow heartbeat of run %s failed: %s", self.run_id, redact(e))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> "Heartbeat":
        if self.uri and self.run_id:
            self.beat()
            self._thread = threading.Thread(target=self._loop, name="mlflow-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class Tracker:
    """Rank-0 MLflow logger bound to one run; a disabled tracker ignores every call."""

    def __init__(self, uri: str | None, run_id: str | None, enabled: bool = True):
        self.enabled = bool(enabled and uri and run_id)
        self.uri, self.run_id = uri, run_id
        self.last_step = -1
        if self.enabled:
            self.client = _client(uri)
            self.client.update_run(run_id, status="RUNNING")

    def resume_guard(self, key: str = "train/loss") -> int:
        """Read the last step already in the history of ``key``; later logs at or before it are dropped."""
        if self.enabled:
            hist = self.client.get_metric_history(self.run_id, key)
            self.last_step = max((m.step for m in hist), default=-1)
        return self.last_step

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled or step <= self.last_step or not metrics:
            return
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, int(step))
                                                    for k, v in metrics.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        have = self.client.get_run(self.run_id).data.params
        items = [Param(k, v) for k, v in safe_params(params).items() if k not in have]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_figure(self, fig, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_figure(self.run_id, fig, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_encoder(self, state_dict: dict, model_config: dict, registered_model_name: str | None) -> None:
        """Log the encoder state dict (plain tensors, ``torch.load(weights_only=True)``) as an MLflow
        pyfunc model whose artifact is that file, and register it under ``registered_model_name``."""
        if not self.enabled:
            return
        with tempfile.TemporaryDirectory() as d:
            sd_path = Path(d) / "encoder_state_dict.pt"
            torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, sd_path)
            cfg_path = Path(d) / "model_config.yaml"
            cfg_path.write_text(yaml.safe_dump(model_config))
            self.client.log_artifact(self.run_id, str(sd_path), "encoder")
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pyfunc.log_model(
                    name="encoder_model", python_model=AnySatEncoderModel(),
                    artifacts={"state_dict": str(sd_path), "model_config": str(cfg_path)},
                    registered_model_name=registered_model_name,
                    # pinning requirements skips MLflow's slow dependency inference (a subprocess)
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pyyaml"],
                    code_paths=None)
            # start_run/end_run would mark the run FINISHED; the caller decides the final status
            self.client.update_run(self.run_id, status="RUNNING")

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def reopen_run(uri: str, run_id: str) -> Iterator[Tracker]:
    """A tracker on an existing (usually finished) run, which gets its status back afterwards: a
    later evaluation adds to the fine-tuning run without changing how it ended."""
    status = _client(uri).get_run(run_id).info.status
    tracker = Tracker(uri, run_id)  # marks the run RUNNING while it logs
    try:
        yield tracker
    finally:
        tracker.client.set_terminated(run_id, status=status)


def download_model(tracking_uri: str, uri: str) -> Path:
    """Download a logged or registered model (``runs:/...``, ``models:/<name>/<version|alias>``) to a
    local folder. ``models:/`` resolves against ``tracking_uri``'s registry, not the process default."""
    if uri.startswith("models:/"):
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        uri = client.get_model_version_download_uri(*get_model_name_and_version(client, uri))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
