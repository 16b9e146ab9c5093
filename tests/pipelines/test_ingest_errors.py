"""Usage errors: one clear line on stderr, exit code 2, no traceback, nothing overwritten."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import fsspec.implementations.local as local_fs
import pytest
import ray.exceptions

from pipelines import ingest as ingest_mod
from pipelines import ingest_passes, ingest_shards
from pipelines.ingest import main, run_ingest
from pipelines.ingest_outcome import IngestError, OutputWriteError
from pipelines.samplegen.planted import write_sample
from pipelines.storage import write_json
from pipelines.store import StoreReader
from pipelines.store_meta import FORMAT, read_meta


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("raw") / "planted")
    write_sample(path, tiles=4, seed=0)
    return path


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_dataset_cli(tmp_path, raw):
    p = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "no-such-set", "--raw", raw,
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    line = _one_line(p.stderr)
    assert "unknown dataset 'no-such-set'" in line and "planted" in line


def test_missing_raw_path(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert main(["--dataset", "planted", "--raw", missing, "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert missing in line and "does not exist" in line


def test_raw_path_that_is_not_the_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--dataset", "planted", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "labels2.json" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("attrs,expect", [
    ({"format": FORMAT, "format_version": 0}, "format_version 0"),
    ({"format": "something-else", "format_version": 1}, "'something-else' store"),
])
def test_existing_store_of_another_format(tmp_path, raw, capsys, attrs, expect):
    import zarr

    url = tmp_path / "out" / "planted.zarr"
    zarr.open_group(str(url), mode="w", attributes=attrs)
    before = (url / "zarr.json").read_text()
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert expect in line and str(url) in line
    assert (url / "zarr.json").read_text() == before  # untouched
    with pytest.raises(ValueError, match=expect):
        StoreReader(str(url))


def test_foreign_directory_is_not_overwritten(tmp_path, raw, capsys):
    url = tmp_path / "out" / "planted.zarr"
    url.mkdir(parents=True)
    (url / "precious.txt").write_text("keep me")
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(tmp_path / "out"), "--overwrite"]) == 2
    assert "not an anysat-ray-store store" in _one_line(capsys.readouterr().err)
    assert (url / "precious.txt").read_text() == "keep me"


def test_bad_storage_options(tmp_path, raw, capsys):
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(tmp_path), "--storage-options", "[1]"]) == 2
    assert "--storage-options" in _one_line(capsys.readouterr().err)


# -- malformed options: one line naming the option, exit 2, before anything runs ---------------------------
@pytest.mark.parametrize("extra,expect", [
    (["--tiles-per-shard", "0"], "argument --tiles-per-shard: must be a positive integer, got 0"),
    (["--tiles-per-shard", "-3"], "argument --tiles-per-shard: must be a positive integer, got -3"),
    (["--tiles-per-shard", "many"], "argument --tiles-per-shard: not an integer: 'many'"),
    (["--num-cpus", "0"], "argument --num-cpus: must be a positive integer, got 0"),
    (["--max-dates", "-1"], "argument --max-dates: must be >= 0, got -1"),
    (["--lock-timeout", "0"], "argument --lock-timeout: must be a positive number of seconds"),
    (["--lock-timeout", "soon"], "argument --lock-timeout: not a number of seconds: 'soon'"),
    (["--date-range", "2020"], "argument --date-range: expected FIRST:LAST"),
    (["--date-range", "1960-01-01:2100-12-31"], "argument --date-range: 1960-01-01 is before 1970-01-01"),
    (["--date-range", "2020-01-01:2019-01-01"], "argument --date-range: 2019-01-01 is before 2020-01-01"),
    (["--date-range", "2020-13-01:2021-01-01"], "argument --date-range: expected FIRST:LAST"),
    (["--address", "http://127.0.0.1:8265"], "argument --address: 'http://127.0.0.1:8265' is an HTTP address"),
    (["--address", "localhost"], "argument --address: 'localhost' is not host:port"),
    (["--executor", "dask"], "argument --executor: invalid choice: 'dask'"),
    (["--out", ""], "argument --out: empty path"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_malformed_options_are_one_line(tmp_path, raw, capsys, extra, expect):
    argv = ["--dataset", "planted", "--raw", raw, "--out", str(tmp_path / "out"), "--no-progress", *extra]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and expect in line, line
    assert not (tmp_path / "out").exists()  # nothing created


def test_missing_required_option_is_one_line(capsys):
    assert main(["--dataset", "planted"]) == 2
    assert "required: --raw, --out" in _one_line(capsys.readouterr().err)


def test_run_ingest_rejects_bad_numbers(tmp_path, raw):
    for kwargs, expect in (({"tiles_per_shard": 0}, "--tiles-per-shard must be a positive integer"),
                           ({"num_cpus": -1}, "--num-cpus must be a positive integer"),
                           ({"lock_timeout": 0}, "--lock-timeout must be a positive number"),
                           ({"date_range": "2100-01-01:2000-01-01"}, "--date-range: 2000-01-01 is before")):
        with pytest.raises(IngestError, match=expect):
            run_ingest("planted", raw, str(tmp_path / "out"), executor="local", progress=False, **kwargs)


# -- the output is checked before any work ---------------------------------------------------------------
@pytest.fixture
def no_listing(monkeypatch):
    """Fail the test if the ingest gets as far as listing the archive (it must check --out first)."""
    def boom(*a, **k):
        raise AssertionError("the archive was listed before --out was checked")
    monkeypatch.setattr(ingest_passes, "ordered_listing", boom)


def test_out_is_a_file(tmp_path, raw, capsys, no_listing):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(out)]) == 2
    assert _one_line(capsys.readouterr().err) == f"error: --out {out} is a file, not a folder"


def test_out_below_a_file(tmp_path, raw, capsys, no_listing):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "stores"
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(out)]) == 2
    assert f"{tmp_path / 'f'} is a file, not a folder" in _one_line(capsys.readouterr().err)


def test_store_path_is_a_file(tmp_path, raw, capsys, no_listing):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "planted.zarr").write_text("x")
    assert main(["--dataset", "planted", "--raw", raw, "--out", str(tmp_path / "out")]) == 2
    assert "planted.zarr exists and is not an anysat-ray-store store" in _one_line(capsys.readouterr().err)


def test_out_not_writable(tmp_path, raw, capsys, no_listing, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores permission bits: refuse the probe file the way EACCES would
        real_open = os.open

        def deny(path, *a, **k):
            if ".anysat-write-check-" in str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(os, "open", deny)
    try:
        assert main(["--dataset", "planted", "--raw", raw, "--out", str(out)]) == 2
    finally:
        out.chmod(0o755)
    assert _one_line(capsys.readouterr().err) == f"error: --out {out} is not writable (Permission denied)"


def test_s3_bucket_missing(raw, s3_server, capsys, no_listing):
    so = json.dumps(s3_server["storage_options"])
    assert main(["--dataset", "planted", "--raw", raw, "--out", "s3://no-such-bucket/stores",
                 "--storage-options", so]) == 2
    assert "bucket 'no-such-bucket' does not exist" in _one_line(capsys.readouterr().err)


# -- a full disk: one line, exit 2, the shard being written is not recorded, a rerun resumes ---------------
def test_disk_full_is_one_line_and_records_nothing_half(tmp_path, raw, capsys, monkeypatch):
    real = ingest_shards.write_block
    calls = {"n": 0}

    def full_on_second_shard(root, start, block):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", "/fake/shard")
        return real(root, start, block)

    monkeypatch.setattr(ingest_shards, "write_block", full_on_second_shard)
    out = tmp_path / "out"
    argv = ["--dataset", "planted", "--raw", raw, "--out", str(out), "--tiles-per-shard", "2", "--executor", "local",
            "--no-progress"]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no space left on device while writing shard 1" in line and "rerun to resume" in line
    url = out / "planted.zarr"
    markers = sorted(p.name for p in (url / "_ingest" / "shards").iterdir())
    assert markers == ["000000.json"]  # shard 1 not recorded as done, no half-written marker
    assert read_meta(str(url)).status == "incomplete"
    assert not (out / "planted.zarr.lock").exists()  # the lock is released on errors too
    monkeypatch.setattr(ingest_shards, "write_block", real)
    assert main(argv) == 0  # the rerun resumes and completes
    assert read_meta(str(url)).complete


def test_disk_full_while_writing_a_marker_leaves_no_marker(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local_fs.LocalFileSystem, "mv", full)
    with pytest.raises(OSError):
        write_json(str(tmp_path / "s.zarr"), "_ingest/shards/000001.json", {"x": 1})
    assert list((tmp_path / "s.zarr" / "_ingest" / "shards").iterdir()) == []


def test_errors_raised_inside_ray_tasks_are_found_in_the_chain():
    inner = OutputWriteError("/s.zarr: no space left on device while writing shard 3")
    wrapped = ray.exceptions.RayTaskError("write", "traceback", inner).as_instanceof_cause()
    try:
        try:
            raise wrapped
        except Exception as e:
            raise RuntimeError("Ray Data execution failed") from e
    except RuntimeError as outer:
        found = ingest_mod._find_cause(outer, (OutputWriteError,))
    assert found is not None and "writing shard 3" in str(found)
