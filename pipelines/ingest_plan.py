"""The ingest's first steps: list the raw archive, probe every tile, and plan the store from the probes
(its layout, the probe quarantine and its first root attributes).

Apart from the shard writing because the plan is decided once, before any array exists, and is then
saved with the store: a resumed ingest loads it instead of probing again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import pickle
import platform
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from anysat.sensors import get_sensor
from pipelines import geostore
from pipelines.datasets import DatasetSpec, get_dataset
from pipelines.sources.base import Source, TileError, TileProbe, TileRef
from pipelines.store_layout import LabelLayout, SensorLayout, StoreLayout
from pipelines.store_meta import StoreMeta
from pipelines.tilechecks import TileChecks

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


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


def quarantine_record(ref: TileRef, path: str, reason: str, stage: str, index: int | None = None) -> dict:
    return {"tile": ref.id, "split": ref.split, "file": path, "reason": reason, "stage": stage,
            **({"index": index} if index is not None else {})}


# ----------------------------------------------------------------------------------------------------
# Listing, probing and the layout
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


def probe_row(source_spec: SourceSpec, row: dict) -> dict:
    refs = pickle.loads(row["refs"])
    return {"group": row["group"], "result": pickle.dumps(_probe_group(source_spec, refs))}


def _mode(values: Iterable) -> Any:
    c = Counter(values)
    return c.most_common(1)[0][0] if c else None


def plan_layout(spec: DatasetSpec, refs: list[TileRef], probes: list[TileProbe | tuple[str, str]],
                tiles_per_shard: int, max_dates: int | None = None) -> tuple[StoreLayout, list[int], list[dict]]:
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

    sensors: dict[str, SensorLayout] = {}
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
        sensors[key] = SensorLayout(key, int(t_max), int(chw[0]), int(chw[1]), int(chw[2]), dtype.str,
                                    allowed[int(chw[0])], float(sensor.resolution_m), sensor.time_series,
                                    int(mask_c) if mask_c else None)

    labels: dict[str, LabelLayout] = {}
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
        labels[lab.name] = LabelLayout(lab.name, lab.task, list(lab.classes), list(shape), dtype.str,
                                       lab.ignore_index)

    keep = [pos for pos in range(len(refs)) if ok(pos)]
    quarantine = [quarantine_record(refs[pos], path, reason, "probe", pos)
                  for pos, (path, reason) in sorted(bad.items())]
    kept = [probes[pos] for pos in keep]
    grids = [k for k in sensors if any(k in p.sensors and p.sensors[k].georeferenced for p in kept)]
    georef = grids if grids or any(p.footprint for p in kept) else None
    layout = StoreLayout(spec.name, len(keep), int(tiles_per_shard), sensors, labels, georef=georef)
    return layout, keep, quarantine

# ----------------------------------------------------------------------------------------------------
# The planned store's first root attributes
# ----------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("anysat-ray", "numpy", "zarr", "ray", "fsspec", "s3fs"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def planned_meta(spec: DatasetSpec, layout: StoreLayout, raw: str, plan_time: str,
                 checks: TileChecks | None = None) -> StoreMeta:
    """Root attributes of a store the ingest has just sized (statistics follow in
    :func:`pipelines.ingest_passes.finalize`)."""
    first = spec.labels[0] if spec.labels else None
    return StoreMeta.for_layout(
        layout, task=spec.task, classes=tuple(first.classes) if first else (), tile_m=spec.tile_m,
        patch_sizes_m=tuple(spec.patch_sizes_m), model_sensors=tuple(spec.model_sensors),
        compressor=dict(layout.compressor), status="incomplete",
        provenance={"source": raw, "planned": plan_time, "versions": _versions(), "host": socket.gethostname()},
        validation=None if checks is None else checks.to_json(), georef=_planned_georef(spec, layout))


def _planned_georef(spec: DatasetSpec, layout: StoreLayout) -> geostore.GeorefMeta:
    note = spec.source_class().georef_note
    if layout.georef is None:
        return geostore.GeorefMeta(note)
    footprint = "archive" if spec.source_class().footprints_in_archive or not layout.georef else "grid"
    return geostore.GeorefMeta(note, tuple(layout.georef), footprint)
