"""What every Ray Train job of this project shares, driver side and worker side.

Driver: :func:`fit` connects to Ray (:mod:`ray_jobs.cluster`: a local instance unless an address is
given; GPUs checked), finds out whether ``storage_path/name`` resumes, opens (or reopens) the MLflow
run and keeps its heartbeat while the job runs, runs the job's ``train_func`` on a ``TorchTrainer``
(workers, GPU/gloo, storage and its filesystem, checkpoints kept, failure restarts, worker
environment) and turns the outcome into an exit code. Credentials reach the workers through a
private file, never through Ray's runtime env (:mod:`ray_jobs.credentials`).

Worker: :func:`worker_context`, :func:`wrap_ddp`, :func:`worker_tracker`, the optimiser and lr
schedule builders, checkpoint writing (:func:`save_checkpoint_state` + :func:`report_checkpoint`)
and reading (:func:`latest_checkpoint`, :func:`restore_training`), :func:`all_reduce_mean` and the
fault-injection test hook.

Fault tolerance comes from Ray Train: ``FailureConfig(max_failures)`` restarts a worker group whose
process died, and ``ray.train.get_checkpoint()`` hands the new group the latest checkpoint; the same
path makes a resubmitted run name resume (Ray Train restores its checkpoint list from
``storage_path/name``). A checkpoint holds only tensors, numbers and strings, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import fsspec
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from ray_jobs import credentials
from ray_jobs.cluster import check_gpus, init_ray
from ray_jobs.config import FaultInjection, OptimConfig, TrainConfig
from ray_jobs.data import quiet_ray_data
from ray_jobs.tracking import Heartbeat, Tracker, open_run

__all__ = ["CHECKPOINT_FILE", "SNAPSHOT_FILE", "init_ray", "fit", "has_checkpoints", "latest_recorded_checkpoint",
           "storage_filesystem", "worker_env", "worker_context", "wrap_ddp", "use_bf16", "worker_tracker",
           "build_optimizer", "build_scheduler",
           "is_plateau", "split_state", "save_checkpoint_state", "load_checkpoint_state", "report_checkpoint",
           "latest_checkpoint", "restore_training", "join_state", "all_reduce_mean", "maybe_inject_fault"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train's record of the checkpoints a run reported, in the run folder (``storage_path/name``)."""


# ------------------------------------------------------------------------------------------- driver
def fit(cfg: TrainConfig, train_func: Callable[[dict], None], loop_config: dict[str, Any], *,
        params: dict[str, Any], what: str) -> int:
    """Run ``train_func(loop_config | {"run_id": ...})`` on a TorchTrainer, tracked in MLflow with
    ``params`` beside the flattened config; returns the process exit code. A failed run is marked
    FAILED in MLflow (it must not stay RUNNING forever) and reported as ``<what> failed: ...``.
    An unreachable cluster, missing GPUs or a run name another live driver is running raise
    :class:`ray_jobs.config.ConfigError`."""
    credentials.register_secrets(cfg.storage_options, cfg.data.storage_options)
    init_ray()
    if cfg.use_gpu:
        check_gpus(cfg.num_workers, f"use_gpu: true with {cfg.num_workers} worker(s)")
    resume = has_checkpoints(cfg)
    if resume:
        print(f"resuming {cfg.storage_path}/{cfg.name} from its latest checkpoint")
    run_id = open_run(cfg, params, resume=resume) if cfg.mlflow.enabled else None
    with credentials.secrets_file() as secrets, Heartbeat(cfg.mlflow.tracking_uri, run_id):
        return _fit(cfg, train_func, loop_config, run_id, credentials.worker_env(secrets), what)


