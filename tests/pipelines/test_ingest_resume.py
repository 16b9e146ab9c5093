"""Kill the ingest CLI with SIGKILL mid-way, rerun it: the store equals an uninterrupted ingest."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from ingest_helpers import assert_stores_equal
from pipelines.ingest import run_ingest
from pipelines.samplegen.planted import write_sample

TILES, TPS = 400, 4  # 100 shards


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("big") / "planted")
    write_sample(raw, tiles=TILES, seed=11)
    return raw


def test_killed_ingest_resumes_to_the_same_store(big_raw, tmp_path, ray_session):
    killed_out = str(tmp_path / "killed")
    url = os.path.join(killed_out, "planted.zarr")
    # The CLI joins the test session's Ray cluster (as `ray job submit` would join a real one).
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.ingest", "--dataset", "planted", "--raw", big_raw,
                             "--out", killed_out, "--tiles-per-shard", str(TPS), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    markers = os.path.join(url, "_ingest", "shards", "*.json")
    deadline = time.monotonic() + 120
    try:
        while len(glob.glob(markers)) < 3:
            assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no shard completed within 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_at_kill = len(glob.glob(markers))
    assert done_at_kill < TILES // TPS, "the ingest finished before the kill; make the archive bigger"
    time.sleep(1.0)  # let the cluster reap the dead driver's tasks

    res = run_ingest("planted", big_raw, killed_out, progress=False)
    assert res.exit_code == 0 and res.written == TILES
    assert res.shards_written <= TILES // TPS - done_at_kill + 2  # complete shards were skipped
    assert res.shards_written < TILES // TPS

    ref = run_ingest("planted", big_raw, str(tmp_path / "clean"), tiles_per_shard=TPS, progress=False)
    assert_stores_equal(ref.url, res.url)
