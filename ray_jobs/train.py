"""AnySat JEPA pretraining on Ray Train (``TorchTrainer``).

The driver (:func:`fit`) resolves the data plans, opens the MLflow run and builds a ``TorchTrainer``;
:func:`train_loop_per_worker` runs on every worker:

    restore (latest Ray Train checkpoint, if any) -> for step k: schedule(k) picks the dataset and
    patch size -> next batch of that dataset's stream -> DDP forward/backward (one dataset's
    projectors per step, hence find_unused_parameters) -> clip -> AdamW -> lr schedule -> EMA teacher
    -> every log_every: all-reduced losses + throughput to MLflow (rank 0) -> every eval_every:
    validation losses -> every checkpoint.every: state to storage_path via ray.train.report
    -> at the end the EMA teacher's encoder as the registered MLflow model.

Fault tolerance comes from Ray Train: ``FailureConfig(max_failures)`` restarts a worker group whose
process died, and ``ray.train.get_checkpoint()`` hands the new group the latest checkpoint; the same
path makes a resubmitted run name resume (Ray Train V2 restores its checkpoint list from
``storage_path/name``). The checkpoint holds only tensors, numbers and strings, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ray_jobs.config import PretrainConfig
from ray_jobs.schedule import Schedule

__all__ = ["fit", "run_trainer", "has_checkpoints", "train_loop_per_worker", "build_module", "build_optimizer",
           "build_scheduler", "load_checkpoint_state", "save_checkpoint_state", "report_checkpoint", "drive", "join_state", "CHECKPOINT_FILE",
           "storage_filesystem", "all_reduce_mean", "quiet_ray_data", "log_preview", "maybe_inject_fault",
           "worker_env", "teacher_encoder", "student_encoder"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"


# ------------------------------------------------------------------------------------ model + optim
def build_module(cfg: PretrainConfig, plans: dict[str, dict]) -> torch.nn.Module:
    """Student AnySat (projectors for the sensors of the configured datasets) wrapped in JEPA."""
    from anysat import AnySat
    from anysat.pretrain.jepa import JEPA

    sensors = []
    for p in plans.values():
        sensors += [s for s in p["sensors"] if s not in sensors]
    kw = dict(cfg.model.kwargs)
    encoder = AnySat.from_size(cfg.model.size, sensors=sensors, **kw)
    if cfg.model.init_from:
        sd = torch.load(cfg.model.init_from, map_location="cpu", weights_only=True)
        encoder.load_state_dict(sd.get("encoder", sd) if isinstance(sd, dict) else sd, strict=False)
    w = cfg.jepa.loss_weights
    return JEPA(encoder, total_steps=cfg.train.max_steps, ema=tuple(cfg.jepa.ema), tau=cfg.jepa.temperature,
                pred_weight=float(w.get("pred", 1.0)), con_weight=float(w.get("con", 1.0)), **cfg.jepa.kwargs)


def student_encoder(module: torch.nn.Module) -> torch.nn.Module:
    for name in ("encoder", "student"):
        enc = getattr(module, name, None)
        if isinstance(enc, torch.nn.Module):
            return enc
    raise AttributeError("JEPA module exposes no `encoder`/`student` attribute")


def teacher_encoder(module: torch.nn.Module) -> torch.nn.Module:
    """The EMA teacher's AnySat (``JEPA.teacher.module``): the weights fine-tuning starts from."""
    teacher = getattr(module, "teacher", None)
    enc = getattr(teacher, "module", teacher)
    if not isinstance(enc, torch.nn.Module):
        raise AttributeError("JEPA module exposes no `teacher` encoder")
    return enc


def build_optimizer(cfg: PretrainConfig, module: torch.nn.Module) -> torch.optim.Optimizer:
    # Official: weight decay on every parameter (no norm/bias exclusion), spec §3.8.
    params = module.student_parameters()  # encoder, predictor, mask token; never the EMA teacher
    o = cfg.optim
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)


class _WarmupCosine:
    """lr factor at step k; a callable object so LambdaLR's state_dict stays plain data."""

    def __init__(self, warmup: int, total: int, floor: float, cosine: bool):
        self.warmup, self.total, self.floor, self.cosine = warmup, total, floor, cosine

    def __call__(self, k: int) -> float:
        if self.warmup and k < self.warmup:
            return (k + 1) / self.warmup
        if not self.cosine:
            return 1.0
        t = min(1.0, (k - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(cfg: PretrainConfig, optimizer):
    o = cfg.optim
    if o.scheduler == "plateau":
        # stepped on val/loss at every evaluation (official: once per epoch)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=o.plateau_factor,
                                                          patience=o.plateau_patience)
    floor = o.min_lr / o.lr if o.lr else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _WarmupCosine(o.warmup_steps, cfg.train.max_steps, floor, o.scheduler == "cosine"))


