"""A synthetic multi-date scene, written with rasterio as the GeoTIFFs a user would hold, plus the
scene spec that points at them (``scene.yaml``), for the demo, the tests and the benchmark.

    python -m pipelines.scenegen --out data/demo/scene [--size 96] [--dates 6] [--sensors s2,s1]

Layout::

    <out>/s2/S2_<YYYYMMDD>.tif   uint16, the 10 S2 bands of anysat.sensors, 10 m, EPSG:32631, tiled
    <out>/s1/S1_<YYYYMMDD>.tif   float32 VV, VH (linear backscatter), 10 m
    <out>/fields.tif             int16 true class of every pixel
    <out>/scene.yaml             the scene spec (pipelines/scene.py)

The ground is a brick pattern of 320 m fields, each of one PLANTED class, with the PLANTED sample's
planted signal (the class raises NIR and lowers red, on a seasonal curve with noise), so a model
fine-tuned on the PLANTED sample store draws recognisable fields. Rasters are written in blocks of
rows, so generating a large scene takes little memory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import rasterio
import yaml
from affine import Affine

from pipelines.datasets import PLANTED_CLASSES

__all__ = ["write_scene", "field_classes", "ORIGIN", "CRS"]

ORIGIN = (500_000.0, 5_000_000.0)
CRS = "EPSG:32631"
FIELD_PX = 32
_S2_BASE = np.array([450, 700, 600, 1100, 2000, 2400, 2700, 2800, 1700, 900], np.float32)
_RED, _NIR = 2, (6, 7)
_BLOCK = 256


def field_classes(rows: np.ndarray, cols: np.ndarray, seed: int = 0) -> np.ndarray:
    """True class of pixels ``(rows[:, None], cols[None, :])``: brick-pattern fields of ``FIELD_PX``."""
    fy = rows[:, None] // FIELD_PX
    fx = (cols[None, :] + (fy % 2) * (FIELD_PX // 2)) // FIELD_PX
    h = (fy * 73_856_093) ^ (fx * 19_349_663) ^ (seed * 83_492_791 + 1)
    return (h % len(PLANTED_CLASSES)).astype(np.int16)


def _dates(n: int, seed: int, offset: int) -> list[dt.date]:
    rng = np.random.default_rng([seed, offset])
    days = np.sort(rng.choice(np.arange(20, 345, 5), size=n, replace=False))
    return [dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in days]


def _profile(size: int, count: int, dtype: str, res: float) -> dict:
    block = min(_BLOCK, 16 * (size // 16)) if size >= 16 else None
    tiled = {"tiled": True, "blockxsize": block, "blockysize": block} if block else {}
    return {"driver": "GTiff", "width": size, "height": size, "count": count, "dtype": dtype, "crs": CRS,
            "transform": Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1]), "compress": "deflate", **tiled}


def _s2(cls: np.ndarray, doy: int, rng: np.random.Generator) -> np.ndarray:
    k = cls.astype(np.float32) / (len(PLANTED_CLASSES) - 1)
    season = 0.75 + 0.25 * np.sin(2 * np.pi * (doy - 100) / 365.0)
    x = np.broadcast_to(_S2_BASE[:, None, None], (len(_S2_BASE),) + cls.shape).copy()
    for b in _NIR:
        x[b] *= (0.6 + 0.8 * k) * season
    x[_RED] *= (1.4 - 0.8 * k) / season
    x *= rng.normal(1.0, 0.05, size=x.shape).astype(np.float32)
    return np.clip(x, 0, 10_000).astype(np.uint16)


def _s1(cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    vv = rng.lognormal(np.log(0.12), 0.3, size=cls.shape)
    vh = rng.lognormal(np.log(0.02 + 0.01 * cls / len(PLANTED_CLASSES)), 0.3, size=cls.shape)
    return np.clip(np.stack([vv, vh]), 0.001, 0.5).astype(np.float32)


def write_scene(root: str | Path, size: int = 96, dates: int = 6, sensors: tuple[str, ...] = ("s2", "s1"),
                seed: int = 0) -> Path:
    """Write a ``size`` x ``size`` px (10 m) scene under ``root``; returns the scene spec's path."""
    root = Path(root)
    if size < 1 or dates < 1:
        raise ValueError(f"size and dates must be >= 1, got {size}, {dates}")
    unknown = set(sensors) - {"s2", "s1"}
    if unknown:
        raise ValueError(f"scenegen writes s2 and s1, not {sorted(unknown)}")
    cols = np.arange(size)
    root.mkdir(parents=True, exist_ok=True)
    with rasterio.open(root / "fields.tif", "w", **_profile(size, 1, "int16", 10.0)) as dst:
        for r in range(0, size, _BLOCK):
            rows = np.arange(r, min(size, r + _BLOCK))
            dst.write(field_classes(rows, cols, seed)[None], window=((r, rows[-1] + 1), (0, size)))
    spec: dict = {"date_origin": "doy", "sensors": {}}
    for si, key in enumerate(sensors):
        (root / key).mkdir(exist_ok=True)
        for t, day in enumerate(_dates(dates, seed, si)):
            path = root / key / f"{key.upper()}_{day:%Y%m%d}.tif"
            count, dtype = (10, "uint16") if key == "s2" else (2, "float32")
            with rasterio.open(path, "w", **_profile(size, count, dtype, 10.0)) as dst:
                for r in range(0, size, _BLOCK):
                    rows = np.arange(r, min(size, r + _BLOCK))
                    rng = np.random.default_rng([seed, si, t, r])
                    cls = field_classes(rows, cols, seed)
                    block = _s2(cls, day.timetuple().tm_yday, rng) if key == "s2" else _s1(cls, rng)
                    dst.write(block, window=((r, rows[-1] + 1), (0, size)))
        spec["sensors"][key] = {"files": f"{key}/{key.upper()}_*.tif"}
    path = root / "scene.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.scenegen", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the rasters and scene.yaml")
    p.add_argument("--size", type=int, default=96, help="scene side in 10 m pixels")
    p.add_argument("--dates", type=int, default=6)
    p.add_argument("--sensors", default="s2,s1")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        path = write_scene(args.out, args.size, args.dates, tuple(args.sensors.split(",")), args.seed)
    except ValueError as e:
        print(f"error: --size/--dates/--sensors: {e}", file=sys.stderr)
        return 2
    print(f"scene spec: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
