"""The output map format: a georeferenced Zarr v3 group written shard by shard, in parallel.

``<out>.zarr`` (``format = "anysat-ray-map"``, ``format_version = 1``)::

    spatial_ref   ()              int32   attrs crs_wkt, spatial_ref (WKT), GeoTransform (GDAL 6 numbers)
    y, x          (y,), (x,)      float64 pixel-centre coordinates in the grid CRS
    class         (y, x)          int16   argmax class, -1 = not predicted      } attrs grid_mapping =
    probability   (band, y, x)    float32 per-class probabilities, NaN = none   }   "spatial_ref",
    embedding     (band, y, x)    float32 patch / tile embeddings, NaN = none   }   band names
    done/<shard>/                 group   one marker per finished shard (resume), attrs: its cells

The variables present depend on what was predicted. This is the rioxarray convention (the one the
ingest stores use for their per-tile grids), so ``xarray.open_zarr(url, consolidated=False,
decode_coords="all").rio.crs`` and ``.rio.transform()`` give the grid back. One Zarr chunk per
variable and shard: shard ``i`` covers chunk ``i`` of every variable and no other, so shards are
written by independent tasks without locks, and a rerun skips the shards that have a marker.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipelines.scene import Grid, geotransform
from pipelines.storage import filesystem, is_remote, read_json, remove, zarr_store

__all__ = ["MAP_FORMAT", "MapError", "MapVariable", "MapLayout", "map_state", "create_map", "write_map_shard",
           "done_shards",
           "export_cog", "FILL"]

MAP_FORMAT = "anysat-ray-map"
FILL = {"int16": -1, "float32": float("nan")}


class MapError(ValueError):
    """A map that cannot be written as asked (another layout already there)."""


@dataclass(frozen=True)
class MapVariable:
    name: str
    dtype: str
    bands: tuple[str, ...] = ()
    """Names along the ``band`` axis; empty for a 2-D variable."""


@dataclass(frozen=True)
class MapLayout:
    grid: Grid
    """The map's own grid (cells), in the scene CRS."""
    chunk: int
    """Cells per side of one shard = one Zarr chunk."""
    variables: tuple[MapVariable, ...]
    info: dict[str, Any] = field(default_factory=dict)
    """What produced the map (model, windows, blending): stored in the root attributes."""

    @property
    def shards_y(self) -> int:
        return -(-self.grid.height // self.chunk)

    @property
    def shards_x(self) -> int:
        return -(-self.grid.width // self.chunk)

    @property
    def n_shards(self) -> int:
        return self.shards_y * self.shards_x

    def box(self, i: int) -> tuple[int, int, int, int]:
        """Cells ``(r0, r1, c0, c1)`` of shard ``i`` (row-major), cropped to the grid."""
        r, c = divmod(i, self.shards_x)
        return (r * self.chunk, min(self.grid.height, (r + 1) * self.chunk),
                c * self.chunk, min(self.grid.width, (c + 1) * self.chunk))

    def record(self) -> dict[str, Any]:
        return json.loads(json.dumps({"grid": asdict(self.grid), "chunk": self.chunk,
                                      "variables": [asdict(v) for v in self.variables], "info": self.info}))


def map_state(url: str, layout: MapLayout, storage_options: dict | None = None) -> str:
    """``"absent"``, ``"same"`` (a map of this layout: resumable) or ``"other"`` (anything else)."""
    old = read_json(url, "zarr.json", storage_options)
    if old is None:
        return "absent"
    attrs = old.get("attributes", {})
    return "same" if attrs.get("format") == MAP_FORMAT and attrs.get("layout") == layout.record() else "other"


def create_map(url: str, layout: MapLayout, storage_options: dict | None = None, overwrite: bool = False) -> bool:
    """Create the map's arrays; ``True`` when a map of the same layout is already there (resume)."""
    state = map_state(url, layout, storage_options)
    if state == "same" and not overwrite:
        return True
    if state != "absent":
        if not overwrite:
            raise MapError(f"{url} exists and is not a map of this grid, model and output; "
                           "choose another --out or pass --overwrite")
        remove(url, storage_options)
    g, gt = layout.grid, geotransform(layout.grid.transform)
    root = zarr.open_group(zarr_store(url, storage_options), mode="w", zarr_format=3)
    root.attrs.update({"format": MAP_FORMAT, "format_version": 1, "layout": layout.record(),
                       "crs_wkt": g.crs_wkt, "GeoTransform": gt})
    ref = root.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0, dimension_names=())
    ref.attrs.update({"crs_wkt": g.crs_wkt, "spatial_ref": g.crs_wkt, "GeoTransform": gt})
    ys, xs = g.coords()
    for name, vals in (("y", ys), ("x", xs)):
        a = root.create_array(name, shape=vals.shape, dtype="float64", chunks=vals.shape, dimension_names=(name,),
                              fill_value=0.0)
        a[:] = vals
        a.attrs.update({"units": "metre", "axis": name.upper()})
    root.create_group("done")
    for v in layout.variables:
        lead = (len(v.bands),) if v.bands else ()
        a = root.create_array(v.name, shape=lead + (g.height, g.width), dtype=v.dtype,
                              chunks=lead + (layout.chunk, layout.chunk), fill_value=FILL[v.dtype],
                              dimension_names=("band",) * len(lead) + ("y", "x"))
        a.attrs.update({"grid_mapping": "spatial_ref", **({"band_names": list(v.bands)} if v.bands else {})})
    return False


def write_map_shard(url: str, layout: MapLayout, i: int, arrays: dict[str, np.ndarray],
                    storage_options: dict | None = None) -> None:
    """Write shard ``i``'s chunk of every variable, then its marker (so a killed writer leaves none)."""
    r0, r1, c0, c1 = layout.box(i)
    root = zarr.open_group(zarr_store(url, storage_options), mode="r+", zarr_format=3)
    for v in layout.variables:
        a = arrays[v.name]
        if a.shape[-2:] != (r1 - r0, c1 - c0):
            raise ValueError(f"shard {i}: {v.name} is {a.shape[-2:]}, the shard {(r1 - r0, c1 - c0)}")
        root[v.name][..., r0:r1, c0:c1] = a.astype(v.dtype, copy=False)
    # a marker is a group of its own (one metadata object written once): markers of concurrent
    # writers never touch the same object, and xarray / zarr readers see a valid hierarchy
    root["done"].create_group(str(i), attributes={"box": [r0, r1, c0, c1]})


def done_shards(url: str, storage_options: dict | None = None) -> set[int]:
    fs, root = filesystem(url, storage_options)
    found = fs.glob(posixpath.join(root, "done", "*", "zarr.json"))
    return {int(posixpath.basename(posixpath.dirname(p))) for p in found}


def export_cog(url: str, out: str, storage_options: dict | None = None) -> str:
    """The ``class`` variable as a Cloud-Optimised GeoTIFF, copied shard row by shard row (memory:
    one row of chunks)."""
    root = zarr.open_group(zarr_store(url, storage_options), mode="r", zarr_format=3)
    layout = root.attrs["layout"]
    arr, chunk = root["class"], int(layout["chunk"])
    h, w = arr.shape
    transform = Affine.from_gdal(*(float(v) for v in root.attrs["GeoTransform"].split()))
    with tempfile.TemporaryDirectory() as d:
        tmp = str(Path(d) / "class.tif")
        with rasterio.open(tmp, "w", driver="GTiff", width=w, height=h, count=1, dtype="int16", nodata=-1,
                           crs=CRS.from_wkt(root.attrs["crs_wkt"]), transform=transform, tiled=True,
                           blockxsize=256, blockysize=256) as dst:
            for r in range(0, h, chunk):
                dst.write(arr[r:r + chunk, :], 1, window=Window(0, r, w, min(chunk, h - r)))
        if is_remote(out):
            local = str(Path(d) / "cog.tif")
            rasterio.shutil.copy(tmp, local, driver="COG", compress="deflate")
            fs, path = filesystem(out, storage_options)
            fs.put_file(local, path)
        else:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            rasterio.shutil.copy(tmp, out, driver="COG", compress="deflate")
    return out
