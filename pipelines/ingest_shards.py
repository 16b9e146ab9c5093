"""Writing one shard of the store: read its tiles, validate each against the plan, write the whole
shard (one object per array), then its completion record with the shard's partial statistics.

One shard per task is what keeps writers disjoint, and the record written last is what makes a
killed ingest resumable: a shard without one is rewritten.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import zarr

from pipelines import geostore
from pipelines import stats as ps
from pipelines.ingest_outcome import OutputWriteError, os_error_line
from pipelines.ingest_plan import SourceSpec, quarantine_record
from pipelines.sources.base import Tile, TileError, TileRef
from pipelines.storage import write_json, zarr_store
from pipelines.store import QUARANTINED, empty_block, write_block
from pipelines.store_layout import LabelLayout, StoreLayout
from pipelines.tilechecks import TileChecks, check_dates, check_values

SHARD_DIR = "_ingest/shards"


def _check_label(lab: LabelLayout, v: np.ndarray) -> str | None:
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


def place_tile(layout: StoreLayout, block: dict[str, np.ndarray], j: int, tile: Tile,
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


def write_shard(url: str, storage_options: dict, source_spec: SourceSpec, layout: StoreLayout,
                shard: int, refs: list[TileRef], stats_splits: tuple[str, ...],
                checks: TileChecks | None = None) -> dict:
    """Read, validate and write one shard, then its completion marker; returns the marker.

    An I/O error while writing (a full disk) raises :class:`OutputWriteError` before the marker exists, so
    the shard counts as not done and a rerun rewrites it.
    """
    start, stop = layout.shard_range(shard)
    assert stop - start == len(refs), (shard, start, stop, len(refs))
    source = source_spec.build()
    block = empty_block(layout, len(refs))
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
            quarantine.append(quarantine_record(ref, path, reason, "write", start + j))
            block["tiles/id"][j] = ref.id
            block["tiles/split"][j] = QUARANTINED
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
        stats[key] = ps.partial_stats(sel, None if mask is None else mask[valid]) if sel.shape[0] else None
    # AnySat's per-sample statistics (pipelines/stats.py), per stored split: every split, not only the
    # training one, so a run can train on any split set (PASTIS-HD: any three folds)
    sample = {key: ps.partial_sample_stats(block[f"{key}/data"], tlen[key], block["tiles/split"],
                                           block.get(f"{key}/mask"), skip=(QUARANTINED,))
              for key in layout.sensors}
    nbytes = int(sum(v.nbytes for k, v in block.items() if not k.startswith("tiles/")))
    marker = {"shard": shard, "start": start, "stop": stop, "tiles": len(refs),
              "written": len(refs) - len(quarantine), "bytes": nbytes, "stats": stats, "sample_stats": sample,
              "quarantine": quarantine, "sensor_tiles": {k: int((v > 0).sum()) for k, v in tlen.items()}}
    if layout.georef is not None:
        crs = block[geostore.CRS_KEY]
        marker["georef"] = {"crs": sorted({str(c) for c in crs if c}), "tiles": int(sum(1 for c in crs if c))}
    try:
        root = zarr.open_group(zarr_store(url, storage_options), mode="r+")
        write_block(root, start, block)
        write_json(url, f"{SHARD_DIR}/{shard:06d}.json", marker, storage_options)  # last: "shard done"
    except OSError as e:
        raise OutputWriteError(f"{url}: " + os_error_line(e, f"writing shard {shard}")) from None
    return marker


def write_row(ctx: dict, row: dict) -> dict:
    m = write_shard(ctx["url"], ctx["storage_options"], ctx["source_spec"], ctx["layout"], int(row["shard"]),
                    pickle.loads(row["refs"]), ctx["stats_splits"], ctx.get("checks"))
    return {"shard": m["shard"], "tiles": m["tiles"], "written": m["written"], "bytes": m["bytes"],
            "quarantined": len(m["quarantine"])}
