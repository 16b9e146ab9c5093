"""The anysat-ray store: one sharded Zarr v3 store per dataset.

::

    <out>/<dataset>.zarr/            root group, attrs (StoreMeta): format, format_version, dataset, task, labels,
                                     tile_m, patch_sizes_m, sensors, stats, provenance, shards, quarantine
      tiles/id      (N,)   str       tile id from the raw archive
      tiles/split   (N,)   str       train / val / test / ... ; "quarantined" for a slot whose tile
                                     failed after the store was sized (see pipelines.ingest)
      <sensor>/data (N, T_max, C, H, W) raw dtype, 0 in padded time steps
      <sensor>/dates (N, T_max) int32  days since 1970-01-01 (UTC), -1 = padding
      <sensor>/mask (N, T_max, 1|C, H, W) bool, only where the archive has validity masks
      labels/<name> (N, K) | (N,) | (N, H, W)
      _ingest/plan.json              the ingest plan (layout, listing hash, probe quarantine)
      _ingest/shards/<i>.json        completion record of shard i (partial stats, quarantine)
      quarantine.json                the final quarantine report

One chunk holds one tile of one array; ``tiles_per_shard`` chunks form one shard object (Zarr v3
sharding), and writers only ever write whole shards, so no two writers touch the same object.

This module owns the format both ways: :func:`create_store` / :func:`write_block` for the writers (the
ingest job, ``ray_jobs.embed``), :class:`StoreReader` for the trainer, and :class:`StoreMeta` for the root
attributes, which nobody else reads or writes as a raw dict (:func:`read_meta`, :func:`update_meta`,
``StoreReader.meta``). Local paths and ``s3://`` URLs both work (fsspec/s3fs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import posixpath
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import fsspec
import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

from pipelines import geostore
from pipelines.geostore import GeorefMeta
# the shard codec is part of the format: re-exported so callers keep importing it from here
from pipelines.shardio import ShardSpec, decode_shard, encode_shard, get_all, put_all, shard_spec  # noqa: F401
from pipelines.stats import SampleStats

FORMAT = "anysat-ray-store"
FORMAT_VERSION = 2
#: Versions this code reads: 1 has no georeference (``geo/*``, ``<sensor>/transform``); nothing else differs.
READ_VERSIONS = (1, 2)
QUARANTINED = "quarantined"
TILE_DIMS = ("tile", "time", "band", "y", "x")

#: Compressor of every sensor array. Chosen by benchmarks/bench_ingest.py: blosc-lz4 with byte
#: shuffle encodes noisy float32 reflectances at several GB/s on one core and still shrinks them;
#: zstd (zarr's default) at level 0-3 took 3-6x the CPU time for a few percent more compression.
COMPRESSOR = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}

#: Write whole shards with :func:`encode_shard` (True) or through zarr's generic writer (False; kept
#: for the before/after benchmark and as a fallback). Set ANYSAT_STORE_FAST_IO=0 to disable.
FAST_SHARD_IO = os.environ.get("ANYSAT_STORE_FAST_IO", "1") != "0"


def compressor_codec(itemsize: int, spec: dict | None = None) -> BloscCodec:
    spec = dict(COMPRESSOR if spec is None else spec)
    return BloscCodec(typesize=max(1, int(itemsize)), **spec)


class StoreFormatError(Exception):
    """The path holds something that is not a store of this format version."""


# ----------------------------------------------------------------------------------------------------
# URLs and stores
# ----------------------------------------------------------------------------------------------------
def store_url(out: str, dataset: str) -> str:
    return f"{str(out).rstrip('/')}/{dataset}.zarr"


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def zarr_store(url: str, storage_options: dict | None = None, read_only: bool = False):
    """A zarr store object for a local path or an fsspec URL (s3://...)."""
    if is_remote(url):
        # from_url builds an *async* filesystem; a sync s3fs instance fails with "attached to a different loop".
        return zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}),
                                                 read_only=read_only)
    path = url[len("file://"):] if url.startswith("file://") else url
    return zarr.storage.LocalStore(path, read_only=read_only)


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Synchronous fsspec filesystem + path, for the small non-array objects (markers, reports)."""
    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def read_json(url: str, key: str, storage_options: dict | None = None) -> Any | None:
    fs, root = filesystem(url, storage_options)
    try:
        with fs.open(posixpath.join(root, key), "rb") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: the "store" is a plain file
        return None


def write_json(url: str, key: str, obj: Any, storage_options: dict | None = None) -> None:
    fs, root = filesystem(url, storage_options)
    path = posixpath.join(root, key)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    if is_remote(url):
        fs.pipe_file(path, data)  # one PUT: atomic on object stores
    else:
        tmp = f"{path}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)  # rename: a killed writer never leaves a half-written marker
        except OSError:
            try:  # a full disk: leave neither a marker nor its half-written temporary file
                os.unlink(tmp)
            except OSError:
                pass
            raise


class OutputError(Exception):
    """The output location cannot hold a store (message: one line naming it and the problem)."""


def _brief(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__


def check_output(out: str, storage_options: dict | None = None) -> None:
    """Raise :class:`OutputError` unless ``out`` can take stores, before any work is done.

    A local path must be a folder, or creatable as one, in which a file can be created (it is created
    here); an ``s3://`` prefix must name an existing bucket that accepts a PUT (a probe object is written
    and deleted).
    """
    out = str(out).rstrip("/") or "/"
    probe = f".anysat-write-check-{uuid.uuid4().hex}"
    if is_remote(out):
        # a PUT, not a bucket lookup: credentials allowed to write a prefix may not be allowed to list buckets
        try:
            fs, path = filesystem(out, storage_options)
            bucket = path.split("/", 1)[0]
            fs.pipe_file(f"{path}/{probe}", b"")
        except FileNotFoundError:
            raise OutputError(f"--out {out}: bucket {bucket!r} does not exist") from None
        except PermissionError as e:
            raise OutputError(f"--out {out}: not writable with these credentials ({_brief(e)})") from None
        except Exception as e:
            raise OutputError(f"--out {out}: cannot write there ({type(e).__name__}: {_brief(e)})") from None
        try:
            fs.rm(f"{path}/{probe}")
        except Exception:
            pass  # written but not deletable: harmless, the write check passed
        return
    path = out[len("file://"):] if out.startswith("file://") else out
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"--out {out} is a file, not a folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"--out {out}: {parent} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out}: cannot create the folder ({_brief(e)})") from None
    target = os.path.join(path, probe)
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(target)
    except OSError as e:
        raise OutputError(f"--out {out} is not writable ({_brief(e)})") from None


def existing_format(url: str, storage_options: dict | None = None) -> tuple[str | None, Any] | None:
    """``None`` if nothing is at ``url``; else ``(format, format_version)`` of the root group's attrs."""
    meta = read_json(url, "zarr.json", storage_options)
    if meta is None:
        fs, root = filesystem(url, storage_options)
        if fs.exists(root) and (not fs.isdir(root) or fs.ls(root)):
            return (None, None)
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    return attrs.get("format"), attrs.get("format_version")


