"""Miniature FLAIR #2 archive in the author layout (unzipped side by side).

Per zone one Sentinel-2 super-area (``data.npy`` uint16, ``masks.npy`` uint8 snow/cloud probabilities,
``products.txt``) shared by the zone's aerial patches; 5-band uint8 aerial and 1-band uint8 mask
GeoTIFFs (EPSG:2154, 0.2 m) placed on the ground where their centroid falls in the super-area. Mask
values cover 1..19 (14..19 included), one date per zone is cloudy above 60 %, one centroid sits 6 px
from the super-area edge. ``splits.json`` is AnySat's file, not the authors': it is written only with
``anysat_splits=True`` (the default, since AnySat users hold it) and the reader works without it.

Variants (``VARIANTS``; ``make sample-data VARIANT=...``): ``flair`` (default, the authors' names) and
``flair-repackaged``, a re-packaged copy as users redistribute it: the super-area files renamed
(``S2_{ZONE}_{data.npy,masks.npy,products.txt}``), no ``flair_aerial_metadata.json`` and no ``splits.json``.
Same random stream in both.

Planted signal: each pixel's class sets its aerial colour (and elevation) and the S2 spectrum under it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import rasterio
from rasterio.transform import Affine

AERIAL, SUPER_H, SUPER_W = 512, 60, 72
# (domain, zone, tree, first id, T)
ZONES = [("D004_2021", "Z10_AU", "train", 826, 4), ("D013_2020", "Z1_NF", "train", 901, 7),
         ("D068_2021", "Z3_AU", "test", 70001, 5)]
_TREES = {"train": ("flair_aerial_train", "flair_labels_train", "flair_sen_train"),
          "test": ("flair_2_aerial_test", "flair_2_labels_test", "flair_2_sen_test")}
# centroid slots in a super-area, (row, col); the first is 6 px from the top edge on purpose
_SLOTS = [(6, 20)] + [(r, c) for r in (18, 30, 42, 54) for c in (6, 18, 30, 42, 54, 66)]
# raw class -> S2 spectrum (B2..B12, reflectance x 1e4), smooth in the class index
_S2_BASE = np.array([500, 800, 700, 1200, 1800, 2000, 2300, 2400, 1900, 1200], np.float64)


VARIANTS = {"flair": "FLAIR #2 as the authors publish it (plus AnySat's splits.json)",
            "flair-repackaged": "super-area files renamed, no flair_aerial_metadata.json, no splits.json"}


def _zones(n: int) -> list[tuple[tuple, int]]:
    """(zone spec, patches in it); the three reference zones get 2 each, extra patches spread over zones."""
    counts = [0] * len(ZONES)
    for i in range(n):
        counts[i % len(ZONES)] += 1
    zones = list(ZONES)
    out = []
    for z, k in zip(zones, counts):
        while k > len(_SLOTS):  # more than one super-area can hold: continue in a sibling zone
            out.append((z, len(_SLOTS)))
            k -= len(_SLOTS)
            z = (z[0], f"Z{len(out) + 90}_UA", z[2], z[3] + 100000, z[4] + 1)
        if k:
            out.append((z, k))
    return out


def _products(days: np.ndarray, tile: str, rng: np.random.Generator) -> list[str]:
    lines = []
    for d in days:
        ymd = np.datetime64(int(d), "D").astype(object).strftime("%Y%m%d")
        hms = f"10{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
        lines.append(f"S2{'AB'[int(d) % 2]}_MSIL2A_{ymd}T{hms}_N0300_R051_{tile}_{ymd}T135921")
    return lines


def write_sample(root: str, tiles: int | None = None, seed: int = 0, anysat_splits: bool = True,
                 variant: str | None = None) -> None:
    """Write ``tiles`` (default 6) FLAIR #2 patches in 3 domains (2 train, 1 test) under ``root``."""
    variant = variant or "flair"
    if variant not in VARIANTS:
        raise ValueError(f"unknown flair variant {variant!r}; known: {', '.join(VARIANTS)}")
    repackaged = variant == "flair-repackaged"
    anysat_splits = anysat_splits and not repackaged
    n = 6 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 230, size=(20, 5))  # raw class -> R, G, B, NIR, elevation
    palette[:, 4] = rng.integers(0, 60, size=20)
    s2_shape = 1.0 + 0.6 * np.sin(np.arange(20)[:, None] * 0.9 + np.arange(10)[None, :] * 0.7)  # (20, 10)
    centroids, metadata, domains = {}, {}, {"train": [], "test": []}

    for z_i, ((domain, zone, tree, first, t), k) in enumerate(_zones(n)):
        aer_dir, lab_dir, sen_dir = (os.path.join(root, tr, domain, zone, sub)
                                     for tr, sub in zip(_TREES[tree], ("img", "msk", "sen")))
        for d in (aer_dir, lab_dir, sen_dir):
            os.makedirs(d, exist_ok=True)
        if domain not in domains[tree]:
            domains[tree].append(domain)
        year = int(domain[-4:])
        start = (np.datetime64(f"{year}-01-01") - np.datetime64("1970-01-01")).astype(int)
        days = np.sort(start + rng.choice(365, size=t, replace=False))
        x0, y0 = 600000.0 + 20000.0 * z_i, 6900000.0 - 15000.0 * z_i  # super-area upper-left (L93)

        data = _S2_BASE[None, :, None, None] * (1 + 0.04 * rng.standard_normal((t, 10, SUPER_H, SUPER_W)))
        masks = np.zeros((t, 2, SUPER_H, SUPER_W), np.uint8)
        masks[:, 1] = rng.integers(0, 20, size=(t, SUPER_H, SUPER_W))
        masks[t // 2, 1, :30] = rng.integers(61, 100, size=(30, SUPER_W))  # one date cloudy > 60 %
        masks[0, 0, -5:] = 80  # some snow

        for j in range(k):
            num = f"{first + j:06d}"
            r, c = _SLOTS[j]
            centroids[f"IMG_{num}.tif"] = [r, c]
            # class map: 4 x 4 blocks of 128 px from a few classes (raw 1..19, 14..19 included)
            pool = rng.choice(np.arange(1, 20), size=4, replace=False)
            if j == 0:
                pool[0] = 14 + (z_i % 6)
            blocks = rng.choice(pool, size=(4, 4))
            cls = np.kron(blocks, np.ones((128, 128), np.int64))
            img = palette[cls].transpose(2, 0, 1) + rng.normal(0, 6, (5, AERIAL, AERIAL))
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
            # S2 pixel (i, j) of the 10 x 10 window takes the class at its centre in the aerial grid
            centres = np.minimum(((np.arange(10) + 0.5) * AERIAL / 10).astype(int), AERIAL - 1)
            sub = cls[np.ix_(centres, centres)]
            data[:, :, r - 5:r + 5, c - 5:c + 5] *= s2_shape[sub].transpose(2, 0, 1)[None]

            cx, cy = x0 + (c + 0.0) * 10.0, y0 - (r + 0.0) * 10.0
            prof = dict(driver="GTiff", height=AERIAL, width=AERIAL, dtype="uint8", crs="EPSG:2154",
                        transform=Affine(0.2, 0, cx - AERIAL * 0.1, 0, -0.2, cy + AERIAL * 0.1))
            with rasterio.open(os.path.join(aer_dir, f"IMG_{num}.tif"), "w", count=5, **prof) as ds:
                ds.write(img)
            with rasterio.open(os.path.join(lab_dir, f"MSK_{num}.tif"), "w", count=1, **prof) as ds:
                ds.write(cls.astype(np.uint8)[None])
            d = int(rng.choice(days))
            metadata[f"IMG_{num}"] = {
                "patch_centroid_x": round(cx, 2), "patch_centroid_y": round(cy, 2),
                "patch_centroid_z": round(float(rng.uniform(50, 900)), 2), "camera": "UCE-M3-f120-s06",
                "date": np.datetime64(d, "D").astype(object).isoformat(),
                "time": f"{int(rng.integers(9, 16))}h{int(rng.integers(0, 60)):02d}", "domain": domain, "zone": zone}

        prefix = os.path.join(sen_dir, f"S2_{zone}" if repackaged else f"SEN2_sp_{domain}-{zone}")
        np.save(prefix + "_data.npy", np.clip(np.rint(data), 0, 10000).astype(np.uint16))
        np.save(prefix + "_masks.npy", masks)
        with open(prefix + "_products.txt", "w") as f:
            f.write("\n".join(_products(days, "T31UDP" if z_i % 2 == 0 else "T32TLQ", rng)) + "\n")

    with open(os.path.join(root, "flair-2_centroids_sp_to_patch.json"), "w") as f:
        json.dump(centroids, f)
    if not repackaged:
        with open(os.path.join(root, "flair_aerial_metadata.json"), "w") as f:
            json.dump(metadata, f)
    if anysat_splits:
        train = domains["train"]
        val = train[-1:] if len(train) > 1 else []
        with open(os.path.join(root, "splits.json"), "w") as f:
            json.dump({"train": [d for d in train if d not in val], "val": val, "test": domains["test"]}, f)
