"""Fine-tuning (FT) and linear probing (LP) of AnySat on Ray Train.

    python -m ray_jobs.finetune --config configs/finetune/<dataset>-<task>-<ft|lp>.yaml [--set key=value ...]

(also as ``ray job submit ... -- python -m ray_jobs.finetune ...``, exactly like ``ray_jobs.pretrain``;
a run resumes from ``storage_path/name`` after a worker crash or a resubmission, into the same MLflow
run).

Per worker (:func:`train_loop_per_worker`): encoder (scratch / pretraining checkpoint's EMA teacher /
MLflow model / official weights) + head -> DDP -> AdamW on the trainable parameters (LP: the head
only; the encoder is frozen, in eval mode, run without autograd) -> every ``train.eval_every`` steps
the whole validation split (``val/loss``, ``val/<metric>``; plateau lr, best weights, early stopping
on ``task.monitor``) -> at the end the test split with the best weights (``test/<metric>``, confusion
matrix, prediction grid, per-class table) and the fine-tuned model as an MLflow artifact.

Labels come from the same streams as the images (``StoreStream(..., label=)``), with segmentation
labels cropped at the very offsets of the image crops. Split names go through the dataset's aliases
(PASTIS-HD ``train`` = fold1-3, ``val`` = fold4, ``test`` = fold5).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ray_jobs import normalization as nz
from ray_jobs import runtime
from ray_jobs.cli import entrypoint_parser, run_cli, script
from ray_jobs.config import check_outputs
from ray_jobs.credentials import redact
from ray_jobs.data import StoreStream, collate
from ray_jobs.epochs import EpochSchedule, apply_epochs
from ray_jobs.finetune_config import FinetuneConfig, ResolvedTask
from ray_jobs.plan import DataPlan, Split, store_versions
from ray_jobs.plots import log_evaluation, log_preview
from ray_jobs.task import (FT_STATE_FILE, FinetuneModel, build_task_model, check_shapes, load_encoder,
                           prepare_task, run_evaluation, targets_from_batch)
from ray_jobs.tracking import Tracker

__all__ = ["main", "train_loop_per_worker"]

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = FinetuneConfig.model_validate(loop_config["config"])
    task = ResolvedTask.model_validate(loop_config["task"])
    plan: DataPlan = loop_config["plan"]
    rank, world, device = runtime.worker_context()

    torch.manual_seed(cfg.seed)  # identical head init on every rank (DDP broadcasts anyway)
    encoder = load_encoder(cfg, list(plan.sensors))
    new_projectors = ",".join(encoder.new_sensors) if cfg.encoder.source != "scratch" else "all"
    module = build_task_model(encoder, task, cfg.mode != "ft", train_new=cfg.mode == "lpplus").to(device)
    optimizer = runtime.build_optimizer(cfg.optim, module.trainable_parameters())
    scheduler = runtime.build_scheduler(cfg.optim, optimizer, cfg.train.max_steps)
    plateau = runtime.is_plateau(scheduler)

    step, consumed, run_id = 0, 0, loop_config["run_id"]
    best: dict[str, Any] = {"value": -math.inf, "step": -1, "bad": 0, "stopped": False}
    best_weights: dict | None = None
    restored = runtime.latest_checkpoint(runtime.CHECKPOINT_FILE, FT_STATE_FILE)
    if restored:
        state, extra = restored
        step = runtime.restore_training(state, module, optimizer, scheduler)
        consumed = int(state["consumed"].get(plan.name, 0))
        run_id = state["mlflow_run_id"] or run_id
        best.update(extra["best"])
        best_weights = extra.get("best_weights") or None
        log.info("rank %d resumed from step %d", rank, step)
    first_step = step
    torch.manual_seed(cfg.seed * 1000003 + rank * 7919 + step)

    model = runtime.wrap_ddp(module, world)
    tags: dict[str, Any] = {"ray.world_size": world, "ray.device": str(device), "anysat.mode": cfg.mode,
                            "anysat.task": f"{task.dataset}/{task.label}", "anysat.encoder_source": cfg.encoder.source}
    if restored:
        tags["anysat.resumed_from_step"] = step
    tracker = runtime.worker_tracker(cfg, run_id, rank, tags)
    if rank == 0:
        tracker.log_params({"trainable_parameters": sum(p.numel() for p in module.trainable_parameters()),
                            "total_parameters": sum(p.numel() for p in module.parameters()),
                            "new_projectors": new_projectors or "none"})
        nz.log_band_plan(tracker, {plan.name: plan})  # where every model band comes from, before step 1

    it = StoreStream(plan, plan.split, train=True, rank=rank, world=world, seed=cfg.seed,
                     read_num_cpus=cfg.data.read_num_cpus, prefetch_batches=cfg.data.prefetch_batches,
                     read_concurrency=cfg.data.read_concurrency, read_resources=cfg.data.read_resources,
                     label=task.label).batches(consumed)
    bf16 = runtime.use_bf16(cfg, device)
    eval_kw = dict(rank=rank, world=world, device=device, seed=cfg.seed, max_batches=cfg.eval.val_batches,
                   use_bf16=bf16)
    win = {"n": 0, "loss": 0.0, "samples": 0, "time": 0.0, "data": 0.0}
    t_window = time.perf_counter()
    previewed = False

    while step < cfg.train.max_steps and not best["stopped"]:
        runtime.maybe_inject_fault(cfg.train.fault_injection, rank, step)
        t0 = time.perf_counter()
        raw = next(it)
        consumed += 1
        x, pad = collate(raw, plan, device)
        y = targets_from_batch(raw, task, device)
        t_data = time.perf_counter() - t0
        if rank == 0 and cfg.train.preview and not previewed and tracker.last_step < 0:
            previewed = True
            log_preview(tracker, x, plan)

        model.train()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, pad_mask=pad)
        check_shapes(logits, y, task)
        loss = module.criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), cfg.train.grad_clip)
        optimizer.step()
        if not plateau:
            scheduler.step()
        step += 1
        win["n"] += 1
        win["loss"] += float(loss.detach())
        win["samples"] += len(y)
        win["time"] += time.perf_counter() - t0
        win["data"] += t_data

        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            mean_loss, data_frac = runtime.all_reduce_mean(
                [win["loss"] / win["n"], win["data"] / max(win["time"], 1e-9)], device)
            elapsed = time.perf_counter() - t_window
            tracker.log_metrics({"train/loss": mean_loss, "train/lr": optimizer.param_groups[0]["lr"],
                                 "train/samples_per_s": win["samples"] * world / max(elapsed, 1e-9),
                                 "train/data_wait_fraction": data_frac}, step)
            if rank == 0:
                log.info("step %d train/loss %.4f", step, mean_loss)
            win = {"n": 0, "loss": 0.0, "samples": 0, "time": 0.0, "data": 0.0}
            t_window = time.perf_counter()

        evaluated = False
        if (cfg.train.eval_every and plan.val_split
                and (step % cfg.train.eval_every == 0 or step == cfg.train.max_steps)):
            val, _, _ = run_evaluation(module, plan, task, plan.val_split, prefix="val", **eval_kw)
            evaluated = True
            value = val.get(f"val/{task.monitor}")
            if value is None:
                raise ValueError(f"task.monitor {task.monitor!r} is not a metric of this task "
                                 f"({sorted(k[4:] for k in val)})")
            if value > best["value"]:
                best.update(value=float(value), step=step, bad=0)
                best_weights = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            else:
                best["bad"] += 1
                if cfg.eval.patience and best["bad"] >= cfg.eval.patience:
                    best["stopped"] = True
                    if rank == 0:
                        log.info("early stopping at step %d (best %s %.4f at step %d)", step, task.monitor,
                                 best["value"], best["step"])
            val[f"val/best_{task.monitor}"] = best["value"]
            tracker.log_metrics(val, step)
            if plateau:
                scheduler.step(val["val/loss"])
            t_window = time.perf_counter()

        if step % cfg.checkpoint.every == 0 or step == cfg.train.max_steps or best["stopped"] or (
                evaluated and best["step"] == step and cfg.eval.restore_best):
            def write(d: Path) -> None:
                runtime.save_checkpoint_state(d / runtime.CHECKPOINT_FILE, module, optimizer, scheduler,
                                              step=step, run_id=run_id, name=cfg.name,
                                              consumed={plan.name: consumed})
                torch.save({"best": dict(best), "best_weights": best_weights or {}, "task": task.model_dump()},
                           d / FT_STATE_FILE)

            runtime.report_checkpoint({"step": step, "loss": float(loss.detach())}, rank, write)
            t_window = time.perf_counter()

    if step > first_step:  # a finished run resubmitted evaluates and logs nothing new
        if cfg.eval.restore_best and best_weights:
            module.load_state_dict(best_weights)
        if rank == 0:
            tracker.log_metrics({"best_step": best["step"]}, step)
        if plan.has_split(cfg.eval.test_split):
            test, metrics, samples = run_evaluation(module, plan, task, cfg.eval.test_split, prefix="test",
                                                    keep_samples=8 if rank == 0 else 0, crop=cfg.eval.test_crop,
                                                    crop_offsets=cfg.eval.crop_offsets,
                                                    **{**eval_kw, "max_batches": None})
            stats, per_class = metrics.statistics(), metrics.per_class()  # collectives: every rank
            if rank == 0:
                tracker.log_metrics(test, step)
                if cfg.eval.plots:
                    log_evaluation(tracker, task, "test", stats, per_class, samples, test)
                log.info("test: %s", {k: round(v, 4) for k, v in test.items()})
        if rank == 0 and cfg.mlflow.log_model:
            _log_model(tracker, module, task, cfg)
    if rank == 0:
        tracker.finish("FINISHED")


def _log_model(tracker: Tracker, module: FinetuneModel, task: ResolvedTask, cfg: FinetuneConfig) -> None:
    """The fine-tuned model (encoder + head) as plain tensors + the resolved task, under ``model/``."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, Path(d) / "model_state_dict.pt")
        (Path(d) / "task.yaml").write_text(yaml.safe_dump({
            "task": task.model_dump(), "mode": cfg.mode, "attention": module.encoder.attention,
            "sensors": list(module.encoder.sensors)}))
        tracker.client.log_artifacts(tracker.run_id, d, "model")