def check_format(url: str, storage_options: dict | None = None) -> bool:
    """True if an anysat-ray store of this version exists at ``url``, False if nothing is there.

    Raises :class:`StoreFormatError` for anything else, so an ingest never overwrites foreign data.
    """
    found = existing_format(url, storage_options)
    if found is None:
        return False
    fmt, version = found
    if fmt is None:
        raise StoreFormatError(f"{url} exists and is not an {FORMAT} store; remove it or choose another --out")
    if fmt != FORMAT:
        raise StoreFormatError(f"{url} is a {fmt!r} store, not {FORMAT!r}; remove it or choose another --out")
    if version not in READ_VERSIONS:
        raise StoreFormatError(f"{url} has {FORMAT} format_version {version}, this code reads versions "
                               f"{', '.join(map(str, READ_VERSIONS))} and writes {FORMAT_VERSION}; re-ingest into "
                               "another --out or remove it")
    return True


def remove(url: str, storage_options: dict | None = None) -> None:
    fs, root = filesystem(url, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


# ----------------------------------------------------------------------------------------------------
# Layout: everything needed to create the arrays (decided by the ingest's probe pass)
# ----------------------------------------------------------------------------------------------------
@dataclass
class SensorLayout:
    key: str
    t_max: int
    channels: int
    height: int
    width: int
    dtype: str
    bands: list[str]
    resolution_m: float
    time_series: bool
    mask_channels: int | None = None
    """1 or C where the archive has validity masks, else ``None`` (no mask array)."""

    @property
    def tile_shape(self) -> tuple[int, int, int, int]:
        return (self.t_max, self.channels, self.height, self.width)


@dataclass
class LabelLayout:
    name: str
    task: str
    classes: list[str]
    shape: list[int]
    """Per-tile shape: ``[]`` class index, ``[K]`` multi-hot, ``[H, W]`` per pixel."""
    dtype: str
    ignore_index: int | None = None

    @property
    def fill_value(self):
        kind = np.dtype(self.dtype).kind
        if self.ignore_index is not None:
            return self.ignore_index
        return -1 if kind == "i" else 0


@dataclass
class StoreLayout:
    dataset: str
    n_tiles: int
    tiles_per_shard: int
    sensors: dict[str, SensorLayout]
    labels: dict[str, LabelLayout] = field(default_factory=dict)
    compressor: dict = field(default_factory=lambda: dict(COMPRESSOR))
    georef: list[str] | None = None
    """Sensors whose grids the archive georeferences (a ``<sensor>/transform`` array each); not ``None``
    means the store has the ``geo/*`` arrays (format version 2, ``pipelines.geostore``)."""

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_tiles / self.tiles_per_shard) if self.n_tiles else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        start = i * self.tiles_per_shard
        return start, min(start + self.tiles_per_shard, self.n_tiles)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "n_tiles": self.n_tiles, "tiles_per_shard": self.tiles_per_shard,
                "sensors": {k: asdict(v) for k, v in self.sensors.items()},
                "labels": {k: asdict(v) for k, v in self.labels.items()}, "compressor": self.compressor,
                "georef": self.georef}

    @classmethod
    def from_json(cls, d: dict) -> StoreLayout:
        return cls(d["dataset"], int(d["n_tiles"]), int(d["tiles_per_shard"]),
                   {k: SensorLayout(**v) for k, v in d["sensors"].items()},
                   {k: LabelLayout(**v) for k, v in d["labels"].items()}, d.get("compressor", dict(COMPRESSOR)),
                   d.get("georef"))

    def tile_nbytes(self) -> int:
        """Uncompressed bytes of one tile slot (for throughput figures)."""
        n = 0
        for s in self.sensors.values():
            n += int(np.prod(s.tile_shape)) * np.dtype(s.dtype).itemsize + s.t_max * 4
            if s.mask_channels:
                n += s.t_max * s.mask_channels * s.height * s.width
        for lab in self.labels.values():
            n += int(np.prod(lab.shape or [1])) * np.dtype(lab.dtype).itemsize
        return n


