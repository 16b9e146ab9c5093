"""Miniature HLS Burn Scars archive: ``training/`` and ``validation/`` GeoTIFF
pairs with the exact name pattern, plus the same two folders packed as ``hls_burn_scars.tar.gz``.

Images are float32 (6, 512, 512) decimal reflectance in UTM at 30 m (values on the 1e-4 grid of HLS's
scaled integers), DEFLATE-tiled, nodata tag -9999, with a rectangular -9999 block, a 9999 block and a
few NaN. Masks are int16 in {-1, 0, 1}; one scene is entirely 0. Planted signal: burnt pixels have low
NIR (B8A) and high SWIR2 (B12); a scene's first scar lies near its centre (the real chips are cut around
burn scars), further ones anywhere.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np
import rasterio
from rasterio.transform import Affine

SIZE = 512
TILES = ("T10SGD", "T11SQA", "T10TEK")
DATES = ("2018257", "2020248", "2021190")
# reflectance of unburnt land B02 B03 B04 B8A B11 B12
_BASE = np.array([0.04, 0.07, 0.08, 0.25, 0.20, 0.12])


def _scene(i: int) -> str:
    date = DATES[(i // 3) % 3]
    if i >= 9:
        date = f"{date[:4]}{int(date[4:]) + i // 9:03d}"
    return f"HLS.S30.{TILES[i % 3]}.{date}.v1.4"


def write_sample(root: str, tiles: int | None = None, seed: int = 0, tarball: bool = True) -> None:
    n = 8 if tiles is None else int(tiles)
    n_val = max(1, n // 4) if n > 1 else 0
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        folder = "training" if i < n - n_val else "validation"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        scene = _scene(i)
        burn = np.zeros((SIZE, SIZE), np.int16)
        if i != 1:  # scene 1: no burn scar at all (an all-zero mask)
            for k in range(int(rng.integers(1, 4))):
                # the first scar near the centre, as the real chips are cut around burn scars; the others anywhere
                cy, cx = rng.integers(160, SIZE - 160, 2) if k == 0 else rng.integers(60, SIZE - 60, 2)
                ry, rx = rng.integers(40, 120, 2)
                burn[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
        # smooth field + small noise, quantised to 1e-4 like HLS's scaled integers
        field = 1 + 0.15 * np.sin(xx // 8 / (5 + i))[None] * np.cos(yy // 8 / 7)[None]
        # noise on an 8 x coarser grid keeps the DEFLATE'd files (and the tarball) a few MB
        noise = np.kron(rng.standard_normal((6, SIZE // 8, SIZE // 8)), np.ones((1, 8, 8)))
        img = _BASE[:, None, None] * field * (1 + 0.03 * noise)
        b = burn == 1
        img[3][b] *= 0.45   # NIR drops
        img[5][b] *= 2.2    # SWIR2 rises
        img = np.round(img, 4).astype(np.float32)
        if i != 1:
            r0, c0 = rng.integers(0, SIZE - 64, 2)
            img[:, r0:r0 + 40, c0:c0 + 64] = -9999.0   # nodata block (the tag)
            burn[r0:r0 + 40, c0:c0 + 64] = -1
            img[:, 500:512, 0:30] = 9999.0               # saturated / fill block AnySat zeroes
            img[2, rng.integers(0, SIZE, 5), rng.integers(0, SIZE, 5)] = np.nan
        epsg = 32610 if TILES[i % 3].startswith("T10") else 32611
        tr = Affine(30.0, 0, 500000.0 + 15360.0 * (i % 4), 0, -30.0, 4200000.0 - 15360.0 * (i // 4))
        prof = dict(driver="GTiff", height=SIZE, width=SIZE, crs=f"EPSG:{epsg}", transform=tr, compress="deflate",
                    tiled=True, blockxsize=256, blockysize=256)
        base = os.path.join(root, folder, f"subsetted_512x512_{scene}")
        with rasterio.open(base + "_merged.tif", "w", count=6, dtype="float32", nodata=-9999.0, predictor=3,
                           **prof) as ds:
            ds.write(img)
        with rasterio.open(base + ".mask.tif", "w", count=1, dtype="int16", **prof) as ds:
            ds.write(burn[None])
    with open(os.path.join(root, "training", "index.txt"), "w") as f:  # an "index file" the reader ignores
        f.write("\n".join(sorted(os.listdir(os.path.join(root, "training")))) + "\n")
    if tarball:
        with tarfile.open(os.path.join(root, "hls_burn_scars.tar.gz"), "w:gz", compresslevel=1) as tar:
            for folder in ("training", "validation"):
                if os.path.isdir(os.path.join(root, folder)):
                    tar.add(os.path.join(root, folder), arcname=folder)
