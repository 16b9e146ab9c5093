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

The code follows those steps: ``pipelines.ingest_plan`` lists, probes and plans (1-3),
``pipelines.ingest_shards`` writes one shard (4), ``pipelines.ingest_passes`` runs the steps in order
under the lock and finishes (5), and ``pipelines.ingest_outcome`` holds the result, the errors and the
exit codes. This module checks the arguments and the output, takes the lock, and is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import numpy as np
import ray

from pipelines import raycluster
from pipelines.datasets import get_dataset
from pipelines.ingest_outcome import EXIT_USAGE, IngestError, IngestResult, OutputWriteError, os_error_line
from pipelines.ingest_passes import ingest_locked
from pipelines.lock import DEFAULT_TIMEOUT_S, LockHeld, LockLost, StoreLock
from pipelines.storage import OutputError, check_output, filesystem, store_url
from pipelines.tilechecks import DEFAULT_DATE_RANGE, parse_date_range


# ----------------------------------------------------------------------------------------------------
# The ingest
# ----------------------------------------------------------------------------------------------------
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


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
    fs_raw, raw_path = filesystem(raw, raw_so)
    if not fs_raw.exists(raw_path):
        raise IngestError(f"raw archive {raw} does not exist")
    try:  # before any probing: a bad output is found in a second, not after the probe pass
        check_output(out, so)
    except OutputError as e:
        raise IngestError(str(e)) from None
    target = None
    if executor == "ray" and not ray.is_initialized():
        try:
            target = raycluster.choose_address(address)
            if not target.local:
                raycluster.connect_address(target)
        except raycluster.RayAddressError as e:
            raise IngestError(str(e)) from None
    url = store_url(out, spec.name)
    lock = StoreLock(url, so, timeout_s=float(lock_timeout), dataset=spec.name)
    try:
        took_over = lock.acquire()
    except LockHeld as e:
        raise IngestError(str(e)) from None
    if took_over:
        warn(took_over)
    lock.start_heartbeat()
    try:
        return ingest_locked(spec, raw, raw_so, url, so, lock, t0, tiles_per_shard=tiles_per_shard,
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
    sys.exit(main())
