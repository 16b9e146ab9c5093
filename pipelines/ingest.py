"""Ingest a raw archive into an anysat-ray store with Ray Data.

::

    python -m pipelines.ingest --dataset planted --raw data/raw/planted --out data/stores
    make ingest DATASET=planted RAW=... OUT=...                      # writes <OUT>/<dataset>.zarr
    ray job submit --address ... --working-dir . -- python -m pipelines.ingest --dataset ... --raw s3://... --out s3://...

Exit codes: 0 every listed tile is in the store; 3 the store is complete but some tiles were
quarantined (see ``quarantine.json`` in the store and the ``quarantine`` attribute); 2 any error, printed
as one line naming the option or file and the problem, without traceback: a malformed option, unknown
dataset, missing raw path, an output that is a file, not writable or a missing bucket (all checked before
any probing), a foreign / other-version / other-dataset store at the output path, another ingest holding
the store's lock, an archive whose listing changed under a half-finished store, an unreachable Ray
address, a full disk (the shard being written is not recorded, so a rerun resumes it).

Safety:

* **One writer per store.** The driver holds ``<out>/<dataset>.zarr.lock`` (``pipelines.lock``) from before
  it looks at the store until it has finished or failed, refreshed by a heartbeat thread. A second ingest
  into the same store exits at once (code 2) naming the owner and since when; a lock whose heartbeat is
  older than ``--lock-timeout`` (default 300 s), or whose process is gone from this machine, is taken over
  with a warning. A store is only ever deleted with ``--overwrite`` or when it is a half-created store of
  the same dataset; a complete store, a store of another dataset and an embeddings store are kept.
* **Plausible tiles only.** Dates must be -1 (unknown) or inside ``--date-range`` (default 1970-01-01 to
  2100-12-31; negative days other than -1 would collide with the padding code), a series may hold at most
  ``DatasetSpec.max_dates`` dates (``--max-dates``), and a sensor whose values are all NaN / inf carries
  nothing: such tiles are quarantined with the sensor and the bad value.
* **Ray is chosen, not guessed** (``pipelines.raycluster``): a local Ray of its own unless ``--address`` or
  ``RAY_ADDRESS`` names a cluster, which must answer a TCP connect within seconds.

How it works, and why:

1. **List** (driver): ``Source.list_tiles()``, stably sorted by split (train, val, test, others by name),
   so each split is a contiguous index range and the trainer reads whole shards per split.
2. **Probe** (Ray Data, one task per group of tiles): ``Source.probe(ref)`` returns shapes, dtypes and
   date counts, from file headers where the source can (PLANTED). This is how ``T_max`` per sensor is
   known before the arrays are created: a per-dataset bound would either waste space (PLANTED MODIS has
   T=60, S2 8) or be wrong for an archive version we have not seen; the probe reads a fraction of the
   bytes of the full read and also finds the broken tiles early. Tiles whose probe fails, or whose shape
   disagrees with the sensor registry or with the rest of the archive, are quarantined here and get
   **no index**: the store's indices stay contiguous and every slot is a real tile.
3. **Plan**: the layout (N, T_max, C, H, W, dtypes, masks, labels) and the probe quarantine are saved
   as ``_ingest/plan.json`` once the empty arrays exist. A rerun loads the plan (after checking that the
   archive listing hashes the same) instead of re-probing.
4. **Write** (Ray Data, one task per shard): read every tile of the shard, validate it against the plan,
   write the whole shard (one object per array), then write ``_ingest/shards/<i>.json`` with the shard's
   partial train statistics and quarantine records. A tile that passed the probe but fails the full read
   keeps its slot with split ``"quarantined"`` (zero data, dates -1), so shard alignment never moves.
5. **Finish** (driver): merge the shard records in shard order (statistics are exact float64 sums, so a
   resumed run produces the same bits as an uninterrupted one), write the attrs and ``quarantine.json``.

Resume: a shard is complete iff its marker exists (markers are written last and atomically); a rerun
skips those and rewrites the others, whatever state a killed run left them in. Tile order, layout and
statistics are deterministic, so a killed-and-rerun ingest equals an uninterrupted one (provenance
timestamps aside).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import pickle
import platform
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import ray
import ray.data
import zarr
from tqdm import tqdm

from anysat.sensors import get_sensor
from pipelines import geostore
from pipelines import stats as ps
from pipelines import raycluster
from pipelines import store as st
from pipelines.datasets import DatasetSpec, get_dataset
from pipelines.lock import DEFAULT_TIMEOUT_S, LockHeld, LockLost, StoreLock
from pipelines.sources.base import Source, Tile, TileError, TileProbe, TileRef
# the checks are part of the ingest's interface (tests and callers import them from here)
from pipelines.tilechecks import DEFAULT_DATE_RANGE, TileChecks, check_dates, check_values, parse_date_range  # noqa: F401

EXIT_OK, EXIT_USAGE, EXIT_QUARANTINED = 0, 2, 3
PLAN_KEY = "_ingest/plan.json"
SHARD_DIR = "_ingest/shards"
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


class IngestError(Exception):
    """A problem the user must fix (printed as one line, exit code 2)."""


class OutputWriteError(Exception):
    """Writing a shard failed (disk full, permissions); raised by a write task, nothing of the shard recorded."""


def _find_cause(exc: BaseException, types: tuple[type, ...]) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s chain (causes, contexts, Ray's wrapped ``cause``)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types):
            # Ray re-raises a task's error as a subclass of both RayTaskError and the error, whose str() is
            # the whole remote traceback; the original exception is its ``cause``
            while isinstance(getattr(e, "cause", None), types):
                e = e.cause
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def os_error_line(e: OSError, what: str) -> str:
    """One line for an I/O error while ``what``; a full disk says that a rerun resumes."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on device while {what}{where}; nothing of it was recorded, free space and rerun to resume"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied while {what}{where}: {e.strerror}"
    return f"I/O error while {what}{where}: {e.strerror or e}"


