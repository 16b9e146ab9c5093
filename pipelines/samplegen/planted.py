"""Miniature PLANTED archive in the AnySat npz layout — the layout users hold.

Real shapes per 120 m tile (s2/s1 12x12 at 10 m, l7/alos 4x4 at 30 m, modis 1x1), channel-last
float32 data written with ``np.savez`` (key ``arr_0``), uint8 validity masks with zeros, int64 ms
timestamps spanning 2017-2022, T varying per tile and sensor (ALOS sometimes a single date), NaN in a
few S1 pixels (masked invalid, as real SAR nodata is).

Planted, learnable signal: the class index raises NIR and lowers red in s2, l7 and modis, and raises
HV in alos, on top of seasonal curves and noise; values stay within real ranges.

``tiles`` scales the archive (8 by default: 5 train, 2 val, 1 test); each tile draws from its own seeded
generator, so tile ``i`` is identical whatever ``tiles`` is, and generation is a few ms per tile.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np

from pipelines.datasets import PLANTED_CLASSES

N_CLASSES = len(PLANTED_CLASSES)
DAY_MS = 86_400_000
EPOCH_2017 = int(dt.datetime(2017, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
FIRST_ID = 1_048_576

# base reflectance (0-10000 scale) per band; red and NIR indices carry the class signal
_S2_BASE = np.array([450, 700, 600, 1100, 2000, 2400, 2700, 2800, 1700, 900], np.float32)
_S2_RED, _S2_NIR = 2, (6, 7)
_L7_BASE = np.array([500, 750, 650, 2600, 1600, 850], np.float32)
_L7_RED, _L7_NIR = 2, (3,)
_MODIS_BASE = np.array([650, 2600, 450, 700, 2300, 1500, 900], np.float32)
_MODIS_RED, _MODIS_NIR = 0, (1,)


def split_sizes(tiles: int) -> tuple[int, int, int]:
    n_val = max(1, round(tiles * 0.25))
    n_test = max(1, tiles // 8)
    return tiles - n_val - n_test, n_val, n_test


def _dates(rng: np.random.Generator, t: int, year0: int, span_days: int) -> np.ndarray:
    start = EPOCH_2017 + year0 * 365 * DAY_MS
    span_days = min(span_days, (6 - year0) * 365 - 2)  # never past 2022
    days = np.sort(rng.choice(span_days, size=t, replace=False))
    ms = start + days.astype(np.int64) * DAY_MS + rng.integers(0, DAY_MS, size=t)
    return ms.astype(np.int64)


def _optical(rng, base, red, nir, cls, t, hw, doy):
    """(T, H, W, C) reflectance: seasonal greenness, class-dependent NIR/red, per-pixel noise."""
    season = 0.75 + 0.25 * np.sin(2 * np.pi * (doy - 100) / 365.0)  # (T,)
    k = cls / (N_CLASSES - 1)
    scale = np.ones((t, len(base)), np.float32)
    scale[:, list(nir)] *= (0.6 + 0.8 * k) * season[:, None]
    scale[:, red] *= (1.4 - 0.8 * k) / season
    x = base[None, None, None, :] * scale[:, None, None, :]
    x = x * rng.normal(1.0, 0.08, size=(t, hw, hw, len(base))).astype(np.float32)
    return np.clip(x, 0, 6000).astype(np.float32)


def _mask(rng, t, hw, p_bad=0.15):
    m = np.ones((t, hw, hw, 1), np.uint8)
    cloudy = rng.random(t) < p_bad
    m[cloudy] = 0
    m[rng.random((t, hw, hw, 1)) < 0.03] = 0
    return m


def make_tile(i: int, seed: int = 0) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """(class, {mod: (data (T,H,W,C) float32, mask (T,H,W,1) uint8, timestamps (T,) int64 ms)})."""
    rng = np.random.default_rng([seed, i])
    cls = int(rng.integers(0, N_CLASSES))
    year0 = int(rng.integers(0, 5))  # series start in 2017..2021, so dates span 2017-2022
    out = {}

    def doy(ts):
        return ((ts - EPOCH_2017) // DAY_MS) % 365

    t = int(rng.choice([6, 8]))
    ts = _dates(rng, t, year0, 365)
    out["s2"] = (_optical(rng, _S2_BASE, _S2_RED, _S2_NIR, cls, t, 12, doy(ts)), _mask(rng, t, 12), ts)

    t = int(rng.choice([6, 8]))
    ts = _dates(rng, t, year0, 365)
    vv = rng.lognormal(np.log(0.12), 0.35, size=(t, 12, 12))
    vh = rng.lognormal(np.log(0.025), 0.35, size=(t, 12, 12))
    s1 = np.clip(np.stack([vv, vh], -1), 0.001, 0.5).astype(np.float32)
    m = _mask(rng, t, 12, p_bad=0.0)
    nan = rng.random((t, 12, 12)) < 0.01
    s1[nan] = np.nan  # real SAR nodata
    m[nan] = 0
    out["s1"] = (s1, m, ts)

    t = int(rng.integers(16, 21))
    ts = _dates(rng, t, year0, 730)
    out["l7"] = (_optical(rng, _L7_BASE, _L7_RED, _L7_NIR, cls, t, 4, doy(ts)), _mask(rng, t, 4, 0.25), ts)

    t = int(rng.choice([1, 3, 4], p=[0.15, 0.35, 0.5]))
    ts = _dates(rng, t, year0, 365 * t)  # yearly mosaics
    hh = rng.lognormal(np.log(0.15), 0.25, size=(t, 4, 4))
    hv = rng.lognormal(np.log(0.02 + 0.08 * cls / (N_CLASSES - 1)), 0.25, size=(t, 4, 4))
    out["alos"] = (np.clip(np.stack([hh, hv], -1), 0.001, 0.5).astype(np.float32), _mask(rng, t, 4, 0.0), ts)

    t = int(rng.integers(55, 61))
    ts = _dates(rng, t, year0, 1825)
    out["modis"] = (_optical(rng, _MODIS_BASE, _MODIS_RED, _MODIS_NIR, cls, t, 1, doy(ts)),
                    _mask(rng, t, 1, 0.1), ts)
    return cls, out


def write_sample(root: str, tiles: int | None = None, seed: int = 0) -> None:
    tiles = 8 if tiles is None else int(tiles)
    if tiles < 3:
        raise ValueError(f"planted sample needs at least 3 tiles (one per split), got {tiles}")
    n_train, n_val, n_test = split_sizes(tiles)
    i = 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = {}
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for _ in range(n):
            tid = str(FIRST_ID + i)
            cls, mods = make_tile(i, seed)
            labels[tid] = cls
            d = os.path.join(root, split, tid)
            os.makedirs(d, exist_ok=True)
            for mod, (data, mask, ts) in mods.items():
                np.savez(os.path.join(d, f"{tid}_{mod}.npz"), data)
                np.savez(os.path.join(d, f"{tid}_{mod}_mask.npz"), mask)
                np.savez(os.path.join(d, f"{tid}_{mod}_timestamp.npz"), ts)
            i += 1
        with open(os.path.join(root, split, "labels2.json"), "w") as f:
            json.dump(labels, f)
