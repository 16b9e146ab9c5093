"""A local stand-in for the cluster services, all bound to 127.0.0.1.

    python -m infra.local_stack up|down|status|env [--state-dir DIR] [--purge]

* Ray head with the dashboard / job server, token authentication on (Ray >= 2.52), every one of
  its servers on loopback (see `_start_ray`).
* `mlflow server` with a sqlite backend and an `s3://` artifact destination (proxied, so clients
  need no S3 credentials to log artifacts).
* moto's S3 API server, with a bucket created on start, so training and ingest read and write the
  same `s3://` URIs they would on a cluster.

Everything it owns lives in the state directory (default `<repo>/.stack`, or
`$ANYSAT_STACK_DIR`): pid records, logs, the sqlite database, the Ray token and `env`, a file of
shell exports to `source`: RAY_ADDRESS (the GCS, for drivers), RAY_API_SERVER_ADDRESS (the job
server, for `ray job submit`), token auth, MLflow and S3. `down` stops only the processes
recorded there.

Ports come from the environment (0 = pick a free one): ANYSAT_RAY_PORT (6379),
ANYSAT_DASHBOARD_PORT (8265), ANYSAT_MLFLOW_PORT (5000), ANYSAT_S3_PORT (9000); the bucket from
ANYSAT_S3_BUCKET (anysat). ANYSAT_RAY_NUM_CPUS / ANYSAT_RAY_OBJECT_STORE_MEMORY size the head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

# moto accepts any credentials; fixed dummy values keep every client (boto3, s3fs, pyarrow)
# from wandering off to ~/.aws or the EC2 metadata endpoint.
DUMMY_ACCESS_KEY = "anysat-local"
DUMMY_SECRET_KEY = "anysat-local-secret"
REGION = "us-east-1"

SERVICES = ("s3", "mlflow", "ray")  # start order; stopped in reverse
READY_TIMEOUT_S = {"s3": 30.0, "mlflow": 90.0, "ray": 90.0}


class StackError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# configuration and state


@dataclass
class Ports:
    ray: int
    dashboard: int
    mlflow: int
    s3: int
    # Ray's internal ports. Its defaults (client server 10001, agent 52365, metrics 44217/44227,
    # the rest random) would collide between two stacks on one machine (a developer's stack plus
    # the test suite's), so they are always chosen free and recorded, which also lets the tests
    # check every listener by port.
    ray_client: int = 0
    dashboard_agent: int = 0  # the agent's HTTP server (--dashboard-agent-listen-port)
    dashboard_agent_grpc: int = 0  # --dashboard-agent-grpc-port
    runtime_env_agent: int = 0  # --runtime-env-agent-port
    metrics_export: int = 0  # the agent's Prometheus exporter (--metrics-export-port)
    dashboard_metrics: int = 0  # the dashboard's own Prometheus server ($DASHBOARD_METRIC_PORT)
    autoscaler_metrics: int = 0  # the autoscaler monitor's Prometheus server ($AUTOSCALER_METRIC_PORT)


# Ray's switch for multi-node clusters (ray._private.ray_constants.ENABLE_RAY_CLUSTER; off by
# default on macOS and Windows). Off, `ray start` and `ray.init` keep 127.0.0.1 as the node and
# GCS address instead of replacing it with the machine's external IP (services.get_node_ip_address).
LOOPBACK_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

INTERNAL_PORTS = ("ray_client", "dashboard_agent", "dashboard_agent_grpc", "runtime_env_agent",
                  "metrics_export", "dashboard_metrics", "autoscaler_metrics")


@dataclass
class State:
    state_dir: str
    ports: Ports
    bucket: str
    ray_temp_dir: str
    services: dict = field(default_factory=dict)  # name -> {pid, create_time, argv}

    def save(self) -> None:
        path = Path(self.state_dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> "State | None":
        path = state_dir / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["ports"] = Ports(**raw["ports"])
        return cls(**raw)


def default_state_dir() -> Path:
    return Path(os.environ.get("ANYSAT_STACK_DIR", REPO_ROOT / ".stack")).resolve()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _unique_free_port(taken: set[int]) -> int:
    value = free_port()
    while value in taken:
        value = free_port()
    taken.add(value)
    return value


def _port_from_env(name: str, default: int, taken: set[int]) -> int:
    value = int(os.environ.get(name, "") or default)
    if value == 0:
        return _unique_free_port(taken)
    taken.add(value)
    return value


def fresh_state(state_dir: Path) -> State:
    taken: set[int] = set()
    ports = Ports(
        ray=_port_from_env("ANYSAT_RAY_PORT", 6379, taken),
        dashboard=_port_from_env("ANYSAT_DASHBOARD_PORT", 8265, taken),
        mlflow=_port_from_env("ANYSAT_MLFLOW_PORT", 5000, taken),
        s3=_port_from_env("ANYSAT_S3_PORT", 9000, taken),
    )
    for name in INTERNAL_PORTS:
        setattr(ports, name, _unique_free_port(taken))
    # Ray puts unix sockets under its temp dir; AF_UNIX paths are capped at 107 bytes, which a
    # repo or pytest path plus Ray's session/sockets suffix easily exceeds. A short, per-state-dir
    # name under the system temp dir keeps every stack separate and within the limit.
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:10]
    ray_temp = Path(tempfile.gettempdir()) / f"anysat-ray-{digest}"
    return State(
        state_dir=str(state_dir),
        ports=ports,
        bucket=os.environ.get("ANYSAT_S3_BUCKET", "anysat"),
        ray_temp_dir=str(ray_temp),
    )


def token_path(state: State) -> Path:
    return Path(state.state_dir) / "ray_auth_token"


def ensure_token(state: State) -> str:
    path = token_path(state)
    if not path.exists():
        # Same shape as `ray get-auth-token --generate`, but kept in the state dir so the stack
        # never overwrites a token the user keeps in ~/.ray for a real cluster.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


# --------------------------------------------------------------------------------------------
# environment


def s3_env(state: State) -> dict[str, str]:
    endpoint = f"http://{HOST}:{state.ports.s3}"
    return {
        "AWS_ENDPOINT_URL": endpoint,  # boto3 / s3fs (botocore >= 1.31) and pyarrow
        "AWS_ENDPOINT_URL_S3": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,  # MLflow's own S3 client ignores AWS_ENDPOINT_URL
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def user_env(state: State) -> dict[str, str]:
    """What a shell needs to use the stack: `source <state_dir>/env`.

    Two Ray addresses, each under the variable its reader looks for: ``RAY_ADDRESS`` is the GCS
    address, which ``ray.init()`` (every driver: the ingest, ``python -m ray_jobs...``) accepts;
    ``RAY_API_SERVER_ADDRESS`` is the dashboard's HTTP address, which the jobs CLI and
    ``JobSubmissionClient`` read before falling back to ``RAY_ADDRESS`` (Ray >= 2.50:
    ``ray.dashboard.utils.get_address_for_submission_client``). An HTTP URL in ``RAY_ADDRESS``
    makes ``ray.init`` fail with "Invalid Ray address".
    """
    env = {
        "RAY_ADDRESS": f"{HOST}:{state.ports.ray}",
        "RAY_API_SERVER_ADDRESS": f"http://{HOST}:{state.ports.dashboard}",
        # The head runs with this (see _start_ray); a driver needs it too, or `ray.init` turns
        # 127.0.0.1 in RAY_ADDRESS into the machine's external IP, where the GCS does not listen.
        LOOPBACK_ONLY_VAR: "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path(state)),
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{state.ports.mlflow}",
    }
    env.update(s3_env(state))
    env["ANYSAT_S3_BUCKET"] = state.bucket
    return env


# Ray reads a token from RAY_AUTH_TOKEN before RAY_AUTH_TOKEN_PATH: one exported for a real
# cluster (infra/README.md, KubeRay) would shadow the stack's token.
UNSET = ("RAY_AUTH_TOKEN",)


def render_exports(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def render_env(state: State) -> str:
    """The shell lines of `<state_dir>/env` (and of `up` / `env` on stdout)."""
    return "".join(f"unset {k}\n" for k in UNSET) + render_exports(user_env(state))


def write_env_file(state: State) -> Path:
    path = Path(state.state_dir) / "env"
    path.write_text(
        "# written by `python -m infra.local_stack up`; use with: source " + str(path) + "\n"
        + render_env(state)
    )
    return path


def _child_env(state: State, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # Ray settings left in the caller's shell from an earlier `source .stack/env` (or a cluster's
    # exports) must not make the new head join something else or take another cluster's token.
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    # Job entrypoints (`python -m ray_jobs...`) run through the head's PATH: put this venv first
    # so `python` there is the interpreter that has the project installed.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# process records


def _log_path(state: State, name: str) -> Path:
    return Path(state.state_dir) / "logs" / f"{name}.log"


def _spawn(state: State, name: str, argv: list[str], env: dict[str, str]) -> None:
    log = open(_log_path(state, name), "ab")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
    log.flush()
    # A new session detaches the service from the terminal (Ctrl-C on `make up` must not kill it)
    # and lets it outlive this short-lived CLI process.
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, cwd=str(REPO_ROOT), start_new_session=True,
    )
    log.close()
    state.services[name] = {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "argv": argv,
    }
    (Path(state.state_dir) / f"{name}.pid").write_text(f"{proc.pid}\n")
    state.save()
    # The Popen object is dropped on purpose: the service is tracked by pid from now on.
    proc.returncode = 0  # silence "subprocess still running" on garbage collection


def _process(state: State, name: str) -> psutil.Process | None:
    """The recorded process, if it is still the one we started (pids get reused)."""
    rec = state.services.get(name)
    if not rec:
        return None
    try:
        proc = psutil.Process(rec["pid"])
        if abs(proc.create_time() - rec["create_time"]) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _log_tail(state: State, name: str, lines: int = 30) -> str:
    path = _log_path(state, name)
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# health checks


def _http_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> bool:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def healthy(state: State, name: str) -> bool:
    p = state.ports
    if name == "s3":
        return _http_ok(f"http://{HOST}:{p.s3}/")
    if name == "mlflow":
        return _http_ok(f"http://{HOST}:{p.mlflow}/health")
    if name == "ray":
        # /api/jobs/ (not just /api/version) so "ready" means a job submission will be accepted.
        tok = token_path(state).read_text().strip() if token_path(state).exists() else ""
        return _http_ok(f"http://{HOST}:{p.dashboard}/api/jobs/",
                        {"Authorization": f"Bearer {tok}"}, timeout=5.0)
    raise ValueError(name)


def _wait_ready(state: State, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S[name]
    while time.monotonic() < deadline:
        if healthy(state, name):
            return
        if _process(state, name) is None:
            raise StackError(f"{name} exited during start-up; log tail:\n{_log_tail(state, name)}")
        time.sleep(0.3)
    raise StackError(f"{name} did not answer within {READY_TIMEOUT_S[name]:.0f}s; log tail:\n"
                     f"{_log_tail(state, name)}")


def _check_port_free(port: int, name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            raise StackError(
                f"port {port} for {name} is already in use by something this stack did not start; "
                f"set the matching ANYSAT_*_PORT (0 = any free port) and retry"
            ) from None


# --------------------------------------------------------------------------------------------
# services


def _start_s3(state: State) -> None:
    _check_port_free(state.ports.s3, "s3")
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(state.ports.s3)]
    _spawn(state, "s3", argv, _child_env(state, s3_env(state)))


def _start_mlflow(state: State) -> None:
    _check_port_free(state.ports.mlflow, "mlflow")
    db = Path(state.state_dir) / "mlflow.db"
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", f"s3://{state.bucket}/mlflow-artifacts",
        "--serve-artifacts",
        "--host", HOST, "--port", str(state.ports.mlflow),
        # one worker: this is a laptop/CI service and sqlite serialises writes anyway
        "--workers", "1",
    ]
    # MLflow's server-side job runner (GenAI scorers, prompt optimisation) starts ~7 huey worker
    # processes; the training service never uses it and a 2-core laptop notices them.
    env = _child_env(state, {**s3_env(state), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    _spawn(state, "mlflow", argv, env)


def ray_command(state: State) -> tuple[list[str], dict[str, str]]:
    """The head's `ray start` argv and the environment it adds (over `_child_env`)."""
    p = state.ports
    # A state.json from before a port was added records it as 0: pick it now.
    taken = {v for v in asdict(p).values() if v}
    for name in INTERNAL_PORTS:
        if not getattr(p, name):
            setattr(p, name, _unique_free_port(taken))
    argv = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        "--node-ip-address", HOST,
        "--port", str(p.ray),
        "--dashboard-host", HOST, "--dashboard-port", str(p.dashboard),
        "--ray-client-server-port", str(p.ray_client),
        "--dashboard-agent-listen-port", str(p.dashboard_agent),
        "--dashboard-agent-grpc-port", str(p.dashboard_agent_grpc),
        "--runtime-env-agent-port", str(p.runtime_env_agent),
        "--metrics-export-port", str(p.metrics_export),
        "--temp-dir", state.ray_temp_dir,
        "--disable-usage-stats",
    ]
    if os.environ.get("ANYSAT_RAY_NUM_CPUS"):
        argv += ["--num-cpus", os.environ["ANYSAT_RAY_NUM_CPUS"]]
    if os.environ.get("ANYSAT_RAY_OBJECT_STORE_MEMORY"):
        argv += ["--object-store-memory", os.environ["ANYSAT_RAY_OBJECT_STORE_MEMORY"]]
    extra = {
        # On Linux `ray start` replaces a loopback --node-ip-address with the machine's external
        # IP (ray._private.services.resolve_ip_for_localhost), and every Ray server then binds
        # that IP or all interfaces. With multi-node clusters switched off -- what Ray does by
        # default on macOS and Windows -- the node keeps 127.0.0.1, and the GCS, raylet, agents,
        # client server, workers and metrics servers bind loopback only. This single-node stack
        # never takes worker nodes, so nothing is lost. Jobs inherit this, so a job's driver
        # resolves the same node IP.
        LOOPBACK_ONLY_VAR: "0",
        # The dashboard's and the autoscaler's own Prometheus servers take their ports from these.
        "DASHBOARD_METRIC_PORT": str(p.dashboard_metrics),
        "AUTOSCALER_METRIC_PORT": str(p.autoscaler_metrics),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path(state)),
        # Jobs inherit the head's environment: with these they reach the stack's S3 and MLflow
        # exactly as cluster jobs reach the real ones, with no per-job runtime_env.
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{p.mlflow}",
        "RAY_USAGE_STATS_ENABLED": "0",
        **s3_env(state),
    }
    return argv, extra


