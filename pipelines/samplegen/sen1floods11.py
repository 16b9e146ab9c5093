"""Miniature Sen1Floods11 v1.1 hand-labelled archive.

The GeoTIFF profiles follow the real chips: 512 x 512, EPSG:4326 at 8.983e-5 deg, DEFLATE, 512-px tiles,
band-separate; S1Hand float32 VV/VH with a NaN nodata tag, S2Hand int16 13 bands (B8A 9th) with nodata 0,
LabelHand int16 without a tag. Oddities: the ``Mekong`` event has no metadata row, one S1 chip has a NaN
stripe, one S2 chip a 0 block, and the held-out Bolivia split file exists. Planted signal: water pixels
have low VV/VH and high B3 - B8.
"""

from __future__ import annotations

import json
import os

import numpy as np
import rasterio
from rasterio.transform import Affine

SIZE = 512
RES = 8.983152841195215e-05
HAND = "v1.1/data/flood_events/HandLabeled"
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
# (chip, split file)
CHIPS = (("Spain_7370579", "train"), ("Ghana_103272", "train"), ("Sri-Lanka_135713", "valid"),
         ("Mekong_1111068", "test"), ("Bolivia_60373", "bolivia"))
EVENTS = {  # location: (ISO_CC, s1_date, s2_date, lon, lat)
    "Spain": ("ESP", "2019/09/17", "2019/09/18", -1.1, 38.0),
    "Ghana": ("GHA", "2018/09/18", "2018/09/19", -1.0, 10.3),
    "Sri-Lanka": ("LKA", "2017/05/30", "2017/05/28", 80.2, 6.5), "Bolivia": ("BOL", "2018/02/15", "2018/02/15", -65.3, -13.9),
}
# S2 L1C TOA x 1e4 of dry land / water, B1..B12
_LAND = np.array([1300, 1100, 1000, 950, 1300, 2000, 2300, 2400, 2500, 800, 40, 2300, 1600], np.float64)
_WATER = np.array([1300, 1100, 1150, 800, 700, 600, 550, 500, 450, 200, 20, 250, 150], np.float64)


def _chips(n: int) -> list[tuple[str, str]]:
    out = list(CHIPS[:n])
    splits = ("train", "train", "valid", "test")
    k = 0
    while len(out) < n:
        event = ("Spain", "Ghana", "Sri-Lanka", "Mekong")[k % 4]
        out.append((f"{event}_{2000000 + 37 * k}", splits[k % 4]))
        k += 1
    return out


def _coarse(rng, shape, f=8):
    """Noise on an f x coarser grid: realistic speckle scale, and DEFLATE keeps the files small."""
    return np.kron(rng.standard_normal((*shape[:-2], shape[-2] // f, shape[-1] // f)), np.ones((f, f)))


def write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None:
    n = 5 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    for layer in ("S1Hand", "S2Hand", "LabelHand"):
        os.makedirs(os.path.join(root, HAND, layer), exist_ok=True)
    os.makedirs(os.path.join(root, "v1.1/splits/flood_handlabeled"), exist_ok=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    split_rows: dict[str, list[str]] = {"train": [], "valid": [], "test": [], "bolivia": []}
    for i, (chip, split) in enumerate(_chips(n)):
        event = chip.split("_")[0]
        lon, lat = EVENTS.get(event, ("KHM", "", "", 105.0, 12.0))[3:]
        # a meandering river plus a flooded patch
        water = (np.abs(yy - (SIZE / 2 + 80 * np.sin(xx / (60 + 10 * i)))) < 25 + 10 * (i % 3))
        cy, cx = rng.integers(100, SIZE - 100, 2)
        water |= ((yy - cy) ** 2 + (xx - cx) ** 2) < (40 + 10 * i) ** 2
        label = water.astype(np.int16)
        vv = np.where(water, -21.0, -9.0) + 1.5 * _coarse(rng, (SIZE, SIZE))
        vh = np.where(water, -28.0, -16.0) + 1.5 * _coarse(rng, (SIZE, SIZE))
        s1 = np.stack([vv, vh]).astype(np.float32)
        s2 = np.where(water[None], _WATER[:, None, None], _LAND[:, None, None])
        s2 = np.clip(np.rint(s2 * (1 + 0.05 * _coarse(rng, (13, SIZE, SIZE)))), 1, 10000).astype(np.int16)
        if i == 0:
            s1[:, 200:216, :] = np.nan     # a NaN stripe (S1 nodata)
            label[200:216, :] = -1
        if i == 1:
            s2[:, 300:380, 0:128] = 0       # S2 nodata block
            label[300:380, 0:128] = -1
        if i % 2 == 0:
            label[rng.integers(0, SIZE, 50), rng.integers(0, SIZE, 50)] = -1  # scattered unlabelled pixels
        tr = Affine(RES, 0, lon, 0, -RES, lat)
        prof = dict(driver="GTiff", height=SIZE, width=SIZE, crs="EPSG:4326", transform=tr, compress="deflate",
                    tiled=True, blockxsize=512, blockysize=512, interleave="band")
        for layer, arr, dtype, nodata, desc in (("S1Hand", s1, "float32", float("nan"), ("VV", "VH")),
                                               ("S2Hand", s2, "int16", 0, S2_BANDS),
                                               ("LabelHand", label[None], "int16", None, None)):
            with rasterio.open(os.path.join(root, HAND, layer, f"{chip}_{layer}.tif"), "w", count=arr.shape[0],
                               dtype=dtype, nodata=nodata, **prof) as ds:
                ds.write(arr)
                for b, d in enumerate(desc or ()):
                    ds.set_band_description(b + 1, d)
        split_rows[split].append(f"{chip}_S1Hand.tif,{chip}_LabelHand.tif")
    for split, rows in split_rows.items():
        with open(os.path.join(root, f"v1.1/splits/flood_handlabeled/flood_{split}_data.csv"), "w") as f:
            f.write("".join(r + "\n" for r in rows))  # no header, as in the bucket
    features = []
    for k, (loc, (iso, d1, d2, lon, lat)) in enumerate(EVENTS.items()):
        ring = [[lon - 0.5, lat + 0.5], [lon + 0.5, lat + 0.5], [lon + 0.5, lat - 0.5], [lon - 0.5, lat - 0.5],
                [lon - 0.5, lat + 0.5]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"location": loc, "ISO_CC": iso, "s1_date": d1, "s2_date": d2,
                                        "orbit": "Descending" if k % 2 else "Ascending", "rel_orbit_num": 8 + 11 * k,
                                        "coincident_size": round(0.5 + 0.1 * k, 3), "VH_thresh": -19.5 - k,
                                        "train_chip": 10 + k, "val_chip": 3 + k, "ID": k + 1}})
    with open(os.path.join(root, "v1.1/Sen1Floods11_Metadata.geojson"), "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f)
