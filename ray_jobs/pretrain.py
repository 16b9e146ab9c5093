"""AnySat JEPA pretraining on Ray Train.

    python -m ray_jobs.pretrain --config configs/pretrain/geoplex-tiny.yaml [--set key=value ...]

The same command runs on a laptop (a local Ray instance is started) and, unchanged, as a Ray job:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m ray_jobs.pretrain --config configs/pretrain/geoplex-tiny.yaml \\
        --set data.root=$PWD/data/stores --set storage_path=$PWD/runs \\
        --set mlflow.tracking_uri=sqlite:///$PWD/mlflow.db

(a job runs in a copy of the working dir, so local paths are best given absolute; the shell expands
``$PWD`` at submit time). Resubmitting the same ``name`` with the same ``storage_path`` resumes from
its latest checkpoint into the same MLflow run.

The driver (:func:`main`) resolves the data plans, opens the MLflow run and starts a TorchTrainer;
:func:`train_loop_per_worker` runs on every worker:

    restore (latest checkpoint, if any) -> for step k: schedule(k) picks the dataset and patch size
    -> next batch of that dataset's stream -> DDP forward/backward (one dataset's projectors per
    step, hence find_unused_parameters) -> clip -> AdamW -> lr schedule -> EMA teacher -> every
    log_every: all-reduced losses + throughput to MLflow (rank 0) -> every eval_every: validation
    losses -> every checkpoint.every: state to storage_path -> at the end the EMA teacher's encoder
    as the registered MLflow model.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch

from anysat import AnySat
from anysat.pretrain.jepa import JEPA
from ray_jobs import normalization as nz
from ray_jobs import runtime
from ray_jobs.batching import batch_table, step_batch_size
from ray_jobs.cli import entrypoint_parser, run_cli, script
from ray_jobs.config import PretrainConfig, check_outputs, check_stores, load_config, resolve_paths
from ray_jobs.credentials import redact
from ray_jobs.data import StoreStream, collate, item_tiles, stream_items
from ray_jobs.epochs import EpochSchedule, apply_epochs
from ray_jobs.plan import DataPlan, resolve_plans, store_versions
from ray_jobs.plots import log_preview
from ray_jobs.schedule import Schedule

__all__ = ["main", "train_loop_per_worker", "build_module", "validate"]

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------- model
def build_module(cfg: PretrainConfig, plans: dict[str, DataPlan]) -> JEPA:
    """Student AnySat (projectors for the sensors of the configured datasets) wrapped in JEPA."""
    sensors: list[str] = []
    for p in plans.values():
        sensors += [s for s in p.sensors if s not in sensors]
    encoder = AnySat.from_size(cfg.model.size, sensors=sensors, **cfg.model.kwargs)
    if cfg.model.init_from:
        sd = torch.load(cfg.model.init_from, map_location="cpu", weights_only=True)
        encoder.load_state_dict(sd.get("encoder", sd) if isinstance(sd, dict) else sd, strict=False)
    w = cfg.jepa.loss_weights
    return JEPA(encoder, total_steps=cfg.train.max_steps, ema=tuple(cfg.jepa.ema), tau=cfg.jepa.temperature,
                pred_weight=float(w.get("pred", 1.0)), con_weight=float(w.get("con", 1.0)), **cfg.jepa.kwargs)


# ------------------------------------------------------------------------------------ train metrics
def _loss_terms(out: dict[str, Any]) -> dict[str, float]:
    """The scalar losses of a JEPA output (``loss``, ``loss_pred``, ``loss_con``)."""
    return {k: float(v.detach()) for k, v in out.items()
            if k.startswith("loss") and torch.is_tensor(v) and v.numel() == 1}


class Window:
    """The training steps since the last logged step: loss terms, per-dataset losses and rates."""

    def __init__(self) -> None:
        self.n, self.time, self.data_time = 0, 0.0, 0.0
        self.terms: dict[str, float] = {}
        self.per_ds: dict[str, dict[str, float]] = {}
        self.grad_norm: list[float] = []
        self.restart_clock()

    def restart_clock(self) -> None:
        """Evaluation and checkpoint time is not training throughput."""
        self.t0 = time.perf_counter()

    def add(self, dataset: str, out: dict, samples: int, tokens: int, dt: float, data_t: float,
            grad_norm: float | None) -> None:
        self.n += 1
        self.time += dt
        self.data_time += data_t
        for k, v in _loss_terms(out).items():
            self.terms[k] = self.terms.get(k, 0.0) + v
        d = self.per_ds.setdefault(dataset, {"n": 0, "loss": 0.0, "samples": 0, "tokens": 0, "time": 0.0})
        d["n"] += 1
        d["loss"] += float(out["loss"].detach())
        d["samples"] += samples
        d["tokens"] += tokens
        d["time"] += dt
        if grad_norm is not None:
            self.grad_norm.append(grad_norm)

    def metrics(self, world: int, device: torch.device) -> dict[str, float]:
        """Losses averaged over the window and all ranks (one all-reduce: every rank calls this)."""
        elapsed = time.perf_counter() - self.t0
        keys, names = sorted(self.terms), sorted(self.per_ds)
        vals = [self.terms[k] / self.n for k in keys]
        vals += [self.per_ds[n]["loss"] / self.per_ds[n]["n"] for n in names]
        vals += [self.data_time / max(self.time, 1e-9)]
        red = runtime.all_reduce_mean(vals, device)
        m: dict[str, float] = {f"train/{k}": v for k, v in zip(keys, red[:len(keys)])}
        for n, v in zip(names, red[len(keys):len(keys) + len(names)]):
            m[f"train/{n}/loss"] = v
        m["train/data_wait_fraction"] = red[-1]
        total = sum(d["samples"] for d in self.per_ds.values())
        m["train/samples_per_s"] = total * world / max(elapsed, 1e-9)
        m["train/steps_per_s"] = self.n / max(elapsed, 1e-9)
        for n in names:
            d = self.per_ds[n]
            # per-dataset rates over the time spent on that dataset's steps (whole world)
            m[f"train/{n}/samples_per_s"] = d["samples"] * world / max(d["time"], 1e-9)
            m[f"train/{n}/tokens_per_s"] = d["tokens"] * world / max(d["time"], 1e-9)
        if self.grad_norm:
            m["train/grad_norm"] = sum(self.grad_norm) / len(self.grad_norm)
        return m


# ------------------------------------------------------------------------------------------ validate
def _val_batches(cfg: PretrainConfig, plan: DataPlan, world: int) -> tuple[int, int]:
    """(batches, batch size) for validation, identical on every rank: the smallest rank share."""
    least = min(sum(item_tiles(plan, plan.val_split, stream_items(plan, plan.val_split, False, r, world,
                                                                   cfg.seed, 0)))
                for r in range(world))
    if least == 0:
        return 0, 0
    bs = min(plan.batch_size, least)
    return min(cfg.data.val_batches, least // bs), bs


@torch.no_grad()
def validate(cfg: PretrainConfig, plans: dict[str, DataPlan], module: JEPA, rank: int, world: int,
             device: torch.device, bf16: bool) -> dict[str, float]:
    """JEPA losses on the first ``data.val_batches`` batches of each dataset's validation split, every
    patch size of the dataset, averaged over ranks. Runs on the unwrapped module (no DDP hooks)."""
    if not cfg.data.val_batches:
        return {}
    module.eval()
    gen_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 17)  # same masks at every evaluation: comparable numbers
    sums: dict[str, list[float]] = {}
    for name in sorted(n for n, p in plans.items() if p.val_split):
        n_batches, bs = _val_batches(cfg, plans[name], world)
        if n_batches == 0:
            continue
        plan = plans[name].replace(batch_size=bs)
        it = StoreStream(plan, plan.val_split, train=False, rank=rank, world=world, seed=cfg.seed,
                         read_num_cpus=cfg.data.read_num_cpus, prefetch_batches=0,
                         read_concurrency=cfg.data.read_concurrency,
                         read_resources=cfg.data.read_resources).batches(0)
        for _, raw in zip(range(n_batches), it):
            x, pad = collate(raw, plan, device)
            for ps in plan.patch_sizes_m:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = module(x, ps, pad_mask=pad)
                for k, v in _loss_terms(out).items():
                    acc = sums.setdefault(f"val/{name}/{k}", [0.0, 0])
                    acc[0] += v
                    acc[1] += 1
    torch.set_rng_state(gen_state)
    module.train()
    keys = sorted(sums)
    red = runtime.all_reduce_mean([sums[k][0] / max(sums[k][1], 1) for k in keys], device)
    m = dict(zip(keys, red))
    for term in {k.rsplit("/", 1)[1] for k in keys}:
        vals = [v for k, v in m.items() if k.endswith("/" + term)]
        m[f"val/{term}"] = sum(vals) / len(vals)
    return m


# ------------------------------------------------------------------------------------------ the loop
def train_loop_per_worker(loop_config: dict) -> None:
    cfg = PretrainConfig.model_validate(loop_config["config"])
    plans: dict[str, DataPlan] = loop_config["plans"]
    rank, world, device = runtime.worker_context()

    # Same seed on every rank: identical initial weights (DDP also broadcasts them) and masks stream.
    torch.manual_seed(cfg.seed)
    module = build_module(cfg, plans).to(device)
    optimizer = runtime.build_optimizer(cfg.optim, module.student_parameters())  # never the EMA teacher
    scheduler = runtime.build_scheduler(cfg.optim, optimizer, cfg.train.max_steps)
    schedule = Schedule(cfg.seed, {n: (p.weight, p.patch_sizes_m) for n, p in plans.items()})

    # stream positions: batches (for the metrics) and tiles (what a resumed stream skips; with token
    # budgets batches differ in size)
    step, consumed, run_id = 0, dict.fromkeys(plans, 0), loop_config["run_id"]
    tiles = dict.fromkeys(plans, 0)
    restored = runtime.latest_checkpoint(runtime.CHECKPOINT_FILE)
    if restored:
        (state,) = restored
        step = runtime.restore_training(state, module, optimizer, scheduler)
        consumed.update(state["consumed"])
        # a checkpoint from before token budgets counted fixed-size batches only
        tiles.update(state.get("consumed_tiles") or {n: c * plans[n].batch_size for n, c in consumed.items()
                                                      if n in plans})
        run_id = state["mlflow_run_id"] or run_id
        diffs = schedule.check_state(state["schedule"])
        if diffs:
            log.warning("data schedule changed since the checkpoint (%s); continuing with the new one", diffs)
        log.info("rank %d resumed from step %d", rank, step)
    first_step = step
    # Masks and dropout differ per rank after this point (different data anyway).
    torch.manual_seed(cfg.seed * 1000003 + rank * 7919 + step)

    model = runtime.wrap_ddp(module, world)
    tags: dict[str, Any] = {"ray.world_size": world, "ray.device": str(device)}
    if restored:
        tags["anysat.resumed_from_step"] = step
    tracker = runtime.worker_tracker(cfg, run_id, rank, tags)
    if rank == 0:
        nz.log_band_plan(tracker, plans)  # where every model band comes from, before step 1

    feeds = {n: StoreStream(p, p.split, train=True, rank=rank, world=world, seed=cfg.seed,
                            read_num_cpus=cfg.data.read_num_cpus, prefetch_batches=cfg.data.prefetch_batches,
                            read_concurrency=cfg.data.read_concurrency,
                            read_resources=cfg.data.read_resources).feed(tiles[n])
             for n, p in plans.items()}
    if rank == 0:
        log.info("batch size per dataset and patch size (samples, tokens): %s",
                 batch_table(plans, cfg.data.tokens_per_batch))
    bf16 = runtime.use_bf16(cfg, device)
    plateau = runtime.is_plateau(scheduler)
    previewed: set[str] = set()
    win = Window()
    log.info("rank %d/%d on %s: steps %d..%d", rank, world, device, step, cfg.train.max_steps)

    while step < cfg.train.max_steps:
        entry = schedule.at(step)
        runtime.maybe_inject_fault(cfg.train.fault_injection, rank, step)
        plan = plans[entry.dataset]
        t0 = time.perf_counter()
        bs = step_batch_size(plan, entry.patch_size_m, cfg.data.tokens_per_batch)  # same on every rank
        raw = feeds[entry.dataset].next(bs)
        consumed[entry.dataset] += 1
        tiles[entry.dataset] += bs
        x, pad = collate(raw, plan, device)
        t_data = time.perf_counter() - t0
        if rank == 0 and cfg.train.preview and entry.dataset not in previewed and tracker.last_step < 0:
            previewed.add(entry.dataset)
            log_preview(tracker, x, plan)

        model.train()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x, entry.patch_size_m, pad_mask=pad)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.train.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(module.student_parameters(), cfg.train.grad_clip))
        optimizer.step()
        if not plateau:
            scheduler.step()
        # After the optimiser step: the teacher follows this step's weights (official lags one step).
        momentum = float(module.update_teacher(step))
        step += 1

        b = int(next(iter(x.values())).shape[0])
        win.add(entry.dataset, out, b, b * plan.tokens_per_sample(entry.patch_size_m),
                time.perf_counter() - t0, t_data, grad_norm)

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            metrics = win.metrics(world, device)
            metrics["train/lr"] = optimizer.param_groups[0]["lr"]
            metrics["train/ema_momentum"] = momentum
            for n, c in consumed.items():  # stream positions (batches per rank), for the curious
                metrics[f"train/{n}/batches"] = c
            tracker.log_metrics(metrics, step)
            if rank == 0:
                log.info("step %d %s", step, {k: round(v, 4) for k, v in metrics.items() if "/loss" in k})
            win = Window()

        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.max_steps):
            val = validate(cfg, plans, module, rank, world, device, bf16)
            if val:
                tracker.log_metrics(val, step)
                if plateau and "val/loss" in val:
                    scheduler.step(val["val/loss"])
            win.restart_clock()

        if step % cfg.checkpoint.every == 0 or step == cfg.train.max_steps:
            runtime.report_checkpoint(
                {"step": step, "loss": float(loss.detach())}, rank,
                lambda d: runtime.save_checkpoint_state(
                    d / runtime.CHECKPOINT_FILE, module, optimizer, scheduler, step=step, run_id=run_id,
                    name=cfg.name, schedule=schedule.state_dict(), consumed=dict(consumed),
                    consumed_tiles=dict(tiles)))
            win.restart_clock()

    if rank == 0:
        if cfg.mlflow.log_model and step > first_step:  # a finished run resubmitted logs nothing new
            # The registered encoder is the EMA teacher, the weights the paper fine-tunes; the student
            # stays in the checkpoint (group "encoder").
            teacher = module.teacher.module
            tracker.log_encoder(teacher.state_dict(), {"size": cfg.model.size, "sensors": list(teacher.sensors),
                                                       "kwargs": dict(cfg.model.kwargs), "weights": "teacher",
                                                       "step": step}, cfg.mlflow.registered_model_name)
        tracker.finish("FINISHED")


# ---------------------------------------------------------------------------------------- entrypoint
def _parser() -> argparse.ArgumentParser:
    p = entrypoint_parser("python -m ray_jobs.pretrain", __doc__, "YAML config (configs/pretrain/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate config and stores, print the plan, exit")
    return p


def _prepare(args: argparse.Namespace) -> tuple[PretrainConfig, dict[str, DataPlan], bool, EpochSchedule | None]:
    cfg = resolve_paths(load_config(args.config, args.overrides, cls=PretrainConfig))
    check_stores(cfg)
    check_outputs(cfg)
    plans = resolve_plans(cfg)
    cfg, sched = apply_epochs(cfg, plans)  # train.epochs -> steps (official GeoPlex epoch: ray_jobs/epochs.py)
    return cfg, plans, args.dry_run, sched


def _run(prepared: tuple[PretrainConfig, dict[str, DataPlan], bool, EpochSchedule | None]) -> int:
    cfg, plans, dry_run, sched = prepared
    for n, p in plans.items():
        split = p.split if isinstance(p.split, str) else list(p.split)
        print(f"{n}: {p.url} {p.n_split} {split} tiles, batch {p.batch_size}, weight {p.weight}, "
              f"patch sizes {list(p.patch_sizes_m)} m, sensors {list(p.sensors)}")
    print(f"storage: {cfg.storage_path}/{cfg.name}   mlflow: {redact(cfg.mlflow.tracking_uri)} "
          f"(experiment {cfg.mlflow.experiment})")
    if dry_run:
        return 0
    return runtime.fit(cfg, train_loop_per_worker, {"config": cfg.model_dump(mode="json"), "plans": plans},
                       params={**store_versions(plans), **(sched.params() if sched else {})}, what="training")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), _prepare, _run, argv)


if __name__ == "__main__":
    script("ray_jobs.pretrain")
