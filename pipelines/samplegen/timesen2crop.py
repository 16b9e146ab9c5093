"""Miniature TimeSen2Crop archive: four S2 tile folders with ``dates.csv`` and
class folders of one-pixel CSVs (header ``B2,B3,B4,B5,B6,B7,B8A,B11,B12,Flag``, integer reflectance x 1e4).

Planted signal: each crop class has its own NDVI peak day and amplitude over the agronomic year and
its own soil spectrum (x (0.8 + 0.03 · class) and x 1.3 on a fixed subset of the bands per class,
``CLASS_CODES``: classes differ on every date, not only around the peak, so they are learnable in a few
steps whatever dates a tile folder has); a few dates are flagged cloudy (1) or snowy (3) with matching
bright values.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np

FOLDERS = (("33TUM", 8), ("33TWN", 11), ("33UVP", 9), ("2019_33UVP", 10))
CLASSES = (0, 2, 12, 15)
HEADER = "B2,B3,B4,B5,B6,B7,B8A,B11,B12,Flag"
_SOIL = np.array([700, 1000, 1300, 1600, 1800, 1900, 2000, 2600, 2100], np.float64)
_VEG = np.array([300, 600, 300, 900, 2600, 3300, 3800, 1800, 900], np.float64)
# per class (16), the bands (of the 9 CSV bands) its soil signature raises; a separate generator
CLASS_CODES = np.random.default_rng(16).random((16, 9)) < 0.4


def write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None:
    n = 32 if tiles is None else int(tiles)
    rng = np.random.default_rng(seed)
    # pixels per (folder, class) cell, round-robin so every folder and class gets some
    cells = [(f, c) for f in range(len(FOLDERS)) for c in range(len(CLASSES))]
    count = {cell: 0 for cell in cells}
    for k in range(n):
        count[cells[k % len(cells)]] += 1
    for fi, (folder, t) in enumerate(FOLDERS):
        year = 2018 if folder.startswith("2019_") else 2017
        start = dt.date(year, 9, 1)
        offs = np.sort(rng.choice(365, size=t, replace=False))
        dates = [start + dt.timedelta(days=int(o)) for o in offs]
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        with open(os.path.join(root, folder, "dates.csv"), "w") as f:
            f.write("acquisition_date\n" + "".join(d.strftime("%Y%m%d") + "\n" for d in dates))
        for ci, cls in enumerate(CLASSES):
            m = count[(fi, ci)]
            if m == 0:
                continue
            d = os.path.join(root, folder, str(cls))
            os.makedirs(d, exist_ok=True)
            peak, amp = 200 + 9 * cls, 0.3 + 0.04 * cls  # class phenology: peak day after 1 Sept, strength
            soil = _SOIL * (0.8 + 0.03 * cls) * np.where(CLASS_CODES[cls], 1.3, 1.0)  # and soil spectrum
            for j in range(1, m + 1):
                ndvi = amp * np.exp(-(((offs - peak) / 50.0) ** 2))
                x = soil[None] * (1 - ndvi[:, None]) + _VEG[None] * ndvi[:, None]
                x *= 1 + 0.03 * rng.standard_normal(x.shape)
                flag = np.zeros(t, np.int64)
                flag[rng.random(t) < 0.15] = 1
                if folder == "33TUM":
                    flag[0] = 3  # a winter snow date
                x[flag > 0] = 6000 + 500 * rng.random((int((flag > 0).sum()), 9))
                rows = np.column_stack([np.rint(x).astype(np.int64), flag])
                with open(os.path.join(d, f"{j}.csv"), "w") as f:
                    f.write(HEADER + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
