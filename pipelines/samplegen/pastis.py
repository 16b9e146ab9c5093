"""Miniature PASTIS-HD archive: the HF/Zenodo layout with real dtypes and sizes.

``metadata.geojson`` is written with plain ``json`` so it keeps the old-style ``crs`` member and the
nested ``dates-*`` objects exactly as the real file does. Parcels are 16-px blocks; each parcel's class
fixes its NDVI peak date in S2 and S1, its colour in SPOT and an S2 soil signature (x 1.3 on a fixed
subset of the bands per class, ``CLASS_CODES``, on every date: a few dates rarely catch a class's NDVI
peak, so the phenology alone is hardly learnable from a sample) -- the planted, learnable signal.

Variants (``VARIANTS``; ``make sample-data VARIANT=...``): ``pastis-hd`` (default) and ``pastis-r``, the
PASTIS-R archive most users hold: the same files without ``DATA_SPOT/``. Both draw the same random
stream, so their S2, S1 and labels are identical. The SPOT GeoTIFFs are in EPSG:2154 at 1 m, their
upper-left corner at the footprint's (min x, max y).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import rasterio
from rasterio.transform import Affine

SIZE = 128
SPOT = 1280
S2_T, S1_T = (3, 5, 6, 4, 7), (4, 5, 6, 7, 8)
# reflectance x 1e4 of a bare parcel, B2..B12
_BASE = np.array([600, 850, 1000, 1300, 1700, 1900, 2100, 2200, 2300, 1600], np.float64)
_DAY0 = (np.datetime64("2018-09-01") - np.datetime64("1970-01-01")).astype(int)
# per semantic class (20), the S2 bands its signature raises; a separate generator, so the archive's own
# random stream is the same as without it
CLASS_CODES = np.random.default_rng(20).random((20, 10)) < 0.4


VARIANTS = {"pastis-hd": "PASTIS-HD: PASTIS-R + DATA_SPOT (SPOT6 GeoTIFFs)",
            "pastis-r": "PASTIS-R: S2, S1 ascending / descending and labels, no DATA_SPOT/"}


def _ids(n: int) -> list[tuple[int, int]]:
    """(ID_PATCH, Fold): the five reference patches first, then more per fold."""
    base = [(10000, 1), (10001, 2), (20000, 3), (30000, 4), (40000, 5)]
    out = base[:n]
    k = 0
    while len(out) < n:
        fold = k % 5 + 1
        out.append((10000 * fold + 100 + k, fold))
        k += 1
    return out


def _ndvi(cls: np.ndarray, days: np.ndarray) -> np.ndarray:
    """(T, H, W) NDVI of each pixel's class on each date: a class-specific peak day."""
    peak = 30.0 + 20.0 * cls.astype(np.float64)  # days after 2018-09-01
    t = (days - _DAY0)[:, None, None]
    return 0.15 + 0.7 * np.exp(-(((t - peak[None]) / 45.0) ** 2)) * (cls[None] > 0) * (cls[None] < 19)


