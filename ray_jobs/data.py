"""Training data: stores -> Ray Data streams -> per-dataset model batches.

Layout of the work, given a :class:`ray_jobs.plan.DataPlan` per dataset (resolved once in the driver):

* :class:`StoreStream` (one per (store, split) on each rank): a Ray Dataset whose rows are shard
  ranges of the store; a read task fetches one range through :class:`pipelines.store.StoreReader`
  (one GET per array and shard, never the whole store), keeps this split and this rank's tiles,
  shuffles them with a seed derived from (seed, epoch, shard), crops VHR images, sub-samples and
  compacts the time axis and converts dates. Ray Data's streaming executor bounds how many ranges
  are in flight, so memory stays bounded whatever the store size. Blocks keep the raw dtype; the
  float conversion happens on the worker, where it is cheap and does not inflate the object store.
* :func:`collate` (worker): trims the time axis to the batch's longest series, builds the padding
  mask (padding = the steps beyond each tile's series length, :func:`ray_jobs.timesteps.real_steps`:
  an image without a date is real, fed as day 0), computes derived bands (S1/ALOS ratio), normalises with the store statistics, -> torch.

Every random choice is seeded from (seed, dataset, epoch, shard, tile), and streams preserve order,
so the data a rank sees is a function of the seed and of how many batches it already consumed: a
resumed run restarts each stream at exactly the next batch (:meth:`StoreStream.batches` ``start``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from typing import Any, Iterator

import numpy as np
import ray.data
import torch

from pipelines.store import StoreReader
from ray_jobs.credentials import load_secrets
from ray_jobs.plan import DataPlan, Split, bands_float, bands_mask
from ray_jobs.timesteps import real_steps

__all__ = ["StoreStream", "ReadRange", "collate", "convert_dates", "stream_items", "item_tiles", "quiet_ray_data"]

_EPOCH = np.datetime64("1970-01-01", "D")


def quiet_ray_data() -> None:
    """No progress bars and one line per execution at most: a stream starts an execution per chunk
    of epochs, and Ray Data's default chatter would drown the training log."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


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


# ----------------------------------------------------------------------------------------- read tasks
def _seed(*parts: Any) -> int:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


