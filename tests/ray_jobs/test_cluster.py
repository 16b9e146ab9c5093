"""Which Ray cluster a job joins (never a stale "current cluster"), fast failure on an address that
does not answer, and fast failure on a GPU request the cluster cannot serve (``ray_jobs.cluster``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from pipelines import raycluster
from ray_jobs import cluster, finetune
from ray_jobs.config import ConfigError
from ray_jobs_helpers import REPO

FT_TINY = REPO / "configs/finetune/planted-cls-ft-tiny.yaml"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_no_address_starts_a_local_instance_never_the_recorded_cluster(monkeypatch):
    calls = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.init_ray()
    assert calls == [{"address": "local", "num_cpus": None, "include_dashboard": None, "log_to_driver": True}]
    # a given address is probed before ray.init: a dead one never reaches it, and is a one-line ConfigError
    port = _dead_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"the Ray cluster at 127.0.0.1:{port} \\(RAY_ADDRESS\\) does not answer"):
        cluster.init_ray()
    assert time.monotonic() - t0 < raycluster.PROBE_TIMEOUT_S + 1 and len(calls) == 1


def test_the_command_lines_address_comes_first(monkeypatch):
    """``init_ray(address)``, else the ``--address`` handed over by the command line, else ``RAY_ADDRESS``;
    an unusable one is a ConfigError (not the pipelines' RayAddressError)."""
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kw: pytest.fail(f"ray.init({kw})"))
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    port = _dead_port()
    cluster.use_cli_address(f"127.0.0.1:{port}")
    try:
        with pytest.raises(ConfigError, match=f"Ray cluster at 127.0.0.1:{port} \\(--address\\) does not answer"):
            cluster.init_ray()
        with pytest.raises(ConfigError, match="--address 'nonsense' is not host:port"):
            cluster.init_ray("nonsense")
    finally:
        cluster.use_cli_address(None)
    with pytest.raises(ConfigError, match="RAY_ADDRESS='http://127.0.0.1:8265' is an HTTP address"):
        cluster.init_ray()


@pytest.mark.slow
def test_dead_address_fails_fast_in_a_real_process(sample_stores, tmp_path):
    """Ray's address file left behind by a dead cluster (here under RAY_TMPDIR, not the machine's
    /tmp/ray) and an explicit dead --address: the job exits with one line instead of hanging."""
    port = _dead_port()
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)
    base = [sys.executable, "-m", "ray_jobs.finetune", "--config", str(FT_TINY), "--set", f"data.root={sample_stores}",
            "--set", f"storage_path={tmp_path / 'runs'}", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]
    for extra_env, extra_args, expected in (({}, ["--address", f"127.0.0.1:{port}"], "(--address)"),
                                            ({"RAY_ADDRESS": "auto"}, [], "address file")):
        t0 = time.monotonic()
        r = subprocess.run(base + extra_args, cwd=REPO, env={**env, **extra_env}, capture_output=True, text=True,
                           timeout=300)
        elapsed = time.monotonic() - t0
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and " INFO " not in ln]
        assert len(lines) == 1 and f"the Ray cluster at 127.0.0.1:{port} (" in lines[0], r.stderr[-3000:]
        assert "does not answer" in lines[0] and expected in lines[0]
        # interpreter start-up and imports take most of it on a loaded 2-core machine; the probe < 6 s
        assert elapsed < 120, elapsed
    assert not (tmp_path / "m.db").exists()


@pytest.mark.timeout(240)
def test_gpu_request_without_gpus_fails_fast(ray_session, sample_stores, tmp_path, capsys, no_mlflow_env):
    assert ray_session.cluster_resources().get("GPU", 0) == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t0 = time.monotonic()
    rc = finetune.main(["--config", str(FT_TINY), "--set", f"data.root={sample_stores}", "--set", "use_gpu=true",
                        "--set", f"storage_path={tmp_path / 'runs'}", "--set", f"mlflow.tracking_uri={uri}"])
    assert rc == 2 and time.monotonic() - t0 < 60
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert "asks for 2 GPU(s) but the Ray cluster has none" in err[0] and "--set use_gpu=false" in err[0]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("anysat-finetune")
    assert exp is None or not client.search_runs([exp.experiment_id])  # no MLflow run was opened


def test_gpu_check_waits_when_the_cluster_can_add_gpu_nodes(monkeypatch, caplog):
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 8.0})
    with pytest.raises(ConfigError, match="has none"):
        cluster.check_gpus(1, "use_gpu: true")
    monkeypatch.setenv(cluster.WAIT_FOR_GPUS_ENV, "1")
    cluster.check_gpus(1, "use_gpu: true")  # returns: the autoscaler is expected to add GPU nodes
    assert "waiting for the autoscaler" in caplog.text
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 4.0})
    monkeypatch.delenv(cluster.WAIT_FOR_GPUS_ENV)
    cluster.check_gpus(4, "use_gpu: true")
