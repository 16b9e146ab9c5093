"""What every raw-archive reader provides: a cheap tile listing and a one-tile read.

A source never writes the store and never imports Ray: ``pipelines/ingest.py`` distributes
``read_tile`` calls over Ray Data tasks and ``pipelines/store.py`` writes what they return. Paths are
fsspec URLs (local folder or ``s3://bucket/prefix``), opened through :meth:`Source.open`.

Conventions of the returned arrays (what ``pipelines/store.py`` stores, one array per sensor):

* ``SensorArray.data``: ``(T, C, H, W)`` in the archive's own dtype (lossless), bands in the order of
  ``anysat.sensors`` (``Sensor.raw_bands`` when the archive lacks a derived band, e.g. the S1 ratio);
  single-date sensors have ``T == 1``.
* ``SensorArray.dates``: ``(T,)`` int32 days since 1970-01-01 (UTC); ``-1`` where the archive has no date.
* ``SensorArray.mask``: ``(T, 1|C, H, W)`` bool, ``True`` = valid, only where the archive has one.
* ``Tile.labels``: name -> array (``(K,)`` multi-hot / fractions, ``()`` class index, ``(H, W)`` per pixel).
* ``SensorArray.geo``: the sensor grid's CRS and affine transform (:class:`pipelines.georef.GridRef`) where
  the archive file has them (GeoTIFFs); ``Tile.footprint`` where the archive gives the outline another way.
  A reader says in :attr:`Source.georef_note` what its archive has, so the store can record it.
* A sensor the tile does not have (PASTIS-R has no SPOT, S2NAIP tiles without Landsat) is left out of
  ``Tile.sensors``: the store keeps it absent for that tile (dates -1, mask False).

A reader raises :class:`TileError` (file + reason) for a structurally broken tile; the ingest job
quarantines it and carries on.

A new reader subclasses :class:`Source`, sets ``name`` and implements :meth:`Source.list_tiles` and
:meth:`Source.read_tile`; it overrides :meth:`Source.probe` (same signature) only when file headers tell
the shapes more cheaply than a full read. File access goes through the methods of the base class
(:meth:`Source.open`, :meth:`Source.read_bytes`, :meth:`Source.read_raster`...), so the same reader
works on a local folder and on ``s3://``.
"""

from __future__ import annotations

import datetime as _dt
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fsspec
import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from pipelines.georef import Footprint, GridRef

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
    geo: GridRef | None = None


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
    footprint: Footprint | None = None
    """The outline the archive gives (PASTIS' geojson); ``None``: the store derives it from a sensor grid."""


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


#: Ticks per day of the integer timestamp units archives use (counted from 1970-01-01T00:00Z).
TIMESTAMP_UNITS = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
#: Days 1973-03-03 .. 2100-12-31. Timestamps of dates in this span do not overlap between the units
#: above (1e8..4.1e9 s, 1e11..4.1e12 ms, ...), so a series inside it has exactly one plausible unit.
_UNIT_WINDOW = (1_157, 47_846)
_INT32 = np.iinfo(np.int32)


def timestamps_to_days(values: np.ndarray, unit: str, where: str) -> np.ndarray:
    """Integer timestamps since 1970-01-01T00:00Z in ``unit`` -> ``(T,)`` int32 UTC days.

    The unit is checked, not trusted: a series that is implausible in ``unit`` but plausible (1973-2100)
    in another one is rejected with a :class:`TileError` naming that unit and a value, and days that
    do not fit int32 are rejected instead of wrapping (a nanosecond timestamp read as milliseconds is
    day ~2e10). Dates outside the ingest's plausible range are left to the ingest, which quarantines them.
    """
    per_day = TIMESTAMP_UNITS[unit]
    v = np.asarray(values)
    if v.dtype.kind == "u" and v.size and v.max() > np.iinfo(np.int64).max:
        raise TileError(where, f"timestamp {int(v.max())} is beyond any date")
    v = v.astype(np.int64)
    days = np.floor_divide(v, per_day)
    if v.size:
        lo, hi = _UNIT_WINDOW

        def plausible(u: str) -> bool:
            d = np.floor_divide(v, TIMESTAMP_UNITS[u])
            return bool(((d >= lo) & (d <= hi)).all())

        if not plausible(unit):
            for other in TIMESTAMP_UNITS:
                if other != unit and plausible(other):
                    raise TileError(where, f"timestamps look like {_UNIT_NAMES[other]} since 1970-01-01 (e.g. "
                                           f"{int(v[0])}), expected {_UNIT_NAMES[unit]}")
        wide = (days < _INT32.min) | (days > _INT32.max)
        if wide.any():
            k = int(np.flatnonzero(wide)[0])
            raise TileError(where, f"timestamp {int(v[k])} ({_UNIT_NAMES[unit]}) is day {int(days[k])}, beyond any "
                                   "date")
    return days.astype(np.int32)


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
    georeferenced: bool = False
    """Whether this sensor's grid has a CRS and transform in the archive."""


@dataclass
class TileProbe:
    sensors: dict[str, SensorProbe]
    labels: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    """label name -> (shape, dtype)."""
    footprint: bool = False
    """Whether the archive gives this tile's outline apart from the sensor grids."""


