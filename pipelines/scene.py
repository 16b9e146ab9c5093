"""Whole scenes as model input: a YAML scene spec -> one output grid + per-sensor raster series,
read region by region with rasterio's warped reading (never the whole scene).

Scene spec (YAML)::

    grid:                        # optional: default = the first raster's CRS, bounds and the finest
      crs: EPSG:32631            #   sensor's resolution
      resolution: 10             # metres per output pixel
      bounds: [500000, 4999040, 500960, 5000000]   # xmin, ymin, xmax, ymax in the grid CRS
    date_origin: doy             # model dates: day of year, or days since YYYY-MM-DD (ray_jobs.data)
    sensors:
      s2:                        # a sensor key of anysat.sensors
        files: scene/s2/*.tif    # a glob, a list of paths / globs (local or s3://), one raster per date
        date_pattern: '(\\d{8})' # regex on the file name whose group is YYYYMMDD or YYYY-MM-DD (default)
        # table: scene/s2.csv    # instead of files: a CSV with columns path,date
        bands: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]   # 1-based raster bands in the sensor's raw band order
        mean: [...]              # optional per model band: normalisation (else the model's store stats)
        std: [...]

Every sensor is read on the same grid (CRS, origin, bounds) at its own registry resolution
(``anysat.sensors``), so S2 at 10 m and Landsat at 30 m cover exactly the same window. Reading goes
through a :class:`rasterio.vrt.WarpedVRT` that reprojects each raster to that grid on the fly; a
read outside the scene is padded by repeating the edge pixels (the model then sees plausible values,
and everything predicted there is cropped away).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import rasterio
import yaml
from affine import Affine
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from anysat.sensors import get_sensor, sensor_keys

__all__ = ["SceneError", "Grid", "SensorSeries", "Scene", "load_scene", "read_region", "geotransform"]

_EPOCH = dt.date(1970, 1, 1)


class SceneError(ValueError):
    """A scene spec the user can fix: the message names the file and the key."""


# --------------------------------------------------------------------------------------- the spec
class _GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    crs: str | None = None
    resolution: float | None = None
    bounds: tuple[float, float, float, float] | None = None


class _SensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: str | list[str] | None = None
    table: str | None = None
    date_pattern: str = r"(\d{4}-?\d{2}-?\d{2})"
    bands: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    resampling: str = "bilinear"

    @field_validator("resampling")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in Resampling.__members__:
            raise ValueError(f"unknown resampling {v!r} (one of {', '.join(Resampling.__members__)})")
        return v


class _SceneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: _GridSpec = _GridSpec()
    date_origin: str | None = "doy"
    sensors: dict[str, _SensorSpec]


# ------------------------------------------------------------------------------------ the grid
def geotransform(t: Affine) -> str:
    """GDAL's 6-number GeoTransform string (the rioxarray / GDAL convention)."""
    return " ".join(repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))


@dataclass(frozen=True)
class Grid:
    """The output grid: north-up, square pixels, ``height`` x ``width`` pixels from ``(x0, y0)``."""

    crs_wkt: str
    x0: float
    y0: float
    resolution: float
    width: int
    height: int

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    def scaled(self, factor: int) -> Grid:
        """The same origin with ``factor`` x coarser pixels (partial last pixels kept)."""
        return Grid(self.crs_wkt, self.x0, self.y0, self.resolution * factor, -(-self.width // factor),
                    -(-self.height // factor))

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (y, x), as rioxarray writes them."""
        r = self.resolution
        return (self.y0 - (np.arange(self.height) + 0.5) * r, self.x0 + (np.arange(self.width) + 0.5) * r)


@dataclass(frozen=True)
class SensorSeries:
    """One sensor of a scene: one raster per date, read on the scene grid at ``resolution``."""

    key: str
    files: tuple[str, ...]
    days: tuple[int, ...]
    """Days since 1970-01-01, per file (sorted)."""
    bands: tuple[int, ...]
    """1-based raster bands, in the sensor's raw band order."""
    resolution: float
    factor: int
    """Sensor pixel side in grid pixels."""
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    resampling: str


@dataclass(frozen=True)
class Scene:
    grid: Grid
    sensors: dict[str, SensorSeries]
    date_origin: str | None
    source: str


# -------------------------------------------------------------------------------------- loading
def _expand(entries: list[str], base: str, where: str) -> list[str]:
    out: list[str] = []
    for e in entries:
        url = e if "://" in e or posixpath.isabs(e) else str(Path(base) / e)
        fs, path = fsspec.core.url_to_fs(url)
        hits = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
        if not hits:
            raise SceneError(f"{where}: no raster matches {e!r}")
        proto = url.split("://")[0] + "://" if "://" in url else ""
        out += [h if h.startswith(proto) else proto + h for h in hits]
    return out


def _day(text: str, where: str) -> int:
    digits = text.replace("-", "")
    try:
        return (dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])) - _EPOCH).days
    except ValueError:
        raise SceneError(f"{where}: {text!r} is not a date (YYYYMMDD or YYYY-MM-DD)") from None


def _series(key: str, spec: _SensorSpec, base: str, where: str) -> list[tuple[str, int]]:
    if (spec.files is None) == (spec.table is None):
        raise SceneError(f"{where}: give exactly one of files / table")
    if spec.table is not None:
        url = spec.table if "://" in spec.table or posixpath.isabs(spec.table) else str(Path(base) / spec.table)
        with fsspec.open(url, "r") as f:
            rows = list(csv.DictReader(io.StringIO(f.read())))
        if not rows or not {"path", "date"} <= set(rows[0]):
            raise SceneError(f"{where}: table {spec.table} needs the columns path,date")
        return [(p, _day(r["date"], f"{where}.table")) for r in rows for p in _expand([r["path"]], base, where)]
    pattern = re.compile(spec.date_pattern)
    out = []
    for path in _expand([spec.files] if isinstance(spec.files, str) else spec.files, base, f"{where}.files"):
        m = pattern.search(posixpath.basename(path))
        if m is None:
            raise SceneError(f"{where}.date_pattern: {spec.date_pattern!r} finds no date in {posixpath.basename(path)}")
        out.append((path, _day(m.group(1) if m.groups() else m.group(0), f"{where}.date_pattern")))
    return out


