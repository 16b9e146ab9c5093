"""Training-service throughput on this machine: can the loader feed the model?

Three measurements, all on the stores the trainer reads (sample stores are built first if
``--stores`` holds none):

1. loader: tiles/s per dataset straight from the store through the Ray Data stream + collate
   (one rank, no model);
2. model: samples/s of one JEPA training step (forward, backward, AdamW, EMA) per dataset and
   patch size, for the tiny and the base encoder, on real batches from the stores;
3. trainer: steps/s of the full Ray Train job (``ray_jobs.pretrain``) with 1 and 2 workers
   (window rates logged to MLflow, first window dropped as warm-up), plus wall time.

    python benchmarks/bench_train.py --out benchmarks/results/train.json   # also writes train.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout that is not installed

from pipelines.ingest import run_ingest  # noqa: E402
from pipelines.samplegen import get_generator  # noqa: E402
from pipelines.store import check_format, store_url  # noqa: E402
from ray_jobs import pretrain  # noqa: E402
from ray_jobs.config import PretrainConfig, load_config, resolve_paths  # noqa: E402
from ray_jobs.data import StoreStream, collate, quiet_ray_data  # noqa: E402
from ray_jobs.plan import DataPlan, resolve_plans  # noqa: E402
from ray_jobs.runtime import build_optimizer  # noqa: E402

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


def load_plans(stores: Path, batch: dict[str, int]) -> tuple[PretrainConfig, dict[str, DataPlan]]:
    sets = [f"data.root={stores}"] + [f"data.datasets.{k}.batch_size={v}" for k, v in batch.items()]
    cfg = resolve_paths(load_config(TINY_CFG, sets + ["num_workers=1"]))
    return cfg, resolve_plans(cfg)


def bench_loader(plans: dict[str, DataPlan], n_batches: int) -> dict:
    out = {}
    for name, plan in plans.items():
        st = StoreStream(plan, plan.split, train=True, rank=0, world=1, seed=0)
        it = st.batches(0)
        collate(next(it), plan)  # warm-up: executor start, first reads
        t0 = time.perf_counter()
        tiles = 0
        for _ in range(n_batches):
            raw = next(it)
            collate(raw, plan)
            tiles += len(raw["tile"])
        dt = time.perf_counter() - t0
        out[name] = {"batch_size": plan.batch_size, "batches": n_batches,
                     "samples_per_s": tiles / dt, "seconds": dt}
        print(f"loader {name}: {tiles / dt:.1f} samples/s", flush=True)
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
             f"batch sizes {res['batch_sizes']}; 1/5/15-min load average at start "
             f"{tuple(round(x, 1) for x in res['load_avg_start'])}, at end "
             f"{tuple(round(x, 1) for x in res['load_avg_end'])} (above the core count = contended).", "",
             "## Loader (store -> Ray Data stream -> collate, one rank, no model)", "",
             "| dataset | batch | samples/s |", "|---|---|---|"]
    for k, v in res["loader"].items():
        lines.append(f"| {k} | {v['batch_size']} | {v['samples_per_s']:.1f} |")
    lines += ["", "## Model consumption (one JEPA training step, single process)", "",
              "| model | dataset @ patch | batch | s/step | samples/s |", "|---|---|---|---|---|"]
    for size, d in res["model"].items():
        for k, v in d.items():
            lines.append(f"| {size} | {k} | {v['batch_size']} | {v['step_s']:.2f} | {v['samples_per_s']:.2f} |")
    lines += ["", "## Full trainer (ray_jobs.pretrain, tiny, gloo DDP, 0.5 CPU per worker)", "",
              "| workers | steps | steps/s (steady) | samples/s | wall s (incl. start-up) |", "|---|---|---|---|---|"]
    for v in res["trainer"]:
        lines.append(f"| {v['workers']} | {v['steps']} | {v['steps_per_s']:.3f} | {v['samples_per_s']:.2f} | "
                     f"{v['wall_s']:.0f} |")
    lines += ["", "Loader rates are far above what either model consumes on this CPU, so training is "
              "compute-bound here; see train.json for the raw numbers."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/train.json"))
    ap.add_argument("--stores", default=str(REPO / "data/stores"))
    ap.add_argument("--loader-batches", type=int, default=8)
    ap.add_argument("--model-steps", type=int, default=2)
    ap.add_argument("--trainer-steps", type=int, default=10)
    ap.add_argument("--skip-base", action="store_true")
    args = ap.parse_args(argv)

    batch = {"planted": 8, "treesatai-ts": 2}
    stores = ensure_stores(Path(args.stores).resolve())
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    quiet_ray_data()
    cfg, plans = load_plans(stores, batch)
    res = {"machine": f"{platform.machine()} {os.cpu_count()} CPU, no GPU" if not torch.cuda.is_available()
           else torch.cuda.get_device_name(), "threads": torch.get_num_threads(),
           "versions": {"torch": torch.__version__, "ray": ray.__version__}, "stores": str(stores),
           "batch_sizes": batch,
           # other work on the machine skews every number here: record it
           "load_avg_start": os.getloadavg()}
    res["loader"] = bench_loader(plans, args.loader_batches)
    res["model"] = {"tiny": bench_model(cfg, plans, "tiny", args.model_steps)}
    if not args.skip_base:
        res["model"]["base"] = bench_model(cfg, plans, "base", args.model_steps)
    res["trainer"] = [bench_trainer(stores, w, args.trainer_steps, batch) for w in (1, 2)]
    res["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    write_md(res, out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