def _fit(cfg: TrainConfig, train_func: Callable[[dict], None], loop_config: dict[str, Any], run_id: str | None,
         env: dict[str, str], what: str) -> int:
    path, fs = storage_filesystem(cfg)
    trainer = TorchTrainer(
        train_func,
        train_loop_config={**loop_config, "run_id": run_id},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker,
                                                           **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(
            name=cfg.name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": env}),
    )
    try:
        result = trainer.fit()
        error = result.error
    except TrainingFailedError as e:  # raised once train.max_failures restarts are used up
        error = e
    if error:
        if run_id:
            Tracker(cfg.mlflow.tracking_uri, run_id).finish("FAILED")
        print(credentials.redact(f"{what} failed: {error}"), file=sys.stderr)
        return 1
    print(credentials.redact(f"done: checkpoint {result.checkpoint.path if result.checkpoint else None}; "
                             f"MLflow run {run_id} at {cfg.mlflow.tracking_uri}"))
    return 0


def has_checkpoints(cfg: TrainConfig) -> bool:
    """Whether ``storage_path/name`` holds a Ray Train run to resume (its checkpoint list)."""
    url = f"{cfg.storage_path.rstrip('/')}/{cfg.name}/{SNAPSHOT_FILE}"
    so = dict(cfg.storage_options) if "://" in url else {}
    fs, path = fsspec.core.url_to_fs(url, **so)
    try:
        return fs.exists(path)
    except OSError:
        return False


def latest_recorded_checkpoint(fs, run_path: str, name: str = CHECKPOINT_FILE) -> str | None:
    """The folder of the latest checkpoint that Ray Train recorded as complete in the run folder
    ``run_path`` (of the fsspec filesystem ``fs``) and that holds ``name``; ``None`` when the folder has
    no (readable) record, i.e. is not a Ray Train V2 run folder.

    Ray Train registers a checkpoint in ``checkpoint_manager_snapshot.json`` only after the worker
    finished writing it to storage, so a ``checkpoint_*`` folder that a kill interrupted mid-upload is
    never in the record, even when it is the newest folder. FileNotFoundError when the record names
    no checkpoint holding ``name``."""
    try:
        snap = json.loads(fs.cat_file(f"{run_path}/{SNAPSHOT_FILE}"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("unreadable Ray Train checkpoint record in %s (%s)", run_path, e)
        return None
    results = snap.get("checkpoint_results") or []
    order = snap.get("checkpoint_report_indices") or list(range(len(results)))
    names = [r["checkpoint_dir_name"] for _, r in sorted(zip(order, results), key=lambda x: x[0], reverse=True)]
    latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    for n in dict.fromkeys(([latest] if latest else []) + names):
        if fs.exists(f"{run_path}/{n}/{name}"):
            return f"{run_path}/{n}"
    raise FileNotFoundError(f"{run_path}: none of the checkpoints Ray Train recorded as complete holds {name}")


def storage_filesystem(cfg: TrainConfig) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, pyarrow filesystem or None). Custom S3 endpoints (MinIO, moto) need an explicit
    filesystem; then Ray Train wants the path without its scheme."""
    so = dict(cfg.storage_options)
    if not cfg.storage_path.startswith("s3://") or not so:
        return cfg.storage_path, None
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


def worker_env(secrets_path: str | None = None) -> dict[str, str]:
    """The runtime-env variables of the workers: the settings they need to log to MLflow and read S3,
    and the path of the driver's secrets file; never a credential (Ray logs runtime envs)."""
    return credentials.worker_env(secrets_path)


# ------------------------------------------------------------------------------------------- worker
def worker_context() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker; loads the driver's credentials and redacts
    them from this process's log records."""
    credentials.load_secrets()
    credentials.install_redaction()
    quiet_ray_data()
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def wrap_ddp(module: torch.nn.Module, world: int) -> torch.nn.Module:
    """DDP over the worker group (the module itself on one worker). ``find_unused_parameters``: a
    step uses only some of the parameters (one dataset's projectors in pretraining; a dense head
    never uses the combiner's context path)."""
    if world == 1:
        return module
    return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" and cfg.train.precision in ("auto", "bf16")


def worker_tracker(cfg: TrainConfig, run_id: str | None, rank: int, tags: dict[str, Any]) -> Tracker:
    """The MLflow tracker of this worker: live on rank 0, a no-op elsewhere. Steps already in the
    run's history (logged by a previous attempt) are not logged again."""
    tracker = Tracker(cfg.mlflow.tracking_uri, run_id, enabled=(rank == 0 and cfg.mlflow.enabled))
    tracker.resume_guard()
    if rank == 0:
        tracker.set_tags(tags)
    return tracker


def build_optimizer(o: OptimConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW over ``params``, weight decay on every one of them (as the official code: no norm/bias
    exclusion)."""
    return torch.optim.AdamW(list(params), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)


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


def build_scheduler(o: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """Per-step warm-up + constant/cosine lr (``LambdaLR``), or ``ReduceLROnPlateau``, which the
    loop steps on ``val/loss`` at every evaluation instead (the official code: once per epoch)."""
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=o.plateau_factor,
                                                          patience=o.plateau_patience)
    floor = o.min_lr / o.lr if o.lr else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _WarmupCosine(o.warmup_steps, total_steps, floor, o.scheduler == "cosine"))


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """The mean of ``values`` over the worker group (every rank gets the same numbers)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def maybe_inject_fault(fi: FaultInjection | None, rank: int, step: int) -> None:
    """Test hook (``train.fault_injection``): rank ``fi.rank`` SIGKILLs itself at ``fi.step``, once."""
    if fi is None or rank != fi.rank or step != fi.step:
        return
    marker = Path(fi.marker)
    if marker.exists():
        return
    # Ray Train registers a reported checkpoint asynchronously (the controller polls the workers);
    # wait for it so the test exercises "resume from the latest checkpoint", not a lost report.
    done = ray.train.get_all_reported_checkpoints(timeout_s=120)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} at step {step} pid {os.getpid()} after {len(done)} checkpoints\n")
    log.warning("fault injection: SIGKILL rank %d at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


# -------------------------------------------------------------------------------------- checkpoints
def _plain(obj: Any) -> Any:
    """Detach tensors to CPU; tuples -> lists (weights_only-safe containers)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def split_state(module: torch.nn.Module) -> dict[str, dict]:
    """State dict grouped by top-level child (JEPA: encoder, teacher, predictor; fine-tuning: net):
    a reader can take one group, e.g. the EMA teacher, without knowing the rest."""
    groups: dict[str, dict] = {}
    for k, v in module.state_dict().items():
        head, _, rest = k.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = v
        else:
            groups.setdefault("_root", {})[k] = v
    return groups


def join_state(groups: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Inverse of the grouping in checkpoints: one flat state dict."""
    out = {}
    for head, sd in groups.items():
        for k, v in sd.items():
            out[k if head == "_root" else f"{head}.{k}"] = v
    return out


def save_checkpoint_state(path: Path, module: torch.nn.Module, optimizer, scheduler, *, step: int,
                          run_id: str | None, name: str, **extra: Any) -> None:
    """The training state in ``path``: model (grouped), optimiser, scheduler, step, MLflow run id,
    run name, and the job's ``extra`` plain data (data-stream positions, ...)."""
    state = {
        "model": _plain(split_state(module)),
        "optimizer": _plain(optimizer.state_dict()),
        # LambdaLR stores its callable object's __dict__ (plain numbers): weights_only-safe
        "scheduler": _plain(scheduler.state_dict()),
        "step": int(step),
        **extra,
        "mlflow_run_id": run_id or "",
        "name": name,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint_state(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def report_checkpoint(metrics: dict, rank: int, write: Callable[[Path], None]) -> None:
    """``ray.train.report`` on every rank (it is a barrier); rank 0 first has ``write(folder)`` fill a
    temporary folder, which becomes the reported checkpoint."""
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            write(Path(d))
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


def latest_checkpoint(*files: str) -> tuple[dict, ...] | None:
    """The given files of this run's latest Ray Train checkpoint (after a worker crash or on a
    resubmitted run name), or ``None`` on a fresh start."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return tuple(load_checkpoint_state(Path(d) / f) for f in files)


def restore_training(state: dict, module: torch.nn.Module, optimizer, scheduler) -> int:
    """Load a checkpoint's model, optimiser and scheduler state; returns its step."""
    module.load_state_dict(join_state(state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])