def _start_ray(state: State) -> None:
    _check_port_free(state.ports.ray, "ray gcs")
    _check_port_free(state.ports.dashboard, "ray dashboard")
    argv, extra = ray_command(state)
    state.save()
    _spawn(state, "ray", argv, _child_env(state, extra))


STARTERS = {"s3": _start_s3, "mlflow": _start_mlflow, "ray": _start_ray}


def _s3_client(state: State):
    import boto3  # dev extra (comes with moto), needed only once the S3 service runs

    return boto3.client(
        "s3", endpoint_url=f"http://{HOST}:{state.ports.s3}", region_name=REGION,
        aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY,
    )


def _ensure_bucket(state: State) -> None:
    client = _s3_client(state)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if state.bucket not in existing:
        client.create_bucket(Bucket=state.bucket)


# moto keeps objects in memory only; snapshotting them into the state dir on `down` and loading
# them back on `up` keeps MLflow's sqlite runs and their S3 artifacts consistent across restarts.
def _snapshot_dir(state: State) -> Path:
    return Path(state.state_dir) / "s3-snapshot"


def _save_s3(state: State) -> int:
    client = _s3_client(state)
    snap = _snapshot_dir(state)
    tmp = snap.with_name(snap.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "objects").mkdir(parents=True)
    manifest = []
    for bucket in client.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        manifest.append({"bucket": name, "key": None, "file": None})
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                # keys may end in "/" or contain "..": store by hash, never by key path
                fname = hashlib.sha256(f"{name}/{obj['Key']}".encode()).hexdigest()
                client.download_file(name, obj["Key"], str(tmp / "objects" / fname))
                manifest.append({"bucket": name, "key": obj["Key"], "file": fname})
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(snap, ignore_errors=True)
    tmp.replace(snap)
    return sum(1 for m in manifest if m["key"] is not None)