@dataclass
class IngestResult:
    url: str
    n_listed: int
    n_tiles: int
    written: int
    quarantine: list[dict]
    shards_total: int
    shards_written: int
    seconds: float
    bytes_written: int
    probe_seconds: float = 0.0
    write_seconds: float = 0.0
    sensor_tiles: dict[str, int] | None = None
    """Tiles that have each stored sensor (optional sensors may be absent from some or all)."""

    @property
    def exit_code(self) -> int:
        return EXIT_QUARANTINED if self.quarantine else EXIT_OK

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.write_seconds, 1e-9)


# ----------------------------------------------------------------------------------------------------
# Sources inside workers (cached per process: building one may list or open shared files)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    dataset: str
    raw: str
    storage_options_json: str = "{}"

    def build(self) -> Source:
        return _cached_source(self)


@functools.lru_cache(maxsize=4)
def _cached_source(spec: SourceSpec) -> Source:
    cls = get_dataset(spec.dataset).source_class()
    return cls(spec.raw, storage_options=json.loads(spec.storage_options_json))


def _qrecord(ref: TileRef, path: str, reason: str, stage: str, index: int | None = None) -> dict:
    return {"tile": ref.id, "split": ref.split, "file": path, "reason": reason, "stage": stage,
            **({"index": index} if index is not None else {})}


# ----------------------------------------------------------------------------------------------------
# Listing and probing
# ----------------------------------------------------------------------------------------------------
def ordered_listing(source: Source) -> list[TileRef]:
    refs = list(source.list_tiles())
    return sorted(refs, key=lambda r: (SPLIT_ORDER.get(r.split, 99), "" if r.split in SPLIT_ORDER else r.split))


def listing_hash(refs: list[TileRef]) -> str:
    h = hashlib.sha256()
    for r in refs:
        h.update(f"{r.split}\t{r.id}\n".encode())
    return h.hexdigest()


def _probe_group(source_spec: SourceSpec, refs: list[TileRef]) -> list[TileProbe | tuple[str, str]]:
    source = source_spec.build()
    out: list[TileProbe | tuple[str, str]] = []
    for ref in refs:
        try:
            out.append(source.probe(ref))
        except TileError as e:
            out.append((e.path, e.reason))
        except Exception as e:  # a reader bug on one odd file must not abort a 2M-tile ingest
            out.append((ref.id, f"{type(e).__name__}: {e}"))
    return out


def _probe_row(source_spec: SourceSpec, row: dict) -> dict:
    refs = pickle.loads(row["refs"])
    return {"group": row["group"], "result": pickle.dumps(_probe_group(source_spec, refs))}


def _mode(values: Iterable) -> Any:
    c = Counter(values)
    return c.most_common(1)[0][0] if c else None


