"""Where a tile is on the ground: the coordinate reference system and grid of each stored sensor.

Readers attach a :class:`GridRef` to every sensor whose archive file is georeferenced (a GeoTIFF's CRS
and affine transform), and a :class:`Footprint` to a tile whose archive gives its outline another way
(PASTIS' ``metadata.geojson``). The store keeps them per tile (``docs/store-format.md``, Georeference);
this module is the one place that converts between rasterio, GDAL, CF and GeoJSON conventions.

Conventions:

* a CRS is kept as ``"EPSG:<code>"`` when it has one, else as its WKT (``normalize_crs``);
* a transform is the six coefficients ``(a, b, c, d, e, f)`` of ``rasterio.Affine``: ``x = a*col + b*row
  + c``, ``y = d*col + e*row + f`` for the upper-left corner of pixel (row, col); GDAL's GeoTransform is the
  same numbers in the order ``(c, a, b, f, d, e)`` (rioxarray writes it in ``open_tile``);
* a footprint is a GeoJSON geometry in the tile's CRS.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import shapely.geometry
from rasterio.crs import CRS
from rasterio.transform import Affine

#: Per-tile CRS value of a tile the archive does not georeference.
NO_CRS = ""


def normalize_crs(crs: Any) -> str:
    """``"EPSG:<code>"`` when the CRS has an EPSG code, else its WKT; ``NO_CRS`` for ``None``/empty."""
    if crs is None or (isinstance(crs, str) and not crs.strip()):
        return NO_CRS
    try:
        c = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    except Exception as e:  # rasterio raises its own CRSError subclasses and ValueError
        raise ValueError(f"not a coordinate reference system: {crs!r} ({e})") from None
    code = c.to_epsg()
    return f"EPSG:{code}" if code else c.to_wkt()


@dataclass(frozen=True)
class GridRef:
    """The georeference of one sensor's pixel grid of one tile."""

    crs: str
    transform: tuple[float, float, float, float, float, float]

    def __post_init__(self):
        object.__setattr__(self, "crs", normalize_crs(self.crs))
        t = tuple(float(v) for v in tuple(self.transform)[:6])
        if len(t) != 6 or not all(math.isfinite(v) for v in t):
            raise ValueError(f"affine transform needs six finite numbers, got {self.transform!r}")
        object.__setattr__(self, "transform", t)

    @classmethod
    def from_rasterio(cls, crs: Any, transform: Affine) -> GridRef | None:
        """The grid of a raster as rasterio reports it; ``None`` when the file has no georeference
        (no CRS, or GDAL's identity transform for an ungeoreferenced image)."""
        if crs is None or transform is None or Affine(*tuple(transform)[:6]) == Affine.identity():
            return None
        return cls(normalize_crs(crs), tuple(transform)[:6])

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    def resampled(self, height: int, width: int, new_height: int, new_width: int) -> GridRef:
        """The grid covering the same ground as this ``height`` x ``width`` one with ``new_height`` x
        ``new_width`` pixels (what a resize to that size is on)."""
        scale = Affine.scale(width / new_width, height / new_height)
        return GridRef(self.crs, tuple(self.affine * scale)[:6])

    def outline(self, height: int, width: int) -> shapely.Polygon:
        """The polygon of the ``height`` x ``width`` grid's outer pixel edges, in the grid's CRS."""
        a, b, c, d, e, f = self.transform
        corners = [(a * col + b * row + c, d * col + e * row + f)
                   for col, row in ((0, 0), (width, 0), (width, height), (0, height))]
        return shapely.Polygon(corners)

    def xy(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates ``(y, x)`` along rows and columns of a north-up grid (no rotation)."""
        a, b, c, d, e, f = self.transform
        if b or d:
            raise ValueError("the grid is rotated; it has no 1-D x / y coordinates")
        return f + e * (np.arange(height) + 0.5), c + a * (np.arange(width) + 0.5)


@dataclass(frozen=True)
class Footprint:
    """A tile's outline as the archive gives it: a GeoJSON geometry (JSON text) in ``crs``."""

    crs: str
    geojson: str

    def __post_init__(self):
        object.__setattr__(self, "crs", normalize_crs(self.crs))
        geom = shapely.geometry.shape(json.loads(self.geojson)) if isinstance(self.geojson, str) else \
            shapely.geometry.shape(self.geojson)
        if geom.is_empty:
            raise ValueError("empty footprint geometry")
        object.__setattr__(self, "geojson", geometry_json(geom))

    @classmethod
    def of_grid(cls, grid: GridRef, height: int, width: int) -> Footprint:
        return cls(grid.crs, geometry_json(grid.outline(height, width)))

    @property
    def geometry(self) -> shapely.Geometry:
        return shapely.geometry.shape(json.loads(self.geojson))


def geometry_json(geom: shapely.Geometry) -> str:
    """Compact GeoJSON text of a geometry (what the store keeps per tile)."""
    return json.dumps(shapely.geometry.mapping(geom), separators=(",", ":"))
