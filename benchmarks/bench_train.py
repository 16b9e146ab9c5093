"""Training-service throughput on this machine: can the loader feed the model?

Four measurements, all on the stores the trainer reads (sample stores are built first if
``--stores`` holds none):

1. loader: per dataset, samples/s through the Ray Data stream + collate (one rank, no model) beside
   the one-process decode rate of the same store (plain ``StoreReader.read``), their ratio, the CPU
   time per sample of every process involved, peak RSS;
2. budget: step-time spread of the tiny JEPA step along the run's schedule, with fixed batch sizes
   and with a token budget (``data.tokens_per_batch``);
3. model: samples/s of one JEPA training step (forward, backward, AdamW, EMA) per dataset and
   patch size, for the tiny and the base encoder, on real batches from the stores;
4. trainer: steps/s of the full Ray Train job (``ray_jobs.pretrain``) with 1 and 2 workers
   (window rates logged to MLflow, first window dropped as warm-up), plus wall time.

    python benchmarks/bench_train.py --out benchmarks/results/train.json   # also writes train.md
    python benchmarks/bench_train.py --only loader --stores data/bench/stores --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray
import torch
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout that is not installed

from pipelines.ingest import run_ingest  # noqa: E402
from pipelines.samplegen import get_generator  # noqa: E402
from pipelines.storage import store_url  # noqa: E402
from pipelines.store import StoreReader  # noqa: E402
from pipelines.store_meta import check_format  # noqa: E402
from ray_jobs import pretrain  # noqa: E402
from ray_jobs.batching import step_batch_size  # noqa: E402
from ray_jobs.config import PretrainConfig, load_config, resolve_paths  # noqa: E402
from ray_jobs.data import Feed, StoreStream, collate, quiet_ray_data, stream_items  # noqa: E402
from ray_jobs.plan import DataPlan, resolve_plans  # noqa: E402
from ray_jobs.reads import ReadRange, reuse_freed_memory  # noqa: E402
from ray_jobs.runtime import build_optimizer  # noqa: E402
from ray_jobs.schedule import Schedule  # noqa: E402

TINY_CFG = REPO / "configs/pretrain/geoplex-tiny.yaml"
DATASETS = ("planted", "treesatai-ts")


def ensure_stores(stores: Path) -> Path:
    missing = [d for d in DATASETS if not check_format(store_url(str(stores), d))]
    if not missing:
        return stores
    raw = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    for d in missing:
        get_generator(d)(str(raw / d), tiles=48 if d == "planted" else 16, seed=0)
        run_ingest(d, str(raw / d), str(stores), executor="local", progress=False)
    return stores


def load_plans(stores: Path, batch: dict[str, int], only_present: bool = False
               ) -> tuple[PretrainConfig, dict[str, DataPlan]]:
    sets = [f"data.root={stores}"] + [f"data.datasets.{k}.batch_size={v}" for k, v in batch.items()]
    cfg = resolve_paths(load_config(TINY_CFG, sets + ["num_workers=1"]))
    if only_present:  # a folder with some of the datasets (the larger copy for the memory check)
        cfg.data.datasets = [e for e in cfg.data.datasets if check_format(store_url(str(stores), e.name))]
    return cfg, resolve_plans(cfg)


class PeakRSS:
    """Peak resident memory of this process and of everything it started (the local Ray head: raylet,
    object store, the read-task workers), and their CPU seconds, sampled every 0.1 s while a
    measurement runs (a worker that exits keeps the CPU time last seen)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.peak_self = self.peak_tree = 0
        # RSS counts the object store's shared pages a process has touched; "private" leaves them out
        # (anonymous memory only), so it shows what the stream itself holds
        self.peak_self_private = self.peak_tree_private = 0
        self.cpu: dict[int, list[float]] = {}  # pid -> [first seen, last seen]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.me] + self.me.children(recursive=True)
            except psutil.Error:
                continue
            tree = tree_private = 0
            for p in procs:
                try:
                    mi, cpu = p.memory_info(), sum(p.cpu_times()[:2])
                except psutil.Error:  # exited between listing and reading
                    continue
                private = mi.rss - getattr(mi, "shared", 0)
                tree, tree_private = tree + mi.rss, tree_private + private
                if p.pid == self.me.pid:
                    self.peak_self = max(self.peak_self, mi.rss)
                    self.peak_self_private = max(self.peak_self_private, private)
                self.cpu.setdefault(p.pid, [cpu, cpu])[1] = cpu
            self.peak_tree = max(self.peak_tree, tree)
            self.peak_tree_private = max(self.peak_tree_private, tree_private)
            self._stop.wait(0.1)

    def mark(self) -> None:
        """Count CPU time from now on (after the warm-up)."""
        for v in self.cpu.values():
            v[0] = v[1]

    @property
    def cpu_seconds(self) -> float:
        return sum(b - a for a, b in self.cpu.values())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:  # a worker that exited between listing and reading
        return 0