def plan_layout(spec: DatasetSpec, refs: list[TileRef], probes: list[TileProbe | tuple[str, str]],
                tiles_per_shard: int, max_dates: int | None = None) -> tuple[st.StoreLayout, list[int], list[dict]]:
    """Decide the store layout from the probes; returns (layout, kept listing positions, quarantine).

    Shapes are checked against the sensor registry (C = all bands or the raw bands), and H, W, dtype and
    mask channels against the archive's most common value, so one odd tile cannot resize the store; a
    series longer than ``max_dates`` is quarantined rather than widening ``T_max`` for every tile.
    """
    bad: dict[int, tuple[str, str]] = {}
    for pos, pr in enumerate(probes):
        if not isinstance(pr, TileProbe):
            bad[pos] = pr
    seen: dict[str, int] = {}
    for pos, ref in enumerate(refs):
        if ref.id in seen and pos not in bad:
            bad[pos] = (ref.id, f"duplicate tile id (also at listing position {seen[ref.id]})")
        seen.setdefault(ref.id, pos)

    def ok(pos):
        return pos not in bad

    sensors: dict[str, st.SensorLayout] = {}
    for key in spec.sensors:
        sensor = get_sensor(key)
        allowed = {len(sensor.bands): list(sensor.bands), len(sensor.raw_bands): list(sensor.raw_bands)}
        if key in spec.archive_bands:
            allowed[len(spec.archive_bands[key])] = list(spec.archive_bands[key])
        have = [(pos, probes[pos].sensors[key]) for pos in range(len(refs)) if ok(pos) and key in probes[pos].sensors]
        for pos, sp in have:
            t, c = sp.shape[0], sp.shape[1]
            if c not in allowed:
                expected = " or ".join(f"{n} ({', '.join(b)})" for n, b in sorted(allowed.items()))
                bad[pos] = (refs[pos].id, f"sensor {key}: {c} bands, expected {expected}")
            elif t < 1:
                bad[pos] = (refs[pos].id, f"sensor {key}: no time steps")
            elif not sensor.time_series and t != 1:
                bad[pos] = (refs[pos].id, f"sensor {key}: {t} dates for a single-date sensor")
            elif max_dates and t > max_dates:
                bad[pos] = (refs[pos].id, f"sensor {key}: T={t} dates, above the {spec.name} bound of {max_dates} "
                                          "(DatasetSpec.max_dates; --max-dates raises it)")
            elif sp.dates is not None and sp.dates != t:
                bad[pos] = (refs[pos].id, f"sensor {key}: {sp.dates} dates for T={t} time steps")
        have = [(pos, sp) for pos, sp in have if ok(pos)]
        if not have:
            continue
        chw = _mode(sp.shape[1:] for _, sp in have)
        dtype = np.dtype(_mode(sp.dtype for _, sp in have))
        mask_c = _mode(sp.mask_channels for _, sp in have if sp.mask_channels)
        for pos, sp in have:
            if tuple(sp.shape[1:]) != tuple(chw):
                bad[pos] = (refs[pos].id, f"sensor {key}: (C, H, W) = {tuple(sp.shape[1:])} differs from the "
                                          f"archive's {tuple(chw)}")
            elif not np.can_cast(np.dtype(sp.dtype), dtype, "safe"):
                bad[pos] = (refs[pos].id, f"sensor {key}: dtype {np.dtype(sp.dtype)} cannot be stored losslessly "
                                          f"as the archive's {dtype}")
            elif sp.mask_channels and mask_c and sp.mask_channels not in (1, mask_c):
                bad[pos] = (refs[pos].id, f"sensor {key}: mask has {sp.mask_channels} bands, archive's have {mask_c}")
        t_max = max((sp.shape[0] for pos, sp in have if ok(pos)), default=0)
        if t_max == 0:
            continue
        sensors[key] = st.SensorLayout(key, int(t_max), int(chw[0]), int(chw[1]), int(chw[2]), dtype.str,
                                       allowed[int(chw[0])], float(sensor.resolution_m), sensor.time_series,
                                       int(mask_c) if mask_c else None)

    labels: dict[str, st.LabelLayout] = {}
    for lab in spec.labels:
        have = [(pos, probes[pos].labels[lab.name]) for pos in range(len(refs))
                if ok(pos) and lab.name in probes[pos].labels]
        if not have:
            continue
        k = len(lab.classes)
        for pos, (shape, dtype) in have:
            shape = tuple(shape)
            if lab.task == "multiclass" and shape != ():
                bad[pos] = (refs[pos].id, f"label {lab.name}: shape {shape}, expected a scalar class index")
            elif lab.task == "multilabel" and shape != (k,):
                bad[pos] = (refs[pos].id, f"label {lab.name}: shape {shape}, expected ({k},) for {k} classes")
            elif lab.task == "segmentation" and len(shape) != 2:
                bad[pos] = (refs[pos].id, f"label {lab.name}: shape {shape}, expected (H, W)")
        have = [(pos, lp) for pos, lp in have if ok(pos)]
        if not have:
            continue
        shape = _mode(tuple(s) for _, (s, _) in have)
        dtype = np.dtype(_mode(d for _, (_, d) in have))
        for pos, (s, d) in have:
            if tuple(s) != shape:
                bad[pos] = (refs[pos].id, f"label {lab.name}: shape {tuple(s)} differs from the archive's {shape}")
            elif not np.can_cast(np.dtype(d), dtype, "safe"):
                bad[pos] = (refs[pos].id, f"label {lab.name}: dtype {np.dtype(d)} cannot be stored as {dtype}")
        labels[lab.name] = st.LabelLayout(lab.name, lab.task, list(lab.classes), list(shape), dtype.str,
                                          lab.ignore_index)

    keep = [pos for pos in range(len(refs)) if ok(pos)]
    quarantine = [_qrecord(refs[pos], path, reason, "probe", pos) for pos, (path, reason) in sorted(bad.items())]
    kept = [probes[pos] for pos in keep]
    grids = [k for k in sensors if any(k in p.sensors and p.sensors[k].georeferenced for p in kept)]
    georef = grids if grids or any(p.footprint for p in kept) else None
    layout = st.StoreLayout(spec.name, len(keep), int(tiles_per_shard), sensors, labels, georef=georef)
    return layout, keep, quarantine


# ----------------------------------------------------------------------------------------------------
# Writing one shard
# ----------------------------------------------------------------------------------------------------
def _check_label(lab: st.LabelLayout, v: np.ndarray) -> str | None:
    if tuple(v.shape) != tuple(lab.shape):
        return f"label {lab.name}: shape {v.shape}, expected {tuple(lab.shape)}"
    if not np.can_cast(v.dtype, np.dtype(lab.dtype), "safe"):
        return f"label {lab.name}: dtype {v.dtype} cannot be stored as {np.dtype(lab.dtype)}"
    k = len(lab.classes)
    if lab.task == "multilabel":
        if not np.all(np.isfinite(v)) or v.min(initial=0) < 0 or v.max(initial=0) > 1:
            return f"label {lab.name}: values outside [0, 1]"
    elif lab.task in ("multiclass", "segmentation"):
        if v.dtype.kind == "f" and not np.all(v == np.round(v)):
            return f"label {lab.name}: non-integer class values"
        valid = (v >= 0) & (v < k)
        if lab.ignore_index is not None:
            valid |= v == lab.ignore_index
        if not np.all(valid):
            bad = np.unique(v[~valid])[:5].tolist()
            return f"label {lab.name}: class value(s) {bad} outside 0..{k - 1}"
    return None


