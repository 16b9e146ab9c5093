"""`make ingest` reports the ingest's own exit code (0 / 2 / 3) in one line, since make itself can
only exit 0 or 2 (issue 12, item 8)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from infra import exit_status
from pipelines import ingest_outcome
from pipelines.samplegen import corrupt
from pipelines.samplegen.planted import write_sample

REPO = Path(__file__).resolve().parents[2]


def _make_ingest(raw: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"))}
    # -o: never reinstall the venv from here, even if pyproject.toml is newer than the stamp.
    argv = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed", "ingest",
            "DATASET=planted", f"RAW={raw}", f"OUT={out}",
            "INGEST_ARGS=--executor local --no-progress", *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


def test_exit_codes_match_the_ingest():
    assert (exit_status.INGEST_OK, exit_status.INGEST_USAGE, exit_status.INGEST_PARTIAL) == (
        ingest_outcome.EXIT_OK, ingest_outcome.EXIT_USAGE, ingest_outcome.EXIT_QUARANTINED)


def test_describe_every_code(tmp_path):
    store = tmp_path / "planted.zarr"
    store.mkdir()
    (store / "quarantine.json").write_text(json.dumps({"quarantined": 7, "tiles": []}))
    d = lambda code: exit_status.describe_ingest(code, "planted", str(tmp_path) + "/")  # noqa: E731
    assert d(0) == f"ingest finished with exit code 0: complete, every listed tile is in {store}"
    assert d(3) == (f"ingest finished with exit code 3: partial, 7 tiles quarantined, see "
                    f"{store}/quarantine.json; make exits 2")
    assert d(2).startswith("ingest failed with exit code 2: usage error")
    assert d(1).startswith("ingest failed with exit code 1: unexpected error")
    assert d(137).startswith("ingest stopped with exit code 137: killed by SIGKILL")
    assert d(5).startswith("ingest failed with exit code 5: undocumented code")
    # no readable quarantine.json: still one line, never a crash
    assert "partial, some tiles quarantined" in exit_status.describe_ingest(3, "planted", str(tmp_path / "nowhere"))


def test_make_ingest_partial_and_usage_error(tmp_path):
    raw = tmp_path / "raw"
    write_sample(str(raw), tiles=8, seed=5)
    tid = sorted(json.loads((raw / "train" / "labels2.json").read_text()), key=int)[0]
    corrupt.truncate(str(raw / "train" / tid / f"{tid}_s2.npz"))
    out = tmp_path / "out"

    res = _make_ingest(raw, out)
    # make can only say "failed" (2); the line before make's own message carries the ingest's 3
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ingest ")]
    assert lines == [f"ingest finished with exit code 3: partial, 1 tile quarantined, see "
                     f"{out}/planted.zarr/quarantine.json; make exits 2"], res.stderr
    assert "Error 3" in res.stderr
    assert json.loads((out / "planted.zarr" / "quarantine.json").read_text())["quarantined"] == 1

    res = _make_ingest(tmp_path / "no-such-archive", tmp_path / "out2")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ingest ")]
    assert len(lines) == 1 and lines[0].startswith("ingest failed with exit code 2: usage error"), res.stderr