def decode_rate(plan: DataPlan, passes: int) -> tuple[float, float]:
    """Tiles/s of one process reading whole shards with plain ``StoreReader.read`` (the arrays the
    loader reads, no split filtering, crops, dates or normalisation): the single-core decode limit.
    Returns (tiles/s, CPU seconds per tile)."""
    reader = StoreReader(plan.url, plan.storage_options)
    sensors = sorted({sp.stored for sp in plan.sensors.values()})
    reader.read(*reader.shard_ranges()[0], sensors, labels=False, tiles=False)  # page cache, codec set-up
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for _ in range(passes):
        for a, b in reader.shard_ranges():
            reader.read(a, b, sensors, labels=False, tiles=False)
            n += b - a
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n


def stream_rate(plan: DataPlan, seconds: float, read_num_cpus: float, concurrency: int | None,
                mem: PeakRSS) -> dict:
    """Samples/s through the training stream + ``collate`` of one rank over every stored split (the
    same tiles the decode pass reads). Timed from the first batch for at least ``seconds`` and two
    passes over the store, so the blocks read ahead during start-up are a small part of the count;
    ``cpu_s_per_sample``: CPU seconds of this process and the Ray processes it started, per sample."""
    splits = tuple(plan.stored_splits)
    st = StoreStream(plan, splits, train=True, rank=0, world=1, seed=0, read_num_cpus=read_num_cpus,
                     prefetch_batches=2, read_concurrency=concurrency)
    it = st.batches(0)
    collate(next(it), plan)  # executor start-up, first read
    time.sleep(0.2)
    mem.mark()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n < 2 * st.tiles_per_epoch:
        raw = next(it)
        collate(raw, plan)
        n += len(raw["tile"])
    dt = time.perf_counter() - t0
    time.sleep(0.2)  # one more sample of every process's CPU time
    return {"samples_per_s": n / dt, "seconds": dt, "samples": n, "cpu_s_per_sample": mem.cpu_seconds / n,
            "read_concurrency": concurrency}


def cost_breakdown(plan: DataPlan, reps: int = 5) -> dict:
    """CPU µs per tile of each stage, in this process, on the first shard, stages interleaved rep by rep
    (min over reps: the least disturbed by other jobs): decode (plain ``StoreReader.read``), the read task
    (``ReadRange.read_item``: decode + split, shuffle, time sub-sampling, dates, normalisation) and
    ``collate`` of its output. The stream's CPU per sample minus these is Ray Data's share (object
    store, block conversion, scheduling, idle Ray processes)."""
    reuse_freed_memory()  # as the read tasks and the consumer do
    reader = StoreReader(plan.url, plan.storage_options)
    sensors = sorted({sp.stored for sp in plan.sensors.values()})
    read = ReadRange(plan, tuple(plan.stored_splits), True, 0, prepare=True)
    item = stream_items(plan, tuple(plan.stored_splits), True, 0, 1, 0, 0)[0]
    a, b = int(item["start"]), int(item["stop"])
    batches = (b - a) // plan.batch_size
    t: dict[str, list[float]] = {"decode": [], "read_task": [], "collate": []}  # CPU s per sample
    for _ in range(reps):
        c = time.process_time()
        reader.read(a, b, sensors, labels=False, tiles=False)
        t["decode"].append((time.process_time() - c) / (b - a))
        c = time.process_time()
        block = read.read_item(item)
        t["read_task"].append((time.process_time() - c) / (b - a))
        feed = Feed(iter([block]))
        c = time.process_time()
        for _ in range(batches):
            collate(feed.next(plan.batch_size), plan)
        t["collate"].append((time.process_time() - c) / (batches * plan.batch_size))
    return {f"{k}_us": min(v) * 1e6 for k, v in t.items()}


