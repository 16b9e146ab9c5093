"""`make up` / `make down` end to end, through `python -m infra.local_stack` in a temp state dir
with free ports, so it never touches a developer's running stack."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
BUCKET = "anysat-test"
# Every port the stack records in state.json, each of which must be listened on, on loopback.
STACK_PORTS = ("ray", "dashboard", "mlflow", "s3", "ray_client", "dashboard_agent", "dashboard_agent_grpc",
               "runtime_env_agent", "metrics_export", "dashboard_metrics", "autoscaler_metrics")
# Listeners of the stack (and of a driver attached to it) on a non-loopback address, as
# (process command line, first 100 characters; port, None where Ray picks it at random). infra/README.md ("Security
# defaults") must list exactly these; with Ray 2.60 on Linux there are none.
EXPECTED_EXTERNAL: set[tuple[str, int | None]] = set()

# A driver started from a shell that sourced the stack's env file: it must join the stack's cluster
# (not start a local one), report where it landed, then hold an actor (a live worker process, so
# workers' listeners are checked too) until the test writes a line to its stdin.
DRIVER = """
import json, sys, ray
ray.init()
@ray.remote
class Holder:
    def ping(self):
        return ray.get_runtime_context().get_node_id()
h = Holder.remote()
print(json.dumps({"node_id": ray.get_runtime_context().get_node_id(), "actor_node_id": ray.get(h.ping.remote()),
                  "gcs_address": ray.get_runtime_context().gcs_address, "resources": ray.cluster_resources()}))
print("READY", flush=True)
sys.stdin.readline()
"""


def _stack_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in list(env):
        # a developer's sourced .stack/env or cluster settings must not leak into the test stack
        if key.startswith(("RAY_", "MLFLOW_", "AWS_", "ANYSAT_")):
            del env[key]
    env.update({
        "ANYSAT_RAY_PORT": "0", "ANYSAT_DASHBOARD_PORT": "0",
        "ANYSAT_MLFLOW_PORT": "0", "ANYSAT_S3_PORT": "0",
        "ANYSAT_S3_BUCKET": BUCKET,
        "ANYSAT_RAY_NUM_CPUS": "1",
        "ANYSAT_RAY_OBJECT_STORE_MEMORY": str(100 * 1024 * 1024),
    })
    return env


def _stack(cmd: str, state_dir: Path, timeout: float = 150.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infra.local_stack", cmd, "--state-dir", str(state_dir)],
        cwd=REPO, env=_stack_env(), capture_output=True, text=True, timeout=timeout,
    )


def _parse_exports(text: str) -> dict[str, str]:
    import shlex

    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _family(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sourced(state_dir: Path, argv: list[str]) -> list[str]:
    """``argv`` run by bash after ``source <state_dir>/env``, exactly as a user's shell would."""
    return ["bash", "-c", f"source {shlex.quote(str(state_dir / 'env'))} && exec {shlex.join(argv)}"]


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket bound to ::ffff:127.0.0.1
    return addr.is_loopback


def _label(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:100] or p.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return f"<pid {p.pid}, gone>"


