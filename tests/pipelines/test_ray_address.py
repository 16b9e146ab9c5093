"""The ingest never guesses a Ray cluster: a local Ray of its own unless an address is given, and a given
address that does not answer fails in seconds with one line (never a silent hang on a dead cluster)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pipelines import raycluster
from pipelines.raycluster import (RayAddressError, RayTarget, check_address, choose_address, connect_address,
                                  dialed_host, resolve_address)
from pipelines.samplegen.planted import write_sample


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("raw") / "planted")
    write_sample(path, tiles=4, seed=1)
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def test_choose_address():
    assert choose_address(None, {}) == RayTarget("local", "default")
    assert choose_address(None, {"RAY_ADDRESS": "  "}) == RayTarget("local", "default")  # empty: unset
    assert choose_address(None, {"RAY_ADDRESS": "10.0.0.5:6379"}) == RayTarget("10.0.0.5:6379", "RAY_ADDRESS")
    assert choose_address("127.0.0.1:6380", {"RAY_ADDRESS": "10.0.0.5:6379"}) == RayTarget("127.0.0.1:6380",
                                                                                             "--address")
    assert choose_address("ray://head:10001", {}).address == "ray://head:10001"
    assert choose_address("auto", {}).address == "auto"
    assert choose_address("local", {"RAY_ADDRESS": "10.0.0.5:6379"}).local
    assert choose_address("[::1]:6379", {}).address == "[::1]:6379"
    with pytest.raises(RayAddressError, match="HTTP address, the Ray dashboard's .*only `ray job submit` takes; "
                                              "a driver needs the cluster's GCS address.*10.0.0.5:6379"):
        choose_address(None, {"RAY_ADDRESS": "http://10.0.0.5:8265"})
    for bad in ("head", "head:port", "head:0", "s3://x:1", "head:70000"):
        with pytest.raises(RayAddressError):
            check_address(bad, "--address")


def test_resolve_address_forms(monkeypatch):
    assert resolve_address(RayTarget("127.0.0.1:6379", "--address")) == ("127.0.0.1:6379", "127.0.0.1", 6379)
    assert resolve_address(RayTarget("ray://head:10001", "RAY_ADDRESS")) == ("ray://head:10001", "head", 10001)
    assert resolve_address(RayTarget("[::1]:6379", "--address"))[1:] == ("::1", 6379)
    monkeypatch.setattr(raycluster, "recorded_address", lambda: "10.1.2.3:6380")
    assert resolve_address(RayTarget("auto", "RAY_ADDRESS")) == ("10.1.2.3:6380", "10.1.2.3", 6380)
    monkeypatch.setattr(raycluster, "recorded_address", lambda: "garbage")
    with pytest.raises(RayAddressError, match="RAY_ADDRESS='auto': Ray's address file records 'garbage', which is "
                                              "not host:port"):
        resolve_address(RayTarget("auto", "RAY_ADDRESS"))
    monkeypatch.setattr(raycluster, "recorded_address", lambda: None)
    with pytest.raises(RayAddressError, match="--address 'auto' but no running Ray cluster is recorded.*"
                                              "drop --address"):
        resolve_address(RayTarget("auto", "--address"))


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # loopback only, like the local stack's Ray
    s.listen()
    return s


def test_dialed_host_is_rays_and_safe(monkeypatch):
    monkeypatch.setattr(raycluster.ray_services, "resolve_ip_for_localhost", lambda h: "10.9.8.7" if h == "localhost"
                        else h)
    assert dialed_host("localhost") == "10.9.8.7" and dialed_host("head") == "head"

    def broken(host):
        raise RuntimeError("no route")

    monkeypatch.setattr(raycluster.ray_services, "resolve_ip_for_localhost", broken)
    assert dialed_host("127.0.0.1") == "127.0.0.1"
    monkeypatch.delattr(raycluster.ray_services, "resolve_ip_for_localhost")
    assert dialed_host("127.0.0.1") == "127.0.0.1"


def test_the_probe_dials_the_host_ray_init_dials(monkeypatch):
    """A loopback-only cluster addressed as 127.0.0.1 fails fast where ray.init would dial another IP; a
    ray:// address (Ray client) is dialed as given."""
    with _listener() as srv:
        port = srv.getsockname()[1]
        monkeypatch.setattr(raycluster.ray_services, "resolve_ip_for_localhost", lambda h: h)
        assert connect_address(RayTarget(f"127.0.0.1:{port}", "RAY_ADDRESS"), timeout_s=2) == f"127.0.0.1:{port}"
        monkeypatch.setattr(raycluster.ray_services, "resolve_ip_for_localhost", lambda h: "127.0.0.2")
        t0 = time.monotonic()
        with pytest.raises(RayAddressError, match=f"Ray cluster at 127.0.0.1:{port} \\(RAY_ADDRESS\\) does not "
                                                  f"answer at 127.0.0.2:{port}, which ray.init dials .*listens on "
                                                  "127.0.0.1 only.*RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for this "
                                                  "driver.*unset RAY_ADDRESS"):
            connect_address(RayTarget(f"127.0.0.1:{port}", "RAY_ADDRESS"), timeout_s=2)
        assert time.monotonic() - t0 < 3
        assert connect_address(RayTarget(f"ray://127.0.0.1:{port}", "--address"), timeout_s=2) == \
            f"ray://127.0.0.1:{port}"


