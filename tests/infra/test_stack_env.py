"""The local stack's env file and `ray start` command, checked against the installed Ray without
starting anything (the end-to-end check is `test_local_stack.py::test_stack_up_use_down`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import local_stack

REPO = Path(__file__).resolve().parents[2]

# What Ray itself makes of the environment: the address `ray.init()` dials, the one the jobs CLI
# posts to, the node IP `ray start` registers, and the metrics ports its servers take.
PROBE = """
import json, os
from ray._private import services
from ray.dashboard.utils import get_address_for_submission_client
import ray.dashboard.consts as dashboard_consts
from ray.autoscaler._private import constants as autoscaler_constants
view = {
    "node_ip": services.resolve_ip_for_localhost("127.0.0.1"),
    "dashboard_metrics": dashboard_consts.DASHBOARD_METRIC_PORT,
    "autoscaler_metrics": autoscaler_constants.AUTOSCALER_METRIC_PORT,
}
if os.environ.get("RAY_ADDRESS"):
    view["driver"] = services.canonicalize_bootstrap_address(None)
    view["jobs_cli"] = get_address_for_submission_client(None)
print(json.dumps(view))
"""


@pytest.fixture
def state(tmp_path, monkeypatch):
    for key, value in {"ANYSAT_RAY_PORT": "16379", "ANYSAT_DASHBOARD_PORT": "18265",
                       "ANYSAT_MLFLOW_PORT": "15000", "ANYSAT_S3_PORT": "19000"}.items():
        monkeypatch.setenv(key, value)
    st = local_stack.fresh_state(tmp_path / "stack")
    (tmp_path / "stack").mkdir()
    return st


def _ray_view(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_env_file_gives_drivers_the_gcs_and_the_jobs_cli_the_dashboard(state):
    env = local_stack.user_env(state)
    assert env["RAY_ADDRESS"] == "127.0.0.1:16379"
    assert env["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:18265"
    view = _ray_view(env)
    assert view["driver"] == "127.0.0.1:16379"  # not rewritten to the machine's external IP
    assert view["jobs_cli"] == "http://127.0.0.1:18265"


def test_env_file_unsets_a_foreign_token(state, tmp_path):
    path = local_stack.write_env_file(state)
    out = subprocess.run(["bash", "-c", f"source {path} && echo token=${{RAY_AUTH_TOKEN-none}} $RAY_AUTH_TOKEN_PATH"],
                         env={**os.environ, "RAY_AUTH_TOKEN": "other-cluster"}, capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.split() == ["token=none", str(local_stack.token_path(state))], out.stderr


def test_ray_head_binds_loopback(state):
    argv, extra = local_stack.ray_command(state)
    p = state.ports
    flags = dict(zip(argv, argv[1:]))
    assert flags["--node-ip-address"] == "127.0.0.1" and flags["--dashboard-host"] == "127.0.0.1"
    for flag, port in (("--ray-client-server-port", p.ray_client), ("--dashboard-agent-listen-port", p.dashboard_agent),
                       ("--dashboard-agent-grpc-port", p.dashboard_agent_grpc),
                       ("--runtime-env-agent-port", p.runtime_env_agent), ("--metrics-export-port", p.metrics_export)):
        assert port and flags[flag] == str(port), flag
    ports = [getattr(p, name) for name in local_stack.INTERNAL_PORTS] + [p.ray, p.dashboard, p.mlflow, p.s3]
    assert len(set(ports)) == len(ports)
    view = _ray_view(extra)
    assert view["node_ip"] == "127.0.0.1"
    assert (view["dashboard_metrics"], view["autoscaler_metrics"]) == (p.dashboard_metrics, p.autoscaler_metrics)


def test_old_state_gets_the_new_internal_ports(state):
    state.ports.metrics_export = state.ports.autoscaler_metrics = 0  # a state.json from before
    argv, _ = local_stack.ray_command(state)
    assert state.ports.metrics_export and state.ports.autoscaler_metrics
    assert argv[argv.index("--metrics-export-port") + 1] == str(state.ports.metrics_export)
