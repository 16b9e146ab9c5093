"""GPU figures of the training service, for a session that has a GPU (none has been lent so far).

1. FLOPs per sample of one JEPA training step (student forward + backward, teacher forward, predictor),
   counted with ``torch.utils.flop_counter`` on real batches, per dataset and patch size;
2. bf16 autocast forward+backward throughput of the base encoder (tokens/s, samples/s) and its MFU
   against the GPU's dense bf16 peak;
3. the SDPA path: which ``scaled_dot_product_attention`` backends the model's attention runs with
   (flash, memory-efficient, cuDNN, math) and how fast each forward is;
4. one-GPU nccl DDP pretraining (``ray_jobs.pretrain``, ``use_gpu: true``) for a few steps, with the
   loader feeding it: steps/s and the fraction of step time spent waiting for data;
5. the loader alone feeding the GPU (stream + ``collate(device=cuda)``, samples/s) beside what the
   model consumes.

    python benchmarks/gpu_check.py --stores data/bench/stores --out benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --dry-run     # any machine: imports, builds, counts FLOPs, one tiny
                                                 # CPU step and the pretraining config check; no figures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch
from mlflow import MlflowClient
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a checkout that is not installed

from ray_jobs import pretrain  # noqa: E402
from ray_jobs.config import PretrainConfig, load_config, resolve_paths  # noqa: E402
from ray_jobs.data import StoreStream, collate, quiet_ray_data  # noqa: E402
from ray_jobs.plan import DataPlan, resolve_plans  # noqa: E402
from ray_jobs.runtime import build_optimizer  # noqa: E402

TINY_CFG = REPO / "configs/pretrain/geoplex-tiny.yaml"
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(stores: Path, size: str, batch: dict[str, int]) -> tuple[PretrainConfig, dict[str, DataPlan]]:
    sets = [f"data.root={stores}", "num_workers=1", f"model.size={size}"]
    sets += [f"data.datasets.{k}.batch_size={v}" for k, v in batch.items()]
    cfg = resolve_paths(load_config(TINY_CFG, sets))
    return cfg, resolve_plans(cfg)


def first_batch(plan: DataPlan, device: torch.device):
    raw = next(StoreStream(plan, plan.split, train=True, rank=0, world=1, seed=0).batches(0))
    return collate(raw, plan, device)


def step_fn(module, opt, x, pad, ps: int, bf16: bool, device: torch.device):
    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module(x, ps, pad_mask=pad)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        module.update_teacher(0, total_steps=1000)
    return step


def model_figures(cfg: PretrainConfig, plans: dict[str, DataPlan], device: torch.device, bf16: bool,
                  steps: int, peak: float | None) -> dict:
    """FLOPs per sample (counted), then step time, tokens/s and MFU per dataset and patch size."""
    torch.manual_seed(0)
    module = pretrain.build_module(cfg, plans).to(device)
    opt = build_optimizer(cfg.optim, module.student_parameters())
    out = {}
    for name, plan in plans.items():
        x, pad = first_batch(plan, device)
        b = int(next(iter(x.values())).shape[0])
        for ps in plan.patch_sizes_m:
            step = step_fn(module, opt, x, pad, ps, bf16, device)
            with FlopCounterMode(display=False) as fc:
                step()
            flops = fc.get_total_flops()
            times = []
            for _ in range(steps):
                sync(device)
                t0 = time.perf_counter()
                step()
                sync(device)
                times.append(time.perf_counter() - t0)
            dt = sorted(times)[len(times) // 2]
            tokens = b * plan.tokens_per_sample(ps)
            r = {"batch": b, "flops_per_sample": flops / b, "step_s": dt, "samples_per_s": b / dt,
                 "tokens_per_s": tokens / dt, "tflops_per_s": flops / dt / 1e12}
            if peak:
                r["mfu"] = flops / dt / (peak * 1e12)
            out[f"{name}@{ps}m"] = r
            print(f"model {cfg.model.size} {name}@{ps}m: {flops / b / 1e9:.1f} GFLOP/sample, "
                  f"{b / dt:.1f} samples/s, {tokens / dt:.0f} tokens/s" + (f", MFU {r['mfu']:.1%}" if peak else ""),
                  flush=True)
    return out


def sdpa_paths(cfg: PretrainConfig, plans: dict[str, DataPlan], device: torch.device, bf16: bool) -> dict:
    """Forward time of the encoder under each SDPA backend alone (an error = the backend cannot run the
    model's attention: masks, biases or head sizes it does not support)."""
    torch.manual_seed(0)
    module = pretrain.build_module(cfg, plans).to(device).eval()
    name, plan = next(iter(plans.items()))
    x, pad = first_batch(plan, device)
    out = {}
    for label, backend in BACKENDS.items():
        try:
            with torch.no_grad(), sdpa_kernel(backend), torch.autocast(device_type=device.type,
                                                                        dtype=torch.bfloat16, enabled=bf16):
                module(x, plan.patch_sizes_m[0], pad_mask=pad)  # warm-up
                sync(device)
                t0 = time.perf_counter()
                module(x, plan.patch_sizes_m[0], pad_mask=pad)
                sync(device)
            out[label] = {"ok": True, "forward_s": time.perf_counter() - t0}
        except RuntimeError as e:
            out[label] = {"ok": False, "error": str(e).splitlines()[0][:200]}
        print(f"sdpa {label}: {out[label]}", flush=True)
    return out


def loader_feed(plans: dict[str, DataPlan], device: torch.device, seconds: float) -> dict:
    """Samples/s of the stream + collate onto ``device`` (conversion of raw images on the device)."""
    out = {}
    for name, plan in plans.items():
        it = StoreStream(plan, plan.split, train=True, rank=0, world=1, seed=0, prefetch_batches=2).batches(0)
        collate(next(it), plan, device)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            raw = next(it)
            collate(raw, plan, device)
            n += len(raw["tile"])
        sync(device)
        out[name] = {"samples_per_s": n / (time.perf_counter() - t0)}
        print(f"loader -> {device}: {name} {out[name]['samples_per_s']:.0f} samples/s", flush=True)
    return out


def ddp_pretrain(stores: Path, steps: int, size: str, dry_run: bool) -> dict:
    """``ray_jobs.pretrain`` on one GPU worker (nccl), a few steps; rates from its MLflow metrics."""
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    sets = {"name": "gpu-check", "num_workers": 1, "use_gpu": not dry_run, "data.root": str(stores),
            "model.size": size, "storage_path": str(tmp / "runs"), "mlflow.tracking_uri": uri,
            "mlflow.experiment": "gpu-check", "mlflow.log_model": False, "train.preview": False,
            "train.eval_every": 0, "train.max_steps": steps, "train.log_every": max(1, steps // 4),
            "checkpoint.every": steps, "train.cpus_per_worker": 1}
    argv = ["--config", str(TINY_CFG)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    if dry_run:
        return {"rc": pretrain.main(argv + ["--dry-run"]), "dry_run": True}
    t0 = time.perf_counter()
    rc = pretrain.main(argv)
    res = {"rc": rc, "wall_s": time.perf_counter() - t0}
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("gpu-check").experiment_id])[0]
    for key in ("train/steps_per_s", "train/samples_per_s", "train/data_wait_fraction"):
        hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)[1:]  # warm-up out
        res[key.split("/")[1]] = sum(m.value for m in hist) / len(hist) if hist else None
    print(f"ddp pretrain: {res}", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default=str(REPO / "data/bench/stores"))
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/gpu.json"))
    ap.add_argument("--size", default="base")
    ap.add_argument("--batch", default="planted=64,treesatai-ts=16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU, TFLOP/s")
    ap.add_argument("--dry-run", action="store_true", help="CPU: build and count only, tiny model, no figures")
    args = ap.parse_args(argv)

    dry = args.dry_run or not torch.cuda.is_available()
    if not args.dry_run and dry:
        print("no CUDA device: running the dry run instead", flush=True)
    device = torch.device("cpu" if dry else "cuda")
    size, steps = ("tiny", 1) if dry else (args.size, args.steps)
    batch = {"planted": 2, "treesatai-ts": 2} if dry else {k: int(v) for k, v in
                                                           (kv.split("=") for kv in args.batch.split(","))}
    stores = Path(args.stores).resolve()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    quiet_ray_data()
    cfg, plans = load(stores, size, batch)
    peak = peak_tflops(device, args.peak_tflops)
    res = {"device": torch.cuda.get_device_name() if not dry else "cpu (dry run)", "dry_run": dry,
           "size": size, "batch": batch, "peak_bf16_tflops": peak, "load_avg": os.getloadavg(),
           "versions": {"torch": torch.__version__, "ray": ray.__version__}}
    res["model"] = model_figures(cfg, plans, device, not dry, steps, peak)
    res["sdpa"] = sdpa_paths(cfg, plans, device, not dry)
    res["loader"] = loader_feed(plans, device, 2.0 if dry else 20.0)
    res["ddp_pretrain"] = ddp_pretrain(stores, 2 if dry else 20, size, dry)
    ray.shutdown()
    if dry:
        print("dry run: imports, model builds, FLOP counting, one step per dataset, the SDPA backends and "
              "the pretraining config all work; run without --dry-run on a GPU for the figures")
        return 0 if res["ddp_pretrain"]["rc"] == 0 else 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
