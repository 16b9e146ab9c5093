"""The georeference part of the store (format version 2): per-tile CRS, footprints, sensor grids.

::

    <store>/geo/crs            (N,)    str      "EPSG:<code>" or WKT; "" where the tile has no georeference
    <store>/geo/footprint      (N,)    str      GeoJSON geometry of the tile outline, in the tile's CRS
    <store>/<sensor>/transform (N, 6)  float64  affine (a, b, c, d, e, f) of the sensor's grid; NaN if unknown

Per tile, not per store, because archives span several projections (S2NAIP: one UTM zone per tile,
Sen1Floods11: one per flood event). :func:`open_tile` turns one tile of one sensor into an ``xarray``
DataArray with ``y`` / ``x`` coordinates and the CF grid mapping ``rioxarray`` reads (a ``spatial_ref``
coordinate with ``crs_wkt``, ``spatial_ref`` and ``GeoTransform``). ``python -m pipelines.footprints``
exports the footprints to GeoParquet. Nothing here imports ``pipelines.store``: the store calls in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pipelines.georef import NO_CRS, Footprint, GridRef

if TYPE_CHECKING:
    import xarray as xr

CRS_KEY = "geo/crs"
FOOTPRINT_KEY = "geo/footprint"
#: Per-tile arrays of strings (zarr needs them converted to its string dtype on write).
STRING_PREFIXES = ("tiles/", "geo/")
TRANSFORM_DIMS = ("tile", "affine")
TRANSFORM_ATTRS = {
    "description": "affine transform of the tile's pixel grid, rasterio order (a, b, c, d, e, f): "
                   "x = a*col + b*row + c, y = d*col + e*row + f at the upper-left corner of pixel (row, col); "
                   "NaN where the archive has no georeference for this sensor",
    "crs": CRS_KEY,
}


def transform_key(sensor: str) -> str:
    return f"{sensor}/transform"


@dataclass(frozen=True)
class GeorefMeta:
    """``georef`` of the root attributes: what the store knows about where its tiles are."""

    note: str
    """What the archive provides (the reader's ``georef_note``), e.g. "no georeference in the archive"."""
    sensors: tuple[str, ...] = ()
    """Sensors with a ``<sensor>/transform`` array (grids the archive georeferences)."""
    footprint: str | None = None
    """Where ``geo/footprint`` comes from: ``"archive"`` (an outline the archive ships) or ``"grid"`` (the
    outline of the first georeferenced sensor's grid); ``None`` when the store has no ``geo`` arrays."""
    crs: tuple[str, ...] = ()
    """The distinct tile CRSs, known once the ingest has finished."""
    n_tiles: int | None = None
    """Tiles with a georeference, known once the ingest has finished."""

    @property
    def available(self) -> bool:
        return self.footprint is not None

    @classmethod
    def from_attrs(cls, d: dict) -> GeorefMeta:
        return cls(d["note"], tuple(d.get("sensors", ())), d.get("footprint"), tuple(d.get("crs", ())),
                   d.get("n_tiles"))

    def to_attrs(self) -> dict:
        return {"note": self.note, "sensors": list(self.sensors), "footprint": self.footprint,
                "crs": list(self.crs), "n_tiles": self.n_tiles}


# ------------------------------------------------------------------------------------------------- writing
def create_arrays(root: Any, n: int, tiles_per_shard: int, sensors: Sequence[str], compressors: Any) -> None:
    """The empty ``geo/*`` and ``<sensor>/transform`` arrays (the sensor groups exist already)."""
    chunk = (max(1, min(tiles_per_shard, n)),)
    g = root.require_group("geo")
    g.create_array("crs", shape=(n,), dtype=str, chunks=chunk, dimension_names=("tile",),
                   attributes={"description": "CRS of the tile: EPSG:<code> or WKT, empty = no georeference"})
    g.create_array("footprint", shape=(n,), dtype=str, chunks=chunk, dimension_names=("tile",),
                   attributes={"description": "tile outline as a GeoJSON geometry in the tile's CRS",
                               "encoding": "GeoJSON", "crs": CRS_KEY})
    for s in sensors:
        root[s].create_array("transform", shape=(n, 6), dtype="float64", chunks=(chunk[0], 6), fill_value=np.nan,
                             dimension_names=TRANSFORM_DIMS, attributes=TRANSFORM_ATTRS, compressors=compressors)


def empty_block(n: int, sensors: Sequence[str]) -> dict[str, np.ndarray]:
    block = {CRS_KEY: np.full(n, NO_CRS, dtype=object), FOOTPRINT_KEY: np.full(n, "", dtype=object)}
    for s in sensors:
        block[transform_key(s)] = np.full((n, 6), np.nan)
    return block


def tile_georef(grids: dict[str, GridRef | None], shapes: dict[str, tuple[int, int]], footprint: Footprint | None,
                order: Sequence[str]) -> tuple[str, str, dict[str, GridRef]]:
    """(CRS, footprint GeoJSON, grids) of one tile, ``(NO_CRS, "", {})`` when it has no georeference.

    Raises ``ValueError`` when the tile's grids and outline are not in one CRS: the store keeps one CRS
    per tile, and silently mixing two would put a sensor at the wrong place.
    """
    present = {k: g for k, g in grids.items() if g is not None and k in order}
    crs = footprint.crs if footprint is not None else next((present[k].crs for k in order if k in present), NO_CRS)
    other = sorted({f"{k}: {g.crs}" for k, g in present.items() if g.crs != crs})
    if other:
        raise ValueError(f"sensor grids in another CRS than the tile's {crs} ({'; '.join(other)})")
    if footprint is not None:
        return crs, footprint.geojson, present
    first = next((k for k in order if k in present), None)
    if first is None:
        return NO_CRS, "", {}
    return crs, Footprint.of_grid(present[first], *shapes[first]).geojson, present


# ------------------------------------------------------------------------------------------------- reading
def has_geo(root: Any) -> bool:
    return "geo" in root and "crs" in root["geo"]


def _datetimes(days: np.ndarray) -> np.ndarray:
    out = np.asarray(days, dtype="int64").astype("datetime64[D]").astype("datetime64[ns]")
    out[np.asarray(days) < 0] = np.datetime64("NaT")
    return out


def open_tile(reader: Any, i: int, sensor: str) -> xr.DataArray:
    """Tile ``i`` of ``sensor`` as a ``(time, band, y, x)`` DataArray, georeferenced where the store can.

    With a georeference the DataArray has pixel-centre ``y`` / ``x`` coordinates (north-up grids) and a
    ``spatial_ref`` coordinate written by ``rioxarray`` (``da.rio.crs``, ``da.rio.transform()``,
    ``da.rio.bounds()`` work); without one, ``attrs["georeference"]`` says why. ``reader`` is a
    ``pipelines.store.StoreReader``.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    meta = reader.meta
    if sensor not in meta.sensors:
        raise KeyError(f"{reader.url}: no sensor {sensor!r}; stored: {', '.join(meta.sensors)}")
    if not 0 <= i < len(reader):
        raise IndexError(f"{reader.url}: tile {i} outside 0..{len(reader) - 1}")
    batch = reader.read(i, i + 1, sensors=[sensor], labels=False)
    info = meta.sensors[sensor]
    da = xr.DataArray(batch[f"{sensor}/data"][0], dims=("time", "band", "y", "x"), name=sensor,
                      coords={"time": _datetimes(batch[f"{sensor}/dates"][0]), "band": list(info.bands)},
                      attrs={"tile": str(batch["tiles/id"][0]), "split": str(batch["tiles/split"][0]),
                             "resolution_m": info.resolution_m})
    georef = meta.georef
    if georef is None or not has_geo(reader.root):
        da.attrs["georeference"] = (f"none: store format_version {meta.format_version} predates georeferenced "
                                    "stores (re-ingest to add it)" if meta.format_version < 2 else
                                    f"none: {georef.note if georef else 'not recorded'}")
        return da
    crs = str(reader.root[CRS_KEY][i])
    t = (np.asarray(reader.root[transform_key(sensor)][i], dtype=np.float64) if sensor in georef.sensors
         else np.full(6, np.nan))
    if not crs or not np.isfinite(t).all():
        da.attrs["georeference"] = (f"none for tile {i} / {sensor}: {georef.note}" if not crs else
                                    f"tile {i} is located (footprint in {crs}) but the archive has no grid for "
                                    f"{sensor}: {georef.note}")
        if crs:
            da = da.rio.write_crs(crs)
        return da
    grid = GridRef(crs, tuple(t))
    h, w = da.sizes["y"], da.sizes["x"]
    if not (grid.transform[1] or grid.transform[3]):
        y, x = grid.xy(h, w)
        da = da.assign_coords(y=y, x=x)
    da = da.rio.write_crs(crs).rio.write_transform(grid.affine)
    da.attrs["footprint"] = str(reader.root[FOOTPRINT_KEY][i])
    return da


def footprints(reader: Any) -> dict[str, np.ndarray]:
    """``id``, ``split``, ``crs``, ``footprint`` (GeoJSON text) of every tile, as numpy object arrays."""
    if not has_geo(reader.root):
        raise ValueError(f"{reader.url}: the store has no footprints (format_version {reader.meta.format_version}"
                         f"{'; ' + reader.meta.georef.note if reader.meta.georef else ''})")
    return {"id": reader.ids(), "split": reader.splits(),
            "crs": np.asarray(reader.root[CRS_KEY][:]).astype(object),
            "footprint": np.asarray(reader.root[FOOTPRINT_KEY][:]).astype(object)}
