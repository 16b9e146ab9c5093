"""The ingest proper, run while the driver holds the store's lock: check what is at the output path,
list, probe and plan (or resume a saved plan), write the pending shards, and finish by merging the
shard records into the root attributes.

Apart from :mod:`pipelines.ingest` so that the entry point (argument checks, the lock, the command
line) and the work it guards each stay small.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pickle
import sys
import time
from typing import Callable

import ray
import ray.data
from tqdm import tqdm

from pipelines import raycluster
from pipelines import stats as ps
from pipelines.datasets import DatasetSpec
from pipelines.ingest_outcome import IngestError, IngestResult
from pipelines.ingest_plan import SourceSpec, listing_hash, ordered_listing, plan_layout, planned_meta, probe_row
from pipelines.ingest_shards import SHARD_DIR, write_row
from pipelines.lock import StoreLock
from pipelines.sources.base import TileError
from pipelines.storage import filesystem, read_json, remove, write_json
from pipelines.store import create_store
from pipelines.store_layout import StoreLayout
from pipelines.store_meta import FORMAT_VERSION, SensorStats, StoreFormatError, check_format, read_meta, write_meta
from pipelines.tilechecks import DEFAULT_DATE_RANGE, TileChecks

PLAN_KEY = "_ingest/plan.json"


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


def _quiet_ray_data() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # we draw one tqdm bar in tiles, not Ray's per-operator bars
    ctx.print_on_execution_start = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False


# ----------------------------------------------------------------------------------------------------
# The passes, run under the store's lock
# ----------------------------------------------------------------------------------------------------
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_existing(url: str, so: dict, spec: DatasetSpec, overwrite: bool, lock: StoreLock) -> bool:
    """Whether a store to resume is at ``url``; removes it for ``--overwrite``; refuses to touch anything
    that is not a half-finished or complete ingest of this very dataset."""
    try:
        exists = check_format(url, so)
    except StoreFormatError as e:
        raise IngestError(str(e)) from None
    if not exists:
        return False
    if overwrite:
        lock.check(verify=True)
        remove(url, so)
        return False
    try:
        meta = read_meta(url, so)
    except (KeyError, TypeError, ValueError) as e:
        raise IngestError(f"{url}: unreadable store attributes ({type(e).__name__}: {e}); pass --overwrite to "
                          "rebuild it") from None
    if meta.embedding is not None:
        raise IngestError(f"{url} holds an embeddings store (ray_jobs.embed), not an ingest of {spec.name}; "
                          "choose another --out, or pass --overwrite to replace it")
    if meta.dataset != spec.name:
        raise IngestError(f"{url} holds a store of dataset {meta.dataset!r}, not {spec.name!r}; choose another "
                          "--out, or pass --overwrite to replace it")
    plan = read_json(url, PLAN_KEY, so)
    if plan is not None and plan.get("dataset", spec.name) != spec.name:
        raise IngestError(f"{url} was planned for dataset {plan.get('dataset')!r}, not {spec.name!r}; choose "
                          "another --out, or pass --overwrite to replace it")
    if plan is None and meta.complete:
        raise IngestError(f"{url} is a complete {spec.name} store without its ingest plan ({PLAN_KEY}), so it "
                          "cannot be resumed or checked against the archive; pass --overwrite to rebuild it")
    return True


def ingest_locked(spec: DatasetSpec, raw: str, raw_so: dict, url: str, so: dict, lock: StoreLock, t0: float, *,
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

    plan = read_json(url, PLAN_KEY, so) if exists else None
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
        layout = StoreLayout.from_json(plan["layout"])
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
        _run_rows(executor, functools.partial(probe_row, source_spec), rows, f"probe {spec.name}", progress,
                  on_probe, lambda r: len(probes[r["group"]]), len(refs))
        flat = [p for g in probes for p in g]
        layout, keep, probe_quarantine = plan_layout(spec, refs, flat, tps, checks.max_dates)
        if not keep:
            first = "; ".join(f"{q['file']}: {q['reason']}" for q in probe_quarantine[:3])
            raise IngestError(f"all {len(refs)} tiles of {raw} failed validation, e.g. {first}")
        plan_time = _now()
        lock.check(verify=True)  # the store is about to be (re)created: make sure it is still ours
        remove(url, so)  # a half-created store of this dataset (killed before the plan was saved) is rebuilt
        create_store(url, layout, planned_meta(spec, layout, raw, plan_time, checks), so)
        plan = {"format_version": FORMAT_VERSION, "dataset": spec.name, "raw": raw, "listing_sha256": lhash,
                "n_listed": len(refs), "layout": layout.to_json(), "probe_quarantine": probe_quarantine,
                "planned": plan_time, "validation": checks.to_json()}
        write_json(url, PLAN_KEY, plan, so)  # last: its presence means the arrays exist
    probe_seconds = time.perf_counter() - t_probe

    kept_refs = [refs[pos] for pos in keep]
    if len(kept_refs) != layout.n_tiles:
        raise IngestError(f"{url}: plan has {layout.n_tiles} tiles but {len(kept_refs)} remain after the "
                          "probe quarantine; rerun with --overwrite")
    fs, root_path = filesystem(url, so)
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
        _run_rows(executor, functools.partial(write_row, ctx), rows, f"ingest {spec.name}", progress, on_write,
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


def finalize(url: str, so: dict, spec: DatasetSpec, layout: StoreLayout, plan: dict,
             stats_splits: tuple[str, ...]) -> dict:
    """Merge the shard markers (in shard order) into the root attrs and write quarantine.json."""
    fs, root_path = filesystem(url, so)
    paths = [f"{root_path}/{SHARD_DIR}/{i:06d}.json" for i in range(layout.n_shards)]
    fs.invalidate_cache()
    blobs = fs.cat(paths, on_error="omit") if paths else {}
    missing = [p for p in paths if p not in blobs]
    if missing:
        raise IngestError(f"{url}: {len(missing)} shard(s) have no completion record after the write pass "
                          f"(first: {missing[0]}); rerun to finish them")
    markers = [json.loads(blobs[p]) for p in paths]
    quarantine = list(plan["probe_quarantine"]) + [q for m in markers for q in m["quarantine"]]
    stats = {key: SensorStats.from_partials(ps.merge_stats(m["stats"].get(key) for m in markers), s.bands,
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
    write_json(url, "quarantine.json", report, so)
    meta = read_meta(url, so)
    sensor_tiles = None if any("sensor_tiles" not in m for m in markers) else {
        key: sum(int(m["sensor_tiles"].get(key, 0)) for m in markers) for key in layout.sensors}
    sensors_meta = meta.sensors if sensor_tiles is None else {
        k: dataclasses.replace(v, n_tiles=sensor_tiles.get(k)) for k, v in meta.sensors.items()}
    georef = meta.georef
    if georef is not None and layout.georef is not None and all("georef" in m for m in markers):
        georef = dataclasses.replace(georef, crs=tuple(sorted({c for m in markers for c in m["georef"]["crs"]})),
                                     n_tiles=sum(m["georef"]["tiles"] for m in markers))
    write_meta(url, meta.replace(sensors=sensors_meta, georef=georef, stats=stats, stats_splits=tuple(stats_splits), sample_stats=sample_stats,
                                 shards=shards,
                                 quarantine=tuple(quarantine), n_listed=plan["n_listed"], n_written=written,
                                 provenance={**(meta.provenance or {}), "finished": _now()},
                                 status="complete"), so)
    return {"written": written, "quarantine": quarantine, "sensor_tiles": sensor_tiles}