def _restore_s3(state: State) -> int:
    snap = _snapshot_dir(state)
    manifest_path = snap / "manifest.json"
    if not manifest_path.exists():
        return 0
    client = _s3_client(state)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    n = 0
    for m in json.loads(manifest_path.read_text()):
        if m["bucket"] not in existing:
            client.create_bucket(Bucket=m["bucket"])
            existing.add(m["bucket"])
        if m["key"] is not None:
            client.upload_file(str(snap / "objects" / m["file"]), m["bucket"], m["key"])
            n += 1
    return n


def _stop_tree(proc: psutil.Process, timeout: float = 15.0) -> None:
    try:
        family = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    # The root first: `ray start --block` tears its own children down in order on SIGTERM.
    try:
        proc.terminate()
    except psutil.NoSuchProcess:
        pass
    psutil.wait_procs([proc], timeout=timeout)
    survivors = [p for p in family if _alive(p)]
    for p in survivors:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(survivors, timeout=5.0)
    for p in still:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(still, timeout=5.0)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _ray_stragglers(state: State) -> list[psutil.Process]:
    """Processes of this stack's Ray session that slipped out of the process tree (re-parented
    workers). Matched on the stack's own unique Ray temp dir, so nothing else is touched."""
    me = os.getuid()
    found = []
    for p in psutil.process_iter(["cmdline", "uids"]):
        try:
            if p.info["uids"] and p.info["uids"].real != me:
                continue
            if any(state.ray_temp_dir in part for part in (p.info["cmdline"] or [])) and _alive(p):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