# ----------------------------------------------------------------------------------- checkpoints
def _plain(obj: Any) -> Any:
    """Detach tensors to CPU; tuples -> lists (weights_only-safe containers)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _split_state(module: torch.nn.Module) -> dict[str, dict]:
    """JEPA state dict grouped by top-level child (student encoder, teacher, predictor, ...)."""
    groups: dict[str, dict] = {}
    for k, v in module.state_dict().items():
        head, _, rest = k.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = v
        else:
            groups.setdefault("_root", {})[k] = v
    return groups


def join_state(groups: dict[str, dict]) -> dict[str, torch.Tensor]:
    out = {}
    for head, sd in groups.items():
        for k, v in sd.items():
            out[k if head == "_root" else f"{head}.{k}"] = v
    return out


def save_checkpoint_state(path: Path, module, optimizer, scheduler, step: int, schedule: Schedule,
                          consumed: dict[str, int], run_id: str | None, cfg: PretrainConfig) -> None:
    state = {
        "model": _plain(_split_state(module)),
        "optimizer": _plain(optimizer.state_dict()),
        # LambdaLR stores its callable object's __dict__ (plain numbers): weights_only-safe
        "scheduler": _plain(scheduler.state_dict()),
        "step": int(step),
        "schedule": schedule.state_dict(),
        "consumed": {k: int(v) for k, v in consumed.items()},
        "mlflow_run_id": run_id or "",
        "name": cfg.name,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def report_checkpoint(metrics: dict, rank: int, write) -> None:
    """``ray.train.report`` on every rank (it is a barrier); rank 0 first has ``write(folder)`` fill a
    temporary folder, which becomes the reported checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            write(Path(d))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


