"""Input conventions: which normalisation statistics a run uses, and where every model band comes from.

``data.normalization`` picks the per-band mean and std every sensor is normalised with:

* ``anysat`` (default): AnySat's statistics, the average over the training tiles of each tile's
  per-band mean and std (``pipelines/stats.py``), which is what the released weights were trained on.
  They are recorded per stored split at ingest; a run averages the splits it trains on with equal
  weight (PASTIS-HD's folds, as the official loader does). A store written before they existed (or
  lacking one of the run's training splits) falls back to ``pooled`` **with a warning** and the band
  plan says so: old stores keep training, and the artifact shows which statistics were used.
* ``pooled``: the mean and std of every valid value of the store's statistics splits together
  (``stats`` in the store; the registry's training split, PASTIS-HD folds 1-3).
* a path to a JSON file (local or any fsspec URL) of per-band statistics in the *model's* band order
  (``anysat.sensors``, derived bands included), per sensor, optionally per dataset::

      {"s2": {"mean": [...10 values...], "std": [...]}, "s1": {"mean": [...], "std": [...]}}
      {"treesatai-ts": {"s2": {...}}, "planted": {"s2": {...}}}     # per dataset: wins over the top level

Bands the store does not hold statistics for (the S1/ALOS ratios the loader derives) are estimated
from the first training shard when a job starts, with the same method (per-sample averages for
``anysat``, pooled values for ``pooled``).

The **band plan** says, for every model band of every sensor, where its values come from: ``stored``
(a store band), ``derived`` (computed by the loader from stored bands), ``filled`` (zero after
normalisation and masked invalid: a slot the archive has no band for, or a stored band without a
single valid value in the training split, like TimeSen2Crop's B8) or ``missing`` (not in the store
and not derivable; zero-filled and masked if allowed). A ``filled`` or ``missing`` band is an error
unless its dataset entry allows it: ``data.datasets[*].allow_filled_bands: [<sensor>/<band>, ...]``
(per dataset entry, since the same sensor is complete in one archive and not in another). The band
plan is logged to MLflow as ``band_plan.md`` and ``band_plan.json`` before the first training step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import fsspec
import numpy as np

from pipelines import stats as ps
from pipelines.store_meta import StoreMeta

__all__ = ["NORMALIZATIONS", "StoredStatistics", "stored_statistics", "file_statistics", "sample_average",
           "check_bands", "check_allow", "band_plan", "band_plan_markdown", "log_band_plan", "KINDS"]

log = logging.getLogger(__name__)

NORMALIZATIONS = ("anysat", "pooled")
"""The named methods; any other value of ``data.normalization`` is a path to a JSON file."""
KINDS = ("stored", "derived", "filled", "missing")


@dataclass(frozen=True)
class StoredStatistics:
    """Mean/std per *stored* band of one store group, and what they are."""

    mean: tuple[float | None, ...]
    std: tuple[float | None, ...]
    count: tuple[int | None, ...]
    """Valid values of each band in the store's statistics splits (None: the store has no statistics)."""
    method: str
    """``anysat``, ``pooled``, ``pooled (fallback: ...)`` or ``file <path>``."""


def stored_statistics(meta: StoreMeta, group: str, splits: Sequence[str], normalization: str,
                      dataset: str) -> StoredStatistics:
    """The statistics of store group ``group`` for a run training on stored ``splits``."""
    bands = meta.sensors[group].bands
    pooled = (meta.stats or {}).get(group)
    count = tuple(pooled.count) if pooled is not None else (None,) * len(bands)
    p_mean = tuple(pooled.mean) if pooled is not None else (None,) * len(bands)
    p_std = tuple(pooled.std) if pooled is not None else (None,) * len(bands)
    if normalization == "pooled":
        return StoredStatistics(p_mean, p_std, count, "pooled")
    if normalization != "anysat":  # a file: per model band, applied by the caller
        return StoredStatistics(p_mean, p_std, count, f"file {normalization}")
    per_split = (meta.sample_stats or {}).get(group)
    combined = ps.combine_splits(per_split, list(splits)) if per_split else None
    if combined is None:
        why = ("the store has no per-sample statistics (ingested before they existed; re-ingest to add them)"
               if not meta.sample_stats else f"no per-sample statistics of splits {list(splits)}")
        log.warning("%s/%s: data.normalization=anysat but %s: falling back to the pooled statistics",
                    dataset, group, why)
        return StoredStatistics(p_mean, p_std, count, f"pooled (fallback: {why})")
    return StoredStatistics(tuple(combined[0]), tuple(combined[1]), count, "anysat")