# --------------------------------------------------------------------------------------------
# commands


def _prepare_dir(state_dir: Path) -> None:
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    # keep a stack made inside a checkout out of git even where .gitignore lacks the entry
    gi = state_dir / ".gitignore"
    if not gi.exists():
        gi.write_text("*\n")


def up(state_dir: Path, services: tuple[str, ...] = SERVICES) -> State:
    """Start ``services`` (default: all) and wait until they answer; idempotent."""
    services = tuple(n for n in SERVICES if n in services)  # keep the start order
    _prepare_dir(state_dir)
    state = State.load(state_dir)
    if state is None or not any(_process(state, n) for n in SERVICES):
        # Nothing of ours is running: take ports and bucket from the environment afresh.
        state = fresh_state(state_dir)
        state.save()
    ensure_token(state)

    started: list[str] = []
    try:
        for name in services:
            if _process(state, name) is not None:
                continue
            state.services.pop(name, None)
            STARTERS[name](state)
            started.append(name)
            if name == "s3":
                _wait_ready(state, "s3")
                _ensure_bucket(state)
                restored = _restore_s3(state)
                if restored:
                    print(f"# s3: restored {restored} objects from {_snapshot_dir(state)}")
        # MLflow and Ray start side by side; wait for both only after both were launched.
        for name in services:
            _wait_ready(state, name)
        if "s3" in services:
            _ensure_bucket(state)
    except BaseException:
        # Leave nothing half-started behind: stop what this call launched (and only that).
        for name in reversed(started):
            proc = _process(state, name)
            if proc is not None:
                _stop_tree(proc)
            state.services.pop(name, None)
            (state_dir / f"{name}.pid").unlink(missing_ok=True)
        state.save()
        raise
    write_env_file(state)
    for name in services:
        verb = "started" if name in started else "already running"
        print(f"# {name:6s} {verb:15s} pid {state.services[name]['pid']:<7d} {_url(state, name)}")
    return state