def memory_probe(stores: Path, seconds: float, concurrency: int | None) -> dict:
    """Peak memory of one PLANTED stream over ``stores``, in this (fresh) process and its own Ray: a
    process that already streamed keeps its heap's high-water mark, so each store size gets its own."""
    cfg, plans = load_plans(stores, {"planted": 64}, only_present=True)
    plan = plans["planted"]
    with PeakRSS() as mem:
        r = stream_rate(plan, seconds, cfg.data.read_num_cpus, concurrency, mem)
    return {"tiles": plan.n_tiles, "samples_per_s": r["samples_per_s"], "peak_rss_mb": mem.peak_self / 2**20,
            "peak_rss_tree_mb": mem.peak_tree / 2**20, "peak_private_mb": mem.peak_self_private / 2**20,
            "peak_private_tree_mb": mem.peak_tree_private / 2**20}


def bench_memory(dirs: list[Path], seconds: float, concurrency: int | None) -> list[dict]:
    """:func:`memory_probe` per store folder, each in a new process."""
    out = []
    for d in dirs:
        cmd = [sys.executable, __file__, "--memory-probe", str(d), "--loader-seconds", str(seconds)]
        cmd += ["--read-concurrency", str(concurrency)] if concurrency else []
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"memory {d}: {out[-1]['tiles']} tiles, peak private consumer / all "
              f"{out[-1]['peak_private_mb']:.0f} / {out[-1]['peak_private_tree_mb']:.0f} MB", flush=True)
    return out


def bench_loader(plans: dict[str, DataPlan], seconds: float, read_num_cpus: float, concurrency: int | None) -> dict:
    out = {}
    for name, plan in plans.items():
        with PeakRSS() as mem:
            r = stream_rate(plan, seconds, read_num_cpus, concurrency, mem)
        decode, decode_cpu = decode_rate(plan, 3)
        parts = cost_breakdown(plan)
        parts["ray_data_us"] = r["cpu_s_per_sample"] * 1e6 - parts["read_task_us"] - parts["collate_us"]
        out[name] = {"batch_size": plan.batch_size, "tiles": plan.n_tiles, **r,
                     "decode_samples_per_s": decode, "decode_cpu_s_per_sample": decode_cpu,
                     "ratio": r["samples_per_s"] / decode,
                     # load-independent: how many samples/s two cores would give at the measured CPU cost
                     "cpu_ratio_two_cores": 2 * decode_cpu / r["cpu_s_per_sample"],
                     "peak_rss_mb": mem.peak_self / 2**20, "peak_rss_tree_mb": mem.peak_tree / 2**20,
                     "peak_private_mb": mem.peak_self_private / 2**20,
                     "peak_private_tree_mb": mem.peak_tree_private / 2**20,
                     "cpu_us_per_sample": parts, "load_avg": os.getloadavg()}
        print(f"loader {name}: stream {r['samples_per_s']:.0f} samples/s, one-process decode {decode:.0f} "
              f"tiles/s, ratio {out[name]['ratio']:.2f} (CPU-time ratio on 2 cores "
              f"{out[name]['cpu_ratio_two_cores']:.2f}), load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def bench_model(cfg: PretrainConfig, plans: dict[str, DataPlan], size: str, steps: int) -> dict:
    cfg = cfg.model_copy(deep=True)
    cfg.model.size = size
    torch.manual_seed(0)
    module = pretrain.build_module(cfg, plans)
    opt = build_optimizer(cfg.optim, module.student_parameters())
    out = {}
    for name, plan in plans.items():
        raw = next(StoreStream(plan, plan.split, train=True, rank=0, world=1, seed=0).batches(0))
        x, pad = collate(raw, plan)
        b = next(iter(x.values())).shape[0]
        for ps in plan.patch_sizes_m:
            times = []
            for i in range(steps + 1):
                t0 = time.perf_counter()
                loss = module(x, ps, pad_mask=pad)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                module.update_teacher(i, total_steps=1000)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times[1:])  # first step: lazy tables, allocator warm-up
            out[f"{name}@{ps}m"] = {"batch_size": int(b), "step_s": med, "samples_per_s": b / med}
            print(f"model {size} {name} P={ps}: {b / med:.2f} samples/s ({med:.2f} s/step)", flush=True)
    return out