def file_statistics(path: str, dataset: str, sensor: str, bands: Sequence[str],
                    storage_options: dict | None = None) -> tuple[list[float], list[float]]:
    """Per-model-band (mean, std) of ``sensor`` from a statistics JSON (see the module docstring)."""
    with fsspec.open(path, "r", **(storage_options or {})) as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"data.normalization {path}: expected a JSON object of sensors")
    entry = (doc.get(dataset) or {}).get(sensor) if isinstance(doc.get(dataset), dict) else None
    entry = entry or doc.get(sensor)
    if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
        raise ValueError(f"data.normalization {path}: no mean/std for sensor {sensor!r} (dataset {dataset})")
    mean, std = [float(v) for v in entry["mean"]], [float(v) for v in entry["std"]]
    if len(mean) != len(bands) or len(std) != len(bands):
        raise ValueError(f"data.normalization {path}: {sensor} needs {len(bands)} values per statistic "
                         f"(bands {list(bands)}), got {len(mean)} means and {len(std)} stds")
    if entry.get("bands") is not None and list(entry["bands"]) != list(bands):
        raise ValueError(f"data.normalization {path}: {sensor} bands {entry['bands']} are not the model's "
                         f"{list(bands)}")
    return mean, std


def sample_average(x: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AnySat's statistics of float model bands ``x`` ``(N, T, C, H, W)`` with real steps ``steps``
    ``(N, T)``: per-band averages of the per-tile means and stds (NaN where no tile counts)."""
    merged = ps.partial_sample_stats(x, None, ["_"] * len(x), steps=np.asarray(steps, bool))
    if not merged:
        return np.full(x.shape[2], np.nan), np.full(x.shape[2], np.nan)
    out = ps.finalize_sample_stats(merged, [str(i) for i in range(x.shape[2])])["_"]
    return (np.array([np.nan if v is None else v for v in out.mean]),
            np.array([np.nan if v is None else v for v in out.std]))


def check_bands(dataset: str, sensor: str, bands: Sequence[str], sources: Sequence[str],
                allow: Sequence[str]) -> None:
    """A ``filled`` or ``missing`` model band not in ``allow`` (``<sensor>/<band>``) is an error."""
    bad = [f"{sensor}/{b}" for b, s in zip(bands, sources)
           if s.split()[0].rstrip(":") in ("filled", "missing") and f"{sensor}/{b}" not in allow]
    if bad:
        why = "; ".join(f"{sensor}/{b}: {s}" for b, s in zip(bands, sources) if f"{sensor}/{b}" in bad)
        raise ValueError(f"{dataset}: model bands {bad} would be zero-filled ({why}). Allow them explicitly "
                         f"with data.datasets.{dataset}.allow_filled_bands: {bad}, or feed other sensors")


def band_plan(plans: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (dataset, sensor, model band): where it comes from, its mean/std and the method.
    ``plans``: dataset -> ``ray_jobs.plan.DataPlan``."""
    rows = []
    for name, plan in plans.items():
        for key, sp in plan.sensors.items():
            for i, b in enumerate(sp.bands):
                src = sp.sources[i] if i < len(sp.sources) else "stored"
                rows.append({"dataset": name, "sensor": key, "band": b.name, "kind": src.split()[0].rstrip(":"),
                             "source": src, "mean": float(sp.mean[i]), "std": float(sp.std[i]),
                             "normalization": sp.norm})
    return rows


def band_plan_markdown(rows: list[dict[str, Any]]) -> str:
    """The band plan as a markdown table (the ``band_plan.md`` artifact)."""
    lines = ["| dataset | sensor | band | kind | source | mean | std | statistics |",
             "|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['sensor']} | {r['band']} | {r['kind']} | {r['source']} | "
                     f"{r['mean']:.6g} | {r['std']:.6g} | {r['normalization']} |")
    return "\n".join(lines) + "\n"


def check_allow(dataset: str, allow: Sequence[str], sensor_plans: dict[str, Any]) -> None:
    """Every ``allow_filled_bands`` entry names a model band of this run (a typo must not pass silently)."""
    known = {f"{k}/{b.name}" for k, sp in sensor_plans.items() for b in sp.bands}
    unknown = [a for a in allow if a not in known]
    if unknown:
        raise ValueError(f"{dataset}: allow_filled_bands {unknown} are not model bands of this run "
                         f"(use <sensor>/<band>; bands: {sorted(known)})")


def log_band_plan(tracker: Any, plans: dict[str, Any]) -> list[dict[str, Any]]:
    """Log the band plan of ``plans`` to an MLflow run (``tracker``: ``ray_jobs.tracking.Tracker``) as
    ``band_plan.md`` and ``band_plan.json``; returns the rows."""
    rows = band_plan(plans)
    tracker.log_text(band_plan_markdown(rows), "band_plan.md")
    tracker.log_text(json.dumps(rows, indent=1), "band_plan.json")
    return rows
