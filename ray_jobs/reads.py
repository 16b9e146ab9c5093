"""Read tasks of the training streams: one shard range of a store -> the tiles a rank trains on.

:class:`ReadRange` runs inside a Ray Data task (or in-process for evaluation and embedding). It fetches
one range through :class:`pipelines.store.StoreReader` (one GET per array and shard), keeps this split
and this rank's tiles, shuffles them, crops VHR images, sub-samples and compacts the time axis, converts
dates and, with ``prepare``, converts and normalises float-stored sensors to the model's bands.

Every per-tile choice is vectorised over the whole range: random draws come from a counter-based hash
of (seed, epoch, tile[, step]) (:func:`uniform`), so a tile gets the same crop and the same dates
whatever range, rank or batch it is read in, without creating one generator per tile; the tile
selection, the time compaction and the crop are one gather per array.

Why only float-stored sensors are normalised here: their float32 model bands are as large as the stored
values, so the object store carries no more bytes and the trainer's process does less. An integer
image (aerial uint8) would grow fourfold; it stays raw and :func:`ray_jobs.data.collate` converts it on
the training device, after a transfer four times smaller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import hashlib
import sys
from typing import Any

import numpy as np

from pipelines.store import StoreReader
from ray_jobs.credentials import load_secrets
from ray_jobs.plan import DataPlan, SensorPlan, Split, bands_float
from ray_jobs.timesteps import real_steps

__all__ = ["ReadRange", "convert_dates", "uniform", "seed_key", "normalised", "prepared_key", "crop_key",
           "reuse_freed_memory"]

_EPOCH = np.datetime64("1970-01-01", "D")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


# ---------------------------------------------------------------------------------------------- dates
def convert_dates(days: np.ndarray, origin: str | None) -> np.ndarray:
    """Days since 1970-01-01 (-1 = padding) -> model dates: 1-based day of year, or days since
    ``origin`` (``YYYY-MM-DD``). Padding stays -1."""
    days = np.asarray(days)
    pad = days < 0
    if origin in (None, "doy"):
        d = _EPOCH + days.astype("timedelta64[D]")
        out = (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    else:
        o = (_dt.date.fromisoformat(origin) - _dt.date(1970, 1, 1)).days
        out = days.astype(np.int64) - o
    return np.where(pad, -1, out).astype(np.int32)


_HEAP = {"kept": False}


def reuse_freed_memory() -> None:
    """Keep freed memory in this process's heap (glibc only; once per process).

    A read task allocates tens of MB per array and shard. glibc serves blocks that large with fresh
    ``mmap`` pages and unmaps them on free, so every range pays a page fault per 4 KiB again: measured
    on the 2-core benchmark VM, a 370 KB tile copy costs 890 µs into fresh pages and 55 µs into reused
    ones. With mmap off and a high trim threshold the heap keeps its high-water mark (a few ranges in
    flight: bounded, whatever the store size) and reuses it."""
    if _HEAP["kept"] or not sys.platform.startswith("linux"):
        return
    _HEAP["kept"] = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap-served blocks
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: return memory to the OS only beyond 1 GiB free
    except (OSError, AttributeError):  # not glibc (musl, ...): the defaults stay
        pass


# --------------------------------------------------------------------------------------------- random
def seed_key(*parts: Any) -> int:
    """A 64-bit key from any plain values (stable across processes, unlike ``hash``)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijection of uint64 whose outputs pass as independent uniforms."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(key: int, tiles: np.ndarray, cols: int) -> np.ndarray:
    """``(len(tiles), cols)`` float64 uniforms in [0, 1): a pure function of (key, tile, column)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        t = _mix(np.asarray(tiles, np.uint64)[:, None] * _GOLDEN + np.uint64(key))
        z = _mix(t + (np.arange(cols, dtype=np.uint64)[None, :] + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


# ------------------------------------------------------------------------------------------ normalise
def crop_key(key: str) -> tuple[str, str]:
    """Columns of per-tile top and left crop offsets that :func:`ray_jobs.data.collate` applies (two 1-D
    columns: an empty ``(0, 2)`` one would not convert to Arrow and travel pickled)."""
    return f"{key}/crop_top", f"{key}/crop_left"


def prepared_key(key: str) -> str:
    """Column of a sensor's model bands already normalised in the read task (float32)."""
    return f"{key}/x"