# ----------------------------------------------------------------------------------------------------
# Root attributes: the typed view of what a store says about itself
# ----------------------------------------------------------------------------------------------------
def _tuple(v: Iterable | None) -> tuple:
    return tuple(v) if v is not None else ()


@dataclass(frozen=True)
class SensorMeta:
    """``sensors[<key>]`` of the root attributes: how one sensor is stored."""

    bands: tuple[str, ...]
    """Stored band names (the raw bands: derived ones such as S1's VV/VH are the loader's job)."""
    resolution_m: float
    time_series: bool
    t_max: int
    channels: int
    height: int
    width: int
    dtype: str
    mask_channels: int | None = None
    n_tiles: int | None = None
    """Tiles that have this sensor (an optional sensor is absent from the others: dates -1, mask False);
    known once the ingest has finished, ``None`` in stores written before it was recorded."""

    @classmethod
    def from_layout(cls, s: SensorLayout) -> SensorMeta:
        return cls(tuple(s.bands), s.resolution_m, s.time_series, s.t_max, s.channels, s.height, s.width,
                   s.dtype, s.mask_channels)

    @classmethod
    def from_attrs(cls, d: dict) -> SensorMeta:
        return cls(_tuple(d["bands"]), d["resolution_m"], d["time_series"], d["t_max"], d["channels"],
                   d["height"], d["width"], d["dtype"], d.get("mask_channels"), d.get("n_tiles"))

    def to_attrs(self) -> dict:
        d = {"bands": list(self.bands), "resolution_m": self.resolution_m, "time_series": self.time_series,
             "t_max": self.t_max, "channels": self.channels, "height": self.height, "width": self.width,
             "dtype": self.dtype, "mask_channels": self.mask_channels}
        if self.n_tiles is not None:
            d["n_tiles"] = self.n_tiles
        return d


