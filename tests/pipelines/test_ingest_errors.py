"""Usage errors: one clear line on stderr, exit code 2, no traceback, nothing overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipelines.ingest import main
from pipelines.samplegen.planted import write_sample
from pipelines.store import FORMAT, StoreReader


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