def normalised(data: np.ndarray, sp: SensorPlan, out: np.ndarray | None = None, inplace: bool = False
               ) -> np.ndarray:
    """Stored bands ``(..., C_stored, H, W)`` -> float32 normalised model bands (into ``out`` if given;
    ``inplace``: into ``data`` itself when it is float32 and holds the model bands), nodata (NaN/inf) -> 0."""
    mean = np.asarray(sp.mean, np.float32)[:, None, None]
    std = np.asarray(sp.std, np.float32)[:, None, None]
    direct = [b.index for b in sp.bands] == list(range(data.shape[-3]))
    if inplace and direct and data.dtype == np.float32 and out is None:
        out = data  # a read task's own gathered copy: no second array of the same size
    x = data if direct else bands_float(data, sp)  # the stored bands in model order: no band stack
    if not direct and out is None:
        out = x  # bands_float's array is new: normalise it where it is
    chw = x.shape[-3:]
    if x.flags.c_contiguous and (out is None or out.flags.c_contiguous):
        # one contiguous inner loop per tile and step, not one per band row (MODIS rows are 1 px long)
        x = x.reshape(-1, int(np.prod(chw)))
        mean, std = (np.ascontiguousarray(np.broadcast_to(a, chw)).reshape(-1) for a in (mean, std))
        out = None if out is None else out.reshape(x.shape)
    v = np.subtract(x, mean, out=out, dtype=np.float32)
    np.divide(v, std, out=v)
    v = v.reshape(data.shape[:-3] + chw)
    if v.dtype.kind == "f" and not np.isfinite(np.add.reduce(v, axis=None)):  # rare: only then a full pass
        np.nan_to_num(v, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return v


# ----------------------------------------------------------------------------------------- read tasks
class ReadRange:
    """Ray Data ``map_batches`` function: one row (a shard range work item) -> the tiles it yields.

    Plain callable object (not a class type), so Ray Data runs it as a task with ``read_num_cpus``.
    ``split`` is a split name (an alias such as PASTIS ``train`` reads its folds) or a list of stored
    splits. ``label`` (a store label array) adds a ``label`` column; dense labels are cropped with
    the image crops' offsets. ``prepare``: float-stored sensors come out as normalised model bands
    (:func:`prepared_key`), time steps beyond each series zero; the others keep their stored dtype, and a
    cropped integer image comes whole with its offsets (:func:`crop_key`) for collate to crop."""

    def __init__(self, plan: DataPlan, split: Split, train: bool, seed: int, label: str | None = None,
                 prepare: bool = False):
        self.plan, self.split, self.train, self.seed = plan, split, train, seed
        self.splits = plan.resolve_split(split)
        self.label, self.prepare = label, prepare
        groups = [sp.stored for sp in plan.sensors.values()]
        self._stored = sorted(set(groups))
        # model sensors assembled from the same stored group: each needs its own copy of the decoded arrays
        self._shared = {k for k, sp in plan.sensors.items() if groups.count(sp.stored) > 1}
        self._crops: dict[str, tuple] = {}
        self._reader = None

    @property
    def reader(self) -> StoreReader:
        if self._reader is None:  # opened in the read task's process, not pickled with the function
            load_secrets()  # a Ray Data read task: the driver's credentials, if it passed any
            if self.prepare:  # a stream's read task process
                reuse_freed_memory()
            self._reader = StoreReader(self.plan.url, self.plan.storage_options)
        return self._reader

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_reader"] = None
        return d

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [self.read_item({k: v[i] for k, v in rows.items()}) for i in range(len(rows["start"]))]
        if len(outs) == 1:  # the streams' batch_size=1: no copy
            return outs[0]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def read_item(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        plan = self.plan
        start, stop = int(item["start"]), int(item["stop"])
        self._crops = {}
        idx = np.flatnonzero(np.isin(self.reader.tile_splits(start, stop), self.splits))
        epoch = int(item["epoch"])
        if self.train:
            idx = np.random.default_rng(seed_key(self.seed, plan.name, epoch, start)).permutation(idx)
        idx = idx[int(item["offset"])::int(item["stride"])][int(item["skip"]):]
        tiles = start + idx
        # only this rank's tiles of the split, each decoded into its place in the shuffled order
        block = self.reader.read(start, stop, self._stored, labels=False, tiles=False, rows=idx)
        out: dict[str, np.ndarray] = {"tile": tiles.astype(np.int64)}
        offsets = self._crop_offsets({k: block[f"{plan.sensors[k].stored}/data"].shape[-2:] for k in plan.crop
                                      if plan.crop[k]}, tiles, epoch)
        for key, sp in plan.sensors.items():
            data, dates = block[f"{sp.stored}/data"], block[f"{sp.stored}/dates"]
            mask = block[f"{sp.stored}/mask"] if sp.has_mask else None
            shared = key in self._shared
            if sp.time_series:
                src, steps = self._time_order(real_steps(data, dates, mask), tiles, key, epoch)
                live = np.arange(src.shape[1])[None, :] < steps[:, None]
                moved = not (src == np.arange(src.shape[1])[None, :]).all()
                dates = np.where(live, np.take_along_axis(dates, src, axis=1) if moved else dates, -1)
            else:
                src, moved, steps, live = None, False, None, None
                dates = dates.copy() if shared else dates
            defer = (self.prepare and key in offsets and not sp.time_series and mask is None
                     and data.dtype.kind in "iub")
            if defer:  # collate crops while it converts: one pass over the image instead of two
                self._crops[key] = (*data.shape[-2:], plan.crop[key], *offsets[key])
                out.update(zip(crop_key(key), offsets[key]))
            elif key in offsets:  # one gather: kept steps in order and the crop window
                data, mask = self._crop(data, mask, plan.crop[key], *offsets[key], key, src=src if moved else None)
            elif moved:  # temporal dropout or steps to compact: one gather of the kept steps
                rows = np.arange(len(data))[:, None]
                data = data[rows, src]
                mask = None if mask is None else mask[rows, src]
            elif shared:  # another model sensor reads the same stored arrays: this one gets its own copy
                data, mask = data.copy(), None if mask is None else mask.copy()
            if sp.time_series:
                if mask is not None:
                    mask[~live] = False
                known = dates >= 0
                dates = convert_dates(dates, plan.date_origin)
                dates[~known & live] = 0  # undated image: day 0
                out[f"{key}/steps"] = steps
            if self.prepare and data.dtype.kind == "f":
                data = normalised(data, sp, inplace=True)  # ``data`` is this task's own decoded copy
                out_key = prepared_key(key)
            else:
                out_key = f"{key}/data"
            if live is not None:
                data[~live] = 0  # padding: zeros (stored zeros for raw data, as in the store)
            out[out_key] = data
            out[f"{key}/dates"] = dates
            if mask is not None:
                out[f"{key}/mask"] = mask
        if self.label is not None:
            y = self.reader.read(start, stop, [], labels=True, tiles=False, rows=idx)[f"labels/{self.label}"]
            out["label"] = self._crop_label(y) if y.ndim == 3 and self._crops else y
        return out

    def _time_order(self, real: np.ndarray, tiles: np.ndarray, key: str, epoch: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep a random subset of the real steps (train with temporal dropout), in time order, moved to
        the front. Returns (source step per output step ``(N, T)``, kept steps per tile ``(N,)``); the
        steps beyond a tile's count are padding."""
        n, t = real.shape
        count = real.sum(axis=1)
        td = self.plan.temporal_dropout
        keep = real
        if self.train and td is not None and n:
            k = (count * (1.0 - td)).astype(np.int64) if isinstance(td, float) else np.minimum(count, int(td))
            k = np.where(count > 0, np.maximum(k, 1), 0)
            # a uniform random k-subset of the real steps: the k smallest draws among them
            r = np.where(real, uniform(seed_key(self.seed, "time", key, epoch), tiles, t), 2.0)
            rank = np.empty((n, t), np.int64)
            np.put_along_axis(rank, np.argsort(r, axis=1, kind="stable"), np.arange(t)[None, :], axis=1)
            keep = rank < k[:, None]
        # kept steps first, each group in time order (stable sort of "not kept")
        src = np.argsort(~keep, axis=1, kind="stable")
        return src, keep.sum(axis=1).astype(np.int32)

    def _crop_offsets(self, shapes: dict[str, tuple[int, int]], tiles: np.ndarray, epoch: int
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(top, left) crop offsets per cropped sensor and tile. One draw per tile on the coarsest cropped
        grid, scaled to the finer ones, so that several cropped sensors cover the same ground."""
        if not shapes:
            return {}
        base = min(shapes, key=lambda k: shapes[k][0])
        hb, wb = shapes[base]
        sb = self.plan.crop[base]
        ratios = {}
        for k, (h, w) in shapes.items():
            r = h // hb
            if h != r * hb or w != r * wb or self.plan.crop[k] != r * sb:
                raise ValueError(f"{self.plan.name}: crops {self.plan.crop} of images "
                                 f"{ {k: tuple(v) for k, v in shapes.items()} } cover different ground; "
                                 "crop sizes must scale with the image sides")
            ratios[k] = r
        if self.train:
            u = uniform(seed_key(self.seed, "crop", epoch), np.asarray(tiles, np.int64), 2)
            ys = (u[:, 0] * (hb - sb + 1)).astype(np.int64)
            xs = (u[:, 1] * (wb - sb + 1)).astype(np.int64)
        else:  # evaluation: centre crop, deterministic
            ys = np.full(len(tiles), (hb - sb) // 2, np.int64)
            xs = np.full(len(tiles), (wb - sb) // 2, np.int64)
        return {k: (ys * r, xs * r) for k, r in ratios.items()}

    def _crop(self, data, mask, size, ys, xs, key, src=None):
        """Crop windows ``size``² at per-tile offsets (one gather). ``src`` (``(N, T)`` step indices into
        ``data``) selects the steps in the same gather."""
        # offsets (top, left) per tile, kept so a dense label is cropped at exactly the same place
        self._crops[key] = (*data.shape[-2:], size, ys, xs)

        def window(a):
            out = np.empty((len(ys), a.shape[1]) + a.shape[2:-2] + (size, size), a.dtype)
            # slice first (a view), then pick the steps: one copy of rows of ``size`` contiguous values
            for i, (y, x) in enumerate(zip(ys, xs)):
                win = a[i, :, ..., y:y + size, x:x + size]
                out[i] = win if src is None else win[src[i]]
            return out

        return window(data), None if mask is None else window(mask)

    def _crop_label(self, y: np.ndarray) -> np.ndarray:
        """Crop dense labels (N, H, W) like the image crops (a label as fine as the image, or finer)."""
        H, W = y.shape[-2:]
        for key, (h, w, size, ys, xs) in self._crops.items():
            if H % h == 0 and W % w == 0 and H // h == W // w:
                r = H // h
                out = np.empty((len(y), size * r, size * r), y.dtype)
                for i in range(len(y)):
                    out[i] = y[i, ys[i] * r:(ys[i] + size) * r, xs[i] * r:(xs[i] + size) * r]
                return out
        raise ValueError(f"{self.plan.name}: label {self.label!r} ({H}x{W} px) matches none of the cropped "
                         f"images {[(k, c[0], c[1]) for k, c in self._crops.items()]}")