@dataclass(frozen=True)
class LabelMeta:
    """``labels[<name>]`` of the root attributes (the label array carries the same in its own attrs)."""

    task: str
    classes: tuple[str, ...]
    shape: tuple[int, ...]
    """Per-tile shape: ``()`` class index, ``(K,)`` multi-hot, ``(H, W)`` per pixel."""
    dtype: str
    ignore_index: int | None = None

    @classmethod
    def from_layout(cls, lab: LabelLayout) -> LabelMeta:
        return cls(lab.task, tuple(lab.classes), tuple(lab.shape), lab.dtype, lab.ignore_index)

    @classmethod
    def from_attrs(cls, d: dict) -> LabelMeta:
        return cls(d["task"], _tuple(d["classes"]), _tuple(d["shape"]), d["dtype"], d.get("ignore_index"))

    def to_attrs(self) -> dict:
        return {"task": self.task, "classes": list(self.classes), "ignore_index": self.ignore_index,
                "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class SensorStats:
    """``stats[<sensor>]``: exact per-band statistics over the real time steps of the ``splits`` tiles.

    ``None`` in ``min``/``max``/``mean``/``std`` marks a band without a single valid value.
    """

    bands: tuple[str, ...]
    count: tuple[int, ...]
    sum: tuple[float, ...]
    sumsq: tuple[float, ...]
    min: tuple[float | None, ...]
    max: tuple[float | None, ...]
    nan_count: tuple[int, ...]
    mean: tuple[float | None, ...]
    std: tuple[float | None, ...]
    splits: tuple[str, ...] = ("train",)

    _FIELDS = ("count", "sum", "sumsq", "min", "max", "nan_count", "mean", "std")

    @classmethod
    def from_partials(cls, merged: dict[str, list] | None, bands: Sequence[str],
                      splits: Sequence[str]) -> SensorStats:
        """Statistics from merged :func:`partial_stats` (``None``: no tile of ``splits`` had the sensor)."""
        return cls.from_attrs({**finalize_stats(merged, bands), "splits": list(splits)})

    @classmethod
    def from_attrs(cls, d: dict) -> SensorStats:
        return cls(_tuple(d["bands"]), *(_tuple(d[k]) for k in cls._FIELDS), splits=_tuple(d.get("splits", ("train",))))

    def to_attrs(self) -> dict:
        return {"bands": list(self.bands), **{k: list(getattr(self, k)) for k in self._FIELDS},
                "splits": list(self.splits)}

    def arrays(self) -> dict[str, Any]:
        """The statistics as numpy arrays (NaN where a band had no value); bands and splits as lists."""
        out: dict[str, Any] = {"bands": list(self.bands)}
        for k in self._FIELDS:
            out[k] = np.array([np.nan if x is None else x for x in getattr(self, k)],
                              dtype=np.int64 if k in ("count", "nan_count") else np.float64)
        out["splits"] = list(self.splits)
        return out


@dataclass(frozen=True)
class EmbeddingMeta:
    """``embedding`` of a store written by ``ray_jobs.embed`` (its sensors are ``anysat-<output>``)."""

    source_store: str
    model: str
    """Human-readable description of the weights (checkpoint file and step, or encoder source)."""
    output: str
    patch_size_m: float
    splits: tuple[str, ...]
    sensors: tuple[str, ...]
    """The input sensors the model saw."""

    @classmethod
    def from_attrs(cls, d: dict) -> EmbeddingMeta:
        return cls(d["source_store"], d["model"], d["output"], d["patch_size_m"], _tuple(d["splits"]),
                   _tuple(d["sensors"]))

    def to_attrs(self) -> dict:
        return {"source_store": self.source_store, "model": self.model, "output": self.output,
                "patch_size_m": self.patch_size_m, "splits": list(self.splits), "sensors": list(self.sensors)}


@dataclass(frozen=True)
class StoreMeta:
    """The root attributes of a store (``zarr.json`` ``attributes``), typed.

    Two kinds of store share the format: a dataset store written by ``pipelines.ingest`` and an
    embeddings store written by ``ray_jobs.embed`` (``embedding`` set). ``None`` marks a key the writer
    does not record (an embeddings store has no statistics, no provenance, no shard records); such keys
    are left out of :meth:`to_attrs`, so each kind keeps exactly the keys it has always written.
    ``format``, ``format_version`` and ``n_shards`` are not fields: they follow from the code and
    from ``n_tiles`` / ``tiles_per_shard``.

    The ingest writes the first part when it creates the arrays (``status="incomplete"``) and the
    statistics, shard records and quarantine when it finishes (``status="complete"``)::

        meta = StoreMeta.for_layout(layout, task="multiclass", tile_m=120, ...)
        create_store(url, layout, meta)
        ...
        update_meta(url, stats=..., status="complete")
        StoreReader(url).meta.stats["s2"].mean
    """

    dataset: str
    n_tiles: int
    tiles_per_shard: int
    sensors: dict[str, SensorMeta]
    task: str | None = None
    """Task of the first label ("multilabel", "multiclass", "segmentation" or "none")."""
    tile_m: float | None = None
    labels: dict[str, LabelMeta] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    """Classes of the first label (dataset stores)."""
    patch_sizes_m: tuple[float, ...] | None = None
    model_sensors: tuple[str, ...] | None = None
    """Sensors fed to AnySat, in the model's modality order (the registry's ``DatasetSpec.model_sensors``)."""
    compressor: dict | None = None
    """Blosc settings of the arrays (``COMPRESSOR``)."""
    status: str = "incomplete"
    """``"incomplete"`` while a writer runs, ``"complete"`` once every shard is written."""
    provenance: dict | None = None
    """Where the data came from: ``source`` (raw archive), ``planned`` / ``finished`` (UTC times),
    ``versions`` (package -> version), ``host``."""
    stats: dict[str, SensorStats] | None = None
    stats_splits: tuple[str, ...] | None = None
    """The splits the statistics are computed over (``("train",)``; PASTIS: its training folds)."""
    sample_stats: dict[str, dict[str, SampleStats]] | None = None
    """AnySat's per-sample-averaged statistics, ``sensor -> stored split -> SampleStats``, for every
    stored split (PASTIS-HD: per fold; ``pipelines.stats``). Stores written before they existed lack
    them; the trainer then falls back to the pooled ``stats`` with a warning."""
    shards: tuple[dict, ...] | None = None
    """One record per shard: ``shard``, ``start``, ``stop``, ``tiles``, ``written``, ``bytes``."""
    quarantine: tuple[dict, ...] | None = None
    """One record per quarantined tile: ``tile``, ``split``, ``file``, ``reason``, ``stage``, ``index``."""
    n_listed: int | None = None
    """Tiles the reader listed in the raw archive (quarantined ones included)."""
    n_written: int | None = None
    embedding: EmbeddingMeta | None = None
    validation: dict | None = None
    """What the ingest checked every tile against: ``date_range`` (``[first, last]`` ISO dates a stored
    date may take, -1 aside) and ``max_dates`` (the longest series a tile may have, ``None``: no bound).
    Absent in stores written before these checks existed."""
    georef: GeorefMeta | None = None
    """Where the tiles are (``pipelines.geostore``): which sensors have grids, footprints, CRSs, or why
    the archive says nothing. ``None`` in version-1 stores and embedding stores."""
    format_version: int = FORMAT_VERSION
    """The version the store was written with: a version-1 store keeps 1 when its attributes are
    rewritten (a resumed ingest), since it has no ``geo`` arrays."""

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_tiles / self.tiles_per_shard) if self.n_tiles else 0

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @classmethod
    def for_layout(cls, layout: StoreLayout, **fields: Any) -> StoreMeta:
        """The attributes that follow from ``layout`` (dataset, sizes, sensors, labels) plus ``fields``."""
        return cls(layout.dataset, layout.n_tiles, layout.tiles_per_shard,
                   {k: SensorMeta.from_layout(v) for k, v in layout.sensors.items()},
                   labels={k: LabelMeta.from_layout(v) for k, v in layout.labels.items()}, **fields)

    @classmethod
    def from_attrs(cls, d: dict) -> StoreMeta:
        """Parse root attributes; keys this version does not know are ignored (a newer writer's extras)."""
        if d.get("format") != FORMAT or d.get("format_version") not in READ_VERSIONS:
            raise StoreFormatError(f"attributes of a {d.get('format')!r} store, format_version "
                                   f"{d.get('format_version')!r}; this code reads {FORMAT!r} versions "
                                   f"{', '.join(map(str, READ_VERSIONS))}")

        def opt(key, conv):
            return None if d.get(key) is None else conv(d[key])

        return cls(
            dataset=d["dataset"], n_tiles=d["n_tiles"], tiles_per_shard=d["tiles_per_shard"],
            sensors={k: SensorMeta.from_attrs(v) for k, v in d["sensors"].items()},
            task=d.get("task"), tile_m=d.get("tile_m"),
            labels={k: LabelMeta.from_attrs(v) for k, v in d.get("labels", {}).items()},
            classes=opt("classes", tuple), patch_sizes_m=opt("patch_sizes_m", tuple),
            model_sensors=opt("model_sensors", tuple), compressor=opt("compressor", dict),
            status=d.get("status", "incomplete"), provenance=opt("provenance", dict),
            stats=opt("stats", lambda s: {k: SensorStats.from_attrs(v) for k, v in s.items()}),
            stats_splits=opt("stats_splits", tuple),
            sample_stats=opt("sample_stats", lambda s: {k: {sp: SampleStats.from_attrs(v) for sp, v in d.items()}
                                                        for k, d in s.items()}),
            shards=opt("shards", lambda v: tuple(dict(x) for x in v)),
            quarantine=opt("quarantine", lambda v: tuple(dict(x) for x in v)),
            n_listed=d.get("n_listed"), n_written=d.get("n_written"),
            embedding=opt("embedding", EmbeddingMeta.from_attrs), validation=opt("validation", dict),
            georef=opt("georef", GeorefMeta.from_attrs), format_version=int(d["format_version"]))

    def to_attrs(self) -> dict:
        """The root attributes as stored (JSON-compatible; ``None`` fields left out)."""
        d: dict[str, Any] = {"format": FORMAT, "format_version": self.format_version, "dataset": self.dataset,
                             "task": self.task}
        optional = {
            "classes": None if self.classes is None else list(self.classes),
            "labels": {k: v.to_attrs() for k, v in self.labels.items()},
            "tile_m": self.tile_m,
            "patch_sizes_m": None if self.patch_sizes_m is None else list(self.patch_sizes_m),
            "model_sensors": None if self.model_sensors is None else list(self.model_sensors),
            "sensors": {k: v.to_attrs() for k, v in self.sensors.items()},
            "n_tiles": self.n_tiles, "tiles_per_shard": self.tiles_per_shard, "n_shards": self.n_shards,
            "compressor": self.compressor, "status": self.status, "provenance": self.provenance,
            "stats": None if self.stats is None else {k: v.to_attrs() for k, v in self.stats.items()},
            "stats_splits": None if self.stats_splits is None else list(self.stats_splits),
            "sample_stats": None if self.sample_stats is None else {
                k: {sp: v.to_attrs() for sp, v in d.items()} for k, d in self.sample_stats.items()},
            "shards": None if self.shards is None else [dict(s) for s in self.shards],
            "quarantine": None if self.quarantine is None else [dict(q) for q in self.quarantine],
            "n_listed": self.n_listed, "n_written": self.n_written,
            "embedding": None if self.embedding is None else self.embedding.to_attrs(),
            "validation": self.validation,
            "georef": None if self.georef is None else self.georef.to_attrs(),
        }
        d.update({k: v for k, v in optional.items() if v is not None})
        return d

    def replace(self, **changes: Any) -> StoreMeta:
        return dataclasses.replace(self, **changes)


