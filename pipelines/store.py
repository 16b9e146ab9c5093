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
ingest job, ``ray_jobs.embed``), :class:`StoreReader` for the trainer. What they share lives beside it:
the layout the arrays are created from (``pipelines.store_layout``), the root attributes, which nobody
else reads or writes as a raw dict (``pipelines.store_meta``: :class:`StoreMeta`, ``read_meta``,
``update_meta``, ``StoreReader.meta``), the whole-shard codec (``pipelines.shardio``) and the path rules
(``pipelines.storage``). Local paths and ``s3://`` URLs both work (fsspec/s3fs).
"""

from __future__ import annotations

import asyncio
import os
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

from pipelines import geostore
from pipelines.shardio import ShardSpec, decode_shard, encode_shard, get_all, put_all, shard_spec
from pipelines.storage import zarr_store
from pipelines.store_layout import COMPRESSOR, StoreLayout
from pipelines.store_meta import StoreFormatError, StoreMeta, check_format

QUARANTINED = "quarantined"
TILE_DIMS = ("tile", "time", "band", "y", "x")

#: Write whole shards with :func:`encode_shard` (True) or through zarr's generic writer (False; kept
#: for the before/after benchmark and as a fallback). Set ANYSAT_STORE_FAST_IO=0 to disable.
FAST_SHARD_IO = os.environ.get("ANYSAT_STORE_FAST_IO", "1") != "0"


def compressor_codec(itemsize: int, spec: dict | None = None) -> BloscCodec:
    spec = dict(COMPRESSOR if spec is None else spec)
    return BloscCodec(typesize=max(1, int(itemsize)), **spec)


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