def load_checkpoint_state(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -------------------------------------------------------------------------------------- the loop
def maybe_inject_fault(cfg: PretrainConfig, rank: int, step: int) -> None:
    fi = cfg.train.fault_injection
    if fi is None or rank != fi.rank or step != fi.step:
        return
    marker = Path(fi.marker)
    if marker.exists():
        return
    import ray.train

    # Ray Train registers a reported checkpoint asynchronously (the controller polls the workers);
    # wait for it so the test exercises "resume from the latest checkpoint", not a lost report.
    done = ray.train.get_all_reported_checkpoints(timeout_s=120)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} at step {step} pid {os.getpid()} after {len(done)} checkpoints\n")
    log.warning("fault injection: SIGKILL rank %d at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def all_reduce_mean(values: list[float], device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from ray_jobs.data import StoreStream, collate, preview_figure, tokens_per_sample
    from ray_jobs.tracking import Tracker

    cfg = PretrainConfig.model_validate(loop_config["config"])
    plans: dict[str, dict] = loop_config["plans"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    quiet_ray_data()

    # Same seed on every rank: identical initial weights (DDP also broadcasts them) and masks stream.
    torch.manual_seed(cfg.seed)
    module = build_module(cfg, plans).to(device)
    optimizer = build_optimizer(cfg, module)
    scheduler = build_scheduler(cfg, optimizer)
    schedule = Schedule(cfg.seed, {n: (p["weight"], tuple(p["patch_sizes_m"])) for n, p in plans.items()})

    step, consumed, run_id = 0, dict.fromkeys(plans, 0), loop_config.get("run_id")
    first_step = step
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint_state(Path(d) / CHECKPOINT_FILE)
        module.load_state_dict(join_state(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = first_step = int(state["step"])
        consumed.update(state["consumed"])
        run_id = state["mlflow_run_id"] or run_id
        diffs = schedule.check_state(state["schedule"])
        if diffs:
            log.warning("data schedule changed since the checkpoint (%s); continuing with the new one", diffs)
        log.info("rank %d resumed from step %d", rank, step)
    # Masks and dropout differ per rank after this point (different data anyway).
    torch.manual_seed(cfg.seed * 1000003 + rank * 7919 + step)

    if world > 1:
        model = ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": True})
    else:
        model = module

    tracker = Tracker(cfg.mlflow.tracking_uri, run_id, enabled=(rank == 0 and cfg.mlflow.enabled))
    tracker.resume_guard()
    if rank == 0:
        tags = {"ray.world_size": world, "ray.device": str(device)}
        if ckpt is not None:
            tags["anysat.resumed_from_step"] = step
        tracker.set_tags(tags)

    def stream(name, split, train, start=0):
        return StoreStream(plans[name], split, train=train, rank=rank, world=world, seed=cfg.seed,
                           read_num_cpus=cfg.data.read_num_cpus,
                           prefetch_batches=cfg.data.prefetch_batches).batches(start)

    iters = {n: stream(n, plans[n]["split"], True, consumed[n]) for n in plans}
    use_bf16 = device.type == "cuda" and cfg.train.precision in ("auto", "bf16")
    previewed: set[str] = set()
    win: dict[str, Any] = _new_window()
    t_window = time.perf_counter()
    log.info("rank %d/%d on %s: steps %d..%d", rank, world, device, step, cfg.train.max_steps)

    while step < cfg.train.max_steps:
        entry = schedule.at(step)
        maybe_inject_fault(cfg, rank, step)
        plan = plans[entry.dataset]
        t0 = time.perf_counter()
        raw = next(iters[entry.dataset])
        consumed[entry.dataset] += 1
        x, pad = collate(raw, plan, device)
        t_data = time.perf_counter() - t0
        if rank == 0 and cfg.train.preview and entry.dataset not in previewed and tracker.last_step < 0:
            previewed.add(entry.dataset)
            log_preview(tracker, x, plan, preview_figure)

        model.train()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(x, entry.patch_size_m, pad_mask=pad)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.train.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                module.student_parameters(), cfg.train.grad_clip))
        optimizer.step()
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()
        # After the optimiser step: the teacher follows this step's weights (official lags one step).
        momentum = float(module.update_teacher(step))
        step += 1

        b = int(next(iter(x.values())).shape[0])
        _accumulate(win, entry.dataset, out, b, b * tokens_per_sample(plan, entry.patch_size_m),
                    time.perf_counter() - t0, t_data, grad_norm)

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            elapsed = time.perf_counter() - t_window
            metrics = _window_metrics(win, world, elapsed, device)
            metrics["train/lr"] = optimizer.param_groups[0]["lr"]
            metrics["train/ema_momentum"] = momentum
            for n, c in consumed.items():  # stream positions (batches per rank), for the curious
                metrics[f"train/{n}/batches"] = c
            tracker.log_metrics(metrics, step)
            if rank == 0:
                log.info("step %d %s", step, {k: round(v, 4) for k, v in metrics.items() if "/loss" in k})
            win, t_window = _new_window(), time.perf_counter()

        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.max_steps):
            val = evaluate(cfg, plans, module, rank, world, device, use_bf16)
            if val:
                tracker.log_metrics(val, step)
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and "val/loss" in val:
                    scheduler.step(val["val/loss"])
            t_window = time.perf_counter()  # evaluation time is not training throughput

        if step % cfg.checkpoint.every == 0 or step == cfg.train.max_steps:
            report_checkpoint({"step": step, "loss": float(loss.detach())}, rank, lambda d: save_checkpoint_state(
                d / CHECKPOINT_FILE, module, optimizer, scheduler, step, schedule, consumed, run_id, cfg))
            t_window = time.perf_counter()

    if rank == 0:
        if cfg.mlflow.log_model and step > first_step:  # a finished run resubmitted logs nothing new
            # The registered encoder is the EMA teacher (spec: fine-tuning starts from the teacher);
            # the student stays in the checkpoint (group "encoder").
            enc = teacher_encoder(module)
            tracker.log_encoder(enc.state_dict(), {"size": cfg.model.size, "sensors": list(enc.sensors),
                                                   "kwargs": dict(cfg.model.kwargs), "weights": "teacher",
                                                   "step": step}, cfg.mlflow.registered_model_name)
        tracker.finish("FINISHED")


def log_preview(tracker, x, plan, preview_figure) -> None:
    import matplotlib.pyplot as plt

    try:
        fig = preview_figure(x, plan)
        tracker.log_figure(fig, f"previews/{plan['name']}.png")
        plt.close(fig)
    except Exception as e:  # a plot must never stop training
        log.warning("preview plot for %s failed: %s", plan["name"], e)


def _new_window() -> dict[str, Any]:
    return {"n": 0, "loss": 0.0, "terms": {}, "per_ds": {}, "time": 0.0, "data_time": 0.0, "grad_norm": []}


def _accumulate(win, dataset, out, samples, tokens, dt, data_t, grad_norm) -> None:
    win["n"] += 1
    win["time"] += dt
    win["data_time"] += data_t
    for k, v in out.items():
        if k.startswith("loss") and torch.is_tensor(v) and v.numel() == 1:
            win["terms"][k] = win["terms"].get(k, 0.0) + float(v.detach())
    d = win["per_ds"].setdefault(dataset, {"n": 0, "loss": 0.0, "samples": 0, "tokens": 0, "time": 0.0})
    d["n"] += 1
    d["loss"] += float(out["loss"].detach())
    d["samples"] += samples
    d["tokens"] += tokens
    d["time"] += dt
    if grad_norm is not None:
        win["grad_norm"].append(grad_norm)


def _window_metrics(win, world, elapsed, device) -> dict[str, float]:
    """Losses averaged over the window and all ranks (one all-reduce, same on every rank)."""
    keys = sorted(win["terms"])
    names = sorted(win["per_ds"])
    vals = [win["terms"][k] / win["n"] for k in keys]
    vals += [win["per_ds"][n]["loss"] / win["per_ds"][n]["n"] for n in names]
    vals += [win["data_time"] / max(win["time"], 1e-9)]
    red = all_reduce_mean(vals, device)
    m: dict[str, float] = {f"train/{k}": v for k, v in zip(keys, red[:len(keys)])}
    for n, v in zip(names, red[len(keys):len(keys) + len(names)]):
        m[f"train/{n}/loss"] = v
    m["train/data_wait_fraction"] = red[-1]
    total = sum(d["samples"] for d in win["per_ds"].values())
    m["train/samples_per_s"] = total * world / max(elapsed, 1e-9)
    m["train/steps_per_s"] = win["n"] / max(elapsed, 1e-9)
    for n in names:
        d = win["per_ds"][n]
        # per-dataset rates over the time spent on that dataset's steps (whole world)
        m[f"train/{n}/samples_per_s"] = d["samples"] * world / max(d["time"], 1e-9)
        m[f"train/{n}/tokens_per_s"] = d["tokens"] * world / max(d["time"], 1e-9)
    if win["grad_norm"]:
        m["train/grad_norm"] = sum(win["grad_norm"]) / len(win["grad_norm"])
    return m


@torch.no_grad()
def evaluate(cfg, plans, module, rank, world, device, use_bf16) -> dict[str, float]:
    """JEPA losses on the first ``data.val_batches`` batches of each dataset's validation split, every
    patch size of the dataset, averaged over ranks. Runs on the unwrapped module (no DDP hooks)."""
    from ray_jobs.data import StoreStream, collate

    if not cfg.data.val_batches:
        return {}
    module.eval()
    gen_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 17)  # same masks at every evaluation: comparable numbers
    sums: dict[str, list[float]] = {}
    names = [n for n in sorted(plans) if plans[n].get("val_split")]
    for name in names:
        plan = dict(plans[name])
        n_batches, plan["batch_size"] = _val_batches(cfg, plan, world)
        if n_batches == 0:
            continue
        it = StoreStream(plan, plan["val_split"], train=False, rank=rank, world=world, seed=cfg.seed,
                         read_num_cpus=cfg.data.read_num_cpus, prefetch_batches=0).batches(0)
        for _, raw in zip(range(n_batches), it):
            x, pad = collate(raw, plan, device)
            for ps in plan["patch_sizes_m"]:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = module(x, ps, pad_mask=pad)
                for k, v in out.items():
                    if k.startswith("loss") and torch.is_tensor(v) and v.numel() == 1:
                        acc = sums.setdefault(f"val/{name}/{k}", [0.0, 0])
                        acc[0] += float(v)
                        acc[1] += 1
    torch.set_rng_state(gen_state)
    module.train()
    keys = sorted(sums)
    red = all_reduce_mean([sums[k][0] / max(sums[k][1], 1) for k in keys], device)
    m = dict(zip(keys, red))
    for term in {k.rsplit("/", 1)[1] for k in keys}:
        vals = [v for k, v in m.items() if k.endswith("/" + term)]
        m[f"val/{term}"] = sum(vals) / len(vals)
    return m


