"""Miniature S2NAIP-Urban archive: the extracted AI2 folders.

Files per tile ``{epsg}_{col}_{row}``: NAIP RGBA PNG (A = NIR), Sentinel-2 band stacks at 10/20/40 m
(uint16, per image B02-B04,B08 / B05-B07,B8A,B11,B12 / B01,B09,B10), Sentinel-1 (float32 VV, VH),
Landsat pan + multispectral (uint16), an OpenStreetMap GeoJSON in NAIP pixel coordinates and a
WorldCover PNG. GeoTIFFs carry ``EPSG:{epsg}`` and ``Affine(res, 0, col*640, 0, -res, -row*640)``.

``layout="anysat"`` (default) also writes AnySat's ``{train,val,test}_dict.json`` (its own file, which
AnySat users hold); ``layout="ai2"`` leaves them out. Both write AI2's ``sentinel2.csv`` /
``sentinel1.csv`` with GUESSED ``tile,index,scene_id`` columns (the real columns are not documented).

Planted signal: OSM "building" polygons brighten NAIP and S2 under them.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine

BASE_TILES = ("32610_859_-8247", "32610_859_-8248", "32612_960_-6049", "32612_961_-6049")
S2_T, S1_T, L8_T = (3, 5, 4, 6), (2, 4), 4
_CATEGORIES = ("building", "road", "parking", "power_tower", "river", "park", "unknown_feature")


def _tiles(n: int) -> list[str]:
    out = list(BASE_TILES[:n])
    k = 0
    while len(out) < n:
        out.append(f"32611_{700 + k // 3}_{-7000 - k % 3}")
        k += 1
    return out


def _days(t: int, rng: np.random.Generator) -> np.ndarray:
    start = (np.datetime64("2019-01-01") - np.datetime64("1970-01-01")).astype(int)
    return np.sort(start + rng.choice(730, size=t, replace=False))


def _ymd(d) -> str:
    return np.datetime64(int(d), "D").astype(object).strftime("%Y%m%d")


def _osm(rng: np.random.Generator) -> tuple[dict, list[tuple[int, int, int, int]]]:
    """FeatureCollection in NAIP pixel space, and the building boxes (r0, r1, c0, c1)."""
    feats, boxes = [], []
    for _ in range(int(rng.integers(1, 4))):
        r0, c0 = (int(v) for v in rng.integers(32, 384, size=2))
        r1, c1 = r0 + int(rng.integers(48, 128)), c0 + int(rng.integers(48, 128))
        boxes.append((r0, r1, c0, c1))
        feats.append({"type": "Feature", "properties": {"category": "building"},
                      "geometry": {"type": "Polygon",
                                   "coordinates": [[[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]]}})
    feats += [
        {"type": "Feature", "properties": {"category": "road"},
         "geometry": {"type": "LineString", "coordinates": [[0, 500], [511, 480]]}},
        {"type": "Feature", "properties": {"category": "power_tower"},
         "geometry": {"type": "Point", "coordinates": [400, 20]}},
        {"type": "Feature", "properties": {"category": "river"},
         "geometry": {"type": "MultiLineString", "coordinates": [[[10, 10], [60, 200]], [[60, 200], [90, 511]]]}},
        {"type": "Feature", "properties": {"category": "park"},
         "geometry": {"type": "MultiPolygon", "coordinates": [[[[450, 450], [500, 450], [500, 500], [450, 450]]]]}},
        {"type": "Feature", "properties": {"category": "unknown_feature"},
         "geometry": {"type": "MultiPoint", "coordinates": [[5, 5], [6, 300]]}},
    ]
    return {"type": "FeatureCollection", "features": feats}, boxes


VARIANTS = {"anysat": "AnySat's copy: the AI2 folders plus {train,val,test}_dict.json",
            "ai2": "AI2's extracted archive: no dict files, dates from the scene tables"}


def write_sample(root: str, tiles: int | None = None, seed: int = 0, layout: str = "anysat",
                 variant: str | None = None) -> None:
    """Write ``tiles`` (default 4) S2NAIP-Urban tiles under ``root`` (``layout`` "anysat" or "ai2")."""
    layout = variant or layout  # a variant is a layout of the same files
    if layout not in ("anysat", "ai2"):
        raise ValueError(f"unknown s2naip-urban variant {layout!r}; known: {', '.join(VARIANTS)}")
    n = 4 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    for d in ("naip", "sentinel2", "sentinel1", "landsat", "openstreetmap", "worldcover"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    names = _tiles(n)
    dicts = {s: {"name": [], "s2_dates": [], "s1_dates": [], "l8_dates": []} for s in ("train", "val", "test")}
    csv_rows = {"sentinel2.csv": [], "sentinel1.csv": []}

    def tif(rel, arr, res, epsg, col, row):
        with rasterio.open(os.path.join(root, rel), "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2],
                           count=arr.shape[0], dtype=arr.dtype, crs=f"EPSG:{epsg}",
                           transform=Affine(res, 0, col * 640, 0, -res, -row * 640)) as ds:
            ds.write(arr)

    for i, tile in enumerate(names):
        epsg, col, row = (int(v) for v in tile.split("_"))
        osm, boxes = _osm(rng)
        bmask = np.zeros((512, 512), bool)
        for r0, r1, c0, c1 in boxes:
            bmask[r0:r1, c0:c1] = True
        b64 = bmask.reshape(64, 8, 64, 8).mean(axis=(1, 3))  # building fraction per 10 m pixel

        naip = rng.normal([90, 100, 85, 140], 15, size=(512, 512, 4))
        naip[bmask] += 70
        Image.fromarray(np.clip(naip, 0, 255).astype(np.uint8), mode="RGBA").save(
            os.path.join(root, "naip", f"{tile}.png"))
        with open(os.path.join(root, "openstreetmap", f"{tile}.geojson"), "w") as f:
            json.dump(osm, f)
        wc = np.where(b64 > 0.3, 50, rng.choice([10, 30, 40, 80], size=(64, 64))).astype(np.uint8)
        Image.fromarray(wc, mode="L").save(os.path.join(root, "worldcover", f"{tile}.png"))

        t2, t1 = S2_T[i % 4], S1_T[i % 2]
        d2, d1, dl = _days(t2, rng), _days(t1, rng), _days(L8_T, rng)
        refl = np.array([1200, 1100, 1000, 2200, 1300, 1500, 1700, 2000, 1900, 1400, 1100, 600, 20], np.float64)
        full = refl[None, :, None, None] * (1 + 0.05 * rng.standard_normal((t2, 13, 64, 64)))
        full += 1500 * b64[None, None]
        full = np.clip(np.rint(full), 1, 20000).astype(np.uint16)
        full[0, :, :, :6] = 0  # outside the swath on the first image
        # band groups: 10 m [B02 B03 B04 B08] 20 m [B05 B06 B07 B8A B11 B12] 40 m [B01 B09 B10]
        g10 = full[:, [0, 1, 2, 3]]
        g20 = full[:, 4:10, ::2, ::2]
        g40 = full[:, 10:13, ::4, ::4]
        tif(f"sentinel2/{tile}_8.tif", g10.reshape(-1, 64, 64), 10, epsg, col, row)
        tif(f"sentinel2/{tile}_16.tif", np.ascontiguousarray(g20).reshape(-1, 32, 32), 20, epsg, col, row)
        tif(f"sentinel2/{tile}_32.tif", np.ascontiguousarray(g40).reshape(-1, 16, 16), 40, epsg, col, row)
        vv = rng.uniform(0.02, 0.3, (t1, 1, 64, 64)) + 0.3 * b64
        s1 = np.concatenate([vv, vv * rng.uniform(0.1, 0.4, vv.shape)], axis=1).astype(np.float32)
        if i == 1:
            s1[0, :, :4] = np.nan  # S1 border nodata
        tif(f"sentinel1/{tile}.tif", s1.reshape(-1, 64, 64), 10, epsg, col, row)
        pan = np.clip(rng.normal(9000, 800, (L8_T, 64, 64)) + 3000 * b64, 0, 65535).astype(np.uint16)
        ms = np.clip(rng.normal(9000, 900, (L8_T, 10, 32, 32)), 0, 65535).astype(np.uint16)
        tif(f"landsat/{tile}_8.tif", pan, 10, epsg, col, row)
        tif(f"landsat/{tile}_16.tif", ms.reshape(-1, 32, 32), 20, epsg, col, row)

        split = "train" if i % 4 in (0, 1) else ("val" if i % 4 == 2 else "test")
        dicts[split]["name"].append(tile)
        dicts[split]["s2_dates"].append([_ymd(d) for d in d2])
        dicts[split]["s1_dates"].append([_ymd(d) for d in d1])
        dicts[split]["l8_dates"].append([_ymd(d) for d in dl])
        for k, d in enumerate(d2):
            scene = f"S2{'AB'[k % 2]}_MSIL1C_{_ymd(d)}T183121_N0208_R027_T10SEG_{_ymd(d)}T215845"
            csv_rows["sentinel2.csv"].append((tile, k, scene))
        for k, d in enumerate(d1):
            scene = f"S1{'AB'[k % 2]}_IW_GRDH_1SDV_{_ymd(d)}T015523_{_ymd(d)}T015548_029161_034FBE_2A5B"
            csv_rows["sentinel1.csv"].append((tile, k, scene))

    for name, rows in csv_rows.items():
        with open(os.path.join(root, name), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["tile", "index", "scene_id"])
            w.writerows(rows)
    if layout == "anysat":
        for split, d in dicts.items():
            with open(os.path.join(root, f"{split}_dict.json"), "w") as f:
                json.dump(d, f)