def probe_from_tile(tile: Tile) -> TileProbe:
    """Probe built from a fully read tile (the default when a source has no cheaper way)."""
    sensors = {}
    for key, arr in tile.sensors.items():
        data = np.asarray(arr.data)
        if data.ndim != 4:
            raise TileError(tile.id, f"sensor {key}: data has shape {data.shape}, expected (T, C, H, W)")
        mask_c = None if arr.mask is None else int(np.asarray(arr.mask).shape[1])
        sensors[key] = SensorProbe(tuple(int(s) for s in data.shape), data.dtype.str, mask_c,
                                   int(np.asarray(arr.dates).shape[0]), arr.geo is not None)
    labels = {name: (tuple(int(s) for s in np.shape(v)), np.asarray(v).dtype.str) for name, v in tile.labels.items()}
    return TileProbe(sensors, labels, tile.footprint is not None)


@dataclass
class Raster:
    """One raster file: pixels (or only the header facts) plus what GDAL reports about it."""

    data: np.ndarray | None
    """``(count, H, W)``, or ``None`` when only the header was read."""
    shape: tuple[int, int, int]
    """``(count, H, W)``."""
    dtype: np.dtype
    nodata: float | None
    descriptions: tuple[str | None, ...]
    """Band descriptions as GDAL wrote them (``None`` where a band has none)."""
    geo: GridRef | None = None
    """CRS and affine transform, ``None`` for a raster without a georeference."""


def decode_raster(src: str | bytes, where: str, read: bool = True) -> Raster:
    """A raster from a local path or from the file's bytes (a remote file, a tar member), via rasterio.

    ``where`` names the file in a :class:`TileError`. Readers call :meth:`Source.read_raster`; this is
    for bytes that do not come from one archive file (members of a ``.tar.gz``).
    """
    def grab(ds) -> Raster:
        return Raster(ds.read() if read else None, (ds.count, ds.height, ds.width), np.dtype(ds.dtypes[0]),
                      ds.nodata, tuple(ds.descriptions), GridRef.from_rasterio(ds.crs, ds.transform))

    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            with rasterio.MemoryFile(bytes(src)) as mem, mem.open() as ds:
                return grab(ds)
        with rasterio.open(src) as ds:
            return grab(ds)
    except (RasterioIOError, OSError, ValueError) as e:
        raise TileError(where, f"unreadable GeoTIFF: {e}") from None


class Source(ABC):
    """Base class of all dataset readers (one subclass per dataset, TorchGeo style)."""

    #: dataset name on the command line (``make ingest DATASET=<name>``)
    name: ClassVar[str]
    #: what the archive says about where its tiles are (recorded in the store's ``georef`` attribute)
    georef_note: ClassVar[str] = "no georeference in the archive"
    #: whether ``Tile.footprint`` comes from the archive (else the store outlines a sensor grid)
    footprints_in_archive: ClassVar[bool] = False

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

    @property
    def is_local(self) -> bool:
        """Whether the archive is on the local filesystem (libraries can then open paths in place)."""
        protocols = self.fs.protocol
        return "file" in ((protocols,) if isinstance(protocols, str) else protocols)

    def read_bytes(self, rel: str) -> bytes:
        """The whole file; :class:`TileError` if it is missing or unreadable."""
        try:
            with self.open(rel) as f:
                return f.read()
        except FileNotFoundError:
            raise TileError(self.path(rel), "file missing") from None
        except OSError as e:
            raise TileError(self.path(rel), f"unreadable file: {e}") from None

    def local_or_buffer(self, rel: str) -> str | io.BytesIO:
        """A path h5py / torch / numpy can open directly, or an in-memory buffer of a remote file."""
        return self.path(rel) if self.is_local else io.BytesIO(self.read_bytes(rel))

    def read_raster(self, rel: str, read: bool = True) -> Raster:
        """A GeoTIFF (or any GDAL raster) of the archive; ``read=False`` reads only the header.

        Local files are opened in place (GDAL then reads just the header when asked to); remote ones
        are fetched once into memory, since GDAL cannot read through an fsspec file object.
        """
        if not self.is_local:
            return decode_raster(self.read_bytes(rel), self.path(rel), read)
        try:
            return decode_raster(self.path(rel), self.path(rel), read)
        except TileError:
            if not self.exists(rel):  # GDAL reports a missing file as a generic open error
                raise TileError(self.path(rel), "file missing") from None
            raise

    # -- the two things a source does ----------------------------------------------------------
    @abstractmethod
    def list_tiles(self) -> list[TileRef]:
        """All tiles of the archive, in a stable order, without reading pixel data."""

    @abstractmethod
    def read_tile(self, ref: TileRef) -> Tile:
        """Read one tile; raise :class:`TileError` if it is broken."""

    def probe(self, ref: TileRef) -> TileProbe:
        """Shapes, dtypes and date counts of one tile, for sizing the store (T_max) before any write.

        The default reads the whole tile; sources override it when headers alone tell the shapes (e.g.
        ``.npy`` headers inside an ``.npz``), which makes the planning pass a small fraction of the ingest.
        Raise :class:`TileError` for a tile that is already visibly broken.
        """
        return probe_from_tile(self.read_tile(ref))