def read_meta(url: str, storage_options: dict | None = None) -> StoreMeta:
    """The root attributes of the store at ``url`` (any status)."""
    if not check_format(url, storage_options):
        raise FileNotFoundError(f"no store at {url}")
    root = zarr.open_group(zarr_store(url, storage_options, read_only=True), mode="r")
    return StoreMeta.from_attrs(dict(root.attrs))


def write_meta(url: str, meta: StoreMeta, storage_options: dict | None = None) -> None:
    """Replace the root attributes of the store at ``url`` by ``meta``."""
    root = zarr.open_group(zarr_store(url, storage_options), mode="r+")
    root.attrs.put(meta.to_attrs())


def update_meta(url: str, storage_options: dict | None = None, **changes: Any) -> StoreMeta:
    """Read the root attributes, change some fields, write them back; returns the new meta.

    One writer at a time (the ingest driver, the embed driver): attributes are one object.
    """
    meta = read_meta(url, storage_options).replace(**changes)
    write_meta(url, meta, storage_options)
    return meta


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------
def create_store(url: str, layout: StoreLayout, meta: StoreMeta,
                 storage_options: dict | None = None) -> zarr.Group:
    """Create (overwriting) every array of the store, empty, with ``meta`` as the root attributes;
    shards are written later by the ingest.
    """
    if (meta.dataset, meta.n_tiles, meta.tiles_per_shard) != (layout.dataset, layout.n_tiles,
                                                               layout.tiles_per_shard):
        raise ValueError(f"store attributes ({meta.dataset}, {meta.n_tiles} tiles, {meta.tiles_per_shard} per "
                         f"shard) do not match the layout ({layout.dataset}, {layout.n_tiles}, "
                         f"{layout.tiles_per_shard})")
    attrs = meta.to_attrs()
    store = zarr_store(url, storage_options)
    root = zarr.open_group(store, mode="w", zarr_format=3, attributes=attrs)
    n, tps = layout.n_tiles, layout.tiles_per_shard
    tiles = root.create_group("tiles")
    # 1-D per-tile arrays: one chunk per shard range, so shard writers still own disjoint objects.
    tiles.create_array("id", shape=(n,), dtype=str, chunks=(max(1, min(tps, n)),), dimension_names=("tile",))
    tiles.create_array("split", shape=(n,), dtype=str, chunks=(max(1, min(tps, n)),), dimension_names=("tile",))
    for s in layout.sensors.values():
        g = root.create_group(s.key, attributes={"bands": s.bands, "resolution_m": s.resolution_m,
                                                 "time_series": s.time_series, "t_max": s.t_max})
        t, c, h, w = s.tile_shape
        shard_n = max(1, min(tps, n))
        g.create_array("data", shape=(n, t, c, h, w), dtype=s.dtype, chunks=(1, t, c, h, w),
                       shards=(shard_n, t, c, h, w), fill_value=0, dimension_names=TILE_DIMS,
                       compressors=compressor_codec(np.dtype(s.dtype).itemsize, layout.compressor))
        g.create_array("dates", shape=(n, t), dtype="int32", chunks=(1, t), shards=(shard_n, t), fill_value=-1,
                       dimension_names=("tile", "time"), compressors=compressor_codec(4, layout.compressor))
        if s.mask_channels:
            m = s.mask_channels
            g.create_array("mask", shape=(n, t, m, h, w), dtype="bool", chunks=(1, t, m, h, w),
                           shards=(shard_n, t, m, h, w), fill_value=False,
                           dimension_names=("tile", "time", "mask_band", "y", "x"),
                           compressors=compressor_codec(1, layout.compressor))
    if layout.georef is not None:
        geostore.create_arrays(root, n, tps, layout.georef, compressor_codec(8, layout.compressor))
    if layout.labels:
        lg = root.create_group("labels")
        for lab in layout.labels.values():
            shape = tuple(lab.shape)
            dims = ("tile",) + (("class",) if len(shape) == 1 else ("y", "x") if len(shape) == 2 else
                                tuple(f"d{i}" for i in range(len(shape))))
            chunk = (1, *shape) if shape else (max(1, min(tps, n)),)
            shards = (max(1, min(tps, n)), *shape) if shape else None
            lg.create_array(lab.name, shape=(n, *shape), dtype=lab.dtype, chunks=chunk, shards=shards,
                            fill_value=lab.fill_value, dimension_names=dims,
                            attributes={"task": lab.task, "classes": lab.classes, "ignore_index": lab.ignore_index},
                            compressors=compressor_codec(np.dtype(lab.dtype).itemsize, layout.compressor))
    return root


