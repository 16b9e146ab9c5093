"""Per-band normalisation statistics computed at ingest: pooled ones and AnySat's per-sample averages.

The store has always recorded *pooled* statistics (``stats``, :func:`partial_stats`, :func:`merge_stats`,
:func:`finalize_stats`: exact mergeable partials, a count, sum, sum of squares, min and max per band):
the mean and standard deviation of every valid value of the training tiles taken together. The
official AnySat loaders normalise differently: for every training sample they take each band's mean
and standard deviation over all of that sample's dates and pixels, and the dataset statistic is the
*average of the per-sample means* and the *average of the per-sample standard deviations* (not a
global std). PASTIS-HD keeps those statistics per fold and averages the folds a run trains on. The
released weights were trained on inputs normalised that way, so ``data.normalization: anysat`` (the
default of the training configs) feeds them; the two agree on the mean up to tile-size weighting, but
the averaged per-sample std is smaller than the pooled std whenever tiles differ from each other.

What is computed here, per stored split (``tiles/split`` value: ``train``/``val``/``test``, or
``fold1``..``fold5`` for PASTIS-HD) and per band of a sensor:

* for each tile that has the sensor: the mean and the sample standard deviation (``ddof=1``, what
  ``torch.std`` computes by default and what the official loaders call) over the tile's real time
  steps and pixels, counting **valid values only** (finite, and marked valid by the archive's mask
  where the store has one: the official loaders also count fill values, which would drag a statistic
  towards PASTIS' -10000 or a zero-padded window);
* a tile without any valid value of a band does not count for that band; a tile with a single valid
  value counts for the mean but not for the std;
* the split's statistic: the sums of those per-tile values and the tile counts, mergeable across
  shards (:func:`merge_sample_partials`, in shard order) and finalised into the averages
  (:func:`finalize_sample_stats`);
* a run trains on a set of stored splits (PASTIS-HD ``train`` = fold1-3): :func:`combine_splits`
  averages the splits' statistics with equal weight, as the official PASTIS loader averages its folds
  (for a single split this is simply that split's statistic).

Everything here is pure numpy on plain data (no store, no Ray): the ingest computes partials per
shard (:func:`partial_sample_stats`), the store keeps the finalised :class:`SampleStats` per sensor and
split (``StoreMeta.sample_stats``), and the training plan picks them (``ray_jobs/plan.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["partial_stats", "merge_stats", "finalize_stats", "SampleStats", "tile_moments",
           "partial_sample_stats", "merge_sample_partials", "finalize_sample_stats", "combine_splits"]

_CHUNK_VALUES = 1 << 22
"""Values (tiles x time x bands x pixels) processed at once: bounds the float64 temporaries (32 MB)."""


@dataclass(frozen=True)
class SampleStats:
    """``sample_stats[<sensor>][<split>]``: AnySat's per-sample-averaged statistics of one stored split.

    ``mean[b]`` = average over ``tiles[b]`` tiles of each tile's mean of band ``b``; ``std[b]`` = average
    over ``std_tiles[b]`` tiles of each tile's sample std. ``None`` where no tile counted."""

    bands: tuple[str, ...]
    tiles: tuple[int, ...]
    sum_mean: tuple[float, ...]
    std_tiles: tuple[int, ...]
    sum_std: tuple[float, ...]
    mean: tuple[float | None, ...]
    std: tuple[float | None, ...]

    _FIELDS = ("tiles", "sum_mean", "std_tiles", "sum_std", "mean", "std")

    @classmethod
    def from_attrs(cls, d: dict) -> SampleStats:
        return cls(tuple(d["bands"]), *(tuple(d[k]) for k in cls._FIELDS))

    def to_attrs(self) -> dict:
        return {"bands": list(self.bands), **{k: list(getattr(self, k)) for k in self._FIELDS}}


# ------------------------------------------------------------------------------------- per tile
def tile_moments(data: np.ndarray, valid: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-band (count, mean, sample std) of one tile's ``(T, C, H, W)`` values.

    ``valid`` (``(T, 1|C, H, W)`` bool) is the archive's validity mask; NaN/inf never count. Mean is NaN
    where no value counts, std NaN where fewer than two do."""
    counts, means, stds = _moments(data[None], None if valid is None else valid[None],
                                   np.ones((1, data.shape[0]), bool))
    return counts[0], means[0], stds[0]


def _moments(data: np.ndarray, valid: np.ndarray | None, steps: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C) counts, means and sample stds of ``data`` ``(N, T, C, H, W)``; ``steps`` ``(N, T)`` marks
    the real time steps. Two passes (mean, then squared deviations) in float64."""
    x = data.astype(np.float64, copy=False)
    ok = np.isfinite(x) & steps[:, :, None, None, None]
    if valid is not None:
        ok &= np.broadcast_to(valid, x.shape)
    axes = (1, 3, 4)
    count = ok.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, x, 0.0).sum(axis=axes) / count
        dev = np.where(ok, x - mean[:, None, :, None, None], 0.0)
        var = np.einsum("ntchw,ntchw->nc", dev, dev) / (count - 1)
    mean = np.where(count > 0, mean, np.nan)
    std = np.where(count > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)
    return count, mean, std