def bench_budget(cfg: PretrainConfig, plans: dict[str, DataPlan], steps: int, budget: int) -> dict:
    """Step times of the tiny JEPA step along the run's schedule (dataset and patch size per step), with
    each dataset's fixed batch size and with ``data.tokens_per_batch = budget``."""
    schedule = Schedule(cfg.seed, {n: (p.weight, p.patch_sizes_m) for n, p in plans.items()})
    out = {}
    for label, tpb in (("fixed", None), ("tokens", budget)):
        torch.manual_seed(0)
        module = pretrain.build_module(cfg, plans)
        opt = build_optimizer(cfg.optim, module.student_parameters())
        feeds = {n: StoreStream(p, p.split, train=True, rank=0, world=1, seed=0).feed(0) for n, p in plans.items()}
        times, tokens = [], []
        for k in range(steps + 1):
            e = schedule.at(k)
            plan = plans[e.dataset]
            b = step_batch_size(plan, e.patch_size_m, tpb)
            x, pad = collate(feeds[e.dataset].next(b), plan)
            t0 = time.perf_counter()
            loss = module(x, e.patch_size_m, pad_mask=pad)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            module.update_teacher(k, total_steps=1000)
            if k:  # step 0: allocator and lazy tables
                times.append(time.perf_counter() - t0)
                tokens.append(b * plan.tokens_per_sample(e.patch_size_m))
        mean = statistics.mean(times)
        out[label] = {"tokens_per_batch": tpb, "step_s": times, "tokens": tokens, "mean_step_s": mean,
                      "cv": statistics.pstdev(times) / mean, "max_over_min": max(times) / min(times),
                      "tokens_max_over_min": max(tokens) / min(tokens)}
        print(f"budget {label}: step time {mean:.2f} s mean, CV {out[label]['cv']:.2f}, max/min "
              f"{out[label]['max_over_min']:.1f} (tokens max/min {out[label]['tokens_max_over_min']:.1f})", flush=True)
    return out