def _listeners(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process, ip, port) of every listening TCP socket and bound UDP socket of ``procs``."""
    out = set()
    for p in procs:
        try:
            name = _label(p)
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                out.add((name, c.laddr.ip, c.laddr.port))
    return sorted(out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stack_up_use_down(tmp_path):
    t0 = time.monotonic()
    state_dir = tmp_path / "stack"
    up = _stack("up", state_dir)
    assert up.returncode == 0, up.stdout + up.stderr
    family: list[psutil.Process] = []
    try:
        env = _parse_exports(up.stdout)
        state = json.loads((state_dir / "state.json").read_text())
        ports = state["ports"]
        assert env["RAY_AUTH_MODE"] == "token"
        # drivers get the GCS address (ray.init rejects an http:// one), the jobs CLI the dashboard
        assert env["RAY_ADDRESS"] == f"127.0.0.1:{ports['ray']}"
        assert env["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{ports['dashboard']}"
        assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
        assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        env_file = (state_dir / "env").read_text()
        assert _parse_exports(env_file) == env
        assert "\nunset RAY_AUTH_TOKEN\n" in env_file

        for name in ("s3", "mlflow", "ray"):
            assert (state_dir / f"{name}.pid").read_text().strip() == str(state["services"][name]["pid"])
            assert (state_dir / "logs" / f"{name}.log").exists()

        # S3: the bucket exists and takes objects
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.head_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="probe/hello.txt", Body=b"hello")

        # MLflow: a run with an artifact; the artifact must land in the S3 bucket
        status, body = _get(env["MLFLOW_TRACKING_URI"] + "/health")
        assert status == 200, body
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        exp = client.create_experiment("stack-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "loss", 0.5)
        artifact = tmp_path / "notes.txt"
        artifact.write_text("artifact body")
        client.log_artifact(run.info.run_id, str(artifact))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/notes.txt") for k in keys), keys
        assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.5

        # Ray: the dashboard answers, and only with the token
        status, _ = _get(env["RAY_API_SERVER_ADDRESS"] + "/api/version")
        assert status == 401
        token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        status, body = _get(env["RAY_API_SERVER_ADDRESS"] + "/api/version", {"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(body)["ray_version"]

        # Everything below runs the way a user does it: `source .stack/env`, then the command, from
        # a shell still holding the old HTTP RAY_ADDRESS and another cluster's token, which the
        # env file must override / unset.
        shell_env = {**_stack_env(), "RAY_ADDRESS": env["RAY_API_SERVER_ADDRESS"],
                     "RAY_AUTH_TOKEN": "token-of-some-other-cluster"}

        # (a) a plain driver joins the stack's cluster (1 CPU, 100 MiB object store, its GCS)
        driver_err = open(tmp_path / "driver.err", "w")
        driver = subprocess.Popen(_sourced(state_dir, [sys.executable, "-c", DRIVER]), env=shell_env, cwd=tmp_path,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=driver_err, text=True)
        try:
            lines = []
            while not lines or lines[-1] not in ("READY", ""):
                lines.append(driver.stdout.readline().strip() if driver.stdout else "")
            assert lines[-1] == "READY", (lines, (tmp_path / "driver.err").read_text()[-3000:])
            joined = json.loads(next(ln for ln in lines if ln.startswith("{")))
            assert joined["gcs_address"] == env["RAY_ADDRESS"]
            assert joined["resources"]["CPU"] == 1.0
            assert joined["resources"]["object_store_memory"] == 100 * 1024 * 1024
            assert joined["actor_node_id"] == joined["node_id"]

            # Every listener of the stack's processes (recursively: GCS, raylet, agents, dashboard,
            # workers incl. the actor's, MLflow's and moto's) and of the attached driver, on
            # loopback only (issue 12, item 11).
            procs = []
            for name in ("s3", "mlflow", "ray"):
                procs += _family(state["services"][name]["pid"])
            procs += _family(driver.pid)
            assert any("ray::Holder" in _label(p) for p in procs), [_label(p) for p in procs]
            listening = _listeners(procs)
            external = {(n, port if port in ports.values() else None)
                        for n, ip, port in listening if not _is_loopback(ip)}
            assert external == EXPECTED_EXTERNAL, [x for x in listening if not _is_loopback(x[1])]
            loopback_ports = {port for _, ip, port in listening if _is_loopback(ip)}
            assert {k: ports[k] for k in STACK_PORTS if ports[k] not in loopback_ports} == {}, listening
        finally:
            try:
                driver.communicate("\n", timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.communicate()
            driver_err.close()
        assert driver.returncode == 0, (tmp_path / "driver.err").read_text()[-3000:]

        # (b) `ray job submit` reaches the job server (RAY_API_SERVER_ADDRESS, token auth); the job
        # runs on the same node, sees the stack's S3 and MLflow through the head's environment, and
        # `python` on the head is this interpreter
        probe = ("import os, sys, boto3, ray; ray.init(); "
                 "print('NODE', ray.get_runtime_context().get_node_id()); "
                 f"print('BODY', boto3.client('s3').get_object(Bucket='{BUCKET}', Key='probe/hello.txt')['Body'].read()); "
                 "print('MLFLOW', os.environ['MLFLOW_TRACKING_URI']); print('PY', sys.executable)")
        job = subprocess.run(
            _sourced(state_dir, [str(Path(sys.executable).parent / "ray"), "job", "submit", "--",
                                 "python", "-c", probe]),
            env=shell_env, capture_output=True, text=True, timeout=120,
        )
        assert job.returncode == 0, job.stdout + job.stderr
        assert f"NODE {joined['node_id']}" in job.stdout
        assert "BODY b'hello'" in job.stdout
        assert f"MLFLOW {env['MLFLOW_TRACKING_URI']}" in job.stdout

        # idempotent: a second `up` starts nothing new
        again = _stack("up", state_dir)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("already running") == 3
        assert json.loads((state_dir / "state.json").read_text())["services"] == state["services"]
        st = _stack("status", state_dir)
        assert st.returncode == 0 and st.stdout.count(" up ") == 3, st.stdout

        for name in ("s3", "mlflow", "ray"):
            family += _family(state["services"][name]["pid"])
        assert len(family) >= 5  # ray start + gcs + raylet + dashboard ... at least
    finally:
        down = _stack("down", state_dir)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped") == 3, down.stdout

    time.sleep(0.5)
    left = [p.pid for p in family if _alive(p)]
    assert not left, f"processes left behind: {left}"
    ray_temp = state["ray_temp_dir"]
    stragglers = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(ray_temp in part for part in (p.info["cmdline"] or [])) and _alive(p):
                stragglers.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    assert not stragglers
    for name in ("s3", "mlflow", "ray"):
        assert not (state_dir / f"{name}.pid").exists()
    # moto is in-memory: down snapshots the bucket so the MLflow db keeps its artifacts
    manifest = json.loads((state_dir / "s3-snapshot" / "manifest.json").read_text())
    assert any(m["key"] == "probe/hello.txt" for m in manifest)
    assert _stack("status", state_dir).returncode != 0
    # Ray's session logs sit outside tmp_path (short socket paths); they are this test's to remove
    shutil.rmtree(ray_temp, ignore_errors=True)