def load_scene(path: str) -> Scene:
    """Read and check a scene spec; raises :class:`SceneError` naming the file and key."""
    fs, p = fsspec.core.url_to_fs(path)
    if not fs.exists(p):
        raise SceneError(f"{path}: no such scene spec")
    with fs.open(p, "r") as f:
        raw: Any = yaml.safe_load(f) or {}
    try:
        spec = _SceneSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise SceneError(f"{path}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    base = posixpath.dirname(path) if "://" in path else str(Path(path).resolve().parent)
    if not spec.sensors:
        raise SceneError(f"{path}: sensors: name at least one sensor")
    series: dict[str, list[tuple[str, int]]] = {}
    for key, s in spec.sensors.items():
        if key not in sensor_keys():
            raise SceneError(f"{path}: sensors.{key}: unknown sensor (known: {', '.join(sensor_keys())})")
        series[key] = sorted(_series(key, s, base, f"{path}: sensors.{key}"), key=lambda r: r[1])
        if len(series[key]) > 1 and not get_sensor(key).time_series:
            raise SceneError(f"{path}: sensors.{key}: a single-date sensor takes one raster, got {len(series[key])}")
    grid = _grid(spec.grid, series, path)
    sensors = {}
    for key, s in spec.sensors.items():
        sensor = get_sensor(key)
        factor = sensor.resolution_m / grid.resolution
        if factor < 1 or abs(factor - round(factor)) > 1e-6:
            raise SceneError(f"{path}: sensors.{key}: its {sensor.resolution_m:g} m pixels are not a whole multiple "
                             f"of the {grid.resolution:g} m grid")
        with rasterio.open(series[key][0][0]) as src:
            count = src.count
        bands = tuple(s.bands or range(1, len(sensor.raw_bands) + 1))
        if len(bands) != len(sensor.raw_bands) or max(bands) > count or min(bands) < 1:
            raise SceneError(f"{path}: sensors.{key}.bands: need {len(sensor.raw_bands)} bands {sensor.raw_bands} "
                             f"among the raster's {count}, got {list(bands)}")
        for name, v in (("mean", s.mean), ("std", s.std)):
            if v is not None and len(v) != sensor.channels:
                raise SceneError(f"{path}: sensors.{key}.{name}: need {sensor.channels} values {sensor.bands}")
        sensors[key] = SensorSeries(key, tuple(f for f, _ in series[key]), tuple(d for _, d in series[key]), bands,
                                    float(sensor.resolution_m), int(round(factor)),
                                    tuple(s.mean) if s.mean else None, tuple(s.std) if s.std else None, s.resampling)
    return Scene(grid, sensors, spec.date_origin, path)


def _grid(g: _GridSpec, series: dict[str, list[tuple[str, int]]], where: str) -> Grid:
    first = next(iter(series.values()))[0][0]
    with rasterio.open(first) as src:
        crs = CRS.from_user_input(g.crs) if g.crs else src.crs
        if crs is None:
            raise SceneError(f"{where}: {first} has no CRS; give grid.crs")
        bounds = g.bounds
        if bounds is None:
            if src.crs != crs:
                raise SceneError(f"{where}: grid.crs differs from {first}'s CRS: give grid.bounds too")
            bounds = tuple(src.bounds)
    res = g.resolution or min(get_sensor(k).resolution_m for k in series)
    xmin, ymin, xmax, ymax = bounds
    if xmax <= xmin or ymax <= ymin:
        raise SceneError(f"{where}: grid.bounds {list(bounds)} is empty (xmin, ymin, xmax, ymax)")
    return Grid(crs.to_wkt(), float(xmin), float(ymax), float(res), int(round((xmax - xmin) / res)),
                int(round((ymax - ymin) / res)))


# -------------------------------------------------------------------------------------- reading
def read_region(series: SensorSeries, grid: Grid, row: int, col: int, height: int, width: int) -> np.ndarray:
    """``(T, C, height, width)`` float32 of ``series`` on the sensor's grid (grid pixels / factor)
    from sensor pixel ``(row, col)``; what lies beyond the scene repeats the edge pixels."""
    sgrid = grid.scaled(series.factor)
    r0, c0 = max(0, row), max(0, col)
    r1, c1 = min(sgrid.height, row + height), min(sgrid.width, col + width)
    out = np.empty((len(series.files), len(series.bands), height, width), np.float32)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"region ({row}, {col}) + {height}x{width} is outside the {series.key} grid")
    win = Window(c0, r0, c1 - c0, r1 - r0)
    pad = ((0, 0), (r0 - row, row + height - r1), (c0 - col, col + width - c1))
    for t, path in enumerate(series.files):
        with rasterio.open(path) as src, WarpedVRT(src, crs=CRS.from_wkt(grid.crs_wkt), transform=sgrid.transform,
                                                   width=sgrid.width, height=sgrid.height,
                                                   resampling=Resampling[series.resampling]) as vrt:
            part = vrt.read(list(series.bands), window=win, out_dtype="float32")
        out[t] = np.pad(part, pad, mode="edge")
    return out