def bench_trainer(stores: Path, workers: int, steps: int, batch: dict[str, int]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    sets = {"name": f"bench-{workers}w", "num_workers": workers, "data.root": str(stores),
            "storage_path": str(tmp / "runs"), "mlflow.tracking_uri": uri, "mlflow.experiment": "bench",
            "mlflow.log_model": False, "train.preview": False, "train.eval_every": 0,
            "train.max_steps": steps, "train.log_every": 2, "checkpoint.every": steps}
    sets.update({f"data.datasets.{k}.batch_size": v for k, v in batch.items()})
    argv = ["--config", str(TINY_CFG)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    rc = pretrain.main(argv)
    wall = time.perf_counter() - t0
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    hist = sorted(client.get_metric_history(run.info.run_id, "train/steps_per_s"), key=lambda m: m.step)
    sps = [m.value for m in hist[1:]] or [m.value for m in hist]
    samples = sorted(client.get_metric_history(run.info.run_id, "train/samples_per_s"), key=lambda m: m.step)
    res = {"workers": workers, "steps": steps, "rc": rc, "wall_s": wall,
           "steps_per_s": statistics.mean(sps) if sps else None,
           "samples_per_s": statistics.mean([m.value for m in samples[1:]] or [m.value for m in samples])}
    print(f"trainer {workers} worker(s): {res['steps_per_s']:.3f} steps/s, wall {wall:.0f} s", flush=True)
    return res


def write_md(res: dict, path: Path) -> None:
    lines = [f"# Training-service benchmark ({res['machine']})", "",
             f"torch {res['versions']['torch']}, ray {res['versions']['ray']}, {res['threads']} torch threads; "
             f"1/5/15-min load average at start {tuple(round(x, 1) for x in res['load_avg_start'])}, at end "
             f"{tuple(round(x, 1) for x in res['load_avg_end'])} (above the core count = contended).", ""]
    if "loader" in res:
        lines += ["## Loader (store -> Ray Data stream -> collate, one rank, no model)", "",
                  f"Batch sizes {res['loader_batch_sizes']}. *decode*: one process, plain `StoreReader.read` of whole "
                  "shards (the arrays the loader reads), the single-core limit. *stream*: the training stream + "
                  "`collate` to model-ready CPU tensors over the same tiles, timed in the same run. *CPU ratio*: "
                  "2 × decode CPU-s per tile / stream CPU-s per sample (all processes), the rate two uncontended "
                  "cores would give relative to one-process decode; unlike the wall-clock ratio it does not depend "
                  "on what else runs on the machine.", "",
                  "| dataset | stream samples/s | decode tiles/s | ratio | CPU ratio (2 cores) | stream CPU µs/sample "
                  "| peak RSS consumer / all MB | load (1 min) |", "|---|---|---|---|---|---|---|---|"]
        for k, v in res["loader"].items():
            lines.append(f"| {k} | {v['samples_per_s']:.0f} | {v['decode_samples_per_s']:.0f} | {v['ratio']:.2f} | "
                         f"{v['cpu_ratio_two_cores']:.2f} | {v['cpu_s_per_sample'] * 1e6:.0f} | "
                         f"{v['peak_rss_mb']:.0f} / {v['peak_rss_tree_mb']:.0f} | {v['load_avg'][0]:.1f} |")
        lines.append("")
        if any("cpu_us_per_sample" in v for v in res["loader"].values()):
            lines += ["Where a sample's CPU goes (µs; decode, read task and collate timed in one process, min of 5 "
                      "interleaved runs; Ray Data = the stream's CPU per sample minus read task and collate). Two "
                      "cores reach 1.5× the one-process decode rate only if a sample costs at most 1.33× its decode "
                      "in all.", "",
                      "| dataset | decode | read task (decode + prepare) | collate | Ray Data | stream total | "
                      "total / decode |", "|---|---|---|---|---|---|---|"]
            for k, v in res["loader"].items():
                c = v.get("cpu_us_per_sample")
                if c:
                    lines.append(f"| {k} | {c['decode_us']:.0f} | {c['read_task_us']:.0f} | {c['collate_us']:.0f} | "
                                 f"{c['ray_data_us']:.0f} | {v['cpu_s_per_sample'] * 1e6:.0f} | "
                                 f"{v['cpu_s_per_sample'] * 1e6 / c['decode_us']:.2f} |")
            lines.append("")
    if res.get("loader_memory"):
        lines += ["Memory against store size: the PLANTED stream over each store for as long, each in a new "
                  "process with its own Ray. *Private*: RSS without shared pages, i.e. without the object store's "
                  "pages a process has mapped (bounded by the object store's size, not by the stream).", "",
                  "| tiles | samples/s | peak RSS consumer / all MB | peak private consumer / all MB |",
                  "|---|---|---|---|"]
        for row in res["loader_memory"]:
            lines.append(f"| {row['tiles']} | {row['samples_per_s']:.0f} | {row['peak_rss_mb']:.0f} / "
                         f"{row['peak_rss_tree_mb']:.0f} | {row['peak_private_mb']:.0f} / "
                         f"{row['peak_private_tree_mb']:.0f} |")
        lines.append("")
    if "budget" in res:
        lines += ["## Step-time spread: fixed batch sizes vs a token budget (tiny model, CPU, the run's schedule)", "",
                  "| batching | tokens/step max/min | step s mean | CV | max/min |", "|---|---|---|---|---|"]
        for k, v in res["budget"].items():
            lines.append(f"| {k}{'' if v['tokens_per_batch'] is None else ' (' + str(v['tokens_per_batch']) + ')'} | "
                         f"{v['tokens_max_over_min']:.1f} | {v['mean_step_s']:.2f} | {v['cv']:.2f} | {v['max_over_min']:.1f} |")
        lines.append("")
    if "model" in res:
        lines += ["## Model consumption (one JEPA training step, single process)", "",
                  "| model | dataset @ patch | batch | s/step | samples/s |", "|---|---|---|---|---|"]
        for size, d in res["model"].items():
            for k, v in d.items():
                lines.append(f"| {size} | {k} | {v['batch_size']} | {v['step_s']:.2f} | {v['samples_per_s']:.2f} |")
        lines.append("")
    if "trainer" in res:
        lines += ["## Full trainer (ray_jobs.pretrain, tiny, gloo DDP, 0.5 CPU per worker)", "",
                  "| workers | steps | steps/s (steady) | samples/s | wall s (incl. start-up) |", "|---|---|---|---|---|"]
        for v in res["trainer"]:
            lines.append(f"| {v['workers']} | {v['steps']} | {v['steps_per_s']:.3f} | {v['samples_per_s']:.2f} | "
                         f"{v['wall_s']:.0f} |")
        lines.append("")
    lines += ["Raw numbers in the JSON beside this file."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/train.json"))
    ap.add_argument("--stores", default=str(REPO / "data/stores"))
    ap.add_argument("--only", choices=("loader", "model", "trainer", "budget"), action="append",
                    help="run only these parts (repeatable); default: all")
    ap.add_argument("--loader-seconds", type=float, default=20.0, help="seconds of streaming per dataset")
    ap.add_argument("--read-concurrency", type=int, default=os.cpu_count(), help="read tasks in flight")
    ap.add_argument("--loader-batch", default="planted=64,treesatai-ts=16")
    ap.add_argument("--scale-stores", help="folder with larger stores of some of the datasets: the loader streams "
                                           "them too and reports peak memory beside the smaller store's")
    ap.add_argument("--model-steps", type=int, default=2)
    ap.add_argument("--trainer-steps", type=int, default=10)
    ap.add_argument("--skip-base", action="store_true")
    ap.add_argument("--budget-steps", type=int, default=12)
    ap.add_argument("--tokens-per-batch", type=int, default=512)
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one store folder, prints JSON
    args = ap.parse_args(argv)
    parts = set(args.only or ("loader", "model", "trainer", "budget"))
    if args.memory_probe:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        quiet_ray_data()
        print(json.dumps(memory_probe(Path(args.memory_probe), args.loader_seconds, args.read_concurrency)))
        sys.stdout.flush()
        os._exit(0)  # an open stream's executor would otherwise hold the interpreter at exit

    batch = {"planted": 8, "treesatai-ts": 2}
    stores = ensure_stores(Path(args.stores).resolve())
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    quiet_ray_data()
    res = {"machine": f"{platform.machine()} {os.cpu_count()} CPU, no GPU" if not torch.cuda.is_available()
           else torch.cuda.get_device_name(), "threads": torch.get_num_threads(),
           "versions": {"torch": torch.__version__, "ray": ray.__version__}, "stores": str(stores),
           "batch_sizes": batch,
           # other work on the machine skews every number here: record it
           "load_avg_start": os.getloadavg()}
    if "loader" in parts:
        lb = {k: int(v) for k, v in (kv.split("=") for kv in args.loader_batch.split(","))}
        cfg, plans = load_plans(stores, lb)
        res["loader_batch_sizes"] = lb
        res["loader"] = bench_loader(plans, args.loader_seconds, cfg.data.read_num_cpus, args.read_concurrency)
        if args.scale_stores:
            res["loader_memory"] = bench_memory([stores, Path(args.scale_stores).resolve()], args.loader_seconds,
                                                args.read_concurrency)
    cfg, plans = load_plans(stores, batch)
    if "model" in parts:
        res["model"] = {"tiny": bench_model(cfg, plans, "tiny", args.model_steps)}
        if not args.skip_base:
            res["model"]["base"] = bench_model(cfg, plans, "base", args.model_steps)
    if "budget" in parts:
        res["budget"] = bench_budget(cfg, plans, args.budget_steps, args.tokens_per_batch)
    if "trainer" in parts:
        res["trainer"] = [bench_trainer(stores, w, args.trainer_steps, batch) for w in (1, 2)]
    res["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    if args.only and out.exists():  # a partial run updates its parts, the others stay as measured
        res = {**json.loads(out.read_text()), **res}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    write_md(res, out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
