"""Credentials never reach Ray's runtime env, Ray's session folder, MLflow or the printed lines.

A unique secret is planted in the environment (``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD``,
``MLFLOW_TRACKING_TOKEN``) and in the S3 storage options of a short real fit (stores and checkpoints
on the moto S3 server); afterwards every file under the Ray session folder, the MLflow database and
artifacts, the run's checkpoint objects and everything the job printed are searched for it.
"""

from __future__ import annotations

import glob
import logging
import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from ray_jobs_helpers import TINY

SECRET = "plantedSecret" + secrets.token_hex(8)


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                hits.append(str(p))
        except OSError:  # sockets, files removed while walking
            continue
    return hits


def _secret_dirs() -> set[str]:
    return {p for d in ("/dev/shm", tempfile.gettempdir()) for p in glob.glob(f"{d}/anysat-secrets-*")}


@pytest.mark.slow
def test_planted_secret_never_in_ray_session_mlflow_or_output(ray_session, s3_server, s3_stores, tmp_path,
                                                              monkeypatch, capfd, no_mlflow_env):
    from ray_jobs import pretrain

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "-aws")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET + "-mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET + "-token")
    so = dict(s3_server["storage_options"], secret=SECRET + "-s3")  # moto accepts any signature
    so_json = json.dumps(so)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    before = _secret_dirs()
    sets = {"name": "secret-run", "num_workers": 1, "data.datasets": "[{name: planted, batch_size: 4}]",
            "data.root": s3_stores, "data.storage_options": so_json,
            "storage_path": f"s3://{s3_server['bucket']}/secret-runs", "storage_options": so_json,
            "mlflow.tracking_uri": uri, "mlflow.experiment": "secrets", "mlflow.log_model": False,
            "train.max_steps": 2, "train.log_every": 2, "checkpoint.every": 2, "train.eval_every": 0,
            "train.preview": False}
    argv = ["--config", str(TINY)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert pretrain.main(argv) == 0
    out, err = capfd.readouterr()
    needle = SECRET.encode()

    assert SECRET not in out + err
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert session.is_dir()
    assert _files_containing(session, needle) == []
    assert _files_containing(tmp_path, needle) == []  # mlflow.db and the artifact store beside it
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert run.info.status == "FINISHED"
    assert SECRET not in json.dumps({**run.data.params, **run.data.tags})
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    objects = [p for p in fs.find(f"{s3_server['bucket']}/secret-runs")]
    assert any(p.endswith("state.pt") for p in objects)
    assert [p for p in objects if needle in fs.cat_file(p)] == []
    assert _secret_dirs() == before  # the driver's private secrets file is gone


def test_workers_load_the_secrets_file(ray_session, monkeypatch):
    """A Ray worker that only gets the file's path in its runtime env has the secret afterwards."""
    from ray_jobs import credentials

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "-worker")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://alice:{SECRET}@mlflow.example")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    with credentials.secrets_file() as path:
        mode = os.stat(path).st_mode & 0o777
        assert mode == 0o600 and os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        env = credentials.worker_env(path)
        assert SECRET not in json.dumps(env)
        assert env["AWS_DEFAULT_REGION"] == "eu-west-3" and "MLFLOW_TRACKING_URI" not in env

        @ray.remote(runtime_env={"env_vars": env})
        def probe():
            credentials.load_secrets()
            return {k: hashlib.sha256(os.environ.get(k, "").encode()).hexdigest()
                    for k in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI")}

        got = ray.get(probe.remote(), timeout=120)
    assert got == {"AWS_SECRET_ACCESS_KEY": hashlib.sha256((SECRET + "-worker").encode()).hexdigest(),
                   "MLFLOW_TRACKING_URI": hashlib.sha256(f"https://alice:{SECRET}@mlflow.example".encode()).hexdigest()}
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_redaction_of_printed_and_logged_credentials(tmp_path, monkeypatch, capsys, caplog, sample_stores):
    from ray_jobs import credentials, pretrain

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "-env")
    assert credentials.redact(f"see https://alice:{SECRET}@mlflow.example/x and {SECRET}-env") == \
        "see https://***@mlflow.example/x and ***"
    credentials.register_secrets({"endpoint_url": "http://h", "secret": SECRET + "-so",
                                  "client_kwargs": {"aws_session_token": SECRET + "-tok"}})
    assert credentials.redact(f"{SECRET}-so {SECRET}-tok http://h") == "*** *** http://h"
    rc = pretrain.main(["--config", str(TINY), "--dry-run", "--set", f"data.root={sample_stores}",
                        "--set", f"mlflow.tracking_uri=https://alice:{SECRET}@mlflow.example"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mlflow: https://***@mlflow.example" in out and SECRET not in out
    # log records through the redacting filter of the entrypoints' logging set-up
    f = credentials.RedactingFilter()
    rec = logging.LogRecord("x", 20, __file__, 1, "uri %s", (f"s3://k:{SECRET}@b",), None)
    assert f.filter(rec) and SECRET not in rec.getMessage()
