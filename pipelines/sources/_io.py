"""Small I/O helpers shared by the external-dataset readers (local path or any fsspec URL)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pipelines.sources.base import Source, TileError


def is_local(source: Source) -> bool:
    return source._local()


def read_bytes(source: Source, rel: str) -> bytes:
    try:
        with source.open(rel) as f:
            return f.read()
    except FileNotFoundError:
        raise TileError(source.path(rel), "file missing") from None
    except OSError as e:
        raise TileError(source.path(rel), f"unreadable file: {e}") from None


@dataclass
class Raster:
    data: np.ndarray | None
    """``(count, H, W)`` or ``None`` when only the header was read."""
    shape: tuple[int, int, int]
    dtype: np.dtype
    nodata: float | None
    descriptions: tuple[str | None, ...]


def read_raster(source: Source, rel: str, read: bool = True) -> Raster:
    """A GeoTIFF through rasterio (GDAL reports nodata tags and band descriptions the way GDAL wrote them)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    def grab(ds) -> Raster:
        return Raster(ds.read() if read else None, (ds.count, ds.height, ds.width), np.dtype(ds.dtypes[0]),
                      ds.nodata, tuple(ds.descriptions))

    try:
        if is_local(source):
            with rasterio.open(source.path(rel)) as ds:
                return grab(ds)
        with source.open(rel) as f, rasterio.MemoryFile(f.read()) as mem, mem.open() as ds:
            return grab(ds)
    except FileNotFoundError:
        raise TileError(source.path(rel), "file missing") from None
    except (RasterioIOError, OSError, ValueError) as e:
        if not source.exists(rel):  # GDAL reports a missing file as a generic open error
            raise TileError(source.path(rel), "file missing") from None
        raise TileError(source.path(rel), f"unreadable GeoTIFF: {e}") from None


def raster_from_bytes(buf: bytes, where: str, read: bool = True) -> Raster:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.MemoryFile(buf) as mem, mem.open() as ds:
            return Raster(ds.read() if read else None, (ds.count, ds.height, ds.width), np.dtype(ds.dtypes[0]),
                          ds.nodata, tuple(ds.descriptions))
    except (RasterioIOError, OSError, ValueError) as e:
        raise TileError(where, f"unreadable GeoTIFF: {e}") from None


def valid_mask(data: np.ndarray, nodata: float | None, extra: tuple[float, ...] = ()) -> np.ndarray:
    """Per-value validity: finite, not the nodata tag, not any of ``extra`` (same shape as ``data``)."""
    ok = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
    for v in ((nodata,) if nodata is not None else ()) + tuple(extra):
        if not np.isfinite(v):
            continue  # a NaN tag is covered by isfinite
        if data.dtype.kind in "iu":
            info = np.iinfo(data.dtype)
            if not (float(v).is_integer() and info.min <= v <= info.max):
                continue  # e.g. -9999 on uint8: no pixel can hold it
        ok &= data != v
    return ok


def nearest_resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes, OpenCV ``INTER_NEAREST`` indexing
    (``src = floor(dst * in / out)``), which is what the SICKLE loaders use through albumentations."""
    ih, iw = a.shape[-2:]
    if (ih, iw) == (h, w):
        return a
    rows = np.minimum((np.arange(h) * ih) // h, ih - 1)
    cols = np.minimum((np.arange(w) * iw) // w, iw - 1)
    return a[..., rows[:, None], cols[None, :]]


def local_or_buffer(source: Source, rel: str):
    """A path h5py / torch can open directly, or an in-memory buffer of a remote file."""
    if is_local(source):
        return source.path(rel)
    return io.BytesIO(read_bytes(source, rel))