def _url(state: State, name: str) -> str:
    p = state.ports
    return {
        "s3": f"http://{HOST}:{p.s3}  (bucket s3://{state.bucket})",
        "mlflow": f"http://{HOST}:{p.mlflow}",
        "ray": f"http://{HOST}:{p.dashboard}  (gcs {HOST}:{p.ray})",
    }[name]


def down(state_dir: Path, purge: bool = False) -> list[str]:
    state = State.load(state_dir)
    stopped: list[str] = []
    if state is not None:
        s3 = _process(state, "s3")
        if s3 is not None and healthy(state, "s3"):
            try:
                n = _save_s3(state)
                print(f"# s3: saved {n} objects to {_snapshot_dir(state)}")
            except Exception as exc:  # a failed snapshot must not keep services running
                print(f"# s3: snapshot failed ({exc}); objects are lost", file=sys.stderr)
        procs = {name: _process(state, name) for name in reversed(SERVICES)}
        # Each service takes seconds to shut down gracefully; none depends on another once the
        # S3 snapshot is taken, so they stop side by side.
        threads = [threading.Thread(target=_stop_tree, args=(p,)) for p in procs.values() if p]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, proc in procs.items():
            if proc is not None:
                stopped.append(name)
                print(f"# {name:6s} stopped (pid {proc.pid})")
            (state_dir / f"{name}.pid").unlink(missing_ok=True)
            state.services.pop(name, None)
        stragglers = _ray_stragglers(state)
        for p in stragglers:
            _stop_tree(p, timeout=5.0)
        state.save()
        (state_dir / "state.json").unlink(missing_ok=True)
        (state_dir / "env").unlink(missing_ok=True)
        if purge:
            shutil.rmtree(state.ray_temp_dir, ignore_errors=True)
    if purge and state_dir.exists():
        shutil.rmtree(state_dir)
        print(f"# removed {state_dir}")
    if not stopped:
        print("# nothing to stop")
    return stopped


