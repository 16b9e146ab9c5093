"""One writer per store: a second ingest fails at once, a stale lock is taken over, no foreign store is deleted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from pipelines import store as st
from pipelines.ingest import main, run_ingest
from pipelines.ingest_outcome import IngestError
from pipelines.lock import LockHeld, LockLost, StoreLock, host_identity, lock_url
from pipelines.samplegen.planted import write_sample
from pipelines.storage import store_url
from pipelines.store_layout import StoreLayout
from pipelines.store_meta import StoreMeta, read_meta


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("raw") / "planted")
    write_sample(path, tiles=6, seed=3)
    return path


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            s = os.stat(p)
            out[os.path.relpath(p, root)] = (s.st_size, s.st_mtime_ns)
    return out


def _foreign_lock(url: str, *, heartbeat_age: float, host: str = "other-host", pid: int = 4242, **owner) -> dict:
    now = time.time()
    lock = {"owner": {"host": host, "pid": pid, "user": "someone", "uuid": "f" * 32, "boot_id": "x", "pid_ns": 1,
                      "pid_started": 1.0, **owner},
            "dataset": "planted", "store": url, "started": "2026-01-01T10:00:00Z",
            "heartbeat": "2026-01-01T10:05:00Z", "heartbeat_unix": now - heartbeat_age, "heartbeat_every_s": 30.0}
    with open(lock_url(url), "w") as f:
        json.dump(lock, f)
    return lock


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_second_ingest_fails_at_once_and_touches_nothing(raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress"]) == 0
    url = os.path.join(out, "planted.zarr")
    assert not os.path.exists(lock_url(url))  # released at the end
    before = _snapshot(url)
    _foreign_lock(url, heartbeat_age=5)
    capsys.readouterr()
    t0 = time.monotonic()
    # the default executor: fails before it would start Ray or list the archive
    code = main(["--dataset", "planted", "--raw", raw, "--out", out, "--overwrite", "--no-progress"])
    elapsed = time.monotonic() - t0
    assert code == 2 and elapsed < 5, elapsed
    line = _one_line(capsys.readouterr().err)
    assert "being written by another ingest" in line and "pid 4242 on other-host" in line
    assert "since 2026-01-01T10:00:00Z" in line and "--lock-timeout" in line
    assert _snapshot(url) == before
    with open(lock_url(url)) as f:
        assert json.load(f)["owner"]["uuid"] == "f" * 32  # the other writer's lock is left alone


def test_stale_lock_is_taken_over_with_a_warning(raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    url = os.path.join(out, "planted.zarr")
    _foreign_lock(url, heartbeat_age=3600)
    code = main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: took over the ingest lock" in err and "pid 4242 on other-host" in err
    assert re.search(r"its last heartbeat is 36\d\d s old", err), err
    assert not os.path.exists(lock_url(url))
    # a lock younger than a shorter --lock-timeout's multiple of its heartbeat period is not stale
    _foreign_lock(url, heartbeat_age=60)
    assert main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress",
                 "--lock-timeout", "30"]) == 2  # 60 s < 3 heartbeat periods of 30 s
    assert re.search(r"last heartbeat 6\d s ago", capsys.readouterr().err)
    _foreign_lock(url, heartbeat_age=120)
    assert main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress",
                 "--lock-timeout", "30"]) == 0
    assert "took over" in capsys.readouterr().err


def test_lock_of_a_dead_process_on_this_machine_is_taken_over(raw, tmp_path, capsys):
    out = str(tmp_path / "out")
    os.makedirs(out)
    url = os.path.join(out, "planted.zarr")
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)
    _foreign_lock(url, heartbeat_age=1, pid=dead, **host_identity())
    assert main(["--dataset", "planted", "--raw", raw, "--out", out, "--executor", "local", "--no-progress"]) == 0
    assert "its process no longer exists" in capsys.readouterr().err


def test_heartbeat_refreshes_and_a_lost_lock_stops_the_writer(tmp_path):
    url = str(tmp_path / "x.zarr")
    a = StoreLock(url, timeout_s=0.4, dataset="planted")
    assert a.acquire() is None
    a.start_heartbeat()
    first = a.read()["heartbeat_unix"]
    time.sleep(0.5)
    assert a.read()["heartbeat_unix"] > first  # refreshed while held
    b = StoreLock(url, timeout_s=0.4)
    with pytest.raises(LockHeld, match="being written by another ingest"):
        b.acquire()
    a.check(verify=True)
    # another writer takes the lock over (as if this process had stalled past the timeout)
    with a._io:  # not between the heartbeat's check and its write
        _foreign_lock(url, heartbeat_age=0)
    time.sleep(0.4)
    with pytest.raises(LockLost, match="lost the ingest lock"):
        a.check()
    a.release()
    assert json.load(open(lock_url(url)))["owner"]["uuid"] == "f" * 32  # not ours: not deleted
    os.remove(lock_url(url))
    with StoreLock(url, timeout_s=5) as c:
        assert c.held and os.path.exists(lock_url(url))
    assert not os.path.exists(lock_url(url))


def _other_dataset_store(url: str, dataset: str, status: str = "complete") -> None:
    layout = StoreLayout(dataset, 2, 2, {})
    st.create_store(url, layout, StoreMeta.for_layout(layout, task="none", status=status))


@pytest.mark.parametrize("dataset,expect", [
    ("treesatai-ts", "holds a store of dataset 'treesatai-ts', not 'planted'"),
    ("planted", "complete planted store without its ingest plan"),
])
def test_a_complete_store_that_is_not_ours_to_resume_is_kept(raw, tmp_path, capsys, dataset, expect):
    out = tmp_path / "out"
    url = str(out / "planted.zarr")
    _other_dataset_store(url, dataset)
    before = _snapshot(url)
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(out), "--executor", "local", "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert expect in line and "--overwrite" in line
    assert _snapshot(url) == before and not os.path.exists(lock_url(url))
    # --overwrite replaces it
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(out), "--executor", "local", "--no-progress",
                 "--overwrite"]) == 0
    assert read_meta(url).dataset == "planted"


def test_half_created_store_of_another_dataset_is_kept(raw, tmp_path, capsys):
    out = tmp_path / "out"
    url = str(out / "planted.zarr")
    _other_dataset_store(url, "flair", status="incomplete")
    before = _snapshot(url)
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(out), "--executor", "local", "--no-progress"]) == 2
    assert "holds a store of dataset 'flair'" in _one_line(capsys.readouterr().err)
    assert _snapshot(url) == before


def test_lock_on_s3(s3_server):
    so = s3_server["storage_options"]
    url = f"s3://{s3_server['bucket']}/locks/planted.zarr"
    a = StoreLock(url, so, timeout_s=60, settle_s=0.05)
    assert a.acquire() is None and a.read()["owner"]["uuid"] == a.id
    with pytest.raises(LockHeld, match=r"pid \d+ on "):
        StoreLock(url, so, timeout_s=60, settle_s=0.05).acquire()
    assert a.refresh()
    a.release()
    assert a.read() is None
    # an abandoned lock on S3 is taken over
    b = StoreLock(url, so, timeout_s=0.2, heartbeat_every_s=0.05, settle_s=0.05)
    b.acquire()
    b.held = False  # "crash": nobody releases it, no heartbeat
    c = StoreLock(url, so, timeout_s=0.2, settle_s=0.05)
    time.sleep(0.3)
    warning = c.acquire()
    assert warning and "took over" in warning and c.read()["owner"]["uuid"] == c.id
    c.release()


def test_run_ingest_on_s3_refuses_a_held_store(tmp_path, s3_server, raw):
    so = s3_server["storage_options"]
    out = f"s3://{s3_server['bucket']}/held"
    holder = StoreLock(store_url(out, "planted"), so, timeout_s=60, settle_s=0.05)
    holder.acquire()
    try:
        with pytest.raises(IngestError, match="being written by another ingest"):
            run_ingest("planted", raw, out, storage_options=so, raw_storage_options={}, executor="local",
                       progress=False)
    finally:
        holder.release()