def test_a_loopback_only_cluster_fails_fast_with_rays_own_rewrite():
    """The same with Ray's own ``resolve_ip_for_localhost`` (where it rewrites loopback: Linux, multi-node on)."""
    dial = dialed_host("127.0.0.1")
    if dial == "127.0.0.1":
        pytest.skip("Ray keeps a loopback address here (macOS/Windows, or RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)")
    with _listener() as srv:
        port = srv.getsockname()[1]
        dialed = re.escape(f"[{dial}]:{port}" if ":" in dial else f"{dial}:{port}")
        with pytest.raises(RayAddressError, match=f"does not answer at {dialed}, .*listens on 127.0.0.1 only"):
            connect_address(RayTarget(f"127.0.0.1:{port}", "--address"), timeout_s=2)


def test_a_dead_address_fails_fast():
    port = _dead_port()
    t0 = time.monotonic()
    with pytest.raises(RayAddressError, match=f"Ray cluster at 127.0.0.1:{port} \\(RAY_ADDRESS\\) does not answer"):
        connect_address(RayTarget(f"127.0.0.1:{port}", "RAY_ADDRESS"), timeout_s=2)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("how", ["flag", "env"])
def test_ingest_with_a_dead_address_fails_in_seconds(raw, tmp_path, how):
    port = _dead_port()
    argv = [sys.executable, "-m", "pipelines.ingest", "--dataset", "planted", "--raw", raw, "--out",
            str(tmp_path / "out"), "--no-progress"]
    env = _env()
    if how == "flag":
        argv += ["--address", f"127.0.0.1:{port}"]
    else:
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.monotonic() - t0
    assert p.returncode == 2 and elapsed < 20, (elapsed, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "does not answer" in lines[0]
    assert ("drop --address" if how == "flag" else "unset RAY_ADDRESS") in lines[0]
    assert not os.path.exists(tmp_path / "out" / "planted.zarr")  # nothing written


def test_dashboard_address_in_ray_address_is_rejected_with_a_hint(raw, tmp_path):
    p = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "planted", "--raw", raw, "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                       env=_env(RAY_ADDRESS="http://127.0.0.1:8265"))
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "RAY_ADDRESS='http://127.0.0.1:8265' is an HTTP address" in lines[0]


@pytest.mark.timeout(240)
def test_a_stale_address_file_does_not_hang_the_ingest(raw, tmp_path):
    """A dead `ray start` cluster's address file (in a private Ray temp dir, RAY_TMPDIR) is ignored: the
    ingest starts a Ray of its own instead of waiting for the dead one."""
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live below it
    try:
        os.makedirs(os.path.join(tmp, "ray"))
        with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write(f"127.0.0.1:{_dead_port()}")
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "planted", "--raw", raw, "--out",
                            str(tmp_path / "out"), "--no-progress", "--num-cpus", "1"],
                           capture_output=True, text=True, timeout=200, env=_env(RAY_TMPDIR=tmp))
        assert p.returncode == 0, p.stderr[-3000:]
        assert time.monotonic() - t0 < 180
        # "auto" reads that file, checks it and fails fast
        p = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "planted", "--raw", raw, "--out",
                            str(tmp_path / "out2"), "--address", "auto"],
                           capture_output=True, text=True, timeout=60, env=_env(RAY_TMPDIR=tmp))
        assert p.returncode == 2 and "recorded at its last `ray start`" in p.stderr and "does not answer" in p.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_num_cpus_is_ignored_with_a_warning_when_attaching(raw, tmp_path, ray_session):
    env = _env(RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    p = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "planted", "--raw", raw, "--out",
                        str(tmp_path / "out"), "--no-progress", "--num-cpus", "4"],
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "warning: --num-cpus 4 ignored: attaching to the Ray cluster at" in p.stderr
