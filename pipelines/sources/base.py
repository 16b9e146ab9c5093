"""What every raw-archive reader provides: a cheap tile listing and a one-tile read.

A source never writes the store and never imports Ray: ``pipelines/ingest.py`` distributes
``read_tile`` calls over Ray Data tasks and ``pipelines/store.py`` writes what they return. Paths are
fsspec URLs (local folder or ``s3://bucket/prefix``), opened through :meth:`Source.open`.

Conventions of the returned arrays (the store contract in DESIGN.md):

* ``SensorArray.data``: ``(T, C, H, W)`` in the archive's own dtype (lossless), bands in the order of
  ``anysat.sensors`` (``Sensor.raw_bands`` when the archive lacks a derived band, e.g. the S1 ratio);
  single-date sensors have ``T == 1``.
* ``SensorArray.dates``: ``(T,)`` int32 days since 1970-01-01 (UTC); ``-1`` where the archive has no date.
* ``SensorArray.mask``: ``(T, 1|C, H, W)`` bool, ``True`` = valid, only where the archive has one.
* ``Tile.labels``: name -> array (``(K,)`` multi-hot / fractions, ``()`` class index, ``(H, W)`` per pixel).

A reader raises :class:`TileError` (file + reason) for a structurally broken tile; the ingest job
quarantines it and carries on.
"""

from __future__ import annotations

import datetime as _dt
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fsspec
import numpy as np

EPOCH = _dt.date(1970, 1, 1)


class TileError(Exception):
    """A raw tile that cannot be ingested: unreadable file, shape/date mismatch, label out of range."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class SensorArray:
    data: np.ndarray
    dates: np.ndarray
    mask: np.ndarray | None = None


@dataclass
class TileRef:
    """One tile as listed: enough to read it later in another process (must pickle)."""

    id: str
    split: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tile:
    id: str
    split: str
    sensors: dict[str, SensorArray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def days_since_epoch(d: _dt.date | _dt.datetime | str) -> int:
    """Absolute day number (UTC) of a date, datetime or ISO/YYYYMMDD string."""
    if isinstance(d, str):
        s = d.strip().replace("-", "").replace("/", "")[:8]
        d = _dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    if isinstance(d, _dt.datetime):
        if d.tzinfo is not None:
            d = d.astimezone(_dt.timezone.utc)
        d = d.date()
    return (d - EPOCH).days


class Source(ABC):
    """Base class of all dataset readers (one subclass per dataset, TorchGeo style)."""

    #: dataset name on the command line (``make ingest DATASET=<name>``)
    name: ClassVar[str]

    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = str(root).rstrip("/")
        self.storage_options = storage_options or {}
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)

    # -- paths -----------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Filesystem path (for ``self.fs``) of a file under the archive root."""
        return "/".join([self._root_path, *parts])

    def open(self, *parts: str, mode: str = "rb"):
        return self.fs.open(self.path(*parts), mode)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def _local(self) -> bool:
        protocols = self.fs.protocol
        return "file" in ((protocols,) if isinstance(protocols, str) else protocols)

    def _raster(self, rel: str, read: bool):
        """(data or None, (count, H, W), dtype) of a GeoTIFF; ``read=False`` touches only the header.

        Local files are opened in place (GDAL reads just the header); remote ones are fetched once
        into a MemoryFile, since GDAL cannot read through an fsspec file object."""
        import rasterio
        from rasterio.errors import RasterioIOError

        try:
            if self._local():
                with rasterio.open(self.path(rel)) as ds:
                    return (ds.read() if read else None), (ds.count, ds.height, ds.width), np.dtype(ds.dtypes[0])
            with self.open(rel) as f, rasterio.MemoryFile(f.read()) as mem, mem.open() as ds:
                return (ds.read() if read else None), (ds.count, ds.height, ds.width), np.dtype(ds.dtypes[0])
        except (RasterioIOError, OSError, ValueError) as e:
            raise TileError(self.path(rel), f"unreadable GeoTIFF: {e}") from e

    # -- the two things a source does ----------------------------------------------------------
    @abstractmethod
    def list_tiles(self) -> list[TileRef]:
        """All tiles of the archive, in a stable order, without reading pixel data."""

    @abstractmethod
    def read_tile(self, ref: TileRef) -> Tile:
        """Read one tile; raise :class:`TileError` if it is broken."""


# -- cheap structural probe (used by the ingest's planning pass) ------------------------------------
@dataclass
class SensorProbe:
    """Shape facts of one sensor of one tile, known without decoding pixel data where possible."""

    shape: tuple[int, int, int, int]
    """``(T, C, H, W)`` as :meth:`Source.read_tile` will return it."""
    dtype: str
    mask_channels: int | None = None
    """Channels of the validity mask (1 or C), ``None`` when the tile has no mask for this sensor."""
    dates: int | None = None
    """Length of the dates vector (must equal T); ``None`` = same as T."""


@dataclass
class TileProbe:
    sensors: dict[str, SensorProbe]
    labels: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    """label name -> (shape, dtype)."""


def probe_from_tile(tile: Tile) -> TileProbe:
    """Probe built from a fully read tile (the default when a source has no cheaper way)."""
    sensors = {}
    for key, arr in tile.sensors.items():
        data = np.asarray(arr.data)
        if data.ndim != 4:
            raise TileError(tile.id, f"sensor {key}: data has shape {data.shape}, expected (T, C, H, W)")
        mask_c = None if arr.mask is None else int(np.asarray(arr.mask).shape[1])
        sensors[key] = SensorProbe(tuple(int(s) for s in data.shape), data.dtype.str, mask_c,
                                   int(np.asarray(arr.dates).shape[0]))
    labels = {name: (tuple(int(s) for s in np.shape(v)), np.asarray(v).dtype.str) for name, v in tile.labels.items()}
    return TileProbe(sensors, labels)


def _source_probe(self: Source, ref: TileRef) -> TileProbe:
    """Shapes, dtypes and date counts of one tile, for sizing the store (T_max) before any write.

    The default reads the whole tile; sources override it when headers alone tell the shapes (e.g.
    ``.npy`` headers inside an ``.npz``), which makes the planning pass a small fraction of the ingest.
    Raise :class:`TileError` for a tile that is already visibly broken.
    """
    return probe_from_tile(self.read_tile(ref))


# Attached after the class body so the abstract interface above stays exactly as it was.
Source.probe = _source_probe