def place_tile(layout: st.StoreLayout, block: dict[str, np.ndarray], j: int, tile: Tile,
               checks: TileChecks | None = None) -> dict[str, int]:
    """Validate ``tile`` against the layout and ``checks`` and copy it into slot ``j``; returns T per sensor.

    Raises TileError naming the tile and what is wrong; nothing is written to the block in that case.
    """
    checks = checks or TileChecks()
    staged: list[tuple[str, Any, np.ndarray]] = []
    tlen: dict[str, int] = {}
    for key, s in layout.sensors.items():
        arr = tile.sensors.get(key)
        if arr is None:
            continue  # sensor absent for this tile: dates stay -1 (how the loader sees "missing")
        data = np.asarray(arr.data)
        if data.ndim != 4 or tuple(data.shape[1:]) != (s.channels, s.height, s.width):
            raise TileError(tile.id, f"sensor {key}: data shape {data.shape}, expected (T, {s.channels}, "
                                     f"{s.height}, {s.width})")
        t = data.shape[0]
        if not 1 <= t <= s.t_max:
            raise TileError(tile.id, f"sensor {key}: T={t} outside 1..{s.t_max} (the probe pass saw T_max={s.t_max})")
        if not np.can_cast(data.dtype, np.dtype(s.dtype), "safe"):
            raise TileError(tile.id, f"sensor {key}: dtype {data.dtype} cannot be stored losslessly as "
                                     f"{np.dtype(s.dtype)}")
        dates = np.asarray(arr.dates)
        if dates.shape != (t,):
            raise TileError(tile.id, f"sensor {key}: {dates.shape} dates for T={t} time steps")
        if dates.dtype.kind not in "iu":
            raise TileError(tile.id, f"sensor {key}: dates have dtype {dates.dtype}, expected integer days")
        reason = check_dates(key, dates, checks) or check_values(key, data)
        if reason:
            raise TileError(tile.id, reason)
        staged.append((f"{key}/data", np.s_[j, :t], data))
        staged.append((f"{key}/dates", np.s_[j, :t], dates.astype(np.int32)))
        if s.mask_channels:
            if arr.mask is None:
                mask = np.ones((t, s.mask_channels, s.height, s.width), bool)  # no mask = every pixel valid
            else:
                mask = np.asarray(arr.mask)
                if mask.ndim != 4 or mask.shape[0] != t or mask.shape[1] not in (1, s.mask_channels) \
                        or mask.shape[2:] != (s.height, s.width):
                    raise TileError(tile.id, f"sensor {key}: mask shape {mask.shape}, expected "
                                             f"({t}, 1|{s.mask_channels}, {s.height}, {s.width})")
            staged.append((f"{key}/mask", np.s_[j, :t], mask.astype(bool, copy=False)))
        tlen[key] = t
    for name, lab in layout.labels.items():
        if name not in tile.labels:
            continue
        v = np.asarray(tile.labels[name])
        reason = _check_label(lab, v)
        if reason:
            raise TileError(tile.id, reason)
        staged.append((f"labels/{name}", np.s_[j], v))
    if layout.georef is not None:
        grids = {k: a.geo for k, a in tile.sensors.items() if k in layout.sensors}
        shapes = {k: (s.height, s.width) for k, s in layout.sensors.items()}
        try:
            crs, footprint, present = geostore.tile_georef(grids, shapes, tile.footprint, layout.georef)
        except ValueError as e:
            raise TileError(tile.id, str(e)) from None
        staged.append((geostore.CRS_KEY, np.s_[j], crs))
        staged.append((geostore.FOOTPRINT_KEY, np.s_[j], footprint))
        for key, grid in present.items():
            staged.append((geostore.transform_key(key), np.s_[j], np.asarray(grid.transform)))
    for key, idx, value in staged:
        block[key][idx] = value
    block["tiles/id"][j] = tile.id
    block["tiles/split"][j] = tile.split
    return tlen


def write_shard(url: str, storage_options: dict, source_spec: SourceSpec, layout: st.StoreLayout,
                shard: int, refs: list[TileRef], stats_splits: tuple[str, ...],
                checks: TileChecks | None = None) -> dict:
    """Read, validate and write one shard, then its completion marker; returns the marker.

    An I/O error while writing (a full disk) raises :class:`OutputWriteError` before the marker exists, so
    the shard counts as not done and a rerun rewrites it.
    """
    start, stop = layout.shard_range(shard)
    assert stop - start == len(refs), (shard, start, stop, len(refs))
    source = source_spec.build()
    block = st.empty_block(layout, len(refs))
    tlen = {k: np.zeros(len(refs), np.int64) for k in layout.sensors}
    quarantine = []
    for j, ref in enumerate(refs):
        try:
            tile = source.read_tile(ref)
            if tile.id != ref.id:
                raise TileError(ref.id, f"reader returned tile id {tile.id!r} for {ref.id!r}")
            for k, t in place_tile(layout, block, j, tile, checks).items():
                tlen[k][j] = t
        except Exception as e:
            path, reason = (e.path, e.reason) if isinstance(e, TileError) else (ref.id, f"{type(e).__name__}: {e}")
            quarantine.append(_qrecord(ref, path, reason, "write", start + j))
            block["tiles/id"][j] = ref.id
            block["tiles/split"][j] = st.QUARANTINED
            for k in tlen:
                tlen[k][j] = 0
    # Train statistics over real time steps of train tiles, computed on the assembled block so a
    # quarantined tile contributes nothing.
    rows = np.isin(block["tiles/split"].astype(str), list(stats_splits))
    stats = {}
    for key, s in layout.sensors.items():
        valid = (np.arange(s.t_max)[None, :] < tlen[key][:, None]) & rows[:, None]
        sel = block[f"{key}/data"][valid]  # (M, C, H, W)
        mask = block.get(f"{key}/mask")
        stats[key] = st.partial_stats(sel, None if mask is None else mask[valid]) if sel.shape[0] else None
    # AnySat's per-sample statistics (pipelines/stats.py), per stored split: every split, not only the
    # training one, so a run can train on any split set (PASTIS-HD: any three folds)
    sample = {key: ps.partial_sample_stats(block[f"{key}/data"], tlen[key], block["tiles/split"],
                                           block.get(f"{key}/mask"), skip=(st.QUARANTINED,))
              for key in layout.sensors}
    nbytes = int(sum(v.nbytes for k, v in block.items() if not k.startswith("tiles/")))
    marker = {"shard": shard, "start": start, "stop": stop, "tiles": len(refs),
              "written": len(refs) - len(quarantine), "bytes": nbytes, "stats": stats, "sample_stats": sample,
              "quarantine": quarantine, "sensor_tiles": {k: int((v > 0).sum()) for k, v in tlen.items()}}
    if layout.georef is not None:
        crs = block[geostore.CRS_KEY]
        marker["georef"] = {"crs": sorted({str(c) for c in crs if c}), "tiles": int(sum(1 for c in crs if c))}
    try:
        root = zarr.open_group(st.zarr_store(url, storage_options), mode="r+")
        st.write_block(root, start, block)
        st.write_json(url, f"{SHARD_DIR}/{shard:06d}.json", marker, storage_options)  # last: "shard done"
    except OSError as e:
        raise OutputWriteError(f"{url}: " + os_error_line(e, f"writing shard {shard}")) from None
    return marker


