"""PLANTED sample -> Ray Data ingest -> store, checked value by value against the raw npz files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr
import zarr

from anysat.sensors import get_sensor
from ingest_helpers import PLANTED_MODS, raw_planted
from pipelines.datasets import PLANTED_CLASSES, get_dataset
from pipelines.ingest import run_ingest
from pipelines.samplegen.planted import write_sample
from pipelines.store import StoreReader
from pipelines.store_meta import FORMAT, FORMAT_VERSION

TILES, TPS = 40, 16  # 3 shards, the last one partial


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ray_session):
    raw = str(tmp_path_factory.mktemp("planted_raw"))
    write_sample(raw, tiles=TILES, seed=3)
    out = str(tmp_path_factory.mktemp("planted_out"))
    res = run_ingest("planted", raw, out, tiles_per_shard=TPS, progress=False)
    return raw, out, res


def test_result_and_exit_code(planted):
    raw, out, res = planted
    assert res.exit_code == 0 and res.quarantine == []
    assert res.n_tiles == res.written == TILES
    assert res.shards_total == res.shards_written == 3
    assert res.url == os.path.join(out, "planted.zarr")


def test_every_value_equals_the_raw_files(planted):
    raw, out, _ = planted
    tiles = raw_planted(raw)
    r = StoreReader(os.path.join(out, "planted.zarr"))
    b = r.read(0, len(r))
    assert len(r) == len(tiles)
    # train, then val, then test; numeric id order inside a split
    assert list(b["tiles/id"]) == [t["id"] for t in tiles]
    assert list(b["tiles/split"]) == [t["split"] for t in tiles]
    for i, t in enumerate(tiles):
        assert b["labels/species"][i] == t["label"]
        for mod, (data, mask, ts) in t["mods"].items():
            n = data.shape[0]
            want = np.transpose(data, (0, 3, 1, 2))  # channel-last on disk
            np.testing.assert_array_equal(b[f"{mod}/data"][i, :n], want)
            np.testing.assert_array_equal(b[f"{mod}/mask"][i, :n], np.transpose(mask, (0, 3, 1, 2)) != 0)
            days = np.array([np.datetime64(int(x), "ms").astype("datetime64[D]").astype(int) for x in ts])
            np.testing.assert_array_equal(b[f"{mod}/dates"][i, :n], days)
            assert (b[f"{mod}/dates"][i, n:] == -1).all()
            assert (b[f"{mod}/data"][i, n:] == 0).all() and not b[f"{mod}/mask"][i, n:].any()


def test_shapes_chunks_and_attrs_follow_the_contract(planted):
    raw, out, _ = planted
    tiles = raw_planted(raw)
    url = os.path.join(out, "planted.zarr")
    root = zarr.open_group(url, mode="r")
    a = dict(root.attrs)
    spec = get_dataset("planted")
    assert a["format"] == FORMAT and a["format_version"] == FORMAT_VERSION
    assert a["dataset"] == "planted" and a["task"] == "multiclass" and a["classes"] == list(PLANTED_CLASSES)
    assert a["tile_m"] == 120 and a["patch_sizes_m"] == [30] and a["status"] == "complete"
    assert a["n_tiles"] == TILES and a["tiles_per_shard"] == TPS
    assert [s["shard"] for s in a["shards"]] == [0, 1, 2] and sum(s["written"] for s in a["shards"]) == TILES
    assert a["quarantine"] == [] and a["provenance"]["source"] == raw
    assert {"zarr", "ray", "numpy"} <= set(a["provenance"]["versions"])
    for mod in PLANTED_MODS:
        sensor = get_sensor(mod)
        t_max = max(t["mods"][mod][0].shape[0] for t in tiles)
        c, h, w = np.transpose(tiles[0]["mods"][mod][0], (0, 3, 1, 2)).shape[1:]
        info = a["sensors"][mod]
        assert info["bands"] == list(sensor.raw_bands)  # s1/alos: ratio is derived by the loader
        assert info["resolution_m"] == sensor.resolution_m and info["t_max"] == t_max
        data = root[f"{mod}/data"]
        assert data.shape == (TILES, t_max, c, h, w) and data.dtype == np.float32
        assert data.chunks == (1, t_max, c, h, w) and data.shards == (TPS, t_max, c, h, w)
        assert data.metadata.dimension_names == ("tile", "time", "band", "y", "x")
        assert root[f"{mod}/dates"].shape == (TILES, t_max) and root[f"{mod}/dates"].dtype == np.int32
        assert root[f"{mod}/mask"].shape == (TILES, t_max, 1, h, w) and root[f"{mod}/mask"].dtype == bool
    assert root["labels/species"].shape == (TILES,)
    assert spec.sensors == tuple(a["sensors"])
    # one object per shard: 3 shard files for s2/data, not 40 chunk files
    assert len(os.listdir(os.path.join(url, "s2", "data", "c"))) == 3
    with open(os.path.join(url, "quarantine.json")) as f:
        assert json.load(f)["quarantined"] == 0


def test_xarray_opens_every_group(planted):
    _, out, _ = planted
    url = os.path.join(out, "planted.zarr")
    ds = xr.open_zarr(url, group="s2", consolidated=False)
    assert ds["data"].dims == ("tile", "time", "band", "y", "x")
    assert ds["data"].shape[0] == TILES
    r = StoreReader(url)
    np.testing.assert_array_equal(ds["data"][5].values, r.read(5, 6, ["s2"])["s2/data"][0])
    tiles = xr.open_zarr(url, group="tiles", consolidated=False)
    assert [str(x) for x in tiles["id"].values] == list(r.ids())


def test_stats_equal_numpy_over_the_train_split(planted):
    raw, out, _ = planted
    r = StoreReader(os.path.join(out, "planted.zarr"))
    train = [t for t in raw_planted(raw) if t["split"] == "train"]
    for mod in PLANTED_MODS:
        c = train[0]["mods"][mod][0].shape[3]
        x = np.concatenate([np.moveaxis(t["mods"][mod][0], 3, 0).reshape(c, -1) for t in train],
                           axis=1).astype(np.float64)
        # the archive's validity mask excludes values from the statistics, like NaN does
        ok = np.concatenate([np.moveaxis(np.broadcast_to(t["mods"][mod][1] != 0, t["mods"][mod][0].shape), 3, 0)
                             .reshape(c, -1) for t in train], axis=1)
        s = r.stats(mod)
        fin = np.isfinite(x) & ok
        x = np.where(fin, x, np.nan)
        count = fin.sum(1)
        xz = np.where(fin, x, 0.0)
        mean = xz.sum(1) / count
        std = np.sqrt((xz ** 2).sum(1) / count - mean ** 2)
        np.testing.assert_array_equal(s["count"], count)
        np.testing.assert_array_equal(s["nan_count"], (~fin).sum(1))
        np.testing.assert_allclose(s["mean"], np.nanmean(x, axis=1), rtol=1e-12)
        np.testing.assert_allclose(s["std"], np.nanstd(x, axis=1), rtol=1e-6)
        np.testing.assert_allclose(s["std"], std, rtol=1e-9)
        np.testing.assert_array_equal(s["min"], np.nanmin(x, axis=1))
        np.testing.assert_array_equal(s["max"], np.nanmax(x, axis=1))
        assert s["bands"] == list(get_sensor(mod).raw_bands) and s["splits"] == ["train"]
    assert r.stats("s1")["nan_count"].sum() > 0  # the sample has SAR nodata, and it is not counted
    assert r.stats("s2")["nan_count"].sum() > 0  # masked (cloudy) values are not counted either


def test_reader_ranges_indices_and_splits(planted):
    _, out, _ = planted
    r = StoreReader(os.path.join(out, "planted.zarr"))
    full = r.read(0, len(r))
    for a, b in ((0, 16), (3, 7), (10, 35), (32, 40), (0, 0)):  # aligned, inside, across shards, last partial
        part = r.read(a, b, ["s2", "modis"])
        assert set(part) == {"tiles/id", "tiles/split", "s2/data", "s2/dates", "s2/mask", "modis/data",
                             "modis/dates", "modis/mask", "labels/species"}
        for k, v in part.items():
            np.testing.assert_array_equal(v, full[k][a:b], err_msg=k)
    # ``rows``: the tiles of a range in any order (a shuffled split), decoded straight into place, across
    # shards (whole-shard path) and inside a small range (zarr's path)
    for a, b, rows in ((10, 35, [24, 0, 7, 6, 13, 5]), (32, 40, [7, 0]), (3, 5, [1, 0]), (0, 16, [])):
        part = r.read(a, b, ["s2", "l7"], rows=np.array(rows, np.int64))
        for k, v in part.items():
            np.testing.assert_array_equal(v, full[k][a:b][rows], err_msg=k)
            assert len(v) == len(rows)
    with pytest.raises(IndexError, match="rows outside"):
        r.read(0, 8, ["s2"], rows=np.array([8]))
    idx = [17, 2, 2, 39]
    got = r.read_indices(idx, ["l7"])
    np.testing.assert_array_equal(got["l7/data"], full["l7/data"][idx])
    assert list(got["tiles/id"]) == list(full["tiles/id"][idx])
    splits = {s: r.split_indices(s) for s in r.split_names()}
    assert sorted(splits) == ["test", "train", "val"]
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(TILES))
    assert (full["tiles/split"][splits["val"]] == "val").all()
    assert r.shard_ranges() == [(0, 16), (16, 32), (32, 40)]
    import pickle

    r2 = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(r2.read(0, 4)["s2/data"], full["s2/data"][:4])
    with pytest.raises(IndexError):
        r.read(0, TILES + 1)
    with pytest.raises(KeyError, match="no sensor"):
        r.read(0, 1, ["aerial"])


def test_rerun_of_a_complete_store_is_a_no_op(planted, tmp_path):
    raw, out, _ = planted
    url = os.path.join(out, "planted.zarr")
    before = {k: np.asarray(v) for k, v in StoreReader(url).read(0, TILES).items()}
    res = run_ingest("planted", raw, out, progress=False)
    assert res.shards_written == 0 and res.written == TILES and res.exit_code == 0
    after = StoreReader(url).read(0, TILES)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