def _val_batches(cfg, plan, world) -> tuple[int, int]:
    """(batches, batch size) for validation, identical on every rank: the smallest rank share."""
    from ray_jobs.data import _split_counts, stream_items

    shares = [sum(_split_counts(plan, plan["val_split"],
                                stream_items(plan, plan["val_split"], False, r, world, cfg.seed, 0)))
              for r in range(world)]
    least = min(shares)
    if least == 0:
        return 0, 0
    bs = min(plan["batch_size"], least)
    return (min(cfg.data.val_batches, least // bs), bs)


def quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    # one "execution finished" line per stream chunk would drown the training log
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------ driver
def storage_filesystem(cfg: PretrainConfig):
    """(storage_path, pyarrow filesystem or None). Custom S3 endpoints (MinIO, moto) need an explicit
    filesystem; then Ray Train wants the path without its scheme."""
    so = dict(cfg.storage_options)
    if not cfg.storage_path.startswith("s3://") or not so:
        return cfg.storage_path, None
    import pyarrow.fs as pafs

    endpoint = so.pop("endpoint_url", None) or (so.get("client_kwargs") or {}).get("endpoint_url")
    kw: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kw["endpoint_override"] = host or scheme
        kw["scheme"] = scheme if host else "https"
    if so.get("key"):
        kw["access_key"], kw["secret_key"] = so["key"], so.get("secret")
    region = so.get("region") or (so.get("client_kwargs") or {}).get("region_name")
    if region:
        kw["region"] = region
    return cfg.storage_path[len("s3://"):], pafs.S3FileSystem(**kw)


def drive(cfg, params: dict[str, Any], run, what: str) -> int:
    """The entrypoints' driver part: connect to Ray, find whether ``storage_path/name`` resumes, open
    (or reopen) the MLflow run with ``params``, ``run(run_id)`` (-> Ray Train ``Result``), and mark the
    MLflow run FAILED when training failed. Returns the process exit code."""
    import sys

    import ray
    from ray.train import TrainingFailedError

    from ray_jobs.tracking import Tracker, open_run

    if not ray.is_initialized():
        # RAY_ADDRESS (set by `ray job submit`) or a running local cluster is used; else a local one
        ray.init(log_to_driver=True)
    resume = has_checkpoints(cfg)
    if resume:
        print(f"resuming {cfg.storage_path}/{cfg.name} from its latest checkpoint")
    run_id = open_run(cfg, params, resume=resume) if cfg.mlflow.enabled else None
    try:
        result = run(run_id)
        error = result.error
    except TrainingFailedError as e:  # Ray Train raises once train.max_failures restarts are used up
        error = e
    if error:
        if run_id:  # the run must not stay RUNNING forever
            Tracker(cfg.mlflow.tracking_uri, run_id).finish("FAILED")
        print(f"{what} failed: {error}", file=sys.stderr)
        return 1
    print(f"done: checkpoint {result.checkpoint.path if result.checkpoint else None}; MLflow run {run_id} "
          f"at {cfg.mlflow.tracking_uri}")
    return 0


def has_checkpoints(cfg: PretrainConfig) -> bool:
    """Whether ``storage_path/name`` holds a Ray Train run to resume (its checkpoint list)."""
    import fsspec

    url = f"{cfg.storage_path.rstrip('/')}/{cfg.name}/checkpoint_manager_snapshot.json"
    so = dict(cfg.storage_options) if "://" in url else {}
    fs, path = fsspec.core.url_to_fs(url, **so)
    try:
        return fs.exists(path)
    except OSError:
        return False


def fit(cfg: PretrainConfig, plans: dict[str, dict], run_id: str | None):
    """Run the JEPA pretraining loop on a TorchTrainer; returns the Ray Train ``Result``."""
    return run_trainer(cfg, train_loop_per_worker,
                       {"config": cfg.model_dump(mode="json"), "plans": plans, "run_id": run_id})


def run_trainer(cfg, loop, loop_config: dict):
    """Build and run a ``TorchTrainer`` for ``loop(loop_config)`` with the service's settings (workers,
    GPU/gloo, storage + filesystem, checkpoints kept, failure restarts, worker env), for any
    :class:`ray_jobs.config.TrainConfig` (pretraining, fine-tuning)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    path, fs = storage_filesystem(cfg)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(
            name=cfg.name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": worker_env()}),
    )
    return trainer.fit()


def worker_env() -> dict[str, str]:
    # Workers log to MLflow and write to S3: forward the few settings they need (never logged).
    keep = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "ANYSAT_GIT_COMMIT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env