def empty_block(layout: StoreLayout, n: int) -> dict[str, np.ndarray]:
    """Arrays for ``n`` consecutive tile slots, pre-filled with the padding values of the format."""
    block: dict[str, np.ndarray] = {"tiles/id": np.full(n, "", dtype=object),
                                    "tiles/split": np.full(n, "", dtype=object)}
    for s in layout.sensors.values():
        block[f"{s.key}/data"] = np.zeros((n, *s.tile_shape), dtype=s.dtype)
        block[f"{s.key}/dates"] = np.full((n, s.t_max), -1, dtype=np.int32)
        if s.mask_channels:
            block[f"{s.key}/mask"] = np.zeros((n, s.t_max, s.mask_channels, s.height, s.width), dtype=bool)
    for lab in layout.labels.values():
        block[f"labels/{lab.name}"] = np.full((n, *lab.shape), lab.fill_value, dtype=lab.dtype)
    if layout.georef is not None:
        block.update(geostore.empty_block(n, layout.georef))
    return block


def write_block(root: zarr.Group, start: int, block: dict[str, np.ndarray]) -> None:
    """Write a shard-aligned block of tile slots: one object per array, all objects PUT concurrently.

    Sharded arrays go through :func:`encode_shard` (zarr's own writer spends ~0.25 ms of Python per
    inner chunk, i.e. most of the ingest time for small PLANTED tiles); the rest through zarr.
    """
    n = len(block["tiles/id"])
    stop = start + n
    puts: list[tuple[str, bytes]] = []
    for key, arr in block.items():
        za = root[key]
        spec = shard_spec(za)
        if FAST_SHARD_IO and spec is not None and start % spec.tiles == 0:
            puts.append((spec.key(start // spec.tiles), encode_shard(spec, arr)))
            continue
        if key.startswith(geostore.STRING_PREFIXES):
            arr = np.asarray([str(x) for x in arr], dtype=np.dtypes.StringDType())
        za[start:stop] = arr
    put_all(root.store, puts)


# ----------------------------------------------------------------------------------------------------
# Statistics: exact, mergeable partials (count, sum, sum of squares, min, max per band)
# ----------------------------------------------------------------------------------------------------
def partial_stats(data: np.ndarray, valid: np.ndarray | None = None) -> dict[str, list]:
    """Per-band partial statistics of ``(T, C, H, W)`` values (real time steps only, NaN excluded).

    ``valid`` (``(T, 1|C, H, W)`` bool, the archive's validity mask) excludes fill values and clouds:
    PASTIS' -10000 or a zero-padded FLAIR window would otherwise drag the normalisation statistics.

    Sums are float64 (numpy's pairwise summation), so merging partials in a fixed order (shard order)
    gives the same bits however the work was split across workers or resumed runs.
    """
    c = data.shape[1]
    x = np.moveaxis(data, 1, 0).reshape(c, -1).astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if valid is not None:
        v = np.broadcast_to(valid, data.shape)
        finite &= np.moveaxis(v, 1, 0).reshape(c, -1)
    all_finite = bool(finite.all())
    if not all_finite:
        x = np.where(finite, x, 0.0)
    count = finite.sum(axis=1) if not all_finite else np.full(c, x.shape[1], dtype=np.int64)
    s = x.sum(axis=1)
    ss = np.einsum("ij,ij->i", x, x)
    if all_finite:
        mn, mx = (x.min(axis=1), x.max(axis=1)) if x.shape[1] else (np.full(c, np.inf), np.full(c, -np.inf))
    else:
        mn = np.where(finite, x, np.inf).min(axis=1)
        mx = np.where(finite, x, -np.inf).max(axis=1)
    return {"count": count.astype(np.int64).tolist(), "sum": s.tolist(), "sumsq": ss.tolist(),
            "min": [None if not np.isfinite(v) else float(v) for v in mn],
            "max": [None if not np.isfinite(v) else float(v) for v in mx],
            "nan_count": (x.shape[1] - count).astype(np.int64).tolist()}


def merge_stats(parts: Iterable[dict | None]) -> dict[str, list] | None:
    """Merge partials (order matters only in the last float bit; callers use shard order)."""
    out = None
    for p in parts:
        if p is None:
            continue
        if out is None:
            out = {k: list(v) for k, v in p.items()}
            continue
        for i in range(len(out["count"])):
            out["count"][i] += p["count"][i]
            out["nan_count"][i] += p["nan_count"][i]
            out["sum"][i] += p["sum"][i]
            out["sumsq"][i] += p["sumsq"][i]
            for k, f in (("min", min), ("max", max)):
                a, b = out[k][i], p[k][i]
                out[k][i] = b if a is None else a if b is None else f(a, b)
    return out


def finalize_stats(p: dict[str, list] | None, bands: Sequence[str]) -> dict[str, Any]:
    """Add mean and (population) std to merged partials; ``None`` where a band had no values."""
    c = len(bands)
    if p is None:
        p = {"count": [0] * c, "sum": [0.0] * c, "sumsq": [0.0] * c, "min": [None] * c, "max": [None] * c,
             "nan_count": [0] * c}
    mean, std = [], []
    for n, s, ss in zip(p["count"], p["sum"], p["sumsq"]):
        if n == 0:
            mean.append(None)
            std.append(None)
            continue
        m = s / n
        mean.append(m)
        std.append(math.sqrt(max(ss / n - m * m, 0.0)))
    return {"bands": list(bands), **p, "mean": mean, "std": std}


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
class StoreReader:
    """Read an anysat-ray store (local path or ``s3://``) by tile index ranges.

    >>> r = StoreReader("data/stores/planted.zarr")
    >>> len(r), r.sensors, r.split_indices("train")[:3]
    >>> batch = r.read(0, r.tiles_per_shard, sensors=["s2", "l7"])   # one whole shard per array
    >>> batch["s2/data"].shape, batch["s2/dates"], batch["labels/species"], batch["tiles/id"]

    Reads aligned to whole shards cost one GET per array and shard; other ranges fetch the shard
    index plus one range request per tile. The reader pickles (for Ray tasks) and reopens lazily.
    """

    def __init__(self, url: str, storage_options: dict | None = None, *, require_complete: bool = True):
        self.url = str(url).rstrip("/")
        self.storage_options = dict(storage_options or {})
        try:
            ok = check_format(self.url, self.storage_options)
        except StoreFormatError as e:
            raise ValueError(str(e)) from None
        if not ok:
            raise FileNotFoundError(f"no store at {self.url}")
        self._root = None
        self._meta: StoreMeta | None = None
        if require_complete and not self.meta.complete:
            raise ValueError(f"{self.url}: ingest not finished (status {self.meta.status!r}); "
                             "rerun the ingest to complete it, or pass require_complete=False")
        self._splits: np.ndarray | None = None
        self._specs: dict[str, ShardSpec | None] = {}

    # pickling: zarr objects hold event-loop bound state, so reopen in the new process
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_root"] = None
        d["_specs"] = {}
        return d

    @property
    def root(self) -> zarr.Group:
        if self._root is None:
            self._root = zarr.open_group(zarr_store(self.url, self.storage_options, read_only=True), mode="r")
        return self._root

    # -- metadata -------------------------------------------------------------------------------------
    @property
    def meta(self) -> StoreMeta:
        """The root attributes, typed (parsed once)."""
        if self._meta is None:
            self._meta = StoreMeta.from_attrs(dict(self.root.attrs))
        return self._meta

    def __len__(self) -> int:
        return int(self.meta.n_tiles)

    @property
    def dataset(self) -> str:
        return self.meta.dataset

    @property
    def tiles_per_shard(self) -> int:
        return int(self.meta.tiles_per_shard)

    @property
    def sensors(self) -> list[str]:
        return list(self.meta.sensors)

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.labels)

    def stats(self, sensor: str) -> dict[str, np.ndarray]:
        """Train-split per-band statistics: mean, std, count, sum, sumsq, min, max, nan_count."""
        if not self.meta.stats or sensor not in self.meta.stats:
            raise KeyError(f"{self.url}: no statistics for sensor {sensor!r}")
        return self.meta.stats[sensor].arrays()

    @property
    def quarantine(self) -> list[dict]:
        return list(self.meta.quarantine or ())

    def shard_ranges(self) -> list[tuple[int, int]]:
        n, tps = len(self), self.tiles_per_shard
        return [(s, min(s + tps, n)) for s in range(0, n, tps)]

    def ids(self) -> np.ndarray:
        return np.asarray(self.root["tiles/id"][:], dtype=object)

    def splits(self) -> np.ndarray:
        if self._splits is None:
            self._splits = np.asarray(self.root["tiles/split"][:]).astype(object)
        return self._splits

    def tile_splits(self, start: int, stop: int) -> np.ndarray:
        """Split names of tiles ``[start, stop)`` (one small read, without the tile ids)."""
        if self._splits is not None:
            return self._splits[start:stop]
        return np.asarray(self.root["tiles/split"][start:stop]).astype(object)

    def split_names(self) -> list[str]:
        return sorted(set(self.splits().tolist()) - {QUARANTINED})

    def split_indices(self, split: str | Sequence[str]) -> np.ndarray:
        """Sorted tile indices of one split (or several); quarantined slots are never included."""
        names = [split] if isinstance(split, str) else list(split)
        return np.flatnonzero(np.isin(self.splits(), names)).astype(np.int64)

    # -- data -----------------------------------------------------------------------------------------
    def _keys(self, sensors: Sequence[str] | None, labels: bool, tiles: bool) -> list[str]:
        keys = []
        if tiles:
            keys += ["tiles/id", "tiles/split"]
        for s in (self.sensors if sensors is None else sensors):
            if s not in self.meta.sensors:
                raise KeyError(f"{self.url}: no sensor {s!r}; stored: {', '.join(self.sensors)}")
            keys += [f"{s}/data", f"{s}/dates"]
            if self.meta.sensors[s].mask_channels:
                keys.append(f"{s}/mask")
        if labels:
            keys += [f"labels/{n}" for n in self.label_names]
        return keys

    def read(self, start: int, stop: int, sensors: Sequence[str] | None = None, *, labels: bool = True,
             tiles: bool = True, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Tiles ``[start, stop)`` as ``{"<sensor>/data"|"/dates"|"/mask", "labels/<name>", "tiles/id",
        "tiles/split": ndarray}`` (the flat dict Ray Data batches use); arrays fetched concurrently.

        ``rows`` (indices into the range, any order, e.g. a shuffled split): only those tiles, in that
        order, each decoded straight into its place (the same as ``read(start, stop)[k][rows]`` without
        decoding the others or copying the rest)."""
        n = len(self)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"range [{start}, {stop}) outside the store's {n} tiles")
        if rows is not None:
            rows = np.asarray(rows, np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= stop - start):
                raise IndexError(f"rows outside the range [{start}, {stop})")
        keys = self._keys(sensors, labels, tiles)
        arrays = {k: self.root[k] for k in keys}
        out: dict[str, np.ndarray] = {}
        # Shard objects are fetched whole when the range covers a good part of them (one GET each);
        # small ranges go through zarr, which reads the shard index and only the tiles needed.
        fast: dict[str, tuple[ShardSpec, list[int]]] = {}
        for k, a in arrays.items():
            spec = self._spec(k, a)
            if not FAST_SHARD_IO or spec is None or stop - start < spec.tiles // 4:
                continue
            fast[k] = (spec, list(range(start // spec.tiles, (stop - 1) // spec.tiles + 1) if stop > start else []))
        keys_fetch = [spec.key(i) for spec, shards in fast.values() for i in shards]
        blobs = dict(zip(keys_fetch, get_all(self.root.store, keys_fetch))) if keys_fetch else {}
        for k, (spec, shards) in fast.items():
            res = np.empty((stop - start if rows is None else len(rows), *spec.shape[1:]), dtype=spec.dtype)
            for i in shards:
                s0 = i * spec.tiles
                lo, hi = max(start, s0), min(stop, s0 + spec.tiles)
                if rows is None:
                    decode_shard(spec, blobs[spec.key(i)], range(lo - s0, hi - s0), res[lo - start:hi - start])
                    continue
                mine = np.flatnonzero((rows >= lo - start) & (rows < hi - start))
                if len(mine) == len(rows):  # the range lies in this shard: decode into ``res`` itself
                    decode_shard(spec, blobs[spec.key(i)], (rows + (start - s0)).tolist(), res)
                elif len(mine):
                    part = np.empty((len(mine), *spec.shape[1:]), dtype=spec.dtype)
                    decode_shard(spec, blobs[spec.key(i)], (rows[mine] + (start - s0)).tolist(), part)
                    res[mine] = part
            out[k] = res
        slow = [k for k in keys if k not in fast]

        async def fetch():
            return await asyncio.gather(*(arrays[k]._async_array.getitem(slice(start, stop)) for k in slow))

        for k, v in zip(slow, sync(fetch()) if slow else []):
            v = np.asarray(v) if rows is None else np.asarray(v)[rows]
            out[k] = v.astype(object) if k.startswith("tiles/") else v
        return {k: out[k] for k in keys}

    def open_tile(self, i: int, sensor: str):
        """Tile ``i`` of ``sensor`` as a georeferenced ``xarray.DataArray`` (``pipelines.geostore.open_tile``)."""
        return geostore.open_tile(self, i, sensor)

    def footprints(self) -> dict[str, np.ndarray]:
        """Every tile's ``id``, ``split``, ``crs`` and ``footprint`` (GeoJSON); version-2 stores only."""
        return geostore.footprints(self)

    def _spec(self, key: str, arr: zarr.Array) -> ShardSpec | None:
        if key not in self._specs:
            self._specs[key] = shard_spec(arr)
        return self._specs[key]

    def read_indices(self, indices: Sequence[int], sensors: Sequence[str] | None = None, *,
                     labels: bool = True, tiles: bool = True) -> dict[str, np.ndarray]:
        """Arbitrary tiles, in the given order (grouped into contiguous runs to limit requests)."""
        idx = np.asarray(indices, dtype=np.int64)
        uniq = np.unique(idx)
        if uniq.size == 0:
            return {k: v[:0] for k, v in self.read(0, 0, sensors, labels=labels, tiles=tiles).items()}
        runs = np.split(uniq, np.flatnonzero(np.diff(uniq) > 1) + 1)
        parts = [self.read(int(r[0]), int(r[-1]) + 1, sensors, labels=labels, tiles=tiles) for r in runs]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        pos = np.searchsorted(uniq, idx)
        return {k: v[pos] for k, v in cat.items()}
