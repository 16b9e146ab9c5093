"""Readers of TreeSatAI-TS, PASTIS-HD, FLAIR and S2NAIP-Urban against their miniature raw archives.

Every expectation is computed from the raw files with h5py / rasterio / numpy / json / Pillow directly
(never through the reader), so a reader that misreads the format cannot agree with itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
rasterio = pytest.importorskip("rasterio")

from anysat.sensors import get_sensor  # noqa: E402
from pipelines.datasets import TREESAT_CLASSES, get_dataset  # noqa: E402
from pipelines.samplegen import flair as gen_flair  # noqa: E402
from pipelines.samplegen import pastis as gen_pastis  # noqa: E402
from pipelines.samplegen import s2naip as gen_s2naip  # noqa: E402
from pipelines.samplegen import treesatai as gen_treesat  # noqa: E402
from pipelines.sources.base import TileError  # noqa: E402
from source_checks import assert_probe_matches, check_contract, truncate  # noqa: E402
from pipelines.sources.flair import Flair  # noqa: E402
from pipelines.sources.pastis import PastisHD  # noqa: E402
from pipelines.sources.s2naip import S2NaipUrban  # noqa: E402
from pipelines.sources.treesatai import TreeSatAITS  # noqa: E402

EPOCH = dt.date(1970, 1, 1)


def day(yyyymmdd: str) -> int:
    return (dt.datetime.strptime(yyyymmdd[:8], "%Y%m%d").date() - EPOCH).days


def tif(path: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def assert_tiles_equal(a, b, dates: tuple[str, ...] | None = None) -> None:
    assert a.id == b.id and set(a.sensors) == set(b.sensors)
    for key in a.sensors:
        np.testing.assert_array_equal(a.sensors[key].data, b.sensors[key].data, err_msg=key)
        if dates is None or key in dates:
            np.testing.assert_array_equal(a.sensors[key].dates, b.sensors[key].dates, err_msg=key)
        ma, mb = a.sensors[key].mask, b.sensors[key].mask
        assert (ma is None) == (mb is None)
        if ma is not None:
            np.testing.assert_array_equal(ma, mb, err_msg=key)
    assert set(a.labels) == set(b.labels)
    for name in a.labels:
        np.testing.assert_array_equal(a.labels[name], b.labels[name])


@pytest.fixture(scope="module")
def treesat(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("treesat") / "TreeSatAI-TS")
    gen_treesat.write_sample(root, seed=3)
    return root


def _treesat_expected(root: str, stem: str) -> dict:
    (h5name,) = [f for f in os.listdir(f"{root}/sentinel-ts") if f.rsplit("_", 1)[0] == stem]
    out = {}
    with h5py.File(f"{root}/sentinel-ts/{h5name}", "r") as h5:
        s2 = h5["sen-2-data"][()]
        probs = h5["sen-2-masks"][()][:, :2]
        out["s2"] = (s2, [day(p.decode().split("_")[2]) for p in h5["sen-2-products"][()]],
                     (probs < 60).all(axis=1, keepdims=True) & np.isfinite(s2).all(axis=1, keepdims=True))
        out["mask_channels"] = h5["sen-2-masks"].shape[1]
        for orbit in ("asc", "des"):
            d = h5[f"sen-1-{orbit}-data"][()]
            out[f"s1-{orbit}"] = (d, [day(p.decode().split("_")[4]) for p in h5[f"sen-1-{orbit}-products"][()]],
                                  np.isfinite(d))
    out["aerial"] = (tif(f"{root}/aerial/{stem}.tif")[None], [-1], None)
    return out


def test_treesat_listing_follows_split_files(treesat):
    refs = TreeSatAITS(treesat).list_tiles()
    want = {}
    for split in ("train", "val", "test"):
        with open(f"{treesat}/{split}_filenames.lst") as f:
            for line in f:
                want[line.strip()[:-len(".tif")]] = split
    assert [r.id for r in refs] == sorted(want)
    assert {r.id: r.split for r in refs} == want
    assert len(refs) == 6 and "Alnus_spec._5_13114_WEFL_NLF" in want  # the dotted name survives


def test_treesat_tiles_match_raw_files(treesat):
    src = TreeSatAITS(treesat)
    with open(f"{treesat}/labels/TreeSatBA_v9_60m_multi_labels.json") as f:
        labels = json.load(f)
    seen_nan = seen_10ch = False
    for ref in src.list_tiles():
        tile = src.read_tile(ref)
        check_contract("treesatai-ts", tile)
        exp = _treesat_expected(treesat, ref.id)
        for key in ("aerial", "s2", "s1-asc", "s1-des"):
            data, dates, mask = exp[key]
            got = tile.sensors[key]
            assert got.data.dtype == data.dtype
            np.testing.assert_array_equal(got.data, data)  # NaN == NaN for array_equal's purposes here
            assert got.dates.tolist() == dates
            if mask is None:
                assert got.mask is None
            else:
                np.testing.assert_array_equal(got.mask, mask)
        seen_nan |= bool(np.isnan(tile.sensors["s1-des"].data).any())
        seen_10ch |= exp["mask_channels"] == 10
        frac = np.zeros(15, np.float32)
        for genus, fr in labels[f"{ref.id}.tif"]:
            frac[TREESAT_CLASSES.index(genus)] = fr
        np.testing.assert_array_equal(tile.labels["genus_fraction"], frac)
        np.testing.assert_array_equal(tile.labels["genus"], (frac > 0.07).astype(np.uint8))
        assert_probe_matches(src, ref, tile)
    assert seen_nan and seen_10ch


def test_treesat_aerial_band_order_and_nodata_tag(treesat):
    import tifffile

    name = "Abies_alba_1_1005_WEFL_NLF"
    with tifffile.TiffFile(f"{treesat}/aerial/{name}.tif") as t:
        page = t.pages[0]
        assert page.tags[42113].value.strip("\x00") == "-9999"  # GDAL_NODATA on uint8, as in the archive
        assert page.dtype == np.uint8 and page.shape == (304, 304, 4) and page.rowsperstrip == 6
        raw = page.asarray()
    with rasterio.open(f"{treesat}/aerial/{name}.tif") as ds:
        assert ds.crs.to_epsg() == 25832 and ds.res == (0.2, 0.2)
    tile = TreeSatAITS(treesat).read_tile(next(r for r in TreeSatAITS(treesat).list_tiles() if r.id == name))
    # archive band 1 = IR = registry "NIR" first; no reordering for TreeSatAI
    assert get_sensor("aerial").bands == ("NIR", "G", "B", "R")
    np.testing.assert_array_equal(tile.sensors["aerial"].data[0], raw.transpose(2, 0, 1))


def test_treesat_hf_and_anysat_layouts_agree(tmp_path):
    hf, anysat = str(tmp_path / "hf"), str(tmp_path / "anysat")
    gen_treesat.write_sample(hf, seed=5)
    gen_treesat.write_sample(anysat, seed=5, layout="anysat")
    assert os.path.isdir(f"{anysat}/sentinel") and not os.path.exists(f"{anysat}/sentinel-ts")
    a_src, b_src = TreeSatAITS(hf), TreeSatAITS(anysat)
    a_refs, b_refs = a_src.list_tiles(), b_src.list_tiles()
    assert [(r.id, r.split) for r in a_refs] == [(r.id, r.split) for r in b_refs]
    assert {r.info["layout"] for r in b_refs} == {"anysat"}
    # S1 only in AnySat's derived .pth for one patch: the reader falls back to it
    stem = b_refs[0].id
    with h5py.File(f"{anysat}/sentinel/{stem}.h5", "a") as h5:
        del h5["sen-1-asc-data"]
    for ra, rb in zip(a_refs, b_refs):
        assert_tiles_equal(a_src.read_tile(ra), b_src.read_tile(rb))


def test_treesat_damaged_copies_raise_tile_error(treesat, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(treesat, root)
    src = TreeSatAITS(root)
    refs = {r.id: r for r in src.list_tiles()}
    names = sorted(refs)
    truncate(f"{root}/aerial/{names[0]}.tif")
    h5s = {f.rsplit("_", 1)[0]: f"{root}/sentinel-ts/{f}" for f in os.listdir(f"{root}/sentinel-ts")}
    with h5py.File(h5s[names[1]], "a") as h5:
        del h5["sen-2-data"]
    with h5py.File(h5s[names[2]], "a") as h5:
        prods = h5["sen-1-des-products"][()]
        del h5["sen-1-des-products"]
        h5.create_dataset("sen-1-des-products", data=prods[:-1], dtype=h5py.string_dtype("utf-8"))
    with open(f"{root}/labels/TreeSatBA_v9_60m_multi_labels.json") as f:
        labels = json.load(f)
    labels[f"{names[3]}.tif"] = [["Eucalyptus", 0.9]]
    with open(f"{root}/labels/TreeSatBA_v9_60m_multi_labels.json", "w") as f:
        json.dump(labels, f)
    reasons = {}
    for stem in names[:4]:
        with pytest.raises(TileError) as e:
            src.read_tile(refs[stem])
        reasons[stem] = e.value.reason
    assert "GeoTIFF" in reasons[names[0]]
    assert "sen-2-data" in reasons[names[1]]
    assert "products" in reasons[names[2]] and "des" in reasons[names[2]]
    assert "Eucalyptus" in reasons[names[3]]
    with pytest.raises(TileError):
        src.probe(refs[names[1]])
    src.read_tile(refs[names[4]])  # the others still read


# ---------------------------------------------------------------------------------------------------
# PASTIS-HD
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pastis(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pastis") / "PASTIS-HD")
    gen_pastis.write_sample(root, seed=1)
    return root


def _geojson(root):
    with open(f"{root}/metadata.geojson") as f:
        return json.load(f)


def test_pastis_listing_is_folds(pastis):
    meta = _geojson(pastis)
    assert meta["crs"]["properties"]["name"].endswith("2154")
    want = {str(ft["properties"]["ID_PATCH"]): f"fold{ft['properties']['Fold']}" for ft in meta["features"]}
    refs = PastisHD(pastis).list_tiles()
    assert [r.id for r in refs] == ["10000", "10001", "20000", "30000", "40000"]
    assert {r.id: r.split for r in refs} == want
    assert sorted(want.values()) == [f"fold{k}" for k in range(1, 6)]
    assert get_dataset("pastis-hd").split_folds["test"] == ("fold5",)


def test_pastis_tiles_match_raw_files(pastis):
    src = PastisHD(pastis)
    props = {str(ft["properties"]["ID_PATCH"]): ft["properties"] for ft in _geojson(pastis)["features"]}
    saw_fill = False
    for ref in src.list_tiles():
        tile = src.read_tile(ref)
        check_contract("pastis-hd", tile)
        p = props[ref.id]
        s2 = np.load(f"{pastis}/DATA_S2/S2_{ref.id}.npy")
        s1a = np.load(f"{pastis}/DATA_S1A/S1A_{ref.id}.npy")
        s1d = np.load(f"{pastis}/DATA_S1D/S1D_{ref.id}.npy")
        target = np.load(f"{pastis}/ANNOTATIONS/TARGET_{ref.id}.npy")
        spot = tif(f"{pastis}/DATA_SPOT/PASTIS_SPOT6_RVB_1M00_2019/SPOT6_RVB_1M00_2019_{ref.id}.tif")
        dates = {k: [day(str(p[k][str(i)])) for i in range(len(p[k]))] for k in ("dates-S2", "dates-S1A", "dates-S1D")}
        got = tile.sensors
        assert got["s2"].data.dtype == np.int16 and got["s1"].data.dtype == s1a.dtype
        np.testing.assert_array_equal(got["s2"].data, s2)
        np.testing.assert_array_equal(got["s2"].mask, (s2 != -10000).all(axis=1, keepdims=True))
        np.testing.assert_array_equal(got["s1"].data, s1a)             # VV, VH, VV-VH as stored
        np.testing.assert_array_equal(got["s1-des"].data, s1d)  # store-only sensor, every channel: VV, VH, VV-VH
        np.testing.assert_array_equal(got["spot"].data[0], spot)
        assert got["s2"].dates.tolist() == dates["dates-S2"]
        assert got["s1"].dates.tolist() == dates["dates-S1A"]
        assert got["s1-des"].dates.tolist() == dates["dates-S1D"]
        assert got["spot"].dates.tolist() == [-1]
        np.testing.assert_array_equal(tile.labels["semantic"], target[0])
        present = [c for c in range(1, 19) if (target[0] == c).any()]
        assert np.flatnonzero(tile.labels["classes"]).tolist() == [c - 1 for c in present]
        saw_fill |= bool((s2 == -10000).any())
        assert_probe_matches(src, ref, tile)
    assert saw_fill


def test_pastis_dates_as_json_string(pastis, tmp_path):
    root = str(tmp_path / "strdates")
    shutil.copytree(pastis, root)
    meta = _geojson(root)
    for ft in meta["features"]:  # what geopandas/pyogrio hands back for nested objects
        ft["properties"]["dates-S2"] = json.dumps(ft["properties"]["dates-S2"])
    with open(f"{root}/metadata.geojson", "w") as f:
        json.dump(meta, f)
    a, b = PastisHD(pastis), PastisHD(root)
    for ra, rb in zip(a.list_tiles(), b.list_tiles()):
        assert_tiles_equal(a.read_tile(ra), b.read_tile(rb))


def test_pastis_damaged_copies_raise_tile_error(pastis, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(pastis, root)
    truncate(f"{root}/DATA_SPOT/PASTIS_SPOT6_RVB_1M00_2019/SPOT6_RVB_1M00_2019_10000.tif")
    truncate(f"{root}/DATA_S1A/S1A_10001.npy")
    meta = _geojson(root)
    props = {ft["properties"]["ID_PATCH"]: ft["properties"] for ft in meta["features"]}
    d = props[20000]["dates-S2"]
    d.pop(str(len(d) - 1))  # one date fewer than T
    with open(f"{root}/metadata.geojson", "w") as f:
        json.dump(meta, f)
    t = np.load(f"{root}/ANNOTATIONS/TARGET_30000.npy")
    t[0, 0, 0] = 25
    np.save(f"{root}/ANNOTATIONS/TARGET_30000.npy", t)
    src = PastisHD(root)
    refs = {r.id: r for r in src.list_tiles()}
    reasons = {}
    for pid in ("10000", "10001", "20000", "30000"):
        with pytest.raises(TileError) as e:
            src.read_tile(refs[pid])
        reasons[pid] = e.value.reason
    assert "GeoTIFF" in reasons["10000"] and "npy" in reasons["10001"]
    assert "dates" in reasons["20000"] and "0..19" in reasons["30000"]
    with pytest.raises(TileError):
        src.probe(refs["20000"])
    src.read_tile(refs["40000"])


# ---------------------------------------------------------------------------------------------------
# FLAIR
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flair(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("flair") / "FLAIR")
    gen_flair.write_sample(root, seed=2)
    return root


def _flair_files(root):
    out = {}
    for tree, split in (("flair_aerial_train", "train"), ("flair_2_aerial_test", "test")):
        for d in sorted(os.listdir(f"{root}/{tree}")):
            for z in sorted(os.listdir(f"{root}/{tree}/{d}")):
                for f in os.listdir(f"{root}/{tree}/{d}/{z}/img"):
                    out[f[:-4]] = (tree, d, z, split)
    return out


def test_flair_listing_and_splits(flair, tmp_path):
    files = _flair_files(flair)
    with open(f"{flair}/splits.json") as f:
        domain_split = {d: s for s, ds in json.load(f).items() for d in ds}
    refs = Flair(flair).list_tiles()
    assert [r.id for r in refs] == sorted(files) == ["IMG_000826", "IMG_000827", "IMG_000901", "IMG_000902",
                                                     "IMG_070001", "IMG_070002"]
    assert {r.id: r.split for r in refs} == {k: domain_split[v[1]] for k, v in files.items()}
    # without AnySat's splits.json: the official train / test trees
    root = str(tmp_path / "nosplits")
    shutil.copytree(flair, root)
    os.remove(f"{root}/splits.json")
    assert {r.id: r.split for r in Flair(root).list_tiles()} == {k: v[3] for k, v in files.items()}


def test_flair_tiles_match_raw_files(flair):
    src = Flair(flair)
    files = _flair_files(flair)
    with open(f"{flair}/flair-2_centroids_sp_to_patch.json") as f:
        centroids = json.load(f)
    with open(f"{flair}/flair_aerial_metadata.json") as f:
        meta = json.load(f)
    saw_high = saw_edge = saw_cloud = False
    for ref in src.list_tiles():
        tile = src.read_tile(ref)
        check_contract("flair", tile)
        tree, d, z, _ = files[ref.id]
        num = ref.id[4:]
        sen_tree = tree.replace("aerial", "sen")
        prefix = f"{flair}/{sen_tree}/{d}/{z}/sen/SEN2_sp_{d}-{z}"
        data, masks = np.load(prefix + "_data.npy"), np.load(prefix + "_masks.npy")
        with open(prefix + "_products.txt") as f:
            dates = [day(line[11:19]) for line in f if line.strip()]
        r, c = centroids[f"{ref.id}.tif"]
        assert 5 <= r <= data.shape[2] - 5 and 5 <= c <= data.shape[3] - 5
        saw_edge |= min(r, c, data.shape[2] - r, data.shape[3] - c) <= 6
        s2 = tile.sensors["s2"]
        assert s2.data.dtype == data.dtype == np.uint16
        np.testing.assert_array_equal(s2.data, data[:, :, r - 5:r + 5, c - 5:c + 5])  # AnySat's crop
        np.testing.assert_array_equal(s2.mask[:, 0], (masks[:, :2, r - 5:r + 5, c - 5:c + 5] < 60).all(axis=1))
        saw_cloud |= not s2.mask.all()
        assert s2.dates.tolist() == dates
        img = tif(f"{flair}/{tree}/{d}/{z}/img/IMG_{num}.tif")
        msk = tif(f"{flair}/{tree.replace('aerial', 'labels')}/{d}/{z}/msk/MSK_{num}.tif")[0]
        np.testing.assert_array_equal(tile.sensors["aerial-flair"].data[0], img)
        assert tile.sensors["aerial-flair"].dates.tolist() == [day(meta[ref.id]["date"].replace("-", ""))]
        np.testing.assert_array_equal(tile.labels["nomenclature"], msk)
        np.testing.assert_array_equal(tile.labels["semantic"], np.where(msk > 13, 13, msk) - 1)
        assert tile.labels["semantic"].max() <= 12
        saw_high |= bool((msk >= 14).any())
        assert_probe_matches(src, ref, tile)
    assert saw_high and saw_edge and saw_cloud


def test_flair_centroid_past_the_edge_is_padded_and_masked(flair, tmp_path):
    root = str(tmp_path / "edge")
    shutil.copytree(flair, root)
    with open(f"{root}/flair-2_centroids_sp_to_patch.json") as f:
        cent = json.load(f)
    cent["IMG_000826.tif"] = [2, 70]  # window rows -3..6, cols 65..74 of a 60 x 72 super-area
    with open(f"{root}/flair-2_centroids_sp_to_patch.json", "w") as f:
        json.dump(cent, f)
    src = Flair(root)
    ref = next(r for r in src.list_tiles() if r.id == "IMG_000826")
    s2 = src.read_tile(ref).sensors["s2"]
    data = np.load(f"{root}/flair_sen_train/D004_2021/Z10_AU/sen/SEN2_sp_D004_2021-Z10_AU_data.npy")
    assert s2.data.shape[2:] == (10, 10)
    np.testing.assert_array_equal(s2.data[:, :, 3:, :7], data[:, :, 0:7, 65:72])
    assert not s2.mask[:, :, :3].any() and not s2.mask[:, :, :, 7:].any()
    assert (s2.data[:, :, :3] == 0).all() and (s2.data[:, :, :, 7:] == 0).all()


def test_flair_damaged_copies_raise_tile_error(flair, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(flair, root)
    truncate(f"{root}/flair_labels_train/D004_2021/Z10_AU/msk/MSK_000826.tif")
    prod = f"{root}/flair_sen_train/D013_2020/Z1_NF/sen/SEN2_sp_D013_2020-Z1_NF_products.txt"
    with open(prod) as f:
        lines = f.read().splitlines()
    with open(prod, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    mpath = f"{root}/flair_2_labels_test/D068_2021/Z3_AU/msk/MSK_070001.tif"
    with rasterio.open(mpath, "r+") as ds:
        m = ds.read()
        m[0, 0, 0] = 0
        ds.write(m)
    src = Flair(root)
    refs = {r.id: r for r in src.list_tiles()}
    reasons = {}
    for pid in ("IMG_000826", "IMG_000901", "IMG_070001"):
        with pytest.raises(TileError) as e:
            src.read_tile(refs[pid])
        reasons[pid] = e.value.reason
    assert "GeoTIFF" in reasons["IMG_000826"]
    assert "products" in reasons["IMG_000901"]
    assert "1..19" in reasons["IMG_070001"]
    with pytest.raises(TileError):
        src.probe(refs["IMG_000902"])  # same zone: the date count is wrong for it too
    src.read_tile(refs["IMG_000827"])


# ---------------------------------------------------------------------------------------------------
# S2NAIP-Urban
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s2naip(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("s2naip") / "S2NAIP-urban")
    gen_s2naip.write_sample(root, seed=4)
    return root


S2_10M, S2_20M = ("B2", "B3", "B4", "B8"), ("B5", "B6", "B7", "B8A", "B11", "B12")
L8_MS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")


def _by_name(groups: list[tuple[np.ndarray, tuple[str, ...]]], order: tuple[str, ...]) -> np.ndarray:
    cols = {}
    for arr, names in groups:
        for i, n in enumerate(names):
            cols[n] = arr[:, i]
    return np.stack([cols[n] for n in order], axis=1)


def test_s2naip_listing_follows_dicts(s2naip):
    want = {}
    for split in ("train", "val", "test"):
        with open(f"{s2naip}/{split}_dict.json") as f:
            want.update({t: split for t in json.load(f)["name"]})
    refs = S2NaipUrban(s2naip).list_tiles()
    assert [r.id for r in refs] == sorted(want) and len(refs) == 4
    assert {r.id: r.split for r in refs} == want


def test_s2naip_tiles_match_raw_files(s2naip):
    from PIL import Image

    src = S2NaipUrban(s2naip)
    dicts = {}
    for split in ("train", "val", "test"):
        with open(f"{s2naip}/{split}_dict.json") as f:
            d = json.load(f)
        for i, t in enumerate(d["name"]):
            dicts[t] = {k: d[k][i] for k in ("s2_dates", "s1_dates", "l8_dates")}
    for ref in src.list_tiles():
        tile = src.read_tile(ref)
        check_contract("s2naip-urban", tile)
        t = ref.id
        a = tif(f"{s2naip}/sentinel2/{t}_8.tif")
        b = tif(f"{s2naip}/sentinel2/{t}_16.tif")
        with rasterio.open(f"{s2naip}/sentinel2/{t}_8.tif") as ds:
            epsg, col, row = (int(v) for v in t.split("_"))
            assert ds.crs.to_epsg() == epsg and ds.transform.c == col * 640 and ds.transform.f == -row * 640
        ta = a.shape[0] // 4
        up = np.kron(b.reshape(ta, 6, 32, 32), np.ones((1, 1, 2, 2), b.dtype))
        s2 = _by_name([(a.reshape(ta, 4, 64, 64), S2_10M), (up, S2_20M)], get_sensor("s2").bands)
        np.testing.assert_array_equal(tile.sensors["s2"].data, s2)
        assert tile.sensors["s2"].dates.tolist() == [day(x) for x in dicts[t]["s2_dates"]]
        np.testing.assert_array_equal(tile.sensors["s2"].mask, (s2 != 0).any(axis=1, keepdims=True))
        pan, ms = tif(f"{s2naip}/landsat/{t}_8.tif"), tif(f"{s2naip}/landsat/{t}_16.tif")
        tl = pan.shape[0]
        up = np.kron(ms.reshape(tl, 10, 32, 32), np.ones((1, 1, 2, 2), ms.dtype))
        l8 = _by_name([(pan[:, None], ("B8",)), (up, L8_MS)], get_sensor("l8").bands)
        np.testing.assert_array_equal(tile.sensors["l8"].data, l8)
        assert tile.sensors["l8"].dates.tolist() == [day(x) for x in dicts[t]["l8_dates"]]
        s1 = tif(f"{s2naip}/sentinel1/{t}.tif")
        s1 = s1.reshape(s1.shape[0] // 2, 2, 64, 64)
        np.testing.assert_array_equal(tile.sensors["s1"].data, s1)
        np.testing.assert_array_equal(tile.sensors["s1"].mask, np.isfinite(s1))
        assert tile.sensors["s1"].dates.tolist() == [day(x) for x in dicts[t]["s1_dates"]]
        with Image.open(f"{s2naip}/naip/{t}.png") as im:
            assert im.mode == "RGBA"
            naip = np.asarray(im)
        np.testing.assert_array_equal(tile.sensors["naip"].data[0], naip.transpose(2, 0, 1))
        assert tile.labels == {}
        assert_probe_matches(src, ref, tile)
    # the upsampling is exactly undone by striding (lossless)
    np.testing.assert_array_equal(tile.sensors["s2"].data[:, 3:6, ::2, ::2], b.reshape(ta, 6, 32, 32)[:, :3])


def test_s2naip_anysat_and_ai2_layouts_agree(tmp_path):
    any_root, ai2_root = str(tmp_path / "anysat"), str(tmp_path / "ai2")
    gen_s2naip.write_sample(any_root, seed=8)
    gen_s2naip.write_sample(ai2_root, seed=8, layout="ai2")
    assert not any(f.endswith("_dict.json") for f in os.listdir(ai2_root))
    a, b = S2NaipUrban(any_root), S2NaipUrban(ai2_root)
    ra, rb = a.list_tiles(), b.list_tiles()
    assert [r.id for r in ra] == [r.id for r in rb]
    assert {r.split for r in rb} == {"train"}  # AI2 has no split files
    for x, y in zip(ra, rb):
        ta, tb = a.read_tile(x), b.read_tile(y)
        assert_tiles_equal(ta, tb, dates=("s2", "s1", "naip"))  # AI2 CSVs list S2 and S1 scenes only
        assert (tb.sensors["l8"].dates == -1).all()


def test_s2naip_damaged_copies_raise_tile_error(s2naip, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(s2naip, root)
    tiles = sorted(t for s in ("train", "val", "test") for t in json.load(open(f"{root}/{s}_dict.json"))["name"])
    truncate(f"{root}/sentinel2/{tiles[0]}_16.tif")
    d = json.load(open(f"{root}/train_dict.json"))
    i = d["name"].index(tiles[1])
    d["s1_dates"][i] = d["s1_dates"][i][:-1]
    with open(f"{root}/train_dict.json", "w") as f:
        json.dump(d, f)
    truncate(f"{root}/naip/{tiles[2]}.png")
    os.remove(f"{root}/sentinel1/{tiles[3]}.tif")
    src = S2NaipUrban(root)
    refs = {r.id: r for r in src.list_tiles()}
    reasons = {}
    for t in tiles[:3]:
        with pytest.raises(TileError) as e:
            src.read_tile(refs[t])
        reasons[t] = e.value.reason
    assert "GeoTIFF" in reasons[tiles[0]]
    assert "s1 dates" in reasons[tiles[1]]
    assert "PNG" in reasons[tiles[2]]
    tile = src.read_tile(refs[tiles[3]])  # no S1 scene file: the sensor is absent, not an error
    assert "s1" not in tile.sensors and "s2" in tile.sensors
    assert_probe_matches(src, refs[tiles[3]], tile)


# ---------------------------------------------------------------------------------------------------
# all four: tile count scaling, determinism
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gen,source,n", [(gen_treesat, TreeSatAITS, 11), (gen_pastis, PastisHD, 7),
                                          (gen_flair, Flair, 9), (gen_s2naip, S2NaipUrban, 6)])
def test_generators_scale_and_are_deterministic(tmp_path, gen, source, n):
    gen.write_sample(str(tmp_path / "a"), tiles=n, seed=11)
    gen.write_sample(str(tmp_path / "b"), tiles=n, seed=11)
    sa, sb = source(str(tmp_path / "a")), source(str(tmp_path / "b"))
    ra, rb = sa.list_tiles(), sb.list_tiles()
    assert len(ra) == n and len({r.id for r in ra}) == n
    assert [(r.id, r.split) for r in ra] == [(r.id, r.split) for r in rb]
    for x, y in zip(ra[:3], rb[:3]):
        assert_tiles_equal(sa.read_tile(x), sb.read_tile(y))
    sa.read_tile(ra[-1])


@pytest.mark.parametrize("fixture,source", [("treesat", TreeSatAITS), ("pastis", PastisHD), ("flair", Flair),
                                            ("s2naip", S2NaipUrban)])
def test_remote_filesystem_reads_the_same(request, fixture, source):
    """Through fsspec (memory:// stands in for s3://): the non-local code paths give the same tiles."""
    import fsspec

    local = request.getfixturevalue(fixture)
    fs = fsspec.filesystem("memory")
    url = f"memory://geoplex-{fixture}"
    fs.put(local, f"/geoplex-{fixture}", recursive=True)
    try:
        a, b = source(local), source(url)
        ra, rb = a.list_tiles(), b.list_tiles()
        assert [(r.id, r.split) for r in ra] == [(r.id, r.split) for r in rb]
        for x, y in zip(ra[:2], rb[:2]):
            tb = b.read_tile(y)
            assert_tiles_equal(a.read_tile(x), tb)
            assert_probe_matches(b, y, tb)
    finally:
        fs.rm(f"/geoplex-{fixture}", recursive=True)
