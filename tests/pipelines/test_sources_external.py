"""Readers of the six external evaluation datasets against their miniature raw archives.

Expectations are computed from the raw files with numpy / h5py / rasterio / pandas / json / torch
directly (never through the readers), so a reader that misreads a format cannot agree with itself.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
rasterio = pytest.importorskip("rasterio")
pd = pytest.importorskip("pandas")
torch = pytest.importorskip("torch")

from anysat.sensors import get_sensor  # noqa: E402
from pipelines.samplegen import bradd as gen_bradd  # noqa: E402
from pipelines.samplegen import hls_burn_scars as gen_hls  # noqa: E402
from pipelines.samplegen import sen1floods11 as gen_floods  # noqa: E402
from pipelines.samplegen import sickle as gen_sickle  # noqa: E402
from pipelines.samplegen import so2sat as gen_so2sat  # noqa: E402
from pipelines.samplegen import timesen2crop as gen_ts2c  # noqa: E402
from pipelines.sources.base import TileError  # noqa: E402
from source_checks import assert_probe_matches, check_contract, truncate  # noqa: E402
from pipelines.sources.bradd import BraDDS1TS  # noqa: E402
from pipelines.sources.hls_burn_scars import HLSBurnScars  # noqa: E402
from pipelines.sources.sen1floods11 import Sen1Floods11  # noqa: E402
from pipelines.sources.sickle import Sickle  # noqa: E402
from pipelines.sources.so2sat import So2Sat  # noqa: E402
from pipelines.sources.timesen2crop import TimeSen2Crop  # noqa: E402

EPOCH = dt.date(1970, 1, 1)


def day(d) -> int:
    if isinstance(d, str):
        d = dt.datetime.strptime(d.replace("-", "").replace("/", "")[:8], "%Y%m%d").date()
    if isinstance(d, dt.datetime):
        d = d.date()
    return (d - EPOCH).days


def tif(path: str):
    with rasterio.open(path) as ds:
        return ds.read(), ds.nodata, ds.descriptions


def reasons_for(src, refs, ids) -> dict[str, str]:
    out = {}
    for i in ids:
        with pytest.raises(TileError) as e:
            src.read_tile(refs[i])
        out[i] = e.value.reason
    return out


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """All six miniature archives, generated once (a few seconds on two cores)."""
    base = tmp_path_factory.mktemp("external")
    roots = {}
    for name, gen in (("bradd", gen_bradd), ("sickle", gen_sickle), ("ts2c", gen_ts2c), ("floods", gen_floods),
                      ("so2sat", gen_so2sat), ("hls", gen_hls)):
        roots[name] = str(base / name)
        gen.write_sample(roots[name], seed=3)
    return roots


# ---------------------------------------------------------------------------------------------------
# BraDD-S1TS
# ---------------------------------------------------------------------------------------------------
def _pt(path):
    with torch.serialization.safe_globals([dt.date, dt.datetime]):
        return torch.load(path, weights_only=True)


def test_bradd_tiles_match_raw_files(archives):
    root = archives["bradd"]
    meta = pd.read_csv(f"{root}/meta.csv", index_col=0)
    assert list(meta.columns) == ["alert_idx", "center_idx", "date", "sampling_type", "state", "file", "close_set"]
    src = BraDDS1TS(root)
    refs = src.list_tiles()
    want = {f[:-3]: {"validation": "val"}.get(s, s) for f, s in zip(meta["file"], meta["close_set"])}
    assert {r.id: r.split for r in refs} == want and sorted(want.values()).count("train") == 3
    ts = set()
    for ref in refs:
        tile = src.read_tile(ref)
        check_contract("bradd-s1ts", tile)
        d = _pt(f"{root}/Samples/{ref.id}.pt")
        img = d["image"].numpy()
        s1 = tile.sensors["s1"]
        assert s1.data.dtype == np.float32
        np.testing.assert_array_equal(s1.data, img)
        np.testing.assert_array_equal(s1.mask, np.isfinite(img))
        assert s1.dates.tolist() == [day(x) for x in d["image_dates"]]
        np.testing.assert_array_equal(tile.labels["deforest_new"], d["label"][1].numpy())
        np.testing.assert_array_equal(tile.labels["deforest_old"], d["label"][0].numpy())
        assert tile.labels["label_dates"].tolist() == [day(x) for x in d["label_dates"]]
        ts.add(img.shape[0])
        assert_probe_matches(src, ref, tile)
    assert len(ts) >= 3  # T varies


def test_bradd_damaged_copies_raise_tile_error(archives, tmp_path):
    root = str(tmp_path / "bradd")
    shutil.copytree(archives["bradd"], root)
    src = BraDDS1TS(root)
    refs = {r.id: r for r in src.list_tiles()}
    ids = sorted(refs)
    truncate(f"{root}/Samples/{ids[0]}.pt")
    d = _pt(f"{root}/Samples/{ids[1]}.pt")
    d["image_dates"] = d["image_dates"][:-1]
    torch.save(d, f"{root}/Samples/{ids[1]}.pt")
    d = _pt(f"{root}/Samples/{ids[2]}.pt")
    d["label"][1, 0, 0] = 7
    torch.save(d, f"{root}/Samples/{ids[2]}.pt")
    torch.save({"image": d["image"], "when": dt.timedelta(days=1)}, f"{root}/Samples/{ids[3]}.pt")
    r = reasons_for(src, refs, ids[:4])
    assert "unreadable" in r[ids[0]] and "image_dates" in r[ids[1]] and "0/1" in r[ids[2]]
    assert "unreadable" in r[ids[3]] or "keys" in r[ids[3]]  # timedelta is not on the allow-list
    src.read_tile(refs[ids[4]])


# ---------------------------------------------------------------------------------------------------
# SICKLE
# ---------------------------------------------------------------------------------------------------
S2_REG = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
L8_BANDS = ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10")


def _nearest(a, n=32):
    idx_r = (np.arange(n) * a.shape[-2]) // n
    idx_c = (np.arange(n) * a.shape[-1]) // n
    return a[..., idx_r[:, None], idx_c[None, :]]


def _sickle_date(folder, stem):
    tok = stem.split("_")
    k = {"S2": 1 if stem.startswith("T") else 0, "S1": 4, "L8": 2}[folder]
    return day(tok[k][:8])


def test_sickle_tiles_match_raw_files(archives):
    root = archives["sickle"]
    csv = pd.read_csv(f"{root}/sickle_dataset_tabular.csv")
    src = Sickle(root)
    refs = src.list_tiles()
    assert {r.id: r.split for r in refs} == {str(u): s for u, s in zip(csv["UNIQUE_ID"], csv["SPLIT"])}
    plots = {s: set(g["PLOT_ID"]) for s, g in csv.groupby("SPLIT")}
    saw_missing = saw_t2018 = saw_ignored_plot = False
    for ref in refs:
        tile = src.read_tile(ref)
        check_contract("sickle", tile)
        for folder, key, bands in (("S2", "s2", S2_REG), ("S1", "s1", ("VV", "VH")), ("L8", "l8-sr", L8_BANDS),
                                   ("S2", "s2-aux", ("B1", "B9", "B10"))):
            d = f"{root}/images/{folder}/npy/{ref.id}"
            files = sorted(os.listdir(d), key=lambda f: (_sickle_date(folder, f[:-4]), f))
            got = tile.sensors[key]
            assert got.dates.tolist() == [_sickle_date(folder, f[:-4]) for f in files]
            for t, f in enumerate(files):
                z = np.load(f"{d}/{f}")
                saw_t2018 |= f.startswith("T44")
                for c, b in enumerate(bands):
                    if b in z.files:
                        np.testing.assert_array_equal(got.data[t, c], _nearest(z[b]), err_msg=f"{ref.id} {f} {b}")
                        assert got.mask[t, c].all()
                    else:
                        assert not got.mask[t, c].any() and (got.data[t, c] == 0).all()
                        saw_missing |= b == "ST_B10"
        m, _, _ = tif(f"{root}/masks/10m/{ref.id}.tif")
        np.testing.assert_array_equal(tile.labels["masks_10m"], m)
        plot, crop = m[0], m[1]
        ok = (plot > 0) & np.isin(plot, list(plots[ref.split])) & (crop >= 1)
        np.testing.assert_array_equal(tile.labels["paddy"], np.where(ok, (crop > 1).astype(np.int8), -1))
        saw_ignored_plot |= bool(((plot > 0) & ~ok).any())
        assert_probe_matches(src, ref, tile)
    assert saw_missing and saw_t2018 and saw_ignored_plot
    # S2 registry order puts B8 before B8A (AnySat's B8A-first order is a loader choice)
    assert get_sensor("s2").bands[6:8] == ("B8", "B8A")


def test_sickle_damaged_copies_raise_tile_error(archives, tmp_path):
    root = str(tmp_path / "sickle")
    shutil.copytree(archives["sickle"], root)
    src = Sickle(root)
    refs = {r.id: r for r in src.list_tiles()}
    ids = sorted(refs)
    d = f"{root}/images/S1/npy/{ids[0]}"
    truncate(f"{d}/{sorted(os.listdir(d))[0]}")
    d = f"{root}/images/L8/npy/{ids[1]}"
    f = sorted(os.listdir(d))[0]
    os.rename(f"{d}/{f}", f"{d}/LC08_142051_nodate.npz")
    truncate(f"{root}/masks/10m/{ids[2]}.tif")
    r = reasons_for(src, refs, ids[:3])
    assert "npz" in r[ids[0]] and "date" in r[ids[1]] and "GeoTIFF" in r[ids[2]]
    os.remove(f"{root}/masks/10m/{ids[3]}.tif")  # withheld labels: the tile reads without labels
    assert src.read_tile(refs[ids[3]]).labels == {}


# ---------------------------------------------------------------------------------------------------
# TimeSen2Crop
# ---------------------------------------------------------------------------------------------------
def test_timesen2crop_tiles_match_raw_files(archives):
    root = archives["ts2c"]
    src = TimeSen2Crop(root)
    refs = src.list_tiles()
    want = {}
    for tile in sorted(os.listdir(root)):
        for cls in os.listdir(f"{root}/{tile}"):
            if cls.isdigit():
                for f in os.listdir(f"{root}/{tile}/{cls}"):
                    want[f"{tile}/{cls}/{f[:-4]}"] = ("test-2019" if tile.startswith("2019_") else
                                                      {"33TWN": "val", "33UVP": "test"}.get(tile, "train"))
    assert {r.id: r.split for r in refs} == want and len(refs) == 32
    flagged = 0
    for ref in refs:
        tile = src.read_tile(ref)
        check_contract("timesen2crop", tile)
        folder, cls, stem = ref.id.split("/")
        dates = pd.read_csv(f"{root}/{folder}/dates.csv")["acquisition_date"]
        px = pd.read_csv(f"{root}/{folder}/{cls}/{stem}.csv")
        assert list(px.columns) == ["B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B11", "B12", "Flag"]
        s2 = tile.sensors["s2"]
        assert s2.data.shape == (len(dates), 10, 1, 1) and s2.data.dtype == np.int32
        assert s2.dates.tolist() == [day(str(d)) for d in dates]
        for b in ("B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B11", "B12"):
            np.testing.assert_array_equal(s2.data[:, S2_REG.index(b), 0, 0], px[b].to_numpy())
        assert (s2.data[:, S2_REG.index("B8")] == 0).all() and not s2.mask[:, S2_REG.index("B8")].any()
        clear = px["Flag"].to_numpy() == 0
        np.testing.assert_array_equal(s2.mask[:, S2_REG.index("B2"), 0, 0], clear)
        np.testing.assert_array_equal(tile.sensors["s2-flag"].data[:, 0, 0, 0], px["Flag"].to_numpy())
        assert int(tile.labels["crop"]) == int(cls)
        flagged += int((~clear).sum())
    assert flagged > 0


def test_timesen2crop_damaged_copies_raise_tile_error(archives, tmp_path):
    root = str(tmp_path / "ts2c")
    shutil.copytree(archives["ts2c"], root)
    src = TimeSen2Crop(root)
    refs = {r.id: r for r in src.list_tiles()}
    p = f"{root}/33TUM/0/1.csv"
    lines = open(p).read().splitlines()
    open(p, "w").write("\n".join(lines[:-1]) + "\n")               # one row fewer than dates.csv
    p = f"{root}/33TUM/2/1.csv"
    df = pd.read_csv(p)
    df.drop(columns=["Flag"]).to_csv(p, index=False)                # 9 columns
    p = f"{root}/33TWN/0/1.csv"
    df = pd.read_csv(p).astype(float)
    df.iloc[0, 0] = 12.5
    df.to_csv(p, index=False)                                       # non-integer reflectance
    r = reasons_for(src, refs, ["33TUM/0/1", "33TUM/2/1", "33TWN/0/1"])
    assert "rows" in r["33TUM/0/1"] and "columns" in r["33TUM/2/1"] and "non-integer" in r["33TWN/0/1"]
    src.read_tile(refs["33TUM/0/2"])


# ---------------------------------------------------------------------------------------------------
# Sen1Floods11
# ---------------------------------------------------------------------------------------------------
HAND = "v1.1/data/flood_events/HandLabeled"


def test_sen1floods11_tiles_match_raw_files(archives):
    root = archives["floods"]
    with open(f"{root}/v1.1/Sen1Floods11_Metadata.geojson") as f:
        events = {ft["properties"]["location"]: ft["properties"] for ft in json.load(f)["features"]}
    want = {}
    for stem, split in (("train", "train"), ("valid", "val"), ("test", "test"), ("bolivia", "bolivia")):
        rows = pd.read_csv(f"{root}/v1.1/splits/flood_handlabeled/flood_{stem}_data.csv", header=None)
        want.update({s1[:-len("_S1Hand.tif")]: split for s1 in rows[0]})
    src = Sen1Floods11(root)
    refs = src.list_tiles()
    assert {r.id: r.split for r in refs} == want and "bolivia" in want.values()
    saw_nan = saw_zero = saw_unknown = False
    for ref in refs:
        tile = src.read_tile(ref)
        check_contract("sen1floods11", tile)
        s1, nd1, desc1 = tif(f"{root}/{HAND}/S1Hand/{ref.id}_S1Hand.tif")
        s2, nd2, desc2 = tif(f"{root}/{HAND}/S2Hand/{ref.id}_S2Hand.tif")
        lab, _, _ = tif(f"{root}/{HAND}/LabelHand/{ref.id}_LabelHand.tif")
        assert desc1 == ("VV", "VH") and desc2[8] == "B8A" and np.isnan(nd1) and nd2 == 0
        assert s2.dtype == np.int16 and s1.dtype == np.float32
        idx = [desc2.index(b) for b in S2_REG]
        np.testing.assert_array_equal(tile.sensors["s2"].data[0], s2[idx])
        np.testing.assert_array_equal(tile.sensors["s2"].mask[0], s2[idx] != 0)
        aux = [desc2.index(b) for b in ("B1", "B9", "B10")]
        np.testing.assert_array_equal(tile.sensors["s2-aux"].data[0], s2[aux])
        np.testing.assert_array_equal(tile.sensors["s1"].data[0], s1)
        np.testing.assert_array_equal(tile.sensors["s1"].mask[0], np.isfinite(s1))
        np.testing.assert_array_equal(tile.labels["water"], lab[0])
        ev = events.get(ref.id.split("_")[0])
        assert tile.sensors["s1"].dates.tolist() == [day(ev["s1_date"]) if ev else -1]
        assert tile.sensors["s2"].dates.tolist() == [day(ev["s2_date"]) if ev else -1]
        saw_unknown |= ev is None
        saw_nan |= bool(np.isnan(s1).any())
        saw_zero |= bool((s2 == 0).any())
        assert_probe_matches(src, ref, tile)
    assert saw_nan and saw_zero and saw_unknown


def test_sen1floods11_damaged_copies_raise_tile_error(archives, tmp_path):
    root = str(tmp_path / "floods")
    shutil.copytree(archives["floods"], root)
    truncate(f"{root}/{HAND}/S2Hand/Spain_7370579_S2Hand.tif")
    p = f"{root}/{HAND}/LabelHand/Ghana_103272_LabelHand.tif"
    with rasterio.open(p, "r+") as ds:
        a = ds.read()
        a[0, 0, 0] = 5
        ds.write(a)
    os.remove(f"{root}/{HAND}/S1Hand/Mekong_1111068_S1Hand.tif")
    src = Sen1Floods11(root)
    refs = {r.id: r for r in src.list_tiles()}
    r = reasons_for(src, refs, ["Spain_7370579", "Ghana_103272", "Mekong_1111068"])
    assert "GeoTIFF" in r["Spain_7370579"] and "outside" in r["Ghana_103272"] and "missing" in r["Mekong_1111068"]
    with pytest.raises(TileError):
        src.probe(refs["Mekong_1111068"])
    src.read_tile(refs["Bolivia_60373"])


# ---------------------------------------------------------------------------------------------------
# So2Sat LCZ42
# ---------------------------------------------------------------------------------------------------
def test_so2sat_tiles_match_raw_files(archives):
    root = archives["so2sat"]
    src = So2Sat(root)
    refs = src.list_tiles()
    assert [r.split for r in refs] == ["train"] * 8 + ["val"] * 3 + ["test"] * 3
    files = {}
    for stem in ("training", "validation", "testing"):
        with h5py.File(f"{root}/{stem}.h5", "r") as h5:
            files[stem] = {k: h5[k][()] for k in ("sen1", "sen2", "label")}
            assert h5["sen1"].dtype == np.float64 and h5["sen1"].shape[1:] == (32, 32, 8)
            assert (h5["sen2"].compression == "gzip") == (stem == "training")
    for ref in refs:
        tile = src.read_tile(ref)
        check_contract("so2sat", tile)
        stem, i = ref.id.split("/")
        f = files[stem]
        i = int(i)
        # channel-last -> channel-first without swapping rows and columns
        np.testing.assert_array_equal(tile.sensors["s2"].data[0, :, 3, 5], f["sen2"][i, 3, 5, :])
        np.testing.assert_array_equal(tile.sensors["s2"].data[0], np.moveaxis(f["sen2"][i], -1, 0))
        np.testing.assert_array_equal(tile.sensors["s1-so2sat"].data[0], np.moveaxis(f["sen1"][i], -1, 0))
        np.testing.assert_array_equal(tile.sensors["s1"].data[0], np.moveaxis(f["sen1"][i][..., [2, 0]], -1, 0))
        for arr in tile.sensors.values():
            assert arr.data.dtype == np.float64 and arr.dates.tolist() == [-1] and arr.mask is None
        assert int(tile.labels["lcz"]) == int(np.argmax(f["label"][i]))
        assert_probe_matches(src, ref, tile)


def test_so2sat_damaged_copies_raise_tile_error(archives, tmp_path):
    root = str(tmp_path / "so2sat")
    shutil.copytree(archives["so2sat"], root)
    with h5py.File(f"{root}/validation.h5", "a") as h5:
        lab = h5["label"][()]
        lab[1] = 0
        del h5["label"]
        h5.create_dataset("label", data=lab)
    with h5py.File(f"{root}/testing.h5", "a") as h5:
        del h5["sen2"]
    src = So2Sat(root)
    with pytest.raises(TileError) as e:
        src.list_tiles()  # the listing touches testing.h5 first and finds no sen2
    assert "sen2" in e.value.reason
    os.remove(f"{root}/testing.h5")
    src = So2Sat(root)
    refs = {r.id: r for r in src.list_tiles()}
    r = reasons_for(src, refs, ["validation/1"])
    assert "one-hot" in r["validation/1"]
    src.read_tile(refs["validation/0"])


# ---------------------------------------------------------------------------------------------------
# HLS Burn Scars
# ---------------------------------------------------------------------------------------------------
def test_hls_tiles_match_raw_files_and_anysat_split(archives):
    from sklearn.model_selection import train_test_split

    root = archives["hls"]
    train_imgs = sorted(f for f in os.listdir(f"{root}/training") if f.endswith("_merged.tif"))
    _, val = train_test_split(np.arange(len(train_imgs)), test_size=0.1, random_state=23)
    want = {f[len("subsetted_512x512_"):-len("_merged.tif")]: ("val" if i in set(val) else "train")
            for i, f in enumerate(train_imgs)}
    want.update({f[len("subsetted_512x512_"):-len("_merged.tif")]: "test"
                 for f in os.listdir(f"{root}/validation") if f.endswith("_merged.tif")})
    src = HLSBurnScars(root)
    refs = src.list_tiles()
    assert {r.id: r.split for r in refs} == want and list(want.values()).count("val") == 1
    saw = {"nodata": False, "9999": False, "nan": False, "all0": False}
    for ref in refs:
        tile = src.read_tile(ref)
        check_contract("hls-burn-scars", tile)
        folder = "validation" if ref.split == "test" else "training"
        img, nodata, _ = tif(f"{root}/{folder}/subsetted_512x512_{ref.id}_merged.tif")
        msk, _, _ = tif(f"{root}/{folder}/subsetted_512x512_{ref.id}.mask.tif")
        assert img.shape == (6, 512, 512) and img.dtype == np.float32 and nodata == -9999
        hls = tile.sensors["hls"]
        np.testing.assert_array_equal(hls.data[0], img)  # NaN compare equal in array_equal here
        np.testing.assert_array_equal(hls.mask[0], np.isfinite(img) & (img != -9999) & (img != 9999))
        yyyyddd = ref.id.split(".")[3]
        assert hls.dates.tolist() == [day(dt.date(int(yyyyddd[:4]), 1, 1) + dt.timedelta(int(yyyyddd[4:]) - 1))]
        np.testing.assert_array_equal(tile.labels["burn"], msk[0])
        saw["nodata"] |= bool((img == -9999).any())
        saw["9999"] |= bool((img == 9999).any())
        saw["nan"] |= bool(np.isnan(img).any())
        saw["all0"] |= bool((msk == 0).all())
        assert_probe_matches(src, ref, tile)
    assert all(saw.values()), saw
    assert get_sensor("hls").reduce_scale == 3 and get_sensor("hls").t0 == 366


def test_hls_tarball_reads_like_the_tree(archives, tmp_path):
    root = str(tmp_path / "tar")
    os.makedirs(root)
    shutil.copy(f"{archives['hls']}/hls_burn_scars.tar.gz", root)
    a, b = HLSBurnScars(archives["hls"]), HLSBurnScars(root)
    ra, rb = a.list_tiles(), b.list_tiles()
    assert [(r.id, r.split) for r in ra] == [(r.id, r.split) for r in rb]
    for x, y in list(zip(ra, rb))[:2]:
        ta, tb = a.read_tile(x), b.read_tile(y)
        np.testing.assert_array_equal(ta.sensors["hls"].data, tb.sensors["hls"].data)
        np.testing.assert_array_equal(ta.labels["burn"], tb.labels["burn"])
        assert_probe_matches(b, y, tb)


def test_hls_damaged_copies_raise_tile_error(archives, tmp_path):
    root = str(tmp_path / "hls")
    shutil.copytree(archives["hls"], root, ignore=shutil.ignore_patterns("*.tar.gz"))
    src = HLSBurnScars(root)
    refs = src.list_tiles()
    truncate(f"{root}/training/subsetted_512x512_{refs[0].id}_merged.tif")
    os.remove(f"{root}/training/subsetted_512x512_{refs[1].id}.mask.tif")
    src = HLSBurnScars(root)
    listed = src.list_tiles()
    assert len(listed) == 8  # a scene without its mask is still listed, and fails at read time
    refs = {r.id: r for r in listed}
    r0, r1 = listed[0].id, listed[1].id
    r = reasons_for(src, refs, [r0, r1])
    assert "GeoTIFF" in r[r0] and "label" in r[r1]
    with pytest.raises(TileError):
        src.probe(refs[r1])
    src.read_tile(listed[2])


# ---------------------------------------------------------------------------------------------------
# one ingest opened with xarray (the round-trip test covers the store of every dataset)
# ---------------------------------------------------------------------------------------------------
def test_so2sat_store_opens_with_xarray(archives, tmp_path, ray_session):
    xr = pytest.importorskip("xarray")
    from pipelines.ingest import run_ingest
    from pipelines.store import StoreReader

    res = run_ingest("so2sat", archives["so2sat"], str(tmp_path / "out"), tiles_per_shard=4, progress=False)
    assert res.quarantine == []
    ds = xr.open_zarr(res.url, group="s1-so2sat", consolidated=False)
    assert ds["data"].dims == ("tile", "time", "band", "y", "x") and ds["data"].shape == (14, 1, 8, 32, 32)
    assert ds["data"].dtype == np.float64 and (ds["dates"].values == -1).all()
    r = StoreReader(res.url)
    with h5py.File(f"{archives['so2sat']}/validation.h5", "r") as h5:
        i = list(r.ids()).index("validation/2")
        np.testing.assert_array_equal(ds["data"][i, 0].values, np.moveaxis(h5["sen1"][2], -1, 0))
    labels = xr.open_zarr(res.url, group="labels", consolidated=False)
    assert labels["lcz"].shape == (14,)
    tiles = xr.open_zarr(res.url, group="tiles", consolidated=False)
    assert [str(x) for x in tiles["split"].values].count("val") == 3


# ---------------------------------------------------------------------------------------------------
# all six: tile count scaling (make sample-data TILES=n), determinism
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gen,source,n", [(gen_bradd, BraDDS1TS, 9), (gen_sickle, Sickle, 8),
                                          (gen_ts2c, TimeSen2Crop, 37),
                                          (gen_floods, Sen1Floods11, 3), (gen_so2sat, So2Sat, 20),
                                          (gen_hls, HLSBurnScars, 3)])
def test_generators_scale_and_are_deterministic(tmp_path, gen, source, n):
    gen.write_sample(str(tmp_path / "a"), tiles=n, seed=11)
    gen.write_sample(str(tmp_path / "b"), tiles=n, seed=11)
    sa, sb = source(str(tmp_path / "a")), source(str(tmp_path / "b"))
    ra, rb = sa.list_tiles(), sb.list_tiles()
    assert len(ra) == n and len({r.id for r in ra}) == n
    assert [(r.id, r.split) for r in ra] == [(r.id, r.split) for r in rb]
    for x, y in (ra[0], rb[0]), (ra[-1], rb[-1]):
        ta, tb = sa.read_tile(x), sb.read_tile(y)
        for k in ta.sensors:
            np.testing.assert_array_equal(ta.sensors[k].data, tb.sensors[k].data)
            np.testing.assert_array_equal(ta.sensors[k].dates, tb.sensors[k].dates)
        for k in ta.labels:
            np.testing.assert_array_equal(ta.labels[k], tb.labels[k])
