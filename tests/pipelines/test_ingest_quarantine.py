"""Corrupt raw tiles are quarantined (file + reason), never abort the run, never land in the store."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipelines.ingest import main
from pipelines.samplegen import corrupt
from pipelines.samplegen.planted import write_sample
from pipelines.store import QUARANTINED, StoreReader


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    clean = str(tmp_path_factory.mktemp("clean") / "planted")
    write_sample(clean, tiles=12, seed=5)
    raw = str(tmp_path_factory.mktemp("damaged") / "planted")
    corrupt.copy_archive(clean, raw)
    ids = {s: sorted(json.load(open(os.path.join(raw, s, "labels2.json"))), key=int) for s in ("train", "val")}
    t = ids["train"]
    damage = {
        t[0]: corrupt.truncate(os.path.join(raw, "train", t[0], f"{t[0]}_s2.npz")),
        t[1]: corrupt.npz_drop_time_steps(os.path.join(raw, "train", t[1], f"{t[1]}_l7_timestamp.npz")),
        t[2]: corrupt.json_set(os.path.join(raw, "train", "labels2.json"), t[2], 40),
        t[3]: corrupt.npz_replace(os.path.join(raw, "train", t[3], f"{t[3]}_alos.npz"),
                                  np.zeros((3, 4, 4, 1), np.float32)),
        # headers intact, payload rotten: only the full read (write pass) can see it
        ids["val"][0]: corrupt.flip_bytes(os.path.join(raw, "val", ids["val"][0], f"{ids['val'][0]}_s2.npz")),
    }
    return clean, raw, damage


def test_corrupt_tiles_are_quarantined_and_the_rest_ingested(damaged, tmp_path, ray_session, capsys):
    clean, raw, damage = damaged
    out = str(tmp_path / "out")
    code = main(["--dataset", "planted", "--raw", raw, "--out", out, "--tiles-per-shard", "4", "--no-progress"])
    assert code == 3
    printed = capsys.readouterr().out
    assert "5 quarantined" in printed
    url = os.path.join(out, "planted.zarr")
    r = StoreReader(url)
    q = {rec["tile"]: rec for rec in r.quarantine}
    assert set(q) == set(damage)
    for tid, path in damage.items():
        assert q[tid]["file"] == path or q[tid]["file"].startswith(os.path.dirname(path)), q[tid]
        assert q[tid]["reason"]
    reasons = {tid: q[tid]["reason"] for tid in q}
    t = sorted(damage, key=int)
    assert "unreadable npz" in reasons[t[0]]
    assert "timestamps for T=" in reasons[t[1]]
    assert "outside 0..39" in reasons[t[2]]
    assert "1 channels, expected 2" in reasons[t[3]]
    with open(os.path.join(url, "quarantine.json")) as f:
        report = json.load(f)
    assert report["quarantined"] == 5 and {x["tile"] for x in report["tiles"]} == set(damage)
    # probe-stage tiles get no slot: 12 listed - 4 = 8 slots; the write-stage one keeps its slot
    assert len(r) == 8
    ids = list(r.ids())
    for tid, rec in q.items():
        if rec["stage"] == "probe":
            assert tid not in ids
        else:
            i = ids.index(tid)
            assert r.splits()[i] == QUARANTINED and i not in r.split_indices(["train", "val", "test"])
            b = r.read(i, i + 1)
            assert (b["s2/dates"] == -1).all() and (b["s2/data"] == 0).all()
    # every healthy tile is in the store with its clean values
    good = StoreReader(_ingest_clean(clean, tmp_path))
    gids = list(good.ids())
    for i, tid in enumerate(ids):
        if tid in damage:
            continue
        j = gids.index(tid)
        a, b = r.read(i, i + 1), good.read(j, j + 1)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k][:, :a[k].shape[1]] if a[k].ndim > 1 else b[k], err_msg=k)


def _ingest_clean(clean: str, tmp_path) -> str:
    out = str(tmp_path / "clean_out")
    assert main(["--dataset", "planted", "--raw", clean, "--out", out, "--no-progress"]) == 0
    return os.path.join(out, "planted.zarr")