# ---------------------------------------------------------------------------------- per shard
def partial_sample_stats(data: np.ndarray, lengths: np.ndarray | None, splits: Sequence[str],
                         valid: np.ndarray | None = None, skip: Iterable[str] = (),
                         steps: np.ndarray | None = None) -> dict[str, dict]:
    """Partial sums of one block of tiles, per stored split.

    ``data``: ``(N, T_max, C, H, W)``; ``lengths``: real time steps per tile (0 = the tile lacks the
    sensor); ``splits``: split of each tile; ``valid``: ``(N, T_max, 1|C, H, W)`` mask or None; splits
    in ``skip`` (quarantined slots) are left out; ``steps`` (``(N, T_max)`` bool) marks the real time
    steps instead of ``lengths`` when they are not a prefix of the axis. Returns ``{split: {"tiles",
    "sum_mean", "std_tiles", "sum_std"}}`` (lists per band, JSON-compatible)."""
    n, t_max, c = data.shape[:3]
    splits = np.asarray(splits).astype(str)
    if steps is None:
        steps = np.arange(t_max)[None, :] < np.asarray(lengths)[:, None]
    lengths = steps.sum(axis=1)
    per_tile = max(1, int(np.prod(data.shape[1:])))
    chunk = max(1, _CHUNK_VALUES // per_tile)
    counts = np.zeros((n, c), np.int64)
    means = np.full((n, c), np.nan)
    stds = np.full((n, c), np.nan)
    rows = np.flatnonzero((lengths > 0) & ~np.isin(splits, list(skip)))
    for i in range(0, len(rows), chunk):
        r = rows[i:i + chunk]
        counts[r], means[r], stds[r] = _moments(data[r], None if valid is None else valid[r], steps[r])
    out: dict[str, dict] = {}
    for split in sorted(set(splits[rows].tolist())):
        sel = rows[splits[rows] == split]
        has_mean = counts[sel] > 0
        has_std = counts[sel] > 1
        out[split] = {"tiles": has_mean.sum(0).astype(np.int64).tolist(),
                      "sum_mean": np.where(has_mean, means[sel], 0.0).sum(0).tolist(),
                      "std_tiles": has_std.sum(0).astype(np.int64).tolist(),
                      "sum_std": np.where(has_std, stds[sel], 0.0).sum(0).tolist()}
    return out


def merge_sample_partials(parts: Iterable[dict[str, dict] | None]) -> dict[str, dict]:
    """Add per-split partials (callers merge in shard order, so the result is the same bits however
    the shards were spread over workers or resumed runs)."""
    out: dict[str, dict] = {}
    for p in parts:
        for split, d in (p or {}).items():
            if split not in out:
                out[split] = {k: list(v) for k, v in d.items()}
                continue
            acc = out[split]
            for k in ("tiles", "sum_mean", "std_tiles", "sum_std"):
                acc[k] = [a + b for a, b in zip(acc[k], d[k])]
    return out


def finalize_sample_stats(merged: dict[str, dict], bands: Sequence[str]) -> dict[str, SampleStats]:
    """Merged partials -> one :class:`SampleStats` per split (averages; ``None`` where no tile counted)."""
    out = {}
    for split, d in sorted(merged.items()):
        mean = [s / n if n else None for s, n in zip(d["sum_mean"], d["tiles"])]
        std = [s / n if n else None for s, n in zip(d["sum_std"], d["std_tiles"])]
        out[split] = SampleStats(tuple(bands), tuple(int(x) for x in d["tiles"]), tuple(d["sum_mean"]),
                                 tuple(int(x) for x in d["std_tiles"]), tuple(d["sum_std"]), tuple(mean),
                                 tuple(std))
    return out


# ------------------------------------------------------------------------------------- for a run
def combine_splits(per_split: dict[str, SampleStats], splits: Sequence[str]
                   ) -> tuple[list[float | None], list[float | None]] | None:
    """Per-band (mean, std) of a run's training split set: the equal-weight average over ``splits``
    of each split's statistic (splits where a band has no tile are left out for that band). ``None``
    when a split of the set is not recorded (an old store, a split name the store lacks)."""
    if not splits or any(s not in per_split for s in splits):
        return None
    c = len(per_split[splits[0]].bands)

    def avg(field: str) -> list[float | None]:
        res: list[float | None] = []
        for b in range(c):
            vals = [getattr(per_split[s], field)[b] for s in splits]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            res.append(sum(vals) / len(vals) if vals else None)
        return res

    return avg("mean"), avg("std")


# ---------------------------------------------------------------------------------- pooled (stats)
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