class ReadRange:
    """Ray Data ``map_batches`` function: one row (a shard range work item) -> the tiles it yields.

    Plain callable object (not a class type), so Ray Data runs it as a task with ``read_num_cpus``.
    ``split`` is a split name (an alias such as PASTIS ``train`` reads its folds) or a list of stored
    splits. ``label`` (a store label array) adds a ``label`` column; dense labels are cropped with
    the image crops' offsets."""

    def __init__(self, plan: DataPlan, split: Split, train: bool, seed: int, label: str | None = None):
        self.plan, self.split, self.train, self.seed = plan, split, train, seed
        self.splits = plan.resolve_split(split)
        self.label = label
        self._crops: dict[str, tuple] = {}
        self._reader = None

    @property
    def reader(self) -> StoreReader:
        if self._reader is None:  # opened in the read task's process, not pickled with the function
            load_secrets()  # a Ray Data read task: the driver's credentials, if it passed any
            self._reader = StoreReader(self.plan.url, self.plan.storage_options)
        return self._reader

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_reader"] = None
        return d

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = [self.read_item({k: v[i] for k, v in rows.items()}) for i in range(len(rows["start"]))]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def read_item(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        plan = self.plan
        start, stop = int(item["start"]), int(item["stop"])
        self._crops = {}
        block = self.reader.read(start, stop, sorted({sp.stored for sp in plan.sensors.values()}), labels=False,
                                 tiles=True)
        idx = np.flatnonzero(np.isin(block["tiles/split"], self.splits))
        epoch = int(item["epoch"])
        if self.train:
            idx = np.random.default_rng(_seed(self.seed, plan.name, epoch, start)).permutation(idx)
        idx = idx[int(item["offset"])::int(item["stride"])][int(item["skip"]):]
        out: dict[str, np.ndarray] = {"tile": (start + idx).astype(np.int64)}
        offsets = self._crop_offsets({k: block[f"{plan.sensors[k].stored}/data"].shape[-2:] for k in plan.crop
                                      if plan.crop[k]}, start + idx, epoch)
        for key, sp in plan.sensors.items():
            data = block[f"{sp.stored}/data"][idx]  # the store group (another sensor's, for a slot layout)
            dates = block[f"{sp.stored}/dates"][idx]
            mask = block[f"{sp.stored}/mask"][idx] if sp.has_mask else None
            real = real_steps(data, dates, mask) if sp.time_series else None  # before a crop hides content
            if key in offsets:
                data, mask = self._crop(data, mask, plan.crop[key], *offsets[key], key)
            if sp.time_series:
                data, dates, mask, steps = self._subsample(data, dates, mask, real, start + idx, key, epoch)
                known = dates >= 0
                dates = convert_dates(dates, plan.date_origin)
                dates[~known & (np.arange(dates.shape[1])[None, :] < steps[:, None])] = 0  # undated image: day 0
                out[f"{key}/steps"] = steps
            out[f"{key}/data"] = data
            out[f"{key}/dates"] = dates
            if mask is not None:
                out[f"{key}/mask"] = mask
        if self.label is not None:
            lab = self.reader.read(start, stop, [], labels=True, tiles=False)[f"labels/{self.label}"]
            y = lab[out["tile"] - start]
            out["label"] = self._crop_label(y) if y.ndim == 3 and self._crops else y
        return out

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
            ys = np.empty(len(tiles), np.int64)
            xs = np.empty(len(tiles), np.int64)
            for i, t in enumerate(tiles):
                rng = np.random.default_rng(_seed(self.seed, "crop", epoch, int(t)))
                ys[i], xs[i] = rng.integers(0, hb - sb + 1), rng.integers(0, wb - sb + 1)
        else:  # evaluation: centre crop, deterministic
            ys = np.full(len(tiles), (hb - sb) // 2, np.int64)
            xs = np.full(len(tiles), (wb - sb) // 2, np.int64)
        return {k: (ys * r, xs * r) for k, r in ratios.items()}

    def _crop(self, data, mask, size, ys, xs, key):
        h, w = data.shape[-2:]
        # offsets (top, left) per tile, kept so a dense label is cropped at exactly the same place
        self._crops[key] = (h, w, size, ys, xs)
        out = np.empty(data.shape[:-2] + (size, size), data.dtype)
        mout = None if mask is None else np.empty(mask.shape[:-2] + (size, size), mask.dtype)
        for i, (y, x) in enumerate(zip(ys, xs)):
            out[i] = data[i, ..., y:y + size, x:x + size]
            if mout is not None:
                mout[i] = mask[i, ..., y:y + size, x:x + size]
        return out, mout

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

    def _subsample(self, data, dates, mask, real, tiles, key, epoch):
        """Keep a random subset of the real steps (``real``, train only), in time order, moved to the
        front; the rest of the axis is padding (date -1). Returns (data, dates, mask, steps), ``steps``
        the number of kept steps per tile. Later, collate trims to the batch's longest series."""
        td = self.plan.temporal_dropout
        out_d = np.zeros_like(data)
        out_t = np.full_like(dates, -1)
        out_m = None if mask is None else np.zeros_like(mask)
        steps = np.zeros(len(data), np.int32)
        for i in range(len(data)):
            valid = np.flatnonzero(real[i])
            keep = valid
            if self.train and td is not None and len(valid):
                k = int(len(valid) * (1.0 - td)) if isinstance(td, float) else min(len(valid), int(td))
                k = max(k, 1)
                rng = np.random.default_rng(_seed(self.seed, "time", key, epoch, int(tiles[i])))
                keep = np.sort(rng.choice(valid, size=k, replace=False))
            n = steps[i] = len(keep)
            out_d[i, :n] = data[i, keep]
            out_t[i, :n] = dates[i, keep]
            if out_m is not None:
                out_m[i, :n] = mask[i, keep]
        return out_d, out_t, out_m, steps


def stream_items(plan: DataPlan, split: Split, train: bool, rank: int, world: int, seed: int, epoch: int,
                 skip_tiles: int = 0) -> list[dict[str, int]]:
    """Work items (shard ranges) of one epoch for one rank, in reading order.

    Training permutes the shards per epoch. With at least ``world`` shards each rank reads its own
    shards; a small store (fewer shards than ranks, e.g. the sample stores) is split tile-wise
    instead (every rank reads every shard and keeps every ``world``-th tile). ``skip_tiles`` drops
    the first tiles of the epoch (resume mid-epoch) without reading the shards they fill.
    """
    n, tps = plan.n_tiles, plan.tiles_per_shard
    ranges = [(s, min(s + tps, n)) for s in range(0, n, tps)]
    order = np.arange(len(ranges))
    if train:
        order = np.random.default_rng(_seed(seed, plan.name, "shards", epoch)).permutation(order)
    if len(ranges) >= world:
        mine, offset, stride = order[rank::world], 0, 1
    else:
        mine, offset, stride = order, rank, world
    items = []
    for j in mine:
        a, b = ranges[int(j)]
        items.append({"start": a, "stop": b, "epoch": epoch, "offset": offset, "stride": stride, "skip": 0})
    if skip_tiles and items:
        counts = item_tiles(plan, split, items)
        while items and skip_tiles >= counts[0]:
            skip_tiles -= counts.pop(0)
            items.pop(0)
        if items:
            items[0]["skip"] = skip_tiles
    return items


def item_tiles(plan: DataPlan, split: Split, items: list[dict[str, int]]) -> list[int]:
    """Tiles of ``split`` each work item yields (before ``skip``), from the plan's shard counts."""
    per_shard = plan.shard_counts(split)
    return [len(range(it["offset"], int(per_shard[it["start"] // plan.tiles_per_shard]), it["stride"]))
            for it in items]


class StoreStream:
    """Endless batches of one (store, split) for one rank: epoch after epoch, each batch exactly
    ``batch_size`` tiles (a batch may span an epoch boundary, so a rank's share only needs one tile).

    ``batches(start=c)`` resumes after ``c`` already-consumed batches: the position is ``c·B`` tiles
    into the deterministic epoch sequence, so nothing is replayed and no read is repeated.

    One Ray Dataset covers one or more whole epochs (enough work items to keep the read tasks busy;
    a large store needs one dataset per epoch, a sample store packs many epochs into one)."""

    MIN_ITEMS = 16

    def __init__(self, plan: DataPlan, split: Split, *, train: bool, rank: int, world: int, seed: int,
                 read_num_cpus: float = 0.25, prefetch_batches: int = 1, label: str | None = None):
        self.plan, self.split, self.train, self.label = plan, split, train, label
        self.rank, self.world, self.seed = rank, world, seed
        self.read_num_cpus = read_num_cpus
        self.prefetch_batches = prefetch_batches
        self.batch_size = int(plan.batch_size)
        items = stream_items(plan, split, train, rank, world, seed, 0)
        self.tiles_per_epoch = sum(item_tiles(plan, split, items))
        if self.tiles_per_epoch == 0:
            raise ValueError(f"{plan.name}/{split}: rank {rank} of {world} gets no tiles")
        self.epochs_per_dataset = max(1, -(-self.MIN_ITEMS // max(1, len(items))))
        self.batches_per_epoch = self.tiles_per_epoch / self.batch_size  # may be fractional

    def dataset(self, epoch: int, skip_tiles: int = 0, epochs: int = 1) -> ray.data.Dataset:
        items = []
        for e in range(epoch, epoch + epochs):
            items += stream_items(self.plan, self.split, self.train, self.rank, self.world, self.seed, e,
                                  skip_tiles if e == epoch else 0)
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        # preserve_order: blocks reach the iterator in item order, so batches are reproducible
        ds.context.execution_options.preserve_order = True
        return ds.map_batches(self.read_fn(), batch_size=1, batch_format="numpy", num_cpus=self.read_num_cpus)

    def read_fn(self) -> ReadRange:
        """The per-item read function (with ``label``: rows also carry the label column); the hook
        for subclasses that read differently."""
        return ReadRange(self.plan, self.split, self.train, self.seed, label=self.label)

    def batches(self, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        B = self.batch_size
        epoch, skip = divmod(int(start) * B, self.tiles_per_epoch)
        buf: list[dict[str, np.ndarray]] = []
        n = 0
        while True:
            ds = self.dataset(epoch, skip, self.epochs_per_dataset)
            # whole blocks (one per work item) in order; batches are cut here so they can span
            # epochs and datasets
            for block in ds.iter_batches(batch_size=None, batch_format="numpy",
                                         prefetch_batches=self.prefetch_batches):
                if not len(block["tile"]):
                    continue
                buf.append(block)
                n += len(block["tile"])
                while n >= B:
                    yield _take(buf, B)
                    n -= B
            epoch, skip = epoch + self.epochs_per_dataset, 0


def _take(buf: list[dict[str, np.ndarray]], k: int) -> dict[str, np.ndarray]:
    """Pop the first ``k`` rows off a list of column blocks."""
    parts, need = [], k
    while need:
        blk = buf[0]
        m = len(blk["tile"])
        if m <= need:
            parts.append(buf.pop(0))
            need -= m
        else:
            parts.append({c: v[:need] for c, v in blk.items()})
            buf[0] = {c: v[need:] for c, v in blk.items()}
            need = 0
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


# -------------------------------------------------------------------------------------------- collate
def _finite(v: np.ndarray) -> np.ndarray:
    """Nodata (NaN/inf in SAR archives; the validity mask marks those pixels) -> 0, i.e. the band mean:
    one NaN would otherwise poison a whole batch through the temporal attention."""
    return np.nan_to_num(v, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def collate(batch: dict[str, np.ndarray], plan: DataPlan, device: torch.device | None = None
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Numpy batch of one dataset -> (model inputs, padding masks), as torch tensors.

    Inputs follow the AnySat convention: ``<sensor>`` ``B×C×H×W`` (single date) or ``B×T×C×H×W``,
    ``<sensor>_dates`` ``B×T`` (0 at padded steps) and ``<sensor>_mask`` (validity, where the store has
    one). ``pad_mask[<sensor>]`` is ``B×T`` bool, True = padded step (time series only): the steps
    beyond each tile's ``<sensor>/steps`` (from :class:`ReadRange`; a batch without that column pads
    the undated steps). The time axis is cut to the longest series in the batch."""
    x: dict[str, torch.Tensor] = {}
    pad: dict[str, torch.Tensor] = {}
    for key, sp in plan.sensors.items():
        data = batch[f"{key}/data"]
        mean = np.asarray(sp.mean, np.float32)[:, None, None]
        std = np.asarray(sp.std, np.float32)[:, None, None]
        if sp.time_series:
            dates = batch[f"{key}/dates"]
            steps = batch.get(f"{key}/steps")
            valid = dates >= 0 if steps is None else np.arange(dates.shape[1])[None, :] < steps[:, None]
            t = max(1, int(valid.sum(axis=1).max()))
            data, dates, valid = data[:, :t], dates[:, :t], valid[:, :t]
            v = _finite((bands_float(data, sp) - mean) / std)
            v[~valid] = 0.0  # padded steps are zeros, as in the official collate
            x[key] = torch.from_numpy(np.ascontiguousarray(v))
            x[f"{key}_dates"] = torch.from_numpy(np.where(valid, dates, 0).astype(np.int64))
            pad[key] = torch.from_numpy(~valid)
            if sp.has_mask or sp.filled:
                m = batch[f"{key}/mask"][:, :t] if sp.has_mask else None
                if m is None or m.shape[2] > 1:  # per stored band -> model bands (derived: both inputs valid;
                    m = bands_mask(m, sp, data.shape)  # filled slots: never valid)
                x[f"{key}_mask"] = torch.from_numpy(np.ascontiguousarray(m))
        else:
            v = _finite((bands_float(data[:, 0], sp) - mean) / std)
            x[key] = torch.from_numpy(np.ascontiguousarray(v))
            if sp.has_mask:
                x[f"{key}_mask"] = torch.from_numpy(np.ascontiguousarray(batch[f"{key}/mask"][:, 0]))
    if device is not None:
        x = {k: v.to(device, non_blocking=True) for k, v in x.items()}
        pad = {k: v.to(device, non_blocking=True) for k, v in pad.items()}
    return x, pad