def _write_row(ctx: dict, row: dict) -> dict:
    m = write_shard(ctx["url"], ctx["storage_options"], ctx["source_spec"], ctx["layout"], int(row["shard"]),
                    pickle.loads(row["refs"]), ctx["stats_splits"], ctx.get("checks"))
    return {"shard": m["shard"], "tiles": m["tiles"], "written": m["written"], "bytes": m["bytes"],
            "quarantined": len(m["quarantine"])}


# ----------------------------------------------------------------------------------------------------
# Executors: Ray Data (default) or a plain in-process loop (baseline for the benchmark, debugging)
# ----------------------------------------------------------------------------------------------------
def _run_rows(executor: str, fn: Callable[[dict], dict], rows: list[dict], desc: str, progress: bool,
              on_row: Callable[[dict], None], unit_of: Callable[[dict], int], total_units: int) -> None:
    bar = tqdm(total=total_units, desc=desc, unit="tile", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    try:
        if executor == "local":
            for row in rows:
                out = fn(row)
                on_row(out)
                bar.update(unit_of(out))
            return
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        # one task per row: a row is a whole shard (or probe group), which is what makes writers disjoint
        ds = ds.map(fn, num_cpus=1)
        for out in ds.iter_rows():
            on_row(out)
            bar.update(unit_of(out))
    finally:
        bar.close()


def _init_ray(target: raycluster.RayTarget, num_cpus: int | None, warn: Callable[[str], None]) -> None:
    raycluster.init_ray(target, num_cpus, warn=warn, logging_level=logging.WARNING, log_to_driver=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _quiet_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # we draw one tqdm bar in tiles, not Ray's per-operator bars
    ctx.print_on_execution_start = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("anysat-ray", "numpy", "zarr", "ray", "fsspec", "s3fs"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _planned_meta(spec: DatasetSpec, layout: st.StoreLayout, raw: str, plan_time: str,
                  checks: TileChecks | None = None) -> st.StoreMeta:
    """Root attributes of a store the ingest has just sized (statistics follow in :func:`finalize`)."""
    first = spec.labels[0] if spec.labels else None
    return st.StoreMeta.for_layout(
        layout, task=spec.task, classes=tuple(first.classes) if first else (), tile_m=spec.tile_m,
        patch_sizes_m=tuple(spec.patch_sizes_m), model_sensors=tuple(spec.model_sensors),
        compressor=dict(layout.compressor), status="incomplete",
        provenance={"source": raw, "planned": plan_time, "versions": _versions(), "host": socket.gethostname()},
        validation=None if checks is None else checks.to_json(), georef=_planned_georef(spec, layout))


def _planned_georef(spec: DatasetSpec, layout: st.StoreLayout) -> geostore.GeorefMeta:
    note = spec.source_class().georef_note
    if layout.georef is None:
        return geostore.GeorefMeta(note)
    footprint = "archive" if spec.source_class().footprints_in_archive or not layout.georef else "grid"
    return geostore.GeorefMeta(note, tuple(layout.georef), footprint)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ----------------------------------------------------------------------------------------------------
# The ingest
# ----------------------------------------------------------------------------------------------------
def _positive(name: str, value: Any, *, allow_zero: bool = False) -> int | None:
    if value is None:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise IngestError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")
    return int(value)


def run_ingest(dataset: str, raw: str, out: str, *, storage_options: dict | None = None,
               raw_storage_options: dict | None = None, tiles_per_shard: int | None = None,
               executor: str = "ray", num_cpus: int | None = None, overwrite: bool = False,
               progress: bool = True, probe_group: int | None = None, address: str | None = None,
               lock_timeout: float = DEFAULT_TIMEOUT_S, date_range: str | tuple[str, str] | None = None,
               max_dates: int | None = None, warn: Callable[[str], None] = _warn) -> IngestResult:
    """Ingest ``raw`` into ``<out>/<dataset>.zarr`` (resuming a half-finished store there).

    ``storage_options`` apply to ``out`` (and to ``raw`` unless ``raw_storage_options`` is given).
    ``address``: the Ray cluster to join (else ``RAY_ADDRESS``, else a local Ray of its own).
    ``date_range`` (``"FIRST:LAST"`` or a pair of ISO dates) and ``max_dates`` (0: no bound) default to
    1970-01-01..2100-12-31 and ``DatasetSpec.max_dates`` for a new store, and to what the plan recorded
    when resuming. Raises :class:`IngestError` for problems the user must fix; before it has taken the
    store's lock nothing is written but the output folder itself.
    """
    t0 = time.perf_counter()
    try:
        spec = get_dataset(dataset)
    except ValueError as e:
        raise IngestError(str(e)) from None
    if executor not in ("ray", "local"):
        raise IngestError(f"unknown executor {executor!r} (ray or local)")
    tiles_per_shard = _positive("--tiles-per-shard", tiles_per_shard)
    num_cpus = _positive("--num-cpus", num_cpus)
    probe_group = _positive("probe_group", probe_group)
    max_dates = _positive("--max-dates", max_dates, allow_zero=True)
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or not lock_timeout > 0:
        raise IngestError(f"--lock-timeout must be a positive number of seconds, got {lock_timeout!r}")
    if date_range is not None:
        try:
            date_range = parse_date_range(date_range if isinstance(date_range, str) else ":".join(date_range))
        except ValueError as e:
            raise IngestError(f"--date-range: {e}") from None
    so = dict(storage_options or {})
    raw_so = dict(so if raw_storage_options is None else raw_storage_options)
    raw = str(raw).rstrip("/")
    if not raw or not str(out).strip():
        raise IngestError("--raw and --out must not be empty")
    fs_raw, raw_path = st.filesystem(raw, raw_so)
    if not fs_raw.exists(raw_path):
        raise IngestError(f"raw archive {raw} does not exist")
    try:  # before any probing: a bad output is found in a second, not after the probe pass
        st.check_output(out, so)
    except st.OutputError as e:
        raise IngestError(str(e)) from None
    target = None
    if executor == "ray" and not ray.is_initialized():
        try:
            target = raycluster.choose_address(address)
            if not target.local:
                raycluster.connect_address(target)
        except raycluster.RayAddressError as e:
            raise IngestError(str(e)) from None
    url = st.store_url(out, spec.name)
    lock = StoreLock(url, so, timeout_s=float(lock_timeout), dataset=spec.name)
    try:
        took_over = lock.acquire()
    except LockHeld as e:
        raise IngestError(str(e)) from None
    if took_over:
        warn(took_over)
    lock.start_heartbeat()
    try:
        return _ingest_locked(spec, raw, raw_so, url, so, lock, t0, tiles_per_shard=tiles_per_shard,
                              executor=executor, num_cpus=num_cpus, overwrite=overwrite, progress=progress,
                              probe_group=probe_group, target=target, date_range=date_range, max_dates=max_dates,
                              warn=warn)
    except (IngestError, KeyboardInterrupt):
        raise
    except Exception as e:
        known = _find_cause(e, (OutputWriteError, LockLost))
        if known is not None:
            raise IngestError(str(known)) from None
        os_err = _find_cause(e, (OSError,))
        if os_err is not None and getattr(os_err, "errno", None) is not None:
            raise IngestError(f"{url}: " + os_error_line(os_err, "ingesting")) from None
        raise
    finally:
        lock.release()


def _check_existing(url: str, so: dict, spec: DatasetSpec, overwrite: bool, lock: StoreLock) -> bool:
    """Whether a store to resume is at ``url``; removes it for ``--overwrite``; refuses to touch anything
    that is not a half-finished or complete ingest of this very dataset."""
    try:
        exists = st.check_format(url, so)
    except st.StoreFormatError as e:
        raise IngestError(str(e)) from None
    if not exists:
        return False
    if overwrite:
        lock.check(verify=True)
        st.remove(url, so)
        return False
    try:
        meta = st.read_meta(url, so)
    except (KeyError, TypeError, ValueError) as e:
        raise IngestError(f"{url}: unreadable store attributes ({type(e).__name__}: {e}); pass --overwrite to "
                          "rebuild it") from None
    if meta.embedding is not None:
        raise IngestError(f"{url} holds an embeddings store (ray_jobs.embed), not an ingest of {spec.name}; "
                          "choose another --out, or pass --overwrite to replace it")
    if meta.dataset != spec.name:
        raise IngestError(f"{url} holds a store of dataset {meta.dataset!r}, not {spec.name!r}; choose another "
                          "--out, or pass --overwrite to replace it")
    plan = st.read_json(url, PLAN_KEY, so)
    if plan is not None and plan.get("dataset", spec.name) != spec.name:
        raise IngestError(f"{url} was planned for dataset {plan.get('dataset')!r}, not {spec.name!r}; choose "
                          "another --out, or pass --overwrite to replace it")
    if plan is None and meta.complete:
        raise IngestError(f"{url} is a complete {spec.name} store without its ingest plan ({PLAN_KEY}), so it "
                          "cannot be resumed or checked against the archive; pass --overwrite to rebuild it")
    return True


def _ingest_locked(spec: DatasetSpec, raw: str, raw_so: dict, url: str, so: dict, lock: StoreLock, t0: float, *,
                   tiles_per_shard: int | None, executor: str, num_cpus: int | None, overwrite: bool,
                   progress: bool, probe_group: int | None, target: raycluster.RayTarget | None,
                   date_range: tuple[str, str] | None, max_dates: int | None,
                   warn: Callable[[str], None]) -> IngestResult:
    """The ingest proper, run while this process holds the store's lock."""
    exists = _check_existing(url, so, spec, overwrite, lock)

    source_spec = SourceSpec(spec.name, raw, json.dumps(raw_so, sort_keys=True))
    try:
        refs = ordered_listing(source_spec.build())
    except (FileNotFoundError, TileError) as e:
        raise IngestError(f"cannot list {raw} as {spec.name}: {e}") from None
    if not refs:
        raise IngestError(f"{raw}: the {spec.name} reader found no tiles")
    lhash = listing_hash(refs)
    if executor == "ray":
        if target is not None:
            try:
                _init_ray(target, num_cpus, warn)
            except raycluster.RayAddressError as e:
                raise IngestError(str(e)) from None
        _quiet_ray_data()

    plan = st.read_json(url, PLAN_KEY, so) if exists else None
    t_probe = time.perf_counter()
    if plan is not None:
        if plan["listing_sha256"] != lhash:
            raise IngestError(f"{url} was planned from a different listing of the raw archive ({plan['n_listed']} "
                              f"tiles then, {len(refs)} now); rerun with --overwrite to rebuild it")
        if tiles_per_shard and int(tiles_per_shard) != plan["layout"]["tiles_per_shard"]:
            raise IngestError(f"{url} uses {plan['layout']['tiles_per_shard']} tiles per shard, not "
                              f"{tiles_per_shard}; rerun with --overwrite to change it")
        recorded = plan.get("validation")
        checks = TileChecks.from_json(recorded)
        if recorded is None:  # planned before the checks existed: the layout is what it is, dates are checked
            if date_range is not None:
                checks = TileChecks(date_range[0], date_range[1])
        else:
            if date_range is not None and tuple(date_range) != (checks.first, checks.last):
                raise IngestError(f"{url} was planned with --date-range {checks.first}:{checks.last}, not "
                                  f"{date_range[0]}:{date_range[1]}; rerun with --overwrite to change it")
            if max_dates is not None and (max_dates or None) != checks.max_dates:
                raise IngestError(f"{url} was planned with --max-dates {checks.max_dates or 0}, not {max_dates}; "
                                  "rerun with --overwrite to change it")
        layout = st.StoreLayout.from_json(plan["layout"])
        probe_quarantine = plan["probe_quarantine"]
        dropped = {q["index"] for q in probe_quarantine}
        keep = [pos for pos in range(len(refs)) if pos not in dropped]
    else:
        first, last = date_range or DEFAULT_DATE_RANGE
        checks = TileChecks(first, last, spec.max_dates if max_dates is None else (max_dates or None))
        tps = int(tiles_per_shard or spec.tiles_per_shard)
        group = int(probe_group or min(tps, max(1, len(refs) // (4 * max(1, num_cpus or os.cpu_count() or 1))) or 1))
        groups = [refs[i:i + group] for i in range(0, len(refs), group)]
        probes: list = [None] * len(groups)

        def on_probe(row):
            probes[row["group"]] = pickle.loads(row["result"])

        rows = [{"group": g, "refs": pickle.dumps(refs_g)} for g, refs_g in enumerate(groups)]
        _run_rows(executor, functools.partial(_probe_row, source_spec), rows, f"probe {spec.name}", progress,
                  on_probe, lambda r: len(probes[r["group"]]), len(refs))
        flat = [p for g in probes for p in g]
        layout, keep, probe_quarantine = plan_layout(spec, refs, flat, tps, checks.max_dates)
        if not keep:
            first = "; ".join(f"{q['file']}: {q['reason']}" for q in probe_quarantine[:3])
            raise IngestError(f"all {len(refs)} tiles of {raw} failed validation, e.g. {first}")
        plan_time = _now()
        lock.check(verify=True)  # the store is about to be (re)created: make sure it is still ours
        st.remove(url, so)  # a half-created store of this dataset (killed before the plan was saved) is rebuilt
        st.create_store(url, layout, _planned_meta(spec, layout, raw, plan_time, checks), so)
        plan = {"format_version": st.FORMAT_VERSION, "dataset": spec.name, "raw": raw, "listing_sha256": lhash,
                "n_listed": len(refs), "layout": layout.to_json(), "probe_quarantine": probe_quarantine,
                "planned": plan_time, "validation": checks.to_json()}
        st.write_json(url, PLAN_KEY, plan, so)  # last: its presence means the arrays exist
    probe_seconds = time.perf_counter() - t_probe

    kept_refs = [refs[pos] for pos in keep]
    if len(kept_refs) != layout.n_tiles:
        raise IngestError(f"{url}: plan has {layout.n_tiles} tiles but {len(kept_refs)} remain after the "
                          "probe quarantine; rerun with --overwrite")
    fs, root_path = st.filesystem(url, so)
    fs.invalidate_cache()
    done = {int(os.path.basename(p).split(".")[0]) for p in fs.glob(f"{root_path}/{SHARD_DIR}/*.json")}
    pending = [i for i in range(layout.n_shards) if i not in done]
    stats_splits = spec.stats_splits
    ctx = {"url": url, "storage_options": so, "source_spec": source_spec, "layout": layout,
           "stats_splits": stats_splits, "checks": checks}
    rows = []
    for i in pending:
        a, b = layout.shard_range(i)
        rows.append({"shard": i, "refs": pickle.dumps(kept_refs[a:b])})
    t_write = time.perf_counter()
    written_bytes = 0

    def on_write(row):
        nonlocal written_bytes
        lock.check()  # stop at once if another writer has taken the store over
        written_bytes += int(row["bytes"])

    if rows:
        _run_rows(executor, functools.partial(_write_row, ctx), rows, f"ingest {spec.name}", progress, on_write,
                  lambda r: int(r["tiles"]), sum(layout.shard_range(i)[1] - layout.shard_range(i)[0] for i in pending))
    write_seconds = time.perf_counter() - t_write

    lock.check(verify=True)
    result = finalize(url, so, spec, layout, plan, stats_splits)
    absent = {k: n for k, n in (result["sensor_tiles"] or {}).items()
              if k not in spec.optional_sensors and n < result["written"]}
    if absent:
        warn(f"{spec.name}: sensors not declared optional (DatasetSpec.optional_sensors) are absent from some "
             "tiles: " + ", ".join(f"{k} present in {n} of {result['written']} tiles" for k, n in absent.items()))
    return IngestResult(url, len(refs), layout.n_tiles, result["written"], result["quarantine"], layout.n_shards,
                        len(pending), time.perf_counter() - t0, written_bytes, probe_seconds, write_seconds,
                        result["sensor_tiles"])


def finalize(url: str, so: dict, spec: DatasetSpec, layout: st.StoreLayout, plan: dict,
             stats_splits: tuple[str, ...]) -> dict:
    """Merge the shard markers (in shard order) into the root attrs and write quarantine.json."""
    fs, root_path = st.filesystem(url, so)
    paths = [f"{root_path}/{SHARD_DIR}/{i:06d}.json" for i in range(layout.n_shards)]
    fs.invalidate_cache()
    blobs = fs.cat(paths, on_error="omit") if paths else {}
    missing = [p for p in paths if p not in blobs]
    if missing:
        raise IngestError(f"{url}: {len(missing)} shard(s) have no completion record after the write pass "
                          f"(first: {missing[0]}); rerun to finish them")
    markers = [json.loads(blobs[p]) for p in paths]
    quarantine = list(plan["probe_quarantine"]) + [q for m in markers for q in m["quarantine"]]
    stats = {key: st.SensorStats.from_partials(st.merge_stats(m["stats"].get(key) for m in markers), s.bands,
                                               stats_splits)
             for key, s in layout.sensors.items()}
    # shard records of an ingest started before per-sample statistics existed lack them: then none
    sample_stats = None if any("sample_stats" not in m for m in markers) else {
        key: ps.finalize_sample_stats(ps.merge_sample_partials(m["sample_stats"].get(key) for m in markers),
                                      s.bands)
        for key, s in layout.sensors.items()}
    shards = tuple({k: m[k] for k in ("shard", "start", "stop", "tiles", "written", "bytes")} for m in markers)
    written = sum(m["written"] for m in markers)
    report = {"dataset": spec.name, "store": url, "source": plan["raw"], "listed": plan["n_listed"],
              "quarantined": len(quarantine), "tiles": quarantine}
    st.write_json(url, "quarantine.json", report, so)
    meta = st.read_meta(url, so)
    sensor_tiles = None if any("sensor_tiles" not in m for m in markers) else {
        key: sum(int(m["sensor_tiles"].get(key, 0)) for m in markers) for key in layout.sensors}
    sensors_meta = meta.sensors if sensor_tiles is None else {
        k: dataclasses.replace(v, n_tiles=sensor_tiles.get(k)) for k, v in meta.sensors.items()}
    georef = meta.georef
    if georef is not None and layout.georef is not None and all("georef" in m for m in markers):
        georef = dataclasses.replace(georef, crs=tuple(sorted({c for m in markers for c in m["georef"]["crs"]})),
                                     n_tiles=sum(m["georef"]["tiles"] for m in markers))
    st.write_meta(url, meta.replace(sensors=sensors_meta, georef=georef, stats=stats, stats_splits=tuple(stats_splits), sample_stats=sample_stats,
                                    shards=shards,
                                    quarantine=tuple(quarantine), n_listed=plan["n_listed"], n_written=written,
                                    provenance={**(meta.provenance or {}), "finished": _now()},
                                    status="complete"), so)
    return {"written": written, "quarantine": quarantine, "sensor_tiles": sensor_tiles}


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (``error: argument --x: ...``), exit code 2."""

    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _int_arg(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {'a positive integer' if minimum == 1 else f'>= {minimum}'}, "
                                             f"got {value}")
        return value
    return parse


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _date_range_arg(text: str) -> tuple[str, str]:
    try:
        return parse_date_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _address_arg(text: str) -> str:
    try:
        raycluster.check_address(text.strip(), "")
    except raycluster.RayAddressError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip()


def _path_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pipelines.ingest", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name (pipelines.datasets)")
    p.add_argument("--raw", required=True, type=_path_arg, help="raw archive: folder or s3://bucket/prefix")
    p.add_argument("--out", required=True, type=_path_arg,
                   help="output folder or s3:// prefix; writes <out>/<dataset>.zarr (checked before any work)")
    p.add_argument("--address", type=_address_arg, default=None,
                   help="Ray cluster to run on: its GCS host:port (e.g. 127.0.0.1:6379), ray://host:port or auto; "
                        "default: RAY_ADDRESS if set, else a local Ray started for this ingest")
    p.add_argument("--num-cpus", type=_int_arg(1), default=None,
                   help="CPUs of the local Ray (ignored, with a warning, when joining a cluster)")
    p.add_argument("--tiles-per-shard", type=_int_arg(1), default=None, help="override the dataset's shard size")
    p.add_argument("--date-range", type=_date_range_arg, default=None, metavar="FIRST:LAST",
                   help="plausible acquisition dates; a tile with a date outside (other than -1, unknown) is "
                        f"quarantined (default {DEFAULT_DATE_RANGE[0]}:{DEFAULT_DATE_RANGE[1]})")
    p.add_argument("--max-dates", type=_int_arg(0), default=None, metavar="N",
                   help="quarantine a tile whose series is longer than N dates (default: the dataset's "
                        "max_dates; 0: no bound)")
    p.add_argument("--lock-timeout", type=_seconds_arg, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"take over the store's ingest lock when its heartbeat is older than this "
                        f"(default {DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--storage-options", default=None,
                   help='JSON fsspec options for s3:// paths, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    p.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default) or local: a plain single-process loop, same output")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the store from scratch (also replaces a store of another dataset at that path)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad command line (2, its one line already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    try:
        so = json.loads(args.storage_options) if args.storage_options else None
        if so is not None and not isinstance(so, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        print(f"error: --storage-options is not a JSON object ({e})", file=sys.stderr)
        return EXIT_USAGE
    try:
        res = run_ingest(args.dataset, args.raw, args.out, storage_options=so, tiles_per_shard=args.tiles_per_shard,
                         executor=args.executor, num_cpus=args.num_cpus, overwrite=args.overwrite,
                         progress=not args.no_progress, address=args.address, lock_timeout=args.lock_timeout,
                         date_range=args.date_range, max_dates=args.max_dates)
    except IngestError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    q = res.quarantine
    print(f"{res.url}: {res.written} tiles written ({res.n_tiles} slots, {res.shards_written}/{res.shards_total} "
          f"shards this run), {len(q)} quarantined; {res.bytes_written / 1e6:.1f} MB in {res.write_seconds:.1f} s "
          f"= {res.mb_per_s:.1f} MB/s, {res.n_tiles / max(res.seconds, 1e-9):.0f} tiles/s overall "
          f"(probe {res.probe_seconds:.1f} s, total {res.seconds:.1f} s)")
    spec = get_dataset(args.dataset)
    if res.sensor_tiles is not None:
        print("  sensors: " + ", ".join(
            f"{k} {n}/{res.written} tiles" + (" (optional)" if k in spec.optional_sensors else "")
            for k, n in res.sensor_tiles.items())
            + "".join(f", {k} absent (optional)" for k in spec.optional_sensors if k not in res.sensor_tiles))
    for rec in q[:10]:
        print(f"  quarantined {rec['tile']} ({rec['split']}): {rec['file']}: {rec['reason']}")
    if len(q) > 10:
        print(f"  ... and {len(q) - 10} more, see {res.url}/quarantine.json")
    return res.exit_code


if __name__ == "__main__":
    # Ray pickles task functions by module; run them from the importable module, not from __main__.
    from pipelines.ingest import main as _main

    sys.exit(_main())
