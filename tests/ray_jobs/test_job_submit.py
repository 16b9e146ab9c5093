"""`ray job submit` of the pretraining entrypoint to a cluster started by the test.

The head runs with token authentication and its dashboard on 127.0.0.1, on free ports and in its
own temp dir. It is started with ``ray start --head --block`` as a child process and stopped by
terminating that process: ``ray stop`` would stop every Ray instance on the machine, including
the test session's own and any concurrent ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ray_jobs_helpers import REPO, tiny_overrides

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    gcs, dash, client, agent, metrics, agent_grpc, rt_env = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: unix socket paths are limited
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=2", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
         f"--temp-dir={temp_dir}", "--include-dashboard=true"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 300  # a head's start-up takes minutes on a loaded 2-core machine
        while True:
            r = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True,
                               text=True, timeout=60)
            if r.returncode == 0:
                break
            if head.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"Ray head did not come up:\n{(tmp_path / 'ray-head.log').read_text()}\n"
                                   f"{r.stdout}\n{r.stderr}")
            time.sleep(2)
        yield address, env
    finally:
        # SIGTERM to `ray start --block` (our child) tears down the processes it started
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submit_with_token_auth(ray_head, sample_stores, tmp_path):
    address, env = ray_head
    # without the token the job API refuses the request
    noauth = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    noauth["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    r = subprocess.run([RAY, "job", "list", "--address", address], env=noauth, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = tiny_overrides(**{"name": "submitted", "num_workers": 1, "train.max_steps": 2,
                             "data.root": str(sample_stores), "storage_path": str(tmp_path / "runs"),
                             "mlflow.tracking_uri": uri, "mlflow.experiment": "e2e-job",
                             "mlflow.log_model": False, "train.eval_every": 0})
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           "python", "-m", "ray_jobs.pretrain", "--config", "configs/pretrain/geoplex-tiny.yaml"]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "succeeded" in r.stdout

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e2e-job")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2]
    assert (tmp_path / "runs" / "submitted").is_dir()
