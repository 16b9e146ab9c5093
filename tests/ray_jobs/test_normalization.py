"""Input conventions (issue: inputs as the released weights expect them).

* AnySat's per-sample-averaged statistics recorded at ingest (pipelines/stats.py) equal a hand
  computation from the raw tiles (read with the dataset's reader, averaged with plain numpy loops),
  per split, and per fold for PASTIS-HD; a run on a fold set averages its folds with equal weight;
* ``data.normalization``: ``anysat`` (default), ``pooled``, a JSON file, and the fallback to ``pooled``
  (with a warning) for a store written before the per-sample statistics existed;
* the band plan: stored / derived / filled bands, a filled band is an error unless
  ``allow_filled_bands`` names it, and the allow-list itself is checked.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from pipelines import stats as ps
from pipelines import store as st
from pipelines.datasets import get_dataset
from pipelines.store_meta import update_meta
from ray_jobs import normalization as nz
from ray_jobs.config import PretrainConfig, load_config
from ray_jobs.plan import resolve_plans
from ray_jobs_helpers import PASTIS_TILES


def _expected(dataset: str, raw, sensor: str, splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """AnySat's statistics of ``sensor`` over the raw tiles of ``splits``, computed independently: per
    tile and band the mean and sample std (ddof 1) of the valid values, then the plain average."""
    source = get_dataset(dataset).source_class()(str(raw))
    means, stds = [], []
    for ref in source.list_tiles():
        if ref.split not in splits:
            continue
        arr = source.read_tile(ref).sensors.get(sensor)
        if arr is None:
            continue
        data = np.asarray(arr.data, np.float64)
        m, s = [], []
        for c in range(data.shape[1]):
            ok = np.isfinite(data[:, c])
            if arr.mask is not None:
                ok &= np.asarray(arr.mask)[:, 0 if arr.mask.shape[1] == 1 else c].astype(bool)
            v = data[:, c][ok]
            m.append(v.mean())
            s.append(v.std(ddof=1))
        means.append(m)
        stds.append(s)
    return np.mean(means, axis=0), np.mean(stds, axis=0)


def _cfg(root, dataset: str, **entry):
    norm = entry.pop("normalization", None)
    data = {"root": str(root), "datasets": [{"name": dataset, **entry}]}
    if norm:
        data["normalization"] = norm
    return load_config(raw={"data": data}, cls=PretrainConfig)


# ------------------------------------------------------------------------------ the statistics
def test_tile_moments_and_merge_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, size=(4, 3, 2, 5, 5))  # 4 tiles, T 3, C 2
    x[0, 1, 0, 2, 2] = np.nan
    lengths = np.array([3, 2, 0, 1])  # tile 2 lacks the sensor
    valid = rng.random((4, 3, 1, 5, 5)) > 0.2
    splits = ["train", "train", "train", "val"]
    parts = [ps.partial_sample_stats(x[:2], lengths[:2], splits[:2], valid[:2]),
             ps.partial_sample_stats(x[2:], lengths[2:], splits[2:], valid[2:])]
    final = ps.finalize_sample_stats(ps.merge_sample_partials(parts), ["a", "b"])
    for split, tiles in (("train", [0, 1]), ("val", [3])):
        exp_m, exp_s = [], []
        for i in tiles:
            t = lengths[i]
            v = x[i, :t]
            ok = np.isfinite(v) & valid[i, :t]
            exp_m.append([v[:, c][ok[:, c]].mean() for c in range(2)])
            exp_s.append([v[:, c][ok[:, c]].std(ddof=1) for c in range(2)])
        np.testing.assert_allclose(final[split].mean, np.mean(exp_m, 0), rtol=1e-12)
        np.testing.assert_allclose(final[split].std, np.mean(exp_s, 0), rtol=1e-12)
        assert final[split].tiles == (len(tiles),) * 2
    # a split set is the equal-weight average of its splits
    m, s = ps.combine_splits(final, ["train", "val"])
    np.testing.assert_allclose(m, (np.array(final["train"].mean) + final["val"].mean) / 2)
    assert ps.combine_splits(final, ["train", "test"]) is None
    assert ps.SampleStats.from_attrs(json.loads(json.dumps(final["val"].to_attrs()))) == final["val"]


def test_ingest_records_per_sample_statistics_per_split(raw_archives, sample_stores):
    meta = st.StoreReader(sample_stores / "planted.zarr").meta
    for sensor in ("s2", "s1", "alos"):  # s2 with a validity mask per pixel, s1/alos with raw SAR bands
        for split in ("train", "val", "test"):
            mean, std = _expected("planted", raw_archives["planted"], sensor, (split,))
            got = meta.sample_stats[sensor][split]
            np.testing.assert_allclose(got.mean, mean, rtol=1e-9)
            np.testing.assert_allclose(got.std, std, rtol=1e-9)
    # not the pooled statistics: bands whose level varies between tiles (the class signal in B4, B8,
    # B8A) have a much smaller averaged per-tile std than the pooled one
    sample, pooled = np.array(meta.sample_stats["s2"]["train"].std), np.array(meta.stats["s2"].std)
    assert np.all(sample[[2, 6, 7]] < 0.8 * pooled[[2, 6, 7]])


def test_pastis_statistics_per_fold_and_fold_set(pastis_store, tmp_path):
    from pipelines.samplegen import get_generator

    raw = tmp_path / "pastis-raw"  # the fixture's archive again (same generator, same seed)
    get_generator("pastis-hd")(str(raw), tiles=PASTIS_TILES, seed=0)
    meta = st.StoreReader(pastis_store / "pastis-hd.zarr").meta
    assert sorted(meta.sample_stats["s2"]) == [f"fold{k}" for k in range(1, 6)]
    per_fold = {}
    for k in (2, 3, 4):
        per_fold[k] = _expected("pastis-hd", raw, "s2", (f"fold{k}",))
        np.testing.assert_allclose(meta.sample_stats["s2"][f"fold{k}"].mean, per_fold[k][0], rtol=1e-9)
        np.testing.assert_allclose(meta.sample_stats["s2"][f"fold{k}"].std, per_fold[k][1], rtol=1e-9)
    # a run training on folds 2-4 (fold 2 of the 5-fold protocol) normalises with their equal-weight average
    plan = resolve_plans(_cfg(pastis_store, "pastis-hd", sensors=["s2"], split=["fold2", "fold3", "fold4"],
                              val_split=["fold5"]))["pastis-hd"]
    sp = plan.sensors["s2"]
    np.testing.assert_allclose(sp.mean, np.mean([per_fold[k][0] for k in (2, 3, 4)], axis=0), rtol=1e-6)
    np.testing.assert_allclose(sp.std, np.mean([per_fold[k][1] for k in (2, 3, 4)], axis=0), rtol=1e-6)
    assert sp.norm == "anysat"


# ------------------------------------------------------------------------------ the choice
def test_normalization_anysat_pooled_file_and_fallback(sample_stores, tmp_path, caplog):
    meta = st.StoreReader(sample_stores / "planted.zarr").meta
    kw = dict(sensors=["s2", "s1"])
    anysat = resolve_plans(_cfg(sample_stores, "planted", **kw))["planted"].sensors
    np.testing.assert_allclose(anysat["s2"].mean, meta.sample_stats["s2"]["train"].mean, rtol=1e-6)
    np.testing.assert_allclose(anysat["s2"].std, meta.sample_stats["s2"]["train"].std, rtol=1e-6)
    assert anysat["s2"].norm == "anysat" and np.all(np.isfinite(anysat["s1"].mean))  # derived ratio estimated

    pooled = resolve_plans(_cfg(sample_stores, "planted", normalization="pooled", **kw))["planted"].sensors
    np.testing.assert_allclose(pooled["s2"].mean, meta.stats["s2"].mean, rtol=1e-6)
    np.testing.assert_allclose(pooled["s2"].std, meta.stats["s2"].std, rtol=1e-6)
    assert not np.allclose(pooled["s2"].std, anysat["s2"].std)

    path = tmp_path / "norm.json"
    path.write_text(json.dumps({"s2": {"mean": list(range(10)), "std": [2.0] * 10},
                                "planted": {"s1": {"mean": [1, 2, 3], "std": [4, 5, 6]}}}))
    f = resolve_plans(_cfg(sample_stores, "planted", normalization=str(path), **kw))["planted"].sensors
    assert f["s2"].mean == tuple(float(i) for i in range(10)) and f["s2"].std == (2.0,) * 10
    assert f["s1"].mean == (1.0, 2.0, 3.0) and f["s1"].norm.startswith("file")
    path.write_text(json.dumps({"s2": {"mean": [0.0], "std": [1.0]}}))
    with pytest.raises(ValueError, match="needs 10 values"):
        resolve_plans(_cfg(sample_stores, "planted", normalization=str(path), sensors=["s2"]))

    # a store ingested before per-sample statistics existed: pooled, with a warning and a band-plan note
    old = tmp_path / "old"
    shutil.copytree(sample_stores / "planted.zarr", old / "planted.zarr")
    update_meta(str(old / "planted.zarr"), sample_stats=None)
    with caplog.at_level(logging.WARNING, logger="ray_jobs.normalization"):
        fb = resolve_plans(_cfg(old, "planted", **kw))["planted"]
    assert "falling back to the pooled statistics" in caplog.text
    np.testing.assert_allclose(fb.sensors["s2"].mean, meta.stats["s2"].mean, rtol=1e-6)
    rows = nz.band_plan({"planted": fb})
    assert all(r["normalization"].startswith("pooled (fallback") for r in rows)


# ------------------------------------------------------------------------------ the band plan
@pytest.fixture(scope="module")
def ts2c_store(tmp_path_factory):
    """A TimeSen2Crop sample store: its s2 has no B8 (stored as 0, masked invalid)."""
    from pipelines.ingest import run_ingest
    from pipelines.samplegen import get_generator

    raw = tmp_path_factory.mktemp("ts2c-raw")
    out = tmp_path_factory.mktemp("ts2c-store")
    get_generator("timesen2crop")(str(raw), tiles=32, seed=0)
    run_ingest("timesen2crop", str(raw), str(out), executor="local", progress=False)
    return out


def test_filled_band_is_an_error_unless_allowed(ts2c_store):
    with pytest.raises(ValueError, match=r"s2/B8.*allow_filled_bands"):
        resolve_plans(_cfg(ts2c_store, "timesen2crop"))
    plan = resolve_plans(_cfg(ts2c_store, "timesen2crop", allow_filled_bands=["s2/B8"]))["timesen2crop"]
    rows = {r["band"]: r for r in nz.band_plan({"timesen2crop": plan})}
    assert rows["B8"]["kind"] == "filled" and "no valid value" in rows["B8"]["source"]
    assert {r["kind"] for b, r in rows.items() if b != "B8"} == {"stored"}
    assert rows["B2"]["source"] == "stored s2/B2"
    # the filled band reaches the model as zeros (mean 0, std 1 of its zero values)
    assert rows["B8"]["mean"] == 0.0 and rows["B8"]["std"] == 1.0
    md = nz.band_plan_markdown(list(rows.values()))
    assert "| timesen2crop | s2 | B8 | filled |" in md and md.startswith("| dataset | sensor | band |")
    with pytest.raises(ValueError, match="not model bands"):
        resolve_plans(_cfg(ts2c_store, "timesen2crop", allow_filled_bands=["s2/B8", "s2/B13"]))


def test_band_plan_kinds_and_missing_bands(sample_stores):
    plan = resolve_plans(_cfg(sample_stores, "planted", sensors=["s2", "s1"]))["planted"]
    rows = nz.band_plan({"planted": plan})
    kinds = {(r["sensor"], r["band"]): r["kind"] for r in rows}
    assert kinds[("s1", "VV/VH")] == "derived" and kinds[("s1", "VV")] == kinds[("s2", "B8")] == "stored"
    assert len(rows) == 13
    missing = ["stored s1/VV", "missing: not in s1 (stored: VV), zero-filled and masked"]
    with pytest.raises(ValueError, match=r"\['s1/VH'\]"):
        nz.check_bands("x", "s1", ["VV", "VH"], missing, [])
    nz.check_bands("x", "s1", ["VV", "VH"], missing, ["s1/VH"])
