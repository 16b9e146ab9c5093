"""ray_jobs.tracking without Ray: params filtering, run reuse, duplicate-free metric history, orphan runs."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from ray_jobs.config import ConfigError, load_config, resolve_paths
from ray_jobs.tracking import HEARTBEAT_TAG, RUN_KEY_TAG, Heartbeat, Tracker, open_run, safe_params
from ray_jobs_helpers import TINY


def test_safe_params_drop_credentials():
    p = safe_params({"data.storage_options.key": "AKIA", "storage_options.secret": "s",
                     "mlflow.tracking_uri": "https://alice:pw@mlflow.example/", "db_password": "x",
                     "api_token": "t", "train.max_steps": 3, "optim.betas": (0.9, 0.999), "none": None})
    assert p == {"mlflow.tracking_uri": "https://***@mlflow.example/", "train.max_steps": "3",
                 "optim.betas": "(0.9, 0.999)", "none": ""}


def test_open_run_resume_and_guard(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve_paths(load_config(TINY, ["data.storage_options={key: AKIA, secret: shh}",
                                           "mlflow.experiment=unit"]), base=tmp_path)
    uri = cfg.mlflow.tracking_uri
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    rid = open_run(cfg, {"store.planted.format_version": 1, "git_commit": "abc"})
    client = MlflowClient(uri)
    run = client.get_run(rid)
    assert run.data.tags[RUN_KEY_TAG] == f"{tmp_path}/runs/geoplex-tiny"
    assert run.data.params["store.planted.format_version"] == "1" and run.data.params["git_commit"] == "abc"
    assert not any(v in ("AKIA", "shh") for v in run.data.params.values())
    cfg_text = client.download_artifacts(rid, "config.yaml", str(tmp_path))
    assert "shh" not in open(cfg_text).read()
    # artifacts live beside the database, not in some worker's working directory
    exp = client.get_experiment_by_name("unit")
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "unit").as_uri()
    # after the run ended: same run key + checkpoints to resume -> same run; no checkpoints -> a fresh run
    Tracker(uri, rid).finish("FAILED")
    assert open_run(cfg, resume=True) == rid
    Tracker(uri, rid).finish("FAILED")
    assert open_run(cfg, resume=False) != rid

    t = Tracker(uri, rid)
    t.log_metrics({"train/loss": 3.0}, 2)
    t.log_metrics({"train/loss": 2.0}, 4)
    # a restarted worker resumes from the step-2 checkpoint and re-runs steps 3-4
    t2 = Tracker(uri, rid)
    assert t2.resume_guard() == 4
    t2.log_metrics({"train/loss": 2.1}, 4)  # dropped: already logged
    t2.log_metrics({"train/loss": 1.5}, 6)
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "train/loss")] == [(2, 3.0), (4, 2.0), (6, 1.5)]
    assert not Tracker(uri, rid, enabled=False).enabled  # non-zero ranks


def test_orphan_running_run_is_closed_and_continued(tmp_path, monkeypatch):
    """A driver killed before the first checkpoint leaves its run RUNNING; the next submission of the
    same name closes it as FAILED and continues it (same run id, metric history kept), but does not
    take a run from a driver that is alive."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve_paths(load_config(TINY, ["mlflow.experiment=orphans"]), base=tmp_path)
    uri = cfg.mlflow.tracking_uri
    client = MlflowClient(uri)
    rid = open_run(cfg, resume=False)  # first submission: no checkpoint to resume from
    Tracker(uri, rid).log_metrics({"train/loss": 3.0}, 10)  # logged before the kill
    with pytest.raises(ConfigError, match=f"MLflow run {rid} of .* is running"):
        open_run(cfg, resume=False)  # its driver's heartbeat is fresh: a live run is not taken over
    with Heartbeat(uri, rid, interval=0.2):
        before = float(client.get_run(rid).data.tags[HEARTBEAT_TAG])
        time.sleep(1.0)
    assert float(client.get_run(rid).data.tags[HEARTBEAT_TAG]) > before  # the driver's heartbeat moves

    client.set_tag(rid, HEARTBEAT_TAG, f"{time.time() - 3600:.3f}")  # the driver was SIGKILLed an hour ago
    assert open_run(cfg, resume=False) == rid
    exp = client.get_experiment_by_name("orphans")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "RUNNING" and "anysat.orphan_closed_at" in run.data.tags
    assert time.time() - float(run.data.tags[HEARTBEAT_TAG]) < 60  # now owned by the new driver
    assert Tracker(uri, rid).resume_guard() == 10  # its history continues, without duplicates

    # a RUNNING run without any heartbeat (an older version's orphan) is continued the same way
    client.delete_tag(rid, HEARTBEAT_TAG)
    assert open_run(cfg, resume=False) == rid
    # a run that ended is not reused without checkpoints (a deliberate restart from step 0)
    Tracker(uri, rid).finish("FINISHED")
    assert open_run(cfg, resume=False) != rid
