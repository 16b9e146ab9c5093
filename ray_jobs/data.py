"""Training data: stores -> Ray Data streams -> per-dataset model batches.

Layout of the work, given a :class:`ray_jobs.plan.DataPlan` per dataset (resolved once in the driver):

* :class:`StoreStream` (one per (store, split) on each rank): a Ray Dataset whose rows are shard
  ranges of the store; a read task (:class:`ray_jobs.reads.ReadRange`) fetches one range (one GET per
  array and shard, never the whole store), keeps this split and this rank's tiles, shuffles them with a
  seed derived from (seed, epoch, shard), crops VHR images, sub-samples and compacts the time axis,
  converts dates and normalises float-stored sensors, all vectorised over the range. Ray Data's
  streaming executor bounds how many ranges are in flight, so memory stays bounded whatever the store
  size. Integer images keep their stored dtype through the object store (a quarter of the bytes).
* :func:`collate` (worker): trims the time axis to the batch's longest series, builds the padding
  mask (padding = the steps beyond each tile's series length, :func:`ray_jobs.timesteps.real_steps`:
  an image without a date is real, fed as day 0), and turns what the read task left raw into
  normalised model bands (derived bands such as the S1/ALOS ratio included) on the training device.

Every random choice is keyed by (seed, dataset, epoch, shard, tile), and streams preserve order, so the
data a rank sees is a function of the seed and of how many tiles it already consumed: a resumed run
restarts each stream at exactly the next tile (:meth:`StoreStream.feed` ``start_tile``), whatever batch
sizes the steps before used (token budgets, :mod:`ray_jobs.batching`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import numpy as np
import ray.data
import torch

from ray_jobs.plan import DataPlan, SensorPlan, Split, bands_mask
from ray_jobs.reads import (ReadRange, convert_dates, crop_key, normalised, prepared_key, reuse_freed_memory,
                            seed_key)

__all__ = ["StoreStream", "Feed", "ReadRange", "collate", "convert_dates", "stream_items", "item_tiles",
           "quiet_ray_data"]



def quiet_ray_data() -> None:
    """No progress bars and one line per execution at most: a stream starts an execution per chunk
    of epochs, and Ray Data's default chatter would drown the training log."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


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
        order = np.random.default_rng(seed_key(seed, plan.name, "shards", epoch)).permutation(order)
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
    """Endless tiles of one (store, split) for one rank, epoch after epoch, cut into batches of any
    size (a batch may span an epoch boundary, so a rank's share only needs one tile).

    ``feed(start_tile=c)`` resumes after ``c`` already-consumed tiles of the deterministic epoch
    sequence, so nothing is replayed and no read is repeated; ``batches(start=c)`` is the fixed-size
    form (``c`` batches of ``plan.batch_size``).

    One Ray Dataset covers one or more whole epochs (enough work items that the read tasks stay busy
    and the executor seldom drains between datasets; a large store needs one dataset per epoch, a
    sample store packs many epochs into one). ``read_num_cpus``/``read_concurrency`` size the read
    tasks; ``read_resources`` (custom Ray resources) places them, e.g. on the CPU-only loader nodes of a
    heterogeneous cluster."""

    MIN_ITEMS = 64

    def __init__(self, plan: DataPlan, split: Split, *, train: bool, rank: int, world: int, seed: int,
                 read_num_cpus: float = 0.25, prefetch_batches: int = 1, label: str | None = None,
                 read_concurrency: int | None = None, read_resources: dict[str, float] | None = None):
        self.plan, self.split, self.train, self.label = plan, split, train, label
        self.rank, self.world, self.seed = rank, world, seed
        self.read_num_cpus, self.read_concurrency = read_num_cpus, read_concurrency
        self.read_resources = dict(read_resources or {})
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
        extra: dict[str, Any] = {"resources": self.read_resources} if self.read_resources else {}
        if self.read_concurrency:
            extra["compute"] = ray.data.TaskPoolStrategy(size=self.read_concurrency)
        return ds.map_batches(self.read_fn(), batch_size=1, batch_format="numpy", num_cpus=self.read_num_cpus,
                              **extra)

    def read_fn(self) -> ReadRange:
        """The per-item read function (with ``label``: rows also carry the label column); the hook
        for subclasses that read differently."""
        return ReadRange(self.plan, self.split, self.train, self.seed, label=self.label, prepare=True)

    def blocks(self, start_tile: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The read tasks' blocks (one per work item), in order, from ``start_tile`` on."""
        epoch, skip = divmod(int(start_tile), self.tiles_per_epoch)
        while True:
            ds = self.dataset(epoch, skip, self.epochs_per_dataset)
            for block in ds.iter_batches(batch_size=None, batch_format="numpy",
                                         prefetch_batches=self.prefetch_batches):
                if len(block["tile"]):
                    yield block
            epoch, skip = epoch + self.epochs_per_dataset, 0

    def feed(self, start_tile: int = 0) -> Feed:
        reuse_freed_memory()  # the consumer's batch copies and conversions, as in the read tasks
        return Feed(self.blocks(start_tile))

    def batches(self, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        feed = self.feed(int(start) * self.batch_size)
        while True:
            yield feed.next(self.batch_size)


class Feed:
    """Batches of any size cut, in order, from a stream of column blocks (views where a batch lies in
    one block, one concatenation where it spans two)."""

    def __init__(self, blocks: Iterator[dict[str, np.ndarray]]):
        self._blocks = blocks
        self._buf: list[dict[str, np.ndarray]] = []
        self._n = 0

    def next(self, k: int) -> dict[str, np.ndarray]:
        if k < 1:
            raise ValueError(f"batch size {k} < 1")
        while self._n < k:
            blk = next(self._blocks)
            self._buf.append(blk)
            self._n += len(blk["tile"])
        self._n -= k
        return _take(self._buf, k)


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
def _tensor(a: np.ndarray, device: torch.device | None) -> torch.Tensor:
    """Numpy -> torch without a copy where possible. Blocks from the object store are read-only: a CPU
    consumer gets its own copy (the model must be free to write), a GPU one gets the transfer."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    if not a.flags.c_contiguous or (on_cpu and not a.flags.writeable):
        a = np.array(a, order="C")
    t = torch.from_numpy(a) if a.flags.writeable else torch.from_numpy(a.copy())
    return t if device is None else t.to(device, non_blocking=True)


def _model_bands(raw: np.ndarray, sp: SensorPlan, device: torch.device | None,
                 valid: np.ndarray | None = None) -> torch.Tensor:
    """Stored values left raw by the read task -> normalised float32 model bands (padded steps 0). An
    integer image whose stored bands are the model bands is converted on an accelerator ``device``,
    after the transfer of its raw bytes; anything else with numpy, in one pass plus an in-place one."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    if not on_cpu and raw.dtype.kind in "iub" and [b.index for b in sp.bands] == list(range(raw.shape[-3])):
        t = _tensor(raw, device).float()
        shape = (len(sp.bands), 1, 1)
        t.sub_(torch.tensor(sp.mean, dtype=torch.float32, device=t.device).view(shape))
        t.div_(torch.tensor(sp.std, dtype=torch.float32, device=t.device).view(shape))
        if valid is not None:
            t[~torch.from_numpy(np.ascontiguousarray(valid)).to(t.device)] = 0.0
        return t
    v = normalised(raw, sp)
    if valid is not None:
        v[~valid] = 0.0  # padded steps are zeros, as in the official collate
    return _tensor(v, device)


def _cropped_bands(raw: np.ndarray, offsets: Iterable[tuple[int, int]], size: int, sp: SensorPlan,
                   device: torch.device | None) -> torch.Tensor:
    """Whole single-date images ``(B, C, H, W)`` + per-tile (top, left) -> normalised crops. On the CPU
    the crop is read straight into the normalised output; for an accelerator only the crop's raw bytes
    are copied, then sent and converted there."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    direct = [b.index for b in sp.bands] == list(range(raw.shape[-3]))
    out = np.empty((len(raw), raw.shape[1] if not on_cpu and direct else len(sp.bands), size, size),
                   raw.dtype if not on_cpu and direct else np.float32)
    for i, (y, x) in enumerate(offsets):
        win = raw[i, :, y:y + size, x:x + size]
        if not on_cpu and direct:
            out[i] = win
        else:
            normalised(win, sp, out=out[i])
    return _model_bands(out, sp, device) if not on_cpu and direct else _tensor(out, device)


def collate(batch: dict[str, np.ndarray], plan: DataPlan, device: torch.device | None = None
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Numpy batch of one dataset -> (model inputs, padding masks), as torch tensors on ``device``.

    Inputs follow the AnySat convention: ``<sensor>`` ``B×C×H×W`` (single date) or ``B×T×C×H×W``,
    ``<sensor>_dates`` ``B×T`` (0 at padded steps) and ``<sensor>_mask`` (validity, where the store has
    one). ``pad_mask[<sensor>]`` is ``B×T`` bool, True = padded step (time series only): the steps
    beyond each tile's ``<sensor>/steps`` (from :class:`ReadRange`; a batch without that column pads
    the undated steps). The time axis is cut to the longest series in the batch. A sensor the read task
    already normalised (``<sensor>/x``) is only cut and moved."""
    x: dict[str, torch.Tensor] = {}
    pad: dict[str, torch.Tensor] = {}
    for key, sp in plan.sensors.items():
        pre = batch.get(prepared_key(key))
        data = batch[f"{key}/data"] if pre is None else pre
        if sp.time_series:
            dates = batch[f"{key}/dates"]
            steps = batch.get(f"{key}/steps")
            valid = dates >= 0 if steps is None else np.arange(dates.shape[1])[None, :] < steps[:, None]
            t = max(1, int(valid.sum(axis=1).max()))
            data, dates, valid = data[:, :t], dates[:, :t], valid[:, :t]
            # a prepared sensor's padded steps are zero already
            x[key] = _tensor(data, device) if pre is not None else _model_bands(data, sp, device, valid)
            x[f"{key}_dates"] = torch.from_numpy(np.where(valid, dates, 0).astype(np.int64))
            pad[key] = torch.from_numpy(~valid)
            if sp.has_mask or sp.filled:
                m = batch[f"{key}/mask"][:, :t] if sp.has_mask else None
                if m is None or m.shape[2] > 1:  # per stored band -> model bands (derived: both inputs valid;
                    m = bands_mask(m, sp, data.shape)  # filled slots: never valid)
                x[f"{key}_mask"] = _tensor(m, device)
        elif crop_key(key)[0] in batch:
            top, left = (batch[c] for c in crop_key(key))
            x[key] = _cropped_bands(data[:, 0], zip(top, left), plan.crop[key], sp, device)
        else:
            x[key] = _tensor(data[:, 0], device) if pre is not None else _model_bands(data[:, 0], sp, device)
            if sp.has_mask:
                x[f"{key}_mask"] = _tensor(batch[f"{key}/mask"][:, 0], device)
    if device is not None:
        x = {k: v.to(device, non_blocking=True) for k, v in x.items()}
        pad = {k: v.to(device, non_blocking=True) for k, v in pad.items()}
    return x, pad