def status(state_dir: Path) -> bool:
    state = State.load(state_dir)
    if state is None:
        print(f"# no stack in {state_dir}")
        return False
    all_up = True
    for name in SERVICES:
        proc = _process(state, name)
        if proc is None:
            word, all_up = "down", False
        elif healthy(state, name):
            word = "up"
        else:
            word, all_up = "not answering", False
        pid = state.services.get(name, {}).get("pid", "-")
        print(f"{name:6s} {word:14s} pid {pid!s:<7s} {_url(state, name)}")
    return all_up


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.local_stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "env"])
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="default: $ANYSAT_STACK_DIR or <repo>/.stack")
    ap.add_argument("--purge", action="store_true",
                    help="down: also delete the state dir (sqlite db, S3 snapshot, logs, token)")
    args = ap.parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).resolve()

    try:
        if args.command == "up":
            state = up(state_dir)
            print(render_env(state), end="")
            print(f"# to use it from a shell: source {Path(state.state_dir) / 'env'}")
            return 0
        if args.command == "down":
            down(state_dir, purge=args.purge)
            return 0
        if args.command == "status":
            return 0 if status(state_dir) else 1
        if args.command == "env":
            state = State.load(state_dir)
            if state is None:
                print(f"no stack in {state_dir}; run `make up` first", file=sys.stderr)
                return 1
            print(render_env(state), end="")
            return 0
    except StackError as exc:
        print(f"local_stack: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
