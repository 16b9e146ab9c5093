"""The store's root attributes, typed: what a store says about itself (:class:`StoreMeta`), which
format and version it is (:func:`check_format`), and reading and writing them.

Nobody reads or writes the root attributes as a raw dict: writers build a :class:`StoreMeta`
(:func:`write_meta`, :func:`update_meta`), readers get one (:func:`read_meta`,
``pipelines.store.StoreReader.meta``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import zarr

from pipelines.geostore import GeorefMeta
from pipelines.stats import SampleStats, finalize_stats
from pipelines.storage import filesystem, read_json, zarr_store
from pipelines.store_layout import LabelLayout, SensorLayout, StoreLayout

FORMAT = "anysat-ray-store"
FORMAT_VERSION = 2
#: Versions this code reads: 1 has no georeference (``geo/*``, ``<sensor>/transform``); nothing else differs.
READ_VERSIONS = (1, 2)


class StoreFormatError(Exception):
    """The path holds something that is not a store of this format version."""


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
        """Statistics from merged :func:`pipelines.stats.partial_stats` (``None``: no tile of ``splits`` had
        the sensor)."""
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
