"""Miniature SICKLE archive: tabular CSV, band-keyed ``.npz`` per acquisition
at native grids (S2 10/20/60 m = 32/16/6 px, S1 32 px, L8 11 px), 6-band int16 label GeoTIFFs in
EPSG:32644 at 3/10/30 m.

Oddities: one 2018-style S2 name per uid (tile first, date in token 1), one L8 npz per uid without
``ST_B10``, neighbouring plots of another split inside a uid's mask. Planted signal: paddy pixels show a
flooding VH dip early in the season, then a strong NDVI rise; other crops green up less.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import Affine

S2_10, S2_20, S2_60 = ("B2", "B3", "B4", "B8"), ("B5", "B6", "B7", "B8A", "B11", "B12"), ("B1", "B9")
L8 = ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10")
SPLITS = ("train", "train", "train", "val", "val", "test")
_SOIL = {"B1": 900, "B2": 800, "B3": 1000, "B4": 1200, "B5": 1500, "B6": 1700, "B7": 1800, "B8": 1900,
         "B8A": 2000, "B9": 600, "B11": 2500, "B12": 2000}
_VEG = {"B1": 500, "B2": 400, "B3": 700, "B4": 400, "B5": 1000, "B6": 2500, "B7": 3200, "B8": 3600,
        "B8A": 3700, "B9": 900, "B11": 1800, "B12": 900}


def _grid(a: np.ndarray, px: int) -> np.ndarray:
    """Block-average / nearest resample of a 32 x 32 field to ``px`` (what a coarser band would hold)."""
    idx = (np.arange(px) * 32) // px
    return a[..., idx[:, None], idx[None, :]]


def write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None:
    n = 6 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[:32, :32]
    for i in range(n):
        uid = str(1000 + i)
        split = SPLITS[i] if i < len(SPLITS) else SPLITS[i % len(SPLITS)]
        plot = 500 + i % 4 if split == "train" else 600 + i  # train plots recur across uids (seasons)
        year = 2018 + i % 3
        paddy_plot = i % 3 != 2
        season = ("jun-sep", "oct-jan", "feb-may")[i % 3]
        start = dt.date(year, {"jun": 6, "oct": 10, "feb": 2}[season[:3]], 1)
        # mask: own plot (left 2/3), a neighbouring plot of another split (right strip), background border
        plot_id = np.zeros((32, 32), np.int16)
        plot_id[2:30, 2:20] = plot
        plot_id[2:30, 22:30] = 900 + i  # not in any split of the CSV -> ignored
        crop = np.where(plot_id == plot, 1 if paddy_plot else 2 + i % 2, 0).astype(np.int16)
        crop[plot_id == 900 + i] = 1
        sow, trans, harv = 10 + i, 30 + i, 120 + i
        y = (4000 + 100 * i) if paddy_plot else 0
        masks = np.stack([plot_id, crop, np.where(plot_id > 0, sow, 0), np.where(plot_id > 0, trans, 0),
                          np.where(plot_id > 0, harv, 0), np.where(plot_id == plot, y, 0)]).astype(np.int16)
        for res, px in (("10m", 32), ("3m", 107), ("30m", 11)):
            os.makedirs(os.path.join(root, "masks", res), exist_ok=True)
            m = _grid(masks, px)
            step = 320.0 / px
            with rasterio.open(os.path.join(root, "masks", res, f"{uid}.tif"), "w", driver="GTiff", height=px,
                               width=px, count=6, dtype="int16", crs="EPSG:32644",
                               transform=Affine(step, 0, 400000 + 400 * i, 0, -step, 1200000)) as ds:
                ds.write(m)
        is_paddy = (crop == 1)

        def ndvi(day_off):
            g = np.exp(-(((day_off - 75) / 35.0) ** 2))
            return 0.15 + (0.65 if True else 0) * g * np.where(is_paddy, 1.0, 0.5) * (plot_id > 0)

        # S2: 4..7 acquisitions, the first named 2018-style (tile first)
        t2 = 4 + i % 4
        offs = np.sort(rng.choice(150, size=t2, replace=False))
        d2 = os.path.join(root, "images", "S2", "npy", uid)
        os.makedirs(d2, exist_ok=True)
        for k, o in enumerate(offs):
            day = start + dt.timedelta(days=int(o))
            nd = ndvi(o)
            z = {}
            for b in S2_10 + S2_20 + S2_60:
                v = _SOIL[b] * (1 - nd) + _VEG[b] * nd
                v = np.clip(v * (1 + 0.03 * rng.standard_normal((32, 32))), 0, 10000).astype(np.uint16)
                z[b] = _grid(v, 32 if b in S2_10 else 16 if b in S2_20 else 6)
            stamp = day.strftime("%Y%m%d") + "T050659"
            name = f"T44PKU_{stamp}_{stamp}" if k == 0 else f"{stamp}_{stamp}_T44PKU"
            np.savez(os.path.join(d2, name + ".npz"), **z)
        # S1: 3..6 acquisitions; paddy floods (VH dip) around day 20-45
        t1 = 3 + (i + 1) % 4
        offs = np.sort(rng.choice(150, size=t1, replace=False))
        offs[0] = 30  # one acquisition inside the flooding window
        offs = np.sort(offs)
        d1 = os.path.join(root, "images", "S1", "npy", uid)
        os.makedirs(d1, exist_ok=True)
        for o in offs:
            day = start + dt.timedelta(days=int(o))
            flood = is_paddy & (20 <= o <= 45)
            vv = -10 + 4 * ndvi(o) - 8 * flood + rng.normal(0, 1, (32, 32))
            vh = -17 + 6 * ndvi(o) - 9 * flood + rng.normal(0, 1, (32, 32))
            stamp = day.strftime("%Y%m%d")
            name = f"S1A_IW_GRDH_1SDV_{stamp}T003512_{stamp}T003537_02{i}345_0{i}ABCD_1F2E"
            np.savez(os.path.join(d1, name + ".npz"), VV=vv.astype(np.float32), VH=vh.astype(np.float32))
        # L8: 2..4 acquisitions at 30 m (11 px); the second lacks ST_B10
        t8 = 2 + i % 3
        offs = np.sort(rng.choice(150, size=t8, replace=False))
        d8 = os.path.join(root, "images", "L8", "npy", uid)
        os.makedirs(d8, exist_ok=True)
        for k, o in enumerate(offs):
            day = start + dt.timedelta(days=int(o))
            nd = _grid(ndvi(o), 11)
            z = {}
            for j, b in enumerate(L8):
                base = 7500 + 2000 * (j == 4) * nd + rng.normal(0, 100, (11, 11))
                if b == "ST_B10":
                    base = 44000 + rng.normal(0, 300, (11, 11))
                z[b] = np.clip(base, 0, 65535).astype(np.uint16)
            if k == 1:
                del z["ST_B10"]
            np.savez(os.path.join(d8, f"LC08_142051_{day.strftime('%Y%m%d')}.npz"), **z)
        rows.append({"UNIQUE_ID": int(uid), "PLOT_ID": plot, "SPLIT": split, "STANDARD_SEASON": season,
                     "YEAR": year, "SOWING_DAY": sow, "TRANSPLANTING_DAY": trans, "HARVESTING_DAY": harv,
                     "YIELD": y, "CROP_TYPE": "paddy" if paddy_plot else "other"})
    pd.DataFrame(rows).to_csv(os.path.join(root, "sickle_dataset_tabular.csv"), index=False)