def _dates(t: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(_DAY0 + rng.choice(420, size=t, replace=False))


def _yyyymmdd(days: np.ndarray) -> dict[str, int]:
    return {str(i): int(np.datetime64(int(d), "D").astype(object).strftime("%Y%m%d")) for i, d in enumerate(days)}


def _footprint(i: int, rotate: bool) -> list[list[float]]:
    cx, cy = 600000.0 + 1500.0 * (i % 7), 6800000.0 - 1500.0 * (i // 7)
    h = SPOT / 2
    pts = [(-h, h), (h, h), (h, -h), (-h, -h), (-h, h)]
    a = math.radians(0.5 if rotate else 0.0)
    return [[round(cx + x * math.cos(a) - y * math.sin(a), 3), round(cy + x * math.sin(a) + y * math.cos(a), 3)]
            for x, y in pts]


def write_sample(root: str, tiles: int | None = None, seed: int = 0, variant: str | None = None) -> None:
    """Write ``tiles`` (default 5, one per fold) PASTIS-HD patches under ``root`` (``variant``: ``VARIANTS``)."""
    variant = variant or "pastis-hd"
    if variant not in VARIANTS:
        raise ValueError(f"unknown pastis-hd variant {variant!r}; known: {', '.join(VARIANTS)}")
    with_spot = variant == "pastis-hd"
    n = 5 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    spot_dir = os.path.join(root, "DATA_SPOT", "PASTIS_SPOT6_RVB_1M00_2019")
    for d in ("DATA_S2", "DATA_S1A", "DATA_S1D", "ANNOTATIONS", "INSTANCE_ANNOTATIONS", "documentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    if with_spot:
        os.makedirs(spot_dir, exist_ok=True)
    palette = rng.integers(40, 220, size=(20, 3))
    features = []
    for i, (pid, fold) in enumerate(_ids(n)):
        # parcels: 8 x 8 blocks of 16 px drawn from a few crop classes per patch (so the 18-class
        # presence vector varies between patches), plus background 0 and some void 19
        crops = rng.choice(np.arange(1, 19), size=int(rng.integers(2, 6)), replace=False)
        blocks = rng.choice(crops, size=(8, 8))
        blocks[rng.random((8, 8)) < 0.15] = 0
        blocks[rng.random((8, 8)) < 0.05] = 19
        cls = np.kron(blocks, np.ones((16, 16), np.int64))
        parcel_ids = np.kron(np.arange(64).reshape(8, 8) + 1000 * i, np.ones((16, 16), np.int64))
        parcel_ids[cls == 0] = 0

        t2 = S2_T[i % 5]
        d2 = _dates(t2, rng)
        nd = _ndvi(cls, d2)
        s2 = _BASE[None, :, None, None] * (1 + 0.05 * rng.standard_normal((t2, 10, SIZE, SIZE)))
        s2[:, 2] *= (1.2 - nd)           # red falls with NDVI
        s2[:, 6:8] *= (0.8 + 1.6 * nd[:, None])  # NIR (B8, B8A) rises with it
        s2 *= np.where(CLASS_CODES[cls], 1.3, 1.0).transpose(2, 0, 1)[None]  # the class's soil signature
        s2 = np.clip(np.rint(s2), 0, 6000).astype(np.int16)
        s2[0, :, :5, :7] = -10000        # THEIA fill value on a corner of the first date
        np.save(os.path.join(root, "DATA_S2", f"S2_{pid}.npy"), s2)

        props = {"ID_PATCH": pid, "Fold": fold, "TILE": "t30uxv" if i % 2 == 0 else "t31tcj",
                 "N_Parcel": int(len(np.unique(parcel_ids)) - 1), "Parcel_Cover": round(float((cls > 0).mean()), 4),
                 "dates-S2": _yyyymmdd(d2)}
        for orb, folder, off in (("S1A", "DATA_S1A", 0), ("S1D", "DATA_S1D", 2)):
            t1 = S1_T[(i + off) % 5]
            d1 = _dates(t1, rng)
            n1 = _ndvi(cls, d1)
            vv = -14.0 + 6.0 * n1 + rng.normal(0, 1.0, n1.shape)
            vh = -21.0 + 8.0 * n1 + rng.normal(0, 1.0, n1.shape)
            s1 = np.stack([vv, vh, vv - vh], axis=1).astype(np.float16)
            np.save(os.path.join(root, folder, f"{orb}_{pid}.npy"), s1)
            props[f"dates-{orb}"] = _yyyymmdd(d1)

        target = np.stack([cls, cls, cls]).astype(np.uint8)
        np.save(os.path.join(root, "ANNOTATIONS", f"TARGET_{pid}.npy"), target)
        np.save(os.path.join(root, "ANNOTATIONS", f"ParcelIDs_{pid}.npy"), parcel_ids.astype(np.int32))
        inst = os.path.join(root, "INSTANCE_ANNOTATIONS")
        np.save(os.path.join(inst, f"INSTANCES_{pid}.npy"), parcel_ids.astype(np.int64))
        np.save(os.path.join(inst, f"ZONES_{pid}.npy"), parcel_ids.astype(np.int64))
        np.save(os.path.join(inst, f"HEATMAP_{pid}.npy"), (cls > 0).astype(np.float32))

        ring = _footprint(i, rotate=(i == 2))
        features.append({"type": "Feature", "id": str(pid), "properties": props,
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})

        # SPOT: parcel colour (class palette) on the 10x finer grid, plus texture
        up = np.kron(cls, np.ones((10, 10), np.int64))
        spot = palette[up].transpose(2, 0, 1).astype(np.int16) + rng.integers(-6, 7, size=(3, SPOT, SPOT))
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        if not with_spot:
            continue
        with rasterio.open(os.path.join(spot_dir, f"SPOT6_RVB_1M00_2019_{pid}.tif"), "w", driver="GTiff",
                           height=SPOT, width=SPOT, count=3, dtype="uint8", crs="EPSG:2154",
                           transform=Affine(1.0, 0, min(xs), 0, -1.0, max(ys)), compress="deflate",
                           tiled=True, blockxsize=256, blockysize=256, photometric="RGB") as ds:
            ds.write(np.clip(spot, 0, 255).astype(np.uint8))

    meta = {"type": "FeatureCollection", "name": "metadata",
            "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}}, "features": features}
    with open(os.path.join(root, "metadata.geojson"), "w") as f:
        json.dump(meta, f)
    for key, c in (("S2", 10), ("S1A", 3), ("S1D", 3)):
        norm = {f"Fold_{k}": {"mean": [round(float(v), 3) for v in rng.uniform(-15, 2000, c)],
                              "std": [round(float(v), 3) for v in rng.uniform(1, 900, c)]} for k in range(1, 6)}
        with open(os.path.join(root, f"NORM_{key}_patch.json"), "w") as f:
            json.dump(norm, f)