# ---------------------------------------------------------------------------------------- entrypoint
def _split_desc(plan: DataPlan, split: Split | None) -> str:
    """``train`` / ``train (fold1+fold2+fold3)``: a split as configured and what it reads."""
    if split is None:
        return "none"
    names = plan.resolve_split(split)
    if not isinstance(split, str) or (split,) == names:
        return "+".join(names)
    return f"{split} ({'+'.join(names)})"


def _parser() -> argparse.ArgumentParser:
    p = entrypoint_parser("python -m ray_jobs.finetune", __doc__, "YAML config (configs/finetune/*.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate config and store, print the plan, exit")
    return p


def _prepare(args: argparse.Namespace) -> tuple[FinetuneConfig, DataPlan, ResolvedTask, bool, EpochSchedule | None]:
    cfg, plan, task = prepare_task(args.config, args.overrides)
    check_outputs(cfg)
    cfg, sched = apply_epochs(cfg, {plan.name: plan})  # train.epochs -> steps
    return cfg, plan, task, args.dry_run, sched


def _run(prepared: tuple[FinetuneConfig, DataPlan, ResolvedTask, bool, EpochSchedule | None]) -> int:
    cfg, plan, task, dry_run, sched = prepared
    print(f"{cfg.mode.upper()} {task.dataset}/{task.label} ({task.kind}, {len(task.classes)} classes): "
          f"{plan.n_split} {_split_desc(plan, plan.split)} tiles, val {_split_desc(plan, plan.val_split)}, "
          f"test {_split_desc(plan, cfg.eval.test_split)}, "
          f"batch {plan.batch_size} x {cfg.num_workers} workers, patch {task.patch_size_m} m, head {task.head}, "
          f"loss {task.loss}, monitor val/{task.monitor}; "
          f"encoder {cfg.encoder.source} {cfg.encoder.uri or cfg.model.size}")
    print(f"storage: {cfg.storage_path}/{cfg.name}   mlflow: {redact(cfg.mlflow.tracking_uri)} "
          f"(experiment {cfg.mlflow.experiment})")
    if dry_run:
        print(nz.band_plan_markdown(nz.band_plan({plan.name: plan})), end="")
        return 0
    params = {**store_versions({plan.name: plan}), **(sched.params() if sched else {}),
              **{f"task.resolved.{k}": v for k, v in task.model_dump().items() if k != "classes"}}
    return runtime.fit(cfg, train_loop_per_worker, {"config": cfg.model_dump(mode="json"), "plan": plan,
                                                    "task": task.model_dump()},
                       params=params, what="fine-tuning")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_parser(), _prepare, _run, argv)


if __name__ == "__main__":
    script("ray_jobs.finetune")
