"""The PLANTED miniature archive (layout, dtypes, ranges, learnable signal) and its reader."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.samplegen.planted import make_tile, write_sample
from pipelines.sources.base import TileError
from pipelines.sources.planted import Planted


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("p") / "Planted")
    write_sample(root)
    return root


def test_layout_dtypes_and_ranges(sample):
    counts = {}
    for split in ("train", "val", "test"):
        labels = json.load(open(os.path.join(sample, split, "labels2.json")))
        counts[split] = len(labels)
        for tid, cls in labels.items():
            assert tid.isdigit() and 0 <= cls < 40
            files = sorted(os.listdir(os.path.join(sample, split, tid)))
            assert len(files) == 15
            for mod in ("s2", "s1", "l7", "alos", "modis"):
                z = np.load(os.path.join(sample, split, tid, f"{tid}_{mod}.npz"))
                assert z.files == ["arr_0"] and z["arr_0"].dtype == np.float32 and z["arr_0"].ndim == 4
                m = np.load(os.path.join(sample, split, tid, f"{tid}_{mod}_mask.npz"))["arr_0"]
                assert m.dtype == np.uint8 and m.shape[:3] == z["arr_0"].shape[:3]
                ts = np.load(os.path.join(sample, split, tid, f"{tid}_{mod}_timestamp.npz"))["arr_0"]
                assert ts.dtype == np.int64 and ts.shape == (z["arr_0"].shape[0],)
                years = {dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).year for t in ts}
                assert years <= set(range(2017, 2023))
    assert counts == {"train": 5, "val": 2, "test": 1}
    assert sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sample) for f in fs) < 1e6


def test_t_varies_masks_have_zeros_and_ranges_are_real():
    tiles = [make_tile(i) for i in range(30)]
    assert len({m["s2"][0].shape[0] for _, m in tiles}) > 1 and any(m["alos"][0].shape[0] == 1 for _, m in tiles)
    assert any((m["s2"][1] == 0).any() for _, m in tiles)
    for _, m in tiles:
        assert 0 <= m["s2"][0].min() and m["s2"][0].max() <= 6000
        s1 = m["s1"][0]
        assert np.nanmin(s1) >= 0.001 and np.nanmax(s1) <= 0.5


def test_class_signal_is_learnable():
    cls, ratio, hv = [], [], []
    for i in range(200):
        c, m = make_tile(i)
        s2 = m["s2"][0]
        cls.append(c)
        ratio.append(s2[..., 6].mean() / s2[..., 2].mean())
        hv.append(m["alos"][0][..., 1].mean())
    assert np.corrcoef(cls, ratio)[0, 1] > 0.8
    assert np.corrcoef(cls, hv)[0, 1] > 0.8


def test_reader_and_probe_agree(sample):
    src = Planted(sample)
    for ref in src.list_tiles():
        tile, probe = src.read_tile(ref), src.probe(ref)
        for mod, arr in tile.sensors.items():
            assert probe.sensors[mod].shape == arr.data.shape
            assert arr.data.shape[1] == (2 if mod in ("s1", "alos") else arr.data.shape[1])
            assert arr.dates.dtype == np.int32 and arr.mask.dtype == bool


def test_reader_errors_name_the_file(sample, tmp_path):
    import shutil

    root = str(tmp_path / "P")
    shutil.copytree(sample, root)
    src = Planted(root)
    ref = src.list_tiles()[0]
    p = os.path.join(root, ref.split, ref.id, f"{ref.id}_modis.npz")
    os.remove(p)
    with pytest.raises(TileError) as e:
        src.read_tile(ref)
    assert e.value.path == p and "missing" in e.value.reason
    with pytest.raises(FileNotFoundError, match="labels2.json"):
        Planted(str(tmp_path)).list_tiles()


def test_samples_cli(tmp_path):
    out = str(tmp_path / "s")
    p = subprocess.run([sys.executable, "-m", "pipelines.samples", "--dataset", "planted", "--out", out,
                        "--tiles", "6"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sum(len(json.load(open(os.path.join(out, s, "labels2.json")))) for s in ("train", "val", "test")) == 6
    p = subprocess.run([sys.executable, "-m", "pipelines.samples", "--dataset", "nope", "--out", out],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: no sample generator") and "Traceback" not in p.stderr
