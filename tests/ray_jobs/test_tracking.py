"""ray_jobs.tracking without Ray: params filtering, run reuse, duplicate-free metric history."""

from __future__ import annotations

from mlflow import MlflowClient

from ray_jobs.config import load_config, resolve_paths
from ray_jobs.tracking import RUN_KEY_TAG, Tracker, open_run, safe_params
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
    # same run key + checkpoints to resume -> same run; no checkpoints -> a fresh run
    assert open_run(cfg, resume=True) == rid
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
